"""Review manifest changes without a hypervisor: ``kvmops diff`` and snapshot plans.

``diff`` materialises the base revision (and the head revision, unless it is the working
tree) with :mod:`reconciler.adapters.git`, loads both with the same loader and
validation as every other command, and plans head against the host that applying base
would leave (:func:`reconciler.core.offline.converged_host`).  A head that does not
validate fails the diff with its problems; a base that does not validate is reported
but still compared for what it could express.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from reconciler import errors
from reconciler.adapters import git
from reconciler.core import actual, fleet, model, offline, planner, snapshot
from reconciler.core import plan as plans
from reconciler.runtime import reconcile


@dataclasses.dataclass(frozen=True)
class Review:
    """Two revisions of the manifests and the plan between them."""

    base: model.DesiredState
    head: model.DesiredState
    plan: plans.Plan
    base_label: str
    head_label: str
    fleet: fleet.FleetPlan | None = None  # with Host manifests in head: the plan per host, migrations included

    @property
    def plan_shown(self) -> plans.Plan:
        """Return the plan as ``kvmops diff`` shows it: noting, when the base has problems, that it was compared anyway."""
        if not self.base.problems:
            return self.plan
        note = (f"the base revision {self.base_label} has {len(self.base.problems)} problem(s) of its own; it was "
                "compared for what it could express")
        return dataclasses.replace(self.plan, snapshot=note)


def diff(path: str, base_ref: str, head_ref: str | None, *, settings: planner.Settings) -> Review:
    """Return the plan that turns the manifests at ``base_ref`` into those at ``head_ref`` (None: working tree)."""
    root = git.toplevel(path)
    try:
        subpath = Path(path).absolute().resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise errors.SourceError(f"{path} is not inside the git working tree {root}") from None
    base_commit = git.resolve(root, base_ref)
    head_exists = Path(path).exists() if head_ref is None else git.path_exists(root, git.resolve(root, head_ref), subpath)
    if not head_exists and not git.path_exists(root, base_commit, subpath):
        raise errors.SourceError(
            f"{path}: no such manifest directory, neither at {base_ref} nor in {head_ref or 'the working tree'}; check PATH"
        )
    with tempfile.TemporaryDirectory(prefix="kvmops-diff-") as scratch:
        base_dir = git.materialize(root, base_commit, subpath, Path(scratch, "base"))
        base = reconcile.load_desired(str(base_dir))
        if head_ref is None:
            head = reconcile.load_desired(path)
            head_label = "working tree"
        else:
            head_commit = git.resolve(root, head_ref)
            head_dir = git.materialize(root, head_commit, subpath, Path(scratch, "head"))
            head = reconcile.load_desired(str(head_dir))
            head_label = _label(head_ref, head_commit)
        base_label = _label(base_ref, base_commit)
        host = offline.with_host_stand_ins(
            offline.converged_host(base, uri=f"git {base_label}", scope=settings.scope, settings=settings), head
        )
        plan = offline.annotate_moves(planner.plan_changes(head, host, settings=settings), base, head)
        fleet_plan = _fleet_diff(base, head, base_label, settings) if head.is_fleet else None
        labels = {str(base_dir): f"{base_ref}:{subpath}"}
        if head_ref is not None:
            labels[str(head_dir)] = f"{head_ref}:{subpath}"
    base = dataclasses.replace(base, problems=reconcile.relabel(base.problems, labels))
    head = dataclasses.replace(head, problems=reconcile.relabel(head.problems, labels))
    plan = dataclasses.replace(plan, problems=reconcile.relabel(plan.problems, labels))
    if fleet_plan is not None:
        fleet_plan = dataclasses.replace(
            fleet_plan, problems=reconcile.relabel(fleet_plan.problems, labels),
            hosts=tuple(dataclasses.replace(h, plan=dataclasses.replace(h.plan, problems=reconcile.relabel(h.plan.problems, labels)))
                        if h.plan is not None else h for h in fleet_plan.hosts),
        )
    return Review(base, head, plan, base_label, head_label, fleet_plan)


def _fleet_diff(base: model.DesiredState, head: model.DesiredState, base_label: str,
                settings: planner.Settings) -> fleet.FleetPlan:
    """Return the fleet plan of ``head`` against the hosts an apply of ``base`` leaves.

    A Host new in ``head`` starts empty; a base without Hosts ran nowhere yet in the
    fleet's eyes, so every VM is new to it.
    """
    hosts = offline.converged_fleet(base, uri=f"git {base_label}", settings=settings) if base.hosts else {}
    empty = dataclasses.replace(base, vms={}, pools={}, networks={}, images={}, hosts={})
    for name in head.hosts:
        if name not in hosts:
            hosts[name] = offline.converged_host(empty, uri=f"git {base_label} host {name}", settings=settings)
    observed = {name: offline.with_host_stand_ins(state, head) for name, state in hosts.items() if name in head.hosts}
    return fleet.plan_fleet(head, observed, settings)


def _label(ref: str, commit: str) -> str:
    """Return how a revision is named in titles: ``main (1fb80b0adc68)``, or just the short id for a SHA."""
    if commit.startswith(ref.lower()) and len(ref) >= 7:
        return commit[:12]
    return f"{ref} ({commit[:12]})"


def plan_from_snapshot(path: str, saved: snapshot.Snapshot, *, settings: planner.Settings) -> reconcile.PlanResult:
    """Return the plan for the manifests under ``path`` against a saved snapshot of a host."""
    desired = reconcile.load_desired(path)
    state = actual.interpret(saved.observation)
    plan = planner.plan_changes(desired, state, settings=settings)
    return reconcile.PlanResult(desired, state, dataclasses.replace(plan, snapshot=saved.describe()))
