"""Bring an existing domain under kvmops: write its manifest (``import``) and mark it kvmops' own (``adopt``).

``adopt`` changes nothing but the domain's kvmops mark, and only when a manifest can say
all that the domain is: what a manifest cannot express is refused, never silently dropped,
so the next plan never removes or rewrites something nobody asked it to.
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
from reconciler.core import domxml, model, planner
from reconciler.runtime import observe, reconcile

HostLock = Callable[[], contextlib.AbstractContextManager]


@dataclasses.dataclass(frozen=True)
class ImportedManifest:
    """The manifest ``import`` writes for a domain, and what the user should know about it."""

    text: str  # the YAML document, with its header comments
    warnings: tuple[str, ...]  # what the manifest could not say as the domain has it
    already_managed: str | None = None  # set when kvmops manages the domain already: the manifest is a duplicate


def import_manifest(hypervisor: hv.Hypervisor, name: str, shown_uri: str) -> ImportedManifest:
    """Return a manifest for domain ``name`` (``shown_uri``: the connection, redacted, for its header)."""
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
    header = f"# Imported from {shown_uri} by kvmops import {name}.\n"
    header += "".join(f"# NOTE: {warning}\n" for warning in warnings)
    header += f"# Next: kvmops adopt {name} --manifests <dir holding this file>, then kvmops plan.\n"
    return ImportedManifest(manifest_files.dump([document], header=header), tuple(warnings), already_managed)


def adopt(hypervisor: hv.Hypervisor, name: str, *, scope: str, manifests: str | None, host_lock: HostLock) -> str:
    """Mark domain ``name`` as kvmops' own in ``scope``; return what was done, in a sentence.

    With ``manifests``, the mark is the one a plan of that VM's manifest would write, so
    the next plan shows only what the manifest really changes.  The mark is written under
    ``host_lock()``.
    """
    actual, domain = observe.observe_domain(hypervisor, name)
    if domain.owned:
        return _adopt_owned(hypervisor, name, scope, actual, domain, host_lock)
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
                            scope=scope, bound_name=name, bound_uuid=domain.uuid)
    if manifests:
        desired = reconcile.load_desired(manifests)
        spec = desired.vms.get(name)
        if spec is None:
            problems = "; ".join(str(p) for p in desired.problems[:3])
            raise errors.ManifestError(
                f"{manifests} declares no VirtualMachine {name}" + (f" ({problems})" if problems else "")
            )
        marked = dataclasses.replace(domain, owned=True, definition=dataclasses.replace(root, owner=owner))
        try:
            owner = planner.desired_definition(spec, marked, actual, desired, planner.Settings(scope=scope)).owner
        except ValueError as exc:
            raise errors.PlanningError(str(exc)) from exc
    with host_lock():
        hypervisor.set_owner(name, owner)
    return (f"domain {name} is now managed by kvmops; its volumes are recorded as not created by kvmops, so "
            f"they are never deleted. Run `kvmops plan` to see how its manifest differs.")


def _adopt_owned(hypervisor: hv.Hypervisor, name: str, scope: str, actual: model.ActualState,
                 domain: model.ObservedDomain, host_lock: HostLock) -> str:
    """Answer `adopt` for a domain kvmops already marks: bind a legacy mark, refuse another scope's."""
    owner = domain.definition.owner if domain.definition is not None else None
    if owner is not None and owner.scope != scope:
        raise errors.OwnershipError(
            f"domain {name} is managed by kvmops scope {owner.scope}, not {scope}; adopt never takes a VM "
            f"from another manifest set (remove it from that set's manifests first, or use --scope {owner.scope})"
        )
    if owner is None or not planner.mark_is_unbound(domain):
        return f"domain {name} is already managed by kvmops"
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
    bound = dataclasses.replace(owner, bound_name=name, bound_uuid=domain.uuid)
    with host_lock():
        hypervisor.ensure_owned(name, domain.uuid)  # still the domain observed, still a mark that is not a copy
        hypervisor.set_owner(name, bound)
    return (f"domain {name} carried a kvmops mark written by an older kvmops, which named no domain; it is now bound "
            f"to {name} (UUID {domain.uuid}), keeping its records, so kvmops manages it fully, including pruning it "
            f"(and its Delete volumes) once no manifest declares it")
