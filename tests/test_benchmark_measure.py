"""The benchmarks' paired calls: differences of adjacent single calls."""

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest

# Importable without the bench extra: nothing here needs psutil.
from benchmarks import _measure


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
