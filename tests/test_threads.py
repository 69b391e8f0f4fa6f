"""The package's own threads for thread plans."""

import logging
import threading
import time
import warnings

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
def test_a_failed_task_raises_as_is_cancels_the_rest_and_waits_for_the_started():
    started, finished = [], []

    def task(i):
        started.append(i)
        if i == 0:
            raise KeyError("chunk 0")
        time.sleep(0.05)
        finished.append(i)
        return i

    with pytest.raises(KeyError, match="chunk 0"):
        _threads.run(task, [(i,) for i in range(20)], 2)
    # The tasks that had started ended before the call did.
    assert sorted(finished) == sorted(started)[1:]
    time.sleep(0.2)
    assert len(started) < 20 and len(finished) == len(started) - 1
    # The pool still works.
    assert _threads.run(lambda i: i * 2, [(1,), (2,)], 2) == [2, 4]


def test_tasks_see_the_callers_scikit_learn_config():
    with config_context(assume_finite=True):
        seen = _threads.run(lambda: get_config()["assume_finite"], [(), ()], 2)
    assert seen == [True, True]


def test_tasks_run_under_the_callers_numpy_error_state():
    default = np.geterr()
    with np.errstate(divide="raise", under="warn"):
        caller = np.geterr()
        seen = _threads.run(np.geterr, [(), ()], 2)
    assert seen == [caller, caller] != [default, default]
    # The threads' own state is put back after each task.
    assert _threads.run(np.geterr, [(), ()], 2) == [default, default]
    calls = []
    with np.errstate(divide="call", call=lambda kind, flag: calls.append(kind)):
        _threads.run(lambda: np.log(np.zeros(1)), [(), ()], 2)
    assert calls == ["divide by zero"] * 2


def test_a_numpy_error_callback_that_cannot_be_pickled_warns_in_processes():
    import pickle

    def record(kind, flag):
        pass

    state = pickle.loads(pickle.dumps(_threads.ErrState({"divide": "call"}, record)))
    assert state.modes == {"divide": "call"} and state.call is not record
    stream = _threads.ErrState({"divide": "log", "over": "raise"}, threading.Lock())
    state = pickle.loads(pickle.dumps(stream))
    assert state.modes == {"divide": "warn", "over": "raise"} and state.call is None


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
    # (8 chunks of 50 rows, the last row on its own: chunks all of one
    # size are never cut.)
    assert how[-1].startswith("9 tasks on 2 thread workers")
    assert how[:-1] == ["in-process: one worker"] * 9


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


def _threads_of(user_api: str | None = None) -> int:
    from threadpoolctl import threadpool_info

    return max(
        (
            i["num_threads"]
            for i in threadpool_info()
            if user_api in (None, i["user_api"])
        ),
        default=0,
    )


def test_blas_limits_keep_one_controller_until_new_modules(monkeypatch):
    import sys
    import types

    before = _threads_of("blas")
    with _threads.limit_blas(1):
        assert _threads_of("blas") in (0, 1)
    assert _threads_of("blas") == before
    first = _threads._controller
    with _threads.limit_blas(1):
        pass
    assert _threads._controller is first
    # A new import may bring a new native thread pool: the libraries are
    # listed again.
    monkeypatch.setitem(sys.modules, "_parpredict_new", types.ModuleType("_new"))
    with _threads.limit_blas(1):
        pass
    assert _threads._controller is not first


def test_overlapping_blas_limits_restore_the_setting_once_all_left():
    before = _threads_of("blas")
    first, second = _threads.limit_blas(1), _threads.limit_blas(1)
    # Two calls from two threads, the first leaving while the second runs.
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert _threads_of("blas") in (0, 1)
    second.__exit__(None, None, None)
    assert _threads_of("blas") == before


class _InnerThreads(DecisionTreeClassifier):
    """Predicts, for each row, how many threads BLAS (tens) and OpenMP
    (units) may use in this call."""

    def predict(self, X):
        return np.full(len(X), 10 * _threads_of("blas") + _threads_of("openmp"))


def test_thread_plans_keep_workers_x_inner_threads_within_the_cores():
    from sklearn_parpredict import _costs

    blas, openmp = _threads_of("blas"), _threads_of("openmp")
    share = max(1, _costs.CORES // 2)
    if blas <= share or openmp <= share:
        pytest.skip(
            f"BLAS ({blas}) and OpenMP ({openmp}) use no more than a worker's share"
        )
    model = _InnerThreads().fit(X, Y)
    # Cost unknown (an integer chunk size): both limited to a worker's share.
    out = parallel_predict(model, X, n_jobs=2, backend="threading", chunk_size=100)
    assert (out == 10 * share + share).all()
    # Known to keep one core busy: BLAS is left alone, for telling OpenBLAS
    # its number of threads may start them spinning; OpenMP's limit is the
    # package threads' own, set once.
    _costs.remember_cost(
        model,
        "predict",
        _costs.Cost(0.0, 1e-2, thread_speedup=2.0, thread_measurements=3),
    )
    out = parallel_predict(model, X, n_jobs=2, backend="threading")
    assert (out == 10 * blas + share).all()
    # The caller's own settings are as they were.
    assert (_threads_of("blas"), _threads_of("openmp")) == (blas, openmp)


_ComplexWarning = getattr(np, "exceptions", np).ComplexWarning


class _FilteringInside(DecisionTreeClassifier):
    """Predicts inside its own ``catch_warnings`` with an error filter, as
    scikit-learn's ``check_array`` does; the first chunk's block is left
    before the second's, which entered after it."""

    def predict(self, X):
        with warnings.catch_warnings():
            warnings.simplefilter("error", _ComplexWarning)
            time.sleep(0.05 if X[0, 0] < 0 else 0.25)
            return super().predict(X)


@pytest.mark.parametrize("verbose", [0, 1])
def test_overlapping_warning_blocks_on_threads_leave_the_filters_as_they_were(
    verbose,
):
    # verbose=1 runs on joblib's threads, for its progress report.
    X = np.r_[-np.ones((4, 2)), np.ones((4, 2))]
    model = _FilteringInside().fit(X, [0] * 4 + [1] * 4)
    before = list(warnings.filters)
    wrapper = ParallelPredictor(
        model, n_jobs=2, backend="threading", chunk_size=4, verbose=verbose
    )
    np.testing.assert_array_equal(wrapper.predict(X), model.predict(X))
    assert warnings.filters == before
    with pytest.warns(_ComplexWarning):  # a warning, not an error
        np.array([1 + 1j]).astype(float)


class _Slow(DecisionTreeClassifier):
    def predict(self, X):
        time.sleep(0.3)
        return super().predict(X)


def test_filters_that_another_thread_adds_during_a_thread_plan_stay():
    X = np.r_[-np.ones((4, 2)), np.ones((4, 2))]
    model = _Slow().fit(X, [0] * 4 + [1] * 4)
    wrapper = ParallelPredictor(model, n_jobs=2, backend="threading", chunk_size=4)
    with warnings.catch_warnings():
        other = threading.Timer(
            0.1, warnings.simplefilter, ("error", DeprecationWarning)
        )
        other.start()
        wrapper.predict(X)
        other.join()
        assert warnings.filters[0][2] is DeprecationWarning
