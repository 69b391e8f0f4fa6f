"""The ways of predicting a workload that each row of the suite compares.

Each method is built once per workload (pools and wrappers persist, as they
would in a user's process) and then *bound* to a row range, giving a
zero-argument call that is what gets timed:

``serial``      the estimator's own call in this process.
``serial again`` the same, timed as another method: the A/A control, whose
                ratio to ``serial`` shows how far two medians of one call
                land apart in a row.
``parpredict``  ``ParallelPredictor(model, n_jobs=-1)`` (``MultiModelPredictor``
                for several models), default ``chunk_size="auto"``.
``ceiling``     the reference: a fork pool started once *after* the model and
                data are module globals, so workers inherit both and nothing
                is sent but row bounds and results. Times only map+concatenate.
``tutorial``    the tutorial's recipe: a ``multiprocessing.Pool`` per call,
                ``np.array_split`` into one chunk per core, the model pickled
                with every chunk; several models run one per core.
``joblib``      ``joblib.Parallel`` (loky) over ``np.array_split`` chunks.
``dask-ml``     ``dask_ml.wrappers.ParallelPostFit`` on a dask collection of
                one block per core, dask's threaded scheduler on a pool of
                threads warmed before each sample and shut down after it,
                outside the timing (see :class:`DaskML`).

Peers get the same courtesies as ``parpredict``: never more chunks than rows,
and at most ``cores // workers`` BLAS/OpenMP threads in forked workers, which
also keeps forked workers from deadlocking in an OpenMP runtime the parent
already started (GNU OpenMP is not fork-safe).
"""

from __future__ import annotations

import multiprocessing
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import joblib
import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks._cases import Workload, combine, predict_part

N_WORKERS = joblib.cpu_count()
THREADS_PER_WORKER = max(1, joblib.cpu_count() // N_WORKERS)


def _limit_threads(n_threads: int) -> None:
    # A pool initializer: the limit lasts for the worker's life.
    threadpool_limits(limits=n_threads)


def chunk_bounds(start: int, stop: int, n_chunks: int) -> list[tuple[int, int]]:
    """``np.array_split``'s row ranges, never more chunks than rows."""
    n_chunks = max(1, min(n_chunks, stop - start))
    sizes = [len(part) for part in np.array_split(np.arange(stop - start), n_chunks)]
    edges = start + np.concatenate([[0], np.cumsum(sizes)])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def rows(X, start: int, stop: int):
    """Rows ``start:stop`` of an array or DataFrame, as a view."""
    return X.iloc[start:stop] if hasattr(X, "iloc") else X[start:stop]


def array_split(X, n_chunks: int) -> list:
    # np.array_split on a DataFrame is deprecated in pandas; same split by iloc.
    return [rows(X, a, b) for a, b in chunk_bounds(0, len(X), n_chunks)]


def assemble(n_models: int, parts: list):
    """Join outputs listed model by model, chunk by chunk, as serial's."""
    per_model = len(parts) // n_models
    joined = []
    for i in range(n_models):
        mine = parts[i * per_model : (i + 1) * per_model]
        joined.append(mine[0] if len(mine) == 1 else np.concatenate(mine))
    return combine(joined)


class Method:
    """A way of predicting ``work``, bound to row ranges of ``work.X``."""

    name = ""

    def __init__(self, work: Workload):
        self.work = work

    def bind(self, start: int, stop: int) -> Callable[[], Any]:
        """The call to time. It may have ``before`` and ``after``
        attributes: functions that the timing loop runs before and after
        each sample, outside the timing."""
        raise NotImplementedError

    def close(self) -> None:
        """Release pools; the method is not used afterwards."""


class Serial(Method):
    name = "serial"

    def bind(self, start, stop):
        X = rows(self.work.X, start, stop)
        return lambda: self.work.serial(X)


class SerialAgain(Serial):
    """The serial call once more, timed as a method of its own: the A/A
    control. Its ratio to ``serial`` is the noise of a ratio in this row."""

    name = "serial again"


class ParPredict(Method):
    name = "parpredict"

    def bind(self, start, stop):
        X = rows(self.work.X, start, stop)
        method = getattr(self.work.ours, self.work.method)
        return lambda: method(X)


# What the ceiling's forked workers inherit: (models, X, method).
_inherited: tuple | None = None


def _ceiling_task(task):
    i, start, stop = task
    models, X, method = _inherited
    estimator, columns = models[i]
    return predict_part(estimator, columns, rows(X, start, stop), method)


class Ceiling(Method):
    name = "ceiling"

    def __init__(self, work):
        super().__init__(work)
        global _inherited
        _inherited = (work.models, work.X, work.method)
        # Pool() forks its workers now, while the globals hold the work.
        self._pool = multiprocessing.get_context("fork").Pool(
            N_WORKERS, initializer=_limit_threads, initargs=(THREADS_PER_WORKER,)
        )

    def bind(self, start, stop):
        n_models = len(self.work.models)
        tasks = [
            (i, a, b)
            for i in range(n_models)
            for a, b in chunk_bounds(start, stop, N_WORKERS)
        ]

        def call():
            return assemble(n_models, self._pool.map(_ceiling_task, tasks, 1))

        return call

    def close(self):
        global _inherited
        self._pool.terminate()
        self._pool.join()
        _inherited = None


def _tutorial_task(args):
    estimator, columns, X, method = args
    return predict_part(estimator, columns, X, method)


class Tutorial(Method):
    name = "tutorial"

    def bind(self, start, stop):
        X = rows(self.work.X, start, stop)
        models, method = self.work.models, self.work.method

        def call():
            if len(models) > 1:
                # The tutorial's recipe for several models: one per core.
                tasks = [(est, cols, X, method) for est, cols in models]
            else:
                est, cols = models[0]
                tasks = [(est, cols, c, method) for c in array_split(X, N_WORKERS)]
            with multiprocessing.Pool(
                N_WORKERS, initializer=_limit_threads, initargs=(THREADS_PER_WORKER,)
            ) as pool:
                parts = pool.map(_tutorial_task, tasks)
            return combine(parts) if len(models) > 1 else assemble(1, parts)

        return call


class JoblibSplit(Method):
    name = "joblib"

    def bind(self, start, stop):
        X = rows(self.work.X, start, stop)
        models, method = self.work.models, self.work.method

        def call():
            parts = joblib.Parallel(n_jobs=N_WORKERS)(
                joblib.delayed(predict_part)(est, cols, chunk, method)
                for est, cols in models
                for chunk in array_split(X, N_WORKERS)
            )
            return assemble(len(models), parts)

        return call


def dask_ml_available() -> str | None:
    """None when dask-ml can run here, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import dask_ml.wrappers  # noqa: F401
    except Exception as exc:  # ImportError, or an incompatible scikit-learn
        return f"dask-ml unavailable ({type(exc).__name__}: {exc})"
    return None


class DaskML(Method):
    """dask-ml on threads that live only for the timing of a sample.

    Dask keeps the pool of its threaded scheduler for the life of the
    process, and each of its threads that ran OpenMP keeps a team of OpenMP
    threads. With more such threads than cores, GNU OpenMP stops spinning
    and puts threads to sleep at every parallel region: every later small
    OpenMP call in the process, in any method, slowed about tenfold
    (HistGradientBoosting on 1 row: 0.46 ms, then 5.2 ms once two other
    threads had predicted with it; 2 cores). So the pool is started before
    each sample, each of its threads predicts one row (dask-ml is timed as
    it runs in a process where its pool is warm), and it is shut down after
    the sample; neither is timed.
    """

    name = "dask-ml"

    def __init__(self, work):
        super().__init__(work)
        from dask_ml.wrappers import ParallelPostFit

        self._wrapped = [ParallelPostFit(est) for est, _ in work.models]
        self._pool = None

    def _start_pool(self) -> None:
        self.close()
        self._pool = ThreadPoolExecutor(N_WORKERS)
        one_row = rows(self.work.X, 0, 1)
        # Every thread waits for the others: each task is on a thread of
        # its own (a submit that finds no idle thread starts one).
        barrier = threading.Barrier(N_WORKERS)

        def warm(_):
            barrier.wait()
            self.work.serial(one_row)

        list(self._pool.map(warm, range(N_WORKERS)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def bind(self, start, stop):
        import dask
        import dask.array as da
        import dask.dataframe as dd

        X = rows(self.work.X, start, stop)
        n_blocks = max(1, min(N_WORKERS, stop - start))
        models, method = self.work.models, self.work.method

        def call():
            if hasattr(X, "iloc"):
                Xd = dd.from_pandas(X, npartitions=n_blocks)
            else:
                # name=False skips hashing the whole array for a task name.
                block = -(-len(X) // n_blocks)
                Xd = da.from_array(X, chunks=(block, -1), name=False)
            lazy = [
                getattr(wrapped, method)(Xd if cols is None else Xd[cols])
                for wrapped, (_, cols) in zip(self._wrapped, models)
            ]
            outs = dask.compute(*lazy, scheduler="threads", pool=self._pool)
            return combine(list(outs))

        call.before, call.after = self._start_pool, self.close
        return call


METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Serial, SerialAgain, ParPredict, Ceiling, Tutorial, JoblibSplit, DaskML)
}
PEERS = ("tutorial", "joblib", "dask-ml")
