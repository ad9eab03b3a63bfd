"""Plan without a hypervisor: the host that applying ``base`` manifests would leave behind.

``kvmops diff --base REF`` compares two revisions of the manifests on a CI runner with no
libvirt.  It plans the head revision against :func:`converged_host` of the base revision:
the actual state an ``apply`` of the base would have produced, computed by planning the
base against an empty host and carrying that plan out (:func:`applied`).  So the host a
diff starts from comes from the same code as ``apply``, and the diff goes through the
same planner, with the same impacts, as a plan against a real host; only what a real
host adds (drift, foreign domains, what libvirt chooses by itself) is absent.

:func:`annotate_moves` then says what a reviewer wants to know and the planner cannot: a
VM that disappeared and reappeared under another name is a rename (which kvmops carries
out as a delete and a create).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from types import MappingProxyType
from xml.sax.saxutils import escape

from reconciler.core import actual, domxml, fleet, model, planner
from reconciler.core import plan as plans

OFFLINE_VIRT_TYPES = ("kvm", "qemu")


def converged_host(
    desired: model.DesiredState, *, uri: str, scope: str | None = None, settings: planner.Settings | None = None,
    start: model.Observation | None = None,
) -> model.ActualState:
    """Return the host an apply of ``desired`` would leave, as planning input.

    Nothing here knows what a VM, network, pool or image becomes on a host: the planner
    plans ``desired`` against an empty host (the very code ``apply`` runs), and
    :func:`applied` carries the plan's steps out on raw records, which are then read
    back as ``kvmops state export`` reads a real host (:func:`reconciler.core.actual.interpret`).
    ``start`` is the host before the apply: by default an empty one offering kvm and qemu,
    with stand-ins for the pools and networks the manifests use but do not declare.
    ``scope`` (default: that of ``settings``) names the manifest set; nothing is pruned.
    """
    settings = settings or planner.Settings()
    settings = dataclasses.replace(settings, scope=scope or settings.scope, prune=False)
    if start is None:
        start = model.Observation(
            host=model.HostInfo(uri=uri, virt_types=OFFLINE_VIRT_TYPES, offline=True), domains=(), volumes=(),
            pools=tuple(_stand_in_pools(desired).values()), networks=tuple(_stand_in_networks(desired)),
        )
    plan = planner.plan_changes(desired, actual.interpret(start), settings=settings)
    return actual.interpret(applied(start, plan))


def converged_fleet(
    desired: model.DesiredState, *, uri: str, settings: planner.Settings | None = None,
) -> dict[str, model.ActualState]:
    """Return each Host an apply of the fleet ``desired`` would leave, by name, as planning input.

    As :func:`converged_host` does for one host: the fleet is planned against empty hosts
    (placement decides where each VM goes, the very code ``apply`` runs) and each host's
    plan is carried out on its own records. ``uri`` labels the hosts (``URI host NAME``).
    """
    settings = dataclasses.replace(settings or planner.Settings(), prune=False)
    starts = {
        name: model.Observation(
            host=model.HostInfo(uri=f"{uri} host {name}", virt_types=OFFLINE_VIRT_TYPES, offline=True), domains=(),
            volumes=(), pools=tuple(_stand_in_pools(desired).values()), networks=tuple(_stand_in_networks(desired)),
        )
        for name in desired.hosts
    }
    planned = fleet.plan_fleet(desired, {name: actual.interpret(start) for name, start in starts.items()}, settings)
    return {host.host: actual.interpret(applied(starts[host.host], host.plan)) for host in planned.hosts}


def applied(observation: model.Observation, plan: plans.Plan) -> model.Observation:
    """Return ``observation`` as it would be after every step of ``plan`` succeeded.

    A pure stand-in for the executor, at the level of what libvirt would then report: a
    defined domain's XML is the XML the step hands to libvirt, a started one's live XML
    its definition at that moment.  Only what libvirt adds by itself (addresses,
    defaults, the bridge of a network) is absent.
    """
    domains = {d.name: d for d in observation.domains}
    pools = {p.name: p for p in observation.pools}
    volumes = {(v.pool, v.name): v for v in observation.volumes}
    networks = {n.name: n for n in observation.networks}

    def add_volume(pool: str, name: str, capacity: int) -> None:
        directory = pools[pool].path if pool in pools and pools[pool].path else f"/{pool}"
        volumes[(pool, name)] = model.ObservedVolume(pool, name, capacity, 0, f"{directory}/{name}")

    for resource in plan.resources:
        for step in resource.steps:
            if isinstance(step, plans.DefinePool):
                root = ET.fromstring(step.xml)
                pools[step.name] = model.ObservedPool(step.name, root.get("type", "dir"), root.findtext("target/path"),
                                                      active=False, autostart=False)
            elif isinstance(step, plans.StartPool):
                pools[step.name] = dataclasses.replace(pools[step.name], active=True)
            elif isinstance(step, plans.SetPoolAutostart):
                pools[step.name] = dataclasses.replace(pools[step.name], autostart=step.autostart)
            elif isinstance(step, (plans.CreateVolume, plans.CloneVolume)):
                add_volume(step.pool, step.name, step.capacity)
            elif isinstance(step, (plans.ResizeVolume, plans.ResizeDisk)):
                key = (step.pool, step.volume if isinstance(step, plans.ResizeDisk) else step.name)
                volumes[key] = dataclasses.replace(volumes[key], capacity=step.capacity)
            elif isinstance(step, plans.ImportImage):
                add_volume(step.pool, step.name, 0)
                add_volume(step.pool, model.image_complete_volume(step.name), 0)
            elif isinstance(step, plans.WriteSeed):
                add_volume(step.pool, step.name, 0)
            elif isinstance(step, (plans.DeleteVolume, plans.MoveVolumeToTrash)):
                volumes.pop((step.pool, step.name), None)
            elif isinstance(step, plans.DefineDomain):
                old = domains.get(step.name)
                domains[step.name] = (
                    dataclasses.replace(old, inactive_xml=step.xml) if old is not None else model.DomainRecord(
                        step.name, step.uuid, step.xml, model.PowerState.SHUTOFF, model.ShutoffReason.SHUTDOWN,
                        autostart=False, persistent=True,
                    )
                )
            elif isinstance(step, plans.RecordRoster):
                old = domains[step.domain]
                owner = domxml.parse_owner(domxml.parse_tree(old.inactive_xml))
                if owner is not None:
                    domains[step.domain] = dataclasses.replace(old, inactive_xml=domxml.remark(
                        old.inactive_xml, dataclasses.replace(owner, roster=step.hosts)))
            elif isinstance(step, plans.SetAutostart):
                domains[step.name] = dataclasses.replace(domains[step.name], autostart=step.autostart)
            elif isinstance(step, plans.StartDomain):
                old = domains[step.name]
                domains[step.name] = dataclasses.replace(old, power=model.PowerState.RUNNING, shutoff_reason=None,
                                                         live_xml=old.inactive_xml)
            elif isinstance(step, plans.StopDomain):
                domains[step.name] = dataclasses.replace(domains[step.name], power=model.PowerState.SHUTOFF,
                                                         shutoff_reason=model.ShutoffReason.SHUTDOWN, live_xml=None)
            elif isinstance(step, plans.UndefineDomain):
                domains.pop(step.name, None)
            elif isinstance(step, plans.DefineNetwork):
                old_network = networks.get(step.name)
                networks[step.name] = (dataclasses.replace(old_network, xml=step.xml) if old_network is not None
                                       else model.NetworkRecord(step.name, step.xml, active=False, autostart=False))
            elif isinstance(step, plans.StartNetwork):
                networks[step.name] = dataclasses.replace(networks[step.name], active=True)
            elif isinstance(step, plans.SetNetworkAutostart):
                networks[step.name] = dataclasses.replace(networks[step.name], autostart=step.autostart)
            elif isinstance(step, plans.RemoveNetwork):
                networks.pop(step.name, None)
            # SetMemoryLive and UpdateDhcpHost change only the running state, which
            # observation does not compare (the definition already holds the result);
            # PurgeTrashEntry only what is in a trash, which no libvirt object shows.
    return dataclasses.replace(
        observation, domains=tuple(domains.values()), pools=tuple(pools.values()),
        volumes=tuple(volumes.values()), networks=tuple(networks.values()),
    )


def with_host_stand_ins(state: model.ActualState, desired: model.DesiredState) -> model.ActualState:
    """Return ``state`` plus stand-ins for the undeclared pools and networks ``desired`` uses (they live on the host)."""
    pools = _stand_in_pools(desired)
    pools.update(state.pools)
    networks = {record.name: actual.network(record) for record in _stand_in_networks(desired)}
    networks.update(state.networks)
    return dataclasses.replace(state, pools=MappingProxyType(pools), networks=MappingProxyType(networks))


def _stand_in_networks(desired: model.DesiredState) -> list[model.NetworkRecord]:
    """Return stand-ins for the networks NICs use but no manifest declares: the host's own (``default``)."""
    used = {nic.source for spec in desired.vms.values() for nic in spec.nics if nic.kind == "network"}
    return [
        model.NetworkRecord(name, f"<network><name>{escape(name)}</name></network>", active=True, autostart=True)
        for name in sorted(used) if name not in desired.networks
    ]


def _stand_in_pools(desired: model.DesiredState) -> dict[str, model.ObservedPool]:
    """Return stand-ins for the pools a diff cannot see: those VMs and images use but no manifest declares.

    Such a pool lives on the host; its directory is unknown, so a stand-in one (``/NAME``)
    names the files in it, the same in both revisions.
    """
    used = {pool for spec in desired.vms.values() for _, pool in spec.pools_by_field()}
    used |= {image.pool for image in desired.images.values()}
    return {
        pool: model.ObservedPool(pool, "dir", f"/{pool}", active=True, autostart=True)
        for pool in sorted(used) if pool not in desired.pools
    }


def annotate_moves(plan: plans.Plan, base: model.DesiredState, head: model.DesiredState) -> plans.Plan:
    """Return ``plan`` with renames between ``base`` and ``head`` named as such."""
    removed = {name: spec for name, spec in base.vms.items() if name not in head.vms}
    added = {name: spec for name, spec in head.vms.items() if name not in base.vms}
    renames: dict[str, str] = {}
    for old_name, old in removed.items():
        for new_name, new in added.items():
            if new_name not in renames.values() and _same_machine(old, new):
                renames[old_name] = new_name
                break
    if not renames:
        return plan
    new_names = {new: old for old, new in renames.items()}
    resources = []
    for resource in plan.resources:
        note = None
        if resource.kind == "VirtualMachine" and resource.name in renames:
            note = (f"renamed to {renames[resource.name]}: kvmops removes this VM and creates {renames[resource.name]} "
                    "(new domain, new UUID; volumes follow their deletionPolicy)")
        elif resource.kind == "VirtualMachine" and resource.name in new_names:
            note = f"renamed from {new_names[resource.name]}: created as a new VM"
        if note:
            resource = dataclasses.replace(resource, notes=(note, *resource.notes))
        resources.append(resource)
    return dataclasses.replace(plan, resources=tuple(resources))


def _same_machine(old: model.VMSpec, new: model.VMSpec) -> bool:
    """Return whether two specs differ only in name (and what derives from it: volume names)."""
    def shape(spec: model.VMSpec) -> tuple:
        disks = tuple((d.name, d.pool, d.size, d.bus, d.deletion_policy) for d in spec.disks)
        return (spec.vcpus, spec.memory, spec.max_memory, spec.virt_type, disks, spec.nics, spec.console,
                spec.graphics, spec.run_strategy)
    return shape(old) == shape(new)
