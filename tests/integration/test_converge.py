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
