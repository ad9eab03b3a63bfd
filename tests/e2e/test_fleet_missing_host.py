"""Never twice on real daemons: a Host manifest deleted without a drain leaves its VMs unseen but not forgotten.

A lab of three private libvirtd daemons as a fleet (:class:`tests.e2e.test_fleet.LabFleet`):
after an apply, every mark names the three Hosts. With h3's manifest deleted (its daemon
and its VMs still running), the next plan reports h3 missing, and an apply creates none of
its VMs on h1 or h2; ``forget-host h3 --apply`` rewrites only the marks, after which the
next apply creates them on h1 and h2 (h3 stands for a host gone for good).
"""

from __future__ import annotations


import pytest

from reconciler.adapters import hypervisor as hv
from reconciler.core import domxml
from tests.e2e.test_fleet import LabFleet, declared_fleet, every_vm_once, planned_creations

pytestmark = pytest.mark.e2e


@pytest.fixture
def lab_fleet(lab, tmp_path):
    with declared_fleet(lab, tmp_path, "m") as world:
        yield world


def on_host(world: LabFleet, name: str) -> dict[str, tuple[str, ...]]:
    """Return the roster in the mark of each of the world's domains on lab host ``name``."""
    with hv.Hypervisor.open(world.lab_host(name).uri, read_only=True) as h:
        return {r.name: domxml.parse_owner(domxml.parse_tree(r.inactive_xml)).roster
                for r in h.list_domains() if r.name.startswith(world.prefix)}


def test_a_deleted_host_manifest_holds_its_vms_back_until_forget_host(lab_fleet):
    world = lab_fleet
    world.write_vms([world.vm(i) for i in range(1, 7)])
    applied = world.kvmops("apply", str(world.manifests))
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-2000:]
    on_h3 = on_host(world, "h3")
    assert len(on_h3) == 2 and set(on_h3.values()) == {("h1", "h2", "h3")}

    world.names = ["h1", "h2"]  # h3's manifest deleted without a drain; its daemon still runs its VMs
    world.write_hosts()
    before = world.domains()
    plan = world.kvmops("plan", str(world.manifests))
    assert plan.returncode == 1, plan.stdout[-3000:]
    assert "Host h3: MISSING" in plan.stdout
    assert planned_creations(plan.stdout, "h1") == planned_creations(plan.stdout, "h2") == set()
    applied = world.kvmops("apply", str(world.manifests))
    assert applied.returncode == 1
    assert world.domains() == before and every_vm_once(world) == sorted(vm for vms in before.values() for vm in vms)

    forgot = world.kvmops("forget-host", "h3", str(world.manifests), "--apply")
    assert forgot.returncode == 0, forgot.stdout[-3000:] + forgot.stderr[-2000:]
    assert world.domains() == before
    assert set(on_host(world, "h1").values()) == set(on_host(world, "h2").values()) == {("h1", "h2")}

    applied = world.kvmops("apply", str(world.manifests))
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-2000:]
    assert set(on_h3) <= world.domains()["h1"] | world.domains()["h2"]
    assert world.kvmops("plan", str(world.manifests), "--detailed-exitcode").returncode == 0
