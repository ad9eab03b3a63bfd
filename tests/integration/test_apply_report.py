"""The report at the end of ``kvmops apply``: a pass that does not converge always says what and why."""

from __future__ import annotations

import dataclasses

from reconciler.core import model, planner
from reconciler.runtime import execute, reconcile, report
from tests import factories


def test_a_pass_whose_steps_all_succeeded_but_that_did_not_converge_names_what_still_differs(hypervisor, manifest_dir):
    """When every step succeeded yet a fresh plan still has changes, the report names each resource and its change."""
    factories.write(manifest_dir, "web.yaml", factories.vm("web", vcpus=2))
    planned = reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings())
    nothing_done = execute.ApplyReport(())
    result = reconcile.ApplyResult(planned, nothing_done, after=planned.plan)
    text = report.report_text(result)
    assert "Not converged" in text
    assert "Fix the errors above" not in text
    assert "VirtualMachine web: still to create, start after this apply" in text
    assert "kvmops plan" in text


def test_problems_found_after_the_apply_are_printed_in_the_report(hypervisor, manifest_dir):
    """A problem that only the plan after the apply shows is written out, file, line and message."""
    factories.write(manifest_dir, "web.yaml", factories.vm("web"))
    planned = reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings())
    problem = model.Problem("manifests/web.yaml", 4, "spec.vcpus", "something only seen afterwards")
    after = dataclasses.replace(planned.plan, resources=(), problems=(problem,))
    text = report.report_text(reconcile.ApplyResult(planned, execute.ApplyReport(()), after=after))
    assert "Not converged" in text
    assert str(problem) in text


def test_a_failed_step_is_named_in_the_closing_line(hypervisor, manifest_dir):
    """The closing line of a failed apply names the failed resource and its error, not just a count."""
    factories.write(manifest_dir, "web.yaml", factories.vm("web"))
    planned = reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings())
    failed = execute.ResourceOutcome("VirtualMachine", "web", "failed",
                                     (execute.StepOutcome("define domain web", False, "libvirt said no"),),
                                     error="libvirt said no")
    text = report.report_text(reconcile.ApplyResult(planned, execute.ApplyReport((failed,)), after=planned.plan))
    closing = text.strip().splitlines()[-1]
    assert "VirtualMachine web failed: libvirt said no" in text
    assert closing.startswith("Not converged") and "web" in closing


def test_a_resource_that_still_differs_is_reported_with_its_changes(hypervisor, manifest_dir):
    """An existing VM a fresh plan still finds different is named with the field, old and new value."""
    factories.write(manifest_dir, "web.yaml", factories.vm("web", vcpus=1))
    assert reconcile.apply(str(manifest_dir), hypervisor, settings=planner.Settings()).converged
    factories.write(manifest_dir, "web.yaml", factories.vm("web", vcpus=2))
    planned = reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings())
    text = report.report_text(reconcile.ApplyResult(planned, execute.ApplyReport(()), after=planned.plan))
    assert "VirtualMachine web: still differs after this apply: vcpus 1 -> 2" in text
