"""Calls to Hosts under a deadline (reconciler.runtime.deadlines): a Host that does not answer in time is
unreachable, the others answer on time, a stuck Host never gets a second thread, and nothing stuck keeps the
process from exiting. (On real libvirt daemons stopped with SIGSTOP: tests/e2e/test_fleet_timeout.py.)"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import pytest

from reconciler import errors
from reconciler.runtime import deadlines


def host(name: str) -> str:
    """Return a Host name no other test uses: the record of outstanding calls is the process's."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


def test_every_host_that_answers_in_time_gives_its_answer():
    a, b = host("a"), host("b")

    answers = deadlines.call_each({a: lambda: 1, b: lambda: 2}, timeout=5, what="being observed")

    assert answers == {a: 1, b: 2}


def test_a_host_that_does_not_answer_in_time_is_timed_out_while_the_others_answer_on_time():
    stuck, fine = host("stuck"), host("fine")
    release = threading.Event()
    started = time.monotonic()

    answers = deadlines.call_each({stuck: release.wait, fine: lambda: "seen"}, timeout=0.3, what="being observed")

    elapsed = time.monotonic() - started
    release.set()
    assert answers[fine] == "seen"
    assert isinstance(answers[stuck], errors.HostTimedOut)
    assert answers[stuck].retryable
    assert isinstance(answers[stuck], errors.ConnectionLost)  # treated as any unreachable host
    assert f"host {stuck} did not answer within 0.3 s while being observed" in str(answers[stuck])
    assert "--host-timeout" in str(answers[stuck])
    assert 0.3 <= elapsed < 2.0


def test_a_host_whose_call_is_still_outstanding_gets_no_second_call():
    stuck = host("stuck")
    release = threading.Event()
    calls = []

    def hang() -> None:
        calls.append(1)
        release.wait()

    deadlines.call_each({stuck: hang}, timeout=0.1, what="being observed")
    started = time.monotonic()
    again = deadlines.call_each({stuck: hang}, timeout=5, what="being observed")

    assert time.monotonic() - started < 1.0  # answered at once, not after another deadline
    assert isinstance(again[stuck], errors.HostTimedOut)
    assert "still has not answered a call begun" in str(again[stuck])
    assert len(calls) == 1
    assert stuck in deadlines.outstanding()
    release.set()
    deadline = time.monotonic() + 5
    while stuck in deadlines.outstanding() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert deadlines.call_each({stuck: lambda: "back"}, timeout=5, what="being observed") == {stuck: "back"}


def test_what_a_call_returns_after_its_deadline_is_handed_to_late():
    stuck = host("stuck")
    release = threading.Event()
    handed: list[str] = []
    got = threading.Event()

    def hang() -> str:
        release.wait()
        return "connection"

    answers = deadlines.call_each({stuck: hang}, timeout=0.1, what="being connected to",
                                  late=lambda value: (handed.append(value), got.set()))
    release.set()

    assert isinstance(answers[stuck], errors.HostTimedOut)
    assert got.wait(5)
    assert handed == ["connection"]


def test_a_kvmops_error_is_the_hosts_answer_and_any_other_exception_is_raised():
    refused, broken = host("refused"), host("broken")

    def refuse() -> None:
        raise errors.ConnectionLost("nobody home")

    assert str(deadlines.call_each({refused: refuse}, timeout=5, what="x")[refused]) == "nobody home"
    with pytest.raises(ZeroDivisionError):
        deadlines.call_each({broken: lambda: 1 / 0}, timeout=5, what="x")


def test_at_most_workers_hosts_are_called_at_once_and_each_deadline_counts_from_its_own_start():
    names = [host(f"h{i}") for i in range(4)]
    running, most = [0], [0]
    lock = threading.Lock()

    def work() -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return "ok"

    answers = deadlines.call_each({name: work for name in names}, timeout=0.5, workers=2, what="x")

    assert answers == {name: "ok" for name in names}  # 0.4 s in all, but no call took 0.5 s
    assert most[0] == 2


def printed_by_a_process_that_exits(program: str) -> str:
    """Return what Python ``program`` printed, once its process has exited 0 within 10 s (its stuck threads abandoned)."""
    started = time.monotonic()

    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)

    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10
    return done.stdout.strip()


def test_a_call_stuck_for_good_does_not_keep_the_process_from_exiting():
    program = (
        "import threading, time\n"
        "from reconciler.runtime import deadlines\n"
        "answers = deadlines.call_each({'h': threading.Event().wait}, timeout=0.2, what='being observed')\n"
        "print(type(answers['h']).__name__)\n"
    )

    assert printed_by_a_process_that_exits(program) == "HostTimedOut"


# --- one call under a deadline (an apply's step) ------------------------------------------------------


def timed_out() -> errors.StepTimedOut:
    return errors.StepTimedOut("define domain web on host h2 did not finish within 0.2 s")


def test_a_call_that_finishes_in_time_gives_its_value_and_a_failing_one_its_error():
    assert deadlines.call_within(lambda: "defined", 5, timed_out) == "defined"
    with pytest.raises(errors.OperationRefused, match="bad XML"):
        deadlines.call_within(lambda: (_ for _ in ()).throw(errors.OperationRefused("bad XML")), 5, timed_out)


def test_a_call_past_its_deadline_is_abandoned_with_the_error_it_is_given_and_may_still_finish():
    release, finished = threading.Event(), threading.Event()

    def hang() -> None:
        release.wait()
        finished.set()

    started = time.monotonic()
    with pytest.raises(errors.StepTimedOut) as abandoned:
        deadlines.call_within(hang, 0.2, timed_out)
    elapsed = time.monotonic() - started

    assert 0.2 <= elapsed < 2.0
    assert abandoned.value.retryable
    assert not isinstance(abandoned.value, errors.ConnectionLost)  # the host answers: only this call is stuck
    release.set()
    assert finished.wait(5)  # nobody waits for it any more, yet it runs to its end


def test_without_a_deadline_the_call_runs_on_the_callers_own_thread():
    assert deadlines.call_within(threading.current_thread, None, timed_out) is threading.current_thread()


def test_the_call_runs_in_the_callers_context():
    import contextvars

    bound = contextvars.ContextVar("bound", default="none")
    bound.set("reconcile-42")

    assert deadlines.call_within(bound.get, 5, timed_out) == "reconcile-42"


def test_a_step_stuck_for_good_does_not_keep_the_process_from_exiting():
    program = (
        "import threading\n"
        "from reconciler import errors\n"
        "from reconciler.runtime import deadlines\n"
        "try:\n"
        "    deadlines.call_within(threading.Event().wait, 0.2, lambda: errors.StepTimedOut('stuck'))\n"
        "except errors.StepTimedOut as exc:\n"
        "    print(exc)\n"
    )

    assert printed_by_a_process_that_exits(program) == "stuck"
