"""Plan a whole fleet: :func:`plan_fleet`, one plan per Host plus the migrations between them.

Pure, like the planner it builds on. From the desired state (with its Hosts) and what
each host's libvirt showed (or why it could not be reached), it

* finds where each VM runs now, and every VM marked by this fleet on two hosts (split
  brain: reported, and neither copy is started, stopped, changed, migrated or pruned),
  except the stale half of a move libvirt finished on its destination, which the source's
  plan discards (:func:`finished_move`), and the copy a move left on a destination whose
  libvirtd lost its end, which the destination's plan discards (:func:`cancelled_move`);
* finishes the hand-over of a live move a kill cut short: a guest the move left paused on
  its destination (:func:`held_at_hand_over`) is resumed once the host it came from is seen
  without it;
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
  dead with ``evacuate``), and every other host is planned as usual;
* keeps the fleet's *roster* in every mark (the names of its Hosts, :attr:`Ownership.roster
  <reconciler.core.model.Ownership.roster>`) and reports a *missing host*: a name in the
  reachable hosts' marks (a roster, or a mark's host) that no Host manifest declares. Its
  VMs cannot be seen, so it is treated as an unreachable host that may run any VM: a
  desired VM found on no reachable host is Unknown (never created elsewhere) and pruning
  is suspended on every host, until its manifest is back or a person forgets it
  (:func:`plan_forget`, ``kvmops forget-host``). A roster loses a name only that way.

Any problem (a manifest, a placement, a split brain) suspends pruning on every host, as
a problem does for one host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
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
    missing: bool = False  # named in the fleet's marks, declared by no Host manifest (``unreachable`` says so)


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
    notes: tuple[str, ...] = ()  # about the fleet as a whole (what a forget-host plan leads to)

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
        """Return the hosts that could not be observed, missing hosts included."""
        return tuple(h for h in self.hosts if h.unreachable is not None)

    @property
    def missing(self) -> tuple[HostPlan, ...]:
        """Return the hosts the fleet's marks name but no Host manifest declares."""
        return tuple(h for h in self.hosts if h.missing)

    def host(self, name: str) -> HostPlan:
        """Return the plan of host ``name``."""
        return next(h for h in self.hosts if h.host == name)

    def summary(self) -> str:
        """Return the fleet in one line: hosts, VMs per host, migrations, unreachable hosts."""
        declared = [h for h in self.hosts if not h.missing]
        per_host = ", ".join(f"{h.host} {len(h.vms)}" for h in declared)
        parts = [f"{len(declared)} host{'s' if len(declared) != 1 else ''}",
                 f"VMs per host: {per_host}" if declared else "no VMs",
                 f"{len(self.migrations)} migration{'s' if len(self.migrations) != 1 else ''}"]
        silent = [h for h in declared if h.unreachable is not None]
        if silent:
            parts.append(f"{len(silent)} unreachable ({', '.join(h.host for h in silent)})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({', '.join(h.host for h in self.missing)})")
        if self.split_brain:
            parts.append(f"{len(self.split_brain)} split brain")
        return f"Fleet {self.fleet}: " + "; ".join(parts)


def why_unknown(vms: Collection[str], hosts: Collection[str]) -> str:
    """Return why ``vms`` are neither created nor moved while ``hosts`` do not answer, and what a person can do.

    A VM found on no reachable host, whose placement admits an unreachable one, may run
    there: an earlier apply may have put it there, and kvmops keeps no record of past
    placements (the marks on the hosts are the record, and that host cannot be read) to
    tell it from a VM that is new. Creating it elsewhere could run it twice on the same
    disks, so it waits, and the plan says how to end the wait.
    """
    names, where = ", ".join(sorted(vms)), ", ".join(sorted(hosts))
    one = len(vms) == 1
    host = "that host" if len(hosts) == 1 else "those hosts"
    return (
        f"{names} {'is' if one else 'are'} on no reachable host and {'its' if one else 'their'} placement admits "
        f"{where}, which does not answer: an earlier apply may have put {'it' if one else 'them'} there, and kvmops "
        f"keeps no record of past placements to tell that from a new VM, so {'it is' if one else 'they are'} not "
        f"created elsewhere (that could run a VM twice). A new VM waits until {host} answer{'s' if len(hosts) == 1 else ''}; "
        f"to create it now, pin it to a reachable Host (spec.placement.host, or a hostSelector {where} does not match); "
        f"if {host} {'is' if len(hosts) == 1 else 'are'} dead for good: kvmops evacuate "
        f"{where if len(hosts) == 1 else 'HOST'} --host-is-dead"
    )


def why_held_for_missing(vms: Collection[str], missing: Collection[str]) -> str:
    """Return why ``vms`` are not created while the fleet's marks name hosts (``missing``) no Host manifest declares."""
    names, where = ", ".join(sorted(vms)), ", ".join(sorted(missing))
    one = len(vms) == 1
    return (
        f"{names} {'is' if one else 'are'} on no reachable host, and the fleet's marks name {where}, which no Host "
        f"manifest declares: {'it' if one else 'they'} may run there unseen, so {'it is' if one else 'they are'} not "
        f"created elsewhere (that could run a VM twice). Restore the Host manifest, or run kvmops forget-host "
        f"{where if len(missing) == 1 else 'HOST'} --apply if that host is gone for good"
    )


def missing_host_message(host: str) -> str:
    """Return why ``host``, named in the fleet's marks but declared by no Host manifest, stops the fleet, and the way out."""
    return (
        f"Host {host} is named in the fleet's ownership marks but no Host manifest declares it; kvmops cannot see its "
        f"VMs. Restore its manifest (and drain it first to retire it), or, if it is gone for good (or drained), run "
        f"`kvmops forget-host {host} --apply`"
    )


def roster_of(desired: model.DesiredState, observed: Mapping[str, object], fleet: str) -> tuple[str, ...]:
    """Return the roster every mark of ``fleet`` records: its declared Hosts and every name its marks already hold.

    ``observed`` maps Hosts to what they showed (an unreachable one's marks cannot be read).
    A name leaves the roster only through :func:`plan_forget`: a Host manifest that
    disappeared (deleted, or failing to load) leaves its name in every mark.
    """
    reachable = {name: state for name, state in observed.items() if isinstance(state, model.ActualState)}
    return tuple(sorted(set(desired.hosts) | _marked_hosts(reachable, fleet)))


def adoption_refusal(
    desired: model.DesiredState, observed: Mapping[str, model.ActualState | HostUnreachable], vm: str, host: str,
    fleet: str,
) -> str | None:
    """Return why fleet ``fleet`` may not adopt the domain ``vm`` on Host ``host`` (``kvmops adopt --host``); None: it may.

    Adopted, the domain is the fleet's VM placed on ``host``: the next plan must keep it
    there and find it nowhere else. So its manifest's placement must admit that Host (and
    the Host be schedulable), or the plan would move it; and no other Host may define a
    domain of that name, or it would run twice (split brain). A Host that cannot be seen
    (unreachable, a broken Host manifest, a Host the marks name and no manifest declares)
    may hold one: that fails closed.
    """
    hosts = desired.hosts
    spec = desired.vms.get(vm)
    if host not in hosts:
        return f"no Host named {host!r} in the manifests (Hosts: {', '.join(sorted(hosts))})"
    if spec is None:
        return f"the manifests declare no VirtualMachine {vm}"
    if not placement.admits(spec.placement, hosts[host]):
        return (f"Host {host} may not run it ({placement.why_not(spec, hosts[host])}), so the next plan would move it; "
                f"adopt it on a Host its placement admits, or change its spec.placement (kvmops import --host {host} "
                f"writes placement.host: {host})")
    if not hosts[host].schedulable:
        return (f"Host {host} is cordoned (schedulable: false), so the next plan would move it off; adopt it once the "
                "Host is schedulable again")
    if not desired.hosts_complete:
        return (f"a Host manifest did not load (kvmops validate shows why): that Host cannot be seen, and a domain "
                f"{vm} there would run twice; fix the Host manifest first")
    silent = sorted((name, state.error) for name, state in observed.items()
                    if name in hosts and isinstance(state, HostUnreachable))
    silent += sorted((name, "not observed") for name in hosts if name not in observed)
    if silent:
        return (f"Host {', '.join(f'{name} does not answer ({why})' for name, why in silent)}: kvmops cannot check that "
                f"no domain {vm} is defined there (it would run twice); adopt it once every Host answers")
    missing = sorted(set(roster_of(desired, observed, fleet)) - set(hosts))
    if missing:
        return (f"the fleet's marks name {', '.join(missing)}, which no Host manifest declares: a domain {vm} may run "
                f"there unseen (it would run twice); restore the Host manifest, or kvmops forget-host it first")
    elsewhere = sorted(name for name, state in observed.items()
                       if name != host and isinstance(state, model.ActualState) and vm in state.domains)
    if elsewhere:
        whose = []
        for name in elsewhere:
            domain = observed[name].domains[vm]
            owner = domain.definition.owner if domain.owned and domain.definition is not None else None
            whose.append(f"{name} (" + ("not managed by kvmops" if not domain.owned else
                                        f"managed by this fleet" if planner.scope_of(domain) == fleet else
                                        f"managed by scope {owner.scope if owner is not None else '?'}") + ")")
        return (f"a domain named {vm} is also defined on Host {', '.join(whose)}: one VM runs on one Host, never two "
                f"(adopted here, the fleet would find it on both: split brain). Keep one copy (virsh -c URI undefine "
                f"{vm} the other) and adopt again")
    return None


@dataclass(frozen=True)
class HostCheck:
    """``validate --live`` on one Host: what it lacks for its share of the manifests, or why it was not checked."""

    host: str
    uri: str
    problems: tuple[model.Problem, ...] = ()
    unreachable: str | None = None
    missing: bool = False  # named in the fleet's marks, declared by no Host manifest


@dataclass(frozen=True)
class FleetCheck:
    """``validate --live`` on a fleet: the fleet's own problems (placement, split brain), and each Host's check."""

    problems: tuple[model.Problem, ...]
    hosts: tuple[HostCheck, ...]

    @property
    def failed(self) -> bool:
        """Return whether anything is wrong: a problem, or a Host that could not be checked."""
        return bool(self.problems) or any(h.problems or h.unreachable is not None for h in self.hosts)


def check_hosts(
    desired: model.DesiredState, observed: Mapping[str, model.ActualState | HostUnreachable],
    settings: planner.Settings = planner.Settings(), *, only_host: str | None = None,
) -> FleetCheck:
    """Return what each Host (``only_host``: that one) lacks for the share of ``desired`` the fleet plan gives it.

    The share is the one :func:`plan_fleet` plans there (the VMs placed on the Host, and the
    pools, networks and images they use or whose ``hosts`` selector admits it), checked as
    ``validate --connect`` checks one host (:func:`reconciler.core.planner.host_problems`).
    What the manifests cannot do on this fleet at all (a VM no Host can take) is the
    fleet's problem; the manifests' own problems are left to the caller.
    """
    plan = plan_fleet(desired, observed, settings, only_host=only_host)
    own = set(desired.problems)
    checks = []
    for section in plan.hosts:
        if only_host is not None and section.host != only_host:
            continue
        state = observed.get(section.host)
        if section.unreachable is not None or not isinstance(state, model.ActualState):
            checks.append(HostCheck(section.host, section.uri, unreachable=section.unreachable or "not observed",
                                    missing=section.missing))
            continue
        share = host_share(desired, desired.hosts[section.host], section.vms)
        checks.append(HostCheck(section.host, section.uri, tuple(
            planner.host_problems(share, state.pools, state.networks, section.uri))))
    return FleetCheck(tuple(p for p in plan.problems if p not in own), tuple(checks))


def plan_fleet(
    desired: model.DesiredState,
    observed: Mapping[str, model.ActualState | HostUnreachable],
    settings: planner.Settings = planner.Settings(),
    *,
    evacuate: Collection[str] = frozenset(),
    only_host: str | None = None,
    arriving: Mapping[str, str] = MappingProxyType({}),
) -> FleetPlan:
    """Return the plan that converges every Host of ``desired`` on it.

    ``observed`` maps each Host's name to what its libvirt showed, or to why it could not
    be reached; a Host missing from it counts as unreachable. ``evacuate`` names hosts a
    person declared dead: their VMs may be placed elsewhere. ``only_host`` plans that host
    alone (placement still sees the whole fleet). ``arriving`` maps VMs being created on a
    Host right now (a controller's work in flight, not yet observed) to that Host: placement
    counts them there, as if found, so what else it places does not depend on how far that
    work had got when the hosts were looked at.
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

    roster = roster_of(desired, reachable, fleet)
    # A Host manifest that did not load is reported as broken, not as missing: its name is not known here.
    missing = tuple(sorted(set(roster) - set(hosts))) if desired.hosts_complete else ()

    found = _ours(reachable, fleet)
    # A move libvirt finished on its destination whose end its source never saw: the source's half is discarded
    # (first step of a resource of the source's plan), and the VM counts as where it runs.
    finished = {vm: move for vm, on in found.items() if (move := finished_move(vm, on, reachable)) is not None}
    # A move whose destination's libvirtd lost its end while holding the guest paused: the source kept the guest,
    # the destination's copy is discarded (a resource of its plan), and the VM counts as where it runs.
    cancelled = {vm: move for vm, on in found.items()
                 if vm not in finished and (move := cancelled_move(vm, on, reachable)) is not None}
    found = {vm: ({finished[vm].destination} if vm in finished else {cancelled[vm].source} if vm in cancelled else on)
             for vm, on in found.items()}
    # A guest a live move left paused at its hand-over: resumed where it is (or held, said why), not moved again yet.
    hand_overs = _hand_overs(desired, reachable, found, finished)
    split = tuple(SplitBrain(vm, tuple(sorted(on))) for vm, on in sorted(found.items()) if len(on) > 1)
    for brain in split:
        problems.append(_split_brain_problem(desired, brain, fleet, reachable, source=desired.source))
    split_names = {brain.vm for brain in split}
    located = {vm: next(iter(on)) for vm, on in found.items() if len(on) == 1 and vm in desired.vms}
    located.update({vm: host for vm, host in arriving.items()
                    if vm in desired.vms and vm not in found and host in reachable})
    unplaced = set(split_names)
    if not desired.hosts_complete:
        for name in sorted(set(desired.vms) - set(located) - split_names):
            unplaced.add(name)
            problems.append(desired.vms[name].origin.problem("metadata.name", (
                "not placed: a Host manifest did not load (see the problems), and this VM, found on no Host kvmops "
                "sees, may run on that Host: created elsewhere it would run twice. Fix the Host manifest first"
            )))
    held_for_missing: dict[str, tuple[str, ...]] = {}
    if missing:
        # Nothing says which VMs a missing host runs (no manifest, no placement to consult): any
        # VM found on no reachable host may run there, and created elsewhere it would run twice.
        for name in sorted(set(desired.vms) - set(located) - unplaced):
            unplaced.add(name)
            spec = desired.vms[name]
            held_for_missing[name] = (*missing, *(h for h in sorted(unreachable) if h not in dead
                                                  and placement.admits(spec.placement, hosts[h])))
    placed = placement.place(
        dataclasses.replace(desired, vms=MappingProxyType(
            {name: spec for name, spec in desired.vms.items() if name not in unplaced})),
        located, unreachable=frozenset(unreachable) - dead, evacuate=dead,
    )
    problems.extend(placed.problems)
    migrating = {move.vm: move for move in placed.moves if move.source in reachable and move.vm not in hand_overs}

    host_settings = dataclasses.replace(
        settings, fleet=fleet, roster=roster,
        allow_empty=settings.allow_empty or bool(desired.vms),  # the empty-set guard is the fleet's, not a host's
    )
    if problems and settings.prune:
        host_settings = dataclasses.replace(host_settings, prune=False, no_prune_reason=(
            f"{len(problems)} problem(s) in the fleet: while any manifest is broken, a VM cannot be placed or a VM is "
            "found on two hosts, no domain is removed on any host"
        ))
    elif missing and settings.prune:
        host_settings = dataclasses.replace(host_settings, prune=False, no_prune_reason=(
            f"missing host {', '.join(missing)} (named in the fleet's marks, declared by no Host manifest): while kvmops "
            "cannot see every host of the fleet, no domain is removed on any host"
        ))
    host_plans = []
    leaving: dict[str, list[plans.ResourcePlan]] = {}
    cleanups = [cleanup for cleanup in _owed_cleanups(desired, reachable, found, fleet, hosts,
                                                      moving=frozenset(migrating))
                if cleanup.resource.name not in finished or cleanup.source != finished[cleanup.resource.name].source]
    cleanups += [_OwedCleanup(move.source, _discarded_half(desired, move, reachable)) for move in finished.values()]
    cleanups += [_OwedCleanup(move.destination, _discarded_arrival(desired, move, reachable))
                 for move in cancelled.values()]
    for move in sorted(migrating.values(), key=lambda m: m.vm):
        leaving.setdefault(move.source, []).append(
            _migration(desired, move, reachable[move.source], hosts, fleet, settings, roster=roster))
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
        discarded = (frozenset(vm for vm, move in finished.items() if move.source == name)
                     | frozenset(vm for vm, move in cancelled.items() if move.destination == name))
        handed = frozenset(vm for vm, settled in hand_overs.items() if settled.source == name)
        held = (frozenset(departing) | frozenset(vm for vm in split_names if name in found.get(vm, ())) | discarded
                | handed)
        local_vms = [vm for vm in assigned if vm not in incoming and vm not in handed]
        subset = host_share(desired, host, local_vms, uses=[*incoming, *departing, *(vm for vm in held if vm in desired.vms)],
                            present=[network.name for network in actual.networks.values()
                                     if network.owned and network.definition is not None
                                     and network.definition.owner is not None
                                     and network.definition.owner.scope == settings.scope])
        seen, borrowed = with_shared_volumes(subset, name, actual, reachable)
        plan = planner.plan_changes(subset, seen, settings=dataclasses.replace(host_settings, host=name, held=held))
        if borrowed:
            plan = _note_borrowed(plan, subset, borrowed)
        owed = [cleanup for cleanup in (*cleanups, *hand_overs.values()) if cleanup.source == name]
        if owed:
            plan = dataclasses.replace(plan, resources=(*plan.resources, *(c.resource for c in owed)))
        if leaving.get(name):
            plan = dataclasses.replace(
                plan, resources=(*plan.resources, *leaving[name]),
                problems=(*plan.problems, *(p for migration in leaving[name] for p in migration.problems)),
            )
        # Split brain is left alone.
        record = roster_record(host, actual, fleet, roster, plan, untouched=frozenset(
            vm for vm in split_names if name in found.get(vm, ())) | discarded)
        if record is not None:
            plan = dataclasses.replace(plan, resources=(*plan.resources, record))
        evacuated = {move.vm: move for move in placed.moves if move.destination == name and move.source in dead}
        if evacuated:
            unseen = frozenset(pool for pool, spec in subset.pools.items()
                               if _seen_from(spec, name, actual, reachable) == "")
            plan = dataclasses.replace(plan, resources=tuple(
                dataclasses.replace(r, notes=(*r.notes, _evacuation_note(evacuated[r.name], desired, unseen)))
                if r.kind == "VirtualMachine" and r.name in evacuated else r for r in plan.resources))
        host_plans.append(HostPlan(host=name, uri=host.uri, plan=plan, vms=assigned, schedulable=host.schedulable))
    for name in missing:
        host_plans.append(HostPlan(
            host=name, uri="", plan=None, unreachable=missing_host_message(name), missing=True,
            unknown=tuple(vm for vm, on in held_for_missing.items() if on == (name,)),
        ))
    return FleetPlan(
        fleet=fleet, hosts=tuple(host_plans), problems=tuple(problems),
        split_brain=split, unknown=MappingProxyType(dict(sorted({**placed.unknown, **held_for_missing}.items()))),
    )


# Steps after which a domain's mark is the plan's (or the domain is gone): its roster goes with them.
_MARK_WRITERS = (plans.DefineDomain, plans.MigrateDomain, plans.UndefineDomain)


def roster_record(
    host: model.HostSpec, actual: model.ActualState, fleet: str, roster: tuple[str, ...], plan: plans.Plan,
    *, untouched: Collection[str] = (),
) -> plans.ResourcePlan | None:
    """Return the resource that records ``roster`` in the marks of the fleet's domains on ``host`` holding another one.

    One resource per host (one line in the plan however many VMs), a
    :class:`~reconciler.core.plan.RecordRoster` step per domain: only the roster beside the
    mark changes, nothing restarts. A domain whose own resource in ``plan`` defines,
    migrates or removes it is left to that resource, whose definition carries the roster;
    ``untouched`` (split brain) is not changed at all. None: every roster is current.
    """
    rewritten = {step.name for r in plan.resources for step in r.steps if isinstance(step, _MARK_WRITERS)}
    steps, before = [], set()
    for domain in sorted(actual.domains.values(), key=lambda d: d.name):
        owner = domain.definition.owner if domain.definition is not None else None
        if (not domain.owned or owner is None or not domain.persistent or planner.scope_of(domain) != fleet
                or owner.roster == roster or domain.name in rewritten or domain.name in untouched):
            continue
        steps.append(plans.RecordRoster(domain.name, domain.uuid, roster))
        before.add(", ".join(owner.roster) or "(none)")
    if not steps:
        return None
    count = f"{len(steps)} VM{'s' if len(steps) != 1 else ''}"
    return plans.ResourcePlan(
        kind="Host", name=host.name, actions=(Action.UPDATE,), manifest=host.manifest, steps=tuple(steps),
        changes=(FieldChange(
            "metadata.hosts", before.pop() if len(before) == 1 else "(various)", ", ".join(roster), Impact.LIVE,
            note=f"record the fleet's {len(roster)} hosts in the marks of {count} (no restart)"),),
    )


def plan_forget(
    desired: model.DesiredState, observed: Mapping[str, model.ActualState | HostUnreachable], host: str,
    settings: planner.Settings = planner.Settings(),
) -> FleetPlan:
    """Return the plan that removes ``host`` from the roster in every mark of the fleet on its reachable Hosts.

    What ``kvmops forget-host`` carries out, for a host gone for good (or drained) whose
    manifest is gone: nothing but marks change (one :class:`~reconciler.core.plan.RecordRoster`
    per domain naming it, each keeping the rest of its roster). The next fleet plan then no
    longer holds back the VMs that may have run there: they are created elsewhere, and the
    plan's ``notes`` name them. A Host still declared is not forgotten (a problem); the
    marks on an unreachable Host keep the name, and it is missing again when that Host answers.
    """
    fleet = settings.scope
    hosts = dict(sorted(desired.hosts.items()))
    problems = list(desired.problems)
    if host in hosts:
        problems.append(hosts[host].origin.problem("metadata.name", (
            f"forget-host {host}: a Host manifest declares it; delete that manifest first (drain the host before, "
            f"`kvmops drain {host} --apply`)")))
    reachable = {name: state for name, state in observed.items()
                 if name in hosts and isinstance(state, model.ActualState)}
    host_plans = []
    for name, spec in hosts.items():
        if name not in reachable:
            why = observed[name].error if isinstance(observed.get(name), HostUnreachable) else "not observed"
            host_plans.append(HostPlan(host=name, uri=spec.uri, plan=None, unreachable=why, schedulable=spec.schedulable))
            continue
        actual = reachable[name]
        steps = []
        for domain in sorted(actual.domains.values(), key=lambda d: d.name):
            owner = domain.definition.owner if domain.definition is not None else None
            if (problems or not domain.owned or owner is None or not domain.persistent
                    or planner.scope_of(domain) != fleet or host not in owner.roster):
                continue
            steps.append(plans.RecordRoster(domain.name, domain.uuid, tuple(n for n in owner.roster if n != host)))
        resources = ()
        if steps:
            resources = (plans.ResourcePlan(
                kind="Host", name=name, actions=(Action.UPDATE,), manifest=spec.manifest, steps=tuple(steps),
                changes=(FieldChange("metadata.hosts", host, None, Impact.LIVE, note=(
                    f"forget host {host} in the marks of {len(steps)} VM{'s' if len(steps) != 1 else ''} (no restart)")),),
            ),)
        ours = tuple(sorted(d.name for d in actual.domains.values() if d.owned and planner.scope_of(d) == fleet))
        host_plans.append(HostPlan(
            host=name, uri=spec.uri, schedulable=spec.schedulable, vms=ours,
            plan=plans.Plan(uri=spec.uri, resources=resources, declared=(("VirtualMachine", len(ours)),)),
        ))
    notes = []
    if not problems:
        held = sorted(vm for vm, on in plan_fleet(desired, observed, settings).unknown.items() if host in on)
        if held:
            local = [vm for vm in held if evacuation_refusals(desired, [vm])]
            notes.append(
                f"after this, the next apply creates {', '.join(held)} on the reachable Hosts: kvmops no longer holds "
                f"{'it' if len(held) == 1 else 'them'} back for {host}"
                + (f"; {', '.join(local)} {'has' if len(local) == 1 else 'have'} disks not on a shared pool, which "
                   f"start new and empty (their only copy was on {host})" if local else ""))
        silent = [h.host for h in host_plans if h.unreachable is not None]
        if silent:
            notes.append(f"the marks on {', '.join(silent)} (unreachable) still name {host}: run forget-host again "
                         "when it answers, or the fleet finds it missing again")
    return FleetPlan(fleet=fleet, hosts=tuple(host_plans), problems=tuple(problems), notes=tuple(notes))


def host_share(
    desired: model.DesiredState, host: model.HostSpec, vms: Collection[str], *, uses: Collection[str] = (),
    present: Collection[str] = (),
) -> model.DesiredState:
    """Return the part of ``desired`` that ``host`` runs: the VMs ``vms``, and the pools,
    networks and images they (and the VMs ``uses``, arriving or leaving) use or whose
    ``hosts`` selector admits the host. The fleet's problems stay with the fleet.

    A declared network without a ``hosts`` selector that kvmops already runs on the host
    (``present``) stays in the share when no VM there uses it any more: VMs leaving a host
    (a drain) must not take its network with them in a second pass, and may come back. It
    goes when its manifest goes, or when a selector excludes the host."""
    users = [desired.vms[vm] for vm in (*vms, *uses) if vm in desired.vms]
    images = {name for name, spec in desired.images.items() if placement.selects(spec.hosts, host)}
    images |= {disk.image for spec in users for disk in spec.disks if disk.image is not None}
    images &= set(desired.images)
    pools = {name for name, spec in desired.pools.items() if placement.selects(spec.hosts, host)}
    pools |= {pool for spec in users for _, pool in spec.pools_by_field()}
    pools |= {desired.images[name].pool for name in images}
    networks = {name for name, spec in desired.networks.items() if placement.selects(spec.hosts, host)}
    networks |= {nic.source for spec in users for nic in spec.nics if nic.kind == "network"}
    networks |= {name for name in present if name in desired.networks and desired.networks[name].hosts is None}
    return dataclasses.replace(
        desired,
        vms=MappingProxyType({name: desired.vms[name] for name in sorted(vms)}),
        pools=MappingProxyType({name: spec for name, spec in desired.pools.items() if name in pools}),
        networks=MappingProxyType({name: spec for name, spec in desired.networks.items() if name in networks}),
        images=MappingProxyType({name: spec for name, spec in desired.images.items() if name in images}),
        problems=(),
        hosts=MappingProxyType({host.name: host}),
    )


def with_shared_volumes(
    share: model.DesiredState, host: str, actual: model.ActualState, reachable: Mapping[str, model.ActualState],
) -> tuple[model.ActualState, Mapping[tuple[str, str], str]]:
    """Return ``actual`` seeing, in each ``shared`` pool of ``share`` not active on ``host``, the volumes
    another reachable host where it is active sees, and which host each was seen from.

    A shared pool is the same storage on every host (NFS): before kvmops starts it on a
    host, that host cannot list it, yet its volumes are there. Planned blind, a VM coming
    to the host (an evacuation) would have its existing disk created anew, which the
    executor refuses (it never claims a volume it finds); seen through another host, the
    disk is attached as it is and one apply converges. Only a pool defined alike on both
    hosts (type and path as the manifest says) counts; the first such host by name answers.
    """
    volumes: dict[tuple[str, str], model.ObservedVolume] = {}
    borrowed: dict[tuple[str, str], str] = {}
    for pool, spec in sorted(share.pools.items()):
        seen_from = _seen_from(spec, host, actual, reachable)
        if not seen_from:
            continue
        for key, volume in sorted(reachable[seen_from].volumes.items()):
            if key[0] == pool and key not in actual.volumes:
                volumes[key] = volume
                borrowed[key] = seen_from
    if not volumes:
        return actual, MappingProxyType({})
    return (dataclasses.replace(actual, volumes=MappingProxyType({**actual.volumes, **volumes})),
            MappingProxyType(borrowed))


def _seen_from(spec: model.PoolSpec, host: str, actual: model.ActualState,
               reachable: Mapping[str, model.ActualState]) -> str | None:
    """Return the host whose view of shared pool ``spec`` stands for ``host``'s, which cannot list it yet.

    None: ``host`` lists it itself (active), it is not shared, or ``host`` has another pool
    of that name (the plan says so); "": no reachable host has it running as declared.
    """
    here = actual.pools.get(spec.name)
    if not spec.shared or (here is not None and (here.active or (here.type, here.path) != (spec.type, spec.path))):
        return None
    return next((other for other, state in sorted(reachable.items()) if other != host
                 and (there := state.pools.get(spec.name)) is not None and there.active
                 and (there.type, there.path) == (spec.type, spec.path)), "")


def _note_borrowed(plan: plans.Plan, share: model.DesiredState, borrowed: Mapping[tuple[str, str], str]) -> plans.Plan:
    """Return ``plan`` with a note on each VM that uses a volume seen through another host."""
    def note(resource: plans.ResourcePlan) -> plans.ResourcePlan:
        spec = share.vms.get(resource.name) if resource.kind == "VirtualMachine" else None
        if spec is None:
            return resource
        used = [(disk.pool, disk.volume) for disk in spec.disks if disk.path is None]
        used += [(ref.pool, ref.volume) for ref in (spec.cdrom, *((spec.install.kernel, spec.install.initrd)
                                                                   if spec.install is not None else ()))
                 if ref is not None and ref.pool and ref.volume]
        if spec.cloud_init is not None:
            used.append((spec.cloud_init.pool, spec.cloud_init.volume))
        notes = [f"volume {volume} exists on shared pool {pool} (seen from host {borrowed[(pool, volume)]}): used as it "
                 f"is once {pool} runs here" for pool, volume in dict.fromkeys(used) if (pool, volume) in borrowed]
        return dataclasses.replace(resource, notes=(*resource.notes, *notes)) if notes else resource

    return dataclasses.replace(plan, resources=tuple(note(r) for r in plan.resources))


def _marked_hosts(reachable: Mapping[str, model.ActualState], fleet: str) -> set[str]:
    """Return every Host name the marks of this fleet's domains on ``reachable`` hold: rosters, and each mark's host."""
    names: set[str] = set()
    for actual in reachable.values():
        for domain in actual.domains.values():
            owner = domain.definition.owner if domain.definition is not None else None
            if domain.owned and owner is not None and planner.scope_of(domain) == fleet:
                names.update(owner.roster)
                if owner.host:
                    names.add(owner.host)
    return names


def _ours(reachable: Mapping[str, model.ActualState], fleet: str) -> dict[str, set[str]]:
    """Return the hosts each domain marked by this fleet's scope was found on."""
    found: dict[str, set[str]] = {}
    for name, actual in reachable.items():
        for domain in actual.domains.values():
            if domain.owned and planner.scope_of(domain) == fleet:
                found.setdefault(domain.name, set()).add(name)
    return found


@dataclass(frozen=True)
class _OwedCleanup:
    """What a move still owes host ``source``, as a resource of that host's plan: the copies a finished move left
    there, or the end of a hand-over (the guest resumed)."""

    source: str
    resource: plans.ResourcePlan


def _owed_cleanups(
    desired: model.DesiredState, reachable: Mapping[str, model.ActualState], found: Mapping[str, set[str]],
    fleet: str, hosts: Mapping[str, model.HostSpec], *, moving: Collection[str] = frozenset(),
) -> list[_OwedCleanup]:
    """Return the deletions earlier moves still owe, from what the hosts show now.

    A VM of this fleet found on one host whose mark records a copy left on another
    (:class:`~reconciler.core.model.LeftBehind`, persisted by the migration itself) owes
    its deletion there: a crash between the move and the deletion, or a deletion that
    waited for the VM to run. It is deleted only once the VM runs (or is meant to be off),
    only under ``deletionPolicy: Delete`` (today's manifest), never in a shared pool, never
    while a domain there uses it; then the record goes. An unreachable source keeps it.

    Likewise a partial copy a move cut short began on another host (its
    :class:`~reconciler.core.model.Sending` record), when no move of that VM is planned
    (one to that host replaces the copy; one elsewhere carries the record along): the VM
    kept its own disks, so the copy is deleted whatever its deletion policy, then the
    record goes.
    """
    owed: list[_OwedCleanup] = []
    for host, actual in sorted(reachable.items()):
        for domain in sorted(actual.domains.values(), key=lambda d: d.name):
            owner = domain.definition.owner if domain.definition is not None else None
            if (not domain.owned or owner is None or planner.scope_of(domain) != fleet
                    or not (owner.left_behind or owner.sending) or found.get(domain.name) != {host}):
                continue
            spec = desired.vms.get(domain.name)
            if domain.name not in moving:
                partial: dict[str, list[model.Sending]] = {}
                for sent in owner.sending:
                    if sent.host != host and sent.host in reachable and sent.host in hosts:
                        partial.setdefault(sent.host, []).append(sent)
                for copy_host, sents in sorted(partial.items()):
                    owed.append(_OwedCleanup(copy_host, _abandoned_copies(
                        domain, spec, host, copy_host, sents, reachable[copy_host], desired)))
            by_source: dict[str, list[model.LeftBehind]] = {}
            for left in owner.left_behind:
                if left.host != host and left.host in reachable and left.host in hosts:
                    by_source.setdefault(left.host, []).append(left)
            for source, lefts in sorted(by_source.items()):
                resource = _cleanup(domain, spec, host, source, lefts, reachable[source], desired)
                if resource is not None:
                    owed.append(_OwedCleanup(source, resource))
    return owed


def _cleanup(
    domain: model.ObservedDomain, spec: model.VMSpec | None, host: str, source: str, lefts: list[model.LeftBehind],
    there: model.ActualState, desired: model.DesiredState,
) -> plans.ResourcePlan | None:
    steps: list[plans.Step] = []
    changes: list[FieldChange] = []
    notes: list[str] = []
    wants_running = spec is not None and spec.run_strategy is model.RunStrategy.ALWAYS
    for left in lefts:
        where = f"volume {left.pool}/{left.name} on {source}"
        forget = plans.ForgetMovedVolume(left.pool, left.name, domain.name, domain.uuid, source, host)
        policy = _policy(spec, left, domain.definition.owner)
        # (the half of the VM a finished move left there, which this resource discards first, is no other user)
        users = sorted(d.name for d in there.domains.values()
                       if (left.pool, left.name) in d.storage and d.uuid != domain.uuid)
        if left.is_nvram:
            where = f"the UEFI NVRAM on {source}"
            if spec.keep_nvram if spec is not None else domain.definition.owner.keep_nvram:
                steps.append(forget)
                notes.append(f"{where}, left by the move to {host}, is kept (keepNvram); remove it yourself when you "
                             "no longer need it")
                continue
        elif (left.pool, left.name) not in there.volumes:
            steps.append(forget)
            changes.append(FieldChange(f"{where} (record)", "left behind", None, Impact.LIVE,
                                       note=f"already gone; the record on {host} is dropped"))
            continue
        elif left.pool in desired.pools and desired.pools[left.pool].shared:
            steps.append(forget)
            notes.append(f"{where} is in a shared pool: it is {domain.name}'s disk on {host} too, never deleted")
            continue
        elif policy is not model.DeletionPolicy.DELETE:
            steps.append(forget)
            notes.append(f"{where}, left by the move to {host}, is kept (deletionPolicy {policy}); remove it yourself "
                         "when you no longer need it")
            continue
        elif users:
            notes.append(f"{where}, left by the move to {host}, is used by domain {', '.join(users)} there: kept until "
                         "no domain uses it")
            continue
        # What is left is a copy kvmops may delete: once the VM runs where it went, if it should run.
        if wants_running and not domain.power.active:
            notes.append(f"{where}, left by the move to {host}, is deleted once {domain.name} runs on {host}")
        else:
            steps += [plans.DeleteMovedVolume(left.pool, left.name, domain.name, domain.uuid, host,
                                              running=domain.power.active, source=source), forget]
            changes.append(_left_copy_change(left.pool, left.name, source, host, running=domain.power.active))
    if not steps and not notes:
        return None
    return plans.ResourcePlan(
        kind="VirtualMachine", name=domain.name, actions=(Action.UPDATE,) if steps else (), changes=tuple(changes),
        steps=tuple(steps), manifest=spec.manifest if spec is not None else domain.definition.owner.manifest,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class FinishedMove:
    """A move of VM ``vm`` from ``source`` to ``destination`` that libvirt finished on the destination, while the
    source still holds its half: see :func:`finished_move`."""

    vm: str
    source: str
    destination: str


def finished_move(vm: str, on: Collection[str], reachable: Mapping[str, model.ActualState]) -> FinishedMove | None:
    """Return the move kvmops began of ``vm``, found on the hosts ``on``, that libvirt finished on its destination
    while the source's libvirtd lost the job's end, or None when the two copies prove no such thing (split brain).

    libvirt ends a live move on the source (it kills the source's QEMU and forgets the
    definition) after the destination runs the guest; when the source's libvirtd dies in
    between, it comes back with its half of the guest paused, still defined (seen on the lab
    with a restart at the switch-over), and the VM is on two hosts. Which half is stale is
    proven by :func:`is_finished_move`; otherwise the halves stay a split brain for a person
    to settle.
    """
    move = _proven_move(vm, on, reachable, is_finished_move)
    return FinishedMove(vm, *move) if move is not None else None


def _proven_move(vm: str, on: Collection[str], reachable: Mapping[str, model.ActualState],
                 proof: Callable[[model.ObservedDomain, str, model.ObservedDomain, str], bool]) -> tuple[str, str] | None:
    """Return (source, destination) of the move of ``vm``, found on the two hosts ``on``, that ``proof`` holds for
    (``proof(here, source, there, destination)``), trying both ways; None for any other number of hosts or no proof."""
    if len(on) != 2:
        return None
    first, second = sorted(on)
    for source, destination in ((first, second), (second, first)):
        here, there = reachable[source].domains.get(vm), reachable[destination].domains.get(vm)
        if here is not None and there is not None and proof(here, source, there, destination):
            return source, destination
    return None


def is_finished_move(here: model.ObservedDomain, source: str, there: model.ObservedDomain, destination: str) -> bool:
    """Return whether ``here`` (on host ``source``) is the stale half of a move kvmops began to host ``destination``,
    which libvirt finished there: ``there`` is the guest.

    Proven when all of this holds: both are the same domain (name and UUID) with bound
    marks; ``there`` runs, persistently defined, its mark naming its own host (or is held
    paused at the move's hand-over, :func:`held_at_hand_over`, while ``here`` is still paused
    by that migration's switch-over); ``here`` does
    not run (paused or shut off), its mark naming its own host; and the marks record that
    very move, one of two ways:

    * intent before effect (every move since these records exist, copies or not): ``here``
      records the move to ``destination`` begun (``moving_to``, written before libvirt is
      asked to migrate) and ``there`` records coming
      from ``source`` (``moved_from``: only the definition kvmops gives a move does);
    * copies (also a move begun by a kvmops without the first records): ``there`` records
      copies left on ``source`` (which only the definition kvmops gives a move does) and
      ``here`` copies kvmops was sending to ``destination`` before the move began, some of
      them the very ones ``there`` records as left here.

    The stale half never ran after the switch-over and the other one is the guest:
    discarding the stale half finishes the move as libvirt would have (and then resuming
    the guest held at the hand-over, as kvmops would have).
    """
    arrived = there.definition.owner if there.definition is not None else None
    stale = here.definition.owner if here.definition is not None else None
    if (arrived is None or stale is None or (here.name, here.uuid) != (there.name, there.uuid)
            or not there.persistent
            or here.power not in (model.PowerState.PAUSED, model.PowerState.SHUTOFF)
            # a guest held at the hand-over is the guest only if the source's half stopped at the same switch-over
            # and never ran since: paused by the migration, not paused (or shut off) by a person later
            or not (there.power is model.PowerState.RUNNING or (held_at_hand_over(there) and here.paused_by_migration))
            or arrived.binding(there.name, there.uuid) is not model.MarkBinding.BOUND
            or stale.binding(here.name, here.uuid) is not model.MarkBinding.BOUND
            or (arrived.host, stale.host) != (destination, source)):
        return False
    if (stale.moving_to, arrived.moved_from) == (destination, source):
        return True
    left = {(record.pool, record.name) for record in arrived.left_behind if record.host == source}
    sent = {(record.pool, record.name) for record in stale.sending if record.host == destination}
    return bool(left & sent)


@dataclass(frozen=True)
class CancelledMove:
    """A move of VM ``vm`` from ``source`` to ``destination`` whose end the destination's libvirtd lost, so that the
    source kept the guest and the destination a copy that never ran: see :func:`cancelled_move`."""

    vm: str
    source: str
    destination: str


def cancelled_move(vm: str, on: Collection[str], reachable: Mapping[str, model.ActualState]) -> CancelledMove | None:
    """Return the move kvmops began of ``vm``, found on the hosts ``on``, whose end the destination's libvirtd lost
    while it held the guest paused at the hand-over, so that the source kept the guest: the copy on the destination
    is the stale one (:func:`is_cancelled_move`). None when the two copies prove no such thing."""
    move = _proven_move(vm, on, reachable, is_cancelled_move)
    return CancelledMove(vm, *move) if move is not None else None


def is_cancelled_move(here: model.ObservedDomain, source: str, there: model.ObservedDomain, destination: str) -> bool:
    """Return whether ``there`` (on host ``destination``) is the copy a live move of ``here`` from host ``source``
    left when the destination's libvirtd died at the end of the job: the source, never hearing that end, resumed its
    own copy (libvirt's cancellation), and the destination's copy never ran after the switch-over.

    Proven when all of this holds: both are the same domain (name and UUID) with bound marks,
    each naming its own host; ``there`` is persistently defined, records coming from
    ``source`` and the hand-over still pending (``resume_after_move``), and does not run:
    shut off (its restarted libvirtd killed a guest whose CPUs never started) or paused;
    ``here`` records the move to ``destination`` begun (``moving_to``); and ``here`` is the
    guest: not paused at that switch-over while ``there`` is held paused (that pair is a move
    libvirt finished, :func:`is_finished_move`).

    Only kvmops resumes a guest held at the hand-over, only once the source no longer holds
    it, and drops the record right after: a copy still recording it, while the source holds
    the guest, was never resumed. Discarding it loses nothing the guest wrote.
    """
    arrived = there.definition.owner if there.definition is not None else None
    origin = here.definition.owner if here.definition is not None else None
    return (arrived is not None and origin is not None and (here.name, here.uuid) == (there.name, there.uuid)
            and there.persistent and arrived.resume_after_move
            and there.power in (model.PowerState.PAUSED, model.PowerState.SHUTOFF)
            and not (there.power is model.PowerState.PAUSED and here.paused_by_migration)
            and arrived.binding(there.name, there.uuid) is model.MarkBinding.BOUND
            and origin.binding(here.name, here.uuid) is model.MarkBinding.BOUND
            and (arrived.host, origin.host) == (destination, source)
            and (arrived.moved_from, origin.moving_to) == (source, destination))


def _discarded_arrival(desired: model.DesiredState, move: CancelledMove,
                       reachable: Mapping[str, model.ActualState]) -> plans.ResourcePlan:
    """Return the resource, on the destination, that discards the copy a move whose end it lost left there."""
    copy = reachable[move.destination].domains[move.vm]
    spec = desired.vms.get(move.vm)
    how = "destroyed (paused) and undefined" if copy.power.active else "undefined"
    change = FieldChange(f"its copy on {move.destination}", copy.power.value, None, Impact.LIVE, note=(
        f"a move of {move.vm} from {move.source} lost its end on {move.destination} (its libvirtd died as it held the "
        f"guest paused for kvmops to resume): {move.source} kept the guest, and this copy never ran: {how}, its "
        f"volumes kept; the guest on {move.source} is not touched"))
    return plans.ResourcePlan(
        kind="VirtualMachine", name=move.vm, actions=(Action.UPDATE,), changes=(change,),
        steps=(plans.DiscardCancelledArrival(move.vm, copy.uuid, move.source, move.destination),),
        manifest=spec.manifest if spec is not None else copy.definition.owner.manifest,
    )


def held_at_hand_over(domain: model.ObservedDomain) -> bool:
    """Return whether ``domain`` is a guest a live move left paused at its hand-over, for kvmops to resume.

    libvirt moves a running guest paused (``VIR_MIGRATE_PAUSED``) and kvmops resumes it only
    once the source has let go of it: a destination libvirtd that dies as it finishes the
    job can then never leave the guest running on both hosts (the source resumes its own
    copy when it does not hear the end). The definition the move gives the destination
    records it (:attr:`Ownership.resume_after_move <reconciler.core.model.Ownership.resume_after_move>`);
    a domain paused with that record, bound to it, was paused by the move, not by a person.
    """
    owner = domain.definition.owner if domain.definition is not None else None
    return (domain.power is model.PowerState.PAUSED and owner is not None and owner.resume_after_move
            and owner.binding(domain.name, domain.uuid) is model.MarkBinding.BOUND)


def _hand_overs(desired: model.DesiredState, reachable: Mapping[str, model.ActualState],
                found: Mapping[str, set[str]], finished: Collection[str]) -> dict[str, _OwedCleanup]:
    """Return, for each desired VM found on one host only whose mark still records a move's hand-over, the resource
    of that host's plan that settles it: the guest held paused is resumed, and the record dropped.

    Only once the host the move left (``moved_from``) is seen not to hold the VM: while it
    cannot be seen, libvirt may still hold a copy there, and the guest stays paused (the
    resource says why). A record left on a guest that runs or is shut off (kvmops died
    between resuming it and dropping the record, or the guest went down since) is only
    dropped, so that a later pause by a person is never undone.
    """
    settled: dict[str, _OwedCleanup] = {}
    for vm, on in sorted(found.items()):
        if len(on) != 1 or vm in finished or vm not in desired.vms:
            continue
        (host,) = on
        domain = reachable[host].domains[vm]
        owner = domain.definition.owner if domain.definition is not None else None
        if (owner is None or not owner.resume_after_move
                or owner.binding(domain.name, domain.uuid) is not model.MarkBinding.BOUND):
            continue
        spec = desired.vms[vm]
        source = owner.moved_from
        held = held_at_hand_over(domain)
        if source in reachable and source != host:
            change = FieldChange("power", domain.power.value, "running", Impact.LIVE, note=(
                f"a live move from {source} left it paused at the hand-over, and {source} no longer holds it: "
                "resumed (kvmops' own end of the move)")) if held else FieldChange(
                "hand-over record", "present", None, Impact.LIVE, note=(
                    f"the record of its move from {source} stays in its mark while it is {domain.power.value}; "
                    "dropped, so that a pause by a person is never undone"))
            resource = plans.ResourcePlan(
                kind="VirtualMachine", name=vm, actions=(Action.UPDATE,), changes=(change,),
                steps=(plans.ResumeMovedDomain(vm, domain.uuid, host, source),), manifest=spec.manifest)
        else:
            why = (f"host {source} is not reachable" if source in desired.hosts else
                   f"no Host manifest declares {source or 'the host it came from'}")
            resource = plans.ResourcePlan(kind="VirtualMachine", name=vm, manifest=spec.manifest, notes=(
                f"held {domain.power.value}: a live move from {source or '?'} left it paused at the hand-over, and "
                f"{why}; kvmops resumes it once it sees that host no longer holds it (libvirt may hold a copy there "
                f"that runs). If that host is gone for good, resume it yourself (virsh resume {vm})",))
        settled[vm] = _OwedCleanup(host, resource)
    return settled


def _discarded_half(desired: model.DesiredState, move: FinishedMove,
                    reachable: Mapping[str, model.ActualState]) -> plans.ResourcePlan:
    """Return the resource, on the source, that discards the half of a finished move left there, then deletes the
    copies the move left there (and drops their records) as the move itself would have."""
    domain = reachable[move.destination].domains[move.vm]
    stale = reachable[move.source].domains[move.vm]
    spec = desired.vms.get(move.vm)
    lefts = [left for left in domain.definition.owner.left_behind if left.host == move.source]
    cleanup = _cleanup(domain, spec, move.destination, move.source, lefts, reachable[move.source], desired)
    how = "destroyed (paused) and undefined" if stale.power.active else "undefined"
    change = FieldChange(f"its half on {move.source}", stale.power.value, None, Impact.LIVE, note=(
        f"libvirt finished moving {move.vm} to {move.destination}, which runs it with the definition the move gave it, "
        f"but {move.source}'s libvirtd did not end the job there (it died or restarted at that moment) and still holds "
        f"its half: {how}; the guest on {move.destination} is not touched"))
    resumed: tuple[plans.Step, ...] = ()
    changes = [change]
    if held_at_hand_over(domain):
        # kvmops' own end of the move, before the stale half goes: destroying that half first hands the disks'
        # ownership back (libvirt's labels), and the guest, not yet running, could not open them to resume (seen
        # on the lab). The stale half stays paused meanwhile: libvirt stopped it at the switch-over for good.
        resumed = (plans.ResumeMovedDomain(move.vm, domain.uuid, move.destination, move.source),)
        changes.append(FieldChange(f"power on {move.destination}", domain.power.value, "running", Impact.LIVE, note=(
            "the move left it paused at the hand-over: resumed, then its half here is discarded")))
    return plans.ResourcePlan(
        kind="VirtualMachine", name=move.vm, actions=(Action.UPDATE,),
        changes=(*changes, *(cleanup.changes if cleanup else ())),
        steps=(*resumed, plans.DiscardMovedSource(move.vm, domain.uuid, move.source, move.destination),
               *(cleanup.steps if cleanup else ())),
        manifest=spec.manifest if spec is not None else domain.definition.owner.manifest,
        notes=cleanup.notes if cleanup else (),
    )


def _abandoned_copies(
    domain: model.ObservedDomain, spec: model.VMSpec | None, host: str, copy_host: str, sents: list[model.Sending],
    there: model.ActualState, desired: model.DesiredState,
) -> plans.ResourcePlan:
    """Return the resource, on ``copy_host``, deleting the partial copies a move of ``domain`` (on ``host``) began there."""
    steps: list[plans.Step] = []
    changes: list[FieldChange] = []
    notes: list[str] = []
    for sent in sents:
        forget = plans.ForgetMovedVolume(sent.pool, sent.name, domain.name, domain.uuid, copy_host, host, abandoned=True)
        nvram = (sent.pool, sent.name) == model.NVRAM
        where = f"the UEFI NVRAM on {copy_host}" if nvram else f"volume {sent.pool}/{sent.name} on {copy_host}"
        users = sorted(d.name for d in there.domains.values() if (sent.pool, sent.name) in d.storage)
        if not nvram and (sent.pool, sent.name) not in there.volumes:
            steps.append(forget)
            changes.append(FieldChange(f"{where} (record)", "partial copy", None, Impact.LIVE,
                                       note=f"already gone; the record on {host} is dropped"))
        elif not nvram and sent.pool in desired.pools and desired.pools[sent.pool].shared:
            steps.append(forget)
            notes.append(f"{where} is in a shared pool: it is {domain.name}'s disk on {host} too, never deleted")
        elif users:
            notes.append(f"{where}, a partial copy a move of {domain.name} began, is used by domain "
                         f"{', '.join(users)} there: kept until no domain uses it")
        else:
            steps += [plans.DeleteMovedVolume(sent.pool, sent.name, domain.name, domain.uuid, host, source=copy_host,
                                              abandoned=True), forget]
            changes.append(FieldChange(where, "partial copy", None, Impact.LIVE, note=(
                f"a move of {domain.name} to {copy_host} began this copy and was cut short; {domain.name} kept its own "
                f"on {host}, so this is no data loss")))
    return plans.ResourcePlan(
        kind="VirtualMachine", name=domain.name, actions=(Action.UPDATE,) if steps else (), changes=tuple(changes),
        steps=tuple(steps), manifest=spec.manifest if spec is not None else domain.definition.owner.manifest,
        notes=tuple(notes),
    )


def _policy(spec: model.VMSpec | None, left: model.LeftBehind, owner: model.Ownership) -> model.DeletionPolicy:
    """Return the deletion policy of ``left``'s volume: today's manifest's, else the mark's record of it."""
    if spec is not None:
        if spec.cloud_init is not None and (spec.cloud_init.pool, spec.cloud_init.volume) == (left.pool, left.name):
            return model.DeletionPolicy.DELETE
        disk = next((d for d in spec.disks if d.path is None and (d.pool, d.volume) == (left.pool, left.name)), None)
        if disk is not None:
            return disk.deletion_policy
    record = owner.volume(left.pool, left.name)
    return record.deletion_policy if record is not None and record.created else model.DeletionPolicy.RETAIN


def _split_brain_problem(desired: model.DesiredState, brain: SplitBrain, fleet: str,
                         reachable: Mapping[str, model.ActualState], *, source: str) -> model.Problem:
    incoming = [host for host in brain.hosts
                if not reachable[host].domains[brain.vm].persistent
                and reachable[host].domains[brain.vm].power is model.PowerState.PAUSED]
    handed = [host for host in brain.hosts if held_at_hand_over(reachable[host].domains[brain.vm])
              and reachable[host].domains[brain.vm].definition.owner.moved_from in brain.hosts]
    if len(handed) == 1 and len(brain.hosts) == 2 and not incoming:
        (other,) = [host for host in brain.hosts if host not in handed]
        message = (
            f"VM {brain.vm} is being handed over from {other} to {handed[0]}: libvirt has moved it, paused on "
            f"{handed[0]} until {other} lets go of it (or resumes it, if the move failed at its end); nothing is done "
            "to either copy while both hold it: plan again in a moment, and if this stays, keep the copy that runs "
            f"and remove the other yourself"
        )
    elif len(incoming) == 1 and len(brain.hosts) == 2:
        # libvirt's own job: the destination holds a paused, transient copy until the job ends
        (other,) = [host for host in brain.hosts if host not in incoming]
        message = (
            f"VM {brain.vm} is being migrated from {other} to {incoming[0]} by libvirt (a paused, transient copy is "
            f"on {incoming[0]}); nothing is done to either copy until libvirt finishes or abandons the job: plan again "
            "in a moment"
        )
    else:
        running = [host for host in brain.hosts if reachable[host].domains[brain.vm].power is model.PowerState.RUNNING]
        active = [host for host in brain.hosts if reachable[host].domains[brain.vm].power.active]
        now = (f"; it RUNS on {' and '.join(running)} at once, stop one now" if len(running) > 1 else
               f"; it is active on {', '.join(active)}" if active else "")
        # (undefining an active domain leaves it running, transient: it must be destroyed too)
        remove = ("virsh -c URI destroy NAME where it is active, then virsh -c URI undefine NAME" if active
                  else "virsh -c URI undefine NAME")
        message = (
            f"VM {brain.vm} is marked by fleet {fleet} on {len(brain.hosts)} hosts ({', '.join(brain.hosts)}): split "
            f"brain (a half-done migration, or a host that came back){now}. Neither copy is started, stopped, changed, "
            f"migrated or pruned; keep the right one and remove the other yourself ({remove}), then plan again"
        )
    spec = desired.vms.get(brain.vm)
    if spec is not None:
        return spec.origin.problem("metadata.name", message)
    return model.Problem(source or ".", None, "", message)


def _evacuation_note(move: placement.Move, desired: model.DesiredState, unseen: Collection[str] = ()) -> str:
    spec = desired.vms[move.vm]
    local = [disk.name for disk in spec.disks
             if disk.path is not None or not (disk.pool in desired.pools and desired.pools[disk.pool].shared)]
    disks = (f"its local disks ({', '.join(local)}) start new and empty here" if local
             else "its disks are on shared storage and are used as they are")
    blind = sorted({disk.pool for disk in spec.disks if disk.path is None and disk.pool in unseen})
    if blind:
        disks += (f"; but shared pool {', '.join(blind)} runs on no reachable host, so its volumes cannot be seen "
                  "before it starts here: a disk found there then is not claimed as new (that step fails), and the "
                  "next apply attaches it as it is (declare the pool on every host, `hosts: {}`, to move in one apply)")
    return f"evacuated from {move.source}, declared dead: defined anew here; {disks}"


@dataclass(frozen=True)
class StorageMove:
    """What becomes of each storage a VM uses when it moves: see :class:`~reconciler.core.plan.MigrateDomain`.

    ``copies`` are disk targets libvirt copies live, ``sends`` volumes kvmops streams,
    ``shared_files`` writable files outside pools the destination must see as they are,
    ``media`` read-only media the destination must already have, ``shared`` the pools
    both hosts see, ``left`` the local volumes the move leaves on the source.
    """

    copies: tuple[str, ...] = ()
    sends: tuple[tuple[str, str], ...] = ()
    shared_files: tuple[str, ...] = ()
    media: tuple[tuple[str, str], ...] = ()
    shared: tuple[str, ...] = ()
    left: tuple[tuple[str, str], ...] = ()


def storage_move(spec: model.VMSpec, definition: model.DomainDefinition | None, pools: Mapping[str, model.PoolSpec],
                 *, live: bool) -> StorageMove:
    """Return how every storage ``spec``'s domain uses goes along when it moves, live or offline.

    A writable disk in a pool no manifest declares ``shared`` is local: libvirt copies it
    live, kvmops streams it offline. The cloud-init seed (kvmops' own, read-only) is
    streamed by kvmops: libvirt copies no read-only disk. CD-ROM and install media kvmops
    did not create must already be on the destination; a ``path:`` disk must be the same
    file there.
    """
    def is_shared(pool: str) -> bool:
        return pool in pools and pools[pool].shared

    copies, sends, shared_files, media, shared, left = [], [], [], [], set(), []
    for disk in spec.disks:
        if disk.path is not None:
            shared_files.append(disk.path)
        elif is_shared(disk.pool):
            shared.add(disk.pool)
        else:
            (copies.append(disk.target) if live else sends.append((disk.pool, disk.volume)))
            left.append((disk.pool, disk.volume))
    seed = spec.cloud_init
    if seed is not None:
        if is_shared(seed.pool):
            shared.add(seed.pool)
        else:
            sends.append((seed.pool, seed.volume))
            left.append((seed.pool, seed.volume))
    refs = [spec.cdrom] if spec.cdrom is not None else []
    if spec.install is not None and definition is not None and definition.kernel:  # still booting from them
        refs += [ref for ref in (spec.install.kernel, spec.install.initrd) if ref is not None]
    for ref in refs:
        if ref.pool and is_shared(ref.pool):
            shared.add(ref.pool)
        else:
            media.append((ref.pool, ref.volume or ref.path or ""))
    return StorageMove(tuple(copies), tuple(sends), tuple(shared_files), tuple(dict.fromkeys(media)),
                       tuple(sorted(shared)), tuple(dict.fromkeys(left)))


def live_impossible(definition: model.DomainDefinition | None) -> str | None:
    """Return why a running domain cannot move live (so it is restarted on its new host), or None."""
    if definition is not None and definition.cpu_mode == "host-passthrough":
        return ("its CPU is the host's own (cpu mode host-passthrough): a running guest can only move live between "
                "identical CPUs, which kvmops cannot prove")
    return None


def migration_mode(spec: model.VMSpec, domain: model.ObservedDomain, pools: Mapping[str, model.PoolSpec]) -> plans.MigrationMode:
    """Return how ``spec``'s domain moves: live on shared storage, live with a copy, or offline (off, or restarted)."""
    if not domain.power.active or live_impossible(domain.definition) is not None:
        return plans.MigrationMode.OFFLINE
    moved = storage_move(spec, domain.definition, pools, live=True)
    return plans.MigrationMode.LIVE_COPY_STORAGE if moved.copies else plans.MigrationMode.LIVE


def _migration(
    desired: model.DesiredState, move: placement.Move, source: model.ActualState,
    hosts: Mapping[str, model.HostSpec], fleet: str, settings: planner.Settings, *, roster: tuple[str, ...] = (),
) -> plans.ResourcePlan:
    spec = desired.vms[move.vm]
    domain = source.domains[move.vm]
    mode = migration_mode(spec, domain, desired.pools)
    restart = live_impossible(domain.definition) if domain.power.active else None
    moved = storage_move(spec, domain.definition, desired.pools, live=mode is not plans.MigrationMode.OFFLINE)
    owner = domain.definition.owner if domain.definition is not None else None
    notes = [f"moves because {move.reason}"]
    if owner is None or domain.definition is None:
        return plans.ResourcePlan(kind="VirtualMachine", name=move.vm, manifest=spec.manifest, problems=(
            spec.origin.problem("metadata.name", (
                f"domain {move.vm} on {move.source} carries kvmops' mark but its XML cannot be read ({domain.error}); "
                "it is not migrated"
            )),))
    deleted: list[tuple[str, str]] = []
    for pool, volume in moved.left:
        record = owner.volume(pool, volume)
        where = f"volume {pool}/{volume} on {move.source}"
        if record is not None and record.created and record.deletion_policy is model.DeletionPolicy.DELETE:
            deleted.append((pool, volume))
        else:
            why = "deletionPolicy Retain" if record is not None and record.created else "kvmops did not create it"
            notes.append(f"{where} is left behind after the move ({why}): never deleted by kvmops; remove it yourself "
                         "when you no longer need it")
    nvram = domain.definition.firmware == "efi"
    if nvram and spec.keep_nvram:
        notes.append(f"the UEFI NVRAM on {move.source} is left behind after the move (keepNvram): never deleted by "
                     "kvmops; remove it yourself when you no longer need it")
    elif nvram:
        deleted.append(model.NVRAM)
    # A copy an earlier move of this VM made on this destination and never finished (a kill):
    # the source's mark proves it is kvmops', so this move replaces it.
    copied_volumes = [(disk.pool, disk.volume) for disk in spec.disks if disk.target in moved.copies]
    carried = {*moved.sends, *copied_volumes, *([model.NVRAM] if nvram else [])}
    replaces = tuple(dict.fromkeys((sent.pool, sent.name) for sent in owner.sending
                                   if sent.host == move.destination and (sent.pool, sent.name) in carried))
    for pool, volume in replaces:
        what = "the UEFI NVRAM" if (pool, volume) == model.NVRAM else f"volume {pool}/{volume}"
        notes.append(f"{what} on {move.destination} is a copy an interrupted move of {move.vm} began (recorded in its "
                     "mark here): replaced by this move's copy")
    # The destination's next plan finds it current: same manifest, digest and a mark naming
    # the new host, and the copies this move leaves (libvirt persists it in the same job):
    # a crash before their deletion leaves that record, and the next pass finishes it.
    left_behind = tuple(dict.fromkeys((*owner.left_behind,
                                       *(model.LeftBehind(move.source, pool, volume) for pool, volume in deleted))))
    # a running guest moved live is held paused at the hand-over until its source has let go of it
    held_paused = mode is not plans.MigrationMode.OFFLINE and domain.power is model.PowerState.RUNNING
    xml = domxml.remark(domain.xml, dataclasses.replace(
        owner, manifest=spec.manifest, digest=spec.digest, fleet=fleet, host=move.destination, left_behind=left_behind,
        # a partial copy an earlier move began on a third host stays recorded, so the next pass can remove it
        sending=tuple(sent for sent in owner.sending if sent.host not in (move.destination, move.source)),
        # the proof, with the source's record of this move begun, that a half left on the source is stale
        moving_to="", moved_from=move.source,
        # a running guest is held paused at the hand-over until its source has let go of it
        resume_after_move=held_paused,
        roster=roster or owner.roster,
    ))
    if restart is not None:
        impact, how = Impact.RESTART, (f"restarted: {restart}; it is shut down here, moved offline and started on "
                                       f"{move.destination}")
    elif mode is plans.MigrationMode.LIVE:
        impact, how = Impact.LIVE, "live migration, disks on shared storage"
    elif mode is plans.MigrationMode.LIVE_COPY_STORAGE:
        impact, how = Impact.LIVE, "live migration with a copy of the local disks (the guest keeps running)"
    else:
        impact, how = Impact.RESTART, "offline: the VM is shut off; its definition and disks move, it is not started"
    copied = [f"{pool}/{volume}" for disk in spec.disks if disk.target in moved.copies
              for pool, volume in [(disk.pool, disk.volume)]]
    if copied:
        notes.append(f"copied by libvirt while the guest runs: {', '.join(copied)}")
    sent = [f"{p}/{v}" for p, v in moved.sends] + (["the UEFI NVRAM (libvirt does not carry it)"] if nvram else [])
    if sent:
        notes.append(f"copied by kvmops before the move: {', '.join(sent)}")
    if held_paused:
        notes.append(f"the guest stands still from the switch-over until {move.source} has let go of it (libvirt keeps "
                     f"it paused on {move.destination}, kvmops resumes it): it never runs on both hosts. Unless libvirt "
                     "does not know the storage of a disk it does not copy to be shared: then it moves as libvirt moves "
                     "it by default")
    if moved.shared:
        notes.append(f"on shared storage, not copied: pool {', '.join(moved.shared)}")
    if moved.shared_files:
        notes.append(f"files outside any pool, not copied: {', '.join(moved.shared_files)}; {move.destination} must see "
                     "the very same file (checked before the move, which is refused otherwise)")
    if moved.media:
        notes.append(f"read-only media kvmops did not create, not copied: "
                     f"{', '.join(f'{p}/{v}' if p else v for p, v in moved.media)}; {move.destination} must have them "
                     "(checked before the move)")
    destination = hosts[move.destination]
    requires = [f"{move.destination}:StoragePool/{pool}" for _, pool in spec.pools_by_field() if pool in desired.pools]
    requires += [f"{move.destination}:Network/{nic.source}" for nic in spec.nics
                 if nic.kind == "network" and nic.source in desired.networks]
    requires += [f"{move.destination}:Image/{disk.image}" for disk in spec.disks if disk.image is not None]
    changes = [FieldChange("host", move.source, move.destination, impact, note=how)]
    cleanups: list[plans.Step] = []
    for pool, volume in deleted:
        cleanups.append(plans.DeleteMovedVolume(pool, volume, move.vm, domain.uuid, move.destination,
                                                running=domain.power.active, source=move.source))
        cleanups.append(plans.ForgetMovedVolume(pool, volume, move.vm, domain.uuid, move.source, move.destination))
        changes.append(_left_copy_change(pool, volume, move.source, move.destination, running=domain.power.active))
    timeout = spec.shutdown_timeout if spec.shutdown_timeout is not None else settings.shutdown_timeout
    return plans.ResourcePlan(
        kind="VirtualMachine", name=move.vm, actions=(Action.MIGRATE,), changes=tuple(changes),
        steps=(plans.MigrateDomain(
            name=move.vm, uuid=domain.uuid, source=move.source, destination=move.destination,
            destination_uri=destination.uri, mode=mode, xml=xml, copies=moved.copies, sends=moved.sends,
            shared_files=moved.shared_files, media=moved.media, stop_first=restart is not None,
            start_after=restart is not None, shutdown_timeout=timeout if restart is not None else 0.0,
            nvram=nvram, replaces=replaces, held_paused=held_paused,
        ), *cleanups),
        manifest=spec.manifest, notes=tuple(notes), requires=tuple(dict.fromkeys(requires)),
    )


def _left_copy_change(pool: str, volume: str, source: str, destination: str, *, running: bool) -> FieldChange:
    """Return the plan line of the copy a move leaves on ``source`` and then deletes: no DATA LOSS, the data moved."""
    if (pool, volume) == model.NVRAM:
        what, lives = f"UEFI NVRAM on {source}", "the VM's NVRAM (its boot entries)"
    else:
        what, lives = f"volume {pool}/{volume} on {source}", "the VM's disk"
    return FieldChange(what, "left behind", None, Impact.LIVE, note=(
        f"the source's copy is removed once the VM {'runs' if running else 'is'} on {destination}; {lives} lives on "
        f"at {destination}, so this is no data loss and it is deleted at once, not moved to the trash"))


def evacuation_refusals(desired: model.DesiredState, vms: Collection[str]) -> tuple[str, ...]:
    """Return why each of ``vms`` (on a host declared dead) cannot be started elsewhere: a disk not on a shared pool.

    Its only copy is on the dead host; defining it anew elsewhere would start it on new,
    empty disks, which is not moving it. Empty: every one of them can be evacuated.
    """
    refusals = []
    for name in sorted(vms):
        spec = desired.vms.get(name)
        if spec is None:
            continue
        local = [disk.name for disk in spec.disks
                 if disk.path is not None or not (disk.pool in desired.pools and desired.pools[disk.pool].shared)]
        if local:
            refusals.append(f"VM {name} has disks that are not on a shared pool ({', '.join(local)}): their only copy "
                            "is on the dead host")
    return tuple(refusals)
