"""The benchmarks' paired calls: differences of adjacent single calls."""

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest

# Importable without the bench extra: nothing here needs psutil.
from benchmarks import _measure, _targets


class _Machine:
    """A clock that moves only when a fake call runs: each call takes its
    nominal seconds, plus what the wrapper's call left for the next one."""

    def __init__(self, serial_s=1.0, ours_s=1.5, left_s=0.0):
        self.now = 0.0
        self.left = 0.0
        self.serial_s, self.ours_s, self.left_s = serial_s, ours_s, left_s
        self.calls = []

    def perf_counter(self):
        return self.now

    def serial(self):
        self.calls.append("serial")
        self.now += self.serial_s + self.left
        self.left = 0.0
        return np.arange(4)

    def ours(self):
        self.calls.append("ours")
        self.now += self.ours_s
        self.left = self.left_s
        return np.arange(4)


@pytest.fixture
def machine(monkeypatch):
    machine = _Machine()
    monkeypatch.setattr(
        _measure, "time", SimpleNamespace(perf_counter=machine.perf_counter)
    )
    return machine


def test_paired_calls_give_the_added_time_the_after_effect_and_the_control(
    machine,
):
    machine.left_s = 0.25
    got = _measure.paired(machine.serial, machine.ours, _measure.Timing())
    assert got.serial == 1.0
    assert got.added == 0.5
    assert got.after == 0.25
    assert got.aa == 0.0


def test_the_serial_call_compared_with_the_wrapper_is_the_one_just_before_it(
    machine,
):
    # Whatever the wrapper leaves behind falls on the call after it, never on
    # the one it is compared with, nor on the control's two calls.
    machine.left_s = 10.0
    got = _measure.paired(machine.serial, machine.ours, _measure.Timing())
    assert (got.added, got.aa, got.after) == (0.5, 0.0, 10.0)
    # After serial's reference output and one call of each to size a group:
    # per group an untimed serial call, then the timed four.
    group = ["serial", "serial", "serial", "ours", "serial"]
    assert machine.calls[3:] == group * _measure.PAIRED_MIN


def test_as_many_groups_as_fit_in_the_budget_within_bounds(machine):
    # A group of 4 serial calls and the wrapper's: 5.5 s, over the budget.
    assert (
        _measure.paired(machine.serial, machine.ours, _measure.Timing()).groups
        == _measure.PAIRED_MIN
    )
    machine.serial_s, machine.ours_s = 0.0625, 0.0625
    groups = _measure.PAIRED_BUDGET_S // 0.3125
    assert (
        _measure.paired(machine.serial, machine.ours, _measure.Timing()).groups
        == groups
    )
    machine.serial_s, machine.ours_s = 1e-6, 1e-6
    assert (
        _measure.paired(machine.serial, machine.ours, _measure.Timing()).groups
        == _measure.PAIRED_MAX
    )


@pytest.mark.parametrize(
    "ours_s, extended",
    [
        # Always 1.5x serial's time, or always 0.9x: the interval is a point,
        # off the target, and the budget's groups decide.
        ([1.5], False),
        ([0.9], False),
        # 0.9 s and 1.2 s in turn: the ratio's interval (0.83x to 1.11x)
        # holds the target, and groups are added up to PAIRED_EXTEND_S.
        ([0.9, 1.2], True),
    ],
)
def test_groups_are_added_while_the_interval_holds_the_target(
    machine, ours_s, extended
):
    times = iter(ours_s * 1000)

    def ours():
        machine.ours_s = next(times)
        return machine.ours()

    got = _measure.paired(machine.serial, ours, _measure.Timing())
    base = _measure.PAIRED_MIN
    # The group sized by the first calls: 4 serial calls and the wrapper's.
    more = int(_measure.PAIRED_EXTEND_S // (4 + ours_s[0]))
    assert got.groups == (base + more if extended else base)
    assert len(got.added_all) == got.groups
    low, high = _targets.paired_interval(got.serial, got.added_all)
    assert low <= got.serial / (got.serial + got.added) <= high


def test_the_paired_interval_bounds_the_ratio_of_the_median():
    # Added times of -0.1 s and +0.2 s on a 1 s call: 1/1.2 to 1/0.9.
    low, high = _targets.paired_interval(1.0, [-0.1, 0.2] * 10)
    assert (low, high) == pytest.approx((1 / 1.2, 1 / 0.9))
    # An added time that cancels the serial call: no upper bound.
    assert _targets.paired_interval(1.0, [-1.0] * 9)[1] == math.inf


def test_a_wrong_output_of_the_wrapper_fails_the_paired_calls(machine):
    def wrong():
        machine.ours()
        return np.arange(4)[::-1]

    timing = _measure.Timing(samples=[1.5])
    assert _measure.paired(machine.serial, wrong, timing) is None
    assert timing.error.startswith("wrong output")
    # The row's time is then not measured.
    assert math.isnan(timing.median)


def test_the_others_are_compared_with_the_wrapper_in_alternating_pairs(machine):
    got = _measure.versus(machine.ours, {"peer": machine.serial})
    assert got == {"peer": [1.0 / 1.5] * _measure.VERSUS_MIN}
    # One call of each to size the pairs, then pairs in alternating order.
    pairs = ["ours", "serial", "serial", "ours"] * (_measure.VERSUS_MIN // 2)
    pairs += ["ours", "serial"] * (_measure.VERSUS_MIN % 2)
    assert machine.calls == ["ours", "serial", *pairs]


def test_a_method_set_up_around_its_calls_is_set_up_outside_the_timing(machine):
    def peer():
        return machine.serial()

    # A pool started before each call and stopped after it: 10 s each, that
    # must not count.
    def slow_set_up():
        machine.now += 10.0

    peer.before = peer.after = slow_set_up
    got = _measure.versus(machine.ours, {"peer": peer, "same": machine.ours})
    assert got == {
        "peer": [1.0 / 1.5] * _measure.VERSUS_MIN,
        "same": [1.0] * _measure.VERSUS_MIN,
    }
    # Sized on the calls alone: 2.5 s a pair, so the fewest pairs.
    assert machine.calls.count("serial") == 1 + _measure.VERSUS_MIN


def test_a_ratio_that_drifts_is_judged_by_its_median_pair(machine):
    # The other method's calls slow down call by call; the wrapper's do not.
    def drifting():
        machine.serial_s *= 1.1
        return machine.serial()

    middle = _measure.VERSUS_MIN // 2
    # Sizing the pairs takes one call, then the pairs 1.1 ** -middle ..
    # 1.1 ** middle of the wrapper's time; their mean would be above it.
    machine.serial_s = 1.5 / 1.1 ** (middle + 2)
    pairs = _measure.versus(machine.ours, {"drifting": drifting})["drifting"]
    got = statistics.median(pairs)
    # The middle of the pairs' ratios 1.1 ** -middle .. 1.1 ** middle.
    assert got == pytest.approx(1.0)


@pytest.mark.parametrize(
    "target, extended",
    [
        (None, False),  # no target: the budget's pairs
        (0.5, False),  # the interval (0.6x to 0.8x) is above it: decided
        (0.7, True),  # it holds the target: more pairs
    ],
)
def test_pairs_are_added_while_their_interval_holds_the_target(
    machine, target, extended
):
    # The other method's calls take 0.9 s and 1.2 s in turn; the wrapper's
    # 1.5 s: ratios 0.6x and 0.8x.
    times = iter([0.9, 1.2] * 1000)

    def other():
        machine.serial_s = next(times)
        return machine.serial()

    targets = None if target is None else {"other": target}
    got = _measure.versus(machine.ours, {"other": other}, targets)["other"]
    # Pairs sized by the first calls: 1.5 s and 0.9 s.
    more = int(_measure.VERSUS_EXTEND_S // 2.4)
    assert len(got) == _measure.VERSUS_MIN + (more if extended else 0)
    assert {round(r, 9) for r in got} == {0.6, 0.8}


def test_a_row_is_cheap_by_its_interleaved_methods_alone(machine):
    # Slow methods timed last (the tutorial's pool, dask-ml's threads) do
    # not make a row of cheap calls look expensive: its few samples of
    # single calls were the noisiest medians of the suite.
    def slow():
        machine.now += 5 * _measure.CHEAP_ROW_S
        return np.arange(4)

    calls = {"serial": machine.serial, "ours": machine.serial, "slow": slow}
    machine.serial_s = 0.1
    timings = _measure.measure(calls, 3, last=("slow",))
    assert len(timings["ours"].samples) == _measure.CHEAP_REPEATS
    assert len(timings["slow"].samples) == _measure.CHEAP_REPEATS
    machine.serial_s = _measure.CHEAP_ROW_S
    timings = _measure.measure(calls, 3, last=("slow",))
    assert len(timings["ours"].samples) == 3
