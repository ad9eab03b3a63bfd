"""Plan the StoragePools, and say which pools a VM uses and whether they can be used."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core import hostdirs, model, storagexml
from reconciler.core import plan as plans
from reconciler.core.plan import Action, FieldChange, Impact
from reconciler.core.planner.host import host_is_local
from reconciler.core.planner.words import yes_no


def pool_problems(
    spec: model.VMSpec,
    declared: Mapping[str, model.PoolSpec],
    existing: Mapping[str, model.ObservedPool],
    uri: str,
) -> list[model.Problem]:
    """Return a problem for each disk of ``spec`` whose pool is neither declared nor usable on the host."""
    problems = []
    for path, name in spec.pools_by_field():
        if name in declared:
            if name not in existing and refused_pool_path(declared[name], uri) is not None:
                problems.append(spec.origin.problem(path, (
                    f"storage pool {name!r} cannot be created: its path {declared[name].path} is refused (see the "
                    "problem of its StoragePool manifest); fix that manifest or use another pool"
                )))
            continue
        pool = existing.get(name)
        if pool is None:
            problems.append(spec.origin.problem(path, (
                f"unknown storage pool {name!r}: declare it in a StoragePool manifest or define it on "
                f"{uri} (virsh pool-list --all shows what exists)"
            )))
        elif not pool.active:
            problems.append(spec.origin.problem(path, (
                f"storage pool {name!r} is not active: start it (virsh pool-start {name}) or declare it in a "
                "StoragePool manifest so kvmops starts it"
            )))
    return problems


def refused_pool_path(spec: model.PoolSpec, uri: str) -> str | None:
    """Return why ``spec``'s directory may never become a new pool on ``uri`` (a system directory), or None.

    Only for a pool kvmops would define: an existing pool is observed, not created.  The
    directory as this machine resolves it (``host_path``) counts when libvirt is local.
    """
    why = hostdirs.system_directory(spec.path)
    if why is not None:
        return f"{spec.path} is a system directory ({why})"
    if spec.host_path and spec.host_path != spec.path and host_is_local(uri):
        why = hostdirs.system_directory(spec.host_path)
        if why is not None:
            return f"{spec.path} leads to {spec.host_path} on this host, a system directory ({why})"
    return None


def plan_pool(spec: model.PoolSpec, observed: model.ObservedPool | None, uri: str) -> plans.ResourcePlan:
    """Return the plan of StoragePool ``spec``: define, build and start it; an existing pool is never changed."""
    base = dict(kind="StoragePool", name=spec.name, manifest=spec.manifest)
    if observed is None and (refusal := refused_pool_path(spec, uri)) is not None:
        return plans.ResourcePlan(**base, problems=(spec.origin.problem("spec.path", (
            f"{refusal}; kvmops never makes one a storage pool. Use a directory of its own, "
            f"such as /var/lib/kvmops/{spec.name}"
        )),))
    if observed is None:
        steps: list[plans.Step] = [
            plans.DefinePool(spec.name, storagexml.render_pool(spec)),
            plans.BuildPool(spec.name),
            plans.StartPool(spec.name),
        ]
        if spec.autostart:
            steps.append(plans.SetPoolAutostart(spec.name, True))
        changes = (
            FieldChange("type", None, spec.type, Impact.LIVE),
            FieldChange("path", None, spec.path, Impact.LIVE),
            FieldChange("autostart", None, yes_no(spec.autostart), Impact.LIVE),
        )
        return plans.ResourcePlan(**base, actions=(Action.CREATE,), changes=changes, steps=tuple(steps))
    if (observed.type, observed.path) != (spec.type, spec.path):
        return plans.ResourcePlan(**base, problems=(spec.origin.problem(
            "spec.path",
            f"pool {spec.name!r} already exists as a {observed.type} pool at {observed.path}; kvmops never changes an "
            f"existing pool: set spec.path to {observed.path} or choose another pool name",
        ),))
    steps, changes, actions = [], [], []
    if observed.autostart != spec.autostart:
        steps.append(plans.SetPoolAutostart(spec.name, spec.autostart))
        changes.append(FieldChange("autostart", yes_no(observed.autostart), yes_no(spec.autostart), Impact.LIVE))
        actions.append(Action.UPDATE)
    if not observed.active:
        steps.append(plans.StartPool(spec.name))
        actions.append(Action.START)
    return plans.ResourcePlan(**base, actions=tuple(actions), changes=tuple(changes), steps=tuple(steps))
