"""The cost model behind ``chunk_size="auto"``.

The engine times the first rows of each job in-process (their output is kept,
so the probe costs nothing), fits ``seconds = per_call + per_row * rows`` and
asks this module whether the remaining rows are worth sending to workers, and
in how many chunks. Costs are remembered per fitted model and method, so that
repeated calls skip the probe.
"""

from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass

from sklearn_parpredict._chunking import split_bounds

# First probe size; each next probe is PROBE_GROWTH times larger. Probing
# stops at the first step of PROBE_MIN_S (after at least two steps, to
# separate the fixed cost of a call from its cost per row), or at once after a
# step of PROBE_ENOUGH_S (the model is costly: no more serial work).
PROBE_ROWS = 64
PROBE_GROWTH = 4
PROBE_MIN_S = 0.005
PROBE_ENOUGH_S = 0.1
# Parallel work must be predicted at least this much faster than serial.
MIN_GAIN = 1.25
# Per task: pickling arguments and results and the round trip to a worker.
DISPATCH_S = {"process": 2e-3, "thread": 2e-4}
# Starting a process pool (interpreters importing numpy and scikit-learn), and
# shipping a model to the workers for the first time.
COLD_POOL_S = 0.5
COLD_MODEL_S = 0.05
# Aim for this many tasks per worker when the fixed cost per task allows it:
# more tasks balance uneven workers, fewer pay less fixed cost.
TASKS_PER_WORKER = 4
MAX_OVERHEAD_FRACTION = 0.05


@dataclass
class Cost:
    """Seconds for one call on ``n`` rows: ``per_call + per_row * n``.

    ``threads`` is how many cores the serial call kept busy on average
    (process CPU time over wall time): an estimator that is already threaded
    gains less from more workers.
    """

    per_call: float
    per_row: float
    threads: float = 1.0

    def seconds(self, rows: int) -> float:
        return self.per_call + self.per_row * rows


class Timer:
    """Wall and process CPU time of a block."""

    def __enter__(self):
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def fit_cost(samples: list[tuple[int, float, float]]) -> Cost:
    """A cost line through probe samples ``(rows, wall, cpu)``."""
    # The last two samples are the largest: the least noisy.
    rows = [s[0] for s in samples[-2:]]
    wall = [s[1] for s in samples[-2:]]
    threads = sum(s[2] for s in samples[-2:]) / max(sum(wall), 1e-9)
    threads = min(max(threads, 1.0), float(os.cpu_count() or 1))
    if len(rows) == 2 and rows[1] > rows[0]:
        per_row = max((wall[1] - wall[0]) / (rows[1] - rows[0]), 0.0)
        per_call = max(wall[0] - per_row * rows[0], 0.0)
        if per_row > 0:
            return Cost(per_call, per_row, threads)
    # One sample, or noise made the line fall: charge it all to the rows, which
    # errs towards parallel only for work that is already slow.
    return Cost(0.0, wall[-1] / max(rows[-1], 1), threads)


_costs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remembered_cost(model, method: str) -> Cost | None:
    try:
        return _costs.get(model, {}).get(method)
    except TypeError:  # not weak-referenceable or not hashable
        return None


def remember_cost(model, method: str, cost: Cost) -> None:
    try:
        _costs.setdefault(model, {})[method] = cost
    except TypeError:
        pass


def plan_chunks(
    costs: list[Cost],
    remaining: list[tuple[int, int]],
    *,
    n_workers: int,
    kind: str,
    cold_s: float,
) -> list[list[tuple[int, int]]] | None:
    """Row ranges per job for the workers, or None when serial is faster.

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
    cold_s : float
        One-off seconds to pay before the workers can start (pool start,
        first shipping of the models).
    """
    cores = os.cpu_count() or 1
    threads_per_worker = max(1, cores // n_workers)
    rows = [stop - start for start, stop in remaining]
    serial_s = sum(c.seconds(n) for c, n in zip(costs, rows) if n > 0)
    # Seconds of per-row work each job costs on one worker. An estimator that
    # is already threaded runs slower on a worker's share of the cores than
    # it did serially on all of them.
    work = [
        c.per_row * n * c.threads / min(c.threads, threads_per_worker)
        for c, n in zip(costs, rows)
    ]
    total = sum(work)
    if total <= 0:
        return None
    fixed = max(c.per_call for c in costs) + DISPATCH_S[kind]
    task_s = max(total / (n_workers * TASKS_PER_WORKER), fixed / MAX_OVERHEAD_FRACTION)
    task_s = min(task_s, total / n_workers)
    counts = [
        max(1, min(n, round(w / task_s))) if n > 0 else 0 for w, n in zip(work, rows)
    ]
    waves = -(-sum(counts) // n_workers)
    longest = max(w / k for w, k in zip(work, counts) if k)
    parallel_s = cold_s + waves * fixed + max(total / n_workers, longest)
    if parallel_s * MIN_GAIN > serial_s:
        return None
    return [
        split_bounds(start, stop, k) if k else []
        for (start, stop), k in zip(remaining, counts)
    ]
