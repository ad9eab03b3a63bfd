"""Bring an existing domain under kvmops: write its manifest (``import``) and mark it kvmops' own (``adopt``).

``adopt`` changes nothing but the domain's kvmops mark, and only when a manifest can say
all that the domain is: what a manifest cannot express is refused, never silently dropped,
so the next plan never removes or rewrites something nobody asked it to.

In a fleet (manifests with ``kind: Host``) a domain is imported from, and adopted on, one
Host: the manifest ``import`` writes pins it there (``placement.host``), and ``adopt``
writes the fleet's mark (fleet, Host, the fleet's roster), so the next fleet plan finds it
placed on that Host and keeps it there. ``adopt`` refuses what that plan would not keep
(a placement that does not admit the Host, a domain of that name on another Host, a Host
it cannot see), and a mark without the fleet on a Host of one.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.adapters import manifests as manifest_files
from reconciler.core import actual as actual_state
from reconciler.core import desired as desired_state
from reconciler.core import domxml, fleet, model, planner
from reconciler.runtime import observe

HostLock = Callable[[], contextlib.AbstractContextManager]


@dataclasses.dataclass(frozen=True)
class ImportedManifest:
    """The manifest ``import`` writes for a domain, and what the user should know about it."""

    text: str  # the YAML document, with its header comments
    warnings: tuple[str, ...]  # what the manifest could not say as the domain has it
    already_managed: str | None = None  # set when kvmops manages the domain already: the manifest is a duplicate


def import_manifest(hypervisor: hv.Hypervisor, name: str, shown_uri: str, *, host: str | None = None) -> ImportedManifest:
    """Return a manifest for domain ``name`` (``shown_uri``: the connection, redacted, for its header).

    ``host``: the fleet's Host the domain is on; the manifest pins it there
    (``placement.host``), so adopting it keeps it where it runs.
    """
    actual, domain = observe.observe_domain(hypervisor, name)
    definition = actual_state.resolve_paths(domxml.parse(hypervisor.domain_xml(name)), actual.volumes_by_path())
    capacities = {key: volume.capacity for key, volume in actual.volumes.items()}
    owner = domain.definition.owner if domain.owned and domain.definition is not None else None
    already_managed = None
    if domain.owned:
        declared = f" (declared in {owner.manifest}, scope {owner.scope})" if owner is not None and owner.manifest else ""
        already_managed = (f"{name} is already managed by kvmops{declared}: its manifest exists, and a second "
                           f"one declaring it would be a duplicate; no adopt is needed. Use this output only to rebuild a "
                           f"lost manifest.")
    paths = {key: volume.path for key, volume in actual.volumes.items() if volume.path}
    document, warnings = desired_state.manifest_for(definition, autostart=domain.autostart, capacities=capacities,
                                                    paths=paths)
    if host is not None:
        document["spec"]["placement"] = {"host": host}
    where = f"Host {host} ({shown_uri})" if host is not None else shown_uri
    header = f"# Imported from {where} by kvmops import {name}.\n"
    header += "".join(f"# NOTE: {warning}\n" for warning in warnings)
    adopt = f"kvmops adopt {name} --manifests <dir holding this file>" + (f" --host {host}" if host is not None else "")
    header += f"# Next: {adopt}, then kvmops plan.\n"
    return ImportedManifest(manifest_files.dump([document], header=header), tuple(warnings), already_managed)


def adopt(hypervisor: hv.Hypervisor, name: str, *, settings: planner.Settings, desired: model.DesiredState | None,
          manifests: str | None, host_lock: HostLock) -> str:
    """Mark domain ``name`` as kvmops' own in ``settings.scope``; return what was done, in a sentence.

    With ``desired`` (read from ``manifests``), the mark is the one a plan of that VM's
    manifest would write, so the next plan shows only what the manifest really changes.
    In a fleet (``settings.fleet``, ``settings.host``, ``settings.roster``, see
    :func:`adopt_in_fleet`) it is the fleet's mark of a VM placed on that Host, roster and
    all. Outside one, a host where a fleet of this scope placed VMs is refused: a mark
    without the fleet there would leave the VM out of the fleet's placement. The mark is
    written under ``host_lock()``.
    """
    actual, domain = observe.observe_domain(hypervisor, name)
    if not settings.fleet:
        _refuse_fleet_host(actual, name, settings.scope, hypervisor.uri)
    if domain.owned:
        return _adopt_owned(hypervisor, name, settings, actual, domain, host_lock)
    root = actual_state.resolve_paths(domxml.parse(hypervisor.domain_xml(name)), actual.volumes_by_path())
    missing = desired_state.inexpressible(root)
    if missing:
        raise errors.ManifestError(
            f"domain {name} is not adopted: a manifest cannot express " + "; ".join(missing)
            + ". Adopting it would make the next plan remove or rewrite these, which nobody asked for; change "
            "them with virsh edit (or leave the domain unmanaged)"
        )
    volumes = tuple(
        model.OwnedVolume(d.pool, d.volume, model.DeletionPolicy.RETAIN, created=False)
        for d in root.disks if d.pool is not None
    )
    owner = model.Ownership(manifest="", digest="", run_strategy=model.RunStrategy.MANUAL, volumes=volumes,
                            scope=settings.scope, bound_name=name, bound_uuid=domain.uuid, fleet=settings.fleet,
                            host=settings.host, roster=settings.roster)
    if desired is not None:
        spec = declared(desired, name, manifests)
        marked = dataclasses.replace(domain, owned=True, definition=dataclasses.replace(root, owner=owner))
        try:
            owner = planner.desired_definition(spec, marked, actual, desired, settings).owner
        except ValueError as exc:
            raise errors.PlanningError(str(exc)) from exc
    with host_lock():
        _mark(hypervisor, name, owner)
    placed = f" as the fleet's VM on Host {settings.host}" if settings.fleet else ""
    return (f"domain {name} is now managed by kvmops{placed}; its volumes are recorded as not created by kvmops, so "
            f"they are never deleted. Run `kvmops plan` to see how its manifest differs.")


def declared(desired: model.DesiredState, name: str, manifests: str | None) -> model.VMSpec:
    """Return VM ``name``'s manifest in ``desired`` (read from ``manifests``), or raise saying it declares none."""
    spec = desired.vms.get(name)
    if spec is None:
        problems = "; ".join(str(p) for p in desired.problems[:3])
        raise errors.ManifestError(
            f"{manifests} declares no VirtualMachine {name}" + (f" ({problems})" if problems else "")
        )
    return spec


def adopt_in_fleet(desired: model.DesiredState, name: str, host: str, *, scope: str, manifests: str,
                   lock: Callable[[list[str]], contextlib.AbstractContextManager], host_workers: int,
                   host_timeout: float) -> str:
    """Adopt domain ``name`` on Host ``host`` of the fleet ``desired`` declares, as the fleet's VM placed there.

    Every Host is connected to and observed (each within ``host_timeout`` seconds) under
    every Host's lock (``lock(uris)``, as a fleet apply holds them), so no pass places the
    VM elsewhere meanwhile. Refused, with nothing written, when the VM's placement does not
    admit ``host``, another Host defines a domain of that name, or a Host cannot be seen
    (:func:`reconciler.core.fleet.adoption_refusal`).
    """
    from reconciler.runtime import fleet_reconcile  # here: adopting on one host loads no fleet

    declared(desired, name, manifests)
    fleet_reconcile.require_host(host, desired)
    with fleet_reconcile.connect(desired, read_only=False, workers=max(1, host_workers),
                                 timeout=host_timeout) as connections:
        with lock(sorted(h.uri for h in connections.hypervisors.values())):
            observed = fleet_reconcile.observe_all(connections, workers=host_workers)
            refusal = fleet.adoption_refusal(desired, observed, name, host, scope)
            if refusal is None and name not in observed[host].domains:
                refusal = f"no domain named {name} on Host {host}"
            if refusal is not None:
                raise errors.OwnershipError(f"domain {name} is not adopted on Host {host}: {refusal}")
            settings = planner.Settings(scope=scope, fleet=scope, host=host,
                                        roster=fleet.roster_of(desired, observed, scope))
            return adopt(connections.hypervisors[host], name, settings=settings, desired=desired, manifests=manifests,
                         host_lock=contextlib.nullcontext)


def _mark(hypervisor: hv.Hypervisor, name: str, owner: model.Ownership) -> None:
    """Write ``owner`` as domain ``name``'s mark, and the fleet's roster beside it as a fleet's plan records it."""
    hypervisor.set_owner(name, owner)
    if owner.roster:
        hypervisor.set_roster(name, owner.roster)


def _refuse_fleet_host(actual: model.ActualState, name: str, scope: str, uri: str) -> None:
    """Raise when a fleet of ``scope`` placed VMs on this host: a mark without the fleet does not belong here."""
    placed = planner.placed_by_a_fleet(actual, scope)
    if not placed:
        return
    owner = placed[0][1]
    names = ", ".join(vm for vm, _owner in placed[:3]) + (f" and {len(placed) - 3} more" if len(placed) > 3 else "")
    raise errors.OwnershipError(
        f"domain {name} is not adopted: {uri} is Host {owner.host} of fleet {owner.fleet} (which placed {names} here), "
        f"and a mark written without the fleet would leave {name} out of its placement: a domain {name} on another Host "
        f"would run twice, and a placement that does not admit this Host would move it. Adopt it into the fleet: "
        f"kvmops adopt {name} --manifests DIR --host {owner.host} (DIR declaring the fleet's Hosts)"
    )


def _adopt_owned(hypervisor: hv.Hypervisor, name: str, settings: planner.Settings, actual: model.ActualState,
                 domain: model.ObservedDomain, host_lock: HostLock) -> str:
    """Answer `adopt` for a domain kvmops already marks: bind a legacy mark, bring a single-host mark into the
    fleet (in a fleet), refuse another scope's."""
    scope = settings.scope
    owner = domain.definition.owner if domain.definition is not None else None
    if owner is not None and owner.scope != scope:
        raise errors.OwnershipError(
            f"domain {name} is managed by kvmops scope {owner.scope}, not {scope}; adopt never takes a VM "
            f"from another manifest set (remove it from that set's manifests first, or use --scope {owner.scope})"
        )
    if owner is None:
        return f"domain {name} is already managed by kvmops"
    unbound = planner.mark_is_unbound(domain)
    joining = bool(settings.fleet) and not owner.fleet  # a single-host mark on a Host of the fleet
    if not unbound and not joining:
        placed = f" (fleet {owner.fleet}, Host {owner.host})" if owner.fleet else ""
        return f"domain {name} is already managed by kvmops{placed}"
    if unbound:
        twins = sorted(
            other_name for other_name, other in actual.domains.items()
            if other_name != name and other.owned and planner.mark_is_unbound(other)
            and other.definition.owner.manifest == owner.manifest and other.definition.owner.scope == owner.scope
        )
        if twins:
            raise errors.OwnershipError(
                f"domain {name} carries a legacy kvmops mark (written by an older kvmops, naming no domain) that "
                f"{', '.join(twins)} also carries: one is a clone of the other, and adopt cannot tell which is the "
                f"original; remove the clone's mark (or the clone) first, then adopt the original"
            )
    marked = dataclasses.replace(owner, bound_name=name, bound_uuid=domain.uuid) if unbound else owner
    if joining:
        marked = dataclasses.replace(marked, fleet=settings.fleet, host=settings.host, roster=settings.roster)
    with host_lock():
        hypervisor.ensure_owned(name, domain.uuid)  # still the domain observed, still a mark that is not a copy
        _mark(hypervisor, name, marked)
    if not unbound:
        return (f"domain {name} carried kvmops' mark of a single host; it is now the fleet's VM on Host "
                f"{settings.host}, keeping its records")
    return (f"domain {name} carried a kvmops mark written by an older kvmops, which named no domain; it is now bound "
            f"to {name} (UUID {domain.uuid}), keeping its records, so kvmops manages it fully, including pruning it "
            f"(and its Delete volumes) once no manifest declares it")
