"""Module locks are free in a forked child, whoever held them at the fork."""

import importlib
import os
import threading

import pytest
from _helpers import in_child

# Every module-level lock that code in a worker may take: the multiprocessing
# backend forks workers from whichever thread calls, while other threads may
# hold these.
LOCKS = [
    ("_sharing", "_lock"),
    ("_files", "_lock"),
    ("_pickled", "_lock"),
    ("_rows", "_lock"),
    ("_pools", "_warm_lock"),
    ("_threads", "_lock"),
    ("_threads", "_blas_lock"),
    ("_distributed", "_worker_lock"),
]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
@pytest.mark.parametrize("module, name", LOCKS)
def test_a_lock_held_by_another_thread_is_free_in_a_forked_child(module, name):
    module = importlib.import_module(f"sklearn_parpredict.{module}")
    held, release = threading.Event(), threading.Event()

    def hold():
        with getattr(module, name):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        # The child: the holder thread is not there.
        status = in_child(lambda: getattr(module, name).acquire(timeout=5))
    finally:
        release.set()
        holder.join(30)
    assert status == 0
