"""Hand tasks to a joblib backend: the one place where work leaves the caller.

Prediction chunks, the warm-up of a pool and :class:`MultiModelPredictor`'s
fits all go through :func:`fan_out`. It adds to joblib what the package
promises its users: the caller's scikit-learn configuration and NumPy
floating-point error state in every task,
the workers' warnings raised again in the caller, a dead ``multiprocessing``
worker that fails the call instead of hanging it, and, on joblib's threading
backend, the package's own threads.
"""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import select
import signal
import sys
import threading
import traceback
import warnings
from multiprocessing.pool import RUN
from typing import Any

import joblib
from joblib._parallel_backends import (
    LokyBackend,
    MultiprocessingBackend,
    ParallelBackendBase,
    ThreadingBackend,
)
from joblib.externals.loky.process_executor import (
    BrokenProcessPool,
    TerminatedWorkerError,
    _ExceptionWithTraceback,
)
from joblib.parallel import get_active_backend
from sklearn.utils.parallel import Parallel, delayed
from threadpoolctl import threadpool_limits

from sklearn_parpredict import _loky, _threads
from sklearn_parpredict._sharing import cloudpickle

try:  # joblib's thread-local configuration, set by ``parallel_config``
    from joblib.parallel import _backend as _joblib_local
    from joblib.parallel import default_parallel_config as _joblib_defaults
except ImportError:  # pragma: no cover - joblib internals moved
    _joblib_local = _joblib_defaults = None


def parallel_config(backend):
    """The joblib context in which ``backend`` (None: the active one) is used."""
    if backend is None:
        return contextlib.nullcontext()
    return joblib.parallel_config(backend=backend)


def active_backend(backend):
    """The backend instance ``Parallel(backend=backend)`` runs on, and the
    default ``n_jobs`` of its context."""
    with parallel_config(backend):
        return get_active_backend()


def config_key() -> int:
    """Which ``joblib.parallel_config`` context is in force: each context is
    a new object (a stale key only costs a plan, never changes an output)."""
    return id(getattr(_joblib_local, "config", None))


def backend_configured() -> bool:
    """Whether a ``joblib.parallel_config`` context names a backend."""
    try:
        config = getattr(_joblib_local, "config", None)
        return (
            config is not None and config["backend"] is not _joblib_defaults["backend"]
        )
    except Exception:  # joblib internals moved: assume the user chose
        return True


def joblib_config() -> dict | None:
    """The calling thread's ``joblib.parallel_config``, for a thread of ours
    that works for it (see :func:`in_joblib_config`)."""
    return getattr(_joblib_local, "config", None)


@contextlib.contextmanager
def in_joblib_config(config: dict | None):
    """Run under ``config``, a caller's :func:`joblib_config`, on another
    thread, whose own joblib settings are joblib's defaults: a warm-up in
    the background started loky's workers with them, which the caller's
    calls under other settings (``max_nbytes``, ``inner_max_num_threads``)
    replaced by their own, and under ``backend="multiprocessing"`` it
    started loky workers that no call runs on."""
    if config is None or _joblib_local is None:
        yield
        return
    backend = config.get("backend")
    if isinstance(backend, ParallelBackendBase):
        # An instance of its own: joblib sets a backend up for the call that
        # runs on it (its executor, its Parallel), and the caller's calls
        # run on the caller's meanwhile.
        config = {**config, "backend": copy.copy(backend)}
    old = getattr(_joblib_local, "config", None)
    _joblib_local.config = config
    try:
        yield
    finally:
        if old is None:
            del _joblib_local.config
        else:
            _joblib_local.config = old


def fan_out(
    function,
    tasks,
    *,
    n_workers: int,
    backend=None,
    verbose: int = 0,
    rank: list[int] | None = None,
):
    """``[function(*task) for task in tasks]`` on a joblib backend, in order.

    The one place where the package hands work to a backend: prediction
    chunks, the warm-up of a pool and :class:`MultiModelPredictor`'s fits.

    Parameters
    ----------
    function : callable
        Called once per task.
    tasks : iterable of tuple
        The arguments of each call.
    n_workers : int
        Workers to use; at most one runs the tasks in this thread.
    backend : str, backend instance or None
        As joblib's ``Parallel`` takes it; None honours an active
        ``joblib.parallel_config``.
    verbose : int
        Verbosity of joblib's ``Parallel``.
    rank : list of int, default=None
        Each task's place in the serial call's order, where the tasks are
        given in another (longest first); None: their order.

    Returns
    -------
    outputs : list
        The calls' outputs, in task order. The first task's exception in the
        serial order, or the error of a worker that died, is raised as is.
        (On joblib's ``multiprocessing`` backend, which hands no outputs
        back in order, the error of the task that failed first.)
    """
    tasks = list(tasks)
    if n_workers <= 1 or len(tasks) <= 1:
        return [function(*task) for task in tasks]
    active, _ = active_backend(backend)
    if isinstance(active, ThreadingBackend) and not verbose:
        # joblib's threads start anew and are polled every 10 ms on every
        # call; the package's own are kept and waited on. (joblib's progress
        # report, verbose, needs joblib's.)
        return _threads.run(function, tasks, n_workers, rank)
    if getattr(active, "uses_threads", False):
        # Threads get the config directly. scikit-learn's Parallel would also
        # swap the process-wide warning filters in every task, which races
        # between threads and can leave the caller's filters changed.
        context = _threads.caller_context()
        ordered = _ordered(active)
        runner = joblib.Parallel(
            n_jobs=n_workers,
            backend=backend,
            verbose=verbose,
            batch_size=1,
            return_as="generator" if ordered else "list",
        )
        with _threads.warning_filters_kept():
            try:
                return _in_task_order(
                    runner(
                        joblib.delayed(_threads.in_config)(
                            context, _outcome, ordered, function, *task
                        )
                        for task in tasks
                    ),
                    rank,
                )
            except _Failed as failed:
                raise failed.exception from failed.exception.__cause__
    if type(active) is MultiprocessingBackend:
        backend = _WatchedMultiprocessingBackend(
            nesting_level=active.nesting_level,
            inner_max_num_threads=active.inner_max_num_threads,
        )
    # scikit-learn's Parallel carries the caller's config to the workers;
    # NumPy's error state goes with each task.
    ordered = _ordered(active)
    runner = Parallel(
        n_jobs=n_workers,
        backend=backend,
        verbose=verbose,
        batch_size=1,
        return_as="generator" if ordered else "list",
    )
    # On loky, the tasks go to the executor that joblib configures, and the
    # caller waits on them rather than polling. (joblib's progress report,
    # verbose, needs joblib's loop.)
    direct = type(active) is LokyBackend and not verbose
    try:
        with runner if direct else contextlib.nullcontext():
            if direct and _loky.usable(runner):
                tasks = [(function, *task) for task in tasks]
                results = _loky.run(runner, _recording_warnings, tasks, rank)
            else:
                errstate = _threads.ErrState.current()
                results = _in_task_order(
                    runner(
                        delayed(_threads.in_errstate)(
                            errstate,
                            _outcome,
                            ordered,
                            _recording_warnings,
                            function,
                            *task,
                        )
                        for task in tasks
                    ),
                    rank,
                )
    except Exception as exc:
        # The failing task's warnings, raised before its error as the serial
        # call raises them (scikit-learn warns of sparse columns, then fails
        # on their missing values).
        error: BaseException = exc.exception if isinstance(exc, _Failed) else exc
        if isinstance(error, _Rebuilt):
            error = error.rebuilt()
        _warn_again([error.__dict__.pop(_CAUGHT, ())])
        if error is not exc:
            # With its traceback in the worker as its cause.
            raise error from error.__cause__
        raise
    _warn_again(caught for _, caught in results)
    return [out for out, _ in results]


# Where a failing task's exception carries its warnings back (an attribute
# pickles with the exception).
_CAUGHT = "_sklearn_parpredict_warnings"


def _recording_warnings(function, *args):
    """A task in a worker process, and the warnings it raised.

    A worker's warnings are printed on its stderr, out of the reach of the
    caller's filters, ``pytest.warns`` or ``logging.captureWarnings``: they
    are sent back with the output and raised again in the caller.
    """
    stand_in = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = function(*args)
        except BaseException as exc:
            # (Not only an Exception: one that is not, unpickled in vain,
            # broke loky's pool, and a multiprocessing pool's result handler,
            # its call left waiting for ever.)
            stand_in = _stand_in(exc)
            if stand_in is None:
                setattr(exc, _CAUGHT, _sendable(_described(caught)))
                raise
    if stand_in is not None:
        setattr(stand_in, _CAUGHT, _sendable(_described(caught)))
        # Raised here, it has no context: where distributed is imported,
        # tblib pickles an exception's context with it.
        raise stand_in
    return out, _sendable(_described(caught))


def _ordered(active) -> bool:
    """Whether joblib's loop on ``active`` hands the outputs back one by one,
    in task order (not joblib's ``multiprocessing`` backend)."""
    return bool(getattr(active, "supports_return_generator", False))


class _Failed(Exception):
    """A task's exception, returned as its output, or raised in its place
    (see :func:`_outcome`)."""

    def __init__(self, exception: Exception):
        super().__init__(exception)
        self.exception = exception

    def __reduce__(self):
        # To the caller, with its traceback in the worker as its cause, as
        # loky sends an error.
        return _Failed, (_ExceptionWithTraceback(self.exception),)


class _Aborted(Exception):
    """Thrown into joblib's generator of outputs: it stops the tasks."""


def _outcome(ordered: bool, function, *args):
    """``function(*args)``, its exception in a :class:`_Failed`: returned
    where joblib's loop hands the outputs back in task order (``ordered``),
    else raised.

    joblib raises the error of whichever task failed first, where the
    serial call meets the first rows' error first: a task in order returns
    it for :func:`_in_task_order` to raise. And joblib gathers the outputs
    in a generator, which turns a ``StopIteration`` raised through it into
    ``RuntimeError: generator raised StopIteration`` (PEP 479): raised, it
    goes through as a :class:`_Failed`, which :func:`fan_out` unwraps.
    """
    try:
        return function(*args)
    except Exception as exc:
        if ordered:
            return _Failed(exc)
        raise _Failed(exc) from None


def _in_task_order(outputs, rank: list[int] | None = None) -> list:
    """The outputs of joblib's loop of :func:`_outcome` tasks, in task order.

    The first task that failed in the serial order (``rank``, as
    :func:`fan_out` takes it) raises its exception once every task before
    it in that order is done (they run on, as the serial call runs the rows
    before the failing ones); joblib stops the others.
    """
    results: list = []
    first = None
    for out in outputs:
        i = len(results)
        results.append(out)
        if isinstance(out, _Failed) and (
            first is None or (rank is not None and rank[i] < rank[first])
        ):
            first = i
        if first is None:
            continue
        before = (
            range(first)
            if rank is None
            else [j for j, r in enumerate(rank) if r < rank[first]]
        )
        if all(j < len(results) for j in before):
            if not isinstance(outputs, list):
                with contextlib.suppress(_Aborted):
                    outputs.throw(_Aborted())
            # Raised here, not through joblib's generator: a StopIteration
            # stays one.
            raise results[first].exception
    return results


def _sendable(described: list[tuple]) -> list[tuple]:
    """The warnings that go back with a task's output or error, in a form
    every backend's pickler takes: a warning class defined in a function
    (which plain pickle refuses, and with it the output or the error) goes
    by value; none go where no pickler takes them."""
    if not described:
        return described
    try:
        pickle.dumps(described)
        return described
    except Exception:  # noqa: S110 - by value, below
        pass
    try:
        return _ByValue(cloudpickle.dumps(described))  # type: ignore[return-value]
    except Exception:
        return []


class _ByValue:
    """Bytes of cloudpickle that plain pickle sends, and unpickles into what
    they hold."""

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return pickle.loads, (self.data,)

    def __iter__(self):
        # Not pickled at all (a cluster's workers in this process).
        return iter(pickle.loads(self.data))


def _described(caught: list) -> list[tuple]:
    """Warnings as they go back to the caller (see :func:`_warn_again`)."""
    return [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


def _stand_in(exc: BaseException) -> Exception | None:
    """An error to raise in place of ``exc`` when the caller could not
    unpickle it: a ``multiprocessing`` pool would wait for the task forever,
    and loky would report a broken pool instead of the error.

    Where only its class's ``__init__`` fails on its ``args`` (one that
    takes other arguments than it passes on: ``__init__(self, a, b)``
    calling ``super().__init__(f"{a}-{b}")``), ``exc`` is sent back rebuilt
    without it (see :class:`_Rebuilt`), the serial call's error; else an
    error naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return None
    except Exception as why:
        with contextlib.suppress(Exception):
            carrier = _Rebuilt(exc)
            if type(pickle.loads(pickle.dumps(carrier))) is type(exc):
                return carrier
        trace = "".join(traceback.format_exception(exc))
        return RuntimeError(
            f"{type(exc).__qualname__}: {exc}\n(raised in a worker process; "
            f"it cannot be sent back as it is, as unpickling it fails with "
            f"{type(why).__name__}: {why}. Its traceback in the worker:\n"
            f"{trace})"
        )


class _Rebuilt(Exception):
    """Pickles into its exception ``exc`` as it is, ``args`` and attributes,
    without calling its class's ``__init__`` (as ``copy.copy`` would not
    either), which pickle's default for exceptions calls with ``args``."""

    def __init__(self, exc: BaseException):
        super().__init__(exc)

    def __reduce__(self):
        return _rebuild, self.parts()

    def parts(self) -> tuple:
        (exc,) = self.args
        # With what was set on the carrier (the task's warnings).
        return type(exc), exc.args, {**vars(exc), **vars(self)}

    def rebuilt(self) -> BaseException:
        """The exception itself, where it was never pickled (a cluster's
        workers in this process)."""
        return _rebuild(*self.parts())


def _rebuild(cls: type, args: tuple, state: dict) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


# Per source file, the registry that lets the "default" action show a warning
# raised again once per location, as the serial call's module registry does.
_warning_registries: dict[str, dict] = {}


def _warn_again(caught) -> None:
    """Raise the workers' warnings in the caller, each distinct one once."""
    for message, category, filename, lineno in dict.fromkeys(
        warning for task in caught for warning in task
    ):
        warnings.warn_explicit(
            message,
            category,
            filename,
            lineno,
            registry=_warning_registries.setdefault(filename, {}),
            **_module_of(filename),
        )


def _module_of(filename: str) -> dict:
    """The name of the loaded module of that file (filters match on it), as
    ``warn_explicit``'s keyword; none where no module loaded here has that
    file (one the worker alone imported, a function pickled by value):
    ``module=None`` would drop the warning, as at interpreter exit."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return {"module": name}
    return {}


# Seconds between two looks at a multiprocessing pool's workers.
_WATCH_S = 0.05


class _WatchedMultiprocessingBackend(MultiprocessingBackend):
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
