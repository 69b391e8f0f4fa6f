"""The package's own threads for thread plans."""

import logging
import threading
import time

import joblib
import numpy as np
import pytest
from _helpers import assert_same_output
from sklearn import config_context, get_config
from sklearn.tree import DecisionTreeClassifier

from sklearn_parpredict import ParallelPredictor, _threads, parallel_predict

X = np.random.default_rng(0).normal(size=(400, 5))
Y = (X[:, 0] > 0).astype(int)


def test_outputs_in_task_order_on_threads_kept_between_calls():
    names = []

    def task(i):
        time.sleep(0.001 * (5 - i))  # later tasks finish first
        names.append(threading.current_thread().name)
        return i

    assert _threads.run(task, [(i,) for i in range(5)], 2) == list(range(5))
    assert _threads.run(task, [(i,) for i in range(5)], 2) == list(range(5))
    assert all(name.startswith("sklearn-parpredict") for name in names)
    # Two calls, one pool: no more than its two threads ever ran the tasks.
    assert len(set(names)) <= 2


@pytest.mark.timeout(30)
def test_a_failed_task_raises_as_is_and_cancels_the_rest():
    started = []

    def task(i):
        started.append(i)
        if i == 0:
            raise KeyError("chunk 0")
        time.sleep(0.05)
        return i

    with pytest.raises(KeyError, match="chunk 0"):
        _threads.run(task, [(i,) for i in range(20)], 2)
    time.sleep(0.2)
    assert len(started) < 20
    # The pool still works.
    assert _threads.run(lambda i: i * 2, [(1,), (2,)], 2) == [2, 4]


def test_tasks_see_the_callers_scikit_learn_config():
    with config_context(assume_finite=True):
        seen = _threads.run(lambda: get_config()["assume_finite"], [(), ()], 2)
    assert seen == [True, True]


@pytest.mark.timeout(60)
def test_thread_plans_run_on_the_package_threads_not_joblib(monkeypatch):
    model = DecisionTreeClassifier(random_state=0).fit(X, Y)
    used = []
    real = _threads.run
    monkeypatch.setattr(
        _threads, "run", lambda *a, **k: used.append(1) or real(*a, **k)
    )
    out = parallel_predict(model, X, n_jobs=2, backend="threading", chunk_size=50)
    assert_same_output(out, model.predict(X))
    with joblib.parallel_config(backend="threading"):
        out = parallel_predict(model, X, n_jobs=2, chunk_size=50)
    assert_same_output(out, model.predict(X))
    assert len(used) == 2


@pytest.mark.timeout(60)
def test_a_wrapper_inside_a_wrapper_on_threads_stays_in_its_thread(caplog):
    inner = ParallelPredictor(
        DecisionTreeClassifier(random_state=0).fit(X, Y), n_jobs=2, chunk_size=10
    )
    outer = ParallelPredictor(inner, n_jobs=2, backend="threading", chunk_size=50)
    with caplog.at_level(logging.DEBUG, logger="sklearn_parpredict"):
        out = outer.predict(X)
    assert_same_output(out, inner.predict(X))
    # Only the outer call fanned out; the inner calls found the pool's
    # threads busy with it and ran where they were.
    how = [record.getMessage().split(": ", 1)[1] for record in caplog.records]
    assert how[-1].startswith("8 tasks on 2 thread workers")
    assert how[:-1] == ["in-process: one worker"] * 8


def _in_forked_child(queue):
    inherited = len(_threads._pools)
    queue.put((inherited, _threads.run(lambda i: i + 1, [(1,), (2,)], 2)))


@pytest.mark.timeout(60)
def test_a_forked_child_gets_threads_of_its_own():
    import multiprocessing

    _threads.run(lambda i: i, [(1,), (2,)], 2)  # the parent's pool exists
    time.sleep(0.2)  # and its threads are idle, waiting for work
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_in_forked_child, args=(queue,))
    child.start()
    # The parent's pools, whose threads the child does not have, are not the
    # child's: it starts its own (an idle inherited pool would never run a
    # task).
    assert queue.get(timeout=10) == (0, [2, 3])
    child.join(timeout=30)
    assert child.exitcode == 0


def test_a_new_pool_starts_all_its_threads_at_once():
    # Measured tasks must not pay for starting threads.
    pool = _threads._pool(3)
    assert len(pool._threads) == 3
    assert _threads._pool(3) is pool
