"""``kvmops run`` for a fleet, in a thread of the test process, on three test-driver Hosts (and one that is down).

The Hosts and the routing of connections are those of :mod:`tests.integration.test_fleet_cli`.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest

from reconciler.core import planner
from reconciler.runtime.controller import ControllerSettings
from reconciler.runtime.controller.fleet_loop import FleetController
from tests import factories
from tests.integration.test_controller_inprocess import wait_until
from tests.integration.test_fleet_cli import Fleet, fleet, web  # noqa: F401 (the fixture)


def controller(world: Fleet, tmp_path: Path, **options) -> FleetController:
    settings = ControllerSettings(path=str(world.manifests), uri="", planner=planner.Settings(), resync_interval=5,
                                  quiet_period=0.05, listen="127.0.0.1:0", state_dir=tmp_path / "state",
                                  reconnect_max_delay=0.5)
    return FleetController(settings, **options)


@pytest.fixture
def running(fleet, tmp_path):  # noqa: F811 (the fixture)
    started: list[tuple[FleetController, threading.Thread]] = []

    def start(**options) -> FleetController:
        runner = controller(fleet, tmp_path, **options)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        started.append((runner, thread))
        assert wait_until(lambda: runner.listen_address is not None, 5)
        return runner

    yield start
    for runner, thread in started:
        runner.request_stop()
        thread.join(timeout=10)


def status(runner: FleetController) -> dict:
    with urllib.request.urlopen(f"http://{runner.listen_address}/status", timeout=5) as response:
        return json.loads(response.read())


def placed(world: Fleet) -> list[str]:
    return sorted(vm for vms in world.domains().values() for vm in vms)


def test_the_controller_converges_every_host_and_reports_per_host(fleet, running):  # noqa: F811
    fleet.write_hosts(dead=True)
    runner = running()

    assert wait_until(lambda: placed(fleet) == ["web-1", "web-2", "web-3", "web-4"], 20)
    assert wait_until(lambda: status(runner).get("passes", 0) >= 1 and "h4" in status(runner)["hosts"], 10)
    document = status(runner)
    assert document["hosts"]["h4"]["connected"] is False
    assert {vm["name"] for h in ("h1", "h2", "h3") for vm in document["hosts"][h]["vms"]} == set(placed(fleet))
    assert sorted(document["hosts"]) == ["h1", "h2", "h3", "h4"]


def test_an_agent_changes_only_its_own_host(fleet, running):  # noqa: F811
    runner = running(host="h3")

    assert wait_until(lambda: bool(fleet.domains()["h3"]), 20)
    assert wait_until(lambda: status(runner).get("passes", 0) >= 2, 20)
    assert fleet.domains()["h1"] == fleet.domains()["h2"] == set()
    assert sorted(status(runner)["hosts"]) == ["h3"]
    assert {vm["name"] for vm in status(runner)["hosts"]["h3"]["vms"]} == fleet.domains()["h3"]


def test_a_vm_destroyed_by_hand_is_started_again(fleet, running):  # noqa: F811
    running()
    assert wait_until(lambda: placed(fleet) == ["web-1", "web-2", "web-3", "web-4"], 20)
    host = next(name for name, vms in fleet.domains().items() if "web-1" in vms)
    hypervisor = fleet.hypervisors[host]
    hypervisor.destroy_domain("web-1")
    assert not next(r for r in hypervisor.list_domains() if r.name == "web-1").power.active

    assert wait_until(lambda: next(r for r in hypervisor.list_domains() if r.name == "web-1").power.active, 20)


def test_a_host_that_comes_up_later_is_connected_on_its_own_and_converged(fleet, running, tmp_path):  # noqa: F811
    fleet.write_hosts(dead=True)
    factories.write(fleet.manifests, "pinned.yaml", web("db", host="h4"))
    runner = running()
    assert wait_until(lambda: placed(fleet) == ["web-1", "web-2", "web-3", "web-4"], 20)
    assert wait_until(lambda: "h4" in status(runner)["hosts"], 10)
    assert status(runner)["hosts"]["h4"]["connected"] is False
    assert status(runner)["hosts"]["h4"]["vms"] == [{"name": "db", "state": "Unknown", "pending": []}]

    dead = Path(fleet.dead_uri[len("test://"):])
    dead.parent.mkdir()
    dead.write_text((Path(fleet.uris["h1"][len("test://"):])).read_text())  # h4's libvirt now answers

    assert wait_until(lambda: status(runner)["hosts"]["h4"]["connected"], 20)
    assert wait_until(lambda: status(runner)["hosts"]["h4"]["vms"] == [
        {"name": "db", "state": "running", "pending": []}], 20), status(runner)["hosts"]["h4"]
    assert status(runner)["converged"] is True
