"""One repository drives three hypervisors: a lab of three private libvirtd daemons (:mod:`tests.lab`).

``kvmops apply`` on manifests declaring three Hosts spreads twelve VMs over them by rack and
converges, after which the plan is empty; ``status`` lists them per host. When one host's
libvirtd dies in the middle of an apply, the other hosts converge, nothing is created
twice, that host's pruning waits, and the next apply after it returns converges. A
changed host label moves the VM that selected it. The VMs are TCG guests without an
operating system (SeaBIOS waits for a boot disk): what matters here is where they are
defined and run, not what they run. (Migrations themselves: tests/e2e/test_migration.py.)
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.adapters import hypervisor as hv
from tests import lab as labs
from tests.e2e import labfleet

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]


class LabFleet:
    """The first ``hosts`` hosts of a lab (all by default) as a fleet: Host manifests, a manifest directory, the CLI."""

    def __init__(self, lab: labs.Lab, manifests: Path, prefix: str, hosts: int | None = None) -> None:
        self.lab = lab
        self.manifests = manifests
        self.prefix = prefix
        self.names = [f"h{i}" for i in range(1, (hosts or len(lab.hosts)) + 1)]
        self.labels = {name: {"rack": f"r{i}", "lab": prefix} for i, name in enumerate(self.names, 1)}
        self.state_dir = manifests.parent / "state"

    def lab_host(self, name: str) -> labs.LabHost:
        return self.lab.hosts[self.names.index(name)]

    def write_hosts(self) -> None:
        documents = [{"apiVersion": "kvmops/v1", "kind": "Host", "metadata": {"name": name, "labels": self.labels[name]},
                      "spec": {"uri": self.lab_host(name).uri}} for name in self.names]
        (self.manifests / "hosts.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")

    def write_vms(self, names: list[str], file: str = "vms.yaml", **placement: object) -> None:
        documents = [{
            "apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"memory": "64MiB", "virtType": "qemu", "disks": [
                {"name": "root", "pool": self.pool, "size": "8MiB", "deletionPolicy": "Delete"}],
                "placement": placement or {"hostSelector": {"lab": self.prefix}, "spreadBy": "rack"}},
        } for name in names]
        (self.manifests / file).write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")

    @property
    def pool(self) -> str:
        return f"{self.prefix}-local"

    def vm(self, index: int) -> str:
        return f"{self.prefix}-vm{index:02d}"

    def kvmops(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run kvmops; a guest it stops or prunes gets 1 s to power off (they boot nothing: ACPI goes unheard)."""
        if argv[0] in ("plan", "apply", "drain", "evacuate"):
            argv = (*argv, "--shutdown-timeout", "1")
        return subprocess.run([sys.executable, "-m", "reconciler", *argv], capture_output=True, text=True,
                              timeout=timeout, cwd=REPOSITORY,
                              env={**os.environ, "KVMOPS_STATE_DIR": str(self.state_dir), "NO_COLOR": "1"})

    def domains(self) -> dict[str, set[str]]:
        """Return the domains of each host whose libvirtd answers, by host."""
        found = {}
        for name in self.names:
            try:
                with hv.Hypervisor.open(self.lab_host(name).uri, read_only=True) as h:
                    found[name] = {r.name for r in h.list_domains() if r.name.startswith(self.prefix)}
            except Exception:  # noqa: BLE001 (a host that is down has no answer, which is the point)
                continue
        return found


@contextlib.contextmanager
def declared_fleet(lab: labs.Lab, directory: Path, tag: str, hosts: int | None = None) -> Iterator[LabFleet]:
    """Yield the session lab's first ``hosts`` hosts (all by default) as a fleet declared in ``directory``: Host
    manifests and a local pool, under a prefix of its own (``tag`` in it); everything made under that prefix is removed
    from the lab afterwards, whatever happened."""
    prefix = f"{lab.name}-{tag}{uuid.uuid4().hex[:4]}"
    try:
        manifests = directory / "manifests"
        manifests.mkdir()
        world = LabFleet(lab, manifests, prefix, hosts=hosts)
        world.write_hosts()
        (manifests / "pool.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kvmops/v1", "kind": "StoragePool", "metadata": {"name": world.pool},
            "spec": {"path": f"/var/lib/libvirt/images/{world.pool}"}}), encoding="utf-8")
        yield world
    finally:
        labfleet.reset(lab, prefix)


@pytest.fixture(scope="module")
def lab_fleet(lab, tmp_path_factory):
    """Return the session's three-host lab as a fleet for this module's tests, which build on each other."""
    with declared_fleet(lab, tmp_path_factory.mktemp("fleet"), "f") as world:
        yield world


def planned_creations(plan_text: str, host: str) -> set[str]:
    """Return the VMs the text plan creates on ``host`` (its section, up to the next host's)."""
    section = plan_text.split(f"\nHost {host} (", 1)[1].split("\nHost ", 1)[0]
    return {line.split()[2] for line in section.splitlines() if line.strip().startswith("+ VirtualMachine ")}


def every_vm_once(world: LabFleet) -> list[str]:
    placed = [vm for vms in world.domains().values() for vm in vms]
    assert len(placed) == len(set(placed)), f"a VM is defined on two hosts: {world.domains()}"
    return sorted(placed)


def test_twelve_vms_spread_by_rack_converge_and_the_next_plan_is_empty(lab_fleet):
    world = lab_fleet
    world.write_vms([world.vm(i) for i in range(1, 13)])

    applied = world.kvmops("apply", str(world.manifests))

    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-2000:]
    assert "Fleet converged" in applied.stdout
    assert {name: len(vms) for name, vms in world.domains().items()} == {"h1": 4, "h2": 4, "h3": 4}
    assert every_vm_once(world) == [world.vm(i) for i in range(1, 13)]
    plan = world.kvmops("plan", str(world.manifests), "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout[-3000:]

    status = world.kvmops("status", "--manifests", str(world.manifests))
    assert status.returncode == 0, status.stderr
    for name, vms in world.domains().items():
        section = status.stdout.split(f"Host {name} ", 1)[1].split("\n\n", 1)[0]
        assert sorted(line.split()[0] for line in section.splitlines()[2:]) == sorted(vms)
        assert all(" running " in line for line in section.splitlines()[2:])
    assert status.stdout.splitlines()[-1] == f"Fleet default: 3 host(s), 12 managed VM(s)"


def test_a_host_whose_libvirtd_dies_mid_apply_waits_while_the_others_converge(lab_fleet):
    world = lab_fleet
    if len(every_vm_once(world)) != 12:
        pytest.skip("needs the twelve VMs of the first test")
    doomed = sorted(world.domains()["h2"])[0]
    kept = [world.vm(i) for i in range(1, 13) if world.vm(i) != doomed]
    world.write_vms([*kept, *(world.vm(i) for i in range(13, 19))])  # doomed's manifest is gone: h2 would prune it
    h2 = world.lab_host("h2")
    watcher = hv.Hypervisor.open(h2.uri, read_only=True)
    before_h2 = world.domains()["h2"]
    killed = threading.Event()

    def kill_once_h2_is_busy() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                names = {r.name for r in watcher.list_domains()}
            except Exception:  # noqa: BLE001
                return
            if names - before_h2:  # the apply has begun creating on h2
                h2.kill_libvirtd()
                killed.set()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=kill_once_h2_is_busy)
    thread.start()
    try:
        first = world.kvmops("apply", str(world.manifests))
    finally:
        thread.join()
        watcher.close()
    assert killed.is_set(), "the apply ended before anything was created on h2"
    assert first.returncode == 1
    assert "Fleet not converged" in first.stdout and "unreachable: h2" in first.stdout
    others = world.domains()
    assert set(others) == {"h1", "h3"}
    new = {world.vm(i) for i in range(13, 19)}
    for name in ("h1", "h3"):
        assert planned_creations(first.stdout, name) <= others[name]  # what was placed there, is there
    assert new <= others["h1"] | others["h3"] | planned_creations(first.stdout, "h2")
    plan_while_down = world.kvmops("plan", str(world.manifests))
    assert "Host h2" in plan_while_down.stdout and "UNREACHABLE" in plan_while_down.stdout
    for name in ("h1", "h3"):
        section = plan_while_down.stdout.split(f"Host {name} ", 1)[1].split("\nHost ", 1)[0]
        assert "No changes." in section

    second = world.kvmops("apply", str(world.manifests))  # h2 still down: nothing to do elsewhere, no prune there
    assert second.returncode == 1
    assert "Host h2: UNREACHABLE" in second.stdout or "Host h2 (" in second.stdout

    h2.restart_libvirtd()
    assert doomed in world.domains()["h2"]  # its prune waited for the host
    third = world.kvmops("apply", str(world.manifests))

    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-2000:]
    assert every_vm_once(world) == sorted([*kept, *new])
    assert world.kvmops("plan", str(world.manifests), "--detailed-exitcode").returncode == 0


def test_a_host_label_change_moves_the_vm_that_selected_it(lab_fleet):
    world = lab_fleet
    world.write_vms([f"{world.prefix}-db"], file="db.yaml", hostSelector={"role": "db"})
    world.labels["h1"]["role"] = "db"
    world.write_hosts()
    created = world.kvmops("apply", str(world.manifests))
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-2000:]
    assert f"{world.prefix}-db" in world.domains()["h1"]

    del world.labels["h1"]["role"]
    world.labels["h3"]["role"] = "db"
    world.write_hosts()
    plan = world.kvmops("plan", str(world.manifests))
    assert re.search(r"~ host +h1 -> h3 ", plan.stdout), plan.stdout[-3000:]
    moved = world.kvmops("apply", str(world.manifests))

    assert moved.returncode == 0, moved.stdout[-4000:] + moved.stderr[-2000:]
    assert f"{world.prefix}-db" in world.domains()["h3"]
    assert f"{world.prefix}-db" not in world.domains()["h1"]
    assert world.kvmops("plan", str(world.manifests), "--detailed-exitcode").returncode == 0


def test_evacuating_a_dead_host_defines_its_vm_elsewhere_on_the_shared_disk_and_its_return_is_split_brain(lab_fleet):
    world = lab_fleet
    shared = world.lab.shared / f"{world.prefix}-pool"
    shared.mkdir(exist_ok=True)
    os.chmod(shared, 0o755)
    name = f"{world.prefix}-nfs"
    (world.manifests / "shared.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "kvmops/v1", "kind": "StoragePool", "metadata": {"name": f"{world.prefix}-shared"},
         "spec": {"path": str(shared), "shared": True}},  # only on the hosts whose VMs use it
        {"apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": name},
         "spec": {"memory": "64MiB", "virtType": "qemu", "runStrategy": "Halted",
                  "disks": [{"name": "root", "pool": f"{world.prefix}-shared", "size": "8MiB"}],
                  "placement": {"hostSelector": {"lab": world.prefix}, "spreadBy": "rack"}}},
    ], sort_keys=False), encoding="utf-8")
    created = world.kvmops("apply", str(world.manifests))
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-2000:]
    home = next(host for host, vms in world.domains().items() if name in vms)
    lab_host = world.lab_host(home)
    lab_host.kill_libvirtd()
    try:
        refused = world.kvmops("evacuate", home, str(world.manifests))
        assert refused.returncode == 1 and "--host-is-dead" in refused.stderr
        local = world.kvmops("evacuate", home, str(world.manifests), "--host-is-dead")
        assert local.returncode == 1 and "refused, nothing planned" in local.stderr  # its other VMs have local disks

        (world.manifests / "vms.yaml").write_text("", encoding="utf-8")  # leave only the VM on shared storage
        for leftover in ("db.yaml",):
            (world.manifests / leftover).unlink(missing_ok=True)
        # the VM goes to the first other host by name, which has never had the shared pool; the last one runs it
        # for a VM of its own, and shows the evacuated VM's disk in it
        destination, last = sorted(host for host in world.names if host != home)
        (world.manifests / "peer.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": f"{name}-peer"},
            "spec": {"memory": "64MiB", "virtType": "qemu", "runStrategy": "Halted",
                     "disks": [{"name": "root", "pool": f"{world.prefix}-shared", "size": "8MiB"}],
                     "placement": {"host": last}}}, sort_keys=False), encoding="utf-8")
        world.kvmops("apply", str(world.manifests), "--no-prune")  # exit 1: the dead host does not answer
        assert f"{name}-peer" in world.domains()[last]
        evacuated = world.kvmops("evacuate", home, str(world.manifests), "--host-is-dead", "--apply", "--no-prune")
        assert "evacuated from" in evacuated.stdout, evacuated.stdout[-3000:] + evacuated.stderr[-2000:]
        assert (f"volume {name}-root.qcow2 exists on shared pool {world.prefix}-shared (seen from host {last})"
                in evacuated.stdout), evacuated.stdout[-5000:]
        assert "will not claim" not in evacuated.stdout, evacuated.stdout[-5000:]  # one apply: the disk is attached
        now = world.domains()
        assert name in now[destination] and sum(name in vms for vms in now.values()) == 1, evacuated.stdout[-5000:]
    finally:
        lab_host.restart_libvirtd()
    back = world.kvmops("plan", str(world.manifests), "--no-prune")
    assert back.returncode == 1
    assert "split brain" in back.stdout + back.stderr
