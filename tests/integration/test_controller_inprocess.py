"""The controller (``kvmops run``) in a thread of the test process, against libvirt's test driver.

Every connection to a ``test:///FILE`` URI gets a private host, so these tests use
``test:///default``, which all connections of the process share: the controller changes it
through its connection and the test looks (and interferes) through its own.  That host
already holds a running foreign domain named ``test``, and other tests may use it too, so
every VM here has a unique name, pruning is off, and whatever a test defined is removed
afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from reconciler.adapters import hypervisor as hv
from reconciler.adapters import systemd
from reconciler.core import planner
from reconciler.runtime import observe
from reconciler.runtime.controller import Controller, ControllerSettings
from tests import factories
from tests.integration.conftest import SHARED_URI, Leftovers, foreign_domain_xml


# Another process holding the host lock (as `kvmops apply` does) until its stdin closes.
HOLDER = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from reconciler.runtime import hostlock
    with hostlock.hold(Path(sys.argv[1]), sys.argv[2]):
        print("held", flush=True)
        sys.stdin.readline()
    """)


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    """Return True as soon as ``condition()`` is true, False if it is still false after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def get(url: str) -> tuple[int, str, str]:
    """Return (status, content type, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def write_manifest(directory: Path, relpath: str, document: object) -> Path:
    """Write a manifest the way git or an editor would: a hidden temporary file renamed into place."""
    path = directory / relpath
    temporary = directory / f".{relpath}.tmp"
    temporary.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    os.replace(temporary, path)
    return path


@dataclass
class RunningController:
    """A Controller whose run() executes in a thread, and the test's own view of the host."""

    controller: Controller
    manifests: Path
    host: hv.Hypervisor
    thread: threading.Thread | None = None
    exit_status: list[int] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://{self.controller.listen_address}{path}"

    def power(self, name: str) -> str | None:
        """Return the power state of domain ``name`` as the test's connection sees it (None: no such domain)."""
        for record in self.host.list_domains():
            if record.name == name:
                return record.power.value
        return None

    def running(self, name: str) -> bool:
        return self.power(name) == "running"

    def metric(self, name: str, **labels: str) -> float:
        return self.controller.metrics.value(name, **labels)

    def stop(self) -> float:
        """Ask the controller to stop; return how long run() took to return."""
        began = time.monotonic()
        self.controller.request_stop()
        assert self.thread is not None
        self.thread.join(10)
        return time.monotonic() - began


@pytest.fixture
def vm_name(leftovers: Leftovers) -> Callable[[str], str]:
    """Return a maker of unique VM names (ctl-ROLE-HEX), each removed from the shared host after the test."""
    def make(role: str = "vm") -> str:
        leftovers.domains.append(f"ctl-{role}-{uuid.uuid4().hex[:10]}")
        return leftovers.domains[-1]

    return make


@pytest.fixture
def pool_name(leftovers: Leftovers) -> str:
    """Return a unique storage pool name, removed from the shared host after the test."""
    leftovers.pools.append(f"ctl-pool-{uuid.uuid4().hex[:10]}")
    return leftovers.pools[-1]


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    """Return the controller's (empty) manifest directory."""
    directory = tmp_path / "manifests"
    directory.mkdir()
    return directory


@pytest.fixture
def host() -> Iterator[hv.Hypervisor]:
    """Return the test's own connection to the shared test:///default host."""
    with hv.Hypervisor.open(SHARED_URI) as connection:
        yield connection


@pytest.fixture
def start_controller(
    tmp_path: Path, manifests: Path, host: hv.Hypervisor, leftovers: Leftovers
) -> Iterator[Callable[..., RunningController]]:
    """Return a starter of Controllers on test:///default watching ``manifests``; each is stopped afterwards."""
    started: list[RunningController] = []

    def start(*, notifier: systemd.Notifier | None = None, **overrides: object) -> RunningController:
        settings = ControllerSettings(**{
            "path": str(manifests),
            "uri": SHARED_URI,
            "planner": planner.Settings(prune=False),  # never touch what others left on the shared host
            "resync_interval": 600,  # so every repair below is due to an event, not to the resync
            "quiet_period": 0.05,
            "termination_grace": 5,
            "listen": "127.0.0.1:0",
            "state_dir": tmp_path / "state",
            **overrides,
        })
        running = RunningController(Controller(settings, notifier=notifier or systemd.Notifier({})), manifests, host)
        running.thread = threading.Thread(
            target=lambda: running.exit_status.append(running.controller.run()), name="kvmops-run", daemon=True,
        )
        running.thread.start()
        started.append(running)
        if settings.listen:
            assert wait_until(lambda: running.controller.listen_address is not None, 5), "the listener never started"
        return running

    yield start
    for running in started:
        if running.thread is not None and running.thread.is_alive():
            running.stop()


def converged(running: RunningController, name: str) -> bool:
    """Return whether ``name`` runs and the controller has recorded a successful execution for it."""
    entry = running.controller.status_document()["vms"].get(name, {})
    return running.running(name) and entry.get("last_reconcile") is not None and entry.get("last_error") is None


# -- converging --------------------------------------------------------------------------


def test_the_first_pass_defines_and_starts_the_vm(start_controller, manifests, vm_name):
    """A VM in the manifests at start-up is defined, marked as kvmops' own, and running after the first pass."""
    name = vm_name("web")
    write_manifest(manifests, "web.yaml", factories.vm(name))

    running = start_controller()

    assert wait_until(lambda: converged(running, name), 5), f"{name} is {running.power(name)}"
    assert observe.observe(running.host).domains[name].owned
    status = running.controller.status_document()
    assert status["ready"] is True
    assert status["connected"] is True
    assert status["vms"][name]["manifest"] == "web.yaml"
    assert status["vms"][name]["desired"] == "running"


def test_a_vm_destroyed_by_hand_is_running_again_within_two_seconds(start_controller, manifests, vm_name):
    """A 'virsh destroy' through another connection wakes the controller through libvirt's event, and it restarts the VM."""
    name = vm_name("web")
    write_manifest(manifests, "web.yaml", factories.vm(name))
    running = start_controller()
    assert wait_until(lambda: converged(running, name), 5)
    repairs_before = running.metric("kvmops_drift_repairs_total")

    assert running.host.destroy_domain(name)  # it was running, and now it is off

    assert wait_until(lambda: running.running(name), 2), f"{name} is still {running.power(name)}"
    assert wait_until(lambda: running.metric("kvmops_drift_repairs_total") > repairs_before, 2)
    assert running.metric("kvmops_wakeups_total", source="libvirt") >= 1
    assert running.metric("kvmops_wakeups_total", source="resync") == 0


def test_a_pass_woken_by_a_vm_event_looks_at_that_vm_alone_and_the_resync_at_the_whole_host(
    start_controller, manifests, vm_name, host
):
    """A destroyed VM is restarted by a pass that looks at it alone: a domain someone defined meanwhile is unknown to that pass, and known after the resync."""
    name, stranger = vm_name("web"), vm_name("stranger")
    write_manifest(manifests, "web.yaml", factories.vm(name))
    running = start_controller(resync_interval=4)
    assert wait_until(lambda: converged(running, name), 5)
    last_pass = lambda: running.controller.status_document()["last_pass"]  # noqa: E731
    assert wait_until(lambda: last_pass().get("trigger") == ["resync"], 6), last_pass()  # the next one is 4 s away

    host.define_domain(foreign_domain_xml(stranger, str(uuid.uuid4())), stranger)  # its events wake nothing
    assert host.destroy_domain(name)

    assert wait_until(lambda: running.running(name), 2), f"{name} is still {running.power(name)}"
    assert wait_until(lambda: converged(running, name) and last_pass().get("trigger") == ["libvirt"], 2), last_pass()
    assert stranger not in running.controller.status_document()["foreign"]
    assert last_pass()["observed"] == "vms"
    # the status shows what a pass looked at: the repairing pass saw it off; the pass its start's event wakes, running
    assert wait_until(lambda: running.controller.status_document()["vms"][name]["actual"] == "running", 2)
    assert last_pass()["observed"] == "vms"

    assert wait_until(lambda: stranger in running.controller.status_document()["foreign"], 6), last_pass()
    assert last_pass()["trigger"] == ["resync"] and last_pass()["observed"] == "host"


def test_a_new_manifest_file_is_picked_up_through_the_watcher(start_controller, manifests, vm_name):
    """A manifest written while the controller runs gives a pass that starts its VM, without any resync."""
    first, second = vm_name("web"), vm_name("db")
    write_manifest(manifests, "web.yaml", factories.vm(first))
    running = start_controller()
    assert wait_until(lambda: converged(running, first), 5)

    (manifests / "vms").mkdir()
    write_manifest(manifests / "vms", "db.yaml", factories.vm(second))

    assert wait_until(lambda: converged(running, second), 5), f"{second} is {running.power(second)}"
    assert running.controller.status_document()["vms"][second]["manifest"] == "vms/db.yaml"
    assert running.metric("kvmops_wakeups_total", source="manifests") >= 1
    assert running.metric("kvmops_wakeups_total", source="resync") == 0


def test_work_planned_on_a_look_taken_while_its_vm_was_being_created_is_planned_again_on_a_fresh_look(
    start_controller, manifests, vm_name, monkeypatch
):
    """A full pass that looked at the host while a VM was half created, and hands out work after that creation
    ended, does not run the plan it made (create the VM again, which the executor refuses: it "appeared after
    the plan was made"); that VM's key is queued again, and a pass that sees the created VM finds nothing to do."""
    name = vm_name("web")
    key = f"VirtualMachine/{name}"
    write_manifest(manifests, "web.yaml", factories.vm(name))
    defining, created = threading.Event(), threading.Event()
    define_domain = hv.Hypervisor.define_domain

    def slow_define(self: hv.Hypervisor, xml: str, domain: str) -> None:
        if domain == name and not created.is_set():
            defining.set()
            assert created.wait(10), "the pass that looks mid-creation never came"
        define_domain(self, xml, domain)

    collect = observe.collect
    looks_mid_creation: list[tuple[object, int]] = []
    controllers: list[RunningController] = []

    def look_then_let_the_creation_end(hypervisor: hv.Hypervisor):
        observation = collect(hypervisor)
        if defining.is_set() and not created.is_set():
            # This look saw the VM absent: let its creation end before the pass hands out its work.
            looks_mid_creation.append((observation, controllers[0].controller.status_document()["passes"]))
            created.set()
            assert wait_until(lambda: key not in controllers[0].controller._queue.in_flight(), 10)
        return observation

    monkeypatch.setattr(hv.Hypervisor, "define_domain", slow_define)
    monkeypatch.setattr(observe, "collect", look_then_let_the_creation_end)
    running = start_controller()
    controllers.append(running)
    assert defining.wait(5), "the first pass never started creating the VM"

    write_manifest(manifests, "web.yaml", factories.vm(name))  # a full pass, while the VM is being created

    assert wait_until(lambda: looks_mid_creation, 5), "no pass looked at the host mid-creation"
    observation, passes_before = looks_mid_creation[0]
    assert name not in {d.name for d in observation.domains}
    assert wait_until(lambda: running.controller.status_document()["passes"] >= passes_before + 2
                      and not running.controller._queue.in_flight(), 5)
    assert converged(running, name), f"{name} is {running.power(name)}"
    assert running.metric("kvmops_errors_total", kind="execution") == 0
    assert running.metric("kvmops_actions_total", action="create", result="error") == 0
    assert running.metric("kvmops_actions_total", action="create", result="ok") == 1
    assert running.controller.status_document()["vms"][name]["last_error"] is None


def test_an_invalid_manifest_is_reported_and_healthz_answers_503_until_it_is_fixed(start_controller, manifests, vm_name):
    """A broken manifest shows in /status problems with /healthz at 503; fixing it clears both and converges its VM."""
    good, fixed = vm_name("web"), vm_name("db")
    write_manifest(manifests, "web.yaml", factories.vm(good))
    running = start_controller()
    assert wait_until(lambda: converged(running, good), 5)
    assert wait_until(lambda: get(running.url("/healthz"))[0] == 200, 2)

    write_manifest(manifests, "db.yaml", factories.vm(fixed, vcpus="many"))

    assert wait_until(lambda: running.controller.status_document()["problems"], 5), "the problem never showed"
    problems = running.controller.status_document()["problems"]
    assert len(problems) == 1
    assert re.fullmatch(rf"{re.escape(str(manifests / 'db.yaml'))}:\d+: spec\.vcpus: expected an integer.*", problems[0]), problems
    status, _content_type, body = get(running.url("/healthz"))
    assert status == 503
    assert "1 manifest problem(s)" in body
    assert running.running(good), "a broken manifest must not stop the others"
    assert running.power(fixed) is None

    write_manifest(manifests, "db.yaml", factories.vm(fixed, vcpus=2))

    assert wait_until(lambda: converged(running, fixed), 5), f"{fixed} is {running.power(fixed)}"
    assert running.controller.status_document()["problems"] == []
    assert wait_until(lambda: get(running.url("/healthz"))[0] == 200, 2)


# -- observing ---------------------------------------------------------------------------


def test_status_is_json_and_metrics_count_reconcile_passes(start_controller, manifests, vm_name):
    """GET /status returns the status document as JSON; GET /metrics has kvmops_reconcile_passes_total."""
    name = vm_name("web")
    write_manifest(manifests, "web.yaml", factories.vm(name))
    running = start_controller()
    assert wait_until(lambda: converged(running, name), 5)
    assert wait_until(lambda: running.controller.status_document()["vms"][name]["actual"] == "running", 2)

    status, content_type, body = get(running.url("/status"))
    assert status == 200
    assert content_type == "application/json"
    document = json.loads(body)
    assert document["uri"] == SHARED_URI
    assert document["manifests"] == str(manifests)
    assert document["connected"] is True
    assert document["passes"] >= 1
    assert "test" in document["foreign"]
    assert document["vms"][name]["actual"] == "running"
    assert document["vms"][name]["pending_actions"] == []

    status, content_type, body = get(running.url("/metrics"))
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# TYPE kvmops_reconcile_passes_total counter" in body
    assert 'kvmops_reconcile_passes_total{result="ok"} ' in body
    assert "kvmops_connected 1" in body


def test_the_service_manager_hears_ready_after_the_first_pass_and_stopping_at_the_end(start_controller, manifests, vm_name):
    """With NOTIFY_SOCKET set, READY=1 follows the first pass and STOPPING=1 is the last message."""
    name = vm_name("web")
    write_manifest(manifests, "web.yaml", factories.vm(name))
    directory = tempfile.mkdtemp(prefix="kvn-")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        listener.bind(f"{directory}/notify")
        listener.settimeout(5)
        running = start_controller(notifier=systemd.Notifier({"NOTIFY_SOCKET": f"{directory}/notify"}))
        assert wait_until(lambda: converged(running, name), 5)
        running.stop()

        messages = []
        while not messages or not messages[-1].startswith("STOPPING=1"):
            messages.append(listener.recv(4096).decode())
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)

    assert messages[0].startswith("READY=1\nSTATUS=")
    assert sum(1 for m in messages if "READY=1" in m) == 1
    assert messages[-1] == "STOPPING=1\nSTATUS=stopping"


# -- stopping ----------------------------------------------------------------------------


def test_request_stop_makes_run_return_zero_promptly(start_controller, manifests, vm_name):
    """request_stop() ends run() with exit status 0 within two seconds, and the listener goes away."""
    name = vm_name("web")
    write_manifest(manifests, "web.yaml", factories.vm(name))
    running = start_controller()
    assert wait_until(lambda: converged(running, name), 5)
    address = running.controller.listen_address

    elapsed = running.stop()

    assert not running.thread.is_alive()
    assert running.exit_status == [0]
    assert elapsed < 2.0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{address}/healthz", timeout=2)
    assert running.running(name), "stopping the controller leaves the VMs alone"


def test_request_stop_ends_run_promptly_even_while_another_process_holds_the_host_lock(
    start_controller, manifests, pool_name, tmp_path
):
    """A controller waiting for the host lock (a 'kvmops apply' is running) still stops at once when asked."""
    write_manifest(manifests, "pool.yaml", factories.pool(pool_name, str(tmp_path / "pool")))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "state"), SHARED_URI],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )
    running = None
    try:
        assert holder.stdout.readline().strip() == "held"
        running = start_controller(listen="")
        # The pass has planned (it recorded the foreign domains) and now waits for the lock to create the pool.
        assert wait_until(lambda: running.controller.status_document()["foreign"], 5)

        running.controller.request_stop()
        running.thread.join(2)

        assert not running.thread.is_alive(), "run() is still waiting for the host lock after request_stop()"
        assert running.exit_status == [0]
    finally:
        holder.stdin.close()  # lets the other process go, so a hung controller can finish
        holder.wait(10)
        holder.stdout.close()
        if running is not None:
            running.thread.join(10)
