"""Calls that stay in this process without a plan.

A batch too small to plan, or one that no plan paid for on as many rows with
the same cost and settings, is handed to the estimator as it is: it should
cost what the serial call costs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import numpy as np

from sklearn_parpredict import _chunking, _costs, _lazy, _pools, _probing
from sklearn_parpredict._fanout import config_key
from sklearn_parpredict._jobs import Job

logger = logging.getLogger("sklearn_parpredict")

# Why a call stayed in-process, in the debug log.
TOO_LITTLE = "in-process: too little work to plan"
NO_GAIN = "in-process: parallel work would not pay"
SERIAL_CHECK = "in-process: the serial call timed again, as a split gains little"
# Settings (a call's n_jobs and backend, and its joblib context) for which a
# cost remembers that no plan pays; the oldest is forgotten first.
MAX_NO_GAIN_SETTINGS = 16


def _small_under(cost, X) -> bool:
    """Whether a NumPy batch is too small to plan, given the remembered cost
    of its estimator and method (None: not probed yet): :func:`too_small`'s
    answer for one job, in the fewest steps, since the engine's ``run_one``
    asks it first on every call and a call on a few rows takes less than
    100 µs."""
    if type(X) is not np.ndarray or not X.ndim:
        return False
    if cost is None:
        return len(X) <= _probing.PROBE_ROWS
    return len(X) < cost.direct_rows


def plainly_small(estimator, method: str, X) -> bool:
    return _small_under(_costs.remembered_cost(estimator, method), X)


def calls_directly(cost, X) -> bool:
    """Whether the engine's ``run_one``, with ``chunk_size="auto"`` and no
    parameters, would only call the estimator on ``X``, given the remembered
    cost of its estimator and method: a NumPy batch too small to plan, and no
    debug log to write."""
    return _small_under(cost, X) and not logger.isEnabledFor(logging.DEBUG)


def direct_call(
    cost, estimator, method: str, X, params: dict, call: Callable | None = None
):
    """``estimator``'s ``method`` on ``X`` as it is (or ``call()``, that
    call), decided without a plan by ``cost``, its remembered cost (None:
    not probed yet).

    Its wall time is read (0.1 µs): a call that outgrew the cost (see
    :data:`._costs.OUTGROWN`) makes the next one read its thread's CPU time
    instead (2 µs), which a busy machine does not stretch, and the cost is
    forgotten where that call outgrew it too: the model was refitted in
    place, and the next call probes it again. (Judged on wall times alone,
    0.25 ms calls on 2 cores that two other processes kept busy forgot
    their cost once in 15 calls.)
    """
    confirm = cost is not None and cost.outgrown_once
    clock = time.thread_time if confirm else time.perf_counter
    start = clock()
    out = getattr(estimator, method)(X, **params) if call is None else call()
    seconds = clock() - start
    if cost is None:
        return out
    if seconds > _costs.OUTGROWN_S:
        rows = _chunking.n_rows(X)
        if _costs.outgrown(cost.seconds(rows), seconds):
            if confirm:
                _costs.forget_cost(estimator, method, cost)
            cost.outgrown_once = not confirm
            logger.debug(
                "%s.%s on %d rows took %.3g s (%s) where its cost predicted %.3g s: %s",
                type(estimator).__name__,
                method,
                rows,
                seconds,
                "CPU" if confirm else "wall",
                cost.seconds(rows),
                "refitted, its cost forgotten" if confirm else "timed again",
            )
            return out
    if confirm:
        cost.outgrown_once = False
    return out


def call_watched(estimator, method: str, X, params: dict):
    """The in-process call of a batch no plan pays for, timed when it is long
    enough that timing it costs nothing: the machine may change under a
    model (another process, cores that turn slower), and the cost must see
    it for the batch to be planned again."""
    cost = _costs.remembered_cost(estimator, method)
    rows = _chunking.n_rows(X)
    if cost is None or cost.seconds(rows) < _costs.WATCHED_CALL_S:
        return direct_call(cost, estimator, method, X, params)
    return learning_call(cost, rows, getattr(estimator, method), X, **params)


def learning_call(cost, rows: int, function, /, *args, **kwargs):
    """``function(*args, **kwargs)``, timed, its timing on ``rows`` taught to
    ``cost`` (None: nothing to teach) unless a warm-up of workers ran
    meanwhile (see :func:`._pools.calm`)."""
    calm = _pools.calm()
    with _costs.Timer() as timer:
        out = function(*args, **kwargs)
    if cost is not None and _pools.calm_since(calm):
        cost.add(rows, timer.wall, timer.cpu)
    return out


def _settings_key(settings: tuple) -> tuple:
    # What decides the workers a call gets: its own settings and the
    # joblib configuration in force (a ``parallel_config`` context is a new
    # object; a stale key only costs a plan, never changes an output).
    return (*settings, config_key())


def remember_no_gain(
    cost: _costs.Cost,
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

    ``rent``: ``(pool_key, n_workers, seconds, cold_s, pool_cold)`` where
    only a pool not started yet (``pool_cold``), or not holding the model
    yet, stands in the way, and a call on ``rows`` loses ``seconds``
    towards the ``cold_s`` that starting it, or shipping the model, costs.
    """
    with contextlib.suppress(TypeError):  # an unhashable backend instance
        key = _settings_key(settings)
        known = cost.no_gain.get(key)
        if refresh:
            if known is not None and known[0] == rows:
                cost.no_gain[key] = (rows, cost.seconds(rows), known[2])
        elif known is None or rows >= known[0]:
            cost.no_gain.pop(key, None)  # the latest last
            cost.no_gain[key] = (rows, cost.seconds(rows), rent)
            # The settings include the joblib context: one entered per call
            # (a server's per request) added one more on every call.
            while len(cost.no_gain) > MAX_NO_GAIN_SETTINGS:
                del cost.no_gain[next(iter(cost.no_gain))]


def known_no_gain(estimator, method: str, X, n_jobs, backend) -> str | None:
    """Whether no plan could pay for as many rows or more, with the same cost
    and settings: decided again without planning (30 µs with a DataFrame,
    a few percent of a call of a few milliseconds)."""
    cost = _costs.remembered_cost(estimator, method)
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
    if cost.seconds(rows) > seconds * _costs.NO_GAIN_DRIFT:
        return None
    if rent is None and cost.forgives_overhead():
        return None
    if rent is not None:
        pool_key, n_workers, lost, cold_s, pool_cold = rent
        lost = _pools.time_lost.get(pool_key, 0.0) + lost * n / max(rows, 1)
        # Time to start the pool, or another call started it (or shipped
        # the model to it): plan. (A pool that ran already, started by
        # joblib or another model, is warm on every call: planned on each,
        # a 100-tree forest's 1,000 rows took 1 ms more than its 21 ms
        # in-process call; 2 cores.)
        if lost >= cold_s or (
            (pool_cold or _pools.shipped(estimator, pool_key))
            and _pools.is_warm(pool_key, n_workers)
        ):
            cost.no_gain.pop(_settings_key((n_jobs, backend)), None)
            return None
        _pools.time_lost[pool_key] = lost
    return NO_GAIN


def too_small(jobs: list[Job], sizes: list[int]) -> bool:
    """Whether the work is so small that even planning it costs too much.

    True for a batch no larger than one probe of a model not seen yet, and for
    work whose remembered cost is below what any fan-out could save, on
    batches near enough in size to those it was timed on.
    """
    remembered = [_costs.remembered_cost(job.estimator, job.method) for job in jobs]
    costs = [cost for cost in remembered if cost is not None]
    if not costs:
        return max(sizes, default=0) <= _probing.PROBE_ROWS
    if len(costs) < len(jobs) or any(n >= c.covered_rows for c, n in zip(costs, sizes)):
        return False
    return sum(c.seconds(n) for c, n in zip(costs, sizes)) < _costs.FAST_SERIAL_S
