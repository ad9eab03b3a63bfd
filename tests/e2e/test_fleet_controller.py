"""``kvmops run`` drives a two-host lab: one host's libvirtd is killed and restarted while it runs.

While the host is down its VMs are Unknown in ``/status`` and the other host still
converges; once libvirtd is back the controller reconnects on its own and converges that
host too, creating what was declared for it meanwhile. SIGTERM then ends it with 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from reconciler.adapters import hypervisor as hv
from reconciler.core import model
from tests.e2e import labfleet
from tests.e2e.test_fleet import REPOSITORY, declared_fleet

pytestmark = pytest.mark.e2e


@pytest.fixture
def two_host_fleet(lab, tmp_path):
    """Return h1 and h2 of the session's lab as a fleet for this test; what it made is removed afterwards."""
    with declared_fleet(lab, tmp_path, "c", hosts=2) as world:
        yield world


def stop(controller: subprocess.Popen) -> str:
    """Stop ``controller`` as systemd would (SIGTERM, SIGKILL after 60 s) and return its log, printed (shown on failure)."""
    controller.send_signal(signal.SIGTERM)
    try:
        _out, err = controller.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        controller.kill()
        _out, err = controller.communicate()
    print(err[-6000:])
    return err


def run_controller(world: LabFleet) -> tuple[subprocess.Popen, int]:
    """Start ``kvmops run`` on the fleet's manifests (resync every 300 s); return it and the port of its /status."""
    port = free_port()
    controller = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", str(world.manifests), "--listen", f"127.0.0.1:{port}",
         "--resync-interval", "300", "--state-dir", str(world.state_dir)],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_COLOR": "1"})
    return controller, port


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        return json.loads(response.read())


def eventually(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    return False


def running(world: LabFleet, host: str, vm: str) -> bool:
    """Return whether ``vm`` runs on ``host``: started, not merely being started."""
    with hv.Hypervisor.open(world.lab_host(host).uri, read_only=True) as hypervisor:
        return any(r.name == vm and r.power is model.PowerState.RUNNING for r in hypervisor.list_domains())


def test_the_controller_reconnects_to_a_restarted_libvirtd_and_converges_that_host(two_host_fleet):
    world = two_host_fleet
    first, second = world.vm(1), world.vm(2)
    world.write_vms([first], file="h1.yaml", host="h1")
    world.write_vms([second], file="h2.yaml", host="h2")
    controller, port = run_controller(world)
    try:
        assert eventually(lambda: running(world, "h1", first) and running(world, "h2", second), 120)

        down = world.lab_host("h2")
        down.kill_libvirtd()
        late = world.vm(3)
        world.write_vms([second, late], file="h2.yaml", host="h2")  # declared while h2 is away
        world.write_vms([first, world.vm(4)], file="h1.yaml", host="h1")

        assert eventually(lambda: status(port)["hosts"]["h2"]["connected"] is False, 60)
        assert eventually(lambda: running(world, "h1", world.vm(4)), 120)  # the other host converges
        section = status(port)["hosts"]["h2"]
        assert {vm["name"]: vm["state"] for vm in section["vms"]} == {second: "Unknown", late: "Unknown"}
        assert section["prune_suspended"].startswith("host unreachable")

        down.restart_libvirtd()

        assert eventually(lambda: running(world, "h2", late), 120)
        assert eventually(lambda: status(port)["converged"] is True, 60), status(port)
        assert running(world, "h2", second)
        assert sorted(vm for vms in world.domains().values() for vm in vms) == [world.vm(i) for i in range(1, 5)]
    finally:
        err = stop(controller)
    assert controller.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e["event"] == "host_connected" and e.get("host") == "h2" and e.get("reconnected") for e in events)
    assert any(e["event"] == "host_disconnected" and e.get("host") == "h2" for e in events)


def test_a_vm_whose_start_a_hosts_libvirtd_restart_cut_short_is_started_again_without_waiting_for_the_resync(
        two_host_fleet):
    """As on a single host (tests/e2e/test_controller.py): the restarted libvirtd kills the guest it was starting, silently.

    The fleet controller saw the VM "starting up" on h2 when it reconnected; it looks
    again until the VM settles, and starts it. Before, it was left off until the resync.
    """
    world = two_host_fleet
    web = world.vm(1)
    world.write_vms([web], file="h2.yaml", host="h2")
    controller, port = run_controller(world)
    daemon = world.lab_host("h2")
    stopped_qemu = None
    try:
        assert eventually(lambda: running(world, "h2", web), 120)
        stopped_qemu = labfleet.kill_libvirtd_in_a_start(daemon, web)
        assert eventually(lambda: status(port)["hosts"]["h2"]["connected"] is False, 60)
        daemon.restart_libvirtd()
        assert eventually(lambda: status(port)["hosts"]["h2"]["connected"] is True, 60)
        time.sleep(3)  # past the reconnection's look and the retry of the start that failed
        section = status(port)["hosts"]["h2"]
        assert {vm["name"]: vm["state"] for vm in section["vms"]} == {web: "transitional"}
        assert status(port)["converged"] is False  # a VM in transition is not converged yet
        os.kill(stopped_qemu, signal.SIGCONT)
        assert eventually(lambda: running(world, "h2", web), 30)
        assert eventually(lambda: status(port)["converged"] is True, 30), status(port)
    finally:
        if stopped_qemu is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped_qemu, signal.SIGCONT)
        if daemon.libvirtd_pid is None:
            daemon.restart_libvirtd()
        err = stop(controller)
    assert controller.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e["event"] == "drift_repaired" and e.get("trigger") == "transition" and e.get("vm") == web for e in events)
