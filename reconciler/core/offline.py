"""Plan without a hypervisor: the host that applying ``base`` manifests would leave behind.

``kvmops diff --base REF`` compares two revisions of the manifests on a CI runner with no
libvirt.  It plans the head revision against :func:`converged_host` of the base revision:
the actual state an ``apply`` of the base would have produced (every VM owned, defined
from its manifest, running unless ``Halted``, every volume created by kvmops at its
declared size).  So a diff goes through the same planner, with the same impacts, as a
plan against a real host; only what a real host adds (drift, foreign domains, generated
MACs and UUIDs) is absent.

:func:`annotate_moves` then says what a reviewer wants to know and the planner cannot: a
VM that disappeared and reappeared under another name is a rename (which kvmops carries
out as a delete and a create).
"""

from __future__ import annotations

import dataclasses
import hashlib
from types import MappingProxyType

from reconciler.core import model, password, planner
from reconciler.core import plan as plans

OFFLINE_VIRT_TYPES = ("kvm", "qemu")


def converged_host(desired: model.DesiredState, *, uri: str, scope: str = "default") -> model.ActualState:
    """Return the host an apply of ``desired`` would leave, as planning input."""
    host = model.HostInfo(uri=uri, virt_types=OFFLINE_VIRT_TYPES, offline=True)
    domains = {}
    volumes = {}
    for spec in desired.vms.values():
        virt_type, _ = planner.resolve_virt_type(spec.virt_type or "auto", host)
        records = tuple(model.OwnedVolume(d.pool, d.volume, d.deletion_policy, created=True) for d in spec.disks
                        if d.path is None)
        uuid = spec.uuid or _stand_in_uuid(spec.name)
        definition = model.DomainDefinition(
            name=spec.name,
            uuid=uuid,
            virt_type=virt_type or "kvm",
            vcpus=spec.vcpus,
            memory=spec.memory,
            max_memory=spec.max_memory,
            disks=tuple(model.DiskDevice(target=d.target, bus=d.bus, pool=d.pool, volume=d.volume) if d.path is None
                        else model.DiskDevice(target=d.target, bus=d.bus, path=d.path) for d in spec.disks),
            nics=tuple(
                model.NicDevice(kind=n.kind, source=n.source, model=n.model, mac=n.mac or _stand_in_mac(spec.name, i))
                for i, n in enumerate(spec.nics)
            ),
            console=spec.console,
            graphics=spec.graphics,
            owner=model.Ownership(spec.manifest, spec.digest, spec.run_strategy, records, scope=scope,
                                  shutdown_timeout=spec.shutdown_timeout, bound_name=spec.name, bound_uuid=uuid,
                                  graphics_password_digest=password.digest(
                                      spec.graphics_password, planner.password_salt(b"", uuid),
                                  ) if spec.graphics_password is not None else ""),
        )
        running = spec.run_strategy is not model.RunStrategy.HALTED
        domains[spec.name] = model.ObservedDomain(
            name=spec.name,
            uuid=uuid,
            owned=True,
            definition=definition,
            live=definition if running else None,
            power=model.PowerState.RUNNING if running else model.PowerState.SHUTOFF,
            shutoff_reason=None if running else model.ShutoffReason.SHUTDOWN,
            autostart=spec.autostart,
        )
        for disk in (d for d in spec.disks if d.path is None):
            volumes[(disk.pool, disk.volume)] = model.ObservedVolume(disk.pool, disk.volume, disk.size, 0, "")
    pools = {
        spec.name: model.ObservedPool(spec.name, spec.type, spec.path, active=True, autostart=spec.autostart)
        for spec in desired.pools.values()
    }
    pools.update(_stand_in_pools(desired))
    return model.ActualState(
        host=host, domains=MappingProxyType(domains), pools=MappingProxyType(pools), volumes=MappingProxyType(volumes),
    )


def with_host_pools(actual: model.ActualState, desired: model.DesiredState) -> model.ActualState:
    """Return ``actual`` plus stand-ins for undeclared pools the head revision uses (they live on the host)."""
    pools = _stand_in_pools(desired)
    pools.update(actual.pools)
    return dataclasses.replace(actual, pools=MappingProxyType(pools))


def _stand_in_pools(desired: model.DesiredState) -> dict[str, model.ObservedPool]:
    """Return stand-ins for the pools a diff cannot see: those the disks use but no manifest declares."""
    return {
        disk.pool: model.ObservedPool(disk.pool, "dir", None, active=True, autostart=True)
        for spec in desired.vms.values() for disk in spec.disks if disk.path is None and disk.pool not in desired.pools
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


def _stand_in_mac(name: str, index: int) -> str:
    digest = hashlib.sha256(f"{name}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _stand_in_uuid(name: str) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
