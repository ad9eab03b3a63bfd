"""Converging on libvirt's test driver: apply, then a second plan is empty."""

from __future__ import annotations

from reconciler.core import planner
from reconciler.runtime import reconcile
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
