"""What the engine knows of its pools of processes: which run, which models
they hold, and the background start of a pool no call has paid for yet.

Each pool is known by a key ``(backend class name, worker count)``. A pool
that ends with each call (joblib's ``multiprocessing`` backend) has none of
that: every call starts its own, and pays for it (see :func:`each_call_s`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from typing import Any

import numpy as np
from joblib import parallel as _joblib_parallel
from joblib._parallel_backends import MultiprocessingBackend, ParallelBackendBase

from sklearn_parpredict import _costs, _loky, _planning
from sklearn_parpredict._fanout import fan_out, in_joblib_config, joblib_config
from sklearn_parpredict._jobs import Job, run_task
from sklearn_parpredict._locks import fork_safe, in_forked_child
from sklearn_parpredict._sharing import ModelHandle
from sklearn_parpredict._warned import Tally

# Seconds that a call pays to start (and end) a pool that ends with it,
# beside sending the models (see each_call_s). Forked workers import
# nothing, but the caller collects its garbage before forking them, and they
# copy the pages they touch: a 100-tree forest's calls on 200,000 and
# 300,000 rows took 0.47 s and 0.83 s on 2 of them, 0.20 s more than half
# their 0.55 s and 1.26 s in-process, model included. Spawned workers (and a
# fork server's) import NumPy, scikit-learn and this package again: 2 tasks
# that do nothing took 1.31 s to 3.49 s a call on them (medians 1.44 s to
# 2.28 s; 2 cores).
FORKED_POOL_S = 0.15
SPAWNED_POOL_S = 1.5
# Seconds after which a process pool that sat idle is assumed to be gone
# (loky's workers, which shut down after 300 s idle, are looked at instead).
_IDLE_S = 250.0
# When each pool last ran a call of ours.
last_used: dict[tuple, float] = {}
# Per pool not started yet: seconds that calls have lost without it.
time_lost: dict[tuple, float] = {}
# Pools being started in the background, and how many starts began so far
# (see calm).
_warming: set = set()
_warm_ups = 0
_warm_lock = fork_safe(globals(), "_warm_lock", threading.Lock)
# Pools each model was sent to, by the model's id.
_sent: dict[int, tuple] = {}


@dataclasses.dataclass(frozen=True)
class Workers:
    """The workers a call's tasks run on, as the engine found them."""

    #: How many (the call's ``n_jobs``, resolved and capped).
    n: int
    #: ``"process"`` or ``"thread"``: the backend's kind of worker.
    kind: str
    #: The backend as the caller gave it (None: the engine's to choose).
    backend: str | ParallelBackendBase | None
    #: The joblib backend in effect (the caller's, or a ``parallel_config``).
    active: ParallelBackendBase
    #: The Dask or Ray cluster behind ``active`` (see
    #: :func:`._distributed.cluster_for`), or None.
    cluster: Any = None

    @property
    def key(self) -> tuple:
        """The key of their pool (see the module's docstring)."""
        return (type(self.active).__name__, self.n)


@in_forked_child
def _forked() -> None:
    # A forked child has none of its parent's pools, nor its warm-up threads.
    last_used.clear()
    time_lost.clear()
    _warming.clear()
    _sent.clear()


def lasts(pool_key: tuple) -> bool:
    """Whether the backend's pool outlives the call that ran on it.

    joblib's ``multiprocessing`` backend (and its subclasses, ours among
    them: :class:`._watched_pool.WatchedMultiprocessingBackend`) starts a
    ``multiprocessing.Pool`` for each ``Parallel`` call and terminates it
    when the call ends; only a ``Parallel`` entered as a context keeps it,
    and :func:`._fanout.fan_out` never enters one on that backend.
    """
    return not any(cls.__name__ == pool_key[0] for cls in _per_call_backends())


def _per_call_backends() -> list[type]:
    # MultiprocessingBackend and its subclasses, looked up when asked: the
    # key names the class only, and a user's subclass may be defined late.
    found: list[type] = []
    todo: list[type] = [MultiprocessingBackend]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def each_call_s(pool_key: tuple, jobs: list[Job]) -> float:
    """Seconds that every call on the backend's workers pays to start them
    and send them the jobs' models: those of a pool that ends with each call
    (see :func:`lasts`); 0 for a pool that lasts, whose start and models are
    paid once (see :func:`is_warm` and :func:`shipped`).

    Part of each plan's own seconds, not a one-off: a run that took longer
    teaches the overhead of processes, and a plan that gains little is
    checked against the serial call now and then, as on warm workers.
    Counted warm for 250 s after a call ran on it, the pool was charged
    nothing: a 100-tree forest's calls on 50,000 rows, planned at 0.10 s
    to 0.19 s on 2 forked workers, took 0.29 s to 0.39 s against 0.19 s to
    0.22 s in-process; on spawned ones, its calls on 450,000 rows, planned
    at 0.79 s to 1.13 s, took 2.2 s to 2.4 s against 1.5 s (2 cores).
    """
    if lasts(pool_key):
        return 0.0
    start = FORKED_POOL_S if _start_method() == "fork" else SPAWNED_POOL_S
    return start + _planning.shipping_s(job.estimator for job in jobs)


def _start_method() -> str:
    # joblib's multiprocessing context (JOBLIB_START_METHOD), else the
    # process's default, read without fixing it as multiprocessing's
    # get_start_method() would (a later set_start_method would then fail).
    context = _joblib_parallel.DEFAULT_MP_CONTEXT
    if context is not None:
        return context.get_start_method()
    return (
        multiprocessing.get_start_method(allow_none=True)
        or multiprocessing.get_all_start_methods()[0]
    )


def is_warm(pool_key: tuple, n_workers: int) -> bool:
    """Whether no start of the backend's workers stands in the way of a
    call: they are running and ready, or each call starts its own (see
    :func:`each_call_s`), which nothing started beforehand would spare it.

    loky's are looked at (see :func:`._loky.warm_workers`): whoever started
    them, they are what a call would run on. Other lasting pools are
    taken as warm for a while after our last call on them. Workers that our
    warm-up is starting are not warm yet: they are still importing
    scikit-learn, or receiving the models; nor are others of the same
    backend, which a warm-up for another number of workers resizes.
    """
    if not lasts(pool_key):
        return True
    with _warm_lock:
        if _warming_on(pool_key):
            return False
    warm = _loky.warm_workers(n_workers) if pool_key[0] == "LokyBackend" else None
    if warm is not None:
        return warm >= n_workers
    return time.monotonic() - last_used.get(pool_key, -np.inf) <= _IDLE_S


def _warming_on(pool_key: tuple) -> bool:
    # A warm-up of the backend, for any number of workers (under _warm_lock).
    return any(key[0] == pool_key[0] for key in _warming)


def shipped(model, pool_key: tuple) -> bool:
    """Whether the pool's workers hold ``model`` already, or are sent it by
    each call (see :func:`each_call_s`): no sending of it stands in the way
    of a call."""
    if not lasts(pool_key):
        return True
    entry = _sent.get(id(model))
    return entry is not None and entry[0]() is model and pool_key in entry[1]


def ran(jobs: list[Job], pool_key: tuple) -> None:
    """Record that the jobs ran on the pool: it is warm, and holds their
    models (nothing, where the pool ended with the call: see :func:`lasts`)."""
    if not lasts(pool_key):
        return
    last_used[pool_key] = time.monotonic()
    time_lost.pop(pool_key, None)
    for job in jobs:
        entry = _sent.get(id(job.estimator))
        if entry is None or entry[0]() is not job.estimator:
            entry = _costs.keep_by_id(_sent, job.estimator, set())
        if entry is not None:
            entry[1].add(pool_key)


def calm() -> int | None:
    """A mark that :func:`calm` returns again only while no warm-up of
    workers has run in between; None while one runs.

    A warm-up starts interpreters on the same cores: runs that overlap one
    teach nothing of the estimator. An SVC's threads on 20,000 rows, planned at
    0.63 s, took 1.39 s while the pool started, and were taken for threads
    that hold the GIL (2 cores).
    """
    return None if _warming else _warm_ups


def calm_since(mark: int | None) -> bool:
    """Whether no warm-up ran since ``mark = calm()`` was taken."""
    return mark is not None and mark == calm()


def warm_up(jobs: list[Job], n_workers: int, backend, pool_key: tuple) -> None:
    """Start the workers and ship them the models, in a background thread.

    Not those of a pool that ends with each call (see :func:`lasts`): it
    would end with the warm-up, having taken the cores from the caller's
    calls meanwhile (and spoilt what their timings teach).
    """
    global _warm_ups
    if not lasts(pool_key):
        return
    with _warm_lock:
        if _warming_on(pool_key):
            return
        _warming.add(pool_key)
        _warm_ups += 1

    def done() -> None:
        with _warm_lock:
            _warming.discard(pool_key)

    try:
        # Made here, while the caller holds the models still: a model
        # changed during its pickling would be shipped half old, half new.
        tasks = [
            (
                ModelHandle(job.estimator),
                job.method,
                job.rows(0, 1),
                job.columns,
                job.params_for(0, 1),
            )
            for job in jobs
        ]
    except Exception:
        done()  # a warm-up that never started must not look under way
        raise

    # The caller's joblib settings, which choose the workers its calls run
    # on (see _fanout.in_joblib_config).
    config = joblib_config()

    def start():
        try:
            with in_joblib_config(config):
                # The workers' warnings are not shown: the serial call makes
                # no such calls. (They came from this thread, at any time,
                # into whatever the caller was doing then, and under an
                # "error" filter failed the warm-up.)
                fan_out(
                    run_task,
                    tasks * n_workers,
                    n_workers=n_workers,
                    backend=backend,
                    tallies=[Tally(quiet=True)] * (len(tasks) * n_workers),
                )
            ran(jobs, pool_key)
        except Exception:  # noqa: S110 - a failed warm-up only costs speed
            pass
        finally:
            done()

    # Not a daemon: the interpreter waits for it rather than killing it while
    # it talks to the workers.
    threading.Thread(target=start, name="sklearn-parpredict-warm-up").start()
