"""joblib's ``multiprocessing`` backend, failing where it would hang.

A worker that dies, a task that cannot be pickled or an output that cannot
be unpickled fail the call, as they do on loky, rather than leave it
waiting for ever.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from multiprocessing.pool import RUN
from typing import Any

from joblib._parallel_backends import MultiprocessingBackend
from joblib.externals.loky.process_executor import (
    BrokenProcessPool,
    TerminatedWorkerError,
)
from threadpoolctl import threadpool_limits

# Seconds between two looks at a multiprocessing pool's workers.
_WATCH_S = 0.05


class WatchedMultiprocessingBackend(MultiprocessingBackend):
    """joblib's ``multiprocessing`` backend, failing where it would hang.

    A ``multiprocessing.Pool`` replaces a worker that died (``os._exit``, a
    signal, the kernel's out-of-memory killer) but never completes the task
    the worker was running, so the caller would wait for it forever (CPython
    issue 22393). While the pool runs, a watcher fails every pending task
    with loky's ``TerminatedWorkerError`` as soon as a worker dies, as the
    loky backend does.

    ``Pool.terminate`` can wait forever for the lock of the results queue,
    which the workers share: held by a worker it killed while writing, or
    by one waiting to write a result after the result handler has ended.
    Writes with no one left to read them are given up.

    The workers are forked from the caller: if the caller had started GNU
    OpenMP's threads (HistGradientBoosting, KMeans, ... predicting
    in-process), a worker's first parallel region waits forever for threads
    that were not forked. The workers run OpenMP on one thread instead.
    """

    def configure(self, *args, **kwargs):
        kwargs.setdefault("initializer", _one_openmp_thread)
        n_jobs = super().configure(*args, **kwargs)
        self._stop_watch = threading.Event()
        # Seen now, before any task: a worker can die and be replaced before
        # the watcher's first look.
        workers = {worker.pid: worker for worker in self._pool._pool}
        _unread_writes_given_up(self._pool)
        _unread_tasks_given_up(self._pool)
        threading.Thread(
            target=_watch_pool,
            args=(self._pool, workers, self._stop_watch),
            name="sklearn-parpredict-pool-watch",
            daemon=True,
        ).start()
        return n_jobs

    def terminate(self):
        stop = getattr(self, "_stop_watch", None)
        if stop is not None:
            # The pool's own shutdown ends its workers: not a failure.
            stop.set()
        super().terminate()


def _unread_writes_given_up(pool) -> None:
    """Let the caller's writes on ``pool``'s results queue give up once its
    result handler, their only reader, has ended.

    ``Pool.terminate`` and the pool's task handler each end by writing a
    sentinel for the result handler, under a lock the workers share. By
    then the result handler may have ended (on the task handler's sentinel)
    while a worker, holding the lock, waits to write a result no one will
    read: the caller would wait for the lock forever. And a worker killed
    while writing holds it for good.
    """
    queue, results = pool._outqueue, pool._result_handler
    lock, send = getattr(queue, "_wlock", None), getattr(queue, "_send", None)
    if lock is None or send is None:
        return

    def put(obj):
        while not lock.acquire(timeout=_WATCH_S):
            if not results.is_alive():
                return None
        try:
            return send(obj)
        finally:
            lock.release()

    queue.put = put


def _unread_tasks_given_up(pool) -> None:
    """Let the pool's task handler give up writing a task once the pool is
    ending and no worker is left to read it.

    ``Pool.terminate`` reads the tasks still queued so that the handler can
    end, but stops as soon as the pipe is empty for a moment: while the
    handler pickles its next task (a task that failed to pickle ends a call
    while the next is being pickled). It then ends the workers and waits
    for the handler, whose write of that task, larger than the pipe holds,
    would wait forever for a reader.
    """
    writer: Any = getattr(getattr(pool, "_inqueue", None), "_writer", None)
    handle = getattr(writer, "_handle", None)
    if sys.platform == "win32" or not isinstance(handle, int):
        return
    os.set_blocking(handle, False)
    # poll, not select: select refuses descriptors past 1,023, which a
    # process with many files or sockets open hands out.
    writable = select.poll()
    writable.register(handle, select.POLLOUT)

    def send(buf):
        # Connection._send's loop, waiting with a timeout rather than in
        # the write itself (the task handler is the pipe's only writer).
        view = memoryview(buf)
        while view:
            try:
                view = view[os.write(handle, view) :]
            except BlockingIOError:
                if pool._state != RUN and not any(w.is_alive() for w in pool._pool):
                    raise BrokenPipeError(
                        "no worker is left to read the task"
                    ) from None
                writable.poll(_WATCH_S * 1000)

    writer._send = send


def _one_openmp_thread() -> None:
    threadpool_limits(limits=1, user_api="openmp")


def _watch_pool(pool, workers: dict, stop: threading.Event) -> None:
    results = getattr(pool, "_result_handler", None)
    while not stop.wait(_WATCH_S):
        if (
            results is not None
            and not results.is_alive()
            and pool._state == RUN
            and not stop.is_set()
        ):
            # The result handler ends only with the pool, or on an error: a
            # result that failed to unpickle here (its traceback printed
            # by the thread) left the call waiting for it for ever. loky
            # reports its pool broken so.
            _fail_pending(
                pool,
                BrokenProcessPool(
                    "A result has failed to un-serialize: the multiprocessing "
                    "pool's result handler ended on it (see its traceback "
                    "above). Please ensure that the objects returned by the "
                    "estimator can be unpickled."
                ),
            )
            return
        # Workers only end with the pool (no maxtasksperchild): a worker that
        # exited, or a new one replacing it, means one died.
        current = list(pool._pool)
        replaced = any(worker.pid not in workers for worker in current)
        for worker in current:
            workers.setdefault(worker.pid, worker)
        codes = sorted({w.exitcode for w in workers.values() if w.exitcode is not None})
        if (codes or replaced) and not stop.is_set():
            names = ", ".join(map(_exit_name, codes))
            error = TerminatedWorkerError(
                "A worker process of the multiprocessing pool was unexpectedly "
                "terminated. This could be caused by a segmentation fault, a "
                "call to os._exit, or an excessive memory usage causing the "
                f"operating system to kill the worker.\nThe exit codes of the "
                f"workers are {{{names}}}"
            )
            _fail_pending(pool, error)
            return


def _fail_pending(pool, error: BaseException) -> None:
    """Fail every task of ``pool`` not done yet with ``error``."""
    for result in list(pool._cache.values()):
        # A result that arrives meanwhile has already removed itself.
        with contextlib.suppress(KeyError):
            result._set(0, (False, error))


def _exit_name(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{signal.Signals(-code).name}({code})"
    return f"EXIT({code})"
