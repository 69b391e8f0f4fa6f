"""Ship each fitted model to a worker once, and large arrays not at all.

The engine hands tasks *handles* instead of objects. A handle used in the same
process (threading backend, in-process path) is just the object. A handle that
is pickled for another process pickles to a small reference: a token and a file
path. The model is written once per fitted state (``joblib.dump``) and each
worker loads it once and keeps it under its token; dense arrays are written
once per call and memory-mapped by the workers.

Tokens are never reused: a model whose fingerprint changed (refit,
``set_params``, a different object) gets a new token, so a worker can never
serve a stale model from its cache.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import os
import pickle
import shutil
import tempfile
import threading
import time
import types
import uuid
import weakref
from collections import OrderedDict

import joblib
import numpy as np
from joblib.numpy_pickle import NumpyPickler
from sklearn.base import BaseEstimator

from sklearn_parpredict import _chunking

try:
    import cloudpickle
except ImportError:  # pragma: no cover - joblib < 1.5 vendors it
    from joblib.externals import cloudpickle

_SCALARS = (str, bytes, int, float, complex, bool, type(None), np.generic)
# Arrays up to this size are fingerprinted by content; larger ones by identity,
# address and a strided sample of their content.
_FULL_DIGEST_BYTES = 1 << 16
_SAMPLE_PER_AXIS = 64
# Dense inputs from this size on are written once to a memory-mapped file
# rather than pickled chunk by chunk.
SHARE_MIN_BYTES = 1 << 20
# Lists of more estimators than this (ensemble members) are fingerprinted by
# the members' identities rather than walked.
_MEMBERS_WALKED = 16
# Fitted models a worker keeps beyond those the parent still uses.
_WORKER_CACHE_SIZE = 8

_PREFIX = uuid.uuid4().hex[:12]
_counter = itertools.count()
_lock = threading.RLock()
_temp_dir: str | None = None


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
    data = np.ascontiguousarray(a).view(np.uint8)
    return hashlib.blake2b(data, digest_size=16).digest()


def _walk(obj, out: list, keep: list, depth: int) -> None:
    if isinstance(obj, _SCALARS):
        out.append((type(obj).__name__, obj))
    elif isinstance(obj, np.ndarray):
        keep.append(obj)
        address = obj.__array_interface__["data"][0] if obj.size else 0
        out.append(("a", id(obj), address, obj.shape, obj.dtype.str, _digest(obj)))
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
        out.append(("l", len(obj)))
        for item in obj:
            _walk(item, out, keep, depth + 1)
    elif isinstance(obj, dict):
        out.append(("d", len(obj)))
        for key, value in obj.items():
            _walk(key, out, keep, depth + 1)
            _walk(value, out, keep, depth + 1)
    elif isinstance(obj, BaseEstimator):
        keep.append(obj)
        out.append(("e", type(obj).__qualname__, id(obj)))
        _walk(vars(obj), out, keep, depth + 1)
    else:
        # Opaque objects (Cython trees, booster handles, callables) are
        # identified by identity; the registry keeps them alive so that their
        # address cannot be reused by another object while the token lives.
        keep.append(obj)
        out.append(("o", type(obj).__qualname__, id(obj)))


def fingerprint(model) -> tuple[tuple, list]:
    """Cheap description of a model's current state and the objects it names.

    Two equal fingerprints taken while the named objects are kept alive mean
    the model was not refitted, re-parametrised or replaced in between.
    """
    out: list = []
    keep: list = []
    if isinstance(model, BaseEstimator):
        out.append(("e", type(model).__qualname__, id(model)))
        _walk(vars(model), out, keep, 0)
    else:
        _walk(model, out, keep, 0)
    return tuple(out), keep


# ---------------------------------------------------------------------------
# Parent side: one registry entry per live model
# ---------------------------------------------------------------------------


def _temp_folder() -> str:
    """A private folder on shared memory when it has room, else on disk."""
    global _temp_dir
    with _lock:
        if _temp_dir is None:
            base = os.environ.get("JOBLIB_TEMP_FOLDER")
            if base is None and os.path.isdir("/dev/shm"):
                stats = os.statvfs("/dev/shm")
                if stats.f_bavail * stats.f_frsize > 2 << 30:
                    base = "/dev/shm"
            _temp_dir = tempfile.mkdtemp(prefix="sklearn_parpredict_", dir=base)
            atexit.register(shutil.rmtree, _temp_dir, ignore_errors=True)
        return _temp_dir


def _unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


class _Entry:
    """The fitted state of one model as workers know it."""

    def __init__(self, fp, keep):
        self.token = f"{_PREFIX}-{next(_counter)}"
        self.fp = fp
        self.keep = keep
        self.path: str | None = None
        self.ref = None

    def dump(self, model) -> str:
        with _lock:
            if self.path is None:
                path = os.path.join(_temp_folder(), f"model-{self.token}.pkl")
                _dump_model(model, path)
                self.path = path
            return self.path

    def close(self) -> None:
        _unlink(self.path)
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
    """joblib's pickler, refusing references that only this process resolves.

    A class or function defined in ``__main__`` (a script, a notebook) or
    inside a function pickles by name here, yet a fresh worker process cannot
    import that name.
    """

    def reducer_override(self, obj):
        if isinstance(obj, type | types.FunctionType) and (
            getattr(obj, "__module__", None) == "__main__"
            or "<" in getattr(obj, "__qualname__", "")
        ):
            raise _ByValue(obj)
        return NotImplemented


def _dump_model(model, path: str) -> None:
    """Write ``model`` for the workers to ``joblib.load``.

    joblib's format lets workers memory-map large fitted arrays. Models that
    need their classes or functions pickled by value (as joblib's own process
    backends do with cloudpickle) are written by cloudpickle instead.
    """
    try:
        with open(path, "wb") as file:
            _ModelPickler(file).dump(model)
        return
    except Exception:  # unpicklable by name: try by value
        pass
    try:
        with open(path, "wb") as file:
            cloudpickle.dump(model, file)
    except Exception as exc:
        _unlink(path)
        raise pickle.PicklingError(
            f"The {type(model).__name__} cannot be sent to worker processes: "
            f"pickling it failed with {type(exc).__name__}: {exc}. Use "
            f"backend='threading' to predict on threads, which need no "
            f"pickling, or make the estimator picklable."
        ) from exc


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
            alive = entry is not None and (entry.ref is None or entry.ref() is model)
            if not (alive and entry.fp == fp):
                if entry is not None:
                    entry.close()
                entry = _Entry(fp, keep)
                try:
                    entry.ref = weakref.ref(
                        model,
                        lambda _, key=key, entry=entry: _collected.append((key, entry)),
                    )
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


class SharedArray:
    """A dense array that workers memory-map, written as tasks need its rows.

    The file is created at the array's full size (unwritten rows cost no
    memory on tmpfs) and each row range is written the first time a task
    that reads it is pickled. Pickling happens as tasks are sent, so the
    first workers start on their rows while later rows are still being
    written, instead of all waiting for one write of the whole array.
    """

    def __init__(self, array: np.ndarray):
        self.array = array
        self._path: str | None = None
        self._closed = False
        self._offset = 0
        # Sorted, disjoint row ranges already in the file.
        self._written: list[tuple[int, int]] = []

    def rows(self, start: int, stop: int) -> SharedRows:
        """A handle on rows ``start:stop`` for one task."""
        return SharedRows(self, start, stop)

    def _write(self, start: int, stop: int) -> str:
        with _lock:
            if self._closed:
                # A task still being sent after its call failed: no file may
                # be created that nothing would remove.
                raise RuntimeError("the call that shared this input has ended")
            if self._path is None:
                self._create()
            row_bytes = self.array.itemsize * int(np.prod(self.array.shape[1:]))
            with open(self._path, "r+b") as file:
                for a, b in _missing(self._written, start, stop):
                    # C order, as a pickled chunk would be.
                    chunk = np.ascontiguousarray(self.array[a:b])
                    file.seek(self._offset + a * row_bytes)
                    file.write(chunk.reshape(-1).view(np.uint8))
            self._written = _merge([*self._written, (start, stop)])
            return self._path

    def _create(self) -> None:
        path = os.path.join(_temp_folder(), f"data-{uuid.uuid4().hex}.npy")
        header = {
            "descr": np.lib.format.dtype_to_descr(self.array.dtype),
            "fortran_order": False,
            "shape": self.array.shape,
        }
        with open(path, "wb") as file:
            np.lib.format.write_array_header_1_0(file, header)
            self._offset = file.tell()
            file.truncate(self._offset + self.array.nbytes)
        self._path = path

    def close(self) -> None:
        # Workers that still map the file keep its pages; the name goes now.
        with _lock:
            self._closed = True
            _unlink(self._path)
            self._path = None
            self._written = []


def _missing(written: list[tuple[int, int]], start: int, stop: int):
    """The parts of ``[start, stop)`` not covered by ``written``."""
    for a, b in written:
        if b <= start or a >= stop:
            continue
        if a > start:
            yield start, a
        start = max(start, b)
    if start < stop:
        yield start, stop


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


class SharedRows:
    """Rows ``start:stop`` of a :class:`SharedArray`, as one task reads them."""

    def __init__(self, shared: SharedArray, start: int, stop: int):
        self.shared = shared
        self.start = start
        self.stop = stop

    def __reduce__(self):
        path = self.shared._write(self.start, self.stop)
        return _load_rows, (path, self.start, self.stop)


def _load_rows(path: str, start: int, stop: int) -> np.ndarray:
    return np.load(path, mmap_mode="c", allow_pickle=False)[start:stop]


# Rows pickled on their own up to this size per chunk (PickledRows): their
# bytes and loky's copy of them are both in memory while a task is sent.
# Past it, joblib's temporary files cost less than the copy, and its wait
# of 0.1 s little next to sending that much.
PICKLED_MAX_BYTES = 64 << 20


def nbytes(X) -> int:
    """The bytes of ``X``'s data (0 when unknown): NumPy arrays, DataFrames
    without their objects' contents, sparse matrices."""
    if isinstance(X, np.ndarray):
        return X.nbytes
    usage = getattr(X, "memory_usage", None)
    if callable(usage):
        try:
            return int(np.sum(usage(index=False)))
        except Exception:  # a dataframe of another kind
            return 0
    parts = (getattr(X, name, None) for name in ("data", "indices", "indptr"))
    return sum(part.nbytes for part in parts if isinstance(part, np.ndarray))


class PickledRows:
    """Rows for a process, pickled on their own and sent as ``bytes``.

    joblib's pickler writes every array over 1 MB that it finds in a task
    (the blocks of a DataFrame, the data of a sparse matrix) to a file in
    the call's temporary folder. At the end of the call it removes that
    folder, and waits 0.1 s when loky's resource tracker has not yet removed
    the files. A pipeline on 100,000 DataFrame rows on 2 processes took
    150 ms instead of 40 ms. Sent as bytes, the rows hold no array for
    joblib to write. They are pickled when their task is, so the first
    task can start while the later ones are still being pickled.
    """

    def __init__(self, rows):
        self.rows = rows

    def __reduce__(self):
        try:
            data = pickle.dumps(self.rows, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError):
            # Rows holding functions or classes defined in a script.
            data = cloudpickle.dumps(self.rows, protocol=pickle.HIGHEST_PROTOCOL)
        return pickle.loads, (data,)


def shares(X) -> bool:
    """Whether processes memory-map ``X`` (a :class:`SharedArray`) rather
    than get its rows pickled with their tasks."""
    return (
        isinstance(X, np.ndarray)
        and not X.dtype.hasobject
        and X.nbytes >= SHARE_MIN_BYTES
    )


# Rows pickled to measure what a row costs to send to a process, and how
# many kinds of input (type, dtypes, columns) the measurements are kept for.
_PICKLING_SAMPLE_ROWS = 2_000
_PICKLING_KINDS = 32
_pickling_costs: OrderedDict = OrderedDict()


def _input_kind(X) -> tuple | None:
    """What the cost of pickling ``X``'s rows is remembered by; None where
    it cannot be (dtypes that cannot be hashed)."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is not None:  # a DataFrame
        dtypes = tuple(dtypes)
    else:
        dtypes = str(getattr(X, "dtype", None))
    kind = type(X), dtypes, getattr(X, "shape", (0,))[1:]
    try:
        hash(kind)
    except TypeError:
        return None
    return kind


def pickling_per_row(X) -> float:
    """Seconds a row of ``X`` costs to send to a process: pickled in this
    process (one core, while the workers wait for their tasks) and
    unpickled in the worker; 0 for input the workers memory-map, infinite
    for rows that cannot be pickled.

    Measured once per kind of input on its first rows: a plan on processes
    must charge it up front. A pipeline on 100,000 DataFrame rows with three
    text columns, predicted 0.066 s on 2 processes against 0.09 s serially,
    took 0.09 s to 0.12 s, 22 ms of which pickling its rows (2 cores).
    """
    if shares(X):
        return 0.0
    kind = _input_kind(X)
    with _lock:
        known = _pickling_costs.get(kind)
        if known is not None:
            _pickling_costs.move_to_end(kind)
            return known
    rows = min(_chunking.n_rows(X), _PICKLING_SAMPLE_ROWS)
    sample = _chunking.row_slice(X, 0, rows)
    best = float("inf")
    # The best of two: the first pickling of a kind pays for imports and
    # caches that later ones do not.
    for _ in range(2):
        start = time.perf_counter()
        try:
            loads, (data,) = PickledRows(sample).__reduce__()
            loads(data)
        except Exception:
            # Rows no pickler takes (objects holding locks, open files) can
            # still run in this process, or on threads; not remembered, as
            # other rows of this kind may pickle.
            return float("inf")
        best = min(best, time.perf_counter() - start)
    per_row = best / max(rows, 1)
    if kind is None:
        return per_row
    with _lock:
        _pickling_costs[kind] = per_row
        while len(_pickling_costs) > _PICKLING_KINDS:
            _pickling_costs.popitem(last=False)
    return per_row


def resolve(obj):
    """The object behind a handle that was not pickled (same process)."""
    if isinstance(obj, ModelHandle):
        return obj.model
    if isinstance(obj, SharedRows):
        return obj.shared.array[obj.start : obj.stop]
    if isinstance(obj, PickledRows):
        return obj.rows
    return obj
