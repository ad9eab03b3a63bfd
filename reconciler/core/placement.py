"""Decide which Host of a fleet each VM runs on: :func:`place`.

Pure and deterministic: the same desired state and the same locations give the same
answer, whatever order the hosts and VMs come in. The rules, in order:

* sticky: a VM found on a reachable Host that its placement admits (``host`` /
  ``hostSelector``) and that is schedulable stays there, even beyond capacity (nothing
  moves to make room);
* a VM found on a Host that no longer admits it (the manifest changed, a label changed,
  the Host is cordoned with ``schedulable: false``) moves: a :class:`Move` with the reason;
* a VM not found anywhere is new and goes to an eligible Host (admitted, schedulable,
  reachable) with room for it: with ``spreadBy``, to the label value holding fewest VMs
  of its group; then to the host holding fewest of its group; then to the least loaded
  (the larger of committed memory and vcpus as a share of capacity x overcommit); ties go
  to the first host by name. Without ``spreadBy``, ``antiAffinity`` is strict: two VMs with
  the same value of that label never share a host;
* a VM not found on any reachable Host, whose placement admits an unreachable one, may be
  running there: it is never placed elsewhere (that is how split brain starts). It stays
  assigned to that host when it is the only candidate, and is reported as unknown. Only
  the hosts in ``evacuate`` (declared dead by a person) give their VMs up.

VMs are placed in name order; what cannot be placed is a problem located at the VM's
manifest, never a silent omission.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from reconciler.core import model, quantity


@dataclass(frozen=True)
class Move:
    """VM ``vm`` goes from host ``source`` to host ``destination``, because ``reason``."""

    vm: str
    source: str
    destination: str
    reason: str


@dataclass(frozen=True)
class Placements:
    """Where every VM runs, what moves, and what could not be placed.

    ``assignments`` maps each VM with a known or decided host to it (a VM that must move
    but cannot stays assigned to its source); ``unknown`` maps each VM that may be running
    on an unreachable host to those hosts: it is neither created nor moved.
    """

    assignments: Mapping[str, str]
    moves: tuple[Move, ...] = ()
    unknown: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    problems: tuple[model.Problem, ...] = ()

    def on(self, host: str) -> tuple[str, ...]:
        """Return the VMs assigned to ``host``, by name."""
        return self._by_host.get(host, ())

    @functools.cached_property
    def _by_host(self) -> dict[str, tuple[str, ...]]:
        # Built once: a fleet asks for every host's VMs, and scanning every assignment per
        # host made a pass grow as hosts x VMs.
        by_host: dict[str, list[str]] = {}
        for vm, where in self.assignments.items():
            by_host.setdefault(where, []).append(vm)
        return {host: tuple(sorted(vms)) for host, vms in by_host.items()}


def admits(placement: model.Placement | None, host: model.HostSpec) -> bool:
    """Return whether ``placement`` lets a VM run on ``host`` (its schedulability aside)."""
    if placement is None:
        return True
    if placement.host is not None and placement.host != host.name:
        return False
    return selects(placement.host_selector, host)


def selects(selector: tuple[tuple[str, str], ...] | None, host: model.HostSpec) -> bool:
    """Return whether every ``(label, value)`` of ``selector`` is one of ``host``'s labels (None: no host)."""
    if selector is None:
        return False
    labels = dict(host.labels)
    return all(labels.get(key) == value for key, value in selector)


def place(
    desired: model.DesiredState,
    located: Mapping[str, str],
    *,
    unreachable: Collection[str] = frozenset(),
    evacuate: Collection[str] = frozenset(),
) -> Placements:
    """Return where each VM of ``desired`` runs, given where the reachable hosts have them.

    ``located`` maps a VM's name to the reachable Host it was found on (VMs found on two
    hosts, split brain, are left out by the caller). ``unreachable`` names the Hosts that
    could not be observed; ``evacuate`` those of them a person declared dead, whose VMs
    may be placed elsewhere.
    """
    hosts = dict(sorted(desired.hosts.items()))
    dead = set(unreachable) | set(evacuate)
    ledger = _Ledger(hosts)
    assignments: dict[str, str] = {}
    moves: list[Move] = []
    unknown: dict[str, tuple[str, ...]] = {}
    problems: list[model.Problem] = []
    pending: list[tuple[model.VMSpec, str | None, str]] = []  # (spec, source, reason) still to place

    for name, spec in sorted(desired.vms.items()):
        source = located.get(name)
        if source in hosts and source not in dead:
            host = hosts[source]
            if admits(spec.placement, host) and host.schedulable:
                assignments[name] = source
                ledger.add(spec, source)
            else:
                pending.append((spec, source, why_not(spec, host)))
            continue
        candidates = [h for h in hosts.values() if admits(spec.placement, h) and h.name in dead]
        kept = tuple(h.name for h in candidates if h.name not in evacuate)
        if kept:
            unknown[name] = kept
            if len(kept) == 1:
                assignments[name] = kept[0]
                ledger.add(spec, kept[0])
            continue
        evacuated = tuple(h.name for h in candidates)
        if len(evacuated) == 1:
            pending.append((spec, evacuated[0], f"host {evacuated[0]} was declared dead (evacuate)"))
        else:
            pending.append((spec, None, ""))

    for spec, source, reason in pending:
        destination, problem = _choose(spec, hosts, dead, source, ledger)
        if destination is None:
            if source is not None and source not in dead:
                assignments[spec.name] = source  # it cannot leave: it stays where it runs
                ledger.add(spec, source)
                problem = f"must move off {source} ({reason}) but {problem}"
            problems.append(spec.origin.problem("spec.placement" if spec.placement else "metadata.name", problem))
            continue
        assignments[spec.name] = destination
        ledger.add(spec, destination)
        if source is not None:
            moves.append(Move(spec.name, source, destination, reason))

    return Placements(
        assignments=MappingProxyType(dict(sorted(assignments.items()))),
        moves=tuple(sorted(moves, key=lambda m: m.vm)),
        unknown=MappingProxyType(dict(sorted(unknown.items()))),
        problems=tuple(problems),
    )


def why_not(spec: model.VMSpec, host: model.HostSpec) -> str:
    """Return why ``host`` may not run ``spec``'s VM: its placement does not admit it, or it is cordoned."""
    placement = spec.placement
    if placement is not None and placement.host is not None and placement.host != host.name:
        return f"placement.host is {placement.host}"
    if placement is not None and not selects(placement.host_selector, host):
        wanted = ", ".join(f"{k}={v}" for k, v in placement.host_selector)
        return f"host {host.name} does not match hostSelector {wanted}"
    return f"host {host.name} is cordoned (schedulable: false)"


def group_of(spec: model.VMSpec) -> tuple[str, ...] | None:
    """Return the key of the VMs ``spec`` spreads with or avoids, or None."""
    placement = spec.placement
    if placement is None:
        return None
    if placement.anti_affinity is not None:
        return ("label", placement.anti_affinity, dict(spec.labels).get(placement.anti_affinity, ""))
    if placement.spread_by is not None:
        return ("spread", placement.spread_by)
    return None


class _Ledger:
    """What is committed on each host so far: resources, and members of each group."""

    def __init__(self, hosts: Mapping[str, model.HostSpec]) -> None:
        self.hosts = hosts
        self.vcpus = {name: 0 for name in hosts}
        self.memory = {name: 0 for name in hosts}
        self.groups: dict[tuple[tuple[str, ...], str], int] = {}

    def add(self, spec: model.VMSpec, host: str) -> None:
        self.vcpus[host] += spec.vcpus
        self.memory[host] += spec.memory
        group = group_of(spec)
        if group is not None:
            self.groups[(group, host)] = self.groups.get((group, host), 0) + 1

    def members(self, group: tuple[str, ...] | None, host: str) -> int:
        return 0 if group is None else self.groups.get((group, host), 0)

    def fits(self, spec: model.VMSpec, host: str) -> bool:
        capacity = self.hosts[host].capacity
        if capacity.vcpus is not None and self.vcpus[host] + spec.vcpus > capacity.vcpus * capacity.cpu_overcommit:
            return False
        return capacity.memory is None or self.memory[host] + spec.memory <= capacity.memory * capacity.memory_overcommit

    def load(self, host: str) -> float:
        capacity = self.hosts[host].capacity
        shares = [0.0]
        if capacity.vcpus is not None:
            shares.append(self.vcpus[host] / (capacity.vcpus * capacity.cpu_overcommit))
        if capacity.memory is not None:
            shares.append(self.memory[host] / (capacity.memory * capacity.memory_overcommit))
        return max(shares)

    def free(self, host: str) -> str:
        capacity = self.hosts[host].capacity
        parts = []
        if capacity.vcpus is not None:
            parts.append(f"{capacity.vcpus * capacity.cpu_overcommit - self.vcpus[host]:g} vcpus")
        if capacity.memory is not None:
            left = int(capacity.memory * capacity.memory_overcommit) - self.memory[host]
            parts.append(quantity.format_bytes(max(left, 0) * quantity.KIB))
        return f"{host}: {', '.join(parts)} free"


def _choose(
    spec: model.VMSpec, hosts: Mapping[str, model.HostSpec], dead: set[str], source: str | None, ledger: _Ledger,
) -> tuple[str | None, str]:
    """Return the host for ``spec`` (or None and why not)."""
    placement = spec.placement
    admitted = [h for h in hosts.values() if admits(placement, h)]
    if not admitted:
        if placement is not None and placement.host is not None:
            return None, f"Host {placement.host} is not declared"
        wanted = ", ".join(f"{k}={v}" for k, v in placement.host_selector) if placement is not None else ""
        return None, f"no eligible host: no Host matches hostSelector {wanted}" if wanted else "no eligible host: no Host is declared"
    eligible = [h for h in admitted if h.schedulable and h.name not in dead and h.name != source]
    if not eligible:
        return None, "no eligible host: " + "; ".join(_excluded(h, dead, source) for h in admitted)
    group = group_of(spec)
    spread = placement.spread_by if placement is not None else None
    if spread is not None:
        eligible = [h for h in eligible if spread in dict(h.labels)]
        if not eligible:
            return None, f"no eligible host: no eligible Host has label {spread!r} (spreadBy)"
    elif group is not None:
        eligible = [h for h in eligible if not ledger.members(group, h.name)]
        if not eligible:
            return None, (f"no eligible host: every eligible Host already runs a VM with {placement.anti_affinity}="
                          f"{group[2]} (antiAffinity)")
    roomy = [h for h in eligible if ledger.fits(spec, h.name)]
    if not roomy:
        need = f"{spec.vcpus} vcpus, {quantity.format_bytes(spec.memory * quantity.KIB)}"
        return None, f"no capacity: no eligible Host has room for {need} ({'; '.join(ledger.free(h.name) for h in eligible)})"
    by_value: dict[str, int] = {}
    if spread is not None:
        for h in hosts.values():
            value = dict(h.labels).get(spread)
            if value is not None:
                by_value[value] = by_value.get(value, 0) + ledger.members(group, h.name)

    def rank(host: model.HostSpec) -> tuple:
        spread_count = by_value.get(dict(host.labels).get(spread, ""), 0) if spread is not None else 0
        return (spread_count, ledger.members(group, host.name), ledger.load(host.name), host.name)

    return min(roomy, key=rank).name, ""


def _excluded(host: model.HostSpec, dead: set[str], source: str | None) -> str:
    if host.name == source:
        return f"{host.name} is the host it leaves"
    if host.name in dead:
        return f"{host.name} is unreachable"
    return f"{host.name} is cordoned"
