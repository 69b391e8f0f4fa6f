"""The one fan-out engine: plan row-chunk tasks, run them, gather in order.

Both wrappers and :func:`parallel_predict` describe their work as a list of
:class:`Job` (an estimator, a method, an input, optionally a column
selection). The engine decides how the jobs' rows are cut into tasks, runs the
tasks on a joblib backend and joins each job's outputs into exactly what the
serial call returns.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import joblib
import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.utils import get_tags
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    StrOptions,
)

from sklearn_parpredict import (
    _chunking,
    _distributed,
    _lazy,
    _loky,
    _planning,
    _threads,
)
from sklearn_parpredict._fanout import active_backend, fan_out, parallel_config
from sklearn_parpredict._sharing import (
    PICKLED_MAX_BYTES,
    SHARE_MIN_BYTES,
    ModelHandle,
    PickledRows,
    SharedArray,
    nbytes,
    resolve,
)

try:  # joblib's thread-local configuration, set by ``parallel_config``
    from joblib.parallel import _backend as _joblib_local
    from joblib.parallel import default_parallel_config as _joblib_defaults
except ImportError:  # pragma: no cover - joblib internals moved
    _joblib_local = _joblib_defaults = None

# Why each call ran as it did, for users asking why a call stayed in-process:
# ``logging.getLogger("sklearn_parpredict").setLevel(logging.DEBUG)``.
logger = logging.getLogger("sklearn_parpredict")

# Seconds after which a process pool that sat idle is assumed to be gone
# (loky's workers, which shut down after 300 s idle, are looked at instead).
_POOL_IDLE_S = 250.0
_pool_last_used: dict[tuple, float] = {}
# Per pool not started yet: seconds that calls have lost without it.
_time_lost: dict[tuple, float] = {}
_TOO_LITTLE = "in-process: too little work to plan"
_NO_GAIN = "in-process: parallel work would not pay"
_warm_lock = threading.Lock()


@dataclass
class Job:
    """One method of one fitted estimator on all rows of one input."""

    estimator: Any
    method: str
    X: Any
    columns: Any = None
    params: dict = field(default_factory=dict)

    def call(self, start: int | None = None, stop: int | None = None):
        """Run the method in this process, on all rows or on ``start:stop``."""
        X = self.X if start is None else _chunking.row_slice(self.X, start, stop)
        return _call(self.estimator, self.method, X, self.columns, self.params)


def _run_task(model, method, X, columns, params):
    """The work of one task, in a worker or in-process."""
    return _call(resolve(model), method, resolve(X), columns, params)


def _call(model, method, X, columns, params):
    X = _chunking.select_columns(X, columns)
    return getattr(model, method)(X, **params)


_n_workers: dict[tuple, int] = {}


def _run_timed(*task):
    """A task on a worker, and the seconds it took there.

    Every task of a plan is also a timing of the estimator on a known number
    of rows: the cost model learns from it as from an in-process call, so a
    cost misjudged by a short probe does not mislead every later plan.
    """
    start = time.perf_counter()
    out = _run_task(*task)
    return out, time.perf_counter() - start


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
    # cluster's workers come and go: ask it every time.
    key = (type(active), n_jobs, default_n_jobs)
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


_declared_random: dict[type, bool] = {}


def _deterministic(estimator) -> bool:
    """Whether the estimator's output for a row is independent of the batch.

    Estimators declare otherwise with the ``non_deterministic`` tag;
    scikit-learn's ``DummyClassifier`` draws random labels per call without
    declaring it. Pipelines are as deterministic as their steps.
    """
    if isinstance(estimator, DummyClassifier):
        return estimator.strategy not in ("stratified", "uniform")
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list):
        return all(_deterministic(step) for _, step in steps)
    # Tags are costly to build on every call; they are a property of the
    # class in practice.
    cls = type(estimator)
    if cls not in _declared_random:
        try:
            _declared_random[cls] = bool(get_tags(estimator).non_deterministic)
        except Exception:  # not a scikit-learn estimator: nothing declared
            _declared_random[cls] = False
    return not _declared_random[cls]


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
            _TOO_LITTLE
            if _plainly_small(estimator, method, X)
            else _known_no_gain(estimator, method, X, n_jobs, backend)
        )
        if how:
            if backend is not None:
                _check_backend(backend)
            if logger.isEnabledFor(logging.DEBUG):
                _log([Job(estimator, method, X)], [_chunking.n_rows(X)], how)
            if how is _NO_GAIN:
                return _call_watched(estimator, method, X, params)
            return getattr(estimator, method)(X, **params)
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
    lazy Dask collections, computed block by block by Dask's scheduler.
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
        job.X = _chunking.prepare(job.X)
    sizes = [_chunking.n_rows(job.X) for job in jobs]
    auto = chunk_size == "auto"
    if auto and _too_small(jobs, sizes):
        _log(jobs, sizes, _TOO_LITTLE)
        return [job.call() for job in jobs]
    active, n_workers = _backend(n_jobs, backend)
    n_workers = min(n_workers, max(sizes, default=0))
    if n_workers <= 1:
        _log(jobs, sizes, "in-process: one worker")
        return [job.call() for job in jobs]
    if not all(_deterministic(job.estimator) for job in jobs):
        # Estimators whose output depends on the batch (random predictions)
        # cannot be split without changing the result.
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
        ranges = [_chunking.split_bounds(0, n, -(-n // chunk_size)) for n in sizes]
        if sum(map(len, ranges)) > 1:
            plan = _planning.Plan(kind, ranges, 0.0, 1)

    if plan is None:
        # Serial is faster: finish each job with one in-process call, timed
        # to refine its cost.
        _log(jobs, sizes, _NO_GAIN)
        for j, (job, n, pieces) in enumerate(zip(jobs, sizes, done)):
            start = _done_rows(pieces)
            if pieces and start >= n:
                continue
            calm = _calm()
            with _planning.Timer() as timer:
                out = job.call(start, n) if pieces else job.call()
            pieces.append((start, n, out))
            if costs is not None and _calm_since(calm):
                costs[j].add(n - start, timer.wall, timer.cpu)
        if costs is not None and _settings is not None and len(jobs) == 1:
            _remember_no_gain(costs[0], _settings, sizes[0], refresh=True)
    else:
        # A thread plan chosen for a backend left to us runs on threads.
        run_backend = (
            "threading"
            if plan.kind != kind
            else _distributed.parallel_backend(backend, active)
        )

        # What the plan's rows cost serially, before its tasks teach the costs.
        rows_s = costs and sum(
            c.per_row * (b - a) for c, r in zip(costs, plan.ranges) for a, b in r
        )

        def run():
            return _run_parallel(
                jobs, plan, costs, done, n_workers, run_backend, verbose, cluster
            )

        calm = _calm()
        with _planning.Timer() as timer:
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
        if costs is not None and _calm_since(calm):
            # A warm thread plan far slower than planned teaches nothing
            # from its tasks: they would teach the cost a serial time as
            # slow as the threads were, against which they would go on
            # looking fast enough.
            slow = not cold_s and _planning.learn_thread_speedup(
                costs, plan, timer.wall, rows_s, n_workers
            )
            if not slow:
                _learn_from_tasks(costs, plan, n_workers, timings)
                if not cold_s:
                    _planning.learn_overhead(costs, plan, timer.wall)
        if plan.kind == "process":
            _pool_last_used[pool_key] = time.monotonic()
            _time_lost.pop(pool_key, None)
            _mark_shipped(jobs, pool_key)
    return [
        _chunking.concatenate([out for _, _, out in sorted(pieces, key=_start)])
        for pieces in done
    ]


def _log(jobs: list[Job], sizes: list[int], how: str) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        what = ", ".join(
            f"{type(job.estimator).__name__}.{job.method}" for job in jobs[:3]
        )
        more = f" and {len(jobs) - 3} more" if len(jobs) > 3 else ""
        logger.debug("%s%s on %s rows: %s", what, more, sum(sizes), how)


def _small_under(cost, X) -> bool:
    """Whether a NumPy batch is too small to plan, given the remembered cost
    of its estimator and method (None: not probed yet): :func:`_too_small`'s
    answer for one job, in the fewest steps, since :func:`run_one` asks it
    first on every call and a call on a few rows takes less than 100 µs."""
    if type(X) is not np.ndarray or not X.ndim:
        return False
    if cost is None:
        return len(X) <= _planning.PROBE_ROWS
    return len(X) < cost.direct_rows


def _plainly_small(estimator, method: str, X) -> bool:
    return _small_under(_planning.remembered_cost(estimator, method), X)


def calls_directly(cost, X) -> bool:
    """Whether :func:`run_one`, with ``chunk_size="auto"`` and no parameters,
    would only call the estimator on ``X``, given the remembered cost of its
    estimator and method: a NumPy batch too small to plan, and no debug log
    to write."""
    return _small_under(cost, X) and not logger.isEnabledFor(logging.DEBUG)


def _call_watched(estimator, method: str, X, params: dict):
    """The in-process call of a batch no plan pays for, timed when it is long
    enough that timing it costs nothing: the machine may change under a
    model (another process, cores that turn slower), and the cost must see
    it for the batch to be planned again."""
    cost = _planning.remembered_cost(estimator, method)
    rows = _chunking.n_rows(X)
    if cost is None or cost.seconds(rows) < _planning.WATCHED_CALL_S:
        return getattr(estimator, method)(X, **params)
    calm = _calm()
    with _planning.Timer() as timer:
        out = getattr(estimator, method)(X, **params)
    if _calm_since(calm):
        cost.add(rows, timer.wall, timer.cpu)
    return out


def _settings_key(settings: tuple) -> tuple:
    # What decides the workers a call gets: its own settings and the
    # joblib configuration in force (a ``parallel_config`` context is a new
    # object; a stale key only costs a plan, never changes an output).
    return (*settings, id(getattr(_joblib_local, "config", None)))


def _remember_no_gain(
    cost: _planning.Cost,
    settings: tuple,
    rows: int,
    *,
    refresh: bool = False,
    rent: tuple | None = None,
) -> None:
    """Remember that no plan pays for ``rows``, with the cost's prediction;
    with ``refresh``, only renew the prediction of what is remembered for
    exactly these rows (once the call's own timing refined the cost: a slow
    call must not pass for a drift of the cost from what it was).

    ``rent``: ``(pool_key, n_workers, seconds, cold_s)`` where only a pool
    not started yet stands in the way, and a call on ``rows`` loses
    ``seconds`` towards the ``cold_s`` that starting it costs.
    """
    with contextlib.suppress(TypeError):  # an unhashable backend instance
        key = _settings_key(settings)
        known = cost.no_gain.get(key)
        if refresh:
            if known is not None and known[0] == rows:
                cost.no_gain[key] = (rows, cost.seconds(rows), known[2])
        elif known is None or rows >= known[0]:
            cost.no_gain[key] = (rows, cost.seconds(rows), rent)


def _known_no_gain(estimator, method: str, X, n_jobs, backend) -> str | None:
    """Whether no plan could pay for as many rows or more, with the same cost
    and settings: decided again without planning (30 µs with a DataFrame,
    a few percent of a call of a few milliseconds)."""
    cost = _planning.remembered_cost(estimator, method)
    if cost is None or not cost.no_gain or _lazy.is_collection(X):
        return None
    try:
        known = cost.no_gain.get(_settings_key((n_jobs, backend)))
    except TypeError:
        return None
    n = _chunking.n_rows(X)
    if known is None or n > known[0]:
        return None
    rows, seconds, rent = known
    if cost.seconds(rows) > seconds * _planning.NO_GAIN_DRIFT:
        return None
    if rent is not None:
        pool_key, n_workers, lost, cold_s = rent
        lost = _time_lost.get(pool_key, 0.0) + lost * n / max(rows, 1)
        if lost >= cold_s or _pool_warm(pool_key, n_workers):
            # Time to start the pool, or it runs already: plan.
            cost.no_gain.pop(_settings_key((n_jobs, backend)), None)
            return None
        _time_lost[pool_key] = lost
    return _NO_GAIN


def _too_small(jobs: list[Job], sizes: list[int]) -> bool:
    """Whether the work is so small that even planning it costs too much.

    True for a batch no larger than one probe of a model not seen yet, and for
    work whose remembered cost is below what any fan-out could save, on
    batches near enough in size to those it was timed on.
    """
    costs = [_planning.remembered_cost(job.estimator, job.method) for job in jobs]
    if not any(costs):
        return max(sizes, default=0) <= _planning.PROBE_ROWS
    if not all(costs) or any(n >= c.covered_rows for c, n in zip(costs, sizes)):
        return False
    return sum(c.seconds(n) for c, n in zip(costs, sizes)) < _planning.FAST_SERIAL_S


def _auto_plan(
    jobs, sizes, done, n_workers, kind, backend, pool_key, cluster=None, settings=None
):
    """Probe the jobs' costs and choose a plan (None: finish in-process).

    Returns the costs, the plan and the one-off start-up it pays. When no
    plan can pay for all the rows of a single job, that is remembered under
    its call's ``settings`` (see :func:`_known_no_gain`).
    """
    costs = [_probe(job, n, pieces) for job, n, pieces in zip(jobs, sizes, done)]
    cold_s = 0.0
    if kind == "process":
        cold_s = _planning.COLD_POOL_S * (not _pool_warm(pool_key, n_workers))
        # Workers already running (started by another call, another
        # library) have not loaded these models yet.
        unsent = sum(not _shipped(job.estimator, pool_key) for job in jobs)
        cold_s += _planning.COLD_MODEL_S * unsent
    if cluster is not None:
        # A cluster is running already; what a first call pays is shipping
        # the models it does not hold yet.
        unshipped = [j.estimator for j in jobs if not cluster.shipped(j.estimator)]
        cold_s = _planning.COLD_MODEL_S * len(unshipped)

    def plan(kind, cold_s=0.0, costs=costs):
        remaining = [(_done_rows(p), n) for p, n in zip(done, sizes)]
        return _planning.plan_chunks(
            costs, remaining, n_workers=n_workers, kind=kind, cold_s=cold_s
        )

    # Processes are joblib's default, but threads cost nothing to start and
    # copy nothing: when the choice is ours, measure how much of each
    # estimator's work releases the GIL (again, a few times, while the
    # measurement may have been spoilt by load), and take the faster plan.
    try_threads = kind == "process" and backend is None and not _backend_configured()
    remaining = [(_done_rows(p), n) for p, n in zip(done, sizes)]
    kinds = (kind, "thread") if try_threads else (kind,)
    # Remembered for the next calls on as many rows or fewer: no plan pays.
    remember = settings is not None and len(jobs) == 1 and not done[0]
    # Estimators that run threads of their own, not measured yet, are
    # planned at first as if those gained nothing.
    hopeful = [_planning.optimistic(c) for c in costs]
    if not _planning.can_pay(hopeful, remaining, n_workers, kinds):
        # Not even a perfect share of the rows among warm workers would pay.
        if remember:
            _remember_no_gain(costs[0], settings, sizes[0])
        return costs, None, 0.0
    # A measurement is worth it when workers as good as they could be would
    # pay: first of the speedup of the estimator's own threads, which
    # workers take cores from, then of threads of ours.
    unmeasured = any(h is not c for h, c in zip(hopeful, costs))
    if unmeasured and (plan(kind, costs=hopeful) or plan("thread", costs=hopeful)):
        for job, cost, n, pieces in zip(jobs, costs, sizes, done):
            if cost.wants_own_measurement():
                _measure_own_threads(job, cost, n, pieces)
    measure = [c.wants_thread_measurement() for c in costs]
    if try_threads and any(measure) and (plan("thread") or plan(kind)):
        for job, cost, n, pieces, wanted in zip(jobs, costs, sizes, done, measure):
            if wanted:
                _measure_threads(job, cost, n, pieces)
    # Threads never measured (too few rows to measure them) are not guessed.
    try_threads = try_threads and all(c.thread_speedup is not None for c in costs)
    plans = [p for p in (plan(kind, cold_s), try_threads and plan("thread")) if p]
    best = min(plans, key=lambda p: _planning.ranking(p, cold_s), default=None)
    warm = cold_s and (best is None or best.kind != kind) and plan(kind)
    if best is None and not warm and remember and not done[0]:
        # Not even warm workers would pay, and threads were not measured:
        # too few rows to measure them with (a forest's loop over its
        # trees), which fewer rows will not change.
        _remember_no_gain(costs[0], settings, sizes[0])
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
        remaining = [(_done_rows(p), n) for p, n in zip(done, sizes)]
        now = best.seconds if best else _planning.serial_seconds(costs, remaining)
        # (Threads measured low may yet be measured faster.)
        settled = best is None or not any(c.wants_thread_measurement() for c in costs)
        if settled and now >= warm.seconds * _planning.MIN_GAIN:
            lost = _time_lost.get(pool_key, 0.0) + now - warm.seconds
            _time_lost[pool_key] = lost
            if lost >= cold_s:
                del _time_lost[pool_key]
                if cluster is not None:
                    cluster.warm_up(unshipped)
                else:
                    _warm_up(jobs, n_workers, backend, pool_key)
            elif best is None and remember and not done[0] and cluster is None:
                # Until then, calls on as many rows or fewer run in-process
                # without planning (a 100-tree forest's 1,000 rows: 12 ms, of
                # which planning took 0.15 ms), each paying its share of
                # the rent (see _known_no_gain).
                rent = (pool_key, n_workers, now - warm.seconds, cold_s)
                _remember_no_gain(costs[0], settings, sizes[0], rent=rent)
    return costs, best, cold_s * (best is not None and best.kind == "process")


def _pool_warm(pool_key: tuple, n_workers: int) -> bool:
    """Whether the backend's workers are running already.

    loky's are looked at: whoever started them, they are what a call would
    run on. Other pools are taken as warm for a while after our last call
    on them. Workers that our warm-up is starting are not warm yet: they
    are still importing scikit-learn, or receiving the models.
    """
    if pool_key in _warming:
        return False
    live = _loky.live_workers() if pool_key[0] == "LokyBackend" else None
    if live is not None:
        return live >= n_workers
    return time.monotonic() - _pool_last_used.get(pool_key, -np.inf) <= _POOL_IDLE_S


# Pools of processes each model was sent to, by the model's id.
_sent: dict[int, tuple] = {}


def _shipped(model, pool_key: tuple) -> bool:
    entry = _sent.get(id(model))
    return entry is not None and entry[0]() is model and pool_key in entry[1]


def _mark_shipped(jobs: list[Job], pool_key: tuple) -> None:
    for job in jobs:
        entry = _sent.get(id(job.estimator))
        if entry is None or entry[0]() is not job.estimator:
            entry = _planning.keep_by_id(_sent, job.estimator, set())
        if entry is not None:
            entry[1].add(pool_key)


def _backend_configured() -> bool:
    """Whether a ``joblib.parallel_config`` context names a backend."""
    try:
        config = getattr(_joblib_local, "config", None)
        return (
            config is not None and config["backend"] is not _joblib_defaults["backend"]
        )
    except Exception:  # joblib internals moved: assume the user chose
        return True


def _measure_threads(job: Job, cost: _planning.Cost, n: int, pieces: list) -> None:
    """Time two chunks on two concurrent threads against one timed in-process.

    Their outputs are kept in ``pieces``; the speedup is added to ``cost``,
    which keeps the best of its measurements. A low speedup is measured again
    at once while rows remain: the first tasks of new threads also pay for
    their first touch of memory, and a busy moment of the machine seldom
    lasts through two measurements. Not one below ``THREAD_HELD`` during
    which neither thread waited for a core: that one is the GIL's.
    """
    while cost.wants_thread_measurement() and _measure_threads_once(
        job, cost, n, pieces
    ):
        pass


def _measure_threads_once(job: Job, cost: _planning.Cost, n: int, pieces) -> bool:
    """One measurement; False when too few rows remain to make one.

    A chunk is timed in-process, then two more of the same size on two
    threads at once: the speedup is against the serial time just measured,
    not against the cost's prediction, which a slow first call (cold caches,
    another process busy) may have inflated; a thread speedup measured
    against it would pass for perfect, and the planner would then keep the
    threads, and learn from their slowed tasks a cost as inflated. The
    threads run on their share of the cores: the in-process time is scaled
    to that share by the measured speedup of the estimator's own threads.
    """
    timed = _serial_chunk(job, cost, n, pieces, more=2)
    if timed is None:
        return False
    start, size, alone_s = timed
    bounds = [(start, start + size), (start + size, start + 2 * size)]
    _threads.start(2)
    with _limit_inner_threads([cost], 2):
        with _planning.Timer() as timer:
            results = _threads.run(_waiting_call(job), bounds, 2)
    pieces.extend((a, b, out) for (a, b), (out, _, _) in zip(bounds, results))
    waited = sum(w - own for _, w, own in results)
    wall = timer.wall
    if _planning.CORES >= 2:
        # Less what other work took from the slower thread: the machine's
        # load, not the estimator's. In the benchmarks, the spinning threads
        # a fork left behind made a forest's threads measure 1.04x-1.51x,
        # and processes were kept where threads were 4% faster (2 cores).
        # Threads waiting for the GIL sleep; that wait is not taken out.
        wall += max(own for _, _, own in results) - max(w for _, w, _ in results)
    serial_s = 2 * alone_s
    if cost.own_speedup is not None and cost.threads >= _planning.THREADED:
        # Measured, not guessed from the cores the call kept busy: other
        # threads of the process (BLAS's, spinning) count as busy too.
        serial_s *= _planning.inner_slowdown(cost, max(1, _planning.CORES // 2))
    speedup = serial_s / max(wall, 1e-9)
    # Where the rows mostly release the GIL, the speedup of the rows: both
    # calls' fixed costs are taken as paid one after another, as plans take
    # them on threads (see fixed_seconds). A 100-tree forest's chunks of
    # 4,000-5,000 rows, 3 ms of each its fixed cost, ran 1.75x faster on two
    # threads than in-process, where its calls on 500,000 rows ran 1.89x
    # faster, and processes were chosen (2 cores). Rows that hold the GIL
    # much of the time themselves keep the speedup measured: taken out of
    # it, the fixed costs credited a pipeline on a DataFrame with threads
    # that ran it at 0.92x of serial.
    fixed = 2 * min(cost.per_call, alone_s)
    if speedup >= _planning.THREAD_FREE and wall > fixed:
        speedup = (serial_s - fixed) / (wall - fixed)
    held = speedup < _planning.THREAD_HELD and _planning.SEES_WAITS
    uncrowded = waited < _planning.THREAD_WAIT_SHARE * 2 * timer.wall
    cost.add_thread_speedup(speedup, final=held and uncrowded)
    logger.debug(
        "%s.%s: %d rows on 2 threads took %.3g s of their own against %.3g s "
        "serially (%.2fx; they waited %.3g s for a core); thread speedup now "
        "%.2fx",
        type(job.estimator).__name__,
        job.method,
        2 * size,
        wall,
        serial_s,
        speedup,
        waited,
        cost.thread_speedup,
    )
    return True


def _measure_own_threads(job: Job, cost: _planning.Cost, n: int, pieces) -> None:
    """Time a chunk in-process (refining the cost), then the same rows on
    one thread: the cost per row there, against which the serial call's
    gives the speedup of the estimator's own threads, which workers take
    cores from."""
    timed = _serial_chunk(job, cost, n, pieces, more=1)
    if timed is None:
        return
    start, size, alone_s = timed
    with _threads.one_thread():
        # Less the time this thread waited for a core: limiting BLAS starts
        # its threads again after a fork, and they spin for a while (in the
        # benchmarks, HistGradientBoosting's rows took 5.2 µs each instead of
        # 3.2 µs, and passed for a speedup of its own threads of 2x, all the
        # cores, which left workers no gain; 2 cores).
        with _planning.Timer(waits=True) as one:
            out = job.call(start, start + size)
    pieces.append((start, start + size, out))
    one_s = one.own
    # Its cost per row, not the speedup measured on this chunk: that one
    # follows the serial call's cost as whole calls refine it.
    cost.set_one_thread_per_row(max(one_s - cost.per_call, 0.0) / size)
    logger.debug(
        "%s.%s: %d rows took %.3g s on one thread against %.3g s on its own "
        "threads; their speedup now %.2fx",
        type(job.estimator).__name__,
        job.method,
        size,
        one_s,
        alone_s,
        cost.own_speedup,
    )


def _waiting_call(job: Job):
    """``job.call`` that also returns its seconds, and those of its own (less
    the waits of its thread for a core)."""

    def call(start: int, stop: int):
        with _planning.Timer(waits=True) as timer:
            out = job.call(start, stop)
        return out, timer.wall, timer.own

    return call


def _serial_chunk(job: Job, cost: _planning.Cost, n: int, pieces, more: int):
    """Time the next rows in-process, leaving room for ``more`` chunks of the
    same size: ``(start of the next rows, size, seconds)``, or None when too
    few rows remain.

    The chunks together take about ``THREAD_PROBE_S`` serially, or longer
    where their rows need it to spend at least ``THREAD_ROW_SHARE`` of
    their time on rows rather than on the call's fixed cost. The chunk
    grows until it takes ``THREAD_CHUNK_S`` of its own (less what its thread
    waited for a core), which a short pause of the machine cannot double.
    The seconds are the lower of that time and what the cost predicted for
    the chunk, where it was timed on rows as many: a pause the waits do not
    show slows the chunk (and would pass for a speedup of whatever it is
    compared with), a slow first call inflates the prediction, and neither
    makes the serial time shorter than it is. Far past the rows timed, a
    prediction is no guard: a forest probed on 64 and 256 rows predicted
    half the time of its 13,079 rows, and its threads measured 0.97x
    instead of 1.9x, a GIL-bound verdict that is not taken again (2 cores).
    """
    start = _done_rows(pieces)
    left = n - start
    rows = left
    if cost.per_row > 0:
        wanted = (_planning.THREAD_PROBE_S - cost.per_call) / cost.per_row
        # Never too few for the rows' share, though: a call's fixed cost (a
        # 100-tree forest's loop over its trees, 10-13 ms) may leave no room
        # for it in THREAD_PROBE_S, and threads were then never measured nor
        # chosen (RandomForest, 500,000 rows: processes at 1.23 s where
        # threads take 1.18 s; 2 cores).
        least = (more + 1) * _planning.thread_measurement_rows(cost)
        rows = min(rows, max(int(wanted), least))
    # Leave at least half of what remains for the plan itself.
    size = min(max(rows, more + 1), left // 2) // (more + 1)
    if size < max(1, _planning.thread_measurement_rows(cost)):
        return None
    while True:
        predicted = cost.seconds(size) if size < cost.covered_rows else 0.0
        with _planning.Timer(waits=True) as alone:
            out = job.call(start, start + size)
        pieces.append((start, start + size, out))
        cost.add(size, alone.wall, alone.cpu)
        start += size
        seconds = min(alone.own, predicted) if predicted > 0 else alone.own
        if alone.own >= _planning.THREAD_CHUNK_S:
            return start, size, seconds
        # The next chunk leaves room for ``more`` of its size.
        grown = min(size * _planning.PROBE_GROWTH, (n - start) // (more + 1))
        if grown <= size:
            if more * size > n - start:
                return None  # the rows done stay done; no measurement
            return start, size, seconds
        size = grown


def _limit_inner_threads(costs: list[_planning.Cost] | None, n_workers: int):
    """Threads share the process's BLAS pool: keep workers x its threads
    within the cores, for estimators that use it (OpenMP's threads are set
    per thread, once, by each of the package's threads).

    Estimators seen keeping a single core busy are left alone: telling
    OpenBLAS to change its threads may start its server threads (after a
    fork, always), and they spin on a core for a while: after a pool of 2
    processes was forked, two threads of ``SVC.predict`` under a limit ran
    0.4x-1.0x as fast as one, and 1.7x-2.1x without it (2 cores).
    """
    if costs is not None and all(c.threads < _planning.THREADED for c in costs):
        return contextlib.nullcontext()
    return _threads.limit_blas(max(1, _planning.CORES // n_workers))


def _start(piece) -> int:
    return piece[0]


_warming: set = set()
# Warm-ups started so far (see _calm).
_warm_ups = 0


def _calm() -> int | None:
    """A mark that :func:`_calm` returns again only while no warm-up of
    workers has run in between; None while one runs.

    A warm-up starts interpreters on the same cores: runs that overlap one
    teach nothing of the estimator. An SVC's threads on 20,000 rows, planned at
    0.63 s, took 1.39 s while the pool started, and were taken for threads
    that hold the GIL (2 cores).
    """
    return None if _warming else _warm_ups


def _calm_since(mark: int | None) -> bool:
    """Whether no warm-up ran since ``mark = _calm()`` was taken."""
    return mark is not None and mark == _calm()


def _warm_up(jobs: list[Job], n_workers: int, backend, pool_key) -> None:
    """Start the workers and ship them the models, in a background thread."""
    global _warm_ups
    with _warm_lock:
        if pool_key in _warming:
            return
        _warming.add(pool_key)
        _warm_ups += 1
    tasks = [
        (
            ModelHandle(job.estimator),
            job.method,
            _chunking.row_slice(job.X, 0, 1),
            job.columns,
            job.params,
        )
        for job in jobs
    ]

    def start():
        try:
            fan_out(_run_task, tasks * n_workers, n_workers=n_workers, backend=backend)
            _pool_last_used[pool_key] = time.monotonic()
            _mark_shipped(jobs, pool_key)
        except Exception:  # noqa: S110 - a failed warm-up only costs speed
            pass
        finally:
            with _warm_lock:
                _warming.discard(pool_key)

    # Not a daemon: the interpreter waits for it rather than killing it while
    # it talks to the workers.
    threading.Thread(target=start, name="sklearn-parpredict-warm-up").start()


def _done_rows(pieces) -> int:
    return max((stop for _, stop, _ in pieces), default=0)


def _probe(job: Job, n: int, pieces: list) -> _planning.Cost:
    """The job's cost.

    When the cost is not remembered, the first rows are timed in-process and
    their outputs are kept in ``pieces``.
    """
    cost = _planning.remembered_cost(job.estimator, job.method)
    if cost is not None:
        return cost
    cost = None
    start, size = 0, _planning.PROBE_ROWS
    while start < n:
        stop = min(n, start + size)
        with _planning.Timer(waits=True) as timer:
            out = job.call(start, stop)
        pieces.append((start, stop, out))
        # Less what other work took from this thread: a first cost inflated
        # by a moment's load stays until calls refine it (a forest probed
        # while the threads a fork left behind spun took 21 ms on 64 rows
        # instead of 7, and its next 500,000 rows ran in-process; 2 cores).
        sample = (stop - start, timer.own, timer.cpu)
        if cost is None:
            cost = _planning.fit_cost([sample], job.estimator)
        else:
            cost.add(*sample)
        start, size = stop, size * _planning.PROBE_GROWTH
        # Grow until a step is long enough to time reliably, and its rows
        # are not lost in the noise of the call's fixed cost (a forest timed
        # on 64 and 256 rows fitted a tenth of its cost per row, and its
        # first plan cut the rows for it; 2 cores); stop at once when a step
        # is already costly.
        rows_share = cost.per_row * sample[0] / max(sample[1], 1e-9)
        if sample[1] >= _planning.PROBE_ENOUGH_S or (
            len(cost.samples) >= 2
            and sample[1] >= _planning.PROBE_MIN_S
            and rows_share >= _planning.PROBE_ROW_SHARE
        ):
            break
    _planning.remember_cost(job.estimator, job.method, cost)
    return cost


def _run_parallel(jobs, plan, costs, done, n_workers, backend, verbose, cluster=None):
    """Run the planned row ranges on the backend and file their outputs."""
    ranges = plan.ranges
    process = plan.kind == "process"
    shared: dict[int, SharedArray] = {}
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
        share = (
            process
            and cluster is None
            and isinstance(X, np.ndarray)
            and not X.dtype.hasobject
            and X.nbytes >= SHARE_MIN_BYTES
        )
        if share:
            ref = shared.setdefault(id(X), SharedArray(X))
        # Other rows for processes go pickled on their own up to a size.
        row_bytes = nbytes(X) / max(_chunking.n_rows(X), 1) if process else 0.0
        for start, stop in ranges[j]:
            if share:
                rows = ref.rows(start, stop)
            elif cluster is not None:
                rows = cluster.rows(_chunking.row_slice(X, start, stop))
            elif process and row_bytes * (stop - start) <= PICKLED_MAX_BYTES:
                rows = PickledRows(_chunking.row_slice(X, start, stop))
            else:
                rows = _chunking.row_slice(X, start, stop)
            keys.append((j, start, stop))
            tasks.append((model, job.method, rows, job.columns, job.params))
            weights.append((stop - start) * (costs[j].per_row if costs else 1.0))
    # Longest tasks first, so that short ones fill the gaps at the end.
    order = sorted(range(len(tasks)), key=weights.__getitem__, reverse=True)
    limits = contextlib.nullcontext()
    if not process:
        limits = _limit_inner_threads(costs, n_workers)
    function, calls = _run_timed, [tasks[i] for i in order]
    if cluster is not None:
        # The worker finds the model behind its reference and the rows in
        # their carrier.
        function, calls = _distributed.run_carried, [(_run_timed, *c) for c in calls]
    try:
        with limits:
            outputs = fan_out(
                function, calls, n_workers=n_workers, backend=backend, verbose=verbose
            )
    finally:
        for array in shared.values():
            array.close()
    timings = []
    for i, (out, wall) in zip(order, outputs):
        j, start, stop = keys[i]
        done[j].append((start, stop, out))
        timings.append((j, stop - start, wall))
    return timings


def _learn_from_tasks(costs, plan, n_workers: int, timings) -> None:
    """Teach each job's cost the serial time its tasks imply."""
    for j, rows, wall in timings:
        cost = costs[j]
        serial_s = _planning.serial_equivalent(cost, plan.kind, n_workers, wall)
        # Workers are limited to their share of the cores: keep the serial
        # call's measure of how many cores it uses.
        cost.add(rows, serial_s, serial_s * cost.threads)


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
