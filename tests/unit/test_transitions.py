"""VMs seen between two power states are looked at again, sooner at first, until a look finds them settled."""

from __future__ import annotations

import math

import pytest

from reconciler.core import model
from reconciler.runtime.controller.transitions import TransitionWatch, in_transition
from tests.unit import builders
from tests.unit.test_workqueue import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_vm_seen_in_transition_is_due_for_another_look_after_half_a_second(clock):
    watch = TransitionWatch(clock=clock)
    watch.seen(["VirtualMachine/web"], [])
    assert watch.take_due() == []
    assert watch.next_in() == pytest.approx(0.5)
    clock.advance(0.5)
    assert watch.take_due() == ["VirtualMachine/web"]
    assert watch.take_due() == []  # handed out once
    assert watch.next_in() == math.inf


def test_each_look_that_still_finds_it_in_transition_doubles_the_wait_up_to_fifteen_seconds(clock):
    watch = TransitionWatch(clock=clock)
    waits = []
    for _ in range(8):
        watch.seen(["VirtualMachine/web"], [])
        waits.append(watch.next_in())
        clock.advance(watch.next_in())
        assert watch.take_due() == ["VirtualMachine/web"]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


def test_a_vm_found_settled_is_forgotten_and_starts_again_from_half_a_second(clock):
    watch = TransitionWatch(clock=clock)
    watch.seen(["VirtualMachine/web"], [])
    watch.seen(["VirtualMachine/web"], [])
    assert watch.next_in() == 1.0
    watch.seen([], ["VirtualMachine/web"])
    assert watch.watched() == set() and watch.next_in() == math.inf
    watch.seen(["VirtualMachine/web"], [])
    assert watch.next_in() == 0.5


def test_only_the_vms_a_pass_cares_about_and_saw_in_transition_are_reported():
    actual = builders.actual(
        builders.foreign("starting", power=model.PowerState.TRANSITIONAL),
        builders.foreign("foreign-starting", power=model.PowerState.TRANSITIONAL),
        builders.foreign("running", power=model.PowerState.RUNNING),
        builders.foreign("paused", power=model.PowerState.PAUSED),
    )
    assert in_transition(actual, {"starting", "running", "paused", "absent"}) == {"starting"}


def test_a_vm_handed_out_for_another_look_stays_watched_until_a_look_finds_it_settled(clock):
    watch = TransitionWatch(clock=clock)
    watch.seen(["VirtualMachine/web"], [])
    clock.advance(0.5)
    assert watch.take_due() == ["VirtualMachine/web"]
    assert watch.watched() == {"VirtualMachine/web"}  # not converged while nobody has looked again
    watch.seen([], ["VirtualMachine/web"])
    assert watch.watched() == set()
