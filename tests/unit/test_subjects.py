"""The controllers' subject ledger: no work on a plan from a look older than its subject's last execution."""

from __future__ import annotations

from reconciler.runtime.controller.subjects import SubjectLedger
from reconciler.runtime.workqueue import WorkQueue

WEB = "VirtualMachine/web"


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ledger_of(queue: WorkQueue, clock: FakeClock, woken: list[tuple[str, str]], **options) -> SubjectLedger:
    def wake(key: str, reason: str) -> None:
        woken.append((key, reason))
        queue.add(key)

    return SubjectLedger(queue, wake, clock=clock, **options)


def test_work_runs_on_a_look_begun_after_its_subjects_last_execution_ended():
    queue, clock, woken = WorkQueue(), FakeClock(), []
    ledger = ledger_of(queue, clock, woken)
    assert queue.take(timeout=0) == [] and queue.claim(WEB)
    assert ledger.start(WEB, looked_at=clock.now - 1, reason="manifests")  # never executed: any look will do
    ledger.end(WEB)
    clock.now += 1

    assert queue.claim(WEB)
    assert ledger.start(WEB, looked_at=clock.now, reason="manifests")
    assert woken == []


def test_work_planned_on_a_look_begun_before_its_last_execution_ended_is_queued_again():
    queue, clock, woken = WorkQueue(), FakeClock(), []
    ledger = ledger_of(queue, clock, woken)
    assert queue.claim(WEB) and ledger.start(WEB, looked_at=clock.now, reason="start")
    looked_at = clock.now + 1  # a pass looks while web's work runs
    clock.now += 2
    ledger.end(WEB)  # and that work ends before the pass hands out web's key

    assert queue.claim(WEB)
    assert not ledger.start(WEB, looked_at=looked_at, reason="manifests")
    assert woken == [(WEB, "manifests")]
    assert queue.in_flight() == set()
    assert queue.take(timeout=0) == [WEB]  # for a pass whose look sees the outcome


def test_a_key_whose_subject_is_held_by_another_key_waits_for_that_execution_to_end():
    queue, clock, woken = WorkQueue(), FakeClock(), []
    ledger = ledger_of(queue, clock, woken, subject_of=lambda key: key.partition(":")[2])
    assert queue.claim("h1:" + WEB) and ledger.start("h1:" + WEB, looked_at=clock.now, reason="start")

    assert queue.claim("h2:" + WEB)
    assert not ledger.start("h2:" + WEB, looked_at=clock.now, reason="manifests")
    assert woken == [] and queue.in_flight() == {"h1:" + WEB}

    ledger.end("h1:" + WEB)
    assert woken == [("h2:" + WEB, "retry")]
    assert queue.take(timeout=0) == ["h2:" + WEB]
