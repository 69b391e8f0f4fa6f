"""The threads that run thread plans: kept between calls, waited on, not polled.

joblib's threading backend starts a new pool of threads for every call, and
its result loop looks for finished tasks every 10 ms. On a call of 100 ms
split into two tasks that is 5-10% of the call, paid again on every call. The
engine's thread plans run instead on a pool of threads kept for the life of
the process, and the caller wakes as soon as the last task is done.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from sklearn import config_context, get_config

# Longest wait before an interrupt of the caller is seen.
_WAKE_S = 0.1

_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()
_local = threading.local()


def _forget_pools() -> None:
    # A forked child inherits the pools but none of their threads: tasks
    # given to them would wait forever. The child starts its own.
    global _lock
    _pools.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


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


def _start_threads(pool: ThreadPoolExecutor, n_workers: int) -> None:
    # The executor starts a thread per task only while none is idle: all of
    # them are started now, each held until all run, so that the first tasks
    # (the engine's measurement of the speedup of threads) do not pay for
    # starting threads while timed.
    everyone = threading.Barrier(n_workers)
    started = [pool.submit(everyone.wait, _WAKE_S * 10) for _ in range(n_workers)]
    wait(started)


def in_config(config: dict, function: Callable, *args):
    """``function(*args)`` on a thread, under the caller's scikit-learn config.

    Threads do not inherit scikit-learn's thread-local configuration.
    """
    with config_context(**config):
        return function(*args)


def _run(config: dict, function: Callable, task: tuple):
    _local.working = True
    try:
        return in_config(config, function, *task)
    finally:
        _local.working = False


def run(function: Callable, tasks: Iterable[tuple], n_workers: int) -> list:
    """``[function(*task) for task in tasks]`` on ``n_workers`` threads.

    The outputs are in task order. A task's exception is raised in the caller
    as it is (the first in task order when several failed), and the tasks not
    started yet are cancelled; so are they when the caller is interrupted.
    """
    tasks = list(tasks)
    if in_worker():
        return [function(*task) for task in tasks]
    pool = _pool(n_workers)
    config = get_config()
    futures = [pool.submit(_run, config, function, task) for task in tasks]
    try:
        # Woken at once when the tasks are done; the timeout only bounds how
        # long an interrupt of the caller (Ctrl-C) waits to be seen.
        pending = futures
        while pending:
            done, pending = wait(pending, _WAKE_S, FIRST_EXCEPTION)
            if any(future.exception() is not None for future in done):
                break
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            raise failed[0].exception()
        return [future.result() for future in futures]
    finally:
        for future in futures:
            future.cancel()
