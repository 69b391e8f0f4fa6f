"""Ship each fitted model to a worker once.

The engine hands tasks *handles* instead of objects. A handle used in the same
process (threading backend, in-process path) is just the object. A handle that
is pickled for another process pickles to a small reference: a token and a file
path. The model is written once per fitted state (``joblib.dump``) and each
worker loads it once and keeps it under its token. (Rows travel by the
handles of :mod:`._rows` and :mod:`._pickled`; all go through the
files of :mod:`._files`.)

Tokens are never reused: a model whose fingerprint changed (refit,
``set_params``, a different object) gets a new token, so a worker can never
serve a stale model from its cache.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import threading
import types
import uuid
import weakref
from collections import OrderedDict

import joblib
import numpy as np
from joblib.numpy_pickle import NumpyPickler
from sklearn.base import BaseEstimator

from sklearn_parpredict import _nan
from sklearn_parpredict._costs import keep_by_id
from sklearn_parpredict._files import at_child_exit, temp_folder, unlink
from sklearn_parpredict._locks import fork_safe, in_forked_child

try:
    import cloudpickle
except ImportError:  # pragma: no cover - joblib < 1.5 vendors it
    from joblib.externals import cloudpickle

_SCALARS = (str, bytes, int, float, complex, bool, type(None), np.generic)
# Arrays up to this size are fingerprinted by content; larger ones by identity,
# address and a strided sample of their content.
_FULL_DIGEST_BYTES = 1 << 16
_SAMPLE_PER_AXIS = 64
# Lists of more estimators than this (ensemble members) are fingerprinted by
# the members' identities rather than walked.
_MEMBERS_WALKED = 16
# Fitted models a worker keeps beyond those the parent still uses.
_WORKER_CACHE_SIZE = 8
_NAN = np.nan

_PREFIX = uuid.uuid4().hex[:12]
_counter = itertools.count()
_lock = fork_safe(globals(), "_lock", threading.RLock)


# ---------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------


def _digest(a: np.ndarray) -> bytes:
    if a.nbytes > _FULL_DIGEST_BYTES:
        steps = tuple(max(1, n // _SAMPLE_PER_AXIS) for n in a.shape)
        a = a[tuple(slice(None, None, s) for s in steps)]
    if a.dtype.hasobject:
        # The element identities name the content while the array is kept
        # alive (the registry keeps it).
        a = np.fromiter(map(id, a.flat), dtype=np.uintp, count=a.size)
    data = np.ascontiguousarray(a).view(np.uint8).data
    return hashlib.blake2b(data, digest_size=16).digest()


def _walk(obj, out: list, keep: list, depth: int, seen: set) -> None:
    if isinstance(obj, _SCALARS):
        out.append((type(obj).__name__, obj))
    elif isinstance(obj, np.ndarray):
        keep.append(obj)
        address = obj.__array_interface__["data"][0] if obj.size else 0
        out.append(("a", id(obj), address, obj.shape, obj.dtype.str, _digest(obj)))
    elif id(obj) in seen:
        # Walked already (objects that refer to each other, or to the model):
        # named by identity, and kept by what first named it.
        out.append(("r", id(obj)))
    elif depth > 64:
        keep.append(obj)
        out.append(("o", id(obj)))
    elif (
        isinstance(obj, list | tuple)
        and len(obj) > _MEMBERS_WALKED
        and all(isinstance(item, BaseEstimator) for item in obj)
    ):
        # The members of an ensemble (a forest's trees) are identified, not
        # walked: refitting the ensemble replaces them all, and walking
        # hundreds of trees on every call would cost more than a small batch.
        keep.extend(obj)
        out.append(("m", len(obj), *map(id, obj)))
    elif isinstance(obj, list | tuple):
        seen.add(id(obj))
        out.append(("l", len(obj)))
        for item in obj:
            _walk(item, out, keep, depth + 1, seen)
    elif isinstance(obj, dict):
        seen.add(id(obj))
        out.append(("d", len(obj)))
        for key, value in obj.items():
            _walk(key, out, keep, depth + 1, seen)
            _walk(value, out, keep, depth + 1, seen)
    elif isinstance(obj, BaseEstimator) or (
        (depth <= 1 or _has_fit(type(obj))) and _plain(obj)
    ):
        # Estimators, and models of other kinds that keep their state in
        # their attributes, are walked: assigning an attribute changes them,
        # and a pipeline refits its steps in place (a step with fit but not
        # scikit-learn's base class, compared by identity, kept its old
        # state in the workers). Deeper plain objects are a fitted model's
        # parts, replaced when it is refitted (HistGradientBoosting's 300
        # tree predictors would take 9 ms on every call).
        keep.append(obj)
        seen.add(id(obj))
        out.append(("e", type(obj).__qualname__, id(obj)))
        _walk(vars(obj), out, keep, depth + 1, seen)
    else:
        # Opaque objects (Cython trees, booster handles, callables) are
        # identified by identity; the registry keeps them alive so that their
        # address cannot be reused by another object while the token lives.
        keep.append(obj)
        out.append(("o", type(obj).__qualname__, id(obj)))


_fit_of: dict[type, bool] = {}


def _has_fit(cls: type) -> bool:
    # Asked of every part of a model on every call to processes: remembered
    # per class (HistGradientBoosting's 1,000 tree predictors took 2.2 ms
    # to fingerprint when asked anew, 1.3 ms remembered).
    known = _fit_of.get(cls)
    if known is None:
        known = _fit_of[cls] = callable(getattr(cls, "fit", None))
    return known


def _plain(obj) -> bool:
    """Whether ``obj`` is an instance of a Python class, with attributes."""
    return isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(
        obj,
        type
        | types.ModuleType
        | types.FunctionType
        | types.BuiltinFunctionType
        | types.MethodType,
    )


def fingerprint(model) -> tuple[tuple, list]:
    """Cheap description of a model's current state and the objects it names.

    Two equal fingerprints taken while the named objects are kept alive mean
    the model was not refitted, re-parametrised or replaced in between.
    """
    out: list = []
    keep: list = []
    if isinstance(model, BaseEstimator) or _plain(model):
        # The model itself is not kept: the registry holds it by a weak
        # reference, to forget it with the model.
        out.append(("e", type(model).__qualname__, id(model)))
        _walk(vars(model), out, keep, 0, {id(model)})
    else:
        _walk(model, out, keep, 0, set())
    return tuple(out), keep


# ---------------------------------------------------------------------------
# Parent side: one registry entry per live model
# ---------------------------------------------------------------------------


class _Entry:
    """The fitted state of one model as workers know it."""

    def __init__(self, fp, keep):
        self.token = f"{_PREFIX}-{next(_counter)}"
        self.fp = fp
        self.keep = keep
        self.path: str | None = None
        self.ref = None
        # Why this state of the model cannot be pickled, once found: not
        # tried again on every call.
        self.error: pickle.PicklingError | None = None

    def dump(self, model) -> str:
        with _lock:
            if self.error is not None:
                raise pickle.PicklingError(*self.error.args) from self.error.__cause__
            if self.path is None:
                path = os.path.join(temp_folder(), f"model-{self.token}.pkl")
                try:
                    _dump_model(model, path)
                except pickle.PicklingError as exc:
                    # (A full disk is not the model's doing, and may pass.)
                    if not isinstance(exc.__cause__, OSError):
                        self.error = exc
                    raise
                self.path = path
            return self.path

    def close(self) -> None:
        unlink(self.path)
        self.path = None


_entries: dict[int, _Entry] = {}
_strong: OrderedDict[int, object] = OrderedDict()


# Entries of models the garbage collector has taken. A weakref callback runs
# inside whatever allocation set off the collection, even one in a loop over
# ``_entries`` that holds the (reentrant) lock, so it only queues the entry.
_collected: list[tuple[int, _Entry]] = []


def _forget(key: int, entry: _Entry | None = None) -> None:
    with _lock:
        if entry is None or _entries.get(key) is entry:
            entry = _entries.pop(key, None)
        if entry is not None:
            entry.close()


def _forget_collected() -> None:
    with _lock:
        while _collected:
            _forget(*_collected.pop())


def live_tokens() -> frozenset[str]:
    with _lock:
        _forget_collected()
        return frozenset(entry.token for entry in _entries.values())


class _ByValue(Exception):
    """The model names a class or function another process cannot import."""


class _ModelPickler(NumpyPickler):
    """joblib's pickler, refusing references that only this process resolves,
    and keeping ``np.nan`` itself (see :mod:`._nan`).

    A class or function defined in ``__main__`` (a script, a notebook) or
    inside a function pickles by name here, yet a fresh worker process cannot
    import that name.

    ``np.nan`` among a model's objects (``OrdinalEncoder``'s categories of
    objects) reached the workers as another NaN, and their outputs held it
    where the serial call's hold ``np.nan``. joblib's pickler is written in
    Python, which asks this one about every object, floats too.
    """

    def save(self, obj):
        if (
            type(obj) is np.ndarray
            and obj.dtype.hasobject
            and _nan.NanKept.around(obj) is not obj
        ):
            # joblib writes an array of objects with pickle.dump, which
            # pickles its np.nan as a float: here, its items ask this one.
            self.save_reduce(*obj.__reduce_ex__(self.proto), obj=obj)
            return
        super().save(obj)

    def reducer_override(self, obj):
        if obj is _NAN:
            return _nan.itself, ()
        if isinstance(obj, type | types.FunctionType) and (
            getattr(obj, "__module__", None) == "__main__"
            or "<" in getattr(obj, "__qualname__", "")
        ):
            raise _ByValue(obj)
        return NotImplemented


class _FilenameKeepingPickler(cloudpickle.Pickler):
    """cloudpickle, keeping the file of each function it pickles by value.

    cloudpickle names that file ``"<dynamic-code>"`` (from 3.0 on): the
    warnings such a function raised in a worker (an estimator defined in a
    script, a ``lambda`` of a ``FunctionTransformer``) came back from
    another file than the serial call's, which the caller's filters on
    their module did not match, nor the registries of warnings shown once
    per location (shown again by the wrapper after the serial call).
    """

    def __init__(self, file):
        super().__init__(file)
        # The copies of code objects pickled as cloudpickle does, by id:
        # kept alive so that no other object takes their ids.
        self._as_cloudpickle: dict[int, types.CodeType] = {}

    def reducer_override(self, obj):
        # Written in C, it does not ask about floats: arrays of objects
        # keep np.nan as the rows sent to workers do.
        if type(obj) is np.ndarray and obj.dtype.hasobject:
            return _nan.reduce_array(obj)
        if type(obj) is types.CodeType and id(obj) not in self._as_cloudpickle:
            # A copy, pickled as cloudpickle pickles code; the code itself
            # is that copy given its file again (pickled as itself, the
            # memo would hand its own reduction back).
            copy = obj.replace()
            self._as_cloudpickle[id(copy)] = copy
            return _in_file, (copy, obj.co_filename)
        return super().reducer_override(obj)


def _in_file(code: types.CodeType, filename: str) -> types.CodeType:
    return code.replace(co_filename=filename)


def _dump_model(model, path: str) -> None:
    """Write ``model`` for the workers to ``joblib.load``.

    joblib's format lets workers memory-map large fitted arrays. Models that
    need their classes or functions pickled by value (as joblib's own process
    backends do with cloudpickle) are written by cloudpickle instead.
    """
    # A folder that cannot be written to fails here, as what it is.
    with open(path, "wb") as file:
        try:
            _ModelPickler(file).dump(model)
            return
        except Exception:  # unpicklable by name: try by value
            file.seek(0)
            file.truncate()
        try:
            _FilenameKeepingPickler(file).dump(model)
            return
        except Exception as exc:
            error = pickle.PicklingError(
                f"The {type(model).__name__} cannot be sent to worker processes: "
                f"pickling it failed with {type(exc).__name__}: {exc}. Use "
                f"backend='threading' to predict on threads, which need no "
                f"pickling, or make the estimator picklable."
            )
            error.__cause__ = exc
    unlink(path)
    raise error


class ModelHandle:
    """A fitted model that pickles to a reference loaded once per worker.

    The model is written when the handle is made, so that a model that cannot
    be pickled fails in the caller, naming the cause, before any task is sent.
    """

    def __init__(self, model):
        self.model = model
        fp, keep = fingerprint(model)
        key = id(model)
        with _lock:
            _forget_collected()
            entry = _entries.get(key)
            if (
                entry is None
                or (entry.ref is not None and entry.ref() is not model)
                or entry.fp != fp
            ):
                if entry is not None:
                    entry.close()
                entry = _Entry(fp, keep)

                def collected(_, key=key, entry=entry) -> None:
                    _collected.append((key, entry))

                try:
                    entry.ref = weakref.ref(model, collected)
                except TypeError:
                    # Not weak-referenceable: keep it alive, and bound how
                    # many such models are kept.
                    _strong[key] = model
                    while len(_strong) > _WORKER_CACHE_SIZE:
                        _forget(_strong.popitem(last=False)[0])
                _entries[key] = entry
        self.token = entry.token
        self._entry = entry
        entry.dump(model)

    def __reduce__(self):
        return _load_model, (self.token, self._entry.dump(self.model), live_tokens())


# Per model, by id: its fingerprint and the bytes of its pickle then.
_sizes: dict[int, tuple] = {}


def pickled_bytes(model) -> int | None:
    """About how many bytes the workers get for ``model`` (None: plain
    pickle does not take it), found once per fitted state.

    Its arrays are counted, not copied (pickle's out-of-band buffers): 5 ms
    for a 300-tree forest's 67 MB, whose whole pickle takes 52 ms (2 cores).
    """
    fp, _ = fingerprint(model)
    known = _sizes.get(id(model))
    # (The fingerprint's objects are not kept alive for this: were one
    # collected and its id reused, only an estimate would be stale.)
    if known is not None and known[0]() is model and known[1][0] == fp:
        return known[1][1]
    buffers: list[int] = []
    try:
        inband = pickle.dumps(
            model,
            protocol=5,
            buffer_callback=lambda buffer: buffers.append(memoryview(buffer).nbytes),
        )
        nbytes: int | None = len(inband) + sum(buffers)
    except Exception:
        nbytes = None
    keep_by_id(_sizes, model, (fp, nbytes))
    return nbytes


def can_ship(model) -> bool:
    """Whether ``model`` can be sent to worker processes: pickled, it is
    written for them once (and not tried again while it is unchanged)."""
    try:
        ModelHandle(model)
    except pickle.PicklingError:
        return False
    return True


@in_forked_child
def _forked() -> None:
    """In a forked child: its own model names, and none of its parent's
    models, whose files are the parent's to remove. Without this, children
    forked from one parent (a server's workers) named their models alike in
    the parent's folder, and a child's worker loaded its sibling's model;
    a child that let go of a model removed the parent's file."""
    global _PREFIX, _counter
    _PREFIX = uuid.uuid4().hex[:12]
    _counter = itertools.count()
    for entry in _entries.values():
        entry.path = None
    for _, entry in _collected:
        entry.path = None
    _entries.clear()
    _strong.clear()
    _collected.clear()


@at_child_exit
def _remove_own_models() -> None:
    """At a forked child's exit, the files of the models it wrote into its
    parent's folder."""
    with _lock:
        entries = [*_entries.values(), *(entry for _, entry in _collected)]
        for entry in entries:
            entry.close()


# ---------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------

_worker_models: OrderedDict[str, object] = OrderedDict()


def _load_model(token: str, path: str, live: frozenset[str]):
    with _lock:
        model = _worker_models.get(token)
        if model is None:
            # Copy-on-write mapping: large fitted arrays are shared between
            # workers through the page cache, yet stay writable.
            model = joblib.load(path, mmap_mode="c")
            _worker_models[token] = model
        _worker_models.move_to_end(token)
        for stale in [t for t in _worker_models if t not in live and t != token]:
            del _worker_models[stale]
        while len(_worker_models) > _WORKER_CACHE_SIZE:
            _worker_models.popitem(last=False)
        return model


def worker_cache_tokens() -> list[str]:
    """Tokens of the models cached in this process (for tests and debugging)."""
    with _lock:
        return list(_worker_models)
