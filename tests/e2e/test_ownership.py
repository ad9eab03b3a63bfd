"""Never touch what is not kvmops': clones, shared volumes, files kvmops did not create.

On the real libvirtd with QEMU: clones are made with ``virt-clone`` itself, other users of
a volume are hand-made domains (defined the way a person would with virsh), and files are
looked at with ``stat`` and ``qemu-img``.  Every ``plan``/``apply`` runs in the test's
own scope; pruning runs only this test's objects (see
:func:`tests.e2e.test_engine.apply_pruning_own_objects`).
"""

from __future__ import annotations

import json
import os
import subprocess

import libvirt
import pytest

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import plan as plans
from reconciler.runtime import execute
from tests import factories
from tests.e2e.commands import apply_ok, kvmops, output, plan_is_empty
from tests.e2e.test_engine import apply_pruning_own_objects, disk, resource_block, vm, volume_file, write_pool

MIB = 1024 * 1024

pytestmark = pytest.mark.e2e


def clone(host, original: str, suffix: str) -> libvirt.virDomain:
    """Clone domain ``original`` with virt-clone (disks copied), as an operator would."""
    name = host.name(suffix)
    done = subprocess.run(
        ["virt-clone", "--connect", host.uri, "--original", original, "--name", name, "--auto-clone"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return host.domain(name)


def plan_json(host, *, prune: bool = True) -> dict:
    result = kvmops(host, "plan", host.manifests, "--output", "json", prune=prune)
    assert result.returncode in (0, 1), output(result)
    return json.loads(result.stdout)


# --- 1. a clone carries a copied mark --------------------------------------------------


def test_a_virt_clone_of_a_managed_vm_is_foreign_and_never_pruned(host):
    """virt-clone copies web's mark into the clone: the plan calls the clone foreign with a warning, pruning leaves it defined and unchanged."""
    write_pool(host)
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted", disks=[
        disk(host, "root", deletionPolicy="Delete"),
    ]))
    apply_ok(host)
    copy = clone(host, host.name("web"), "web-clone")
    assert "kvmops" in copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "virt-clone copies the metadata"
    xml = copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    data = plan_json(host)
    assert copy.name() in data["foreign"]
    assert copy.name() not in [r["name"] for r in data["resources"]]
    assert any(w.startswith(f"domain {copy.name()} carries a copied kvmops mark (written for domain {host.name('web')}, "
                            f"UUID {host.domain(host.name('web')).UUIDString()}); treated as foreign")
               for w in data["warnings"]), data["warnings"]

    planned, report = apply_pruning_own_objects(host)
    assert report.ok, report
    assert host.domain(copy.name()) is not None
    assert copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == xml
    plan_is_empty(host)


def test_the_executor_refuses_to_undefine_a_clone_at_the_last_moment(host):
    """Even a plan that names the clone (made before the check existed, or by a bug) cannot undefine it: the step fails and the clone stays."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted"))
    apply_ok(host)
    copy = clone(host, host.name("web"), "web-clone")
    forged = plans.Plan(uri=host.uri, resources=(plans.ResourcePlan(
        kind="VirtualMachine", name=copy.name(), actions=(plans.Action.DELETE,),
        steps=(plans.UndefineDomain(copy.name(), copy.UUIDString()),),
    ),))
    with hv.Hypervisor.open(host.uri) as hypervisor:
        report = execute.execute(forged, hypervisor)
        with pytest.raises(errors.OwnershipError, match="copied from another domain"):
            hypervisor.ensure_owned(copy.name(), copy.UUIDString())
    (outcome,) = report.outcomes
    assert outcome.status == "failed" and "copied from another domain" in outcome.error, outcome
    assert host.domain(copy.name()) is not None


def test_a_manifest_naming_a_clone_is_refused_and_the_clone_left_alone(host):
    """A manifest declaring the clone's name is a problem naming the copied mark; the clone's XML does not change."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted"))
    apply_ok(host)
    copy = clone(host, host.name("web"), "web-clone")
    xml = copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    factories.write(host.manifests, "vms/clone.yaml", vm(host, "web-clone", memory="48MiB", runStrategy="Halted"))

    result = kvmops(host, "apply", host.manifests)
    assert result.returncode == 1, output(result)
    assert "carries a kvmops mark copied from another domain" in result.stdout, output(result)
    assert copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == xml
