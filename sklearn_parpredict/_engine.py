"""The one fan-out engine: plan row-chunk tasks, run them, gather in order.

Both wrappers and :func:`parallel_predict` describe their work as a list of
:class:`~._jobs.Job` (an estimator, a method, an input, optionally a column
selection). The engine decides how the jobs' rows are cut into tasks, runs the
tasks on a joblib backend and joins each job's outputs into exactly what the
serial call returns.

Its parts: :mod:`._in_process` keeps the calls that need no plan in this
process; :mod:`._choosing` chooses a call's plan: :mod:`._probing` measures a
job's cost on the call's own rows, :mod:`._planning` turns costs into plans,
and :mod:`._pools` knows which pools of processes run and which models they
hold; :mod:`._running` runs a plan's tasks and teaches the costs what they
took; :mod:`._fanout` hands the tasks to joblib; :mod:`._rows` and
:mod:`._pickled` carry the tasks' rows to processes and their outputs back.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from numbers import Integral
from typing import Any, NoReturn, TypeAlias

import joblib
from joblib._parallel_backends import ParallelBackendBase
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    StrOptions,
)

from sklearn_parpredict import (
    _choosing,
    _chunking,
    _costs,
    _distributed,
    _in_process,
    _lazy,
    _planning,
    _pools,
    _probing,
    _rowwise,
    _running,
    _sparse,
    _threads,
)
from sklearn_parpredict._fanout import active_backend, parallel_config
from sklearn_parpredict._jobs import FAILED_PIECE, Job, log, logger

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
                log([Job(estimator, method, X)], [_chunking.n_rows(X)], how)
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
    started = time.perf_counter()
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
        log(jobs, [0] * len(jobs), "in-process: an input not to cut by rows")
        return [job.call() for job in jobs]
    for job in jobs:
        if _sparse.converted(job.X):
            job.given = job.X
        job.X = _chunking.prepare(job.X, keep_duplicates=job.given is not None)
    sizes = [_chunking.n_rows(job.X) for job in jobs]
    auto = chunk_size == "auto"
    rows_per_task = 0 if auto else int(chunk_size)
    if auto and _in_process.too_small(jobs, sizes):
        log(jobs, sizes, _in_process.TOO_LITTLE)
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
        log(jobs, sizes, "in-process: one worker")
        return [job.call() for job in jobs]
    if not all(
        _rowwise.splittable(job.estimator, job.method, job.params, job.X, job.columns)
        for job in jobs
    ):
        log(jobs, sizes, "in-process: predictions depend on the batch")
        return [job.call() for job in jobs]

    workers = _pools.Workers(
        n_workers,
        "thread" if getattr(active, "uses_threads", False) else "process",
        backend,
        active,
        # Dask and Ray workers may be other machines: models and rows go
        # through the cluster rather than local files.
        _distributed.cluster_for(active),
    )
    # Outputs computed so far, per job, as (start, stop, output).
    done: list[list[tuple[int, int, Any]]] = [[] for _ in jobs]
    try:
        _run_cut(jobs, sizes, done, workers, rows_per_task, verbose, _settings)
    except Exception as error:
        elapsed = time.perf_counter() - started
        job = _to_run_whole(error, jobs, sizes, elapsed)
        if job is None:
            raise
        failed = error
    else:
        return [_join(job, pieces) for job, pieces in zip(jobs, done)]
    _raise_serial_error(job, failed)


def _run_cut(jobs, sizes, done, workers, rows_per_task, verbose, _settings) -> None:
    """Run the jobs' rows, cut into tasks of ``rows_per_task`` rows (0: as
    the cost model plans them), on ``workers`` or in this process, and file
    their outputs in ``done``."""
    auto = not rows_per_task
    costs, plan, cold_s = None, None, 0.0
    if auto:
        costs, plan, cold_s = _choosing.choose(jobs, sizes, done, workers, _settings)
    else:
        ranges = [
            _chunking.split_bounds(0, n, -(-n // rows_per_task), most=rows_per_task)
            for n in sizes
        ]
        if sum(map(len, ranges)) > 1:
            plan = _planning.Plan(workers.kind, ranges, 0.0, 1)

    how = _in_process.NO_GAIN
    # Now and then, a warm plan that gains little on remembered costs runs
    # in-process, timed: its own runs never time the serial call it beats.
    if plan is not None and costs is not None and not cold_s and not any(done):
        if _planning.checks_serial(costs, plan):
            plan, how = None, _in_process.SERIAL_CHECK
    if plan is None:
        # Serial is faster: finish each job with one in-process call, timed
        # to refine its cost.
        log(jobs, sizes, how)
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
        _running.run(jobs, sizes, plan, costs, cold_s, done, workers, verbose)


# Where a piece failed, the serial call's error is looked for by calling the
# job on all its rows in this process, when that should take at most this
# many seconds, or this share of the time the failed call took.
WHOLE_CALL_S = 0.5
WHOLE_CALL_SHARE = 0.25
# How many times more rows each timing of a failure has than the one before
# (see _fails_cheaply).
FAILURE_GROWTH = 16


def _to_run_whole(error: Exception, jobs: list[Job], sizes: list[int], elapsed: float):
    """The job to call on all its rows for the serial call's error, in place
    of ``error``, which a piece of it raised; None to raise ``error``.

    A piece's error may quote the piece where the serial call's quotes all
    the rows (the shape of an array without columns, the categories an
    encoder never saw, the first text that is no number, the row count of
    a neighbours' query), or be another piece's than the one the serial
    call meets first. The serial call usually fails at once, checking its
    input: it is made where the piece's failure, scaled to all the rows as
    the job's cost scales, says that it is cheap (at most
    :data:`WHOLE_CALL_S`, or :data:`WHOLE_CALL_SHARE` of ``elapsed``, what
    the call took so far).
    """
    piece = vars(error).pop(FAILED_PIECE, None)
    if piece is None:
        return None
    job_id, start, stop, seconds = piece
    budget = max(WHOLE_CALL_S, WHOLE_CALL_SHARE * elapsed)
    for job, n in zip(jobs, sizes):
        if id(job) != job_id or stop - start >= n:
            continue
        cost = _costs.remembered_cost(job.estimator, job.method)
        if cost is None or cost.seconds(stop - start) <= 0:
            return job if _fails_cheaply(job, n, start, stop, seconds, budget) else None
        # A call's fixed cost does not grow with its rows.
        scale = min(n / (stop - start), cost.seconds(n) / cost.seconds(stop - start))
        return job if seconds * scale <= budget else None
    return None


def _fails_cheaply(job: Job, n: int, start: int, stop: int, seconds: float, budget):
    """Whether ``job``'s call on all its ``n`` rows should fail within
    ``budget`` seconds, where rows ``start:stop`` failed in ``seconds``, and
    no cost of the job is known (its first rows, probed, failed).

    A call's fixed cost does not grow with its rows: scaled by the rows
    alone, a probe of 64 rows that failed in 2 ms foretold 6 s for 200,000
    rows that fail in 4 ms. The failure is timed again on more rows from
    ``start`` (:data:`FAILURE_GROWTH` times more each time, while that is
    foretold to fit in the budget), and its last two timings foretell the
    call on all rows, a fixed cost and a cost per row.
    """
    timings = [(stop - start, seconds)]
    spent = 0.0
    while _foretold(timings, n) > budget - spent:
        rows = min(n - start, timings[-1][0] * FAILURE_GROWTH)
        if rows <= timings[-1][0] or spent + _foretold(timings, rows) > budget:
            return False
        began = time.perf_counter()
        try:
            job.call(start, start + rows)
        except Exception as exc:
            vars(exc).pop(FAILED_PIECE, None)
        else:
            return False  # these rows pass: the piece failed on its own
        took = time.perf_counter() - began
        spent += took
        timings.append((rows, took))
    return True


def _foretold(timings: list[tuple[int, float]], rows: int) -> float:
    """The seconds a failing call on ``rows`` rows should take, on the line
    through the last two ``(rows, seconds)`` timings of the failure (through
    the origin where there is one)."""
    last_rows, last_s = timings[-1]
    per_row = last_s / last_rows
    if len(timings) > 1:
        first_rows, first_s = timings[-2]
        per_row = max(0.0, (last_s - first_s) / (last_rows - first_rows))
    return max(0.0, last_s - per_row * last_rows) + per_row * rows


def _raise_serial_error(job: Job, failed: Exception) -> NoReturn:
    """Raise the error of ``job``'s call on all its rows, where a piece of
    it raised ``failed`` (see :func:`_to_run_whole`); ``failed`` where that
    call passes."""
    log([job], [_chunking.n_rows(job.X)], "again in-process for the serial error")
    # A piece of the call too: its warnings show as the pieces' did.
    with job.tally.piece():
        job.call()
    raise failed


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
        log([job], [_chunking.n_rows(job.X)], f"again in-process: {exc}")
        cost = _costs.remembered_cost(job.estimator, job.method)
        if exc.lasting and cost is not None:
            # Not split again: every later split would be undone so.
            cost.whole = True
        # A piece of the call too: the pieces ran already and showed their
        # warnings, which the call on all rows raises again (shown twice
        # under "always").
        with job.tally.piece():
            return job.call()


def _start(piece) -> int:
    return piece[0]


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
