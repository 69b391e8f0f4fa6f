"""Tasks on joblib's loky workers, waited on rather than polled.

joblib's ``Parallel`` looks for finished tasks every 10 ms. Measured on 2
cores on a warm pool (medians), two 50 ms tasks through ``Parallel`` added
4.1 ms to the call, against 1.6 ms when they went to the same executor and
the caller waited on their futures; ten 10 ms tasks added 11.3 ms against
2.2 ms.

The executor is the one ``Parallel`` configures for these settings, taken
from inside its context: the same reused workers, the same environment
(``inner_max_num_threads``), the same memory-mapping of large arrays in
tasks, and the same nested backend inside the workers. What ``Parallel``
would do when a call fails is done here too: the tasks not started are
cancelled, and workers still busy with the failed call's tasks are stopped,
unless another call of this package runs on them (see :func:`_abort`).
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from joblib import parallel_config
from joblib._parallel_backends import LokyBackend

from sklearn_parpredict import _threads
from sklearn_parpredict._locks import fork_safe, in_forked_child

# Longest wait for loky to take the tasks of a failed call before it aborts.
_SETTLE_S = 1.0
# Calls running on the executor now, from any thread.
_calls = 0
_calls_lock = fork_safe(globals(), "_calls_lock", threading.Lock)


# joblib's reused executors that forked children inherited (see _no_calls).
_inherited: list = []
# The loky workers alive when a call of this package last ended on them.
# Others, started by another library's joblib calls, import this package
# (and scikit-learn, where their tasks did not) on the first task of ours:
# 1.0 s for workers that ran only plain functions, 0.04 s for those of a
# grid search (2 cores).
_ours: frozenset[int] = frozenset()


@in_forked_child
def _no_calls() -> None:
    # A forked child runs none of its parent's calls, nor on its parent's
    # executor: its manager thread did not fork, and its workers are the
    # parent's. Left as joblib's reused one, a call on it waited for ever (a
    # pre-fork server's worker whose calls started a warm-up never exited):
    # the next call starts the child's own. Kept referenced: collected, it
    # would wake the parent's workers through the pipes they share.
    global _calls, _ours
    _calls = 0
    _ours = frozenset()
    # (Not imported here where the parent never did: every fork would pay.)
    reusable_executor: Any = sys.modules.get("joblib.externals.loky.reusable_executor")
    if getattr(reusable_executor, "_executor", None) is not None:
        executor = reusable_executor._executor
        _inherited.append(executor)
        reusable_executor._executor = reusable_executor._executor_kwargs = None
        # Nor are its temporary folders the child's: the exit handlers that
        # remove them, inherited, removed the parent's folders at the
        # child's exit, and the parent's own removal then failed in loky's
        # resource tracker (a KeyError's traceback on the parent's stderr).
        manager = getattr(executor, "_temp_folder_manager", None)
        for finalizer in list(getattr(manager, "_finalizers", {}).values()):
            atexit.unregister(finalizer)
        # Nor are its workers this process's children, which multiprocessing
        # joins at exit ("can only join a child process").
        children = multiprocessing.process._children  # type: ignore[attr-defined]
        children.difference_update(
            [child for child in children if child._parent_pid != os.getpid()]
        )


def usable(runner) -> bool:
    """Whether the entered ``Parallel`` ``runner`` runs on a loky executor.

    It does not when joblib fell back to running in the caller (one worker,
    a daemon process, or a call below threads).
    """
    backend = runner._backend
    return (
        type(backend) is LokyBackend and getattr(backend, "_workers", None) is not None
    )


def warm_workers(n_workers: int) -> int | None:
    """How many workers of joblib's reused loky executor a call on
    ``n_workers`` would find running and ready (None: unknown).

    Any ``Parallel`` call on loky in this process, ours or another library's
    (a grid search, a forest fitted with ``n_jobs``), starts and reuses that
    executor. Its workers are ready once a call of ours has run on them,
    while the executor keeps their number: joblib resizes it, or starts
    another, for a call on another number of workers.
    """
    try:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        if executor is None or executor._flags.broken or executor._flags.shutdown:
            return 0
        if executor._max_workers != n_workers:
            return 0
        return sum(
            process.is_alive() and pid in _ours
            for pid, process in list(executor._processes.items())
        )
    except Exception:  # loky's internals moved: the caller keeps its own count
        return None


def _ran_on(executor) -> None:
    global _ours
    try:
        _ours = frozenset(executor._processes)
    except Exception:  # noqa: S110 - loky's internals moved: see warm_workers
        pass


def run(
    runner,
    function: Callable,
    tasks: list[tuple],
    rank: list[int] | None = None,
    on_failure: Callable[[int, list], None] | None = None,
) -> list:
    """``[function(*task) for task in tasks]`` on the workers of ``runner``.

    ``runner`` is a ``joblib.Parallel`` entered as a context manager, for
    which :func:`usable` is true. The outputs are in task order; the first
    task's exception in the serial order (``rank`` and ``on_failure``, as
    :func:`._threads.gather` takes them), or the error of a worker that
    died, is raised as is.
    """
    backend = runner._backend
    executor = backend._workers
    nested = backend.get_nested_backend()
    context = _threads.caller_context()

    def set_context():
        # Large arrays in a task are memory-mapped into this call's folder,
        # which the context's end removes. Chosen as the task is pickled, as
        # joblib does: concurrent calls share the executor.
        executor._temp_folder_manager.set_current_context(runner._id)

    # No more tasks in flight than loky's call queue holds (one per worker
    # and one more): a task waits there, ready for the next free worker, and
    # none waits in the queue in front of it, whose items loky's abort loses
    # track of (a KeyError in its manager thread).
    global _calls
    counted = False
    try:
        with _calls_lock:
            _calls += 1
            counted = True
        outputs = _threads.gather(
            lambda task: executor.submit(
                _Task(set_context, context, nested, function, *task)
            ),
            tasks,
            window=executor._max_workers + 1,
            abort=lambda futures: _abort(backend, futures),
            rank=rank,
            on_failure=on_failure,
        )
        _ran_on(executor)
        return outputs
    finally:
        if counted:
            with _calls_lock:
                _calls -= 1


def _abort(backend, futures) -> None:
    """Stop the workers running the tasks of a failed call, as joblib does,
    rather than leave them busy; the next call starts new ones.

    Not while another call runs on them, from another thread: stopped, its
    tasks failed with loky's ``ShutdownExecutorError`` (as joblib's do), a
    valid call failed by another's error. The failed call's tasks not
    started are cancelled then, and those started end on their own, their
    outputs unread.
    """
    if _calls > 1:
        for future in futures:
            future.cancel()
        return
    # The tasks just submitted are moved into the call queue at once (it has
    # room for them): wait for that, since loky cannot abort them before.
    deadline = time.monotonic() + _SETTLE_S
    while time.monotonic() < deadline and any(
        not (future.running() or future.done()) for future in futures
    ):
        time.sleep(0.001)
    if not all(future.done() for future in futures):
        backend.abort_everything(ensure_ready=False)


class _Task:
    """One task; it names its call's temporary folder when it is pickled.

    loky pickles every task it sends, and the worker unpickles it as the
    call of :func:`_in_worker` that it runs.
    """

    def __init__(self, set_context, context, nested, function, *args):
        self._set_context = set_context
        self._args = (context, nested, function, args)

    def __reduce__(self):
        self._set_context()
        return functools.partial, (_in_worker, *self._args)


def _in_worker(context: tuple, nested: tuple, function: Callable, task: tuple):
    # What joblib's batches and scikit-learn's Parallel set around a task:
    # the nested backend (so that a wrapper inside a worker does not fan out
    # again) and the caller's scikit-learn configuration; and the caller's
    # NumPy error state, which they leave out.
    backend, n_jobs = nested
    with parallel_config(backend=backend, n_jobs=n_jobs):
        return _threads.in_config(context, function, *task)
