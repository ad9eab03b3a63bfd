"""Plan the Networks: create, update in place (DHCP hosts live), start, and remove those no manifest declares."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from reconciler.core import model, netxml
from reconciler.core import plan as plans
from reconciler.core.plan import Action, FieldChange, Impact
from reconciler.core.planner.settings import Settings
from reconciler.core.planner.words import yes_no


def network_problems(
    spec: model.VMSpec, declared: Mapping[str, model.NetworkSpec], existing: Mapping[str, model.ObservedNetwork], uri: str,
) -> list[model.Problem]:
    """Return a problem for each NIC on a libvirt network that is neither declared nor on the host.

    Without any observed network (an offline diff) nothing can be said, so nothing is.
    """
    if not existing:
        return []
    return [
        spec.origin.problem(f"spec.networks[{index}].network", (
            f"unknown network {nic.source!r}: declare it in a Network manifest or define it on {uri} "
            "(virsh net-list --all shows what exists)"
        ))
        for index, nic in enumerate(spec.nics)
        if nic.kind == "network" and nic.source not in declared and nic.source not in existing
    ]


def plan_network(
    spec: model.NetworkSpec, observed: model.ObservedNetwork | None, actual: model.ActualState, settings: Settings
) -> plans.ResourcePlan:
    """Return the plan of Network ``spec``: create it, or update an owned one of this scope (DHCP hosts live)."""
    base = dict(kind="Network", name=spec.name, manifest=spec.manifest)
    wanted = dataclasses.replace(spec.definition, owner=dataclasses.replace(spec.definition.owner, scope=settings.scope))
    if observed is None:
        steps: list[plans.Step] = [plans.DefineNetwork(spec.name, netxml.render(wanted), create=True),
                                   plans.StartNetwork(spec.name)]
        if spec.autostart:
            steps.append(plans.SetNetworkAutostart(spec.name, True))
        return plans.ResourcePlan(**base, actions=(Action.CREATE, Action.START), changes=tuple(
            FieldChange(path, None, value, Impact.LIVE) for path, value in _network_fields(wanted) if value
        ), steps=tuple(steps))
    if not observed.owned:
        return plans.ResourcePlan(**base, problems=(spec.origin.problem("metadata.name", (
            f"network {spec.name!r} already exists on {actual.host.uri} and is not managed by kvmops; it will not be "
            "touched. Rename this Network, or remove the existing one (virsh net-undefine) to let kvmops create it"
        )),))
    current = observed.definition
    if current.owner is not None and current.owner.scope != settings.scope:
        return plans.ResourcePlan(**base, problems=(spec.origin.problem("metadata.name", (
            f"network {spec.name!r} is managed by another kvmops manifest set (scope {current.owner.scope!r})"
        )),))
    # What libvirt chose where the manifest says nothing (the bridge name) is kept.
    wanted = dataclasses.replace(wanted, bridge=wanted.bridge or current.bridge, uuid=current.uuid)
    steps, changes, actions, notes = [], [], [], []
    if _network_essence(wanted) != _network_essence(current):
        old, new = dict(_network_fields(current)), dict(_network_fields(wanted))
        structural = [path for path in new if path not in ("hosts", "manifest") and old.get(path) != new.get(path)]
        for path in new:
            if old.get(path) != new.get(path):
                impact = Impact.LIVE if path == "hosts" or not observed.active else Impact.RESTART
                changes.append(FieldChange(path, old.get(path), new.get(path), impact))
        steps.append(plans.DefineNetwork(spec.name, netxml.render(wanted, mac=netxml.bridge_mac(observed.xml))))
        if observed.active:
            before, after = set(current.hosts), set(wanted.hosts)
            steps += [plans.UpdateDhcpHost(spec.name, False, netxml.host_xml(h)) for h in sorted(before - after, key=str)]
            steps += [plans.UpdateDhcpHost(spec.name, True, netxml.host_xml(h)) for h in sorted(after - before, key=str)]
            if structural:
                notes.append(
                    "changes to the network itself take effect when it restarts (virsh net-destroy and net-start "
                    "disconnect running guests, so kvmops leaves that to you)"
                )
        actions.append(Action.UPDATE)
    if observed.autostart != spec.autostart:
        steps.append(plans.SetNetworkAutostart(spec.name, spec.autostart))
        changes.append(FieldChange("autostart", yes_no(observed.autostart), yes_no(spec.autostart), Impact.LIVE))
        if Action.UPDATE not in actions:
            actions.append(Action.UPDATE)
    if not observed.active:
        steps.append(plans.StartNetwork(spec.name))
        actions.append(Action.START)
    return plans.ResourcePlan(**base, actions=tuple(actions), changes=tuple(changes), steps=tuple(steps), notes=tuple(notes))


def _network_essence(definition: model.NetworkDefinition) -> model.NetworkDefinition:
    """Return what decides whether a network is redefined: everything but the manifest's digest.

    A running network's XML may keep the digest it started with, and a digest alone
    (labels, formatting) never justifies touching a network.
    """
    if definition.owner is None:
        return definition
    return dataclasses.replace(definition, owner=dataclasses.replace(definition.owner, digest=""))


def _network_fields(definition: model.NetworkDefinition) -> list[tuple[str, str | None]]:
    subnet = f"{definition.address}/{definition.prefix}" if definition.address else None
    dhcp = f"{definition.dhcp_start} - {definition.dhcp_end}" if definition.dhcp_start else None
    hosts = ", ".join(f"{h.mac}={h.ip}" + (f" ({h.name})" if h.name else "") for h in definition.hosts) or None
    return [("mode", definition.mode), ("bridge", definition.bridge), ("ipv4", subnet), ("dhcp", dhcp), ("hosts", hosts),
            ("manifest", definition.owner.manifest if definition.owner else None)]


def orphan_networks(actual: model.ActualState, desired: model.DesiredState, settings: Settings) -> list[model.ObservedNetwork]:
    """Return the owned networks of this scope that no manifest declares any more."""
    return [
        network for name, network in sorted(actual.networks.items())
        if network.owned and name not in desired.networks and network.definition.owner is not None
        and network.definition.owner.scope == settings.scope
    ]


def plan_network_prune(
    network: model.ObservedNetwork, actual: model.ActualState, desired: model.DesiredState, pruned: set[str],
) -> plans.ResourcePlan:
    """Return the removal of an owned network no manifest declares, or why it is kept.

    Domains this same plan prunes do not keep it: its removal requires their prunes (the
    executor runs it after them, and skips it if one fails), so VMs and the network they
    use go in one pass.
    """
    base = dict(kind="Network", name=network.name, manifest=network.definition.owner.manifest or None)
    attached = sorted(
        name for name, domain in actual.domains.items()
        if any(n.kind == "network" and n.source == network.name for n in domain.nics)
    )
    users = [name for name in attached if name not in pruned] + sorted(
        spec.name for spec in desired.vms.values() if any(n.source == network.name for n in spec.nics)
    )
    if users:
        return plans.ResourcePlan(**base, notes=(
            f"no manifest declares this network any more, but {', '.join(sorted(set(users)))} still use it: kept",
        ))
    going = [name for name in attached if name in pruned]
    notes = ["no manifest declares this network any more"]
    if going:
        notes.append(f"removed after {', '.join(going)}, which this plan removes")
    return plans.ResourcePlan(
        **base, actions=(Action.DELETE,), steps=(plans.RemoveNetwork(network.name),),
        changes=(FieldChange("network", network.name, None, Impact.LIVE),),
        notes=tuple(notes), requires=tuple(f"VirtualMachine/{name}" for name in going),
    )
