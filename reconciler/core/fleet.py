"""Plan a whole fleet: :func:`plan_fleet`, one plan per Host plus the migrations between them.

Pure, like the planner it builds on. From the desired state (with its Hosts) and what
each host's libvirt showed (or why it could not be reached), it

* finds where each VM runs now, and every VM marked by this fleet on two hosts (split
  brain: reported, and neither copy is started, stopped, changed, migrated or pruned);
* decides where each VM runs (:func:`reconciler.core.placement.place`: sticky,
  capacity-aware, deterministic);
* plans each reachable host with :func:`reconciler.core.planner.plan_changes` on its share
  of the desired state: the VMs assigned to it, and the pools, networks and images they use
  or whose ``hosts`` selector admits it. A VM migrating away is held on its source (never
  pruned there) and not created on its destination: the migration moves it;
* writes each move as a migration :class:`~reconciler.core.plan.ResourcePlan` in the plan
  of the host the VM leaves (action ``migrate``: a :class:`~reconciler.core.plan.MigrateDomain`
  step, then a :class:`~reconciler.core.plan.DeleteMovedVolume` for each local volume kvmops
  created with ``deletionPolicy: Delete``; others stay on the source): live when every
  disk is on a ``shared`` pool, live with a storage copy when the VM runs on local disks,
  offline (impact ``restart``) when it is shut off;
* reports an unreachable host in its own section: nothing is planned there, its VMs are
  Unknown and stay assigned to it (never placed elsewhere, unless a person declared it
  dead with ``evacuate``), and every other host is planned as usual.

Any problem (a manifest, a placement, a split brain) suspends pruning on every host, as
a problem does for one host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from reconciler.core import domxml, model, placement, planner
from reconciler.core import plan as plans
from reconciler.core.plan import Action, FieldChange, Impact


@dataclass(frozen=True)
class HostUnreachable:
    """Why host ``host`` could not be observed (the libvirt error, in one line)."""

    host: str
    error: str


@dataclass(frozen=True)
class HostPlan:
    """One Host's part of a fleet plan.

    ``plan`` is None when the host was unreachable (``unreachable`` says why); ``vms`` are
    the VMs assigned to it, ``unknown`` those whose state nobody can see (it is unreachable).
    """

    host: str
    uri: str
    plan: plans.Plan | None
    vms: tuple[str, ...] = ()
    unreachable: str | None = None
    unknown: tuple[str, ...] = ()
    schedulable: bool = True


@dataclass(frozen=True)
class SplitBrain:
    """VM ``vm`` is marked by this fleet on every host of ``hosts``."""

    vm: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class FleetPlan:
    """Everything one pass over a fleet would do, per host, and between hosts.

    A migration is a resource of the plan of the host the VM leaves (where the executor
    runs it), of kind VirtualMachine with the single action ``migrate``; its ``requires``
    name the destination's prerequisites as ``HOST:Kind/name``. ``problems`` are the
    fleet's (manifests, placement, split brain); each host plan carries those of its own
    resources.
    """

    fleet: str
    hosts: tuple[HostPlan, ...]
    problems: tuple[model.Problem, ...] = ()
    split_brain: tuple[SplitBrain, ...] = ()
    unknown: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # VM -> unreachable hosts it may be on

    @property
    def migrations(self) -> tuple[plans.ResourcePlan, ...]:
        """Return every migration, from the plans of the hosts the VMs leave, by VM name."""
        found = [r for h in self.hosts if h.plan is not None for r in h.plan.resources if Action.MIGRATE in r.actions]
        return tuple(sorted(found, key=lambda r: r.name))

    @property
    def has_changes(self) -> bool:
        """Return whether applying this plan would change anything."""
        return any(h.plan is not None and h.plan.has_changes for h in self.hosts)

    @property
    def unreachable(self) -> tuple[HostPlan, ...]:
        """Return the hosts that could not be observed."""
        return tuple(h for h in self.hosts if h.unreachable is not None)

    def host(self, name: str) -> HostPlan:
        """Return the plan of host ``name``."""
        return next(h for h in self.hosts if h.host == name)

    def summary(self) -> str:
        """Return the fleet in one line: hosts, VMs per host, migrations, unreachable hosts."""
        per_host = ", ".join(f"{h.host} {len(h.vms)}" for h in self.hosts)
        parts = [f"{len(self.hosts)} host{'s' if len(self.hosts) != 1 else ''}",
                 f"VMs per host: {per_host}" if self.hosts else "no VMs",
                 f"{len(self.migrations)} migration{'s' if len(self.migrations) != 1 else ''}"]
        if self.unreachable:
            parts.append(f"{len(self.unreachable)} unreachable ({', '.join(h.host for h in self.unreachable)})")
        if self.split_brain:
            parts.append(f"{len(self.split_brain)} split brain")
        return f"Fleet {self.fleet}: " + "; ".join(parts)


def plan_fleet(
    desired: model.DesiredState,
    observed: Mapping[str, model.ActualState | HostUnreachable],
    settings: planner.Settings = planner.Settings(),
    *,
    evacuate: Collection[str] = frozenset(),
    only_host: str | None = None,
) -> FleetPlan:
    """Return the plan that converges every Host of ``desired`` on it.

    ``observed`` maps each Host's name to what its libvirt showed, or to why it could not
    be reached; a Host missing from it counts as unreachable. ``evacuate`` names hosts a
    person declared dead: their VMs may be placed elsewhere. ``only_host`` plans that host
    alone (placement still sees the whole fleet).
    """
    fleet = settings.scope
    hosts = dict(sorted(desired.hosts.items()))
    problems: list[model.Problem] = list(desired.problems)
    reachable = {name: state for name, state in observed.items()
                 if name in hosts and isinstance(state, model.ActualState)}
    unreachable = {name: (observed[name].error if isinstance(observed.get(name), HostUnreachable) else "not observed")
                   for name in hosts if name not in reachable}
    for name in sorted(set(evacuate) - set(unreachable)):
        where = hosts[name].origin.problem("metadata.name", (
            f"host {name} answers: evacuate is for dead hosts only; use `kvmops drain {name}` to move its VMs off"
        )) if name in hosts else model.Problem(desired.source or ".", None, "", f"evacuate: no Host named {name!r}")
        problems.append(where)
    dead = frozenset(evacuate) & set(unreachable)

    found = _ours(reachable, fleet)
    split = tuple(SplitBrain(vm, tuple(sorted(on))) for vm, on in sorted(found.items()) if len(on) > 1)
    for brain in split:
        problems.append(_split_brain_problem(desired, brain, fleet, source=desired.source))
    split_names = {brain.vm for brain in split}
    located = {vm: next(iter(on)) for vm, on in found.items() if len(on) == 1 and vm in desired.vms}
    placed = placement.place(
        dataclasses.replace(desired, vms=MappingProxyType(
            {name: spec for name, spec in desired.vms.items() if name not in split_names})),
        located, unreachable=frozenset(unreachable) - dead, evacuate=dead,
    )
    problems.extend(placed.problems)
    migrating = {move.vm: move for move in placed.moves if move.source in reachable}

    host_settings = dataclasses.replace(
        settings, fleet=fleet,
        allow_empty=settings.allow_empty or bool(desired.vms),  # the empty-set guard is the fleet's, not a host's
    )
    if problems and settings.prune:
        host_settings = dataclasses.replace(host_settings, prune=False, no_prune_reason=(
            f"{len(problems)} problem(s) in the fleet: while any manifest is broken, a VM cannot be placed or a VM is "
            "found on two hosts, no domain is removed on any host"
        ))
    host_plans = []
    leaving: dict[str, list[plans.ResourcePlan]] = {}
    for move in sorted(migrating.values(), key=lambda m: m.vm):
        leaving.setdefault(move.source, []).append(_migration(desired, move, reachable[move.source], hosts, fleet))
    for name, host in hosts.items():
        if only_host is not None and name != only_host:
            continue
        assigned = placed.on(name)
        if name in unreachable:
            host_plans.append(HostPlan(
                host=name, uri=host.uri, plan=None, vms=assigned, unreachable=unreachable[name],
                unknown=tuple(vm for vm in assigned if vm in placed.unknown), schedulable=host.schedulable,
            ))
            continue
        actual = reachable[name]
        incoming = [move.vm for move in migrating.values() if move.destination == name]
        departing = [move.vm for move in migrating.values() if move.source == name]
        held = frozenset(departing) | frozenset(vm for vm in split_names if name in found.get(vm, ()))
        local_vms = [vm for vm in assigned if vm not in incoming]
        subset = host_share(desired, host, local_vms, uses=[*incoming, *departing, *(held & set(desired.vms))])
        plan = planner.plan_changes(subset, actual, settings=dataclasses.replace(host_settings, host=name, held=held))
        if leaving.get(name):
            plan = dataclasses.replace(
                plan, resources=(*plan.resources, *leaving[name]),
                problems=(*plan.problems, *(p for migration in leaving[name] for p in migration.problems)),
            )
        evacuated = {move.vm: move for move in placed.moves if move.destination == name and move.source in dead}
        if evacuated:
            plan = dataclasses.replace(plan, resources=tuple(
                dataclasses.replace(r, notes=(*r.notes, _evacuation_note(evacuated[r.name], desired)))
                if r.kind == "VirtualMachine" and r.name in evacuated else r for r in plan.resources))
        host_plans.append(HostPlan(host=name, uri=host.uri, plan=plan, vms=assigned, schedulable=host.schedulable))
    return FleetPlan(
        fleet=fleet, hosts=tuple(host_plans), problems=tuple(problems),
        split_brain=split, unknown=placed.unknown,
    )


def host_share(
    desired: model.DesiredState, host: model.HostSpec, vms: Collection[str], *, uses: Collection[str] = (),
) -> model.DesiredState:
    """Return the part of ``desired`` that ``host`` runs: the VMs ``vms``, and the pools,
    networks and images they (and the VMs ``uses``, arriving or leaving) use or whose
    ``hosts`` selector admits the host. The fleet's problems stay with the fleet."""
    users = [desired.vms[vm] for vm in (*vms, *uses) if vm in desired.vms]
    images = {name for name, spec in desired.images.items() if placement.selects(spec.hosts, host)}
    images |= {disk.image for spec in users for disk in spec.disks if disk.image is not None}
    images &= set(desired.images)
    pools = {name for name, spec in desired.pools.items() if placement.selects(spec.hosts, host)}
    pools |= {pool for spec in users for _, pool in planner.vm_pools(spec)}
    pools |= {desired.images[name].pool for name in images}
    networks = {name for name, spec in desired.networks.items() if placement.selects(spec.hosts, host)}
    networks |= {nic.source for spec in users for nic in spec.nics if nic.kind == "network"}
    return dataclasses.replace(
        desired,
        vms=MappingProxyType({name: desired.vms[name] for name in sorted(vms)}),
        pools=MappingProxyType({name: spec for name, spec in desired.pools.items() if name in pools}),
        networks=MappingProxyType({name: spec for name, spec in desired.networks.items() if name in networks}),
        images=MappingProxyType({name: spec for name, spec in desired.images.items() if name in images}),
        problems=(),
        hosts=MappingProxyType({host.name: host}),
    )


def _ours(reachable: Mapping[str, model.ActualState], fleet: str) -> dict[str, set[str]]:
    """Return the hosts each domain marked by this fleet's scope was found on."""
    found: dict[str, set[str]] = {}
    for name, actual in reachable.items():
        for domain in actual.domains.values():
            if domain.owned and planner.scope_of(domain) == fleet:
                found.setdefault(domain.name, set()).add(name)
    return found


def _split_brain_problem(desired: model.DesiredState, brain: SplitBrain, fleet: str, *, source: str) -> model.Problem:
    message = (
        f"VM {brain.vm} is marked by fleet {fleet} on {len(brain.hosts)} hosts ({', '.join(brain.hosts)}): split brain "
        "(a half-done migration, or a host that came back). Neither copy is started, stopped, changed, migrated or "
        "pruned; keep the right one and remove the other yourself (virsh -c URI undefine), then plan again"
    )
    spec = desired.vms.get(brain.vm)
    if spec is not None:
        return spec.origin.problem("metadata.name", message)
    return model.Problem(source or ".", None, "", message)


def _evacuation_note(move: placement.Move, desired: model.DesiredState) -> str:
    spec = desired.vms[move.vm]
    local = [disk.name for disk in spec.disks
             if disk.path is not None or not (disk.pool in desired.pools and desired.pools[disk.pool].shared)]
    disks = (f"its local disks ({', '.join(local)}) start new and empty here" if local
             else "its disks are on shared storage and are used as they are")
    return f"evacuated from {move.source}, declared dead: defined anew here; {disks}"


def migration_mode(spec: model.VMSpec, domain: model.ObservedDomain, pools: Mapping[str, model.PoolSpec]) -> plans.MigrationMode:
    """Return how ``spec``'s domain moves: live on shared storage, live with a copy, or offline when it is off."""
    if not domain.power.active:
        return plans.MigrationMode.OFFLINE
    shared = all(disk.path is None and disk.pool in pools and pools[disk.pool].shared for disk in spec.disks)
    return plans.MigrationMode.LIVE if shared else plans.MigrationMode.LIVE_COPY_STORAGE


def _migration(
    desired: model.DesiredState, move: placement.Move, source: model.ActualState,
    hosts: Mapping[str, model.HostSpec], fleet: str,
) -> plans.ResourcePlan:
    spec = desired.vms[move.vm]
    domain = source.domains[move.vm]
    mode = migration_mode(spec, domain, desired.pools)
    owner = domain.definition.owner if domain.definition is not None else None
    notes = [f"moves because {move.reason}"]
    problems = []
    xml = ""
    if owner is None or domain.definition is None:
        problems.append(spec.origin.problem("metadata.name", (
            f"domain {move.vm} on {move.source} carries kvmops' mark but its XML cannot be read ({domain.error}); "
            "it is not migrated"
        )))
    else:
        # The destination's next plan finds it current: same manifest, digest and a mark naming the new host.
        xml = domxml.remark(domain.xml, dataclasses.replace(
            owner, manifest=spec.manifest, digest=spec.digest, fleet=fleet, host=move.destination,
        ))
    if mode is plans.MigrationMode.LIVE:
        impact, how = Impact.LIVE, "live migration, disks on shared storage: nothing copied"
    elif mode is plans.MigrationMode.LIVE_COPY_STORAGE:
        impact, how = Impact.LIVE, "live migration with a copy of the local disks (the guest keeps running)"
        local = sorted({disk.pool or disk.path or "" for disk in spec.disks
                        if disk.path is not None or not (disk.pool in desired.pools and desired.pools[disk.pool].shared)})
        notes.append(f"disks copied to {move.destination}: {', '.join(local)}")
    else:
        impact, how = Impact.RESTART, "offline: the VM is shut off; its definition and disks move, it is not started"
    destination = hosts[move.destination]
    requires = [f"{move.destination}:StoragePool/{pool}" for _, pool in planner.vm_pools(spec) if pool in desired.pools]
    requires += [f"{move.destination}:Network/{nic.source}" for nic in spec.nics
                 if nic.kind == "network" and nic.source in desired.networks]
    requires += [f"{move.destination}:Image/{disk.image}" for disk in spec.disks if disk.image is not None]
    if problems:
        return plans.ResourcePlan(kind="VirtualMachine", name=move.vm, manifest=spec.manifest, problems=tuple(problems))
    changes = [FieldChange("host", move.source, move.destination, impact, note=how)]
    cleanups: list[plans.Step] = []
    if mode is not plans.MigrationMode.LIVE:
        for disk in spec.disks:
            if disk.path is not None or (disk.pool in desired.pools and desired.pools[disk.pool].shared):
                continue
            record = owner.volume(disk.pool, disk.volume)
            where = f"volume {disk.pool}/{disk.volume} on {move.source}"
            if record is not None and record.created and record.deletion_policy is model.DeletionPolicy.DELETE:
                cleanups.append(plans.DeleteMovedVolume(disk.pool, disk.volume, move.vm, domain.uuid, move.destination))
                changes.append(FieldChange(where, "left behind", None, Impact.LIVE, note=(
                    f"deleted once the VM is on {move.destination} with its own copy (deletionPolicy Delete)")))
            else:
                why = "deletionPolicy Retain" if record is not None and record.created else "kvmops did not create it"
                notes.append(f"{where} is kept after the move ({why}); remove it yourself when you no longer need it")
    return plans.ResourcePlan(
        kind="VirtualMachine", name=move.vm, actions=(Action.MIGRATE,), changes=tuple(changes),
        steps=(plans.MigrateDomain(
            name=move.vm, uuid=domain.uuid, source=move.source, destination=move.destination,
            destination_uri=destination.uri, mode=mode, xml=xml,
        ), *cleanups),
        manifest=spec.manifest, notes=tuple(notes), requires=tuple(dict.fromkeys(requires)),
    )
