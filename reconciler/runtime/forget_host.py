"""Forgetting a Host of a fleet for good: ``kvmops forget-host NAME``.

Every mark of a fleet records the fleet's Host names (its roster). A name there that no
Host manifest declares is a *missing host*: its VMs cannot be seen, so the fleet holds
back every VM it cannot find and suspends pruning (see :mod:`reconciler.core.fleet`). The
only way a name leaves the roster is this command, run once the host is gone for good (or
drained) and its manifest deleted: it rewrites the marks on the reachable Hosts without the
name (:func:`reconciler.core.fleet.plan_forget`), and nothing else. The next ``apply``
then creates elsewhere the VMs that were held back for that host.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from reconciler import errors
from reconciler.core import fleet, model, planner
from reconciler.runtime import cancellation, execute, fleet_reconcile, reconcile


def load_fleet(path: str, host: str, *, revision: str = "") -> model.DesiredState:
    """Load the manifests at ``path``; refuse without Hosts, while a Host manifest declares ``host``, or while one is broken."""
    with reconcile.gc_paused():
        desired = reconcile.load_desired(path, revision=revision)
    if not desired.hosts:
        raise errors.KvmopsError(f"forget-host {host}: {path} declares no Host; forget-host removes a Host from a fleet's "
                                 "marks")
    if host in desired.hosts:
        raise errors.KvmopsError(
            f"forget-host {host}: {desired.hosts[host].manifest} still declares Host {host}; drain it "
            f"(`kvmops drain {host} --apply`), delete its manifest, then forget it")
    if not desired.hosts_complete:
        raise errors.KvmopsError(f"forget-host {host}: a Host manifest did not load (it may be {host}'s); fix it first "
                                 "(`kvmops validate`)")
    return desired


def plan(desired: model.DesiredState, host: str, *, settings: planner.Settings,
         host_workers: int = fleet_reconcile.DEFAULT_HOST_WORKERS,
         host_timeout: float = fleet_reconcile.DEFAULT_HOST_TIMEOUT) -> fleet.FleetPlan:
    """Observe every Host read-only and return the plan forgetting ``host``."""
    with fleet_reconcile.connect(desired, read_only=True, workers=max(1, host_workers),
                                 timeout=host_timeout) as connections:
        observed = fleet_reconcile.observe_all(connections, workers=host_workers)
    return fleet.plan_forget(desired, observed, host, settings)


@dataclass(frozen=True)
class ForgetResult:
    """What ``forget-host --apply`` did per Host, and the plan a fresh look then makes (empty when done)."""

    reports: dict[str, execute.ApplyReport]
    after: fleet.FleetPlan | None  # None when cancelled

    @property
    def done(self) -> bool:
        """Return whether every mark was rewritten and a fresh look finds none left naming the host."""
        return (self.after is not None and all(r.ok for r in self.reports.values()) and not self.after.has_changes
                and not self.after.problems and not self.after.unreachable)


def apply(
    desired: model.DesiredState, host: str, *, settings: planner.Settings,
    show_plan: Callable[[fleet.FleetPlan], None], lock: Callable[[list[str]], contextlib.AbstractContextManager],
    workers: int = execute.DEFAULT_WORKERS, host_workers: int = fleet_reconcile.DEFAULT_HOST_WORKERS,
    host_timeout: float = fleet_reconcile.DEFAULT_HOST_TIMEOUT, step_timeout: float | None = None,
) -> ForgetResult | None:
    """Plan forgetting ``host``, ``show_plan`` it, rewrite the marks on every reachable Host, and look again.

    Holds the host lock of every connected Host throughout. None: nothing to do. Hosts get
    ``host_timeout`` and steps ``step_timeout``, as in :func:`fleet_reconcile.plan_and_apply`.
    """
    with fleet_reconcile.connect(desired, read_only=False, workers=max(1, host_workers),
                                 timeout=host_timeout) as connections:
        with lock([h.uri for h in connections.hypervisors.values()]):
            planned = fleet.plan_forget(desired, fleet_reconcile.observe_all(connections, workers=host_workers),
                                        host, settings)
            show_plan(planned)
            if not planned.has_changes or planned.problems:
                return None
            cancel = threading.Event()
            with cancellation.on_signals(cancel):
                reports = fleet_reconcile.execute_hosts(
                    {h.host: h.plan for h in planned.hosts if h.plan is not None and h.host in connections.hypervisors},
                    connections.hypervisors, workers=workers, host_workers=host_workers, cancel=cancel,
                    step_timeout=step_timeout)
            if cancel.is_set():
                return ForgetResult(reports, None)
            after = fleet.plan_forget(desired, fleet_reconcile.observe_all(connections, workers=host_workers),
                                      host, settings)
            return ForgetResult(reports, after)


def report_text(result: ForgetResult, host: str) -> str:
    """Return what ``forget-host --apply`` did, a line per Host and a verdict."""
    lines = []
    for name, report in sorted(result.reports.items()):
        steps = [step for outcome in report.outcomes for step in outcome.steps]
        failed = [step for step in steps if not step.ok]
        lines.append(f"Host {name}: {len(steps) - len(failed)} mark(s) rewritten without {host}"
                     + (f", {len(failed)} failed: {failed[0].detail}" if failed else ""))
    if result.done:
        lines.append(f"Forgotten: no mark on a reachable Host names {host} any more; the next apply creates the VMs "
                     "held back for it on the other Hosts")
    elif result.after is None:
        lines.append("Cancelled: remaining marks were not rewritten; run forget-host again")
    else:
        left = [h.host for h in result.after.hosts if h.plan is not None and h.plan.has_changes]
        silent = [h.host for h in result.after.unreachable]
        why = ([f"marks on {', '.join(left)} still name {host}"] if left else []) + (
            [f"unreachable: {', '.join(silent)} (its marks still name {host})"] if silent else [])
        lines.append(f"Not done: {'; '.join(why) or 'see the errors above'}; run forget-host again")
    return "\n".join(lines) + "\n"
