"""A Host whose libvirtd hangs (SIGSTOP: its socket accepts, nothing answers) costs a fleet pass its deadline, no more.

``kvmops plan``, ``apply`` and ``status`` on three lab hosts, one of them stopped, return
within ``--host-timeout`` plus what the other hosts' work takes: the stopped host has its
own section saying it did not answer in time, its pruning waits, its VMs are Unknown and
are placed nowhere else, and the other hosts converge. Once it runs again (SIGCONT) the
next apply converges it. The controller (``kvmops run``) does the same pass after pass,
without piling up threads on the stopped host.

Stopped in the middle of an apply, after it was observed (a fleet's host, or the one host
of a single-host apply with a remote URI): the step waiting on it fails once the
connection's keepalive gives up (about ``--host-timeout``), its other steps are not begun,
the other hosts converge, and the next apply after SIGCONT converges. Before keepalives
were set on one-shot commands' connections, such an apply waited for ever.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import libvirt
import pytest
import yaml

from reconciler.adapters import hypervisor as hv
from reconciler.core import fleet as fleets
from reconciler.core import model
from reconciler.runtime import deadlines, fleet_reconcile, reconcile

from tests import factories
from tests.e2e.test_fleet import REPOSITORY, LabFleet, declared_fleet
from tests.e2e.test_fleet_controller import eventually, free_port, running, status, stop

pytestmark = pytest.mark.e2e

TIMEOUT = 3  # --host-timeout: short, so that the test is quick; the default is 10 s
DEFAULT_SILENCE = 10  # without --host-timeout: a silent libvirtd is given up after 10 s (keepalive 2 s x (4 + 1))
SLACK = 20  # a command's start-up, and the other hosts' observation (TCG lab hosts on a shared machine)


@pytest.fixture
def fleet(lab, tmp_path):
    """Return the session's three lab hosts as a fleet; every host runs and is cleaned up afterwards."""
    with declared_fleet(lab, tmp_path, "t") as world:
        try:
            yield world
        finally:
            for host in lab.hosts:
                host.resume_libvirtd()  # whatever happened: a stopped libvirtd would hang the cleanup


def timed(world: LabFleet, *argv: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = world.kvmops(*argv, timeout=TIMEOUT + SLACK + 120)
    return done, time.monotonic() - started


def section(text: str, host: str) -> str:
    return text.split(f"Host {host}", 1)[1].split("\nHost ", 1)[0]


def test_a_stopped_libvirtd_costs_plan_apply_and_status_the_deadline_and_the_others_converge(fleet):
    world = fleet
    world.write_vms([world.vm(1)], file="h1.yaml", host="h1")
    world.write_vms([world.vm(2), world.vm(3)], file="h2.yaml", host="h2")
    world.write_vms([world.vm(4)], file="h3.yaml", host="h3")
    first = world.kvmops("apply", str(world.manifests))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]

    stopped = world.lab_host("h2")
    assert stopped.pause_libvirtd()
    try:
        world.write_vms([world.vm(2)], file="h2.yaml", host="h2")  # vm3's manifest is gone: h2 would prune it
        world.write_vms([world.vm(1), world.vm(5)], file="h1.yaml", host="h1")
        world.write_vms([world.vm(4), world.vm(6)], file="h3.yaml", host="h3")
        timeout = ("--host-timeout", str(TIMEOUT))

        plan, plan_took = timed(world, "plan", str(world.manifests), *timeout)
        applied, apply_took = timed(world, "apply", str(world.manifests), *timeout)
        shown, status_took = timed(world, "status", "--manifests", str(world.manifests), *timeout)
        json_status, _ = timed(world, "status", "--manifests", str(world.manifests), "-o", "json", *timeout)
        while_stopped = {name: domains_on(world, name) for name in ("h1", "h3")}  # (h2 would not answer us either)
    finally:
        stopped.resume_libvirtd()
    print(f"plan {plan_took:.1f} s, apply {apply_took:.1f} s, status {status_took:.1f} s with h2 stopped")

    why = f"host h2 did not answer within {TIMEOUT} s while being"
    assert plan.returncode == 1, plan.stdout[-3000:] + plan.stderr[-2000:]
    assert plan_took < TIMEOUT + SLACK
    assert why in section(plan.stdout, "h2") and "UNREACHABLE" in section(plan.stdout, "h2")
    assert f"+ VirtualMachine {world.vm(5)}" in section(plan.stdout, "h1")
    assert f"+ VirtualMachine {world.vm(6)}" in section(plan.stdout, "h3")

    assert applied.returncode == 1, applied.stdout[-3000:] + applied.stderr[-2000:]
    assert apply_took < TIMEOUT + SLACK + 60  # + creating and starting two VMs
    assert "Traceback" not in applied.stderr
    assert why in applied.stdout and "unreachable: h2" in applied.stdout
    assert while_stopped == {"h1": {world.vm(1), world.vm(5)}, "h3": {world.vm(4), world.vm(6)}}

    assert shown.returncode == 1 and status_took < TIMEOUT + SLACK
    assert why in section(shown.stdout, "h2")
    hosts = {entry["host"]: entry for entry in json.loads(json_status.stdout)["hosts"]}
    assert why in hosts["h2"]["unreachable"]
    assert sorted(hosts["h2"]["unknown"]) == [world.vm(2)]
    assert {vm["name"] for vm in hosts["h1"]["vms"]} == {world.vm(1), world.vm(5)}

    placed = world.domains()  # h2 answers again: nothing of it went elsewhere, and vm3 waited for it
    assert placed["h2"] == {world.vm(2), world.vm(3)}
    assert placed["h1"] == {world.vm(1), world.vm(5)} and placed["h3"] == {world.vm(4), world.vm(6)}

    after = world.kvmops("apply", str(world.manifests), *timeout)

    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-2000:]
    assert world.domains()["h2"] == {world.vm(2)}
    assert world.kvmops("plan", str(world.manifests), "--detailed-exitcode").returncode == 0


def test_the_controller_goes_on_converging_the_others_while_a_libvirtd_is_stopped(fleet):
    world = fleet
    world.write_vms([world.vm(1)], file="h1.yaml", host="h1")
    world.write_vms([world.vm(2)], file="h2.yaml", host="h2")
    port = free_port()
    controller = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", str(world.manifests), "--listen", f"127.0.0.1:{port}",
         "--resync-interval", "300", "--state-dir", str(world.state_dir), "--host-timeout", str(TIMEOUT)],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_COLOR": "1"})
    stopped = world.lab_host("h2")
    try:
        assert eventually(lambda: running(world, "h1", world.vm(1)) and running(world, "h2", world.vm(2)), 120)
        assert eventually(lambda: status(port)["converged"] is True, 60)

        assert stopped.pause_libvirtd()
        paused_at = time.monotonic()
        world.write_vms([world.vm(1), world.vm(3)], file="h1.yaml", host="h1")  # a pass: it looks at h2 too

        assert eventually(lambda: running(world, "h1", world.vm(3)), TIMEOUT + SLACK + 30)
        converged_h1 = time.monotonic() - paused_at
        assert eventually(lambda: status(port)["hosts"]["h2"]["connected"] is False, TIMEOUT + SLACK)
        section = status(port)["hosts"]["h2"]
        # its keepalive gave up (about --host-timeout); reconnecting then waits as long for it, and says so
        assert (section["error"] == "connection closed: keepalive timeout"
                or f"host h2 did not answer within {TIMEOUT:g} s while being connected to" in section["error"]), section
        assert [vm["state"] for vm in section["vms"]] == ["Unknown"]
        assert section["prune_suspended"].startswith("host unreachable")
        before = threads(controller.pid)
        for _ in range(4):  # passes go on, each woken by a manifest change; none piles up a thread on h2
            world.write_vms([world.vm(1), world.vm(3)], file="h1.yaml", host="h1")
            time.sleep(TIMEOUT)
        print(f"h1 converged {converged_h1:.1f} s after h2 stopped; threads {before} -> {threads(controller.pid)}")
        assert threads(controller.pid) <= before + 1
    finally:
        stopped.resume_libvirtd()
    try:
        assert eventually(lambda: status(port)["converged"] is True, 90), status(port)
    finally:
        err = stop(controller)
    assert controller.returncode == 0, err[-3000:]


def threads(pid: int) -> int:
    """Return how many threads process ``pid`` has."""
    return len(os.listdir(f"/proc/{pid}/task"))


def domains_on(world: LabFleet, host: str) -> set[str]:
    with hv.Hypervisor.open(world.lab_host(host).uri, read_only=True) as hypervisor:
        return {r.name for r in hypervisor.list_domains() if r.name.startswith(world.prefix)}


def test_a_host_that_stops_answering_once_connected_is_abandoned_once_its_keepalive_gives_up(fleet):
    """The other way to hang: connected in time, then nothing (SIGSTOP between connecting and observing)."""
    world = fleet
    desired = reconcile.load_desired(str(world.manifests))
    stopped = world.lab_host("h2")
    with fleet_reconcile.connect(desired, read_only=True, timeout=TIMEOUT) as connections:
        assert sorted(connections.hypervisors) == ["h1", "h2", "h3"]
        assert stopped.pause_libvirtd()
        try:
            started = time.monotonic()
            observed = fleet_reconcile.observe_all(connections)
            took = time.monotonic() - started
            again = fleet_reconcile.observe_all(connections)  # the stuck Host is not looked at twice
        finally:
            stopped.resume_libvirtd()
        assert took < TIMEOUT + 5  # its keepalive gave up: a silent Host is not waited for as long as a busy one
        assert isinstance(observed["h2"], fleets.HostUnreachable)
        assert "libvirtd stopped answering (no reply to keepalive probes" in observed["h2"].error
        assert all(isinstance(observed[name], model.ActualState) for name in ("h1", "h3"))
        assert "h2" in connections.abandoned and "h2" not in connections.hypervisors
        assert again["h2"] == observed["h2"]
    deadline = time.monotonic() + 30
    while "h2" in deadlines.outstanding() and time.monotonic() < deadline:  # once it runs, the abandoned look ends
        time.sleep(0.1)
    assert "h2" not in deadlines.outstanding()


@contextlib.contextmanager
def paused_once_defining(daemon) -> Iterator[threading.Event]:
    """SIGSTOP lab libvirtd ``daemon`` as soon as a new domain is defined on it (an apply has begun there), once.

    Yields the event set once it is stopped (or once the block ends); on leaving, the
    daemon runs again (SIGCONT).
    """
    watcher = libvirt.open(daemon.uri)
    before = set(watcher.listDefinedDomains())
    paused = threading.Event()

    def pause_once_busy() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not paused.is_set():
            with contextlib.suppress(libvirt.libvirtError):
                if set(watcher.listDefinedDomains()) - before:
                    daemon.pause_libvirtd()
                    paused.set()
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=pause_once_busy, daemon=True)
    thread.start()
    try:
        yield paused
    finally:
        paused.set()
        thread.join()
        daemon.resume_libvirtd()  # (a SIGCONT to a daemon that runs changes nothing)
        watcher.close()


def write_halted(world: LabFleet, names: list[str], file: str, host: str) -> None:
    """Declare VMs pinned to ``host`` that are defined, with their disk, and never started (no guest boots)."""
    documents = [{
        "apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {"memory": "64MiB", "virtType": "qemu", "runStrategy": "Halted", "placement": {"host": host},
                 "disks": [{"name": "root", "pool": world.pool, "size": "8MiB", "deletionPolicy": "Delete"}]},
    } for name in names]
    (world.manifests / file).write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")


def test_a_libvirtd_stopped_in_the_middle_of_an_apply_fails_its_host_in_bounded_time_and_the_others_converge(fleet):
    """SIGSTOP while the apply works on h2 (steps on every host): the step waiting on h2 fails once the connection's
    keepalive gives up, h2's other steps are not begun, h1 and h3 converge, the command exits 1 naming h2; after
    SIGCONT the next apply converges and the plan is empty. (Before keepalives, the apply waited for ever.)"""
    world = fleet
    for index, host in enumerate(("h1", "h2", "h3")):
        write_halted(world, [world.vm(index * 10 + 1)], f"{host}.yaml", host)
    first = world.kvmops("apply", str(world.manifests))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]

    # h2 gets six new VMs, made one at a time: the stop lands while most of its steps are still to come
    wanted = {host: [world.vm(index * 10 + n) for n in range(1, 8 if host == "h2" else 3)]
              for index, host in enumerate(("h1", "h2", "h3"))}
    for host, names in wanted.items():
        write_halted(world, names, f"{host}.yaml", host)
    stopped = world.lab_host("h2")
    with paused_once_defining(stopped):
        started = time.monotonic()
        try:
            applied = world.kvmops("apply", str(world.manifests), "--host-timeout", str(TIMEOUT), "--parallel", "1",
                                   timeout=TIMEOUT + SLACK + 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"kvmops apply still ran {TIMEOUT + SLACK + 60} s after it started, h2 stopped: it hangs")
        took = time.monotonic() - started
        while_stopped = {name: domains_on(world, name) for name in ("h1", "h3")}  # (h2 would not answer us)
    report = applied.stdout.split("Applying...", 1)[-1]  # (the plan comes first, with sections of its own)
    h2 = section(report, "h2")
    in_flight = [line.strip() for line in h2.splitlines() if "FAILED:" in line]
    print(f"apply returned {took:.1f} s after it started, h2 stopped during {in_flight}; exit {applied.returncode}")
    print(h2)

    assert stopped.libvirtd_pid is not None
    assert applied.returncode == 1, applied.stdout[-3000:] + applied.stderr[-2000:]
    assert took < TIMEOUT + SLACK
    assert "Traceback" not in applied.stderr
    assert "libvirtd stopped answering (no reply to keepalive probes" in h2, h2
    assert "host h2 was lost in the middle of the apply" in h2
    assert "unreachable: h2" in report.splitlines()[-1]
    assert while_stopped == {"h1": set(wanted["h1"]), "h3": set(wanted["h3"])}
    for name in ("h1", "h3"):
        assert "✗" not in section(report, name) and "FAILED" not in section(report, name), section(report, name)

    after = world.kvmops("apply", str(world.manifests), "--host-timeout", str(TIMEOUT))

    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-2000:]
    placed = world.domains()
    assert placed == {host: set(names) for host, names in wanted.items()}
    assert world.kvmops("plan", str(world.manifests), "--detailed-exitcode").returncode == 0


def test_a_single_host_apply_on_a_libvirtd_stopped_in_the_middle_returns_after_the_default_host_timeout(lab, lab_host):
    """No Host manifests, one remote URI (a lab host), default settings: the step waiting on the stopped libvirtd
    fails once the keepalive gives up (--host-timeout, 10 s), the other VMs are not begun, the report says what was
    done and that the result could not be checked, exit 1; after SIGCONT the next apply converges."""
    host, daemon = lab_host, lab.hosts[0]
    pool = factories.pool(host.pool, str(host.pool_path))

    def vms(count: int) -> list[dict]:
        return [factories.vm(host.name(f"vm{n}"), virtType="qemu", runStrategy="Halted",
                             disks=[factories.disk("root", host.pool, "8MiB", deletionPolicy="Delete")])
                for n in range(1, count + 1)]

    factories.write(host.manifests, "all.yaml", pool, *vms(1))
    assert host.kvmops("apply", str(host.manifests)).returncode == 0
    factories.write(host.manifests, "all.yaml", pool, *vms(7))  # six new, one at a time: most still to come
    with paused_once_defining(daemon) as paused:
        started = time.monotonic()
        try:
            applied = host.kvmops("apply", str(host.manifests), "--parallel", "1", timeout=DEFAULT_SILENCE + SLACK + 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"kvmops apply still ran {DEFAULT_SILENCE + SLACK + 60} s after it started: it hangs")
        took = time.monotonic() - started
        stopped_it = paused.is_set()
    print(f"single-host apply returned {took:.1f} s after it started, libvirtd stopped mid-apply; "
          f"exit {applied.returncode}")
    print(applied.stdout.split("Applying...", 1)[-1])

    assert stopped_it, "the apply ended before anything was defined"
    assert applied.returncode == 1, applied.stdout[-3000:] + applied.stderr[-2000:]
    assert DEFAULT_SILENCE <= took < DEFAULT_SILENCE + SLACK
    assert "libvirtd stopped answering (no reply to keepalive probes" in applied.stdout
    assert "The connection to libvirtd was lost, so the result could not be checked" in applied.stdout
    assert "not begun: the connection to libvirtd was lost while VirtualMachine" in applied.stdout
    assert "Traceback" not in applied.stderr

    again = host.kvmops("apply", str(host.manifests))

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert {host.name(f"vm{n}") for n in range(1, 8)} <= set(host.connection.listDefinedDomains())
    assert host.kvmops("plan", str(host.manifests), "--detailed-exitcode").returncode == 0
