"""Interpret an :class:`~reconciler.core.model.Observation` as an :class:`ActualState`.

Pure: the same raw facts, whether just collected from libvirt or read back from a
snapshot file, give the same actual state.  Foreign domains are recognised by the
absence of kvmops' mark, or by a mark written for another domain (a clone's copy), and
are read no further than what they share with kvmops' domains: MACs, networks and the
storage they use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
from types import MappingProxyType

from reconciler.core import domxml, memo, model, netxml


def interpret(observation: model.Observation) -> model.ActualState:
    """Return the actual state the raw ``observation`` describes."""
    by_path = model.volumes_by_path(observation.volumes)
    return model.ActualState(
        host=observation.host,
        domains=MappingProxyType({record.name: domain(record, by_path) for record in observation.domains}),
        pools=MappingProxyType({pool.name: pool for pool in observation.pools}),
        volumes=MappingProxyType({(volume.pool, volume.name): volume for volume in observation.volumes}),
        networks=MappingProxyType({record.name: network(record) for record in observation.networks}),
        trash=observation.trash,
        trash_unreadable=observation.trash_unreadable,
    )


def resolve_paths(definition: model.DomainDefinition, by_path: dict[str, tuple[str, str]]) -> model.DomainDefinition:
    """Return ``definition`` with file disks that are pool volumes named as those volumes."""
    def resolved(disk: model.DiskDevice) -> model.DiskDevice:
        if disk.pool is None and disk.path in by_path:
            pool, volume = by_path[disk.path]
            return dataclasses.replace(disk, pool=pool, volume=volume, path=None)
        return disk
    if not by_path or not any(d.pool is None and d.path in by_path for d in (*definition.disks, *definition.cdroms)):
        return definition  # nothing to resolve: copying the definition cost more than reading it
    return dataclasses.replace(definition, disks=tuple(resolved(d) for d in definition.disks),
                               cdroms=tuple(resolved(d) for d in definition.cdroms))


_READ: memo.Memo[tuple[str, object, tuple[model.DiskDevice, ...]]] = memo.Memo()  # what _read found, by XML digest


def _read(xml: str, *, essence: bool = False) -> tuple[str, object, tuple[model.DiskDevice, ...]]:
    """Return what a domain's XML holds and the storage it uses: ("owned", definition),
    ("foreign", (nics, copied mark or None)), ("broken", why) for a marked domain kvmops
    cannot read, or ("unreadable", why).

    A mark written for another domain (a clone's copy) makes the domain foreign.
    Memoised: a pass reads the same unchanged XML of every domain that the last pass
    read, and parsing is the larger part of observing a host.  The memo is keyed by a
    digest, so it does not keep every XML text alive.  ``essence`` parses a live XML
    whether or not it carries the mark, and leaves the mark unread (its owner is None).
    """
    key = (hashlib.blake2b(xml.encode(), digest_size=16).digest(), essence)
    found = _READ.get(key)
    if found is not None:
        return found
    try:
        root = domxml.parse_tree(xml)
    except domxml.DomainXMLError as exc:
        found = ("unreadable", str(exc), ())
    else:
        storage = domxml.parse_storage(root)
        # A live XML is read for what runs, not whose it is: the persistent XML's mark decides,
        # and reading the mark was a quarter of reading a live XML.
        owner, binding = domxml.mark_binding(root) if not essence else (None, None)
        if not essence and (owner is None or binding is model.MarkBinding.COPIED):
            found = ("foreign", (domxml.parse_nics(root), owner), storage)
        else:
            try:
                found = ("owned", domxml.parse(root, owner=owner), storage)
            except domxml.DomainXMLError as exc:
                found = ("broken", str(exc), storage)
    _READ.put(key, found)
    return found


def storage_used(devices: tuple[model.DiskDevice, ...], by_path: dict[str, tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Return (pool, volume) for each of ``devices`` that is a pool volume, ("", path) for other files."""
    used = []
    for device in devices:
        if device.pool is not None:
            used.append((device.pool, device.volume or ""))
        elif device.path:
            path = posixpath.normpath(device.path)
            used.append(by_path.get(device.path) or by_path.get(path) or ("", path))
    return tuple(dict.fromkeys(used))


def network(record: model.NetworkRecord) -> model.ObservedNetwork:
    """Return the observed network behind one raw record."""
    try:
        definition = netxml.parse(record.xml)
    except domxml.DomainXMLError:
        return model.ObservedNetwork(record.name, owned=False, definition=None, active=record.active,
                                     autostart=record.autostart, xml=record.xml)
    owned = definition.owner is not None
    return model.ObservedNetwork(record.name, owned=owned, definition=definition, active=record.active,
                                 autostart=record.autostart, xml=record.xml)


def is_owned(record: model.DomainRecord) -> bool:
    """Return whether the domain's persistent XML carries kvmops' mark, written for this domain."""
    return _read(record.inactive_xml)[0] == "owned"


def domain(record: model.DomainRecord, by_path: dict[str, tuple[str, str]] | None = None) -> model.ObservedDomain:
    """Return the observed domain behind one raw record.

    A disk given by file path that is a volume of a pool (what virt-install writes) is
    read as that pool volume, so a manifest naming the volume describes it exactly.
    """
    common = dict(
        name=record.name, uuid=record.uuid, power=record.power, shutoff_reason=record.shutoff_reason,
        autostart=record.autostart, persistent=record.persistent, paused_by_migration=record.paused_by_migration,
    )
    by_path = by_path or {}
    kind, found, devices = _read(record.inactive_xml)
    if record.live_xml and record.power.active:
        devices += _read(record.live_xml, essence=True)[2]  # disks plugged in while it runs
    common["storage"] = storage_used(devices, by_path)
    if kind == "unreadable":
        return model.ObservedDomain(**common, owned=False, definition=None, live=None, error=found)
    if kind == "foreign":
        nics, copied = found
        return model.ObservedDomain(**common, owned=False, definition=None, live=None, nics=nics, copied_mark=copied)
    if kind == "broken":
        return model.ObservedDomain(**common, owned=True, definition=None, live=None, error=found)
    definition = resolve_paths(found, by_path)
    live = None
    if record.live_xml and record.power.active:
        kind, found, _devices = _read(record.live_xml, essence=True)
        live = resolve_paths(found, by_path) if kind == "owned" else None
    return model.ObservedDomain(**common, owned=True, definition=definition, live=live, xml=record.inactive_xml,
                                nics=definition.nics)
