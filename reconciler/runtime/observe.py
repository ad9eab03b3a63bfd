"""Look at a host: collect raw facts from libvirt, and interpret them.

One observation is a consistent-enough snapshot for one pass: every domain with its
inactive XML, the live XML of running domains (for "restart pending", and for the disks
a foreign guest has open), every
pool, and the volumes of every active pool.  :func:`collect` does the libvirt calls;
:func:`reconciler.core.actual.interpret` turns the result into an ``ActualState``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.adapters.trash import PoolTrash
from reconciler.core import actual, domxml, model, trash


def collect(hypervisor: hv.Hypervisor) -> model.Observation:
    """Return the raw facts of ``hypervisor`` now."""
    host = hypervisor.host_info()
    # The live XML of running domains, foreign ones too: disks plugged in live show only
    # there, and a volume any domain uses is never deleted or resized.
    records = hypervisor.list_domains(live=True)
    pools = tuple(hypervisor.list_pools())
    volumes = []
    for pool in pools:
        if not pool.active:
            continue
        try:
            volumes.extend(hypervisor.list_volumes(pool.name))
        except errors.ObjectNotFound:
            continue  # the pool went away while we looked
    networks = tuple(hypervisor.list_networks())
    entries, unreadable = collect_trash(host, pools)
    return model.Observation(host=host, domains=tuple(records), pools=pools, volumes=tuple(volumes), networks=networks,
                             trash=entries, trash_unreadable=unreadable)


def refresh(
    hypervisor: hv.Hypervisor,
    previous: model.Observation,
    names: Iterable[str],
    *,
    volumes: Iterable[tuple[str, str]] = (),
) -> model.Observation:
    """Return ``previous`` with domains ``names`` as libvirt has them now, and the storage they use.

    The observation of a pass woken by libvirt events for a few domains.  Each domain is
    looked up by name (its record, its live XML when it runs, or its absence), then the
    pools and volumes its disks name, and ``volumes`` (what its manifest names), one
    lookup each.  Nothing here lists the host's domains (``listAllDomains`` waits for
    every domain's lock, so behind every start and destroy on the host) or a pool's
    volumes.  Everything else is as ``previous`` saw it: the volume users, the MAC check
    and the status records still see the whole host, up to that observation's age, and
    the executor re-reads ownership and volume users before it changes anything.
    """
    records = {record.name: record for record in previous.domains}
    pools = {pool.name: pool for pool in previous.pools}
    found = {(volume.pool, volume.name): volume for volume in previous.volumes}
    wanted = set(volumes)
    paths: set[str] = set()
    for name in dict.fromkeys(names):
        record = hypervisor.domain_record(name)
        if record is None:
            records.pop(name, None)
            continue
        records[name] = record
        for device in _storage(record):
            if device.pool is not None:
                wanted.add((device.pool, device.volume or ""))
            elif device.path:
                paths.add(device.path)
    for pool_name in sorted({pool for pool, _volume in wanted}):
        pool = hypervisor.pool_record(pool_name)
        if pool is None:
            pools.pop(pool_name, None)
        else:
            pools[pool_name] = pool
        if pool is None or not pool.active:  # a whole-host observation lists no volumes there either
            found = {key: volume for key, volume in found.items() if key[0] != pool_name}
    for pool_name, volume_name in sorted(wanted):
        if pool_name not in pools or not pools[pool_name].active or not volume_name:
            continue
        volume = hypervisor.volume_record(pool_name, volume_name)
        if volume is None:
            found.pop((pool_name, volume_name), None)
        else:
            found[(pool_name, volume_name)] = volume
    known = {volume.path for volume in found.values()}
    for path in sorted(paths - known):
        volume = hypervisor.volume_at(path)
        if volume is not None and volume.pool in pools and pools[volume.pool].active:
            found[(volume.pool, volume.name)] = volume
    return dataclasses.replace(previous, domains=tuple(records.values()), pools=tuple(pools.values()),
                               volumes=tuple(found.values()))


def _storage(record: model.DomainRecord) -> tuple[model.DiskDevice, ...]:
    """Return the disks and CD-ROMs of ``record``'s persistent and (when it runs) live XML; () if unreadable."""
    devices: tuple[model.DiskDevice, ...] = ()
    for xml in (record.inactive_xml, record.live_xml if record.power.active else None):
        if xml:
            try:
                devices += tuple(domxml.parse_storage(domxml.parse_tree(xml)))
            except domxml.DomainXMLError:
                continue  # interpreting it says so; here it only names no storage
    return devices


def collect_trash(host: model.HostInfo, pools: tuple[model.ObservedPool, ...]) -> tuple[tuple, tuple[str, ...]]:
    """Return the entries of every active directory pool's trash on this machine, and what could not be read."""
    entries: list = []
    unreadable: list[str] = []
    if host.trash_unavailable:
        return (), ()
    for pool in pools:
        if pool.active and pool.path and pool.type in trash.POOL_TYPES:
            found, broken = PoolTrash(pool.name, pool.path).entries()
            entries.extend(found)
            unreadable.extend(broken)
    return tuple(entries), tuple(unreadable)


def observe(hypervisor: hv.Hypervisor) -> model.ActualState:
    """Return what ``hypervisor`` has now."""
    return actual.interpret(collect(hypervisor))


def observe_domain(hypervisor: hv.Hypervisor, name: str) -> tuple[model.ActualState, model.ObservedDomain]:
    """Return the host's state and its domain ``name``; raise ``ObjectNotFound`` when there is none."""
    actual = observe(hypervisor)
    domain = actual.domains.get(name)
    if domain is None:
        raise errors.ObjectNotFound(f"no domain named {name} on {hypervisor.uri}")
    return actual, domain
