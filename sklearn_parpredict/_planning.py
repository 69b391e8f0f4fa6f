"""The cost model behind ``chunk_size="auto"``.

The engine times the first rows of each job in-process (their output is kept,
so probing computes nothing twice), fits ``seconds = per_call + per_row *
rows`` and asks this module whether the remaining rows are worth sending to
workers, on threads or processes, and in how many chunks. Costs are remembered
per fitted model and method and refined by every later call: repeated calls
skip the probe, and a plan that turned out slower than predicted teaches the
model its real overhead.
"""

from __future__ import annotations

import functools
import math
import os
import time
import weakref
from dataclasses import dataclass, field, replace

from sklearn_parpredict._chunking import split_bounds

# The machine's cores, read once: os.cpu_count() costs microseconds, and the
# planner asks on every call.
CORES = os.cpu_count() or 1
# First probe size; each next probe is PROBE_GROWTH times larger. Probing
# stops at the first step of PROBE_MIN_S whose rows took PROBE_ROW_SHARE of
# it (after at least two steps, to separate the fixed cost of a call from its
# cost per row: the rows of a step that is mostly fixed cost are lost in its
# noise), or at once after a step of PROBE_ENOUGH_S (the model is costly: no
# more serial work).
PROBE_ROWS = 64
PROBE_GROWTH = 4
PROBE_MIN_S = 0.005
PROBE_ROW_SHARE = 0.5
PROBE_ENOUGH_S = 0.1
# Rows timed on two concurrent threads, to learn how much of the estimator's
# work releases the GIL, take about this long serially.
THREAD_PROBE_S = 0.1
# Least in-process time of the chunk that a thread measurement compares with:
# a pause of the machine of a millisecond or two must not pass for a speedup.
THREAD_CHUNK_S = 0.01
# Another process busy on a core makes threads look as if they held the GIL,
# never the opposite: a speedup below THREAD_TRUSTED is measured again, at
# once while rows remain and on later calls, up to THREAD_MEASUREMENTS times
# in all, and the best is kept.
THREAD_TRUSTED = 1.8
THREAD_MEASUREMENTS = 3
# ... unless it is below THREAD_HELD and the threads of the measurement
# waited for a core less than THREAD_WAIT_SHARE of their time, as Linux
# counts it (SEES_WAITS): no other work took a core from them, and so low a
# speedup is the GIL's (threads that wait for the GIL sleep rather than wait
# for a core). Higher ones are measured again even so: the first tasks of
# new threads pay for their first touch of memory (SVC: 1.67x, with no
# wait, then more).
THREAD_HELD = 1.25
# ... and its chunks took THREAD_HELD_CHUNK_S each in-process, at least:
# shorter ones understate what threads gain on whole calls (SVC, two threads
# against one: 1.17x to 1.38x on chunks of 189 rows, 11 ms, 1.65x on 1,000
# rows, 1.8x on 5,000; it was kept off threads for good, and ran on
# processes at 90% of the ceiling where threads reach 98% to 102%; 2 cores).
THREAD_HELD_CHUNK_S = 0.02
# A measurement of at least THREAD_FREE is taken for rows that mostly release
# the GIL: their speedup, the calls' fixed costs taken out (see
# _measure_threads_once).
THREAD_FREE = 1.5
THREAD_WAIT_SHARE = 0.05
_SCHEDSTAT = "/proc/thread-self/schedstat"
SEES_WAITS = os.path.exists(_SCHEDSTAT)
# Each chunk of a thread measurement spends at least this share of its time
# on its rows: the fixed cost of a call (a forest's Python loop over its
# trees) often holds the GIL, and would pass for rows that hold it. A 100-tree
# forest measured 1.64x-1.80x at a share of 0.75 and 1.89x at 0.85; its calls
# on 500,000 rows ran 1.89x faster on two threads (2 cores).
THREAD_ROW_SHARE = 0.85
# A serial call that keeps this many cores busy on average runs its own
# threads (BLAS, OpenMP).
THREADED = 1.25
# Parallel work must be predicted at least this much faster than serial.
MIN_GAIN = 1.15
# Warm thread plans in a row that must run MIN_GAIN slower than planned
# before the thread speedup is lowered (see learn_thread_speedup): a single
# slow run is as often a busy moment of the machine. SVC's threads on 1,000
# rows, measured at 1.99x, ran one call in 45 ms against 35 ms planned, the
# calls around it on time, and one such run kept them off threads for good;
# later, two such runs in a row (43 ms against 33 ms planned, among calls
# from 30 ms to 47 ms) did the same, and its calls on 20,000 rows ran on
# processes at 90% to 98% of the ceiling's speedup (2 cores).
SLOW_THREAD_RUNS = 3
# Where the backend is left to us, processes must be predicted this much
# faster than threads to be chosen: they hold a copy of the model each, and
# what they cost beyond their prediction (copies of rows and outputs) is
# learned only once they have run. A 100-tree forest's processes, predicted
# 1.10 s on 500,000 rows, took 1.22-1.25 s, where its threads took the
# 1.15 s predicted (2 cores).
PROCESS_MARGIN = 1.05
# Work predicted to take less than this in-process is run in-process without
# planning: no fan-out can save more than planning costs.
FAST_SERIAL_S = 0.002
# Per task: pickling arguments and results and the round trip to a worker.
DISPATCH_S = {"process": 2e-3, "thread": 2e-4}
# Starting a process pool (interpreters importing numpy and scikit-learn), and
# shipping a model to the workers for the first time.
COLD_POOL_S = 0.5
COLD_MODEL_S = 0.05
# Aim for this many tasks per worker when the fixed cost per task allows it:
# more tasks balance uneven workers, fewer pay less fixed cost. Processes
# take two, so that a worker computes one while the rows of the next are
# written and its result read. Threads have nothing to overlap, and a second
# task cost more than the cost model's fixed cost says: RandomForest (100
# trees) on 500,000 rows, 2 threads, 1.189 s in 2 tasks against 1.234 s in 4
# (medians of 8, 2 cores; the fork ceiling's 2 tasks took 1.14 to 1.17 s).
TASKS_PER_WORKER = {"process": 2, "thread": 1}
MAX_OVERHEAD_FRACTION = 0.02
# Timings kept per model and method, one per band of batch sizes.
MAX_SAMPLES = 12
# How far a cost's prediction may grow before a remembered "no plan pays"
# (Cost.no_gain) is planned again.
NO_GAIN_DRIFT = 1.2
# In-process calls predicted to take at least this long are timed even when
# nothing is planned: timing costs a few microseconds.
WATCHED_CALL_S = 0.01
# A cost decides a call without planning only for batches smaller than
# EXTRAPOLATION times the most rows it was timed on; a larger one is planned
# (and, run in-process, timed). The cost per row of a fast model timed on
# small batches can be lost in the noise: LogisticRegression timed on 1,000
# rows fitted 0 s per row, and would have run 1,000,000 rows (15 ms) without
# a plan or a timing ever after.
EXTRAPOLATION = 16


@dataclass
class Cost:
    """Seconds for one call on ``n`` rows: ``per_call + per_row * n``.

    Attributes
    ----------
    threads : float
        Cores the serial call kept busy on average (process CPU time over wall
        time): an estimator that is already threaded gains less from workers.
    one_thread_per_row : float or None
        Seconds per row of the call on one thread (BLAS, OpenMP limited to
        one), measured once, for an estimator that keeps more than one core
        busy; ``None`` until measured. Against the cost per row of the
        serial call it gives :attr:`own_speedup`, which follows that cost as
        it is refined: on one 2-core machine the same OpenMP threads gained
        1.98x on a chunk of 24,000 rows and 1.46x to 1.69x on whole calls of
        100,000 rows minutes later, while one thread's speed held.
    thread_speedup : float or None
        Speedup of two concurrent threads over one, the best of up to
        ``THREAD_MEASUREMENTS`` measurements; ``None`` until measured. Below 2
        the estimator holds the GIL part of the time.
    thread_measurements : int
        How many times the thread speedup was measured.
    overhead : dict
        Per kind of worker, seconds per task that past parallel runs took
        beyond the prediction.
    no_gain : dict
        Per setting of the workers, the most rows for which no plan could
        pay (see :func:`can_pay`) and the seconds they were predicted to
        take: a call on as many rows or fewer is decided without planning
        while that prediction holds (within ``NO_GAIN_DRIFT``) and the
        speed of the workers was not learnt anew.
    """

    per_call: float
    per_row: float
    threads: float = 1.0
    one_thread_per_row: float | None = None
    thread_speedup: float | None = None
    thread_measurements: int = 0
    overhead: dict = field(default_factory=dict)
    samples: list = field(default_factory=list, repr=False)
    min_threads: float = 1.0
    no_gain: dict = field(default_factory=dict, repr=False)
    # Warm thread plans in a row that ran far slower than planned.
    slow_thread_runs: int = field(default=0, repr=False)
    # Whether slow runs lowered the thread speedup: it is not raised again.
    thread_lowered: bool = field(default=False, repr=False)
    # Batches smaller than this are within reach of the timings (see
    # EXTRAPOLATION); those smaller than direct_rows are also predicted
    # faster than FAST_SERIAL_S. Kept up to date by add(): the engine asks
    # on every call.
    covered_rows: float = field(init=False, repr=False, compare=False)
    direct_rows: float = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self._refresh()

    def _refresh(self) -> None:
        # A cost set by hand, with no timings, is taken at its word.
        self.covered_rows = EXTRAPOLATION * max(
            (s[0] for s in self.samples), default=math.inf
        )
        spare = FAST_SERIAL_S - self.per_call
        if self.per_row > 0:
            fast = spare / self.per_row
        else:
            fast = math.inf if spare > 0 else -math.inf
        self.direct_rows = min(fast, self.covered_rows)

    def seconds(self, rows: int) -> float:
        return self.per_call + self.per_row * rows

    def add(self, rows: int, wall: float, cpu: float) -> None:
        """Refine the cost with one more timing: a call in-process or a task."""
        # One sample per band of batch sizes, averaged with the earlier
        # timings in the band (the mean of points on a line is on the line):
        # the near-equal tasks of repeated calls must neither crowd out the
        # other sizes that separate the fixed cost of a call from its cost
        # per row, nor fit a slope to the noise between 2,499 and 2,501 rows.
        band = _band(rows)
        same = [s for s in self.samples if _band(s[0]) == band]
        if same:
            old_rows, old_wall, old_cpu = same[0]
            rows, wall, cpu = (
                (old_rows + rows) / 2,
                (old_wall + wall) / 2,
                (old_cpu + cpu) / 2,
            )
        others = [s for s in self.samples if _band(s[0]) != band]
        self.samples = [*others, (rows, wall, cpu)][-MAX_SAMPLES:]
        self.per_call, self.per_row, threads = _fit(self.samples)
        self.threads = max(threads, self.min_threads)
        self._refresh()

    @property
    def own_speedup(self) -> float | None:
        """Speedup of the serial call's own threads (BLAS, OpenMP) over one
        thread; ``None`` until measured, when ``threads`` stands for it.

        Busy is not useful: OpenMP threads that spin between parallel regions
        count as busy (HistGradientBoosting's predict kept 2 cores busy for a
        speedup of 1.46x on 2 cores).
        """
        if self.one_thread_per_row is None:
            return None
        if self.per_row <= 0:
            return 1.0
        return min(max(self.one_thread_per_row / self.per_row, 1.0), float(CORES))

    def wants_own_measurement(self) -> bool:
        """Whether the call runs threads of its own whose speedup is unknown."""
        return self.one_thread_per_row is None and self.threads >= THREADED

    def set_one_thread_per_row(self, seconds: float) -> None:
        """Take the measured seconds per row on one thread."""
        self.one_thread_per_row = max(seconds, 0.0)
        self.no_gain.clear()

    def add_one_thread_task(self, rows: int, wall: float) -> None:
        """Refine the seconds per row on one thread with a task that a
        worker ran on one thread of the estimator's own, beside the other
        workers: the speed that plans on such workers get, where a
        measurement in-process, alone on the machine, can be far off. A
        HistGradientBoosting model measured 1.72x on its own threads ran
        50,000 rows on one thread 1.89x slower than on two, and its
        processes, predicted 1.16x faster than serial, gained 1.05x
        (2 cores)."""
        per_row = max(wall - self.per_call, 0.0) / max(rows, 1)
        if self.one_thread_per_row is None:
            self.one_thread_per_row = per_row
        else:
            # Half-way, as overheads are learnt: one slow task (another
            # process busy) does not swing the plan.
            self.one_thread_per_row = 0.5 * (self.one_thread_per_row + per_row)
        self.no_gain.clear()

    def wants_thread_measurement(self) -> bool:
        """Whether the thread speedup is unknown or may have been hidden by load."""
        return self.thread_speedup is None or (
            self.thread_speedup < THREAD_TRUSTED
            and self.thread_measurements < THREAD_MEASUREMENTS
        )

    def add_thread_speedup(self, speedup: float, *, final: bool = False) -> None:
        """Keep the best measured thread speedup, bounded to ``[1, 2]``.

        ``final``: no other work took a core from the measurement, which is
        not taken again.
        """
        speedup = min(max(speedup, 1.0), 2.0)
        self.thread_speedup = max(self.thread_speedup or 1.0, speedup)
        self.thread_measurements += 1
        if final:
            self.thread_measurements = max(
                self.thread_measurements, THREAD_MEASUREMENTS
            )
        self.no_gain.clear()

    def speedup(self, kind: str, n_workers: int) -> float:
        """Speedup of ``n_workers`` workers of ``kind`` over one."""
        if kind == "process" or self.thread_speedup is None:
            return float(n_workers)
        # Amdahl: the share of the work that runs outside the GIL, from the
        # two-thread measurement, scales; the rest does not.
        free = min(max(2.0 * (1.0 - 1.0 / self.thread_speedup), 0.0), 1.0)
        return 1.0 / ((1.0 - free) + free / n_workers)


def thread_measurement_rows(cost: Cost) -> int:
    """Fewest rows per chunk of a thread measurement of ``cost``."""
    if cost.per_row <= 0:
        return 1
    share = THREAD_ROW_SHARE / (1.0 - THREAD_ROW_SHARE)
    return max(1, math.ceil(share * cost.per_call / cost.per_row))


def _band(rows: float) -> int:
    # Bands about 41% wide: sizes within a band time alike.
    return round(2 * math.log2(max(rows, 1.0)))


class Timer:
    """Wall and process CPU time of a block.

    With ``waits=True`` also ``waited``: the seconds the calling thread spent
    ready to run but waiting for a core (Linux's ``schedstat``; 0 elsewhere),
    and ``own``: the seconds the block took of its own, ``wall - waited``,
    for what other threads took from it is the machine's, not its cost.
    """

    def __init__(self, waits: bool = False):
        self._waits = waits
        self.waited = 0.0

    def __enter__(self):
        self._waited = run_queue_seconds() if self._waits else 0.0
        self._thread = time.thread_time() if self._waits else 0.0
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.own = self.wall
        if self._waits:
            self.waited = min(max(run_queue_seconds() - self._waited, 0.0), self.wall)
            # Never less than this thread's own CPU time: some kernels count
            # the waits in whole ticks (4 ms), more than a short block waited.
            thread = time.thread_time() - self._thread
            self.own = max(self.wall - self.waited, min(thread, self.wall))


def run_queue_seconds() -> float:
    """Seconds the calling thread has waited for a core since it started, as
    Linux counts them; 0 where the count cannot be read."""
    try:
        with open(_SCHEDSTAT, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _fit(samples) -> tuple[float, float, float]:
    # Plain least squares: this runs after every in-process call, where
    # numpy's polyfit would cost more than predicting a few rows.
    n = len(samples)
    rows = [float(s[0]) for s in samples]
    wall = [s[1] for s in samples]
    cores = float(CORES)
    threads = min(max(sum(s[2] for s in samples) / max(sum(wall), 1e-9), 1.0), cores)
    mean_rows, mean_wall = sum(rows) / n, sum(wall) / n
    spread = sum((r - mean_rows) ** 2 for r in rows)
    if spread == 0:
        # One size only: charge it all to the rows, which errs towards
        # parallel only for work that is already slow.
        return 0.0, mean_wall / max(mean_rows, 1.0), threads
    per_row = (
        sum((r - mean_rows) * (w - mean_wall) for r, w in zip(rows, wall)) / spread
    )
    if per_row <= 0:
        # Within noise, the rows cost nothing: the call's fixed cost is all.
        return mean_wall, 0.0, threads
    per_call = mean_wall - per_row * mean_rows
    if per_call < 0:
        return 0.0, sum(wall) / sum(rows), threads
    return per_call, per_row, threads


# scikit-learn estimators whose predict already runs on every core through
# OpenMP. Short probes can hide it (the threads have little to do), so they
# are known to be threaded rather than measured: splitting their rows across
# workers would only take cores from their own threads.
_OPENMP_THREADED = (
    "HistGradientBoosting",
    "KNeighbors",
    "RadiusNeighbors",
    "KMeans",
    "BisectingKMeans",
    "MiniBatchKMeans",
)


def _openmp_threaded(estimator) -> bool:
    name = type(estimator).__name__
    if name.startswith(_OPENMP_THREADED):
        return True
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list):
        return any(_openmp_threaded(step) for _, step in steps)
    inner = getattr(estimator, "estimator", None)
    return inner is not None and inner is not estimator and _openmp_threaded(inner)


def fit_cost(samples: list[tuple[int, float, float]], estimator=None) -> Cost:
    """A cost line through timed samples ``(rows, wall, cpu)``."""
    cost = Cost(0.0, 0.0)
    if estimator is not None and _openmp_threaded(estimator):
        cost.min_threads = float(CORES)
    for sample in samples:
        cost.add(*sample)
    return cost


# Remembered costs, by the id of the fitted model: (a weak reference to the
# model, {method: Cost}). Asked on every call: a dict lookup by id costs a
# third of a WeakKeyDictionary's, and the reference tells the model from a
# later object given the same id.
_costs: dict[int, tuple[weakref.ref, dict[str, Cost]]] = {}


def remembered_cost(model, method: str) -> Cost | None:
    entry = _costs.get(id(model))
    if entry is None or entry[0]() is not model:
        return None
    return entry[1].get(method)


def costs_of(model) -> dict[str, Cost] | None:
    """The model's remembered costs by method: the very dict that later
    timings of the model fill in. None when the model cannot be weakly
    referenced, and so nothing is remembered for it."""
    entry = _costs.get(id(model))
    if entry is None or entry[0]() is not model:
        entry = keep_by_id(_costs, model, {})
        if entry is None:
            return None
    return entry[1]


def remember_cost(model, method: str, cost: Cost) -> None:
    costs = costs_of(model)
    if costs is not None:
        costs[method] = cost


def keep_by_id(table: dict, obj, value) -> tuple | None:
    """``table[id(obj)] = (weak reference to obj, value)``, until ``obj`` is
    collected; None (and nothing kept) when it cannot be weakly referenced.

    Keyed by id rather than by the object: a look-up is one dict access and
    ``entry[0]() is obj``, for objects that need not be hashable.
    """
    key = id(obj)
    try:
        ref = weakref.ref(obj, functools.partial(_drop_by_id, table, key))
    except TypeError:
        return None
    entry = table[key] = (ref, value)
    return entry


def _drop_by_id(table: dict, key: int, ref: weakref.ref) -> None:
    # Only the collected object's own entry: a later object with the same id
    # may already have replaced it.
    entry = table.get(key)
    if entry is not None and entry[0] is ref:
        del table[key]


@dataclass
class Plan:
    """Row ranges per job for the workers and the predicted wall time."""

    kind: str
    ranges: list[list[tuple[int, int]]]
    seconds: float
    waves: int


def fixed_seconds(costs: list[Cost], kind: str, n_workers: int) -> float:
    """Seconds a wave of tasks pays beside its rows: the largest fixed cost
    of a call, what plans of ``kind`` were seen to cost beyond their
    prediction, and the dispatch of a task.

    On threads, the calls of a wave pay their fixed costs one after another:
    a call's own Python code (a forest's loop over its trees) holds the GIL.
    """
    calls = n_workers if kind == "thread" else 1
    slowest = max(c.per_call * calls + c.overhead.get(kind, 0.0) for c in costs)
    return slowest + DISPATCH_S[kind]


def can_pay(
    costs: list[Cost],
    remaining: list[tuple[int, int]],
    n_workers: int,
    kinds: tuple[str, ...] = ("process", "thread"),
) -> bool:
    """Whether any plan on workers of ``kinds`` could beat serial: a bound of
    :func:`plan_chunks`, cheaper than planning.

    The bound is one wave of tasks, each kind at its own fixed cost and its
    own speed (threads that hold the GIL do not add up), the per-row work
    shared perfectly by the workers, and no start-up cost.
    """
    for kind in kinds:
        _, serial_s, work = _serial_and_work(costs, remaining, n_workers, kind)
        total = sum(work)
        fixed = fixed_seconds(costs, kind, n_workers)
        if total > 0 and (fixed + total / n_workers) * MIN_GAIN <= serial_s:
            return True
    return False


def serial_seconds(costs: list[Cost], remaining: list[tuple[int, int]]) -> float:
    """Predicted seconds of the remaining rows in-process."""
    return sum(c.seconds(b - a) for c, (a, b) in zip(costs, remaining) if b > a)


def _serial_and_work(costs, remaining, n_workers: int, kind: str):
    """Rows left per job, their serial seconds, and each job's parallel work.

    A job's work is counted so that dividing the total by ``n_workers`` gives
    the wall time: an estimator that is already threaded runs slower on a
    worker's share of the cores, and threads that hold the GIL do not add up.
    """
    rows = [stop - start for start, stop in remaining]
    serial_s = serial_seconds(costs, remaining)
    work = [c.per_row * n * _slowdown(c, kind, n_workers) for c, n in zip(costs, rows)]
    return rows, serial_s, work


def inner_slowdown(cost: Cost, threads: int) -> float:
    """How much longer rows take on ``threads`` threads of the estimator's
    own (BLAS, OpenMP) than in the serial call, which has all the cores."""
    own = cost.threads if cost.own_speedup is None else cost.own_speedup
    return own / min(own, threads)


def optimistic(cost: Cost) -> Cost:
    """``cost`` as if its own threads, not measured yet, gained nothing: the
    best case for workers, which take cores from them."""
    if not cost.wants_own_measurement():
        return cost
    return replace(cost, one_thread_per_row=cost.per_row)


def cores_per_worker(n_workers: int) -> int:
    """Each of ``n_workers`` workers' share of the cores (at least one): the
    threads of its own an estimator gets there (BLAS, OpenMP)."""
    return max(1, CORES // n_workers)


def _slowdown(cost: Cost, kind: str, n_workers: int) -> float:
    """How much longer rows take on each of ``n_workers`` busy workers than in
    the serial call: a worker holds only its share of the cores, and threads
    that hold the GIL wait for each other."""
    return (
        inner_slowdown(cost, cores_per_worker(n_workers))
        * n_workers
        / cost.speedup(kind, n_workers)
    )


def serial_equivalent(cost: Cost, kind: str, n_workers: int, wall: float) -> float:
    """Seconds the serial call would take on the rows of a task that took
    ``wall`` on a worker of a plan of ``kind``: what the cost learns from it.

    Learning the task's own time would teach the cost the workers' slowdown
    (a 300-tree forest on two threads: +27% after 20 calls), and every later
    plan would expect serial calls slower than they are.
    """
    return cost.per_call + max(wall - cost.per_call, 0.0) / _slowdown(
        cost, kind, n_workers
    )


def plan_chunks(
    costs: list[Cost],
    remaining: list[tuple[int, int]],
    *,
    n_workers: int,
    kind: str,
    cold_s: float = 0.0,
    ship_s: float = 0.0,
) -> Plan | None:
    """How to cut the remaining rows into tasks, or None when serial is faster.

    Parameters
    ----------
    costs : list of Cost
        The cost of each job's method, measured serially.
    remaining : list of (start, stop)
        The rows of each job not computed yet.
    n_workers : int
        Workers the backend will run.
    kind : {"process", "thread"}
        What the backend's workers are.
    cold_s : float, default=0.0
        One-off seconds to pay before the workers can start (pool start,
        first shipping of the models).
    ship_s : float, default=0.0
        Seconds to send the remaining rows to the workers and unpack them
        there (pickling, for processes). Charged in full: this process
        pickles every task's rows on one core, which the workers' share of
        the cores only partly overlaps (a pipeline on DataFrame rows, 2
        processes: 0.066 s predicted without it, 0.09 s to 0.12 s taken,
        22 ms of which pickling; 2 cores).
    """
    rows, serial_s, work = _serial_and_work(costs, remaining, n_workers, kind)
    total = sum(work)
    if total <= 0:
        return None
    fixed = fixed_seconds(costs, kind, n_workers)
    # Whole waves of equal tasks: as many per worker as the fixed cost per
    # task allows, up to TASKS_PER_WORKER[kind], shared among the jobs by
    # work.
    per_worker = int(total / n_workers / (fixed / MAX_OVERHEAD_FRACTION))
    n_tasks = n_workers * min(max(per_worker, 1), TASKS_PER_WORKER[kind])
    counts = [
        max(1, min(n, round(n_tasks * w / total))) if n > 0 else 0
        for w, n in zip(work, rows)
    ]
    waves = -(-sum(counts) // n_workers)
    longest = max(w / k for w, k in zip(work, counts) if k)
    parallel_s = waves * fixed + max(total / n_workers, longest) + ship_s
    if (cold_s + parallel_s) * MIN_GAIN > serial_s:
        return None
    ranges = [
        split_bounds(start, stop, k) if k else []
        for (start, stop), k in zip(remaining, counts)
    ]
    return Plan(kind, ranges, parallel_s, waves)


def ranking(plan: Plan, cold_s: float) -> float:
    """What ``plan`` is chosen by among the plans of a call: its seconds,
    with the one-off ``cold_s`` and the margin asked of processes."""
    if plan.kind != "process":
        return plan.seconds
    return plan.seconds * PROCESS_MARGIN + cold_s


def learn_thread_speedup(
    costs: list[Cost], plan: Plan, wall_s: float, rows_s: float, n_workers: int
) -> bool:
    """Lower the thread speedup of ``costs`` when warm thread plans ran far
    slower than planned ``SLOW_THREAD_RUNS`` times in a row; whether this
    one did.

    ``rows_s`` is what the plan's rows cost serially, by the costs as they
    were before its tasks taught them. A speedup measured too high on short
    chunks is not corrected otherwise: the plan's slow tasks teach the cost
    a serial time as inflated, against which threads keep paying (a
    pipeline on a DataFrame, measured at over 1.5x, ran on threads at 0.92x
    of serial, call after call; 2 cores). The speedup the run implies, with
    every wave's fixed cost paid, is kept, and threads are not measured
    again: taken half-way, the next runs' tasks had already taught the cost
    a serial time that their threads then met.
    """
    if plan.kind != "thread":
        return False
    slow = wall_s > plan.seconds * MIN_GAIN
    for cost in costs:
        cost.slow_thread_runs = cost.slow_thread_runs + 1 if slow else 0
    if not slow or min(c.slow_thread_runs for c in costs) < SLOW_THREAD_RUNS:
        return slow
    rows_wall = wall_s - plan.waves * fixed_seconds(costs, "thread", n_workers)
    scaled = _on_two_threads(rows_s / max(rows_wall, 1e-9), n_workers)
    for cost in costs:
        if cost.thread_speedup is not None and scaled < cost.thread_speedup:
            cost.thread_speedup = max(scaled, 1.0)
            cost.thread_lowered = True
            cost.thread_measurements = THREAD_MEASUREMENTS
            cost.no_gain.clear()
    return True


def raise_thread_speedup(
    costs: list[Cost], plan: Plan, wall_s: float, cpu_s: float, n_workers: int
) -> None:
    """Raise the thread speedup of a single-threaded estimator half-way
    towards what a warm thread plan kept its threads busy: ``cpu_s``, the
    CPU seconds of the threads that ran its tasks, over the plan's
    ``wall_s``.

    The speedup measured on a probe's short chunks can be lower than on a
    call's long ones, and the plans' tasks never raise it: they teach the
    cost a serial time as much too short, against which processes look
    faster than they are. SVC's threads, measured at 1.77x on 556 rows, ran
    20,000 rows 2.0x faster than serial; its processes, planned 12% faster
    than the threads, ran 3% slower (2 cores). A thread waiting for the GIL
    sleeps, so its CPU time counts only the work it did. Estimators with
    threads of their own are left alone (the task's thread is not all of
    their work), and so are plans of several jobs (whose threads' CPU time
    belongs to which job is not known) and a speedup lowered by slow runs.
    """
    if plan.kind != "thread" or len(costs) != 1 or n_workers < 2 or wall_s <= 0:
        return
    (cost,) = costs
    if cost.thread_speedup is None or cost.threads >= THREADED:
        return
    if cost.slow_thread_runs or cost.thread_lowered:
        return
    busy = _on_two_threads(min(cpu_s / wall_s, n_workers), n_workers)
    if busy > cost.thread_speedup:
        cost.thread_speedup = min(
            2.0, cost.thread_speedup + 0.5 * (busy - cost.thread_speedup)
        )
        cost.no_gain.clear()


def _on_two_threads(speedup: float, n_workers: int) -> float:
    """A speedup on ``n_workers`` threads, as on two by the Amdahl model of
    :meth:`Cost.speedup`."""
    if n_workers <= 1 or speedup >= n_workers:
        return speedup
    free = min(max((1.0 - 1.0 / max(speedup, 1.0)) / (1.0 - 1.0 / n_workers), 0), 1)
    return 1.0 / (1.0 - free / 2.0)


def learn_overhead(costs: list[Cost], plan: Plan, wall_s: float) -> None:
    """Teach the costs what a warm parallel run took beyond its plan."""
    excess = (wall_s - plan.seconds) / plan.waves
    for cost in costs:
        old = cost.overhead.get(plan.kind, 0.0)
        # Half-way towards the observed overhead: one slow run (another
        # process busy) does not swing the plan.
        cost.overhead[plan.kind] = max(0.0, old + 0.5 * excess)
        cost.no_gain.clear()
