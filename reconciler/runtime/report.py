"""What kvmops tells people in words: the report of an apply, and the status table.

The apply report says what each resource did, what was not run, and whether the host
converged; never a bare "see above": when the host did not converge, it names every
resource still differing and why.
"""

from __future__ import annotations

import re

from reconciler.core import plan as plans
from reconciler.core import quantity
from reconciler.runtime import reconcile


def report_text(result: reconcile.ApplyResult) -> str:
    """Return what an apply did, resource by resource, and whether it converged."""
    lines = [""]
    planned = {r.key: r for r in result.planned.plan.resources}
    not_run_total = 0
    for outcome in result.report.outcomes:
        mark = {"converged": "✓", "failed": "✗", "skipped": "-"}[outcome.status]
        lines.append(f"{mark} {outcome.kind} {outcome.name}: {outcome.status}")
        for step in outcome.steps:
            detail = f" ({step.detail})" if step.detail and step.ok else ""
            status = "done" if step.ok else "FAILED"
            lines.append(f"    {status}: {step.description}{detail} [{step.duration_ms} ms]")
            if not step.ok:
                lines.append(f"      {step.detail}")
        if outcome.status == "skipped" and outcome.error:
            lines.append(f"    {outcome.error}")
        resource = planned.get(f"{outcome.kind}/{outcome.name}")
        if resource is not None and outcome.status != "converged":
            for step in resource.steps[len(outcome.steps):]:  # the executor stops a resource at its first failure
                lines.append(f"    not run: {step.describe()}")
                not_run_total += 1
    report = result.report
    succeeded = sum(1 for o in report.outcomes if o.status == "converged")
    done = sum(1 for o in report.outcomes for s in o.steps if s.ok)
    lines.append("")
    lines.append(f"Apply finished: {succeeded} of {len(report.outcomes)} resource(s) changed successfully "
                 f"({done} step(s) done, {not_run_total} not run).")
    if result.unverified is not None:
        lines.append(f"The connection to libvirtd was lost, so the result could not be checked: {result.unverified}")
        lines.append("Steps marked done were carried out; a FAILED step may or may not have taken effect; steps "
                     "not run were not attempted. Once libvirtd answers, `kvmops plan` shows what is left, and "
                     "`kvmops apply` finishes it.")
    elif result.after is None:
        lines.append("Cancelled: remaining steps were not run; apply again to converge.")
    elif result.converged:
        lines.append("Converged: a fresh plan shows no changes.")
    else:
        lines.extend(_not_converged(result))
    return "\n".join(lines) + "\n"


def _not_converged(result: reconcile.ApplyResult) -> list[str]:
    """Return why an apply did not converge, naming every resource and reason: never a bare "see above"."""
    lines = []
    failures = result.report.failures
    failed_keys = {f"{o.kind}/{o.name}" for o in failures}
    for outcome in failures:
        lines.append(f"  {outcome.kind} {outcome.name} {outcome.status}: {outcome.error or 'no error was given'}")
    for resource in result.after.changes:
        if resource.key in failed_keys:
            continue  # its failure is its reason
        if resource.changes and not {plans.Action.CREATE, plans.Action.DELETE} & set(resource.actions):
            shown = [f"{c.path} {c.old if c.old is not None else '(none)'} -> {c.new if c.new is not None else '(none)'}"
                     for c in resource.changes[:5]]
            if len(resource.changes) > 5:
                shown.append(f"and {len(resource.changes) - 5} more")
            what = "still differs after this apply: " + "; ".join(shown)
        else:
            verbs = ", ".join(a.value for a in resource.actions) or "; ".join(s.describe() for s in resource.steps)
            what = f"still to {verbs} after this apply"
        lines.append(f"  {resource.kind} {resource.name}: {what}")
    if result.after.problems:
        lines.extend(f"  {problem}" for problem in result.after.problems)
    why = []
    if failures:
        why.append(f"{len(failures)} resource(s) failed ({', '.join(o.name for o in failures)})")
    differ = [r for r in result.after.changes if r.key not in failed_keys]
    if differ:
        why.append(f"{len(differ)} resource(s) still differ ({', '.join(r.name for r in differ)})")
    if result.after.problems:
        why.append(f"{len(result.after.problems)} problem(s) remain")
    if differ and not failures and not result.after.problems:
        advice = ("Every step succeeded, yet a fresh plan still has changes: something changed the host meanwhile, "
                  "or kvmops cannot converge this resource (please report it). `kvmops plan` shows what is left.")
    else:
        advice = "Fix what is listed here and apply again; `kvmops plan` shows what is left."
    return [*lines, "Not converged: " + "; ".join(why or ["the host still differs"]) + ". " + advice]


def status_table(rows: list[dict], *, detailed: bool) -> str:
    """Return ``kvmops status``'s table of ``rows`` (:func:`reconciler.runtime.inspect.status_rows`).

    One line per VM (a SCOPE column when several scopes show), then the conditions other
    than Ready; ``detailed`` (one VM asked for by name) adds its manifest, MACs and disks.
    """
    scopes = len({row["scope"] for row in rows}) > 1
    columns = ("NAME", *(("SCOPE",) if scopes else ()), "STATE", "DESIRED", "CONDITIONS", "ADDRESSES", "VCPUS",
               "MEMORY", "REVISION")
    table = [list(columns)]
    lines: list[str] = []
    for row in rows:
        table.append([
            row["name"], *((row["scope"],) if scopes else ()), row["state"], row["desired"] or "-",
            ",".join(c["type"] for c in row["conditions"]) or "-",
            ",".join(f"{a['ip']} ({a['source']})" for a in row["addresses"]) or "-",
            str(row["vcpus"]), f"{row['memory_mib']} MiB", short_revision(row["revision"]),
        ])
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    details = [(row, c) for row in rows for c in row["conditions"] if c["type"] != "Ready"]
    if details or detailed:
        lines.append("")
    for row, condition in details:
        lines.append(f"{row['name']}: {condition['type']}: {condition['message']}")
    if detailed:
        row = rows[0]
        lines.append(f"manifest: {row['manifest'] or '-'}   scope: {row['scope']}   uuid: {row['uuid']}")
        lines.append("macs: " + (", ".join(row["macs"]) or "-"))
        for disk in row["disks"]:
            size = format_size(disk["capacity_bytes"])
            lines.append(f"disk {disk['target']}: {disk['source']} {size}")
    return "\n".join(lines) + "\n"


def short_revision(revision: str | None) -> str:
    """Return a git revision for a table: a full commit id cut to 12 digits, with its ``-dirty`` kept."""
    if not revision:
        return "-"
    return re.sub(r"^([0-9a-f]{12})[0-9a-f]{28}\b", r"\1", revision)


def format_size(capacity: int | None) -> str:
    """Return a capacity for people, or '-' when unknown."""
    return quantity.format_bytes(capacity) if capacity is not None else "-"
