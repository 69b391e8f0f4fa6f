"""Measuring an estimator's cost in this process, on the rows of the call.

The first rows of a call to a model not seen yet are its probe; before a plan
on threads, chunks of the call's rows run on two threads against one timed
in-process. Every output is kept: the rows measured are rows done.
"""

from __future__ import annotations

import logging
import math

from sklearn_parpredict import _costs, _planning, _threads
from sklearn_parpredict._jobs import Job

logger = logging.getLogger("sklearn_parpredict")

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
# A speedup below THREAD_TRUSTED (see _costs) is measured again, unless it
# is below THREAD_HELD (see _costs), the threads of the measurement waited
# for a core less than THREAD_WAIT_SHARE of their time, as Linux counts it
# (SEES_WAITS): no other work took a core from them, and so low a speedup
# is the GIL's (threads that wait for the GIL sleep rather than wait for a
# core); higher ones are measured again even so: the first tasks of new
# threads pay for their first touch of memory (SVC: 1.67x, with no wait,
# then more); and its chunks took THREAD_HELD_CHUNK_S each in-process, at least:
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
# Each chunk of a thread measurement spends at least this share of its time
# on its rows: the fixed cost of a call (a forest's Python loop over its
# trees) often holds the GIL, and would pass for rows that hold it. A 100-tree
# forest measured 1.64x-1.80x at a share of 0.75 and 1.89x at 0.85; its calls
# on 500,000 rows ran 1.89x faster on two threads (2 cores).
THREAD_ROW_SHARE = 0.85


def done_rows(pieces) -> int:
    return max((stop for _, stop, _ in pieces), default=0)


def probe(job: Job, n: int, pieces: list) -> _costs.Cost:
    """The job's cost.

    When the cost is not remembered, the first rows are timed in-process and
    their outputs are kept in ``pieces``.
    """
    cost = _costs.remembered_cost(job.estimator, job.method)
    if cost is not None:
        return cost
    cost = None
    start, size = 0, PROBE_ROWS
    while start < n:
        stop = min(n, start + size)
        with _costs.Timer(waits=True) as timer:
            out = job.call(start, stop)
        pieces.append((start, stop, out))
        # Less what other work took from this thread: a first cost inflated
        # by a moment's load stays until calls refine it (a forest probed
        # while the threads a fork left behind spun took 21 ms on 64 rows
        # instead of 7, and its next 500,000 rows ran in-process; 2 cores).
        sample = (stop - start, timer.own, timer.cpu)
        if cost is None:
            cost = _costs.fit_cost([sample], job.estimator)
        else:
            cost.add(*sample)
        start, size = stop, size * PROBE_GROWTH
        # Grow until a step is long enough to time reliably, and its rows
        # are not lost in the noise of the call's fixed cost (a forest timed
        # on 64 and 256 rows fitted a tenth of its cost per row, and its
        # first plan cut the rows for it; 2 cores); stop at once when a step
        # is already costly.
        rows_share = cost.per_row * sample[0] / max(sample[1], 1e-9)
        if sample[1] >= PROBE_ENOUGH_S or (
            len(cost.samples) >= 2
            and sample[1] >= PROBE_MIN_S
            and rows_share >= PROBE_ROW_SHARE
        ):
            break
    # Planned only for batches of rows: the loop ran.
    assert cost is not None
    _costs.remember_cost(job.estimator, job.method, cost)
    return cost


def measure_threads(job: Job, cost: _costs.Cost, n: int, pieces: list) -> None:
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


def _measure_threads_once(job: Job, cost: _costs.Cost, n: int, pieces) -> bool:
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
    with _threads.limit_inner_threads([cost], 2):
        with _costs.Timer() as timer:
            results = _threads.run(_waiting_call(job), bounds, 2)
    pieces.extend((a, b, out) for (a, b), (out, _, _) in zip(bounds, results))
    waited = sum(w - own for _, w, own in results)
    wall = timer.wall
    if _costs.CORES >= 2:
        # Less what other work took from the slower thread: the machine's
        # load, not the estimator's. In the benchmarks, the spinning threads
        # a fork left behind made a forest's threads measure 1.04x-1.51x,
        # and processes were kept where threads were 4% faster (2 cores).
        # Threads waiting for the GIL sleep; that wait is not taken out.
        wall += max(own for _, _, own in results) - max(w for _, w, _ in results)
    serial_s = 2 * alone_s
    if cost.own_speedup is not None and cost.threads >= _costs.THREADED:
        # Measured, not guessed from the cores the call kept busy: other
        # threads of the process (BLAS's, spinning) count as busy too.
        serial_s *= _planning.inner_slowdown(cost, _planning.cores_per_worker(2))
    speedup = serial_s / max(wall, 1e-9)
    # Where the rows mostly release the GIL, the speedup of the rows: both
    # calls' fixed costs are taken as paid one after another, as plans take
    # them on threads (see _planning.fixed_seconds). A 100-tree forest's
    # chunks of 4,000-5,000 rows, 3 ms of each its fixed cost, ran 1.75x
    # faster on two threads than in-process, where its calls on 500,000 rows
    # ran 1.89x faster, and processes were chosen (2 cores). Rows that hold the GIL
    # much of the time themselves keep the speedup measured: taken out of
    # it, the fixed costs credited a pipeline on a DataFrame with threads
    # that ran it at 0.92x of serial.
    fixed = 2 * min(cost.per_call, alone_s)
    if speedup >= THREAD_FREE and wall > fixed:
        speedup = (serial_s - fixed) / (wall - fixed)
    held = speedup < _costs.THREAD_HELD and _costs.SEES_WAITS
    held = held and alone_s >= THREAD_HELD_CHUNK_S
    uncrowded = waited < THREAD_WAIT_SHARE * 2 * timer.wall
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


def measure_own_threads(job: Job, cost: _costs.Cost, n: int, pieces) -> None:
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
        with _costs.Timer(waits=True) as one:
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
        with _costs.Timer(waits=True) as timer:
            out = job.call(start, stop)
        return out, timer.wall, timer.own

    return call


def _serial_chunk(job: Job, cost: _costs.Cost, n: int, pieces, more: int):
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
    start = done_rows(pieces)
    left = n - start
    rows = left
    if cost.per_row > 0:
        wanted = (THREAD_PROBE_S - cost.per_call) / cost.per_row
        # Never too few for the rows' share, though: a call's fixed cost (a
        # 100-tree forest's loop over its trees, 10-13 ms) may leave no room
        # for it in THREAD_PROBE_S, and threads were then never measured nor
        # chosen (RandomForest, 500,000 rows: processes at 1.23 s where
        # threads take 1.18 s; 2 cores).
        least = (more + 1) * thread_measurement_rows(cost)
        rows = min(rows, max(int(wanted), least))
    # Leave at least half of what remains for the plan itself.
    size = min(max(rows, more + 1), left // 2) // (more + 1)
    if size < max(1, thread_measurement_rows(cost)):
        return None
    while True:
        predicted = cost.seconds(size) if size < cost.covered_rows else 0.0
        with _costs.Timer(waits=True) as alone:
            out = job.call(start, start + size)
        pieces.append((start, start + size, out))
        cost.add(size, alone.wall, alone.cpu)
        start += size
        seconds = min(alone.own, predicted) if predicted > 0 else alone.own
        if alone.own >= THREAD_CHUNK_S:
            return start, size, seconds
        # The next chunk leaves room for ``more`` of its size.
        grown = min(size * PROBE_GROWTH, (n - start) // (more + 1))
        if grown <= size:
            if more * size > n - start:
                return None  # the rows done stay done; no measurement
            return start, size, seconds
        size = grown


def thread_measurement_rows(cost: _costs.Cost) -> int:
    """Fewest rows per chunk of a thread measurement of ``cost``."""
    if cost.per_row <= 0:
        return 1
    share = THREAD_ROW_SHARE / (1.0 - THREAD_ROW_SHARE)
    return max(1, math.ceil(share * cost.per_call / cost.per_row))
