"""Look at a host: collect raw facts from libvirt, and interpret them.

One observation is a consistent-enough snapshot for one pass: every domain with its
inactive XML, the live XML of running domains (for "restart pending", and for the disks
a foreign guest has open), every
pool, and the volumes of every active pool.  :func:`collect` does the libvirt calls;
:func:`reconciler.core.actual.interpret` turns the result into an ``ActualState``.
"""

from __future__ import annotations

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.adapters.trash import PoolTrash
from reconciler.core import actual, model, trash


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
