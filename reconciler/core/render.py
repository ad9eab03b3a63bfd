"""Print a :class:`~reconciler.core.plan.Plan` for people (text) and programs (JSON).

The text reads like a good ``terraform plan``: one block per resource that changes, one
line per changed field with its impact, data loss called out in words, then a summary.
The JSON layout is versioned (``format_version``) and documented in ``docs/plan-json.md``;
fields are only ever added to it within a version.
"""

from __future__ import annotations

import json

from reconciler.core import fleet, model, redaction
from reconciler.core.plan import Action, FieldChange, Impact, Plan, ResourcePlan

JSON_FORMAT_VERSION = "1"

_COLOURS = {"+": "32", "~": "33", "-": "31", ">": "36", "■": "35", "→": "34", "!": "31;1", "dim": "2", "bold": "1"}


class _Paint:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, style: str) -> str:
        if not self.enabled or style not in _COLOURS:
            return text
        return f"\x1b[{_COLOURS[style]}m{text}\x1b[0m"


def text(plan: Plan, *, colour: bool = False, source: str | None = None, title: str | None = None) -> str:
    """Return ``plan`` as text for a terminal or a log."""
    paint = _Paint(colour)
    lines: list[str] = []
    header = title or f"kvmops plan for {redaction.redact_url(plan.uri)}"
    if source and not title:
        header += f" from {source}"
    lines.append(paint(header, "bold") + f" ({declared_counts(plan)})")
    if plan.snapshot:
        lines.append(paint(plan.snapshot, "!"))
    lines.append("")

    for resource in plan.changes:
        lines.extend(_resource_lines(resource, paint))
        lines.append("")

    unchanged_notes = [r for r in plan.resources if not r.changed and r.notes and not r.problems]
    for resource in unchanged_notes:
        for note in resource.notes:
            lines.append(f"  {resource.kind} {resource.name}: {note}")
    if unchanged_notes:
        lines.append("")

    if plan.problems:
        lines.append(paint(f"Problems ({len(plan.problems)}): these resources are left as they are", "!"))
        lines.extend(f"  {problem}" for problem in plan.problems)
        lines.append("")
    if plan.prune_suspended:
        lines.append(paint("Pruning suspended: ", "!") + plan.prune_suspended)
        if plan.kept:
            lines.append(f"  kept although no manifest declares them: {', '.join(plan.kept)}")
        lines.append("")
    if plan.foreign:
        lines.append(f"Ignored {_count(len(plan.foreign), 'foreign domain')} (not managed by kvmops, never changed): "
                     + ", ".join(plan.foreign))
        lines.append("")
    if plan.elsewhere:
        lines.append(f"Ignored {_count(len(plan.elsewhere), 'domain')} managed by other kvmops scopes: "
                     + ", ".join(plan.elsewhere))
        lines.append("")
    for warning in plan.warnings:
        lines.append(paint("Warning: ", "!") + warning)
    if plan.warnings:
        lines.append("")

    data_loss = [(r, c) for r in plan.resources for c in r.changes if c.impact is Impact.DATA_LOSS]
    for resource, change in data_loss:
        how = change.loss or "is destroyed"
        lines.append(paint("DATA LOSS: ", "!") + f"{resource.kind} {resource.name}: {change.path} {how}")
    if data_loss:
        lines.append("")
    lines.append(summary(plan))
    return "\n".join(lines) + "\n"


_KIND_NOUNS = (("VirtualMachine", "VM"), ("StoragePool", "pool"), ("Network", "network"), ("Image", "image"))


def declared_counts(plan: Plan) -> str:
    """Return how many resources of each kind the manifests declare, e.g. ``2 VMs, 1 network``.

    What is only being removed or kept (a pruned VM or network, an import's leftover) is
    not declared, so not counted; a kind with none is left out, except VMs.  A plan built
    without those counts falls back on its resources that are not being removed.
    """
    counts = dict(plan.declared)
    resources = [r for r in plan.resources if Action.DELETE not in r.actions]
    parts = []
    for kind, noun in _KIND_NOUNS:
        number = counts[kind] if kind in counts else sum(1 for r in resources if r.kind == kind)
        if number or kind == "VirtualMachine":
            parts.append(_count(number, noun))
    return ", ".join(parts)


def summary(plan: Plan) -> str:
    """Return the one-line summary: counts of actions and impacts, or that nothing changes."""
    unchanged = sum(1 for r in plan.resources if not r.changed and not r.problems)
    if not plan.has_changes:
        text = f"No changes. {_count(unchanged, 'resource')} up to date."
    else:
        actions = plan.action_counts()
        parts = [f"{actions[a]} to {a.value}" for a in Action if actions[a]]
        text = "Plan: " + ", ".join(parts) + "."
        impacts = plan.impact_counts()
        shown = [f"{impacts[i]} {i.value}" for i in (Impact.RESTART, Impact.REPLACE, Impact.DATA_LOSS) if impacts[i]]
        if shown:
            text += " Impact: " + ", ".join(shown) + "."
        if unchanged:
            text += f" {unchanged} unchanged."
    if plan.problems:
        text += f" {_count(len(plan.problems), 'problem')}."
    return text


def _resource_lines(resource: ResourcePlan, paint: _Paint) -> list[str]:
    glyph = resource.actions[0].glyph if resource.actions else "~"
    title = f"{resource.kind} {resource.name}"
    where = f"  ({resource.manifest})" if resource.manifest else ""
    verbs = ", ".join(a.value for a in resource.actions)
    lines = [f"  {paint(glyph, glyph)} {paint(title, 'bold')}{paint(where, 'dim')}  {verbs}"]
    creating = Action.CREATE in resource.actions
    width = max((len(c.path) for c in resource.changes), default=0)
    for change in resource.changes:
        lines.append("      " + _change_line(change, width, creating, paint))
    for step in resource.steps:
        if step.kind in ("start_domain", "stop_domain", "start_pool"):
            mark = "■" if step.kind == "stop_domain" else ">"
            lines.append(f"      {paint(mark, mark)} {step.describe()}")
    for note in resource.notes:
        lines.append(paint(f"      note: {note}", "dim"))
    return lines


def _change_line(change: FieldChange, width: int, creating: bool, paint: _Paint) -> str:
    path = change.path.ljust(width)
    if creating and change.old is None:
        return f"  {path}  {change.new}"
    if change.old is None:
        body = f"{paint('+', '+')} {path}  {change.new}"
    elif change.new is None:
        body = f"{paint('-', '-')} {path}  {change.old}"
    else:
        body = f"{paint('~', '~')} {path}  {change.old} -> {change.new}"
    impact = change.impact.value
    style = "!" if change.impact in (Impact.DATA_LOSS, Impact.REPLACE) else "dim"
    body += "  " + paint(f"({impact})", style)
    if change.note:
        body += f"  {change.note}"
    return body


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def to_data(plan: Plan) -> dict:
    """Return ``plan`` as JSON-ready data (layout version :data:`JSON_FORMAT_VERSION`)."""
    actions = plan.action_counts()
    impacts = plan.impact_counts()
    return {
        "format_version": JSON_FORMAT_VERSION,
        "uri": redaction.redact_url(plan.uri),
        "has_changes": plan.has_changes,
        "summary": {
            "actions": {a.value: actions[a] for a in Action},
            "impacts": {i.value: impacts[i] for i in Impact},
            "unchanged": sum(1 for r in plan.resources if not r.changed and not r.problems),
            "problems": len(plan.problems),
            "text": summary(plan),
        },
        "resources": [_resource_data(r) for r in plan.resources],
        "foreign": list(plan.foreign),
        "elsewhere": list(plan.elsewhere),
        "warnings": list(plan.warnings),
        "snapshot": plan.snapshot,
        "prune": {"suspended": plan.prune_suspended is not None, "reason": plan.prune_suspended, "kept": list(plan.kept)},
        "problems": [problem_data(p) for p in plan.problems],
    }


def to_json(plan: Plan) -> str:
    """Return ``plan`` as indented JSON text."""
    return json.dumps(to_data(plan), indent=2, ensure_ascii=False) + "\n"


def problem_data(problem: model.Problem) -> dict:
    """Return a problem as JSON-ready data, including its one-line text."""
    return {"file": problem.file, "line": problem.line, "path": problem.path, "message": problem.message, "text": str(problem)}


def _resource_data(resource: ResourcePlan) -> dict:
    return {
        "kind": resource.kind,
        "name": resource.name,
        "manifest": resource.manifest,
        "actions": [a.value for a in resource.actions],
        "changes": [
            {"path": c.path, "old": c.old, "new": c.new, "impact": c.impact.value, "note": c.note,
             **({"loss": c.loss} if c.loss else {})}
            for c in resource.changes
        ],
        "steps": [step.to_dict() for step in resource.steps],
        "notes": list(resource.notes),
        "problems": [problem_data(p) for p in resource.problems],
        "requires": list(resource.requires),
    }


# --- Markdown, for pull-request comments ------------------------------------------------

MARKDOWN_MARKER = "<!-- kvmops-plan -->"
_IMPACT_ORDER = (Impact.DATA_LOSS, Impact.REPLACE, Impact.RESTART, Impact.LIVE)


def markdown(plan: Plan, *, title: str | None = None) -> str:
    """Return ``plan`` as a pull-request comment for GitHub or GitLab.

    It opens with an HTML marker (so a CI job can find and update its own comment),
    calls out data loss and replacements first, summarises every changed resource in a
    table, then folds each resource's field changes into a ``<details>`` block.
    """
    return "\n".join([MARKDOWN_MARKER, *_markdown_lines(plan, title=title)]).rstrip() + "\n"


def _markdown_lines(plan: Plan, *, title: str | None, level: str = "###") -> list[str]:
    lines = [f"{level} {_md(title or f'kvmops plan for {redaction.redact_url(plan.uri)}')}", ""]
    if plan.snapshot:
        lines += [f"_{_md(plan.snapshot)}_", ""]
    callouts: list[str] = []
    if plan.problems:
        suspended = " Pruning is suspended until they are fixed." if plan.prune_suspended else ""
        callouts.append(f"> :x: **{len(plan.problems)} problem(s)**: the resources concerned are left as they are "
                        f"(details below).{suspended}")
    warnings = sorted(
        ((resource, change) for resource in plan.resources for change in resource.changes
         if change.impact in (Impact.DATA_LOSS, Impact.REPLACE)),
        key=lambda pair: _IMPACT_ORDER.index(pair[1].impact),
    )
    for resource, change in warnings:
        callouts.append("> :warning: " + _warning_text(resource, change))
    for resource in plan.resources:
        for note in resource.notes:
            if note.startswith("DATA LOSS"):
                callouts.append(f"> :warning: {resource.kind} {_code(resource.name)}: {_md(note)}")
    if callouts:
        lines += "\n>\n".join(callouts).split("\n") + [""]  # '>' alone keeps each callout its own paragraph
    lines += [f"**{_md(summary(plan))}**", ""]

    if plan.changes:
        lines += ["| | Resource | Manifest | Actions | Impact |", "|---|---|---|---|---|"]
        for resource in plan.changes:
            glyph = resource.actions[0].glyph if resource.actions else "~"
            lines.append(
                f"| {glyph} | {resource.kind} {_code(resource.name)} | {_code(resource.manifest) if resource.manifest else ''} "
                f"| {', '.join(a.value for a in resource.actions)} | {_worst_impact(resource)} |"
            )
        lines.append("")
        for resource in plan.changes:
            lines += _markdown_details(resource)

    if plan.problems:
        lines += [f"#### :x: Problems ({len(plan.problems)})", ""]
        lines += [f"- {_code(f'{p.file}:{p.line}' if p.line else p.file)} {_code(p.path) if p.path else ''} {_md(p.message)}"
                  for p in plan.problems]
        lines.append("")
    if plan.prune_suspended:
        kept = f" Kept: {', '.join(_code(n) for n in plan.kept)}." if plan.kept else ""
        lines += [f"**Pruning suspended:** {_md(plan.prune_suspended)}.{kept}", ""]
    if plan.foreign:
        lines += [f"Ignored foreign domains (not managed by kvmops): {', '.join(_code(n) for n in plan.foreign)}", ""]
    if plan.elsewhere:
        lines += [f"Ignored domains of other kvmops scopes: {', '.join(_code(n) for n in plan.elsewhere)}", ""]
    lines += [f"> :warning: {_md(warning)}" for warning in plan.warnings]
    return lines


def _warning_text(resource: ResourcePlan, change: FieldChange) -> str:
    subject = f"{resource.kind} {_code(resource.name)}"
    if change.impact is Impact.DATA_LOSS and change.path.startswith("trash entry "):
        return f"**Data loss**: {_code(change.path.removeprefix('trash entry '))} ({_md(change.old)}): {_md(change.loss)}"
    if change.impact is Impact.DATA_LOSS:
        what = change.path.removeprefix("volume ")
        size = f" ({_md(change.old)})" if change.old else ""
        removed = " is removed and" if Action.DELETE in resource.actions else ":"
        how = f"is {_md(change.loss)}" if change.loss else "is deleted"
        return f"**Data loss**: {subject}{removed} volume {_code(what)}{size} {how} (deletionPolicy Delete)"
    return (f"**Replacement**: {subject}: {_code(change.path)} changes from {_code(change.old)} to {_code(change.new)}, "
            "a new, empty volume; the old one is detached, not deleted")


def _markdown_details(resource: ResourcePlan) -> list[str]:
    count = len(resource.changes)
    summary_line = f"{resource.kind} <code>{_html(resource.name)}</code>: {', '.join(a.value for a in resource.actions)}"
    summary_line += f" ({count} change{'' if count == 1 else 's'})" if count else ""
    lines = ["<details>", f"<summary>{summary_line}</summary>", ""]
    if resource.changes and Action.CREATE in resource.actions:
        lines += ["| Field | Value |", "|---|---|"]
        lines += [f"| {_code(change.path)} | {_md(change.new)} |" for change in resource.changes]
        lines.append("")
    elif resource.changes:
        lines += ["| Field | Old | New | Impact | Note |", "|---|---|---|---|---|"]
        for change in resource.changes:
            impact = change.impact.value
            if change.impact in (Impact.DATA_LOSS, Impact.REPLACE):
                impact = f"**{impact}**"
            lines.append(
                f"| {_code(change.path)} | {_md(change.old) if change.old is not None else ''} "
                f"| {_md(change.new) if change.new is not None else ''} | {impact} | {_md(change.note)} |"
            )
        lines.append("")
    steps = [s.describe() for s in resource.steps]
    if steps:
        lines += ["Steps: " + "; ".join(_md(s) for s in steps), ""]
    lines += [f"- {_md(note)}" for note in resource.notes]
    if resource.notes:
        lines.append("")
    lines += ["</details>", ""]
    return lines


def _worst_impact(resource: ResourcePlan) -> str:
    impacts = {c.impact for c in resource.changes}
    if Action.CREATE in resource.actions:
        return "new"
    if Action.DELETE in resource.actions and Impact.DATA_LOSS not in impacts:
        return "removed, volumes kept"
    for impact in _IMPACT_ORDER:
        if impact in impacts:
            return f"**{impact.value}**" if impact in (Impact.DATA_LOSS, Impact.REPLACE) else impact.value
    return ""


def _md(text: object) -> str:
    """Return ``text`` safe inside a Markdown table cell or paragraph."""
    value = str(text or "")
    for char in ("\\", "|", "*", "_", "`", "<", ">", "[", "]"):
        value = value.replace(char, "\\" + char)
    return value.replace("\n", " ")


def _code(text: object) -> str:
    value = str(text or "").replace("|", "\\|").replace("\n", " ")
    fence = "``" if "`" in value else "`"
    return f"{fence}{value}{fence}" if value else ""


def _html(text: object) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- fleets: one section per host, migrations, a fleet summary --------------------------


def fleet_text(plan: fleet.FleetPlan, *, colour: bool = False, source: str | None = None, title: str | None = None) -> str:
    """Return a fleet plan as text: a section per host (its plan as :func:`text` prints it,
    with the migrations of the VMs leaving it), then the unreachable hosts, the VMs of
    unknown whereabouts and the fleet's problems, then the summary line."""
    paint = _Paint(colour)
    header = title or f"kvmops fleet plan for fleet {plan.fleet}" + (f" from {source}" if source else "")
    lines = [paint(header, "bold"), ""]
    for host in plan.hosts:
        if host.plan is None:
            continue
        cordoned = ", cordoned" if not host.schedulable else ""
        lines.append(text(host.plan, colour=colour, title=f"Host {host.host} ({redaction.redact_url(host.uri)}{cordoned})"))
    for host in plan.missing:
        lines.append(paint(f"Host {host.host}: MISSING", "!") + f": {host.unreachable}")
        lines.append("  nothing is planned there, pruning is suspended on every host, and a VM found on no reachable "
                     "host is never created elsewhere (it may run there)")
        if host.unknown:
            lines.append(f"  Unknown: {', '.join(host.unknown)}")
            lines.append(f"    {fleet.why_held_for_missing(host.unknown, (host.host,))}")
        lines.append("")
    for host in (h for h in plan.unreachable if not h.missing):
        lines.append(paint(f"Host {host.host} ({redaction.redact_url(host.uri)}): UNREACHABLE", "!") + f": {host.unreachable}")
        lines.append("  nothing is planned there and its pruning is suspended; its VMs are never placed elsewhere "
                     f"(kvmops evacuate {host.host} --host-is-dead moves them)")
        if host.unknown:
            lines.append(f"  Unknown: {', '.join(host.unknown)}")
            lines.append(f"    {fleet.why_unknown(host.unknown, (host.host,))}")
        lines.append("")
    elsewhere = {vm: hosts for vm, hosts in plan.unknown.items() if len(hosts) > 1}
    missing = {h.host for h in plan.missing}
    for vm, hosts in elsewhere.items():
        lines.append(f"Unknown: VM {vm} may run on any of the unreachable hosts {', '.join(hosts)}; it is not created")
        gone = [h for h in hosts if h in missing]
        lines.append(f"  {fleet.why_held_for_missing((vm,), gone) if gone else fleet.why_unknown((vm,), hosts)}")
    if elsewhere:
        lines.append("")
    for note in plan.notes:
        lines.append(f"Note: {note}")
    if plan.notes:
        lines.append("")
    if plan.problems:
        lines.append(paint(f"Fleet problems ({len(plan.problems)}): pruning is suspended on every host", "!"))
        lines.extend(f"  {problem}" for problem in plan.problems)
        lines.append("")
    lines.append(paint(plan.summary(), "bold"))
    return "\n".join(lines) + "\n"


def fleet_to_data(plan: fleet.FleetPlan) -> dict:
    """Return a fleet plan as JSON-ready data (layout version :data:`JSON_FORMAT_VERSION`, ``kind: fleet``)."""
    return {
        "format_version": JSON_FORMAT_VERSION,
        "kind": "fleet",
        "fleet": plan.fleet,
        "has_changes": plan.has_changes,
        "summary": {
            "text": plan.summary(),
            "hosts": len(plan.hosts),
            "vms": {host.host: len(host.vms) for host in plan.hosts},
            "migrations": len(plan.migrations),
            "unreachable": [host.host for host in plan.unreachable if not host.missing],
            "missing": [host.host for host in plan.missing],
            "split_brain": len(plan.split_brain),
            "problems": len(plan.problems),
        },
        "hosts": [
            {"host": host.host, "uri": redaction.redact_url(host.uri), "schedulable": host.schedulable,
             "vms": list(host.vms), "unreachable": host.unreachable, "unknown": list(host.unknown),
             **({"missing": True} if host.missing else {}),
             "plan": to_data(host.plan) if host.plan is not None else None}
            for host in plan.hosts
        ],
        "migrations": [
            {"vm": r.name, "source": r.steps[0].source, "destination": r.steps[0].destination,
             "mode": r.steps[0].mode.value, "impact": r.changes[0].impact.value}
            for r in plan.migrations if r.steps
        ],
        "split_brain": [{"vm": brain.vm, "hosts": list(brain.hosts)} for brain in plan.split_brain],
        "unknown": {vm: list(hosts) for vm, hosts in plan.unknown.items()},
        "problems": [problem_data(p) for p in plan.problems],
        **({"notes": list(plan.notes)} if plan.notes else {}),
    }


def fleet_to_json(plan: fleet.FleetPlan) -> str:
    """Return a fleet plan as indented JSON text."""
    return json.dumps(fleet_to_data(plan), indent=2, ensure_ascii=False) + "\n"


def fleet_markdown(plan: fleet.FleetPlan, *, title: str | None = None) -> str:
    """Return a fleet plan as a pull-request comment: the fleet's callouts and migrations, then a section per host."""
    lines = [MARKDOWN_MARKER, f"## {_md(title or f'kvmops fleet plan for fleet {plan.fleet}')}", "",
             f"**{_md(plan.summary())}**", ""]
    callouts = []
    missing = {h.host for h in plan.missing}
    for host in plan.missing:
        unknown = (f" Unknown: {', '.join(_code(vm) for vm in host.unknown)}: "
                   f"{_md(fleet.why_held_for_missing(host.unknown, (host.host,)))}." if host.unknown else "")
        callouts.append(f"> :x: **Host {_code(host.host)} is missing**: {_md(host.unreachable)}. Pruning is suspended "
                        f"on every host.{unknown}")
    for host in (h for h in plan.unreachable if not h.missing):
        unknown = (f" Unknown: {', '.join(_code(vm) for vm in host.unknown)}: "
                   f"{_md(fleet.why_unknown(host.unknown, (host.host,)))}." if host.unknown else "")
        callouts.append(f"> :x: **Host {_code(host.host)} is unreachable** ({_md(host.unreachable)}): nothing is planned "
                        f"there and its pruning is suspended.{unknown}")
    for vm, hosts in plan.unknown.items():
        if len(hosts) > 1:
            gone = [h for h in hosts if h in missing]
            why = fleet.why_held_for_missing((vm,), gone) if gone else fleet.why_unknown((vm,), hosts)
            callouts.append(f"> :warning: **Unknown**: VM {_code(vm)} may run on any of the unreachable hosts "
                            f"{', '.join(_code(h) for h in hosts)}: {_md(why)}.")
    callouts += [f"> :information_source: {_md(note)}" for note in plan.notes]
    for brain in plan.split_brain:
        callouts.append(f"> :x: **Split brain**: VM {_code(brain.vm)} is marked on {', '.join(_code(h) for h in brain.hosts)}; "
                        "neither copy is touched")
    if callouts:
        lines += "\n>\n".join(callouts).split("\n") + [""]
    if plan.migrations:
        lines += ["| | VM | From | To | Mode | Impact |", "|---|---|---|---|---|---|"]
        for resource in (r for r in plan.migrations if r.steps):
            step = resource.steps[0]
            lines.append(f"| → | {_code(resource.name)} | {_code(step.source)} | {_code(step.destination)} "
                         f"| {step.mode.value} | {_worst_impact(resource)} |")
        lines.append("")
    if plan.problems:
        lines += [f"#### :x: Fleet problems ({len(plan.problems)})", ""]
        lines += [f"- {_code(f'{p.file}:{p.line}' if p.line else p.file)} {_code(p.path) if p.path else ''} {_md(p.message)}"
                  for p in plan.problems]
        lines.append("")
    for host in plan.hosts:
        if host.plan is None:
            continue
        cordoned = ", cordoned" if not host.schedulable else ""
        title = f"Host {host.host} ({redaction.redact_url(host.uri)}{cordoned}): {_count(len(host.vms), 'VM')}"
        section = _markdown_lines(host.plan, title=title)
        while section and not section[-1]:
            section.pop()
        lines += [*section, ""]
    return "\n".join(lines).rstrip() + "\n"
