"""The one fan-out engine: plan row-chunk tasks, run them, gather in order.

Both wrappers and :func:`parallel_predict` describe their work as a list of
:class:`~._jobs.Job` (an estimator, a method, an input, optionally a column
selection). The engine decides how the jobs' rows are cut into tasks, runs the
tasks on a joblib backend and joins each job's outputs into exactly what the
serial call returns.

Its parts: :mod:`._in_process` keeps the calls that need no plan in this
process; :mod:`._probing` measures a job's cost on the call's own rows;
:mod:`._planning` turns costs into a plan; :mod:`._pools` knows which pools
of processes run and which models they hold; :mod:`._fanout` hands the tasks
to joblib; :mod:`._rows` and :mod:`._pickled` carry the tasks' rows to
processes and their outputs back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import threading
from collections.abc import Callable
from numbers import Integral
from typing import Any, TypeAlias

import joblib
from joblib._parallel_backends import ParallelBackendBase
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    StrOptions,
)

from sklearn_parpredict import (
    _chunking,
    _costs,
    _distributed,
    _in_process,
    _lazy,
    _planning,
    _pools,
    _probing,
    _rowwise,
    _threads,
)
from sklearn_parpredict._fanout import (
    active_backend,
    backend_configured,
    fan_out,
    parallel_config,
)
from sklearn_parpredict._jobs import Job, run_returned, run_timed
from sklearn_parpredict._pickled import (
    PickledRows,
    Spool,
    object_columns,
    pickling_per_row,
    received,
)
from sklearn_parpredict._rows import SharedArray, SharedRows, shares
from sklearn_parpredict._sharing import ModelHandle, can_ship

# Why each call ran as it did, for users asking why a call stayed in-process:
# ``logging.getLogger("sklearn_parpredict").setLevel(logging.DEBUG)``.
logger = logging.getLogger("sklearn_parpredict")


_n_workers: dict[tuple, int] = {}


def _backend(n_jobs, backend):
    """The joblib backend instance a call would use, and its worker count.

    Inside a joblib worker (the wrapper nested in ``GridSearchCV(n_jobs=2)``
    or in another wrapper) or a Dask worker's task, the outer level already
    uses the cores: fanning out again would only oversubscribe them, so the
    call stays in-process unless a backend was named explicitly.
    """
    active, default_n_jobs = active_backend(backend)
    nested = (getattr(active, "nesting_level", None) or 0) > 0
    if backend is None and (nested or _threads.in_worker() or _distributed.in_worker()):
        return active, 1
    # Counting usable cores reads cgroup files: remember it per setting. A
    # cluster's workers come and go: ask it every time. joblib's count also
    # depends on where the call runs: one worker for process backends below
    # another level (another library's threads) or in a daemon process. A
    # call nested so left its count to every later call on the backend,
    # which stayed in-process even on the main thread.
    key = (
        type(active),
        n_jobs,
        default_n_jobs,
        getattr(active, "nesting_level", None),
        threading.current_thread() is threading.main_thread(),
        multiprocessing.current_process().daemon,
    )
    if key not in _n_workers or _distributed.cluster_for(active):
        with parallel_config(backend):
            _n_workers[key] = joblib.effective_n_jobs(n_jobs)
    return active, _n_workers[key]


_valid_backends: set[str] = set()


def _check_backend(backend) -> None:
    """Raise joblib's error for a backend name it does not know.

    Checked on every call, so that a wrong name fails even when the call
    stays in-process.
    """
    if isinstance(backend, str) and backend not in _valid_backends:
        active_backend(backend)
        _valid_backends.add(backend)


def run_one(
    estimator,
    method: str,
    X,
    params: dict,
    *,
    n_jobs: int | None = -1,
    backend: str | None = None,
    chunk_size: int | str = "auto",
    verbose: int = 0,
):
    """Run one method of one estimator: :func:`run_jobs` on a single job.

    A small batch is decided first, before any job is built: it should cost
    what the serial call costs.
    """
    if chunk_size == "auto":
        how = (
            _in_process.TOO_LITTLE
            if _in_process.plainly_small(estimator, method, X)
            else _in_process.known_no_gain(estimator, method, X, n_jobs, backend)
        )
        if how:
            if backend is not None:
                _check_backend(backend)
            if logger.isEnabledFor(logging.DEBUG):
                _log([Job(estimator, method, X)], [_chunking.n_rows(X)], how)
            if how is _in_process.NO_GAIN:
                return _in_process.call_watched(estimator, method, X, params)
            cost = _costs.remembered_cost(estimator, method)
            return _in_process.direct_call(cost, estimator, method, X, params)
    job = Job(estimator, method, X, params=params)
    return run_jobs(
        [job],
        n_jobs=n_jobs,
        backend=backend,
        chunk_size=chunk_size,
        verbose=verbose,
        _settings=(n_jobs, backend),
    )[0]


def run_jobs(
    jobs: list[Job],
    *,
    n_jobs: int | None = -1,
    backend: str | None = None,
    chunk_size: int | str = "auto",
    verbose: int = 0,
    _settings: tuple | None = None,
) -> list:
    """Run every job and return their outputs, each as the serial call's.

    The outputs are in job order; each is what
    ``getattr(job.estimator, job.method)(X, **job.params)`` returns, where
    ``X`` is ``job.X`` restricted to ``job.columns``. Dask collections give
    lazy Dask collections, computed block by block by Dask's scheduler
    (see :func:`._lazy.call`).
    """
    _check_backend(backend)
    if any(_lazy.is_collection(job.X) for job in jobs):
        return [
            _lazy.call(job.estimator, job.method, job.X, job.columns, job.params)
            for job in jobs
        ]
    for job in jobs:
        # Fail as the serial call does when the method is missing.
        getattr(job.estimator, job.method)
    if not all(
        _chunking.cuttable(job.X) and not _rowwise.rejects_whole(job.estimator, job.X)
        for job in jobs
    ):
        _log(jobs, [0] * len(jobs), "in-process: an input not to cut by rows")
        return [job.call() for job in jobs]
    for job in jobs:
        job.sparse_type = _chunking.serial_format(job.X)
        job.X = _chunking.prepare(job.X)
    sizes = [_chunking.n_rows(job.X) for job in jobs]
    auto = chunk_size == "auto"
    rows_per_task = 0 if auto else int(chunk_size)
    if auto and _in_process.too_small(jobs, sizes):
        _log(jobs, sizes, _in_process.TOO_LITTLE)
        return [
            _in_process.direct_call(
                _costs.remembered_cost(job.estimator, job.method),
                job.estimator,
                job.method,
                job.X,
                job.params,
                job.call,
            )
            for job in jobs
        ]
    active, n_workers = _backend(n_jobs, backend)
    n_workers = min(n_workers, max(sizes, default=0))
    if not auto:
        # joblib starts every worker asked for, even with fewer tasks:
        # n_jobs=1000 started hundreds of processes for two chunks.
        n_tasks = sum(-(-n // rows_per_task) for n in sizes)
        n_workers = min(n_workers, max(n_tasks, _costs.CORES))
    if n_workers <= 1:
        _log(jobs, sizes, "in-process: one worker")
        return [job.call() for job in jobs]
    if not all(
        _rowwise.splittable(job.estimator, job.method, job.params, job.X, job.columns)
        for job in jobs
    ):
        _log(jobs, sizes, "in-process: predictions depend on the batch")
        return [job.call() for job in jobs]

    kind = "thread" if getattr(active, "uses_threads", False) else "process"
    pool_key = (type(active).__name__, n_workers)
    # Dask and Ray workers may be other machines: models and rows go through
    # the cluster rather than local files.
    cluster = _distributed.cluster_for(active)
    # Outputs computed so far, per job, as (start, stop, output).
    done: list[list[tuple[int, int, Any]]] = [[] for _ in jobs]
    costs, plan, cold_s = None, None, 0.0
    if auto:
        costs, plan, cold_s = _auto_plan(
            jobs, sizes, done, n_workers, kind, backend, pool_key, cluster, _settings
        )
    else:
        ranges = [
            _chunking.split_bounds(0, n, -(-n // rows_per_task), most=rows_per_task)
            for n in sizes
        ]
        if sum(map(len, ranges)) > 1:
            plan = _planning.Plan(kind, ranges, 0.0, 1)

    how = _in_process.NO_GAIN
    # Now and then, a warm plan that gains little on remembered costs runs
    # in-process, timed: its own runs never time the serial call it beats.
    if plan is not None and costs is not None and not cold_s and not any(done):
        if _planning.checks_serial(costs, plan):
            plan, how = None, _in_process.SERIAL_CHECK
    if plan is None:
        # Serial is faster: finish each job with one in-process call, timed
        # to refine its cost.
        _log(jobs, sizes, how)
        for j, (job, n, pieces) in enumerate(zip(jobs, sizes, done)):
            start = _probing.done_rows(pieces)
            if pieces and start >= n:
                continue
            out = _in_process.learning_call(
                None if costs is None else costs[j],
                n - start,
                job.call,
                *((start, n) if pieces else ()),
            )
            pieces.append((start, n, out))
        if costs is not None and _settings is not None and len(jobs) == 1:
            _in_process.remember_no_gain(costs[0], _settings, sizes[0], refresh=True)
    else:
        # A thread plan chosen for a backend left to us runs on threads.
        run_backend = (
            "threading"
            if plan.kind != kind
            else _distributed.parallel_backend(backend, active)
        )

        # What the plan's rows cost serially, before its tasks teach the costs.
        rows_s = (
            sum(c.per_row * (b - a) for c, r in zip(costs, plan.ranges) for a, b in r)
            if costs
            else 0.0
        )

        def run():
            return _run_parallel(
                jobs, plan, costs, done, n_workers, run_backend, verbose, cluster
            )

        calm = _pools.calm()
        with _costs.Timer() as timer:
            if cluster is None:
                timings = run()
            else:
                # Once more, should a lost worker take a model with it.
                timings = cluster.run(run, [job.estimator for job in jobs])
        _log(
            jobs,
            sizes,
            f"{sum(map(len, plan.ranges))} tasks on {n_workers} {plan.kind} "
            f"workers in {timer.wall:.3g} s"
            + (f" (predicted {plan.seconds:.3g} s)" if auto else ""),
        )
        if (
            costs is not None
            and _pools.calm_since(calm)
            and not (plan.kind == "thread" and _forget_outgrown(jobs, costs, timings))
        ):
            cpu_s = sum(t[3] for t in timings)
            # A trial was planned at the threads' best: what it took beyond
            # that is their speedup, learnt from it, not slowness or
            # overhead.
            warm = not cold_s and not plan.trial
            if plan.trial:
                _planning.learn_thread_trial(costs, plan, timer.wall, cpu_s, n_workers)
                _log(
                    jobs,
                    sizes,
                    "threads tried on the whole call: their speedup now "
                    f"{costs[0].thread_speedup:.2f}x",
                )
            # A warm thread plan far slower than planned teaches nothing
            # from its tasks: they would teach the cost a serial time as
            # slow as the threads were, against which they would go on
            # looking fast enough.
            slow = warm and _planning.learn_thread_speedup(
                costs, plan, timer.wall, rows_s, n_workers
            )
            if not slow:
                if warm:
                    _planning.raise_thread_speedup(
                        costs, plan, timer.wall, cpu_s, n_workers
                    )
                _learn_from_tasks(costs, plan, n_workers, timings)
                if warm:
                    _planning.learn_overhead(costs, plan, timer.wall, n_workers)
        if plan.kind == "process":
            _pools.ran(jobs, pool_key)
    return [_join(job, pieces) for job, pieces in zip(jobs, done)]


def _join(job: Job, pieces: list):
    """The job's output from its pieces' outputs, or from one call on all
    its rows when those are not one row of output per row of input (a
    method returning one value for the whole batch)."""
    pieces = sorted(pieces, key=_start)
    try:
        return _chunking.concatenate(
            [out for _, _, out in pieces], [b - a for a, b, _ in pieces]
        )
    except _chunking.NotPerRow as exc:
        _log([job], [_chunking.n_rows(job.X)], f"again in-process: {exc}")
        cost = _costs.remembered_cost(job.estimator, job.method)
        if exc.lasting and cost is not None:
            # Not split again: every later split would be undone so.
            cost.whole = True
        return job.call()


def _log(jobs: list[Job], sizes: list[int], how: str) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        what = ", ".join(
            f"{type(job.estimator).__name__}.{job.method}" for job in jobs[:3]
        )
        more = f" and {len(jobs) - 3} more" if len(jobs) > 3 else ""
        logger.debug("%s%s on %s rows: %s", what, more, sum(sizes), how)


@contextlib.contextmanager
def _earlier_jobs_first(jobs: list[Job], sizes: list[int], done, j: int):
    """Where rows of job ``j`` fail in-process (its probe, a measurement),
    raise the error the serial loop meets first: that of the rows the jobs
    before it have left, which it runs first (a MultiModelPredictor's
    second model failed on its first rows, where the first model's later
    rows fail). Those rows run in-process, in order, on failure only.
    """
    try:
        yield
    except Exception:
        for job, n, pieces in zip(jobs[:j], sizes, done):
            start = _probing.done_rows(pieces)
            if start >= n:
                continue
            try:
                job.call(start, n)
            except Exception as earlier:
                # Shown as the serial call shows it, not as raised while
                # handling the later job's.
                earlier.__suppress_context__ = True
                raise
        raise


def _auto_plan(
    jobs, sizes, done, n_workers, kind, backend, pool_key, cluster=None, settings=None
):
    """Probe the jobs' costs and choose a plan (None: finish in-process).

    Returns the costs, the plan and the one-off start-up it pays. When no
    plan can pay for all the rows of a single job, that is remembered under
    its call's ``settings`` (see :func:`._in_process.known_no_gain`).
    """
    costs = []
    for j, (job, n, pieces) in enumerate(zip(jobs, sizes, done)):
        with _earlier_jobs_first(jobs, sizes, done, j):
            costs.append(_probing.probe(job, n, pieces))
    cold_s = 0.0
    pool_cold = kind == "process" and not _pools.is_warm(pool_key, n_workers)
    if kind == "process":
        cold_s = _planning.COLD_POOL_S * pool_cold
        # Workers already running (started by another call, another
        # library) have not loaded these models yet.
        cold_s += _planning.shipping_s(
            job.estimator for job in jobs if not _pools.shipped(job.estimator, pool_key)
        )
    if cluster is not None:
        # A cluster is running already; what a first call pays is shipping
        # the models it does not hold yet.
        unshipped = [j.estimator for j in jobs if not cluster.shipped(j.estimator)]
        cold_s = _planning.shipping_s(unshipped)

    def remaining():
        # The rows each job has left: probes and measurements do some.
        return [(_probing.done_rows(p), n) for p, n in zip(done, sizes)]

    pickling: list[float] = []  # per job, seconds a row costs to send to a process

    def plan(kind, cold_s=0.0, costs=costs):
        rows = remaining()
        ship_s = 0.0
        if kind == "process" and cluster is None:
            if not pickling:
                pickling.extend(pickling_per_row(job.X) for job in jobs)
            ship_s = sum(
                per_row * (stop - start)
                for per_row, (start, stop) in zip(pickling, rows)
                if stop > start
            )
        return _planning.plan_chunks(
            costs, rows, n_workers=n_workers, kind=kind, cold_s=cold_s, ship_s=ship_s
        )

    # Processes are joblib's default, but threads cost nothing to start and
    # copy nothing: when the choice is ours, measure how much of each
    # estimator's work releases the GIL (again, a few times, while the
    # measurement may have been spoilt by load), and take the faster plan.
    try_threads = kind == "process" and backend is None and not backend_configured()
    ours = try_threads
    kinds = (kind, "thread") if try_threads else (kind,)

    @functools.cache
    def ships() -> bool:
        # Whether the models pickle, found out only for a plan on processes
        # (it writes them for the workers). One that does not runs on
        # threads or in-process when the backend is ours to choose; a
        # process backend asked for fails, naming the cause.
        if kind != "process" or cluster is not None:
            return True
        return all(can_ship(job.estimator) for job in jobs)

    # Remembered for the next calls on as many rows or fewer: no plan pays.
    remember = settings is not None and len(jobs) == 1 and not done[0]
    # Estimators that run threads of their own, not measured yet, are
    # planned at first as if those gained nothing.
    hopeful = [_planning.optimistic(c) for c in costs]
    if not _planning.can_pay(hopeful, remaining(), n_workers, kinds):
        # Not even a perfect share of the rows among warm workers would pay.
        if remember:
            _in_process.remember_no_gain(costs[0], settings, sizes[0])
        return costs, None, 0.0
    # A measurement is worth it when workers as good as they could be would
    # pay: first of the speedup of the estimator's own threads, which
    # workers take cores from, then of threads of ours.
    unmeasured = any(h is not c for h, c in zip(hopeful, costs))
    if unmeasured and (plan(kind, costs=hopeful) or plan("thread", costs=hopeful)):
        for j, (job, cost, n, pieces) in enumerate(zip(jobs, costs, sizes, done)):
            if cost.wants_own_measurement():
                with _earlier_jobs_first(jobs, sizes, done, j):
                    _probing.measure_own_threads(job, cost, n, pieces)
    measure = [c.wants_thread_measurement() for c in costs]
    measured = [c.thread_measurements for c in costs]
    if try_threads and any(measure) and (plan("thread") or plan(kind)):
        for j, (job, cost, n, pieces, wanted) in enumerate(
            zip(jobs, costs, sizes, done, measure)
        ):
            if wanted:
                with _earlier_jobs_first(jobs, sizes, done, j):
                    _probing.measure_threads(job, cost, n, pieces)
    # Threads never measured (too few rows to measure them) are not guessed.
    unmeasured = try_threads and any(c.thread_speedup is None for c in costs)
    plans = [
        p
        for p in (plan(kind, cold_s), try_threads and not unmeasured and plan("thread"))
        if p
    ]
    if try_threads and _trial_wanted(jobs, costs, measured):
        # ... but tried on a whole call, where threads at their best would
        # be the best plan: a 300-tree forest's fixed cost of 34 ms asks for
        # 8,300 rows per chunk of a measurement, and its calls of 10,000
        # rows ran in-process until processes started, where two threads
        # ran them as fast as the fork ceiling (2 cores). As measurements
        # are, up to three times while they find threads slower than
        # trusted (the machine may have been busy); rows that hold the GIL
        # lose one call to a trial, once per model and method (see
        # _planning.learn_thread_trial).
        best_case = [dataclasses.replace(c, thread_speedup=None) for c in costs]
        trial = plan("thread", costs=best_case)
        if trial:
            plans.append(dataclasses.replace(trial, trial=True))
    plans.sort(key=lambda p: _planning.ranking(p, cold_s))
    # Writing a forest of 300 trees took 0.45 s: found out only for a plan
    # on processes that is the best one, and before a pool starts (which
    # writes the models then anyway), not for calls that stay in-process
    # meanwhile (a 100-tree forest's second call on 1,000 rows took 61 ms
    # instead of 21 ms to find it out, for a pool that then never paid)
    # unless processes were asked for: a model that does not pickle then
    # fails where a process plan is the best, and its calls that stay
    # in-process are to do so for good, not fail once workers started
    # by another call make processes pay.
    best = next((p for p in plans if p.kind != "process" or not ours or ships()), None)
    warm = cold_s and (best is None or best.kind != kind) and plan(kind)
    if warm and best is None and remember and not done[0] and not ours:
        warm = ships() and warm
    if best is None and not warm and remember and not done[0]:
        # Not even warm workers would pay, and threads were not measured:
        # too few rows to measure them with (a forest's loop over its
        # trees), which fewer rows will not change.
        _in_process.remember_no_gain(costs[0], settings, sizes[0])
    if warm:
        # Only the one-off start of the workers (or the first shipping of
        # the models) stands in the way of a plan clearly faster than this
        # call's. Otherwise a pool that is never started would never become
        # warm enough to start, so start it in the background, for the next
        # calls, once the time lost without it reaches what starting it
        # costs: whether the calls stop there or go on, that never loses
        # more than twice what the best choice in hindsight would (the
        # rule of renting skis until the rent paid reaches their price).
        # Starting it at once would slow every call for the seconds it takes
        # to start, and a few calls may never win that back.
        now = best.seconds if best else _planning.serial_seconds(costs, remaining())
        # (Threads measured low may yet be measured faster.)
        settled = best is None or not any(c.wants_thread_measurement() for c in costs)
        if settled and now >= warm.seconds * _planning.MIN_GAIN:
            lost = _pools.time_lost.get(pool_key, 0.0) + now - warm.seconds
            if lost < cold_s:
                _pools.time_lost[pool_key] = lost
                if best is None and remember and not done[0] and cluster is None:
                    # Until then, calls on as many rows or fewer run
                    # in-process without planning (a 100-tree forest's 1,000
                    # rows: 12 ms, of which planning took 0.15 ms), each
                    # paying its share of the rent (see
                    # _in_process.known_no_gain).
                    rent = (pool_key, n_workers, now - warm.seconds, cold_s, pool_cold)
                    _in_process.remember_no_gain(
                        costs[0], settings, sizes[0], rent=rent
                    )
            # (A model that does not pickle never starts the pool, nor takes
            # away the time other models lost without it; what it lost
            # until found out counts towards the pool for them.)
            elif cluster is not None:
                _pools.time_lost.pop(pool_key, None)
                cluster.warm_up(unshipped)
            elif ships():
                _pools.time_lost.pop(pool_key, None)
                _pools.warm_up(jobs, n_workers, backend, pool_key)
            elif best is None and remember and not done[0]:
                # No pool will ever hold it: calls on as many rows or fewer
                # stay in-process without planning, and pay no rent.
                _in_process.remember_no_gain(costs[0], settings, sizes[0])
    return costs, best, cold_s * (best is not None and best.kind == "process")


def _trial_wanted(jobs: list[Job], costs: list, measured: list[int]) -> bool:
    """Whether threads are to be tried on the whole call: a single estimator
    without threads of its own, whose thread speedup is still wanted but
    was not measured within this call (too few rows), whose cost is
    remembered (the trial teaches it: a model that cannot be weakly
    referenced would try on every call), while no warm-up of workers runs
    (which spoils what the trial would teach)."""
    if len(jobs) != 1:
        return False
    (job,), (cost,) = jobs, costs
    return (
        cost.threads < _costs.THREADED
        and cost.wants_thread_measurement()
        and cost.thread_measurements == measured[0]
        and _costs.remembered_cost(job.estimator, job.method) is cost
        and _pools.calm() is not None
    )


def _start(piece) -> int:
    return piece[0]


def _run_parallel(jobs, plan, costs, done, n_workers, backend, verbose, cluster=None):
    """Run the planned row ranges on the backend and file their outputs."""
    ranges = plan.ranges
    process = plan.kind == "process"
    shared: dict[int, SharedArray] = {}
    spool = Spool()
    keys, tasks, weights = [], [], []
    for j, job in enumerate(jobs):
        if not ranges[j]:
            continue
        # Processes get handles that ship the model once per worker and
        # large dense input through a memory-mapped file; a cluster gets its
        # own reference to the model, and the rows with each task.
        if cluster is not None:
            model = cluster.model(job.estimator)
        else:
            model = ModelHandle(job.estimator) if process else job.estimator
        X = job.X
        share = process and cluster is None and shares(X)
        if share:
            ref = shared.setdefault(id(X), SharedArray(X))
        # Asked once of all the chunks: a DataFrame lists its dtypes in the
        # time it takes to pickle 500 of its rows.
        objects = process and cluster is None and not share and object_columns(X)
        for start, stop in ranges[j]:
            rows: Any
            if share:
                rows = ref.rows(start, stop)
            elif cluster is not None:
                rows = cluster.rows(job.rows(start, stop))
            elif process:
                # Other rows for processes go pickled on their own.
                rows = PickledRows(job.rows(start, stop), spool, objects)
            else:
                rows = job.rows(start, stop)
            keys.append((j, start, stop))
            tasks.append(
                (model, job.method, rows, job.columns, job.params_for(start, stop))
            )
            weights.append((stop - start) * (costs[j].per_row if costs else 1.0))
    # Longest tasks first, so that short ones fill the gaps at the end.
    order = sorted(range(len(tasks)), key=weights.__getitem__, reverse=True)
    limits = contextlib.nullcontext()
    if not process:
        limits = _threads.limit_inner_threads(costs, n_workers)
    function: Callable = run_timed
    calls: list = [tasks[i] for i in order]
    if process and cluster is None:
        function = run_returned
    if cluster is not None:
        # The worker finds the model behind its reference and the rows in
        # their carrier.
        function, calls = _distributed.run_carried, [(run_timed, *c) for c in calls]
    try:
        # Rows shared through files are written on threads of their own,
        # several at once, in the order their tasks are sent.
        for rows in (tasks[i][2] for i in order):
            if isinstance(rows, SharedRows):
                rows.write_ahead()
        with limits:
            # Failed, the call raises the first rows' error, as the serial
            # call does: the tasks go longest first, ranked in row order.
            outputs = fan_out(
                function,
                calls,
                n_workers=n_workers,
                backend=backend,
                verbose=verbose,
                rank=order,
            )
    finally:
        spool.close()
        for array in shared.values():
            array.close()
    timings = []
    for i, (out, wall, cpu) in zip(order, outputs):
        j, start, stop = keys[i]
        done[j].append((start, stop, received(out)))
        timings.append((j, stop - start, wall, cpu))
    return timings


def _forget_outgrown(jobs: list[Job], costs, timings) -> bool:
    """Forget the costs of the jobs whose tasks on threads outgrew them (see
    :data:`._costs.OUTGROWN`), and say whether any did: the run then teaches
    nothing. Judged on the tasks' own CPU time, which other load on the
    machine leaves alone (a process worker's would count loading the model).
    """
    predicted = [0.0] * len(jobs)
    seconds = [0.0] * len(jobs)
    sizes = [0] * len(jobs)
    for j, rows, _, cpu in timings:
        predicted[j] += costs[j].seconds(rows)
        seconds[j] += cpu
        sizes[j] += rows
    outgrown = [
        j for j in range(len(jobs)) if _costs.outgrown(predicted[j], seconds[j])
    ]
    for j in outgrown:
        _costs.forget_cost(jobs[j].estimator, jobs[j].method, costs[j])
    if outgrown:
        _log(jobs, sizes, "tasks outgrew the costs (refitted): forgotten")
    return bool(outgrown)


def _learn_from_tasks(costs, plan, n_workers: int, timings) -> None:
    """Teach each job's cost the serial time its tasks imply, or, for an
    estimator with threads of its own on workers that each get one core,
    its speed on one thread."""
    one_core = plan.kind == "process" and _planning.cores_per_worker(n_workers) == 1
    for j, rows, wall, _ in timings:
        cost = costs[j]
        if one_core and cost.one_thread_per_row is not None:
            # The task timed the rows on one thread, as the plan's workers
            # run them. Scaled back to the serial call by a speedup measured
            # in-process, it would teach the cost a serial time as far off
            # as that speedup, and the next plans the same misjudged gain.
            cost.add_one_thread_task(rows, wall)
            continue
        serial_s = _planning.serial_equivalent(cost, plan.kind, n_workers, wall)
        # Workers are limited to their share of the cores: keep the serial
        # call's measure of how many cores it uses.
        cost.add(rows, serial_s, serial_s * cost.threads)


# What ``backend`` may be, as the wrappers' signatures type it: a joblib
# backend's name or instance (see ENGINE_CONSTRAINTS), or None.
Backend: TypeAlias = str | ParallelBackendBase | None

# Constraints of the engine's parameters, shared by the wrappers.
ENGINE_CONSTRAINTS = {
    "n_jobs": [
        Interval(Integral, None, -1, closed="right"),
        Interval(Integral, 1, None, closed="left"),
        None,
    ],
    "backend": [str, HasMethods(["configure", "effective_n_jobs"]), None],
    "chunk_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
    "verbose": ["verbose"],
}
