"""Whose a domain is: kvmops' ownership mark, its scope, and the marks that prove nothing.

A mark written for another domain (a clone's copy) makes its domain foreign; a mark from
an older kvmops that names no domain keeps its domain owned but never justifies a prune.
"""

from __future__ import annotations

from reconciler.core import model
from reconciler.core.planner.settings import Settings


def mark_warnings(actual: model.ActualState, desired: model.DesiredState, settings: Settings) -> tuple[str, ...]:
    """Return a sentence for each domain whose kvmops mark does not prove ownership.

    A copied mark (a clone of a managed VM) makes its domain foreign; an unbound mark
    (written before marks named their domain) never justifies a prune.
    """
    warnings = []
    for name, domain in sorted(actual.domains.items()):
        if domain.copied_mark is not None:
            warnings.append(
                f"domain {name} carries a copied kvmops mark (written for {domain.copied_mark.written_for()}); "
                "treated as foreign: never changed, never pruned (`kvmops adopt` it to manage it)"
            )
        elif (domain.owned and mark_is_unbound(domain) and name not in desired.vms and scope_of(domain) == settings.scope):
            warnings.append(
                f"domain {name} carries a kvmops mark written by an older kvmops, which does not name the domain it was "
                "written for (a clone would carry the same); it is never pruned on the strength of that mark. Declare it "
                "again and apply once to bind the mark, or remove it yourself (virsh undefine)"
            )
    return tuple(warnings)


def mark_is_unbound(domain: model.ObservedDomain) -> bool:
    """Return whether ``domain`` is owned through a mark that names no domain (older kvmops): kept, never pruned."""
    owner = domain.definition.owner if domain.definition is not None else None
    return owner is not None and not owner.bound_uuid


UNBOUND_MARK_KEPT = (
    "its kvmops mark was written by an older kvmops and names no domain, so it is never pruned on it; "
    "`kvmops adopt` it (or declare it again and apply) to bind the mark, or remove it yourself (virsh undefine)"
)


def scope_of(domain: model.ObservedDomain) -> str:
    """Return the scope (manifest set) that owns ``domain``."""
    owner = domain.definition.owner if domain.definition is not None else None
    return owner.scope if owner is not None else "default"


def placed_by_a_fleet(actual: model.ActualState, scope: str) -> tuple[tuple[str, model.Ownership], ...]:
    """Return the domains of ``scope`` here that a fleet placed, with their marks, by name; () when none is.

    Only a fleet whose roster names other Hosts than this one counts: once ``forget-host``
    has left this host alone in it, the host may run on its own.
    """
    placed = tuple(sorted((name, d.definition.owner) for name, d in actual.domains.items()
                          if d.owned and d.definition is not None and d.definition.owner is not None
                          and d.definition.owner.fleet and scope_of(d) == scope))
    here = {owner.host for _name, owner in placed}
    if not {host for _name, owner in placed for host in owner.roster} - here:
        return ()
    return placed
