"""The threads that run thread plans: kept between calls, waited on, not polled.

joblib's threading backend starts a new pool of threads for every call, and
its result loop looks for finished tasks every 10 ms. On a call of 100 ms
split into two tasks that is 5-10% of the call, paid again on every call. The
engine's thread plans run instead on a pool of threads kept for the life of
the process, and the caller wakes as soon as the last task is done.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import (
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Future,
    ThreadPoolExecutor,
    wait,
)
from typing import Any

import numpy as np
from sklearn import config_context, get_config
from threadpoolctl import ThreadpoolController

from sklearn_parpredict._costs import THREADED, Cost
from sklearn_parpredict._locks import fork_safe, in_forked_child
from sklearn_parpredict._planning import cores_per_worker
from sklearn_parpredict._sharing import cloudpickle

# Longest wait before an interrupt of the caller is seen.
_WAKE_S = 0.1

_pools: dict[int, ThreadPoolExecutor] = {}
_lock = fork_safe(globals(), "_lock", threading.Lock)
_local = threading.local()


@in_forked_child
def _forget_pools() -> None:
    # A forked child inherits the pools but none of their threads: tasks
    # given to them would wait forever. The child starts its own.
    _pools.clear()


_controller: ThreadpoolController | None = None
_modules_seen = 0
# Calls inside limit_blas, and the limit they share.
_blas_lock = fork_safe(globals(), "_blas_lock", threading.Lock)
_blas_users = 0
_blas_limiter: Any = None


def _inner_controller() -> ThreadpoolController:
    # threadpoolctl lists every loaded library when a controller is made
    # (2.5 ms with numpy, scipy and scikit-learn loaded, a tenth of a 25 ms
    # call): one is kept, and made again only once new modules were
    # imported, which is how new native thread pools arrive.
    global _controller, _modules_seen
    if _controller is None or len(sys.modules) != _modules_seen:
        _modules_seen = len(sys.modules)
        _controller = ThreadpoolController()
    return _controller


@contextlib.contextmanager
def limit_blas(limits: int):
    """A context in which BLAS uses at most ``limits`` threads.

    BLAS's number of threads is one setting for the whole process: calls
    from several threads at once share one limit, set by the first to come
    and restored by the last to leave. Each setting and restoring its own
    would leave BLAS limited when the calls overlap.
    """
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _inner_controller().limit(limits=limits, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


@contextlib.contextmanager
def one_thread():
    """A context in which this thread's calls use one BLAS and one OpenMP
    thread (OpenMP's setting is per calling thread; BLAS's, shared)."""
    with limit_blas(1):
        limiter = _inner_controller().limit(limits=1, user_api="openmp")
        try:
            yield
        finally:
            limiter.restore_original_limits()


def limit_inner_threads(costs: list[Cost] | None, n_workers: int):
    """Threads share the process's BLAS pool: keep workers x its threads
    within the cores, for estimators that use it (OpenMP's threads are set
    per thread, once, by each of the package's threads).

    Estimators seen keeping a single core busy are left alone: telling
    OpenBLAS to change its threads may start its server threads (after a
    fork, always), and they spin on a core for a while: after a pool of 2
    processes was forked, two threads of ``SVC.predict`` under a limit ran
    0.4x-1.0x as fast as one, and 1.7x-2.1x without it (2 cores).
    """
    if costs is not None and all(c.threads < THREADED for c in costs):
        return contextlib.nullcontext()
    return limit_blas(cores_per_worker(n_workers))


def in_worker() -> bool:
    """Whether this thread is running one of the pool's tasks.

    A call made from a task (a wrapper inside a wrapper) stays in its thread:
    the pool's threads are already busy with the outer call.
    """
    return getattr(_local, "working", False)


def _pool(n_workers: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(n_workers)
        if pool is None:
            pool = _pools[n_workers] = ThreadPoolExecutor(
                n_workers, thread_name_prefix="sklearn-parpredict"
            )
            _start_threads(pool, n_workers)
        return pool


def start(n_workers: int) -> None:
    """Start the pool of ``n_workers`` threads now, should it not run yet:
    before a timed run, which should not pay for it."""
    _pool(n_workers)


def _start_threads(pool: ThreadPoolExecutor, n_workers: int) -> None:
    # The executor starts a thread per task only while none is idle: all of
    # them are started now, each held until all run, so that the first tasks
    # (the engine's measurement of the speedup of threads) do not pay for
    # starting threads while timed.
    everyone = threading.Barrier(n_workers)
    share = cores_per_worker(n_workers)
    # The libraries are listed once, here, not by every thread at once.
    controller = _inner_controller()
    started = [
        pool.submit(_start, everyone, controller, share) for _ in range(n_workers)
    ]
    wait(started)
    for future in started:
        future.result()


def _start(
    everyone: threading.Barrier, controller: ThreadpoolController, share: int
) -> None:
    # OpenMP's number of threads is set per calling thread: set once for
    # the life of each of the pool's threads, so that workers x their
    # OpenMP threads stay within the cores.
    controller.limit(limits=share, user_api="openmp")
    everyone.wait(_WAKE_S * 10)


# The modes of ``np.seterr`` that hand an error to ``np.seterrcall``'s callback.
_CALLBACK_MODES = frozenset({"call", "log"})


class ErrState:
    """The caller's NumPy floating-point error state, for tasks run elsewhere.

    ``np.seterr``'s modes, and ``np.seterrcall``'s callback where a mode
    hands errors to it. NumPy keeps the state per thread (per context from
    NumPy 2): a new thread or a worker process starts with NumPy's defaults,
    and a task would warn where the serial call raises ``FloatingPointError``
    (``np.errstate(divide="raise")``), then return ``-inf``.
    """

    __slots__ = ("modes", "call", "_uses_call", "_pickled")

    def __init__(self, modes: Mapping[str, Any], call: Any = None):
        self.modes = modes
        self.call = call
        self._uses_call = not _CALLBACK_MODES.isdisjoint(modes.values())
        self._pickled: tuple | None = None

    @classmethod
    def current(cls) -> ErrState:
        """This thread's state."""
        modes = np.geterr()
        if _CALLBACK_MODES.isdisjoint(modes.values()):
            return cls(modes)
        return cls(modes, np.geterrcall())

    def run(self, function: Callable, *args):
        """``function(*args)`` under this state; the thread's own is put back
        after it."""
        # Reading the state costs less than setting it (1 us against 1.5 us
        # with NumPy 2.4, 0.5 us against 4 us with 1.23), and a worker's is
        # mostly the caller's already: NumPy's defaults.
        if np.geterr() == self.modes and (
            not self._uses_call or np.geterrcall() is self.call
        ):
            return function(*args)
        if self._uses_call:
            state = np.errstate(call=self.call, **self.modes)
        else:
            state = np.errstate(**self.modes)
        with state:
            return function(*args)

    def __reduce__(self):
        # To a worker process. The callback goes by value (cloudpickle), as
        # bytes every backend's pickler takes, and runs in the worker, as the
        # estimator does: one that raises fails the call as the serial call
        # fails; one that records or logs does so in the worker. One that
        # cannot be pickled (a stream for "log", an object holding a lock),
        # or not unpickled in the worker, cannot go: its modes are "warn"
        # there instead, whose RuntimeWarning the process backends raise
        # again in the caller (see ``_outcomes.recording_warnings``), rather
        # than the call failing to send its tasks.
        if not self._uses_call:
            return ErrState, (self.modes,)
        if self._pickled is None:
            try:
                self._pickled = (_unpickled, (self.modes, cloudpickle.dumps(self.call)))
            except Exception:
                self._pickled = (ErrState, (_warn_instead_of_calling(self.modes),))
        return self._pickled


def _warn_instead_of_calling(modes: Mapping[str, Any]) -> dict:
    return {k: "warn" if mode in _CALLBACK_MODES else mode for k, mode in modes.items()}


def _unpickled(modes: Mapping[str, Any], call: bytes) -> ErrState:
    """The caller's state in a worker process (see ``ErrState.__reduce__``)."""
    try:
        return ErrState(modes, pickle.loads(call))
    except Exception:
        return ErrState(_warn_instead_of_calling(modes))


def in_errstate(errstate: ErrState, function: Callable, *args):
    """``function(*args)`` under the caller's NumPy error state."""
    return errstate.run(function, *args)


def caller_context() -> tuple[dict, ErrState]:
    """What a task run on another thread or in another process takes of the
    caller's: scikit-learn's configuration and NumPy's floating-point error
    state, both kept per thread, which threads and worker processes do not
    inherit."""
    return get_config(), ErrState.current()


def in_config(context: tuple[dict, ErrState], function: Callable, *args):
    """``function(*args)`` on a thread, under the caller's scikit-learn config
    and NumPy error state (``context``, from :func:`caller_context`).

    Threads do not inherit scikit-learn's thread-local configuration, nor
    NumPy's error state.
    """
    config, errstate = context
    with config_context(**config):
        return errstate.run(function, *args)


def _run(context: tuple[dict, ErrState], function: Callable, task: tuple):
    _local.working = True
    try:
        return in_config(context, function, *task)
    finally:
        _local.working = False


def run(
    function: Callable,
    tasks: Iterable[tuple],
    n_workers: int,
    rank: list[int] | None = None,
) -> list:
    """``[function(*task) for task in tasks]`` on ``n_workers`` threads.

    Each task runs under the caller's scikit-learn config and NumPy error
    state. The outputs are in task order. A task's exception is raised in the caller
    as it is (the first in the serial order, ``rank`` as :func:`gather` takes
    it, when several failed), and the tasks not
    started yet are cancelled; so are they when the caller is interrupted.
    The process's warning filters are as they were (see
    :func:`warning_filters_kept`).
    """
    tasks = list(tasks)
    if in_worker():
        return [function(*task) for task in tasks]
    pool = _pool(n_workers)
    context = caller_context()
    with warning_filters_kept():
        return gather(
            lambda task: pool.submit(_run, context, function, task), tasks, rank=rank
        )


@contextlib.contextmanager
def warning_filters_kept():
    """Put the process's warning filters back as they were, once the threads
    that ran in the block are done, where those threads left another list
    of filters in place.

    Before Python 3.14, ``warnings.catch_warnings`` swaps the process-wide
    filter list on entry and puts back the one it saw on exit: entered and
    left by two threads at once (scikit-learn's ``check_array`` turns
    ``ComplexWarning`` into an error inside one), the last to leave puts
    back the other's list, and the error filter stayed in the caller's
    process for good. The list is put back with what it held, since a
    thread inside its block when the other left adds its filter to the
    caller's list. Filters another thread adds meanwhile, in place, as
    ``warnings.simplefilter`` does outside a block, are left alone.
    """
    filters = warnings.filters
    kept = list(filters)
    try:
        yield
    finally:
        if warnings.filters is not filters:
            filters[:] = kept  # type: ignore[index]  # a list, typed as a Sequence
            warnings.filters = filters
            # Tells the registries of warnings shown once that the filters
            # changed (a private name; absent from later Pythons' module).
            mutated = getattr(warnings, "_filters_mutated", None)
            if mutated is not None:
                mutated()


def gather(
    submit: Callable[[tuple], Future],
    tasks: list[tuple],
    *,
    window: int | None = None,
    abort: Callable[[list[Future]], None] | None = None,
    rank: list[int] | None = None,
    on_failure: Callable[[int, list], None] | None = None,
) -> list:
    """Submit ``tasks`` and return their results in order, woken as soon as
    they are all done.

    Parameters
    ----------
    submit : callable
        Hands one task to an executor and returns its future.
    tasks : list of tuple
        The tasks, in order.
    window : int, default=None
        Most tasks submitted and not finished at once; None submits them all
        at once.
    abort : callable, default=None
        Called with the submitted futures when the call fails while some of
        them are not finished; it must stop them all. Without it the futures
        not started are cancelled, and those started are waited for unless
        the caller was interrupted.
    rank : list of int, default=None
        Each task's place in the serial call's order, where the tasks are
        submitted in another (longest first); None: their order.
    on_failure : callable, default=None
        Called before a task's exception is raised, with that task's index
        and the ``(index, result)`` of the tasks before it in the serial
        order (see :func:`serially_before`), all done.

    Returns
    -------
    results : list
        The tasks' results. A task's exception is raised as it is (the first
        in the serial order, ``rank``, when several failed), as is an
        interrupt of the caller.
    """
    futures: list[Future] = []
    queued = iter(tasks)

    def first_failed() -> int | None:
        return first_in_order(
            [i for i, future in enumerate(futures) if _raised(future)],
            rank,
            lambda i: i < len(futures) and futures[i].done(),
        )

    try:
        unfinished = set()
        failing = False
        more = window or len(tasks)
        while True:
            for task in itertools.islice(queued, more):
                futures.append(submit(task))
                unfinished.add(futures[-1])
            if not unfinished:
                break
            # The timeout only bounds how long an interrupt of the caller
            # (Ctrl-C) waits to be seen.
            # Once a task failed, woken by each task done: the tasks before
            # it run on, and the others are not waited for.
            idle = (
                FIRST_COMPLETED
                if len(futures) < len(tasks) or failing
                else FIRST_EXCEPTION
            )
            done, unfinished = wait(unfinished, _WAKE_S, idle)
            failing = failing or any(map(_raised, done))
            if failing and first_failed() is not None:
                break
            more = len(done)
        # (Every task is done here, or the failed one is settled.)
        first = first_failed()
        if first is not None:
            if on_failure is not None:
                before = serially_before(first, rank)
                on_failure(first, [(i, futures[i].result()) for i in before])
            futures[first].result()  # raises its exception
        return [future.result() for future in futures]
    except BaseException as exc:
        if abort is not None and not all(future.done() for future in futures):
            abort(futures)
        else:
            for future in futures:
                future.cancel()
            if isinstance(exc, Exception):
                # The tasks already running end before the call does: none
                # may still use the model, or change the process's warning
                # filters, once the caller has the error. (An interrupt
                # returns at once.)
                wait(futures)
        raise


def first_in_order(
    failed: list[int], rank: list[int] | None, done: Callable[[int], bool]
) -> int | None:
    """Of the tasks that ``failed`` (their indices), the one the serial call
    meets first, once every task before it is ``done``; None until then, or
    where none failed.

    ``rank`` is each task's place in the serial order, where the tasks run
    in another (longest first); None: their order. The serial call meets the
    first rows' error, whichever task failed first: the tasks before the
    failed ones run on.
    """
    if not failed:
        return None
    first = min(failed, key=None if rank is None else rank.__getitem__)
    return first if all(map(done, serially_before(first, rank))) else None


def serially_before(task: int, rank: list[int] | None) -> list[int]:
    """The tasks that the serial call runs before ``task`` (their indices),
    in its order; ``rank`` as :func:`first_in_order` takes it."""
    if rank is None:
        return list(range(task))
    before = [i for i, place in enumerate(rank) if place < rank[task]]
    return sorted(before, key=rank.__getitem__)


def _raised(future: Future) -> bool:
    return future.done() and future.exception() is not None
