"""The controller's keyed work queue: dedup, one key in flight at once, per-key backoff."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.runtime.workqueue import EVERYTHING, WorkQueue


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(clock: FakeClock) -> WorkQueue:
    return WorkQueue(base_delay=0.5, max_delay=8.0, clock=clock)


def take_now(queue: WorkQueue) -> list[str]:
    """Return what the queue hands out right now, without waiting."""
    return queue.take(timeout=0)


class BlockedTake:
    """A ``take()`` running in another thread, so a test can look at it while it waits."""

    def __init__(self, queue: WorkQueue, timeout: float | None = None) -> None:
        self.started = threading.Event()
        self.result: list[str] | None = None
        self.elapsed: float | None = None

        def run() -> None:
            self.started.set()
            began = time.monotonic()
            self.result = queue.take(timeout=timeout)
            self.elapsed = time.monotonic() - began

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self.started.wait(2)

    def finished(self, within: float) -> bool:
        self._thread.join(within)
        return not self._thread.is_alive()


# -- dedup and ordering --------------------------------------------------------------------


def test_duplicate_keys_collapse_into_one():
    """A key added many times before anyone takes it is handed out once."""
    queue = WorkQueue()
    for _ in range(5):
        queue.add("VirtualMachine/web")
    queue.add("VirtualMachine/db")
    queue.add("VirtualMachine/web")

    assert take_now(queue) == ["VirtualMachine/web", "VirtualMachine/db"]
    assert take_now(queue) == []


def test_take_hands_out_every_ready_key_at_once():
    """One take() returns all waiting keys, in the order they were first added, and marks them in flight."""
    queue = WorkQueue()
    keys = [f"VirtualMachine/vm{i}" for i in range(50)] + [EVERYTHING, "StoragePool/vmstore"]
    for key in keys:
        queue.add(key)

    assert take_now(queue) == keys
    assert queue.in_flight() == set(keys)
    assert take_now(queue) == []


def test_take_with_timeout_returns_an_empty_list_when_nothing_comes():
    """take(timeout) on an empty queue gives up after about the timeout and returns []."""
    queue = WorkQueue()

    began = time.monotonic()
    assert queue.take(timeout=0.05) == []
    elapsed = time.monotonic() - began

    assert 0.04 <= elapsed < 1.0


def test_take_with_zero_timeout_returns_at_once():
    """take(timeout=0) on an empty queue is a poll: it returns [] without waiting."""
    queue = WorkQueue()

    began = time.monotonic()
    assert queue.take(timeout=0) == []
    assert time.monotonic() - began < 0.05


def test_a_blocked_take_wakes_up_when_a_key_is_added():
    """A take() waiting without a timeout returns the key another thread adds."""
    queue = WorkQueue()
    waiter = BlockedTake(queue)

    queue.add("VirtualMachine/web")

    assert waiter.finished(within=2)
    assert waiter.result == ["VirtualMachine/web"]


# -- one key in flight at once -------------------------------------------------------------


def test_key_added_while_in_flight_is_handed_out_again_after_done():
    """A key added while it is being worked on waits until done(), then is ready once more."""
    queue = WorkQueue()
    queue.add("VirtualMachine/web")
    assert take_now(queue) == ["VirtualMachine/web"]

    queue.add("VirtualMachine/web")
    queue.add("VirtualMachine/web")
    assert take_now(queue) == []
    assert queue.in_flight() == {"VirtualMachine/web"}

    queue.done("VirtualMachine/web")
    assert queue.in_flight() == set()
    assert take_now(queue) == ["VirtualMachine/web"]


def test_key_not_added_while_in_flight_is_not_handed_out_again_after_done():
    """done() on a key nobody asked for again leaves the queue empty."""
    queue = WorkQueue()
    queue.add("VirtualMachine/web")
    take_now(queue)

    queue.done("VirtualMachine/web")

    assert take_now(queue) == []
    assert queue.in_flight() == set()


def test_done_of_a_dirty_key_wakes_a_blocked_take():
    """A take() waiting for work gets the key that became ready again through done()."""
    queue = WorkQueue()
    queue.add("VirtualMachine/web")
    take_now(queue)
    queue.add("VirtualMachine/web")
    waiter = BlockedTake(queue)

    queue.done("VirtualMachine/web")

    assert waiter.finished(within=2)
    assert waiter.result == ["VirtualMachine/web"]


def test_other_keys_are_handed_out_while_one_is_in_flight():
    """A key in flight does not hold back the keys added after it."""
    queue = WorkQueue()
    queue.add("VirtualMachine/web")
    take_now(queue)

    queue.add("VirtualMachine/web")
    queue.add("VirtualMachine/db")

    assert take_now(queue) == ["VirtualMachine/db"]


def test_claim_of_a_free_key_marks_it_in_flight_and_removes_it_from_the_ready_set():
    """claim() of a waiting key takes it over, so take() does not hand it out too."""
    queue = WorkQueue()
    queue.add("VirtualMachine/web")
    queue.add("VirtualMachine/db")

    assert queue.claim("VirtualMachine/web") is True

    assert queue.in_flight() == {"VirtualMachine/web"}
    assert take_now(queue) == ["VirtualMachine/db"]


def test_claim_of_an_in_flight_key_returns_false_and_marks_it_dirty():
    """claim() of a key already being worked on fails, and the key comes back after done()."""
    queue = WorkQueue()
    queue.add("VirtualMachine/web")
    take_now(queue)

    assert queue.claim("VirtualMachine/web") is False
    assert take_now(queue) == []

    queue.done("VirtualMachine/web")
    assert take_now(queue) == ["VirtualMachine/web"]


# -- backoff ---------------------------------------------------------------------------------


def test_retry_later_backs_off_exponentially_up_to_the_cap(queue: WorkQueue):
    """Each failure in a row doubles the delay, from base_delay, until max_delay."""
    delays = [queue.retry_later("VirtualMachine/web") for _ in range(8)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert queue.failures("VirtualMachine/web") == 8


def test_a_key_retried_later_is_ready_only_once_its_delay_has_passed(queue: WorkQueue, clock: FakeClock):
    """A retried key stays parked until the clock reaches its backoff delay."""
    queue.retry_later("VirtualMachine/web")  # 0.5 s
    queue.retry_later("VirtualMachine/web")  # then 1.0 s; the earlier entry is due first

    assert take_now(queue) == []
    clock.advance(0.49)
    assert take_now(queue) == []
    clock.advance(0.01)
    assert take_now(queue) == ["VirtualMachine/web"]


def test_forget_resets_the_backoff(queue: WorkQueue):
    """After forget(), the next failure starts again from base_delay."""
    for _ in range(4):
        queue.retry_later("VirtualMachine/web")

    queue.forget("VirtualMachine/web")

    assert queue.failures("VirtualMachine/web") == 0
    assert queue.retry_later("VirtualMachine/web") == 0.5


def test_backoff_is_counted_per_key(queue: WorkQueue):
    """One key's failures do not lengthen another key's first delay."""
    for _ in range(4):
        queue.retry_later("VirtualMachine/web")

    assert queue.retry_later("VirtualMachine/db") == 0.5
    assert queue.failures("VirtualMachine/web") == 4
    assert queue.failures("VirtualMachine/db") == 1


def test_one_failing_keys_backoff_does_not_delay_another_key(queue: WorkQueue, clock: FakeClock):
    """While a failing key is parked, a freshly added key is handed out at once, alone."""
    for _ in range(5):
        queue.retry_later("VirtualMachine/broken")  # parked for 0.5 s (its earliest entry)

    queue.add("VirtualMachine/web")

    assert take_now(queue) == ["VirtualMachine/web"]
    assert queue.in_flight() == {"VirtualMachine/web"}


def test_a_blocked_take_wakes_up_when_a_delayed_key_falls_due():
    """take() without a timeout returns a retried key once its (real) delay has passed."""
    queue = WorkQueue(base_delay=0.05)
    queue.retry_later("VirtualMachine/web")

    waiter = BlockedTake(queue)

    assert waiter.finished(within=2)
    assert waiter.result == ["VirtualMachine/web"]
    assert waiter.elapsed is not None and waiter.elapsed >= 0.03


def test_a_key_falling_due_while_in_flight_comes_back_after_done(queue: WorkQueue, clock: FakeClock):
    """A retry that falls due while its key is being worked on is kept and handed out after done()."""
    queue.add("VirtualMachine/web")
    take_now(queue)
    queue.retry_later("VirtualMachine/web")
    clock.advance(1)

    assert take_now(queue) == []

    queue.done("VirtualMachine/web")
    assert take_now(queue) == ["VirtualMachine/web"]


def test_add_after_schedules_a_key_for_later(queue: WorkQueue, clock: FakeClock):
    """add_after() makes a key ready only after the given delay."""
    queue.add_after(EVERYTHING, 10)

    clock.advance(9.9)
    assert take_now(queue) == []
    clock.advance(0.1)
    assert take_now(queue) == [EVERYTHING]


# -- closing ---------------------------------------------------------------------------------


def test_close_wakes_a_blocked_take():
    """close() makes a take() waiting without a timeout return [] promptly."""
    queue = WorkQueue()
    waiter = BlockedTake(queue)

    queue.close()

    assert waiter.finished(within=2)
    assert waiter.result == []


def test_a_closed_queue_refuses_new_keys(queue: WorkQueue, clock: FakeClock):
    """Keys added or scheduled after close() are never handed out."""
    queue.close()

    queue.add("VirtualMachine/web")
    queue.add_after("VirtualMachine/db", 0)
    queue.retry_later("VirtualMachine/app")
    clock.advance(60)

    assert take_now(queue) == []
