"""The cost model: fitted costs, timers, costs remembered per model."""

import gc
import os
import time
import weakref

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from sklearn_parpredict import _costs

X = np.random.default_rng(0).normal(size=(400, 5))
Y = (X[:, 0] > 0).astype(int)


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs a CPU affinity mask with two CPUs or more",
)
def test_cores_are_those_the_process_may_use():
    # A process allowed one CPU (taskset, a container's cpuset) plans for
    # one core, as joblib's n_jobs=-1 and scikit-learn's OpenMP threads do,
    # not for the host's cores.
    import subprocess
    import sys

    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from sklearn_parpredict import _costs, _planning\n"
        "print(_costs.CORES, _planning.cores_per_worker(1))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]


def test_fit_cost_separates_fixed_and_per_row_cost():
    cost = _costs.fit_cost([(64, 0.010 + 64e-5, 0.01), (256, 0.010 + 256e-5, 0.02)])
    assert cost.per_call == pytest.approx(0.010)
    assert cost.per_row == pytest.approx(1e-5)
    assert cost.seconds(1000) == pytest.approx(0.020)
    # One sample: all of it is charged to the rows.
    single = _costs.fit_cost([(10, 0.5, 0.5)])
    assert single.per_call == 0 and single.per_row == pytest.approx(0.05)


@pytest.mark.skipif(
    not os.path.exists("/proc/thread-self/schedstat"), reason="Linux schedstat"
)
def test_timer_counts_the_time_a_thread_waited_for_a_core():
    import subprocess
    import sys

    # Busy processes, one per core, leave this thread part of a core.
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(_costs.CORES)]
    try:
        time.sleep(0.3)
        with _costs.Timer(waits=True) as timer:
            end = time.perf_counter() + 0.5
            while time.perf_counter() < end:
                pass
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert 0.05 * timer.wall < timer.waited <= timer.wall
    # Less the waits, or at least the thread's CPU time.
    assert timer.wall - timer.waited <= timer.own < 0.95 * timer.wall
    with _costs.Timer() as plain:
        pass
    assert plain.waited == 0.0 and plain.own == plain.wall


def test_a_timer_own_time_is_never_less_than_its_thread_cpu(monkeypatch):
    # A kernel that counts waits in whole ticks reports more than a short
    # block waited; the block still ran for its thread's CPU time.
    ticks = iter(range(100))
    monkeypatch.setattr(_costs, "run_queue_seconds", lambda: 0.004 * next(ticks))
    with _costs.Timer(waits=True) as timer:
        end = time.thread_time() + 0.01
        while time.thread_time() < end:
            pass
    assert timer.waited == pytest.approx(min(0.004, timer.wall))
    assert timer.own >= 0.01


def test_thread_speedup_extrapolates_by_amdahl():
    cost = _costs.Cost(0.0, 1e-3, thread_speedup=2.0)
    assert cost.speedup("thread", 16) == pytest.approx(16)
    cost.thread_speedup = 1.0
    assert cost.speedup("thread", 16) == pytest.approx(1)
    cost.thread_speedup = 1.6  # three quarters of the work outside the GIL
    assert cost.speedup("thread", 4) == pytest.approx(1 / (0.25 + 0.75 / 4))
    assert cost.speedup("process", 4) == 4


def test_openmp_threaded_estimators_are_known_threaded():
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cores = _costs.CORES
    sample = [(100, 0.01, 0.01)]
    for estimator in (
        HistGradientBoostingRegressor(),
        make_pipeline(StandardScaler(), KNeighborsClassifier()),
    ):
        assert _costs.fit_cost(sample, estimator).threads == cores
    assert _costs.fit_cost(sample, LogisticRegression()).threads == 1


def test_thread_speedup_spoilt_by_load_is_measured_again_and_the_best_kept():
    cost = _costs.Cost(0.0, 1e-3)
    assert cost.wants_thread_measurement()
    cost.add_thread_speedup(1.1)  # the other core was busy
    assert cost.thread_speedup == 1.1 and cost.wants_thread_measurement()
    cost.add_thread_speedup(1.95)
    cost.add_thread_speedup(1.3)  # load again: the best measurement stays
    assert cost.thread_speedup == 1.95 and not cost.wants_thread_measurement()
    held = _costs.Cost(0.0, 1e-3)
    for _ in range(_costs.THREAD_MEASUREMENTS):
        held.add_thread_speedup(0.9)
    # Really holds the GIL: measured often enough, and bounded.
    assert held.thread_speedup == 1.0 and not held.wants_thread_measurement()


def test_a_low_thread_speedup_measured_uncrowded_is_final():
    cost = _costs.Cost(0.0, 1e-3)
    cost.add_thread_speedup(0.9, final=True)
    assert cost.thread_speedup == 1.0 and not cost.wants_thread_measurement()


def test_cost_keeps_one_sample_per_size_averaging_repeats():
    cost = _costs.fit_cost([(64, 0.011, 0.011), (256, 0.012, 0.012)])
    for rows, wall in ((2_000, 0.030), (2_001, 0.034), (1_999, 0.032)):
        cost.add(rows, wall, wall)
    # The probe sizes stay beside the tasks' near-equal sizes, which make one
    # averaged sample: the fixed cost of a call is still told apart from its
    # cost per row, and no slope is fitted between 1,999 and 2,001 rows.
    assert [round(rows) for rows, *_ in cost.samples] == [64, 256, 2_000]
    assert cost.samples[-1][1] == pytest.approx((0.032 + (0.030 + 0.034) / 2) / 2)
    assert cost.per_call > 0.005 and cost.per_row > 0


def test_a_slow_timing_once_is_left_out_of_the_fit():
    # 0.3 ms a call and 1.5e-8 s a row, as a LogisticRegression on 2 cores;
    # one probe step woke BLAS threads from sleep (4.6 ms for 65,536 rows),
    # one task waited for a core (3.4 ms for 29,000). Least squares through
    # them predicted 5.2 ms for 100,000 rows, where the call took 1.5-2 ms.
    line = [(rows, 3e-4 + 1.5e-8 * rows) for rows in (64, 256, 1_024, 4_096, 16_384)]
    slow = [(65_536, 4.6e-3), (29_000, 3.4e-3)]
    cost = _costs.fit_cost([(r, w, w) for r, w in [*line, (50_000, 1.05e-3), *slow]])
    assert cost.seconds(100_000) == pytest.approx(1.8e-3, rel=0.01)
    assert len(cost.samples) == 8  # left out of the line, still kept


def test_a_slow_timing_seen_again_is_the_machine_not_noise():
    cost = _costs.fit_cost([(64, 0.005, 0.005), (256, 0.005, 0.005)])
    cost.add(1_000, 0.020, 0.020)
    assert cost.seconds(1_000) == pytest.approx(0.005, rel=0.01)
    # Timed again as slow: the machine turned slower, and the cost follows.
    cost.add(1_000, 0.020, 0.020)
    assert cost.seconds(1_000) > 0.015


def test_timings_that_are_no_line_are_all_fitted():
    # Each timing twice the line through those before it: left out, they
    # would be half of them. A cost growing faster than its rows, not noise.
    samples = [(1_000 * 4**i, 0.001 * 8**i, 0.0) for i in range(4)]
    cost = _costs.fit_cost(samples)
    assert cost.seconds(64_000) > 0.3


def test_costs_are_forgotten_with_their_model():
    class Unhashable(LogisticRegression):
        __hash__ = None

    model = Unhashable().fit(X, Y)
    cost = _costs.Cost(1e-4, 1e-7)
    _costs.remember_cost(model, "predict", cost)
    assert _costs.remembered_cost(model, "predict") is cost
    key = id(model)
    assert key in _costs._remembered
    del model
    gc.collect()
    assert key not in _costs._remembered
    # A stale entry (its model gone, its notice not yet run) serves no other
    # object that is given the same id.
    other = LogisticRegression()
    _costs._remembered[id(other)] = (
        weakref.ref(LogisticRegression()),
        {"predict": cost},
    )
    assert _costs.remembered_cost(other, "predict") is None
    _costs.remember_cost(other, "predict", cost)
    assert _costs.remembered_cost(other, "predict") is cost
