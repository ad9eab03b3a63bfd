"""Compare desired with actual state and write down what to do: :func:`plan_changes`.

Pure: given the same :class:`DesiredState` and :class:`ActualState` it returns the same
:class:`~reconciler.core.plan.Plan`, and it never looks at anything else.  The rules
that never bend are enforced here, where they can be tested without a hypervisor:

* only domains carrying kvmops' ownership mark, written for that very domain, are ever
  changed, stopped or undefined (a clone's copied mark does not count, and a mark from an
  older kvmops that names no domain never justifies a prune); a manifest naming a foreign
  domain is a problem, not an adoption;
* nothing is pruned while any manifest is broken, or when the manifests declare no VM at
  all while kvmops owns domains (unless ``allow_empty``);
* a volume is deleted only when kvmops created it under ``deletionPolicy: Delete`` and
  its disk or VM has left the manifests, never while a running guest has it open nor
  while any other domain uses it; it is never shrunk, and never grown or written unless
  kvmops created it; every deletion is labelled ``data-loss``;
* a redefinition keeps the domain's UUID and its NICs' MACs.

The planner is split by what it plans: :mod:`.pools`, :mod:`.networks`, :mod:`.images`,
:mod:`.vms` (with :mod:`.storage`, :mod:`.domain_definition` and :mod:`.domain_diff`) and
:mod:`.prune`; :mod:`.marks` and :mod:`.sharing` say whose a domain or volume is,
:mod:`.host` what the host decides.  Callers use this package's names.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core import disposal, model
from reconciler.core import plan as plans
from reconciler.core import policy as policies
from reconciler.core.planner.domain_definition import new_mac, new_uuid, password_salt
from reconciler.core.planner.domain_diff import restart_pending
from reconciler.core.planner.host import UNDECIDED_VIRT_TYPE, host_is_local, resolve_virt_type
from reconciler.core.planner.images import image_pool_problem, plan_image, plan_import_leftovers
from reconciler.core.planner.marks import (
    UNBOUND_MARK_KEPT,
    mark_is_unbound,
    mark_warnings,
    placed_by_a_fleet,
    scope_of,
)
from reconciler.core.planner.networks import network_problems, orphan_networks, plan_network, plan_network_prune
from reconciler.core.planner.pools import plan_pool, pool_problems, refused_pool_path
from reconciler.core.planner.prune import plan_prune, prune_suspension
from reconciler.core.planner.settings import Settings
from reconciler.core.planner.sharing import vm_volumes, volume_users, wanted_volumes
from reconciler.core.planner.vms import desired_definition, plan_vm

__all__ = [
    "Settings", "UNBOUND_MARK_KEPT", "UNDECIDED_VIRT_TYPE", "desired_definition", "host_is_local", "host_problems",
    "mark_is_unbound", "placed_by_a_fleet",
    "mark_warnings", "network_problems", "new_mac", "new_uuid", "password_salt", "plan_changes", "pool_problems",
    "refused_pool_path", "resolve_virt_type", "restart_pending", "scope_of", "vm_volumes", "volume_users", "wanted_volumes",
]


def plan_changes(
    desired: model.DesiredState, actual: model.ActualState, *, settings: Settings = Settings()
) -> plans.Plan:
    """Return the plan that converges ``actual`` on ``desired``."""
    placed = _placed_by_a_fleet(actual, settings)
    if placed is not None:
        return placed
    problems = list(desired.problems)
    resources: list[plans.ResourcePlan] = []

    for spec in desired.pools.values():
        resources.append(plan_pool(spec, actual.pools.get(spec.name), actual.host.uri))
    for spec in desired.networks.values():
        resources.append(plan_network(spec, actual.networks.get(spec.name), actual, settings))
    for spec in desired.images.values():
        resources.append(plan_image(spec, actual, desired))
    resources.extend(plan_import_leftovers(desired, actual))
    wanted = wanted_volumes(desired)
    for spec in desired.vms.values():
        resources.append(plan_vm(spec, actual.domains.get(spec.name), actual, desired, settings, wanted))

    owned_orphans = [
        d for name, d in sorted(actual.domains.items())
        if d.owned and name not in desired.vms and scope_of(d) == settings.scope and not mark_is_unbound(d)
        and name not in settings.held
    ]
    rules = settings.policy.for_scope(settings.scope) if settings.policy is not None else None
    if rules is not None:
        resources = policies.obeyed(resources, desired, actual, rules, scope=settings.scope,
                                    removable={d.name for d in owned_orphans} if settings.prune else set(),
                                    local=host_is_local(actual.host.uri))
    for resource in resources:
        problems.extend(resource.problems)
    elsewhere = tuple(
        f"{name} (scope {scope_of(d)})" for name, d in sorted(actual.domains.items())
        if d.owned and name not in desired.vms and scope_of(d) != settings.scope and name not in settings.held
    )
    orphaned_networks = orphan_networks(actual, desired, settings)
    suspended = prune_suspension(desired, problems, [*owned_orphans, *orphaned_networks], settings)
    if suspended and not problems and settings.prune and not desired.vms and not settings.allow_empty:
        problems.append(model.Problem(desired.source or ".", None, "", suspended))  # the empty-set guard
    prunes: list[plans.ResourcePlan] = []
    if not suspended:
        pruned = {d.name: d for d in owned_orphans}
        prunes = [plan_prune(domain, actual, settings, wanted, pruned) for domain in owned_orphans]
        prunes.extend(plan_network_prune(network, actual, desired, set(pruned)) for network in orphaned_networks)
    if rules is not None and prunes:
        # The host policy judges the prunes as a whole: too many VMs, or a volume deleted, holds them all.
        suspended, held = policies.held_prunes(prunes, desired, actual, rules, scope=settings.scope,
                                               allow_mass_prune=settings.allow_mass_prune)
        problems.extend(held)
    kept: tuple[str, ...] = ()
    if suspended:
        kept = tuple(d.name for d in owned_orphans) + tuple(f"network {n.name}" for n in orphaned_networks)
    else:
        resources.extend(prunes)
    # Purging is final, so it waits whenever pruning would: a broken manifest, pruning turned off.
    held = suspended or (None if settings.prune else settings.no_prune_reason)
    if held is None and problems:
        held = f"{len(problems)} problem(s) in the manifests"
    if held is None and rules is not None and not rules.allow_data_loss:
        held = "the host policy does not allow data loss (policy.allowDataLoss: false)"
    resources.extend(disposal.plan_trash(
        actual, retention=settings.trash_retention, now=settings.now, scope=settings.scope, held=held,
        claimed={claim.key for claim in disposal.claims_in_use(actual, desired, settings.scope).values()},
    ))

    foreign = tuple(name for name, d in sorted(actual.domains.items()) if not d.owned)
    return plans.Plan(
        uri=actual.host.uri,
        resources=tuple(resources),
        foreign=foreign,
        problems=tuple(problems),
        prune_suspended=suspended,
        kept=kept,
        elsewhere=elsewhere,
        warnings=mark_warnings(actual, desired, settings) + tuple(
            f"{why}; purges due there, if any, are not in this plan" for why in actual.trash_unreadable
        ),
        declared=(("VirtualMachine", len(desired.vms)), ("StoragePool", len(desired.pools)),
                  ("Network", len(desired.networks)), ("Image", len(desired.images))),
    )


def host_problems(
    desired: model.DesiredState, pools: Mapping[str, model.ObservedPool], networks: Mapping[str, model.ObservedNetwork],
    uri: str,
) -> list[model.Problem]:
    """Return what the host at ``uri``, with ``pools`` and ``networks``, lacks for ``desired`` (``validate --connect``).

    A declared pool whose directory kvmops may never make a pool (it does not exist yet), a
    pool or network a VM uses that is neither declared nor usable there, and an Image whose
    pool is neither: each is a problem located at its manifest, as the plan would report it.
    """
    problems = []
    for spec in desired.pools.values():
        refusal = refused_pool_path(spec, uri) if spec.name not in pools else None
        if refusal is not None:
            problems.append(spec.origin.problem("spec.path", f"{refusal}; kvmops never makes one a storage pool"))
    for spec in desired.vms.values():
        problems.extend(pool_problems(spec, desired.pools, pools, uri))
        problems.extend(network_problems(spec, desired.networks, networks, uri))
    problems.extend(p for image in desired.images.values()
                    if (p := image_pool_problem(image, desired.pools, pools, f" on {uri}")) is not None)
    return problems


def _placed_by_a_fleet(actual: model.ActualState, settings: Settings) -> plans.Plan | None:
    """Return the plan that does nothing, outside a fleet, on a host where a fleet of this scope placed VMs; else None.

    Manifests that declare no Host, on a host whose marks say a fleet placed its VMs here
    and name other Hosts of that fleet (its roster): the Host manifests were removed (or a
    file holding them was read half written). Those hosts cannot be seen from here, so a
    VM of theirs created here would run twice, and this host's own VMs would lose their
    fleet's marks. Nothing is planned. Once ``forget-host`` has left this host alone in the
    roster, the host may leave the fleet: its VMs' marks are rewritten as single-host ones.
    """
    if settings.fleet:
        return None
    placed = placed_by_a_fleet(actual, settings.scope)
    if not placed:
        return None
    names = ", ".join(name for name, _owner in placed[:5]) + (f" and {len(placed) - 5} more" if len(placed) > 5 else "")
    owner = placed[0][1]
    message = (
        f"VMs here were placed by fleet {owner.fleet} (on Host {owner.host}: {names}), but these manifests declare no "
        "Host: kvmops cannot see the fleet's other hosts, and a VM of theirs created here would run twice. Nothing is "
        "planned on this host. Restore the Host manifests; to run this host on its own, keep its Host manifest as the "
        "fleet's only Host and run `kvmops forget-host` for each of the others"
    )
    return plans.Plan(
        uri=actual.host.uri, resources=(), problems=(model.Problem(".", None, "", message),),
        prune_suspended=message, kept=tuple(name for name, _owner in placed),
        foreign=tuple(name for name, d in sorted(actual.domains.items()) if not d.owned),
    )
