"""Estimators that fail on purpose, for the fault-injection tests.

A :class:`Faulty` wraps an estimator and behaves exactly as it does, except on
a call whose rows hold the marker value :data:`MARK` in their first column:
there it injects its ``fault``. Putting the marker in one row makes exactly one
chunk fail, wherever the rows are predicted.

The class lives in an importable module (``tests/`` is on ``sys.path`` under
pytest) so that every process backend can unpickle it: loky with cloudpickle,
the stdlib ``multiprocessing`` backend with plain pickle.
"""

import os
import resource
import signal
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.metaestimators import available_if

# A value no generated feature takes.
MARK = -7777.0

FAULTS = (
    "none",
    "raise",
    "raise-unpicklable",
    "raise-two-arguments",
    "interrupt-two-arguments",
    "stop-iteration",
    "return-unloadable",
    "exit",
    "kill",
    "memory",
    "sleep",
)
# Faults that end the process that meets them.
KILLING = ("exit", "kill")
# Memory the "memory" fault asks for beyond its address-space limit.
_OVER_LIMIT = 1 << 30


class ChunkError(ValueError):
    """The error the ``"raise"`` fault raises, with the failing rows' count."""


class TwoArgumentChunkError(ValueError):
    """The error the ``"raise-two-arguments"`` fault raises: its ``__init__``
    takes two arguments and passes one message on, so that pickle's default
    (the class called with ``args``) cannot rebuild it."""

    def __init__(self, rows, message):
        super().__init__(f"{message} in a chunk of {rows} rows")
        self.rows = rows


class TwoArgumentWarning(UserWarning):
    """A warning whose ``__init__`` takes two arguments and passes one
    message on, as :class:`TwoArgumentChunkError` does, with an attribute."""

    def __init__(self, model, message):
        super().__init__(f"{message} of {model}")
        self.model = model


class TwoArgumentChunkInterrupt(BaseException):
    """The ``"interrupt-two-arguments"`` fault's: a :class:`TwoArgumentChunkError`
    that is no ``Exception`` (as ``KeyboardInterrupt`` is not)."""

    def __init__(self, rows, message):
        super().__init__(f"{message} in a chunk of {rows} rows")
        self.rows = rows


class Unloadable:
    """What the ``"return-unloadable"`` fault's ``predict`` returns, per row:
    it pickles, but unpickling it fails (its class is called with one
    argument of the two it takes)."""

    def __init__(self, label, rows):
        self.label = label
        self.rows = rows

    def __reduce__(self):
        return Unloadable, (self.label,)


class UnpicklableChunkError(ValueError):
    """The error the ``"raise-unpicklable"`` fault raises: it holds a lock,
    which no pickler takes."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class Faulty(BaseEstimator):
    """``estimator``, with ``fault`` injected where a row carries :data:`MARK`.

    Parameters
    ----------
    estimator : estimator instance
        The estimator to behave as; fitted by :meth:`fit`, or given fitted.
    fault : {"none", "raise", "raise-unpicklable", "raise-two-arguments", \
            "interrupt-two-arguments", "stop-iteration", "exit", "kill", \
            "memory", "sleep"}
        ``"raise"`` raises :class:`ChunkError`; ``"raise-unpicklable"``
        raises :class:`UnpicklableChunkError`; ``"raise-two-arguments"``
        raises :class:`TwoArgumentChunkError`; ``"interrupt-two-arguments"``
        raises :class:`TwoArgumentChunkInterrupt`; ``"return-unloadable"``
        has ``predict`` return :class:`Unloadable` objects; ``"stop-iteration"`` raises
        ``StopIteration``, which a generator turns into ``RuntimeError``;
        ``"exit"`` ends the process
        with ``os._exit(3)``; ``"kill"`` sends it ``SIGKILL``; ``"memory"``
        lowers the address-space limit and allocates past it (the
        ``MemoryError`` of a process that ran out of memory); ``"sleep"``
        sleeps ``seconds`` (a long call, to interrupt).
    seconds : float
        How long ``"sleep"`` sleeps.
    log_dir : str, default=None
        Where ``"sleep"`` records each call it delays (see :func:`calls`).

    Notes
    -----
    The fault is injected in ``fit`` too, so that fitting on marked rows
    fails as predicting them does.
    """

    def __init__(self, estimator, fault="raise", seconds=30.0, log_dir=None):
        self.estimator = estimator
        self.fault = fault
        self.seconds = seconds
        self.log_dir = log_dir

    def fit(self, X, y=None):
        self._inject(X)
        self.estimator_ = clone(self.estimator).fit(X, y)
        return self

    def __sklearn_is_fitted__(self):
        return hasattr(self, "estimator_")

    def __getattr__(self, name):
        # Fitted attributes and the methods of the estimator (classes_,
        # predict_proba, ...), so that a Faulty is a drop-in stand-in. Only
        # reached when normal lookup fails; __dict__ avoids recursion while
        # unpickling.
        inner = self.__dict__.get("estimator_")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        method = getattr(inner, name)
        if not callable(method) or name.startswith("_") or name == "fit":
            return method

        def faulty(X, *args, **kwargs):
            self._inject(X)
            return method(X, *args, **kwargs)

        return faulty

    # predict and score are found without fitting, unlike the methods
    # reached via __getattr__: model selection looks for them on unfitted
    # clones.
    @available_if(lambda self: hasattr(self.estimator, "predict"))
    def predict(self, X):
        self._inject(X)
        out = self.estimator_.predict(X)
        if self.fault == "return-unloadable" and _marked(X):
            unloadable = np.empty(len(out), dtype=object)
            unloadable[:] = [Unloadable(label, len(X)) for label in out]
            return unloadable
        return out

    @available_if(lambda self: hasattr(self.estimator, "score"))
    def score(self, X, y=None):
        self._inject(X)
        return self.estimator_.score(X, y)

    def _inject(self, X):
        if self.fault == "none" or not _marked(X):
            return
        if self.fault == "raise":
            raise ChunkError(f"injected failure in a chunk of {len(X)} rows")
        if self.fault == "raise-unpicklable":
            raise UnpicklableChunkError("injected failure")
        if self.fault == "raise-two-arguments":
            raise TwoArgumentChunkError(len(X), "injected failure")
        if self.fault == "interrupt-two-arguments":
            raise TwoArgumentChunkInterrupt(len(X), "injected failure")
        if self.fault == "stop-iteration":
            raise StopIteration("injected failure")
        if self.fault == "exit":
            os._exit(3)
        if self.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fault == "memory":
            exhaust_memory()
        if self.fault == "sleep":
            self._sleep()

    def _sleep(self):
        if self.log_dir is None:
            time.sleep(self.seconds)
            return
        # A call is a file, named while it runs by its process and thread,
        # and once done by when it started and ended.
        who = f"{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex}"
        running = Path(self.log_dir, f"{who}.run")
        start = time.monotonic()
        running.touch()
        time.sleep(self.seconds)
        running.rename(Path(self.log_dir, f"{start}_{time.monotonic()}_{who}.done"))


class Warns(RegressorMixin, BaseEstimator):
    """Predicts the first column, and warns ``times`` times on every call of
    ``predict`` (and once on ``fit``, ``in_fit``), whatever its rows: each
    chunk raises what the serial call raises once per call. Each call takes
    ``row_s`` seconds per row.

    The warning is raised from one line of this file (``stacklevel=1``, as
    scikit-learn's checks of the input raise theirs): the same warning each
    time, as Python's registries of warnings shown tell them apart.
    """

    def __init__(
        self, times=1, message="raised once per call", row_s=0.0, in_fit=False
    ):
        self.times = times
        self.message = message
        self.row_s = row_s
        self.in_fit = in_fit

    def fit(self, X, y=None):
        if self.in_fit:
            warnings.warn(f"fit: {self.message}", UserWarning, stacklevel=1)
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X):
        for _ in range(self.times):
            warnings.warn(self.message, UserWarning, stacklevel=1)
        # A call long enough to be planned (the GIL released meanwhile).
        time.sleep(self.row_s * len(X))
        return np.asarray(X, dtype=float)[:, 0]


def _marked(X) -> bool:
    if hasattr(X, "iloc"):
        first = X.iloc[:, 0]
    elif hasattr(X, "tocsc"):
        first = X.tocsc()[:, [0]].toarray()
    else:
        first = np.asarray(X)[:, 0]
    return bool((np.asarray(first, dtype=float) == MARK).any())


def exhaust_memory():
    """Allocate past a hard address-space limit, as a process short of memory.

    Only the soft limit is lowered, and restored afterwards, so that a worker
    that survives its ``MemoryError`` is not crippled for later tasks.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (64 << 20), hard))
    try:
        np.ones(_OVER_LIMIT, dtype=np.uint8)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def inject(fitted, fault, **params):
    """A :class:`Faulty` around an estimator that is already fitted."""
    faulty = Faulty(fitted, fault, **params)
    faulty.estimator_ = fitted
    return faulty


def running_calls(log_dir) -> list[int]:
    """The process ids of the delayed calls still running."""
    return [int(p.name.split("-")[0]) for p in Path(log_dir).glob("*.run")]


def done_calls(log_dir) -> list[tuple[float, float]]:
    """(start, end) of each delayed call that finished, monotonic seconds."""
    spans = [p.name.split("_")[:2] for p in Path(log_dir).glob("*.done")]
    return [(float(a), float(b)) for a, b in spans]


def max_overlap(spans) -> int:
    """The most calls that ran at the same time."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak
