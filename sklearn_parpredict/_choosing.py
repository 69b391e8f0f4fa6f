"""Choosing a call's plan: probe each job's cost, measure what is worth
measuring, rank the plans, and start workers in the background when only
their start stands in the way.

:func:`choose` is the engine's ``chunk_size="auto"``: it returns the costs,
the plan (None: the call finishes in-process) and the one-off start-up the
plan pays. What the costs are, and what a plan takes, is
:mod:`._planning`'s; how a plan runs is :mod:`._running`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

from sklearn_parpredict import _costs, _in_process, _planning, _pools, _probing
from sklearn_parpredict._fanout import backend_configured
from sklearn_parpredict._jobs import Job
from sklearn_parpredict._pickled import pickling_per_row
from sklearn_parpredict._sharing import can_ship


def choose(jobs, sizes, done, workers: _pools.Workers, settings=None):
    """Probe the jobs' costs and choose a plan (None: finish in-process) on
    ``workers``.

    Returns the costs, the plan and the one-off start-up it pays. When no
    plan can pay for all the rows of a single job, that is remembered under
    its call's ``settings`` (see :func:`._in_process.known_no_gain`).
    """
    n_workers, kind, pool_key, cluster = (
        workers.n,
        workers.kind,
        workers.key,
        workers.cluster,
    )
    costs = []
    for j, (job, n, pieces) in enumerate(zip(jobs, sizes, done)):
        with earlier_jobs_first(jobs, sizes, done, j):
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
            ship_s = _pools.each_call_s(pool_key, jobs) + sum(
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
    try_threads = (
        kind == "process" and workers.backend is None and not backend_configured()
    )
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
                with earlier_jobs_first(jobs, sizes, done, j):
                    _probing.measure_own_threads(job, cost, n, pieces)
    measure = [c.wants_thread_measurement() for c in costs]
    measured = [c.thread_measurements for c in costs]
    if try_threads and any(measure) and (plan("thread") or plan(kind)):
        for j, (job, cost, n, pieces, wanted) in enumerate(
            zip(jobs, costs, sizes, done, measure)
        ):
            if wanted:
                with earlier_jobs_first(jobs, sizes, done, j):
                    _probing.measure_threads(job, cost, n, pieces)
    # Threads never measured (too few rows to measure them) are not guessed.
    unmeasured = try_threads and any(c.thread_speedup is None for c in costs)
    plans = [
        p
        for p in (plan(kind, cold_s), try_threads and not unmeasured and plan("thread"))
        if p
    ]
    if try_threads and trial_wanted(jobs, costs, measured):
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
                _pools.warm_up(jobs, n_workers, workers.backend, pool_key)
            elif best is None and remember and not done[0]:
                # No pool will ever hold it: calls on as many rows or fewer
                # stay in-process without planning, and pay no rent.
                _in_process.remember_no_gain(costs[0], settings, sizes[0])
    return costs, best, cold_s * (best is not None and best.kind == "process")


def trial_wanted(jobs: list[Job], costs: list, measured: list[int]) -> bool:
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


@contextlib.contextmanager
def earlier_jobs_first(jobs: list[Job], sizes: list[int], done, j: int):
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
