"""What a call costs: the line fitted to its timings, how they are taken, and
the costs remembered per fitted model.

Every timed call, in-process or a worker's task, refines ``seconds = per_call
+ per_row * rows`` for its model and method, with what the estimator's own
threads (BLAS, OpenMP) and two concurrent threads of ours gain over one.
:mod:`sklearn_parpredict._probing` takes the first timings and
:mod:`sklearn_parpredict._planning` plans on them.
"""

from __future__ import annotations

import functools
import math
import os
import time
import weakref
from dataclasses import dataclass, field

import joblib

# The cores this process may use, read once (the planner asks on every call,
# and reading them takes 0.2 ms): joblib's count, which follows the CPU
# affinity and a container's CPU quota, as ``n_jobs=-1`` and scikit-learn's
# OpenMP threads do. ``os.cpu_count()`` counts the host's: in a container
# limited to 2 CPUs on a 64-core host, the wrapper's 2 workers would each
# have been allowed 32 BLAS threads.
CORES = joblib.cpu_count()
# Another process busy on a core makes threads look as if they held the GIL,
# never the opposite: a speedup below THREAD_TRUSTED is measured again, at
# once while rows remain and on later calls, up to THREAD_MEASUREMENTS times
# in all, and the best is kept.
THREAD_TRUSTED = 1.8
THREAD_MEASUREMENTS = 3
# Below THREAD_HELD, a measured speedup is the GIL's, and final, where the
# machine is known not to have slowed the measurement (see _probing), or
# taken so where that is not known (see _planning.learn_thread_trial).
THREAD_HELD = 1.25
# Where Linux counts the time the calling thread waited for a core (see
# Timer); SEES_WAITS: whether this machine has it.
_SCHEDSTAT = "/proc/thread-self/schedstat"
SEES_WAITS = os.path.exists(_SCHEDSTAT)
# A serial call that keeps this many cores busy on average runs its own
# threads (BLAS, OpenMP).
THREADED = 1.25
# Work predicted to take less than this in-process is run in-process without
# planning: no fan-out can save more than planning costs.
FAST_SERIAL_S = 0.002
# Timings kept per model and method, one per band of batch sizes.
MAX_SAMPLES = 12
# How far a cost's prediction may grow before a remembered "no plan pays"
# (Cost.no_gain) is planned again.
NO_GAIN_DRIFT = 1.2
# Checks of what a cost keeps deciding without seeing (see check_due): the
# FIRST_CHECK-th time, then twice as many times apart each time, up to
# LAST_CHECK.
FIRST_CHECK = 8
LAST_CHECK = 1024
# In-process calls predicted to take at least this long are timed even when
# nothing is planned: timing costs a few microseconds.
WATCHED_CALL_S = 0.01
# A call that took OUTGROWN times its cost's prediction, and OUTGROWN_S
# more, ran another model than the one its cost was learnt on: one refitted
# in place (a forest of one shallow tree refitted with 200 deep ones: 1 ms
# predicted, 360 ms taken), which a cost kept by the model's identity
# cannot tell. Its cost is forgotten, and probed again, where the CPU time
# says so too (a busy machine stretches wall times this much on short
# calls). Calls that a cost runs as they are, untimed otherwise, would never
# have taught it, and a thread trial on it concluded that threads gain
# nothing where they gain 2.0x (2 cores).
OUTGROWN = 10.0
OUTGROWN_S = 0.005
# A cost decides a call without planning only for batches smaller than
# EXTRAPOLATION times the most rows it was timed on; a larger one is planned
# (and, run in-process, timed). The cost per row of a fast model timed on
# small batches can be lost in the noise: LogisticRegression timed on 1,000
# rows fitted 0 s per row, and would have run 1,000,000 rows (15 ms) without
# a plan or a timing ever after.
EXTRAPOLATION = 16
# A batch size timed once more than OUTLIER times slower than the timings of
# fewer rows predict is left out of the fit, unless over a third would be.
OUTLIER = 2.0


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
        it is refined, but not down past the fastest the call has run.
    thread_speedup : float or None
        Speedup of two concurrent threads over one, the best of up to
        ``THREAD_MEASUREMENTS`` measurements; ``None`` until measured. Below 2
        the estimator holds the GIL part of the time.
    thread_measurements : int
        How many times the thread speedup was measured.
    overhead : dict
        Per kind of worker, seconds per wave of tasks that past parallel
        runs took beyond the prediction; negative for threads whose calls'
        fixed costs overlap (see :func:`._planning.learn_overhead`).
    no_gain : dict
        Per setting of the workers, the most rows for which no plan could
        pay (see :func:`._planning.can_pay`) and the seconds they were
        predicted to take: a call on as many rows or fewer is decided without planning
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
    # One timing per band of batch sizes: (rows, wall, cpu, times timed).
    samples: list = field(default_factory=list, repr=False)
    min_threads: float = 1.0
    # The fewest seconds per row that a timing took, its fixed cost in it
    # (see own_speedup).
    fastest_per_row: float = field(default=math.inf, repr=False)
    no_gain: dict = field(default_factory=dict, repr=False)
    # Warm thread plans in a row that ran far slower than planned.
    slow_thread_runs: int = field(default=0, repr=False)
    # Whether slow runs lowered the thread speedup: it is not raised again.
    thread_lowered: bool = field(default=False, repr=False)
    # Calls decided by a remembered "no plan pays" since workers' overheads
    # were last forgiven, and how many times they were (see
    # _in_process.known_no_gain).
    no_gain_calls: int = field(default=0, repr=False)
    overhead_checks: int = field(default=0, repr=False)
    # Parallel plans predicted to gain little that ran since the serial call
    # was last timed, and how many times it was timed so (see
    # _planning.checks_serial).
    unchecked_plans: int = field(default=0, repr=False)
    serial_checks: int = field(default=0, repr=False)
    # Whether the last call run as it is outgrew the cost by its wall time:
    # the next one is judged by its CPU time (see _in_process.direct_call).
    outgrown_once: bool = field(default=False, repr=False)
    # Whether the method's outputs proved not to be one row per input row
    # (see _chunking.NotPerRow.lasting): its rows run in one piece.
    whole: bool = field(default=False, repr=False)
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

    def forgives_overhead(self) -> bool:
        """Count a call that a remembered "no plan pays" decided; now and
        then (see :func:`check_due`), halve what process workers were seen
        to cost beyond their plans, and say so: the call is planned again.

        That overhead is learnt only from parallel runs, which a remembered
        "no plan pays" stops: learnt from two runs slowed by a busy moment,
        it kept a pipeline's processes off for good, at 1.0x where they had
        run it about 1.3x faster than serial (2 cores). Where they are as
        slow as it says, the next runs teach it back (half-way each). A
        thread overhead is left alone: threads slower than planned lower
        their speedup instead (see :func:`._planning.learn_thread_speedup`).
        """
        overhead = self.overhead.get("process", 0.0)
        if overhead <= 0:
            return False
        self.no_gain_calls += 1
        if not check_due(self.no_gain_calls, self.overhead_checks):
            return False
        self.no_gain_calls = 0
        self.overhead_checks += 1
        self.overhead["process"] = overhead / 2
        self.no_gain.clear()
        return True

    def seconds(self, rows: int) -> float:
        return self.per_call + self.per_row * rows

    def add(
        self, rows: int, wall: float, cpu: float, *, in_process: bool = True
    ) -> None:
        """Refine the cost with one more timing: a call in-process, or a
        task's (``in_process=False``), scaled to what the serial call would
        have taken by what its plan assumed."""
        # One sample per band of batch sizes, averaged with the earlier
        # timings in the band (the mean of points on a line is on the line):
        # the near-equal tasks of repeated calls must neither crowd out the
        # other sizes that separate the fixed cost of a call from its cost
        # per row, nor fit a slope to the noise between 2,499 and 2,501 rows.
        # Only what the serial call ran: a task's time is scaled by the
        # speedup of the estimator's own threads that the plan assumed (all
        # the cores, before it is measured), and a fastest time taken from
        # it would hold that speedup for good (a model gaining nothing from
        # its threads kept 2x on 2 cores).
        if rows > 0 and in_process:
            self.fastest_per_row = min(self.fastest_per_row, wall / rows)
        band = _band(rows)
        same = [s for s in self.samples if _band(s[0]) == band]
        times = 1
        if same:
            old_rows, old_wall, old_cpu, old_times = same[0]
            rows, wall, cpu, times = (
                (old_rows + rows) / 2,
                (old_wall + wall) / 2,
                (old_cpu + cpu) / 2,
                old_times + 1,
            )
        others = [s for s in self.samples if _band(s[0]) != band]
        self.samples = [*others, (rows, wall, cpu, times)][-MAX_SAMPLES:]
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

        The serial cost per row is taken at most at the fastest any timing
        ran, fixed cost included: a machine slow for a while slows the
        call's threads, but the workers' too. On one 2-core machine,
        KNeighborsClassifier's 1,000 rows took 29-31 ms on its threads for
        seconds, then 40-45 ms, while one thread's 500 rows held at 28 ms;
        processes on them, without transfer, ran at 0.49x-1.08x of serial
        in both spells. Measured in a slow one, the threads' speedup was
        1.36x, and two processes planned at 31 ms took 45 ms. Not every
        estimator's workers slow down with its threads: in the slow spells
        of HistGradientBoostingClassifier's 100,000 rows (263-281 ms on its
        threads, 222-236 ms otherwise) two processes of one thread each ran
        1.15x-1.23x faster than serial. That gain is given up (the call
        stays in-process), where nearest neighbours' processes lost up to
        half the call.
        """
        if self.one_thread_per_row is None:
            return None
        per_row = min(self.per_row, self.fastest_per_row)
        if per_row <= 0:
            return 1.0
        return min(max(self.one_thread_per_row / per_row, 1.0), float(CORES))

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


def check_due(since: int, checks: int) -> bool:
    """Whether a check is due after ``since`` decisions, ``checks`` checks
    made: the ``FIRST_CHECK``-th, then twice as many apart each time, up to
    ``LAST_CHECK``. Where the decision is right, its checks grow ever rarer;
    where it is wrong, a check finds it out."""
    return since >= min(FIRST_CHECK << min(checks, 16), LAST_CHECK)


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
    wall = [s[1] for s in samples]
    cores = float(CORES)
    threads = min(max(sum(s[2] for s in samples) / max(sum(wall), 1e-9), 1.0), cores)
    points = sorted((float(s[0]), s[1], s[3] > 1) for s in samples)
    sums = _without_outliers(points)
    if 3 * (len(points) - sums.n) > len(points):
        # Too many left out: the timings do not lie on a line; all are kept.
        sums = _Sums()
        for r, w, _ in points:
            sums.add(r, w)
    return (*sums.line(), threads)


def _without_outliers(points: list) -> _Sums:
    """The sums of the points (sorted by rows) that are not slow outliers."""
    # Noise only ever slows a call: another process on a core, BLAS threads
    # woken from sleep (a LogisticRegression's 65,536 rows took 0.9 ms hot,
    # 3.5-4.6 ms in probes; 2 cores). Least squares follows such a timing for
    # good: a serial call planned 2-3x too slow, and threads chosen at 0.54x
    # of it. Each point, in order of rows, is held against the line through
    # the kept points with fewer rows; through one point, that line charges
    # it all to the rows, the slowest a line with no negative fixed cost
    # allows. A band timed again is held whatever it takes: the machine, not
    # the noise, turned slower (a model that took 5 ms on 1,000 rows,
    # then 20 ms).
    sums = _Sums()
    sums.add(*points[0][:2])
    for r, w, again in points[1:]:
        per_call, per_row = sums.line()
        if again or w <= OUTLIER * (per_call + per_row * r):
            sums.add(r, w)
    return sums


class _Sums:
    """Least squares of wall time on rows, from running sums: this runs after
    every timed call, where numpy's polyfit would cost more than predicting a
    few rows. (Samples are one per band of sizes, so the rows never lie close
    enough for the sums to lose the spread.)"""

    def __init__(self):
        self.n = self.sx = self.sy = self.sxx = self.sxy = 0.0

    def add(self, rows: float, wall: float) -> None:
        self.n += 1
        self.sx += rows
        self.sy += wall
        self.sxx += rows * rows
        self.sxy += rows * wall

    def line(self) -> tuple[float, float]:
        """``(per_call, per_row)``: neither negative."""
        n, sx, sy = self.n, self.sx, self.sy
        spread = self.sxx - sx * sx / n
        if spread <= 1e-9 * self.sxx:
            # One size only: charge it all to the rows, which errs towards
            # parallel only for work that is already slow.
            return 0.0, sy / max(sx, n)
        per_row = (self.sxy - sx * sy / n) / spread
        if per_row <= 0:
            # Within noise, the rows cost nothing: the call's fixed cost is all.
            return sy / n, 0.0
        per_call = (sy - per_row * sx) / n
        if per_call < 0:
            return 0.0, sy / sx
        return per_call, per_row


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
_remembered: dict[int, tuple[weakref.ref, dict[str, Cost]]] = {}


def remembered_cost(model, method: str) -> Cost | None:
    entry = _remembered.get(id(model))
    if entry is None or entry[0]() is not model:
        return None
    return entry[1].get(method)


def costs_of(model) -> dict[str, Cost] | None:
    """The model's remembered costs by method: the very dict that later
    timings of the model fill in. None when the model cannot be weakly
    referenced, and so nothing is remembered for it."""
    entry = _remembered.get(id(model))
    if entry is None or entry[0]() is not model:
        entry = keep_by_id(_remembered, model, {})
        if entry is None:
            return None
    return entry[1]


def outgrown(predicted: float, seconds: float) -> bool:
    """Whether work predicted to take ``predicted`` seconds, which took
    ``seconds``, ran a model other than its cost's (see OUTGROWN)."""
    return seconds > max(OUTGROWN * predicted, predicted + OUTGROWN_S)


def forget_cost(model, method: str, cost: Cost) -> None:
    """Forget ``cost``, the model's remembered cost of ``method``, unless
    another has replaced it meanwhile."""
    entry = _remembered.get(id(model))
    if entry is not None and entry[0]() is model and entry[1].get(method) is cost:
        entry[1].pop(method, None)


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
