"""Timing with output checks: medians of interleaved samples, and paired
calls."""

from __future__ import annotations

import logging
import math
import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator

from benchmarks._targets import MIN_SPEEDUP, median_interval, paired_interval

# A timed sample runs the call this many times when one call is shorter than
# MIN_SAMPLE_S, so that microsecond calls are not timer noise.
MIN_SAMPLE_S = 0.05
MAX_INNER = 200
# Rows whose interleaved methods' warm-up calls all together take less than
# CHEAP_ROW_S get at least CHEAP_REPEATS timed samples: short timings are
# the noisiest. The methods timed last do not count: with theirs counted,
# the book models' 1,000 rows got 3 samples of one 57 ms call each, and
# two medians of the serial call landed 16% apart (2 cores).
CHEAP_ROW_S = 1.0
CHEAP_REPEATS = 7


def assert_same(expected, actual) -> None:
    """Raise AssertionError unless ``actual`` is the serial output.

    Discrete outputs must be equal; floats equal to ``rtol=1e-9`` (BLAS may
    block rows differently for different batch sizes).
    """
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected)
        for e, a in zip(expected, actual):
            assert_same(e, a)
        return
    expected, actual = np.asarray(expected), np.asarray(actual)
    assert expected.shape == actual.shape, f"shape {actual.shape} != {expected.shape}"
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=0)
    else:
        np.testing.assert_array_equal(actual, expected)


@dataclass
class Timing:
    """Seconds per call of one method in one row: a sample per repeat."""

    samples: list[float] = field(default_factory=list)
    inner: int = 1
    error: str | None = None

    @property
    def median(self) -> float:
        if self.error or not self.samples:
            return math.nan
        return statistics.median(self.samples)


def _check(timing: Timing, expected, out) -> None:
    try:
        assert_same(expected, out)
    except AssertionError as exc:
        first = str(exc).strip().splitlines()
        timing.error = "wrong output: " + (first[0] if first else "mismatch")


def measure(
    calls: dict[str, Callable],
    repeats: int,
    *,
    last: tuple[str, ...] = (),
    seed: int = 0,
) -> dict[str, Timing]:
    """Median-ready timings of ``calls``, each output checked against serial.

    ``calls["serial"]`` gives the reference output. Every call runs as
    warm-up (not timed, but checked; see :func:`_warm_up`), the methods in
    ``last`` first. Then ``repeats`` timed samples of each are taken,
    interleaved in a fresh random order per repeat, so that drift
    in the machine's state and the after-effects of one method on the next
    favour no method; rows whose interleaved calls are cheap get at least
    ``CHEAP_REPEATS``. Methods named in ``last`` are timed after the others,
    back to back: a method that forks this process on every call (the
    tutorial's pool) makes the parent's BLAS re-create its threads, which then
    spin and slow whatever runs next on a small machine; one that starts and
    stops a pool of threads around every sample (dask-ml's) slowed the
    wrapper's samples interleaved with it (pipeline, 1,000 rows: 1.045x to
    1.068x of serial in 3 runs, against 1.001x to 1.017x with it timed
    last; 2 cores). Every sample's output is checked.
    """
    expected = calls["serial"]()
    timings = {name: Timing() for name in calls}
    warm_s = 0.0
    # The methods timed last are warmed up first: warmed last, their
    # after-effects fell on the first timed samples (KNN, 1 row: a first
    # sample of 10.8 ms per call against 0.32 ms for the others; 2 cores).
    warm_order = [name for name in last if name in calls]
    warm_order += [name for name in calls if name not in last]
    for name in warm_order:
        once = _warm_up(timings[name], calls[name], expected)
        if name not in last:
            warm_s += once
    if warm_s < CHEAP_ROW_S:
        repeats = max(repeats, CHEAP_REPEATS)
    rng = random.Random(seed)
    interleaved = [name for name in calls if name not in last]
    for _ in range(repeats):
        rng.shuffle(interleaved)
        for name in interleaved:
            _sample(timings[name], calls[name], expected)
    for name in last:
        if name in calls:
            for _ in range(repeats):
                _sample(timings[name], calls[name], expected)
    return timings


def _warm_up(timing: Timing, call: Callable, expected) -> float:
    """Run ``call`` untimed (its output checked) and set how many calls a
    sample makes; return the seconds of its last call.

    A call shorter than a sample runs twice, and the second sets the count:
    a first call may plan or probe (the wrapper times a probe on new rows),
    and a count set from it was too small, so that every sample's first,
    cache-cold call weighed on its mean (LogisticRegression, 1,000 rows:
    0.89x of serial in one run; 0.93x to 0.94x in four runs with the
    count set by a second call; 2 cores).
    """
    once = 0.0
    for _ in range(2):
        before(call)
        start = time.perf_counter()
        try:
            out = call()
        except Exception as exc:  # a peer that cannot run this input
            timing.error = f"{type(exc).__name__}: {exc}"
            return once
        finally:
            after(call)
        once = time.perf_counter() - start
        _check(timing, expected, out)
        timing.inner = min(MAX_INNER, max(1, math.ceil(MIN_SAMPLE_S / once)))
        if once >= MIN_SAMPLE_S or timing.error:
            break
    return once


def _sample(timing: Timing, call: Callable, expected) -> None:
    if timing.error:
        return
    before(call)
    start = time.perf_counter()
    for _ in range(timing.inner):
        out = call()
    timing.samples.append((time.perf_counter() - start) / timing.inner)
    after(call)
    _check(timing, expected, out)


# The paired measurement's groups: as many as fit in PAIRED_BUDGET_S, at
# least PAIRED_MIN and at most PAIRED_MAX; then, while the ratio's 95%
# interval still holds the target (MIN_SPEEDUP), more for up to
# PAIRED_EXTEND_S. Five groups of KNN on 10,000 rows (0.4 s calls, their
# single calls 0.78x to 1.19x of each other, OpenMP on 2 cores) put the
# wrapper at 0.926x of serial in one run; 40 of them alone, at 1.002x.
PAIRED_BUDGET_S = 4.0
PAIRED_MIN = 5
PAIRED_MAX = 1000
PAIRED_EXTEND_S = 16.0


@dataclass
class Paired:
    """Medians of differences between single calls made one after another.

    Each group calls serial, serial, the wrapper, serial: ``added`` is the
    wrapper's time minus the serial call just before it, ``after`` the serial
    call just after the wrapper minus that same one (what the wrapper leaves
    behind for the next call: spinning threads, a pool starting), and ``aa``
    the second serial call minus the first, whose neighbours are alike (the
    control). Slow drift in the machine's speed moves both calls of a
    difference alike, so these resolve a few percent where two medians of
    samples taken seconds apart do not.
    """

    serial: float
    added: float
    after: float
    aa: float
    groups: int
    # Each group's added time, for the interval of the ratio.
    added_all: list[float] = field(default_factory=list)


def paired(serial: Callable, ours: Callable, timing: Timing) -> Paired | None:
    """:class:`Paired` differences of ``ours`` against ``serial``.

    Every output of ``ours`` is checked against serial's: at the first wrong
    one, ``timing`` (``ours``'s samples) gets the error and None is returned.
    """
    expected = serial()
    group_s = 4 * _once(serial) + _once(ours)
    groups = int(min(PAIRED_MAX, max(PAIRED_MIN, PAIRED_BUDGET_S // group_s)))
    most = int(min(PAIRED_MAX, groups + PAIRED_EXTEND_S // group_s))
    first, second, wrapped, next_ = [], [], [], []

    def added() -> list[float]:
        return [b - a for a, b in zip(second, wrapped)]

    def undecided() -> bool:
        interval = paired_interval(statistics.median(second), added())
        return _holds(interval, MIN_SPEEDUP)

    while len(wrapped) < groups or (len(wrapped) < most and undecided()):
        # An untimed serial call between the check and the timed calls: a
        # check just before them slowed the first (LogisticRegression, 1,000
        # rows: 4.5% slower than the second; 2 cores), and keeping the
        # outputs to check later slowed others (100,000 rows: the serial call
        # after the wrapper's 26% slower, its memory no longer reused).
        serial()
        first.append(_once(serial))
        second.append(_once(serial))
        start = time.perf_counter()
        out = ours()
        wrapped.append(time.perf_counter() - start)
        next_.append(_once(serial))
        _check(timing, expected, out)
        if timing.error:
            return None
    return Paired(
        serial=statistics.median(second),
        added=statistics.median(added()),
        after=statistics.median(b - a for a, b in zip(second, next_)),
        aa=statistics.median(b - a for a, b in zip(first, second)),
        groups=len(wrapped),
        added_all=added(),
    )


# The paired comparison with each other method: as many pairs as fit in
# VERSUS_BUDGET_S, at least VERSUS_MIN and at most PAIRED_MAX. Five pairs of
# SVC calls on 20,000 rows (0.6 s each) put the same two methods 0.98x and
# 1.09x apart in two runs (2 cores).
VERSUS_BUDGET_S = 1.0
VERSUS_MIN = 9
# Then, for a method with a target, more pairs for up to VERSUS_EXTEND_S
# while the 95% interval of the ratios still holds it. Nine pairs of SVC on
# 20,000 rows gave the ceiling's share 0.946 (interval 0.87 to 0.99), where 20
# shuffled rounds gave the wrapper 0.999 of the ceiling's speed on processes,
# 0.995 on threads (2 cores).
VERSUS_EXTEND_S = 8.0


def versus(
    ours: Callable,
    others: dict[str, Callable],
    targets: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """Each other method's time over ``ours``'s, from adjacent single calls.

    For each method in turn, pairs of calls, the wrapper's and the method's,
    in alternating order (each with the method's untimed set-up around it):
    the pairs' ratios, whose median is the figure judged and whose spread
    gives its interval (:func:`benchmarks._targets.median_interval`). Like
    :func:`paired`, and unlike two medians of samples taken seconds apart,
    this resolves a few percent on a shared machine: the ceiling's share on
    SVC, 20,000 rows, measured 90% to 98% in three runs by medians of 3
    samples, while 8 shuffled rounds of single calls gave the ceiling 0.610 s
    and the wrapper 0.608 s (2 cores).
    The alternation gives each call of a pair the other's after-effects half
    of the time. ``targets``: the ratio each method is judged against; pairs
    are added while its interval still holds it (``VERSUS_EXTEND_S``).
    """
    found = {}
    targets = targets or {}
    for name, other in others.items():
        pair_s = _once(ours) + _once_set_up(other)
        pairs = int(min(PAIRED_MAX, max(VERSUS_MIN, VERSUS_BUDGET_S // pair_s)))
        most = int(min(PAIRED_MAX, pairs + VERSUS_EXTEND_S // pair_s))
        target = targets.get(name)
        ratios = []
        while len(ratios) < pairs or (
            len(ratios) < most
            and target is not None
            and _holds(median_interval(ratios), target)
        ):
            i = len(ratios)
            if i % 2:
                theirs, mine = _once_set_up(other), _once(ours)
            else:
                mine, theirs = _once(ours), _once_set_up(other)
            ratios.append(theirs / mine)
        found[name] = ratios
    return found


def _holds(interval: tuple[float, float], target: float) -> bool:
    """Whether a 95% interval still holds ``target``: more calls may decide."""
    low, high = interval
    return low < target <= high


def _once_set_up(call: Callable) -> float:
    """Seconds of one call, with its untimed set-up before and after."""
    before(call)
    try:
        return _once(call)
    finally:
        after(call)


def _once(call: Callable) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def before(call: Callable) -> None:
    """Run what a method does before each sample, outside the timing."""
    getattr(call, "before", lambda: None)()


def after(call: Callable) -> None:
    """Run what a method does after each sample, outside the timing."""
    getattr(call, "after", lambda: None)()


# The wrapper's debug record of a call's plan, e.g. "2 tasks on 2 thread
# workers in 1.2 s"; a call that stays in-process says "in-process: why".
_PLAN = re.compile(r"(\d+) tasks? on \d+ (thread|process) workers in ")


class DecisionLog(logging.Handler):
    """Within ``with``: how the wrapper ran its calls, from the package's
    debug log: ``"2 thread tasks"``, ``"4 process tasks"`` or
    ``"in-process"``, one entry per ``with`` block (its last call's plan; a
    call may also log measurements). The log is on only inside the block: it
    turns off the wrapper's direct path for small calls, so timed calls run
    without it."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.plans: list[str] = []
        self._logger = logging.getLogger("sklearn_parpredict")

    @property
    def on_workers(self) -> list[bool]:
        return [plan != "in-process" for plan in self.plans]

    def emit(self, record: logging.LogRecord) -> None:
        found = _PLAN.search(record.getMessage())
        if found:
            self._plan = f"{found[1]} {found[2]} tasks"
        elif ": in-process" in record.getMessage():
            self._plan = "in-process"

    def __enter__(self):
        self._plan = "in-process"
        self._level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)
        self.plans.append(self._plan)


class _Identity(BaseEstimator):
    """A fitted predictor that costs next to nothing: all that remains of a
    wrapped call is the wrapper's own fixed cost."""

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def predict(self, X):
        return X


def wrapper_overhead(calls: int = 20_000, repeats: int = 7) -> float:
    """Seconds a ``ParallelPredictor`` call adds to an in-process call.

    The best of ``repeats`` loops of ``calls`` calls, wrapped and bare, on
    one row of a model that does nothing: the floor of what any call that
    stays in-process pays, whatever the estimator.
    """
    from sklearn_parpredict import ParallelPredictor

    model = _Identity().fit(None)
    wrapped = ParallelPredictor(model, n_jobs=-1)
    X = np.zeros((1, 4))
    best = {}
    for name, call in (("bare", model.predict), ("wrapped", wrapped.predict)):
        call(X)
        loops = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                call(X)
            loops.append((time.perf_counter() - start) / calls)
        best[name] = min(loops)
    return best["wrapped"] - best["bare"]
