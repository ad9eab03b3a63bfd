"""What kvmops tells people in words: plans in each output format, the report of an apply,
the status table (of a host, or per Host of a fleet), doctor's checks and the trash.

The apply report says what each resource did, what was not run, and whether the host
converged; never a bare "see above": when the host did not converge, it names every
resource still differing and why.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from reconciler.core import fleet, model, quantity, redaction, render, trash
from reconciler.core import plan as plans

if TYPE_CHECKING:  # what the reports are of; `kvmops plan` loads none of them
    from reconciler.runtime import doctor, fleet_reconcile, fleet_status, recovery, reconcile


def plan_text(plan: plans.Plan, *, output: str, colour: bool, source: str, title: str | None = None) -> str:
    """Return ``plan`` as ``output`` says: ``text`` (for people), ``json`` or ``markdown`` (a pull-request comment)."""
    if output == "json":
        return render.to_json(plan)
    if output == "markdown":
        return render.markdown(plan, title=title)
    return render.text(plan, colour=colour, source=source, title=title)


def fleet_plan_text(plan: fleet.FleetPlan, *, output: str, colour: bool, source: str, title: str | None = None) -> str:
    """Return a fleet plan (grouped per Host) as ``output`` says, as :func:`plan_text` does for one host."""
    if output == "json":
        return render.fleet_to_json(plan)
    if output == "markdown":
        return render.fleet_markdown(plan, title=title)
    return render.fleet_text(plan, colour=colour, source=source, title=title)


def fleet_plan_problems(plan: fleet.FleetPlan) -> list[model.Problem]:
    """Return the fleet's problems and every Host's, in that order."""
    return [*plan.problems, *(p for h in plan.hosts if h.plan is not None for p in h.plan.problems)]


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


def fleet_report_text(result: fleet_reconcile.FleetApplyResult) -> str:
    """Return what a fleet apply did: a section per host (as :func:`report_text` words one host),
    the migrations, the hosts that could not be reached, and whether the fleet converged."""
    from reconciler.runtime import reconcile

    planned = result.planned
    after = {h.host: h for h in result.after.hosts} if result.after is not None else {}
    lines: list[str] = []
    for host in planned.plan.hosts:
        report = result.reports.get(host.host)
        if report is None:
            continue
        actual = planned.observed.get(host.host)
        later = after.get(host.host)
        unverified = None
        if later is not None and later.unreachable is not None:
            unverified = later.unreachable
        host_result = reconcile.ApplyResult(
            reconcile.PlanResult(planned.desired, actual, host.plan), report,
            later.plan if later is not None else None, unverified=unverified,
        )
        lines.append(f"Host {host.host}:")
        lines.extend("  " + line if line else line for line in report_text(host_result).rstrip("\n").split("\n")[1:])
        lines.append("")
    if result.migrations.outcomes:
        lines.append("Migrations:")
        for outcome in result.migrations.outcomes:
            mark = {"converged": "✓", "failed": "✗", "skipped": "-"}[outcome.status]
            lines.append(f"  {mark} {outcome.kind} {outcome.name}: {outcome.status}")
            for step in outcome.steps:
                status = "done" if step.ok else "FAILED"
                detail = f" ({step.detail})" if step.detail and step.ok else ""
                lines.append(f"      {status}: {step.description}{detail} [{step.duration_ms} ms]")
                if not step.ok:
                    lines.append(f"        {step.detail}")
            if outcome.status != "converged" and outcome.error and not outcome.steps:
                lines.append(f"      {outcome.error}")
        lines.append("")
    for host in planned.plan.unreachable:
        word = "MISSING" if host.missing else "UNREACHABLE"
        lines.append(f"Host {host.host}: {word}, nothing was done there: {host.unreachable}")
        lines.append("")
    lines.append(_fleet_verdict(result))
    return "\n".join(lines) + "\n"


def _fleet_verdict(result: fleet_reconcile.FleetApplyResult) -> str:
    if result.after is None:
        return "Cancelled: remaining steps were not run; apply again to converge."
    if result.converged:
        return f"Fleet converged: a fresh plan shows no changes on any host. {result.after.summary()}"
    why = []
    failed = [f"{host}: {o.name}" for host, report in result.reports.items() for o in report.failures]
    failed += [f"migration of {o.name}" for o in result.migrations.failures]
    if failed:
        why.append(f"{len(failed)} resource(s) failed or were skipped ({', '.join(failed)})")
    differ = [f"{h.host}: {r.name}" for h in result.after.hosts if h.plan is not None for r in h.plan.changes]
    if differ:
        why.append(f"{len(differ)} resource(s) still differ ({', '.join(differ)})")
    problems = len(result.after.problems) + sum(len(h.plan.problems) for h in result.after.hosts if h.plan is not None)
    if problems:
        why.append(f"{problems} problem(s) remain")
    silent = [h.host for h in result.after.unreachable if not h.missing]
    if silent:
        why.append(f"unreachable: {', '.join(silent)} (its pruning is suspended; apply again once it answers)")
    if result.after.missing:
        why.append(f"missing: {', '.join(h.host for h in result.after.missing)} (named in the fleet's marks, declared "
                   "by no Host manifest: pruning is suspended on every host; restore its manifest or forget-host it)")
    return ("Fleet not converged: " + "; ".join(why or ["the fleet still differs"]) + ". `kvmops plan` shows what is left. "
            + result.after.summary())


def fleet_status_text(status: fleet_status.FleetStatus, *, detailed: bool) -> str:
    """Return ``kvmops status`` for a fleet: each Host's table (or why it has none), then the fleet in one line."""
    lines = []
    for section in status.hosts:
        host = section.host
        cordoned = ", cordoned" if not host.schedulable else ""
        lines.append(f"Host {host.host} ({redaction.redact_url(host.uri)}{cordoned})\n" if not host.missing
                     else f"Host {host.host} (no Host manifest)\n")
        if section.error is not None:
            lines.append(f"  {'MISSING' if host.missing else 'UNREACHABLE'}: {section.error}\n")
            if host.unknown or host.vms:
                lines.append(f"  Unknown: {', '.join(host.unknown or host.vms)}\n")
        elif not section.rows:
            lines.append("  no domains managed by kvmops\n")
        else:
            lines.append("".join(f"  {line}\n" if line else "\n"
                                 for line in status_table(section.rows, detailed=detailed).rstrip("\n").split("\n")))
        lines.append("\n")
    line = f"Fleet {status.fleet}: {len(status.hosts)} host(s), {status.managed} managed VM(s)"
    if status.unreachable:
        line += f"; unreachable: {', '.join(status.unreachable)}"
    return "".join(lines) + line + "\n"


def checks_text(checks: list[doctor.Check], indent: str = "") -> str:
    """Return doctor's findings, one line each, with what to fix under each one that is not ok."""
    marks = {True: "ok  ", False: "FAIL", None: "warn"}
    lines = []
    for check in checks:
        # a detail may quote a URI, password and all (libvirt's own messages do)
        lines.append(f"{indent}[{marks[check.ok]}] {check.name}: {redaction.redact_text(check.detail)}\n")
        if check.fix and check.ok is not True:
            lines.append(f"{indent}       fix: {redaction.redact_text(check.fix)}\n")
    return "".join(lines)


def checks_summary(checks: list[doctor.Check]) -> str:
    """Return doctor's last line on one host: how many checks, failed and warnings."""
    failed = sum(1 for c in checks if c.ok is False)
    warned = sum(1 for c in checks if c.ok is None)
    return f"\n{len(checks)} checks: {failed} failed, {warned} warnings\n"


def fleet_checks_text(found: doctor.FleetChecks) -> str:
    """Return doctor's findings for a fleet: the manifests' problems, each Host's checks, then the totals."""
    lines = [f"[FAIL] manifests: {redaction.redact_text(str(problem))}\n" for problem in found.problems]
    for name, checks in found.by_host.items():
        lines.append(f"Host {name} ({redaction.redact_url(found.uris[name])})\n")
        lines.append(checks_text(checks, indent="  "))
        lines.append("\n")
    total = sum(len(checks) for checks in found.by_host.values()) + len(found.problems)
    warned = sum(1 for checks in found.by_host.values() for c in checks if c.ok is None)
    lines.append(f"{len(found.by_host)} host(s), {total} checks: {found.failed} failed, {warned} warnings\n")
    return "".join(lines)


def host_checks_text(checked: fleet.FleetCheck) -> str:
    """Return ``validate --live``'s section per Host: what it lacks, or that it lacks nothing, or why it was not checked."""
    lines = []
    for host in checked.hosts:
        where = f"Host {host.host}" + (f" ({redaction.redact_url(host.uri)})" if host.uri else " (no Host manifest)")
        if host.unreachable is not None:
            state = "MISSING" if host.missing else "UNREACHABLE"
            lines.append(f"{where}: {state}: {redaction.redact_text(host.unreachable)}\n")
        elif host.problems:
            lines.append(f"{where}: {len(host.problems)} problem(s)\n")
            lines.extend(f"  {redaction.redact_text(str(problem))}\n" for problem in host.problems)
        else:
            lines.append(f"{where}: ok\n")
    return "".join(lines)


def trash_table(rows: list[dict]) -> str:
    """Return ``kvmops trash list``'s table of :func:`reconciler.runtime.recovery.rows`."""
    columns = ("POOL", "VOLUME", "VM", "SCOPE", "SIZE", "DELETED", "STATE")
    table = [list(columns)] + [[row[c.lower()] or "-" for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() + "\n" for line in table)


def restored_text(restored: recovery.Restored) -> str:
    """Return what ``kvmops trash restore`` did, and how to get the disk back into its VM."""
    entry = restored.entry
    lines = [f"restored volume {entry.pool}/{entry.volume} ({quantity.format_bytes(entry.capacity)}, deleted "
             f"{trash.format_instant(entry.deleted_at)} from VM {entry.vm or '-'}, scope {entry.scope}) to {restored.path}"]
    if restored.others:
        lines.append(f"{restored.others} older deletion(s) of {entry.volume} stay in the trash (kvmops trash list)")
    if entry.vm:
        lines.append(f"declare the disk again in VM {entry.vm} (pool: {entry.pool}, volume: {entry.volume}) in scope "
                     f"{entry.scope} and apply: kvmops reattaches it and treats it as the volume it created, as before")
    return "".join(line + "\n" for line in lines)
