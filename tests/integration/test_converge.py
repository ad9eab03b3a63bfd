"""Converging on libvirt's test driver: apply, then a second plan is empty."""

from __future__ import annotations

from reconciler.core import planner, storagexml
from reconciler.runtime import execute, reconcile
from tests import factories


def test_apply_then_plan_is_empty(hypervisor, manifest_dir):
    """Applying the manifests converges the host, so the next plan has no changes."""
    factories.write(manifest_dir, "web.yaml", factories.vm(
        "web", vcpus=2, disks=[factories.disk("root", "default", "1GiB")], networks=[{"network": "default"}],
    ))
    result = reconcile.apply(str(manifest_dir), hypervisor, settings=planner.Settings())
    assert result.converged, result.report
    again = reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings())
    assert not again.plan.has_changes
    assert again.actual.domains["web"].power.value == "running"


def test_a_volume_that_appears_before_kvmops_announces_it_is_refused_not_claimed(hypervisor, manifest_dir):
    """If a volume the plan would create appears before the domain records it as kvmops' (pending), the
    definition is refused: nothing is defined and the stranger's volume is never claimed or touched."""
    factories.write(manifest_dir, "web.yaml", factories.vm(
        "web", disks=[factories.disk("root", "default", "1GiB", deletionPolicy="Delete")],
    ))
    planned = reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings())
    hypervisor.create_volume("default", storagexml.render_volume("web-root.qcow2", 4096), "web-root.qcow2")
    report = execute.execute(planned.plan, hypervisor)
    (outcome,) = report.outcomes
    assert outcome.status == "failed" and "appeared after the plan was made" in outcome.error
    assert not hypervisor.domain_exists("web")
    assert hypervisor.volume_capacity("default", "web-root.qcow2") == 4096


def test_a_prune_never_deletes_the_volume_of_a_domain_started_since_the_plan(hypervisor, manifest_dir):
    """A prune deletes the volumes before it undefines the domain, so the deletion itself checks that the
    domain is still ours and off: started meanwhile, the volume stays and so does the domain."""
    path = factories.write(manifest_dir, "web.yaml", factories.vm(
        "web", runStrategy="Halted", disks=[factories.disk("root", "default", "1GiB", deletionPolicy="Delete")],
    ))
    assert reconcile.apply(str(manifest_dir), hypervisor, settings=planner.Settings()).converged
    path.unlink()
    planned = reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings(allow_empty=True))
    (prune,) = planned.plan.changes
    assert [s.kind for s in prune.steps] == ["delete_volume", "undefine_domain"]
    hypervisor.start_domain("web")
    (outcome,) = execute.execute(planned.plan, hypervisor).outcomes
    assert outcome.status == "failed" and "running again" in outcome.error
    assert hypervisor.volume_exists("default", "web-root.qcow2") and hypervisor.domain_exists("web")


def test_a_cdrom_at_the_top_of_its_pool_directory_converges(hypervisor, manifest_dir, tmp_path):
    """`cdrom: {pool, path: file.iso}` names a file that is also a pool volume: one apply converges, and stays so."""
    hypervisor.create_volume("default", storagexml.render_volume("file.iso", 4096), "file.iso")
    factories.write(manifest_dir, "web.yaml", factories.vm("web", cdrom={"pool": "default", "path": "file.iso"}))
    result = reconcile.apply(str(manifest_dir), hypervisor, settings=planner.Settings())
    assert result.converged, [(r.key, r.changes) for r in result.after.changes]
    assert not reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings()).plan.has_changes


def test_vms_and_the_network_they_use_are_removed_in_one_apply(hypervisor, manifest_dir):
    """Removing the manifests of VMs and of their network converges in one pass: the network goes after the VMs."""
    network = {"apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": "lab"},
               "spec": {"mode": "isolated", "ipv4": {"address": "192.168.150.1", "prefix": 24}}}
    factories.write(manifest_dir, "lab.yaml", network)
    for name in ("web", "db"):
        factories.write(manifest_dir, f"{name}.yaml", factories.vm(name, networks=[{"network": "lab"}]))
    factories.write(manifest_dir, "keep.yaml", factories.vm("keep"))
    assert reconcile.apply(str(manifest_dir), hypervisor, settings=planner.Settings()).converged
    for name in ("lab", "web", "db"):
        (manifest_dir / f"{name}.yaml").unlink()
    result = reconcile.apply(str(manifest_dir), hypervisor, settings=planner.Settings())
    assert result.converged, [(o.kind, o.name, o.status, o.error) for o in result.report.outcomes]
    assert [o.kind for o in result.report.outcomes][-1] == "Network"
    assert not hypervisor.domain_exists("web") and not hypervisor.domain_exists("db")
    assert "lab" not in {n.name for n in hypervisor.list_networks()}


def test_a_vm_without_a_boot_order_converges(hypervisor, manifest_dir):
    """`boot: []` writes no <os><boot>; libvirt then keeps its default, <boot dev='hd'/>: apply then plan is empty."""
    factories.write(manifest_dir, "web.yaml", factories.vm("web", boot=[]))
    result = reconcile.apply(str(manifest_dir), hypervisor, settings=planner.Settings())
    assert result.converged, [(r.key, r.changes) for r in result.after.changes]
    assert not reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings()).plan.has_changes
