"""What ``kvmops status`` shows for a fleet: every Host's managed VMs, and the Hosts out of reach.

Each Host is observed and planned (so a VM's conditions say Drifted or Error as on one
host); a Host that does not answer, or whose domains cannot be read, keeps its section
with the reason and the VMs the manifests place there, so nothing vanishes silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler import errors
from reconciler.core import fleet, model, planner, redaction
from reconciler.runtime import fleet_reconcile, inspect


@dataclass(frozen=True)
class HostStatus:
    """One Host's section: its place in the fleet plan, and its VMs' status rows, or why there are none."""

    host: fleet.HostPlan
    rows: list[dict] | None  # None when the host could not be read
    error: str | None


@dataclass(frozen=True)
class FleetStatus:
    """Every Host's section, in the fleet plan's order."""

    fleet: str
    hosts: tuple[HostStatus, ...]

    @property
    def unreachable(self) -> list[str]:
        """Return the Hosts whose VMs could not be shown."""
        return [section.host.host for section in self.hosts if section.error is not None]

    @property
    def managed(self) -> int:
        """Return how many managed VMs were shown."""
        return sum(len(section.rows or []) for section in self.hosts)


def gather(desired: model.DesiredState, *, settings: planner.Settings, name: str | None, scope: str | None,
           only_host: str | None, host_workers: int,
           host_timeout: float = fleet_reconcile.DEFAULT_HOST_TIMEOUT) -> FleetStatus:
    """Observe and plan every Host; return the status of its managed VMs (only VM ``name``, only ``only_host``).

    Connecting to a Host gets ``host_timeout`` seconds, observing it and reading its VMs'
    status each :func:`~reconciler.runtime.deadlines.look_timeout` of it; a Host that does not
    answer in time shows as unreachable. Raises
    :class:`~reconciler.errors.ObjectNotFound` when ``name`` is managed on no reachable Host.
    """
    with fleet_reconcile.connect(desired, read_only=True, workers=max(1, host_workers),
                                 timeout=host_timeout) as connections:
        planned = fleet_reconcile.make_plan(desired, connections, settings=settings, workers=host_workers)
        shown = [host for host in planned.plan.hosts if only_host is None or host.host == only_host]
        readable = [host.host for host in shown if host.unreachable is None]
        plans = {host.host: host.plan for host in shown}
        answers = connections.look_at_each(
            lambda host, hypervisor: inspect.status_rows(hypervisor, name=name, scope=scope, plan=plans[host]),
            hosts=readable, workers=host_workers, what="its VMs' status was read")
    sections = []
    for host in shown:
        answer = answers.get(host.host)
        if answer is None:
            sections.append(HostStatus(host, None, host.unreachable or connections.unreachable.get(host.host, "not connected")))
        elif isinstance(answer, errors.KvmopsError):
            sections.append(HostStatus(host, None, str(answer)))
        else:
            sections.append(HostStatus(host, [{**row, "host": host.host} for row in answer], None))
    if name and not any(section.rows for section in sections if section.rows):
        raise errors.ObjectNotFound(f"no domain named {name} is managed by kvmops on any reachable Host")
    return FleetStatus(planned.plan.fleet, tuple(sections))


def to_data(status: FleetStatus) -> dict:
    """Return ``status --output json`` for a fleet."""
    return {"fleet": status.fleet, "hosts": [
        {"host": s.host.host, "uri": redaction.redact_url(s.host.uri), "schedulable": s.host.schedulable,
         "unreachable": s.error, "unknown": list(s.host.unknown), "vms": s.rows or []}
        for s in status.hosts]}
