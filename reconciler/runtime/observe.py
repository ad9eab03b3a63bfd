"""Read the actual state of a host into an :class:`~reconciler.core.model.ActualState`.

One observation is a consistent-enough snapshot for one pass: every domain with its
inactive XML (parsed into the managed essence only when it carries kvmops' mark), the
live XML of running owned domains (for "restart pending"), every pool, and the volumes
of every active pool.  Foreign domains are listed but never parsed further.
"""

from __future__ import annotations

from types import MappingProxyType

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import domxml, model


def observe(hypervisor: hv.Hypervisor) -> model.ActualState:
    """Return what ``hypervisor`` has now."""
    host = hypervisor.host_info()
    domains = {}
    for record in hypervisor.list_domains():
        domains[record.name] = _domain(hypervisor, record)
    pools = {pool.name: pool for pool in hypervisor.list_pools()}
    volumes = {}
    for pool in pools.values():
        if not pool.active:
            continue
        try:
            for volume in hypervisor.list_volumes(pool.name):
                volumes[(volume.pool, volume.name)] = volume
        except errors.ObjectNotFound:
            continue  # the pool went away while we looked
    return model.ActualState(
        host=host,
        domains=MappingProxyType(domains),
        pools=MappingProxyType(pools),
        volumes=MappingProxyType(volumes),
    )


def _domain(hypervisor: hv.Hypervisor, record: hv.DomainRecord) -> model.ObservedDomain:
    common = dict(
        name=record.name, uuid=record.uuid, power=record.power, shutoff_reason=record.shutoff_reason,
        autostart=record.autostart, persistent=record.persistent,
    )
    try:
        root = domxml.parse_tree(record.inactive_xml)
    except domxml.DomainXMLError as exc:
        return model.ObservedDomain(**common, owned=False, definition=None, live=None, error=str(exc))
    if domxml.parse_owner(root) is None:
        return model.ObservedDomain(**common, owned=False, definition=None, live=None)
    try:
        definition = domxml.parse(root)
    except domxml.DomainXMLError as exc:
        return model.ObservedDomain(**common, owned=True, definition=None, live=None, error=str(exc))
    live = None
    if record.power.active:
        try:
            live_xml = hypervisor.live_xml(record.name)
            live = domxml.parse(live_xml) if live_xml else None
        except (errors.ObjectNotFound, domxml.DomainXMLError):
            live = None
    return model.ObservedDomain(**common, owned=True, definition=definition, live=live)
