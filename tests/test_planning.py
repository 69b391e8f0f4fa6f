"""Plans: which chunks on which workers pay, and what runs teach them."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sklearn_parpredict import _costs, _planning


def test_plan_stays_serial_when_parallel_cannot_pay():
    cheap = _costs.Cost(per_call=1e-4, per_row=1e-8)
    assert (
        _planning.plan_chunks(
            [cheap], [(0, 10_000)], n_workers=2, kind="process", cold_s=0
        )
        is None
    )
    # Work far above the pool's start-up cost goes parallel, even when cold.
    costly = _costs.Cost(per_call=1e-4, per_row=1e-3)
    plan = _planning.plan_chunks(
        [costly], [(0, 100_000)], n_workers=2, kind="process", cold_s=1.0
    )
    assert plan is not None
    # An estimator that already keeps every core busy gains nothing.
    cores = _costs.CORES
    threaded = _costs.Cost(per_call=1e-4, per_row=1e-3, threads=cores)
    if cores > 1:
        assert (
            _planning.plan_chunks(
                [threaded], [(0, 100_000)], n_workers=cores, kind="process", cold_s=0
            )
            is None
        )


@pytest.mark.skipif(_costs.CORES < 2, reason="needs 2 cores")
def test_processes_are_chosen_over_threads_only_when_clearly_faster():
    cost = _costs.Cost(0.001, 1e-5, thread_speedup=1.9, thread_measurements=3)
    remaining = [(0, 100_000)]

    def plans():
        return [
            _planning.plan_chunks([cost], remaining, n_workers=2, kind=kind)
            for kind in ("process", "thread")
        ]

    process, thread = plans()
    # Processes are predicted faster, as their speedup is taken as perfect,
    # but by less than the margin: threads copy nothing.
    assert process.seconds < thread.seconds
    assert thread.seconds < process.seconds * _planning.PROCESS_MARGIN
    assert min(plans(), key=lambda p: _planning.ranking(p, 0.0)).kind == "thread"
    # Threads that gain less lose to processes, unless those must start.
    cost.thread_speedup = 1.5
    assert min(plans(), key=lambda p: _planning.ranking(p, 0.0)).kind == "process"
    assert min(plans(), key=lambda p: _planning.ranking(p, 0.5)).kind == "thread"


def test_processes_are_charged_what_sending_their_rows_costs():
    cost = _costs.Cost(per_call=0.001, per_row=1e-5)

    def plan(ship_s):
        return _planning.plan_chunks(
            [cost], [(0, 100_000)], n_workers=2, kind="process", ship_s=ship_s
        )

    free = plan(0.0)
    assert plan(0.2).seconds == pytest.approx(free.seconds + 0.2)
    # Rows that cost half as much to send as to compute leave two
    # processes nothing to gain.
    assert plan(0.5) is None
    assert plan(float("inf")) is None  # rows that cannot be pickled


def test_own_threads_are_planned_by_their_measured_speedup():
    def plan(cost):
        return _planning.plan_chunks(
            [cost], [(0, 100_000)], n_workers=2, kind="process", cold_s=0
        )

    # Two cores kept busy: as good as workers, until measured otherwise
    # (OpenMP threads that spin between regions keep cores busy too).
    busy = _costs.Cost(per_call=1e-4, per_row=1e-5, threads=2.0)
    assert busy.wants_own_measurement()
    assert plan(busy) is None
    assert plan(_planning.optimistic(busy)) is not None
    assert _planning.optimistic(busy).own_speedup == 1.0
    busy.set_one_thread_per_row(1.4e-5)  # HistGradientBoosting's, 2 cores
    assert busy.own_speedup == pytest.approx(1.4)
    assert not busy.wants_own_measurement()
    assert plan(busy) is not None
    # Whole calls on its own threads measured faster: the speedup follows.
    busy.per_row = 1.4e-5 / 1.9
    assert busy.own_speedup == pytest.approx(1.9)
    assert plan(busy) is None
    # Nothing to measure when one core is all the call keeps busy.
    single = _costs.Cost(per_call=1e-4, per_row=1e-5)
    assert not single.wants_own_measurement()
    assert _planning.optimistic(single) is single


def test_own_speedup_is_not_lowered_by_a_slow_spell_of_the_machine(monkeypatch):
    monkeypatch.setattr(_costs, "CORES", 2)
    # KNeighborsClassifier on 1,000 rows, 2 cores: 29 ms on its own threads,
    # 57 ms on one; then, for seconds, 40-45 ms on its threads (the
    # machine's, not the estimator's: workers slowed alike).
    cost = _costs.Cost(per_call=0.0, per_row=0.0, threads=2.0)
    for rows in (64, 256, 1_000):
        cost.add(rows, 2.9e-5 * rows, 5.8e-5 * rows)
    cost.set_one_thread_per_row(5.7e-5)
    assert cost.own_speedup == pytest.approx(5.7 / 2.9, rel=0.02)
    for _ in range(4):
        for rows in (64, 256, 1_000):
            cost.add(rows, 4.2e-5 * rows, 8.4e-5 * rows)
    # The fitted cost follows the slow spell; the threads' speedup does not.
    assert cost.per_row == pytest.approx(4.2e-5, rel=0.1)
    assert cost.own_speedup == pytest.approx(5.7 / 2.9, rel=0.02)
    plan = _planning.plan_chunks(
        [cost], [(0, 1_000)], n_workers=2, kind="process", cold_s=0
    )
    assert plan is None
    # Before it is measured, the best case for workers is still no speedup.
    unmeasured = replace(cost, one_thread_per_row=None)
    assert _planning.optimistic(unmeasured).own_speedup == 1.0
    # The fastest timing counts its fixed cost: where the fitted cost per
    # row is lower, that one stands.
    fixed = _costs.Cost(per_call=0.0, per_row=0.0, threads=2.0)
    fixed.add(100, 0.011, 0.022)
    fixed.add(1_000, 0.02, 0.04)
    fixed.set_one_thread_per_row(1.5e-5)
    assert fixed.per_row == pytest.approx(1e-5)
    assert fixed.own_speedup == pytest.approx(1.5)


@given(
    costs=st.lists(
        st.tuples(
            st.floats(0, 0.05),
            st.floats(1e-7, 1e-2),
            st.integers(0, 5000),
            st.integers(0, 5000),
            st.one_of(st.none(), st.floats(1.0, 2.0)),
            st.floats(1.0, 4.0),
            st.floats(0, 0.01),
        ),
        min_size=1,
        max_size=5,
    ),
    n_workers=st.integers(2, 16),
    kind=st.sampled_from(["process", "thread"]),
    cold_s=st.sampled_from([0.0, 0.5]),
)
def test_plan_covers_every_remaining_row_once(costs, n_workers, kind, cold_s):
    remaining = [(min(a, b), max(a, b)) for _, _, a, b, _, _, _ in costs]
    models = [
        _costs.Cost(c, r, threads=t, thread_speedup=s, overhead={kind: o})
        for c, r, _, _, s, t, o in costs
    ]
    plan = _planning.plan_chunks(
        models, remaining, n_workers=n_workers, kind=kind, cold_s=cold_s
    )
    if plan is None:
        return
    # The bound that skips planning never rules out a plan that pays.
    assert _planning.can_pay(models, remaining, n_workers, (kind,))
    assert _planning.can_pay(models, remaining, n_workers)
    for (start, stop), ranges in zip(remaining, plan.ranges):
        rows = [i for a, b in ranges for i in range(a, b)]
        assert rows == list(range(start, stop))


def test_the_bound_knows_what_threads_holding_the_gil_and_processes_cost():
    # 3 ms of work on 1,000 rows, a sixth of it the call's fixed cost, which
    # threads pay one after another.
    cost = _costs.Cost(per_call=5e-4, per_row=2.5e-6)
    # Unmeasured threads might scale: worth planning (and measuring).
    assert _planning.can_pay([cost], [(0, 1000)], 2)
    # Measured: two threads are 1.2x one. Neither they nor processes, at
    # 2 ms a task, can save a quarter of 3 ms.
    cost.thread_speedup = 1.2
    assert not _planning.can_pay([cost], [(0, 1000)], 2)
    # Threads that scale could.
    cost.thread_speedup = 2.0
    assert _planning.can_pay([cost], [(0, 1000)], 2)
    assert not _planning.can_pay([cost], [(0, 1000)], 2, ("process",))


def test_threads_pay_their_calls_fixed_costs_one_after_another():
    cost = _costs.Cost(2e-3, 1e-6, thread_speedup=2.0, thread_measurements=3)
    # 6 ms in-process; on two threads 4 ms of fixed costs and 2 ms of rows.
    assert not _planning.can_pay([cost], [(0, 4_000)], 2, ("thread",))
    assert (
        _planning.plan_chunks([cost], [(0, 4_000)], n_workers=2, kind="thread") is None
    )
    plan = _planning.plan_chunks([cost], [(0, 1_000_000)], n_workers=2, kind="thread")
    assert plan.seconds == pytest.approx(
        2 * cost.per_call + _planning.DISPATCH_S["thread"] + 0.5
    )


def test_slow_thread_runs_lower_the_speedup_only_when_the_next_are_slow_too():
    cost = _costs.Cost(0.0, 1e-3, thread_speedup=2.0, thread_measurements=3)
    plan = _planning.Plan("thread", [[(0, 500), (500, 1000)]], 0.5, 1)

    def run(wall):
        return _planning.learn_thread_speedup([cost], plan, wall, 1.0, 2)

    assert _planning.SLOW_THREAD_RUNS == 3
    assert run(1.0)  # slow: twice the plan
    assert run(1.0)
    assert cost.thread_speedup == 2.0
    assert not run(0.5)  # on time: the slow ones were the machine's
    assert run(1.0) and run(1.0)
    assert cost.thread_speedup == 2.0
    assert run(1.0)  # three times in a row: the speedup the run implies
    assert cost.thread_speedup == pytest.approx(1.0, abs=0.01)
    # Processes teach the thread speedup nothing.
    cost.thread_speedup = 2.0
    assert not _planning.learn_thread_speedup(
        [cost], _planning.Plan("process", plan.ranges, 0.5, 1), 9.0, 1.0, 2
    )
    assert cost.thread_speedup == 2.0


def test_cost_refines_with_samples_and_learns_overhead():
    cost = _costs.fit_cost([(100, 0.011, 0.011)])
    for rows in (400, 1600, 6400):
        cost.add(rows, 0.01 + rows * 1e-5, 0.01 + rows * 1e-5)
    assert cost.per_call == pytest.approx(0.01, rel=1e-6)
    assert cost.per_row == pytest.approx(1e-5, rel=1e-6)
    # Noise that makes the rows look free: the fixed cost is all.
    flat = _costs.fit_cost([(64, 0.006, 0.006), (256, 0.005, 0.005)])
    assert flat.per_row == 0 and flat.per_call == pytest.approx(0.0055)

    plan = _planning.plan_chunks([cost], [(0, 1_000_000)], n_workers=2, kind="process")
    _planning.learn_overhead([cost], plan, plan.seconds + 0.2 * plan.waves, 2)
    assert cost.overhead["process"] == pytest.approx(0.1)
    slower = _planning.plan_chunks(
        [cost], [(0, 1_000_000)], n_workers=2, kind="process"
    )
    assert slower.seconds > plan.seconds
    # Processes faster than planned learn no negative overhead ...
    for _ in range(20):
        _planning.learn_overhead([cost], plan, 0.0, 2)
    assert cost.overhead["process"] == 0.0
    # ... threads may, down to the other calls' fixed costs of a wave
    # overlapping: a wave then pays one call's.
    threads = _planning.plan_chunks(
        [cost], [(0, 1_000_000)], n_workers=2, kind="thread"
    )
    _planning.learn_overhead([cost], threads, threads.seconds - 0.004, 2)
    assert cost.overhead["thread"] == pytest.approx(-0.002)
    for _ in range(20):
        _planning.learn_overhead([cost], threads, 0.0, 2)
    assert cost.overhead["thread"] == pytest.approx(-cost.per_call)
    fixed = _planning.fixed_seconds([cost], "thread", 2)
    assert fixed == pytest.approx(cost.per_call + _planning.DISPATCH_S["thread"])
    # Should the cost's fixed part shrink, a wave still pays one call's.
    cost.overhead["thread"] = -1.0
    assert _planning.fixed_seconds([cost], "thread", 2) == pytest.approx(fixed)


def test_threads_kept_busier_than_measured_raise_their_speedup():
    def cost(**kw):
        return _costs.Cost(0.0, 1e-5, thread_speedup=1.6, **kw)

    plan = _planning.Plan("thread", [[(0, 500), (500, 1000)]], 0.5, 1)

    def run(cost, wall=1.0, cpu=2.0, plan=plan, n_workers=2):
        _planning.raise_thread_speedup([cost], plan, wall, cpu, n_workers)
        return cost.thread_speedup

    # Both threads busy the whole run: half-way to 2x, then on towards it.
    busy = cost()
    assert run(busy) == pytest.approx(1.8)
    assert run(busy) == pytest.approx(1.9)
    # Threads that slept half the run waiting for the GIL: 1.33x; never
    # lowered here.
    assert run(cost(), cpu=1.5) == 1.6
    assert run(cost(), cpu=1.8) == pytest.approx(1.7)
    # On four threads, 3.2 cores busy: 1.67x as on two, by Amdahl.
    assert run(cost(), cpu=3.2, n_workers=4) == pytest.approx(
        0.5 * (1.6 + 1 / (1 - (1 - 1 / 3.2) / 0.75 / 2))
    )
    # Left alone: estimators with threads of their own, processes, plans of
    # several jobs, and speedups slow runs lowered or may lower.
    assert run(cost(threads=2.0)) == 1.6
    process = _planning.Plan("process", plan.ranges, 0.5, 1)
    assert run(cost(), plan=process) == 1.6
    two = [cost(), cost()]
    _planning.raise_thread_speedup(two, plan, 1.0, 4.0, 2)
    assert [c.thread_speedup for c in two] == [1.6, 1.6]
    lowered = cost()
    lowered.slow_thread_runs = 1
    assert run(lowered) == 1.6
    lowered.slow_thread_runs = _planning.SLOW_THREAD_RUNS - 1
    _planning.learn_thread_speedup([lowered], plan, 9.0, 1.0, 2)
    assert lowered.thread_lowered and lowered.thread_speedup < 1.6
    lowered.slow_thread_runs = 0
    assert run(lowered) < 1.6


def test_plans_that_gain_little_time_the_serial_call_ever_more_rarely():
    cost = _costs.Cost(0.0, 1e-3)
    little = _planning.Plan("thread", [[(0, 10)]], 1.0, 1, serial_s=1.4)
    checks = [i for i in range(1, 250) if _planning.checks_serial([cost], little)]
    assert checks == [8, 24, 56, 120, 248]
    # Plans predicted to gain more are taken at their word.
    much = _planning.Plan("thread", [[(0, 10)]], 1.0, 1, serial_s=1.6)
    assert not any(_planning.checks_serial([cost], much) for _ in range(100))


def test_sending_models_costs_their_bytes_once_each():
    import threading

    from sklearn.base import BaseEstimator

    small, large, locked = BaseEstimator(), BaseEstimator(), BaseEstimator()
    large.weights_ = np.ones(10_000_000, dtype=np.uint8)
    locked.lock_ = threading.Lock()
    assert _planning.shipping_s([]) == 0.0
    one = _planning.shipping_s([small])
    assert _planning.COLD_MODEL_S <= one < _planning.COLD_MODEL_S + 0.001
    # 10 MB: 65 ms more; twice the same model is sent once.
    assert _planning.shipping_s([large, large]) == pytest.approx(
        _planning.COLD_MODEL_S + 0.065, abs=0.001
    )
    # One that plain pickle does not take counts as a small one.
    assert _planning.shipping_s([small, locked]) == pytest.approx(2 * one, abs=0.001)
