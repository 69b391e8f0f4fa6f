"""Plans for ``chunk_size="auto"``: in-process, or how many chunks on which
workers.

The engine times the first rows of each job in-process (their output is kept,
so probing computes nothing twice; see :mod:`._probing`) and asks this module,
with the costs fitted to those timings (:mod:`._costs`), whether the remaining
rows are worth sending to workers, on threads or processes, and in how many
chunks. What a parallel run then took teaches the costs what the plan left
out: the workers' overhead, and a thread speedup measured too low or too
high.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from sklearn_parpredict import _costs, _sharing
from sklearn_parpredict._chunking import split_bounds
from sklearn_parpredict._costs import Cost

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
# Per task: pickling arguments and results and the round trip to a worker.
DISPATCH_S = {"process": 2e-3, "thread": 2e-4}
# Starting a process pool (interpreters importing numpy and scikit-learn), and
# shipping a model to the workers for the first time.
COLD_POOL_S = 0.5
COLD_MODEL_S = 0.05
# And per byte of the model's pickle: writing it, and loading it in the
# workers (at once). A 300-tree forest's 67 MB took 0.13 s to write and 0.30 s
# to load; its first call on 10,000 rows beside warm workers, counted as
# 0.05 s, took 1.06 s against 0.30 s in-process (2 cores).
SHIP_S_PER_BYTE = 6.5e-9
# Aim for this many tasks per worker when the fixed cost per task allows it:
# more tasks balance uneven workers, fewer pay less fixed cost. Processes
# take two, so that a worker computes one while the result of the other is
# sent back (a 5-tree forest on 500,000 rows, 2 processes: 124 ms in 2
# tasks, 122 ms in 4, 142 ms in 16; 2 cores). Threads have nothing to
# overlap, and a second task cost more than the cost model's fixed cost
# says: RandomForest (100 trees) on 500,000 rows, 2 threads, 1.189 s in 2
# tasks against 1.234 s in 4 (medians of 8, 2 cores; the fork ceiling's 2
# tasks took 1.14 to 1.17 s).
TASKS_PER_WORKER = {"process": 2, "thread": 1}
MAX_OVERHEAD_FRACTION = 0.02
# A warm plan predicted to gain less than CHECKED_GAIN over serial rests on
# a serial time that its runs never observe again: now and then (see
# _costs.check_due), such a run runs in-process instead and is timed. Where
# the plan is right, a check loses a third of a call at most (at 1.5x), ever
# more rarely; where it is wrong, a check finds it out.
CHECKED_GAIN = 1.5


def shipping_s(models: Iterable) -> float:
    """Seconds that sending ``models`` to workers costs, once."""
    seconds = 0.0
    for model in {id(model): model for model in models}.values():
        nbytes = _sharing.pickled_bytes(model)
        seconds += COLD_MODEL_S + SHIP_S_PER_BYTE * (nbytes or 0)
    return seconds


@dataclass
class Plan:
    """Row ranges per job for the workers and the predicted wall time."""

    kind: str
    ranges: list[list[tuple[int, int]]]
    seconds: float
    waves: int
    # Predicted seconds of the same rows in-process (0: not predicted).
    serial_s: float = 0.0
    # A thread plan run to measure the threads, on calls too small to
    # measure them within one (see learn_thread_trial).
    trial: bool = False


def fixed_seconds(costs: list[Cost], kind: str, n_workers: int) -> float:
    """Seconds a wave of tasks pays beside its rows: the largest fixed cost
    of a call, what plans of ``kind`` were seen to cost beyond their
    prediction, and the dispatch of a task.

    On threads, the calls of a wave pay their fixed costs one after another:
    a call's own Python code (a forest's loop over its trees) holds the GIL.
    """
    calls = n_workers if kind == "thread" else 1
    # What threads learnt beyond their plans may be negative, down to one
    # call's fixed cost per wave (see learn_overhead).
    slowest = max(
        max(c.per_call * calls + c.overhead.get(kind, 0.0), c.per_call) for c in costs
    )
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
    return replace(cost, one_thread_per_row=min(cost.per_row, cost.fastest_per_row))


def cores_per_worker(n_workers: int) -> int:
    """Each of ``n_workers`` workers' share of the cores (at least one): the
    threads of its own an estimator gets there (BLAS, OpenMP)."""
    return max(1, _costs.CORES // n_workers)


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
        (1 if cost.whole else max(1, min(n, round(n_tasks * w / total))))
        if n > 0
        else 0
        for cost, w, n in zip(costs, work, rows)
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
    return Plan(kind, ranges, parallel_s, waves, serial_s)


def checks_serial(costs: list[Cost], plan: Plan) -> bool:
    """Whether a warm ``plan``, predicted to gain less than ``CHECKED_GAIN``,
    runs in-process instead this time, to time the serial call again.

    A plan's own runs teach the costs what their tasks took, scaled back to a
    serial call by what the plan assumed; a serial time predicted too slow
    stays so (a LogisticRegression planned at 5 ms for 1.5 ms ran on threads
    at 0.54x of serial, call after call; 2 cores).
    """
    if plan.serial_s >= plan.seconds * CHECKED_GAIN:
        return False
    for cost in costs:
        cost.unchecked_plans += 1
    if any(not _costs.check_due(c.unchecked_plans, c.serial_checks) for c in costs):
        return False
    for cost in costs:
        cost.unchecked_plans = 0
        cost.serial_checks += 1
    return True


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
    scaled = _on_two_threads(
        _rows_speedup(costs, plan, wall_s, rows_s, n_workers), n_workers
    )
    for cost in costs:
        if cost.thread_speedup is not None and scaled < cost.thread_speedup:
            cost.thread_speedup = max(scaled, 1.0)
            cost.thread_lowered = True
            cost.thread_measurements = _costs.THREAD_MEASUREMENTS
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
    if cost.thread_speedup is None or cost.threads >= _costs.THREADED:
        return
    if cost.slow_thread_runs or cost.thread_lowered:
        return
    busy = _on_two_threads(min(cpu_s / wall_s, n_workers), n_workers)
    if busy > cost.thread_speedup:
        cost.thread_speedup = min(
            2.0, cost.thread_speedup + 0.5 * (busy - cost.thread_speedup)
        )
        cost.no_gain.clear()


def _rows_speedup(
    costs: list[Cost], plan: Plan, wall_s: float, rows_s: float, n_workers: int
) -> float:
    """The speedup of a thread plan's rows (``rows_s`` serially) that makes
    the plans' model of threads, every wave's fixed costs paid one after
    another, take the ``wall_s`` it took."""
    rows_wall = wall_s - plan.waves * fixed_seconds(costs, "thread", n_workers)
    return rows_s / max(rows_wall, 1e-9)


def _on_two_threads(speedup: float, n_workers: int) -> float:
    """A speedup on ``n_workers`` threads, as on two by the Amdahl model of
    :meth:`Cost.speedup`."""
    if n_workers <= 1 or speedup >= n_workers:
        return speedup
    free = min(max((1.0 - 1.0 / max(speedup, 1.0)) / (1.0 - 1.0 / n_workers), 0), 1)
    return 1.0 / (1.0 - free / 2.0)


def learn_overhead(
    costs: list[Cost], plan: Plan, wall_s: float, n_workers: int
) -> None:
    """Teach the costs what a warm parallel run took beyond its plan.

    On threads that may be less than nothing: plans take the fixed costs of
    a wave's calls as paid one after another, holding the GIL, where part of
    them may release it and overlap. A 300-tree forest's calls of 10,000
    rows, 34 ms of each its fixed cost, ran on two threads in 0.16 s, as
    fast as the fork ceiling, where plans predicted 0.19 s to 0.21 s, and
    the pool's processes 0.15 s (they took 0.17 s; 2 cores).
    """
    excess = (wall_s - plan.seconds) / plan.waves
    for cost in costs:
        old = cost.overhead.get(plan.kind, 0.0)
        floor = -(n_workers - 1) * cost.per_call if plan.kind == "thread" else 0.0
        # Half-way towards the observed overhead: one slow run (another
        # process busy) does not swing the plan.
        cost.overhead[plan.kind] = max(floor, old + 0.5 * excess)
        cost.no_gain.clear()


def learn_thread_trial(
    costs: list[Cost], plan: Plan, wall_s: float, cpu_s: float, n_workers: int
) -> None:
    """Measure the thread speedup of a single-threaded estimator on a trial
    ``plan``: a whole call on threads, where its rows were too few to
    measure threads within the call (see :func:`._probing.measure_threads`).

    The measurement is the speedup of the rows that makes the plans' model
    of threads (every wave's fixed costs paid one after another, then the
    rows; see :func:`fixed_seconds`) take ``wall_s``, as
    :func:`learn_thread_speedup` reads a slow run, but no more than what the
    plan kept its threads busy (``cpu_s``, the CPU seconds of the threads
    that ran its tasks, over ``wall_s``: a thread waiting for the GIL
    sleeps), as on two threads. The serial time it is read against may be
    inflated by a slow first call, and would pass for a speedup; a whole
    call's speedup taken for the rows' would leave threads that ran a
    300-tree forest's calls of 10,000 rows 1.7x faster than serial (its
    fixed cost 34 ms a call) predicted too slow to pay (2 cores). A
    pipeline on a DataFrame kept two threads busy 1.34x while they ran its
    call slower than serial: threads that contend for the GIL burn CPU
    handing it over. It counts as one of the cost's measurements, the best
    of which is kept (another process busy during a trial slows it, and
    the time its threads waited for a core is not known), but one below
    ``THREAD_HELD`` is final: trials are planned at the threads' best, and
    a warm process pool let a pipeline's calls, as slow on threads as
    serially, be tried three times.
    """
    (cost,) = costs
    # Threads beyond the cores cannot run at once.
    workers = max(1, min(n_workers, _costs.CORES))
    rows_s = max(plan.serial_s - cost.per_call, 0.0)
    speedup = min(
        _rows_speedup(costs, plan, wall_s, rows_s, n_workers),
        cpu_s / max(wall_s, 1e-9),
        float(workers),
    )
    two = _on_two_threads(speedup, workers)
    cost.add_thread_speedup(two, final=two < _costs.THREAD_HELD)
