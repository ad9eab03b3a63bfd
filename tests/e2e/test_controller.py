"""The controller (``kvmops run``) on a real libvirtd with QEMU: a host kept converged without any command.

Each test starts the controller as a separate process, exactly as an operator would
(``kvmops --log-format json run DIR --connect URI --listen 127.0.0.1:0 --resync-interval 600
--state-dir DIR --shutdown-timeout 1``), changes the world behind its back (manifest files, ``virsh destroy``,
a restart of the session's lab libvirtd, a held host lock, SIGTERM), and then looks at the world itself: domains
through libvirt, ``/status``, ``/healthz`` and ``/metrics`` over HTTP, the JSON log lines on
its stderr and the ``sd_notify`` datagrams it sends.  The resync interval is ten minutes, so
everything a test sees within seconds was caused by a file event, a libvirt event or a
reconnection, never by the periodic safety net.

The guests boot nothing (empty disks, they sit in SeaBIOS), so an ACPI shutdown is ignored
and every stop is a ``shutdownTimeout`` wait followed by a destroy.  Pruning a VM whose
manifest is gone has no manifest to take ``shutdownTimeout: 1`` from, so the controller gets
``--shutdown-timeout 1`` as well (its default is 60 s).

The host is shared with other people's runs, so each controller runs in the test's own
scope (``--scope <prefix>``): it prunes only what it created and never touches the domains
other scopes own.  Everything (the event loop, the work queue, planning, execution, the
HTTP listener) is the shipped command.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

from reconciler.runtime import hostlock
from tests import factories
from tests.e2e import labfleet
from tests.e2e.labfleet import qemu_pid

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

# --- the controller process -------------------------------------------------------------


@dataclass
class Controller:
    """One ``kvmops run`` process: its log, its HTTP endpoints, its exit."""

    process: subprocess.Popen
    log_path: Path
    address: str = ""
    token: str | None = None  # the listener's bearer token, when it was started with one
    exit_seconds: float | None = field(default=None, repr=False)

    # -- the log (JSON lines on stderr) --

    def log_text(self) -> str:
        """Return everything the process wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def records(self) -> list[dict]:
        """Return the JSON log records written so far, in order."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def mark(self) -> int:
        """Return a position in the log: later searches can start from it."""
        return len(self.records())

    def events(self, name: str, *, since: int = 0, **fields) -> list[dict]:
        """Return the records of event ``name`` from position ``since`` on whose ``fields`` match."""
        return [r for r in self.records()[since:]
                if r.get("event") == name and all(r.get(k) == v for k, v in fields.items())]

    def wait_for(self, name: str, *, since: int = 0, timeout: float = 15.0, where=lambda record: True, **fields) -> dict:
        """Return the first record of event ``name`` after ``since`` matching ``fields`` and ``where``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.events(name, since=since, **fields) if where(r)]
            if found:
                return found[0]
            if self.process.poll() is not None:
                raise AssertionError(f"controller exited ({self.process.returncode}) before logging {name}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} {fields} within {timeout}s; log:\n{self.log_text()}")
            time.sleep(0.05)

    def passes(self, *, since: int = 0, trigger: str | None = None) -> list[dict]:
        """Return the ``reconcile_finished`` records after ``since`` (with ``trigger`` among their triggers)."""
        return [r for r in self.events("reconcile_finished", since=since)
                if trigger is None or trigger in r.get("trigger", "").split(",")]

    def crashes(self) -> list[str]:
        """Return what betrays a crash: lines that are not JSON records (a traceback, ``kvmops: error: ...``), crashed executions."""
        found = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                found.append(line)
                continue
            if not isinstance(record, dict) or record.get("event") == "execution_crashed":
                found.append(line)
        return found

    # -- HTTP --

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        """Return (status, body) of GET ``path`` on the controller's listener (with ``token`` as a bearer token)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://{self.address}{path}", headers=headers),
                                        timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def healthz(self) -> int:
        """Return the HTTP status of ``/healthz``."""
        return self.get("/healthz", self.token)[0]

    def status(self) -> dict:
        """Return the ``/status`` document."""
        code, body = self.get("/status", self.token)
        assert code == 200, body
        return json.loads(body)

    def metric(self, name: str, **labels: str) -> float:
        """Return the value of one ``/metrics`` series (0 when absent)."""
        rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        series = f"{name}{{{rendered}}}" if labels else name
        for line in self.get("/metrics", self.token)[1].splitlines():
            key, _, value = line.rpartition(" ")
            if key == series:
                return float(value)
        return 0.0

    # -- the end --

    def terminate(self, timeout: float = 10.0) -> int:
        """Send SIGTERM; return the exit status (SIGKILL after ``timeout`` seconds, then fail)."""
        if self.process.poll() is None:
            started = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
                raise AssertionError(f"controller still running {timeout}s after SIGTERM; killed it. Log:\n{self.log_text()}")
            self.exit_seconds = time.monotonic() - started
        return self.process.returncode


@pytest.fixture
def run_controller(host):
    """Return ``start(*flags, env=...)``: start ``kvmops run`` on the test's manifests and wait for its first pass.

    Every controller started is stopped afterwards (SIGTERM, then SIGKILL) and its log printed,
    so a failing test shows what the controller said.
    """
    with controllers(host) as start:
        yield start


@pytest.fixture
def run_lab_controller(lab_host):
    """Return ``start`` as :func:`run_controller` does, for a controller of the session's lab libvirtd."""
    with controllers(lab_host) as start:
        yield start


@contextlib.contextmanager
def controllers(host):
    """Yield ``start`` for controllers of ``host``; stop them all and print their logs at the end."""
    started: list[Controller] = []

    def start(*flags: str, env: dict[str, str] | None = None, token: str | None = None) -> Controller:
        log_path = host.workdir / f"controller-{len(started)}.log"
        argv = [
            sys.executable, "-m", "reconciler", "--log-format", "json", "run", str(host.manifests),
            "--scope", host.prefix, "--connect", host.uri, "--listen", "127.0.0.1:0", "--resync-interval", "600",
            "--state-dir", str(state_dir(host)), "--shutdown-timeout", "1", *flags,
        ]
        environment = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        environment.update(host.env, **(env or {}))
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       env=environment, cwd=REPOSITORY)
        controller = Controller(process, log_path, token=token)
        started.append(controller)
        controller.address = controller.wait_for("listener_started", timeout=30)["address"]
        controller.wait_for("reconcile_finished", timeout=30)
        assert host.wait(lambda: controller.healthz() in (200, 503), 10)
        return controller

    try:
        yield start
    finally:
        stop_and_print(started)


def stop_and_print(started: list[Controller]) -> None:
    """Stop every controller (SIGTERM, then SIGKILL) and print its log."""
    for controller in started:
        if controller.process.poll() is None:
            controller.process.send_signal(signal.SIGTERM)
            try:
                controller.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                controller.process.kill()
                controller.process.wait(timeout=30)
        print(f"--- controller log ({controller.log_path.name}, exit {controller.process.returncode}) ---")
        print(controller.log_text())


def state_dir(host) -> Path:
    """Return the directory of the test's host lock (shared by the controller and ``kvmops apply``)."""
    return host.workdir / "state"


# --- manifests and the world -------------------------------------------------------------


def vm(host, suffix: str, **spec) -> dict:
    """Return a tiny TCG VirtualMachine document named with the test's prefix."""
    spec.setdefault("virtType", "qemu")
    spec.setdefault("shutdownTimeout", 1)
    return factories.vm(host.name(suffix), **spec)


def write_vm(host, suffix: str, **spec) -> Path:
    """Write ``vms/<suffix>.yaml`` declaring one VM."""
    return factories.write(host.manifests, f"vms/{suffix}.yaml", vm(host, suffix, **spec))


def write_pool(host) -> Path:
    """Declare the test's storage pool in ``pools/pool.yaml``."""
    return factories.write(host.manifests, "pools/pool.yaml", factories.pool(host.pool, str(host.pool_path)))


def inactive_memory_mib(host, name: str) -> float | None:
    """Return the memory of domain ``name``'s persistent definition in MiB, or None if it is gone."""
    domain = host.domain(name)
    if domain is None:
        return None
    memory = ET.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("memory")
    assert memory.get("unit", "KiB") == "KiB"
    return int(memory.text) / 1024


def running(host, name: str) -> bool:
    """Return whether domain ``name`` is running: started and resumed, not merely active.

    libvirt calls a domain active as soon as its QEMU is spawned (paused, "starting up"),
    before the start has succeeded; touching it then makes the start fail.
    """
    domain = host.domain(name)
    try:
        return domain is not None and domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    except libvirt.libvirtError:
        return False


def wait_started(host, controller: Controller, name: str, *, since: int = 0, timeout: float = 20.0) -> None:
    """Wait until the controller has started domain ``name`` and it runs."""
    controller.wait_for("domain_started", since=since, vm=name, timeout=timeout)
    assert host.wait(lambda: running(host, name), 5), controller.log_text()


def is_defined_and_off(host, name: str) -> bool:
    """Return whether domain ``name`` exists and is shut off."""
    domain = host.domain(name)
    return domain is not None and domain.isActive() == 0


# --- manifests in, domains out ---------------------------------------------------------


def test_writing_editing_and_deleting_a_manifest_file_creates_redefines_and_prunes_its_vm(host, run_controller):
    """A new manifest file gives a running domain, a memory edit redefines it keeping its UUID, and deleting the file undefines it, without any command."""
    write_pool(host)
    write_vm(host, "anchor", runStrategy="Halted")  # the manifests never declare no VM at all
    controller = run_controller()
    web, anchor = host.name("web"), host.name("anchor")
    assert host.wait(lambda: is_defined_and_off(host, anchor), 15)

    mark = controller.mark()
    write_vm(host, "web", disks=[factories.disk("root", host.pool, "64MiB")])
    wait_started(host, controller, web, since=mark)
    uuid = host.domain(web).UUIDString()
    assert host.volume_capacity(f"{web}-root.qcow2") == 64 * MIB
    assert inactive_memory_mib(host, web) == 64
    assert host.wait(lambda: controller.status()["vms"].get(web, {}).get("actual") == "running", 10)
    entry = controller.status()["vms"][web]
    assert (entry["manifest"], entry["desired"], entry["uuid"]) == ("vms/web.yaml", "running", uuid), entry
    assert controller.events("domain_defined", since=mark, vm=web)
    assert controller.passes(since=mark, trigger="manifests")

    mark = controller.mark()
    write_vm(host, "web", memory="96MiB", disks=[factories.disk("root", host.pool, "64MiB")])
    assert host.wait(lambda: inactive_memory_mib(host, web) == 96, 20), controller.log_text()
    assert host.domain(web).UUIDString() == uuid
    assert controller.wait_for("domain_defined", since=mark, vm=web)

    mark = controller.mark()
    (host.manifests / "vms" / "web.yaml").unlink()
    assert host.wait(lambda: host.domain(web) is None, 30), controller.log_text()
    assert controller.wait_for("domain_undefined", since=mark, vm=web)
    assert is_defined_and_off(host, anchor)
    assert host.wait(lambda: web not in controller.status()["vms"], 5)
    assert host.volume_capacity(f"{web}-root.qcow2") == 64 * MIB  # deletionPolicy Retain: the disk stays
    assert controller.crashes() == []


# --- drift made by hand ----------------------------------------------------------------


def test_a_destroyed_always_vm_is_running_again_within_two_seconds(host, run_controller):
    """With the resync ten minutes away, ``virsh destroy`` of a ``runStrategy: Always`` VM is undone by its libvirt event within 2 s."""
    write_vm(host, "web", runStrategy="Always")
    controller = run_controller()
    web = host.name("web")
    wait_started(host, controller, web)
    uuid = host.domain(web).UUIDString()
    repairs = controller.metric("kvmops_drift_repairs_total")
    mark = controller.mark()

    host.domain(web).destroy()
    destroyed = time.monotonic()
    while not running(host, web) and time.monotonic() - destroyed < 10:
        time.sleep(0.02)
    back_after = time.monotonic() - destroyed

    assert back_after < 2.0, f"running again only after {back_after:.2f}s\n{controller.log_text()}"
    assert host.domain(web).UUIDString() == uuid
    repair = controller.wait_for("drift_repaired", since=mark, vm=web)
    assert (repair["trigger"], repair["actions"]) == ("libvirt", ["start"]), repair
    assert controller.metric("kvmops_drift_repairs_total") == repairs + 1
    assert controller.passes(since=mark, trigger="resync") == []
    assert controller.crashes() == []


OTHER_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><memballoon model='none'/></devices></domain>"""


@contextlib.contextmanager
def churning(host, count: int, threads: int = 2):
    """Keep ``count`` transient guests nobody manages being destroyed and created again, in turn, on their own connections.

    Yields the counter of finished creates and destroys.  Every guest is destroyed at the end.
    """
    names = [host.name(f"other-{i:02d}") for i in range(count)]
    stop = threading.Event()
    done = [0]

    def work(mine: list[str]) -> None:
        connection = libvirt.open(host.uri)
        try:
            while not stop.is_set():
                for name in mine:
                    with contextlib.suppress(libvirt.libvirtError):
                        connection.lookupByName(name).destroy()
                        done[0] += 1
                    with contextlib.suppress(libvirt.libvirtError):
                        connection.createXML(OTHER_XML.format(name=name), 0)
                        done[0] += 1
                    if stop.is_set():
                        break
        finally:
            connection.close()

    workers = [threading.Thread(target=work, args=(names[i::threads],), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield done
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
        for name in names:
            domain = host.domain(name)
            with contextlib.suppress(libvirt.libvirtError):
                if domain is not None:
                    domain.destroy()


def test_a_destroyed_vm_is_repaired_by_a_pass_that_looks_at_it_alone_while_other_guests_churn(host, run_controller):
    """While other guests are destroyed and created all the time, ``virsh destroy`` of a managed VM is repaired by a pass observing that VM only, not the host."""
    write_vm(host, "web", runStrategy="Always")
    controller = run_controller()
    web = host.name("web")
    wait_started(host, controller, web)

    with churning(host, 8) as done:
        assert host.wait(lambda: done[0] >= 8, 60), "the other guests never started"
        mark = controller.mark()
        host.domain(web).destroy()
        destroyed = time.monotonic()
        assert host.wait(lambda: running(host, web), 30), controller.log_text()
        back_after = time.monotonic() - destroyed
        churned = done[0]

    repair = controller.wait_for("drift_repaired", since=mark, vm=web)
    assert (repair["trigger"], repair["actions"]) == ("libvirt", ["start"]), repair
    repairing = [p for p in controller.passes(since=mark, trigger="libvirt") if p["changes"]][0]
    assert repairing["observed"] == "vms", repairing
    assert churned > 8, f"the other guests stood still ({churned} creates and destroys)"
    assert controller.passes(since=mark, trigger="resync") == []
    assert controller.crashes() == []
    print(f"running again {back_after:.2f}s after the destroy; repair pass {repairing}; {churned} creates and destroys")


def test_a_halted_vm_started_by_hand_is_stopped_again_gracefully_then_forcefully(host, run_controller):
    """A ``runStrategy: Halted`` VM started by hand is stopped again: an ACPI request, ``shutdownTimeout`` (1 s) of patience, then a destroy."""
    write_vm(host, "web", runStrategy="Halted")
    controller = run_controller()
    web = host.name("web")
    assert host.wait(lambda: is_defined_and_off(host, web), 15)
    mark = controller.mark()

    host.domain(web).create()
    started = time.monotonic()
    assert host.wait(lambda: not host.is_running(web), 10), controller.log_text()
    off_after = time.monotonic() - started

    assert off_after >= 1.0, f"stopped after {off_after:.2f}s: the guest did not get its shutdownTimeout"
    stopped = controller.wait_for("domain_stopped", since=mark, vm=web)
    assert stopped["detail"].startswith("destroyed: the guest did not power off within 1s"), stopped
    repair = controller.wait_for("drift_repaired", since=mark, vm=web)
    # woken by the start's event, or by the second look at a VM the event's pass saw still starting
    assert repair["trigger"] in ("libvirt", "transition") and repair["actions"] == ["stop"], repair
    assert host.wait(lambda: controller.status()["vms"][web]["actual"] == "shutoff", 5), controller.status()
    assert controller.crashes() == []


# --- libvirtd restarting under the controller -------------------------------------------


def test_after_a_libvirtd_restart_the_controller_reconnects_and_repairs_what_changed_meanwhile(lab, lab_host, run_lab_controller):
    """When libvirtd restarts, the controller reports the loss (log, /healthz 503), reconnects, and repairs a manifest edit and a dead QEMU from the downtime.

    The libvirtd that restarts is the session's lab daemon, never the machine's.
    """
    host, daemon = lab_host, lab.hosts[0]
    write_vm(host, "web", runStrategy="Always")
    controller = run_lab_controller()
    web = host.name("web")
    wait_started(host, controller, web)
    assert host.wait(lambda: controller.healthz() == 200, 10)
    uuid = host.domain(web).UUIDString()
    old_qemu = qemu_pid(web)
    assert old_qemu is not None
    mark = controller.mark()

    healthz_while_down = None
    try:
        assert daemon.kill_libvirtd(signal.SIGTERM)
        # Drift while nobody watches libvirt: a manifest edit, and the guest's QEMU dying.
        write_vm(host, "web", memory="96MiB")
        os.kill(old_qemu, signal.SIGKILL)
        controller.wait_for("libvirt_disconnected", since=mark, timeout=5)
        healthz_while_down = controller.get("/healthz")
    finally:
        daemon.restart_libvirtd()

    assert healthz_while_down[0] == 503 and "not connected to libvirtd" in healthz_while_down[1], healthz_while_down
    controller.wait_for("libvirt_reconnected", since=mark, timeout=20)
    assert host.wait(lambda: controller.healthz() == 200, 20), controller.log_text()
    assert host.wait(lambda: inactive_memory_mib(host, web) == 96, 20), controller.log_text()
    wait_started(host, controller, web, since=mark)
    assert qemu_pid(web) not in (None, old_qemu)
    assert host.domain(web).UUIDString() == uuid
    assert controller.passes(since=mark, trigger="reconnect") or controller.passes(since=mark, trigger="manifests")
    assert controller.status()["connected"] is True
    assert controller.metric("kvmops_connected") == 1
    assert controller.process.poll() is None
    assert controller.crashes() == []


def test_a_vm_whose_start_a_libvirtd_restart_cut_short_is_started_again_without_waiting_for_the_resync(
        lab, lab_host, run_lab_controller):
    """A restarted libvirtd kills a guest it was starting and says nothing; the controller, which saw it starting, looks again and starts it.

    Measured on libvirt 9.0: the restarted daemon shows the domain paused ("starting up")
    until it has reached its QEMU, then shuts it off (reason "daemon") without a lifecycle
    event. The controller took "paused" for a VM someone paused and left it off until the
    resync (ten minutes here). The half-started QEMU is held stopped until the controller
    has looked at the host after reconnecting, and retried the start that failed, so that
    both looks fall inside that window.
    """
    host, daemon = lab_host, lab.hosts[0]
    write_vm(host, "web", runStrategy="Always")
    controller = run_lab_controller()
    web = host.name("web")
    wait_started(host, controller, web)

    mark = controller.mark()
    stopped_qemu = labfleet.kill_libvirtd_in_a_start(daemon, web)
    try:
        daemon.restart_libvirtd()
        controller.wait_for("libvirt_reconnected", since=mark, timeout=30)
        controller.wait_for("reconcile_finished", since=mark, timeout=30, where=lambda r: r["observed"] == "host")
        time.sleep(3)  # past the retry of the start that failed (0.5 s after it), which looks at the whole host too
        assert controller.status()["vms"][web]["actual"] == "transitional", controller.log_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped_qemu, signal.SIGCONT)

    assert host.wait(lambda: running(host, web), 30), controller.log_text()
    assert qemu_pid(web) not in (None, stopped_qemu)
    assert controller.passes(since=mark, trigger="transition")
    assert controller.crashes() == []


# --- broken manifests -------------------------------------------------------------------


def test_a_manifest_broken_while_running_suspends_pruning_until_it_is_fixed(host, run_controller):
    """A manifest made invalid prunes nothing and is reported in /status, the log and /healthz (503); fixing it resumes work."""
    write_vm(host, "keep", runStrategy="Halted")
    write_vm(host, "web", runStrategy="Always")
    controller = run_controller()
    web, keep = host.name("web"), host.name("keep")
    wait_started(host, controller, web)
    assert host.wait(lambda: is_defined_and_off(host, keep), 10)
    assert host.wait(lambda: controller.healthz() == 200, 10)
    uuid = host.domain(web).UUIDString()
    mark = controller.mark()

    broken = host.manifests / "vms" / "web.yaml"
    broken.write_text(
        f"apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata:\n  name: {web}\nspec:\n  memory: [64MiB\n",
        encoding="utf-8",
    )
    problem = controller.wait_for("manifest_problem", since=mark)
    assert problem["file"].endswith("web.yaml"), problem
    suspended = controller.wait_for("pruning_suspended", since=mark)
    assert web in suspended["kept"], suspended
    controller.wait_for("reconcile_finished", since=mark, where=lambda r: r["problems"] > 0)
    time.sleep(1.0)  # time enough to prune, were the controller going to

    status = controller.status()
    assert status["prune_suspended"] and "problem" in status["prune_suspended"], status
    assert any("web.yaml" in p for p in status["problems"]), status
    code, why = controller.get("/healthz")
    assert code == 503 and "manifest problem" in why, why
    assert controller.metric("kvmops_manifest_problems") >= 1
    assert running(host, web) and host.domain(web).UUIDString() == uuid
    assert is_defined_and_off(host, keep)
    assert controller.events("domain_undefined", since=mark) == []

    mark = controller.mark()
    write_vm(host, "web", runStrategy="Always", memory="96MiB")
    controller.wait_for("manifest_problems_resolved", since=mark)
    controller.wait_for("pruning_resumed", since=mark)
    assert host.wait(lambda: inactive_memory_mib(host, web) == 96, 20), controller.log_text()
    assert host.wait(lambda: controller.healthz() == 200, 10), controller.get("/healthz")
    status = controller.status()
    assert (status["problems"], status["prune_suspended"]) == ([], None), status
    assert host.domain(web).UUIDString() == uuid
    assert controller.crashes() == []


def test_status_does_not_announce_the_pruning_of_a_vm_that_suspended_pruning_keeps(host, run_controller):
    """While a broken manifest suspends pruning, /status says the VM it no longer declares is kept, not that it is about to be pruned."""
    write_vm(host, "keep", runStrategy="Halted")
    write_vm(host, "web", runStrategy="Halted")
    controller = run_controller()
    web = host.name("web")
    assert host.wait(lambda: is_defined_and_off(host, web) and is_defined_and_off(host, host.name("keep")), 15)
    mark = controller.mark()

    (host.manifests / "vms" / "web.yaml").write_text("kind: VirtualMachine\nspec: [\n", encoding="utf-8")
    controller.wait_for("pruning_suspended", since=mark)

    status = controller.status()
    assert status["prune_suspended"], status
    assert is_defined_and_off(host, web)
    assert "to be pruned" not in status["vms"][web]["desired"], status["vms"][web]


# --- change storms ------------------------------------------------------------------------


def test_a_hundred_writes_to_one_file_within_a_second_give_at_most_three_passes(host, run_controller):
    """An editor or ``git pull`` rewriting a file a hundred times in a second costs at most three passes, and the last content wins."""
    path = write_vm(host, "web", runStrategy="Halted")
    controller = run_controller()
    web = host.name("web")
    assert host.wait(lambda: is_defined_and_off(host, web), 15)
    time.sleep(0.5)  # let the first passes' own wake-ups settle
    mark = controller.mark()
    wakeups = controller.metric("kvmops_wakeups_total", source="manifests")

    started = time.monotonic()
    for index in range(100):
        memory = "96MiB" if index == 99 else f"{72 + 8 * (index % 2)}MiB"
        factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted", memory=memory))
        time.sleep(max(0.0, started + (index + 1) * 0.009 - time.monotonic()))
    storm = time.monotonic() - started
    assert storm < 1.2, f"the writes took {storm:.2f}s"

    assert host.wait(lambda: inactive_memory_mib(host, web) == 96, 15), controller.log_text()
    time.sleep(2.5)  # longer than the quiet period and the longest wait for calm (2 s)
    passes = controller.passes(since=mark, trigger="manifests")
    assert 1 <= len(passes) <= 3, passes
    assert controller.metric("kvmops_wakeups_total", source="manifests") - wakeups <= 3
    assert len(controller.events("domain_defined", since=mark, vm=web)) <= 3
    assert controller.events("manifest_problem", since=mark) == []  # no pass read a half-written file
    assert path.read_text(encoding="utf-8").count("96MiB") == 1
    assert controller.crashes() == []


# --- stopping and the service manager ---------------------------------------------------


class NotifySocket:
    """An ``sd_notify`` receiver: a Unix datagram socket collecting what the controller sends."""

    def __init__(self, path: Path, controller_log: list[Path]) -> None:
        self.path = path
        self.messages: list[tuple[float, str, bool]] = []  # (when, message, a pass was logged by then)
        self._log = controller_log
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            passed = any(p.exists() and "reconcile_finished" in p.read_text(errors="replace") for p in self._log)
            self.messages.append((time.monotonic(), data.decode(), passed))

    def with_field(self, prefix: str) -> list[tuple[float, str, bool]]:
        """Return the messages with a line starting with ``prefix``."""
        return [m for m in self.messages if any(line.startswith(prefix) for line in m[1].splitlines())]

    def close(self) -> None:
        """Stop receiving."""
        self._closed.set()
        self._thread.join(timeout=2)
        self._socket.close()


def test_sigterm_during_a_graceful_stop_exits_zero_promptly_after_telling_systemd(host, run_controller):
    """SIGTERM while a guest is being given 60 s to shut down exits 0 within 5 s; READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 reach $NOTIFY_SOCKET."""
    write_vm(host, "web", runStrategy="Halted", shutdownTimeout=60)
    notify = NotifySocket(host.workdir / "notify", [host.workdir / "controller-0.log"])
    try:
        controller = run_controller(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
        web = host.name("web")
        assert host.wait(lambda: is_defined_and_off(host, web), 15)
        assert host.wait(lambda: notify.with_field("READY=1"), 5), notify.messages

        mark = controller.mark()
        host.domain(web).create()  # the controller now asks the guest to power off and waits up to 60 s
        controller.wait_for("reconcile_finished", since=mark, where=lambda r: r["in_flight"] >= 1)
        assert host.wait(lambda: "stop" in controller.status()["vms"][web]["pending_actions"], 5)
        assert host.wait(lambda: len(notify.with_field("WATCHDOG=1")) >= 2, 5), notify.messages
        time.sleep(0.5)
        assert running(host, web)

        assert controller.terminate() == 0, controller.log_text()
        assert controller.exit_seconds < 5, f"exit took {controller.exit_seconds:.1f}s"
        time.sleep(0.3)  # the last datagrams
    finally:
        notify.close()

    assert running(host, web)  # the guest keeps its shutdown request; kvmops exiting is no reason to pull the plug
    ready = notify.with_field("READY=1")
    assert len(ready) == 1 and ready[0][2], f"READY=1 once, after the first pass: {notify.messages}"
    assert any(line.startswith("STATUS=1 VM(s)") for line in ready[0][1].splitlines()), ready
    assert len(notify.with_field("STATUS=")) >= 2, notify.messages
    stopping = notify.with_field("STOPPING=1")
    assert len(stopping) == 1 and stopping[0][0] >= max(m[0] for m in ready), notify.messages
    assert all(m[0] <= stopping[0][0] for m in notify.with_field("WATCHDOG=1")), notify.messages
    interrupted = controller.wait_for("step_failed", vm=web, action="stop_domain")
    assert "not awaited: kvmops is stopping" in interrupted["error"], interrupted
    assert controller.events("domain_stopped", vm=web) == []
    controller.wait_for("controller_stopping")
    assert controller.wait_for("controller_stopped")["unfinished"] == 0
    assert controller.crashes() == []


# --- the host lock --------------------------------------------------------------------------


def test_apply_refuses_at_once_naming_the_holder_while_the_host_lock_is_held(host, run_controller):
    """With the host lock held, ``kvmops apply --lock-timeout 0`` exits 1 naming the holder; an idle controller does not hold it."""
    write_vm(host, "web", runStrategy="Halted")
    controller = run_controller()
    assert host.wait(lambda: is_defined_and_off(host, host.name("web")), 15)
    apply = ("apply", str(host.manifests), "--no-prune", "--scope", host.prefix, "--lock-timeout", "0", "--state-dir", str(state_dir(host)))

    with hostlock.hold(state_dir(host), host.uri, wait=30):
        refused = host.kvmops(*apply)
    assert refused.returncode == 1, refused
    assert f"another kvmops is acting on {host.uri}: pid {os.getpid()} (" in refused.stderr, refused.stderr
    assert "Applying" not in refused.stdout

    idle = host.kvmops(*apply)  # the controller, idle, leaves the lock free
    assert idle.returncode == 0, idle
    assert controller.process.poll() is None
    assert controller.crashes() == []


def test_the_controller_waits_for_the_host_lock_and_acts_once_it_is_released(host, run_controller):
    """While another kvmops holds the host lock the controller changes nothing and says whom it waits for; then it converges."""
    write_vm(host, "web", runStrategy="Halted")
    controller = run_controller()
    web = host.name("web")
    assert host.wait(lambda: is_defined_and_off(host, web), 15)

    with hostlock.hold(state_dir(host), host.uri, wait=30):
        mark = controller.mark()
        write_vm(host, "web", runStrategy="Halted", memory="96MiB")
        waiting = controller.wait_for("host_lock_waiting", since=mark)
        assert f"pid {os.getpid()} (" in waiting["holder"], waiting
        time.sleep(1.0)
        assert inactive_memory_mib(host, web) == 64
    assert host.wait(lambda: inactive_memory_mib(host, web) == 96, 10), controller.log_text()
    assert controller.crashes() == []


def test_sigterm_while_waiting_for_the_host_lock_exits_zero_promptly(host, run_controller):
    """SIGTERM while the controller waits for a host lock held by another kvmops exits 0 within 5 s."""
    write_vm(host, "web", runStrategy="Halted")
    controller = run_controller("--termination-grace", "3")
    web = host.name("web")
    assert host.wait(lambda: is_defined_and_off(host, web), 15)

    with hostlock.hold(state_dir(host), host.uri, wait=30):
        mark = controller.mark()
        write_vm(host, "web", runStrategy="Halted", memory="96MiB")
        controller.wait_for("host_lock_waiting", since=mark)
        status = controller.terminate(timeout=8)
    assert status == 0
    assert controller.exit_seconds < 5, f"exit took {controller.exit_seconds:.1f}s"


# --- who may read the listener ---------------------------------------------------------------


def test_with_a_token_file_status_and_metrics_need_the_bearer_token_and_healthz_says_only_ok(host, run_controller):
    """On all addresses with listen.tokenFile: 401 and a Bearer challenge without the token, the views with it,
    /healthz 'ok' for anyone, and the token in no log line."""
    token = "e2e-" + host.prefix + "-listener-token"
    token_file = host.workdir / "listen-token"
    token_file.write_text(token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    write_vm(host, "web", runStrategy="Halted")
    controller = run_controller("--listen", "0.0.0.0:0", "--listen-token-file", str(token_file), token=token)
    web = host.name("web")
    assert host.wait(lambda: is_defined_and_off(host, web), 15)
    port = controller.address.rpartition(":")[2]
    controller.address = f"127.0.0.1:{port}"

    assert controller.get("/status")[0] == 401
    assert controller.get("/metrics", "not-" + token)[0] == 401
    try:
        urllib.request.urlopen(f"http://{controller.address}/status", timeout=5)
        raise AssertionError("/status answered without a token")
    except urllib.error.HTTPError as refused:
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="kvmops"'
    assert web in controller.status()["vms"]
    assert controller.metric("kvmops_connected") == 1
    assert host.wait(lambda: controller.get("/healthz") == (200, "ok\n"), 15), controller.get("/healthz", token)
    assert token not in controller.log_text()
    assert controller.crashes() == []


def test_the_controller_refuses_to_listen_on_all_addresses_without_a_token(host):
    """kvmops run --listen 0.0.0.0:PORT with neither a token file nor --listen-insecure exits 1 with one line,
    having defined nothing."""
    write_vm(host, "web", runStrategy="Halted")
    argv = [sys.executable, "-m", "reconciler", "--log-format", "json", "run", str(host.manifests),
            "--scope", host.prefix, "--connect", host.uri, "--listen", "0.0.0.0:0",
            "--state-dir", str(state_dir(host))]
    environment = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    environment.update(host.env)

    finished = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=environment, cwd=REPOSITORY)

    assert finished.returncode == 1, finished.stderr
    refusals = [line for line in finished.stderr.splitlines() if "refusing to listen on 0.0.0.0:0" in line]
    assert len(refusals) == 1 and "listen.tokenFile" in refusals[0], finished.stderr
    assert "Traceback" not in finished.stderr
    assert host.domain(host.name("web")) is None
