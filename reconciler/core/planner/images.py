"""Plan the Images: import them verified, re-import what an interrupted import left, remove its leftovers."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core import model, redaction
from reconciler.core import plan as plans
from reconciler.core.plan import Action, FieldChange, Impact
from reconciler.core.planner.sharing import volume_users


def image_pool_problem(spec: model.ImageSpec, declared: Mapping[str, model.PoolSpec],
                       pools: Mapping[str, model.ObservedPool], where: str = "") -> model.Problem | None:
    """Return why Image ``spec`` cannot go into its pool, declared by no manifest (``declared``) and not active among
    the host's ``pools`` (``where`` names the host in the words), or None when it can."""
    if spec.pool in declared:
        return None
    pool = pools.get(spec.pool)
    if pool is not None and pool.active:
        return None
    why = "is not active" if pool is not None else "does not exist"
    return spec.origin.problem(
        "spec.pool", f"storage pool {spec.pool!r} {why}{where}; declare it in a StoragePool manifest or create it")


def plan_image(spec: model.ImageSpec, actual: model.ActualState, desired: model.DesiredState) -> plans.ResourcePlan:
    """Return the plan of Image ``spec``: import it, import again what an interrupted import left, or nothing."""
    base = dict(kind="Image", name=spec.name, manifest=spec.manifest)
    unusable = image_pool_problem(spec, desired.pools, actual.pools)
    if unusable is not None:
        return plans.ResourcePlan(**base, problems=(unusable,))
    requires = (f"StoragePool/{spec.pool}",) if spec.pool in desired.pools else ()
    source = redaction.redact_url(spec.url) if spec.url else spec.path
    verified = f"verified against sha256 {spec.sha256[:12]}… before it becomes a volume"
    import_step = plans.ImportImage(spec.pool, spec.volume, spec.url, spec.path, spec.sha256, spec.format, spec.tree)
    if (spec.pool, spec.volume) not in actual.volumes:
        return plans.ResourcePlan(
            **base, actions=(Action.CREATE,), requires=requires,
            changes=(FieldChange("volume", None, f"{spec.pool}/{spec.volume} from {source}", Impact.LIVE, note=verified),),
            steps=(import_step,),
        )
    complete = model.image_complete_volume(spec.volume)
    if (spec.pool, complete) not in actual.volumes and (users := _image_users(spec, actual, desired)):
        return plans.ResourcePlan(**base, requires=requires, notes=(
            f"image volume {spec.pool}/{spec.volume} has no completion record (imported by an older kvmops, or an "
            f"interrupted import) and {', '.join(users)} uses it, so kvmops will not replace it. Check it (virsh "
            f"vol-download {spec.pool} {spec.volume} FILE; sha256sum FILE: expect {spec.sha256}) and, if it matches, "
            f"record it: virsh vol-create-as {spec.pool} {complete} 0 --format raw",
        ))
    if (spec.pool, complete) not in actual.volumes:
        # "The volume exists" is not "the image is complete": only the completion record,
        # written after the copy finished, says that.  Without it the volume is what an
        # interrupted import (kill -9, libvirtd restarted mid-copy) left, and the import
        # replaces it (see _import_image for why replacing it is safe).
        return plans.ResourcePlan(
            **base, actions=(Action.UPDATE,), requires=requires,
            changes=(FieldChange(
                "volume", f"{spec.pool}/{spec.volume} (not known to be complete)", f"{spec.pool}/{spec.volume} from {source}",
                Impact.LIVE, note=f"an interrupted import left it without its completion record; imported again, {verified}",
            ),),
            steps=(import_step,),
        )
    partial = model.image_partial_volume(spec.volume)
    if (spec.pool, partial) in actual.volumes:
        return plans.ResourcePlan(
            **base, actions=(Action.UPDATE,), requires=requires,
            changes=(_leftover_change(spec.pool, partial),), steps=(plans.DeleteVolume(spec.pool, partial),),
        )
    return plans.ResourcePlan(**base, requires=requires)


def _image_users(spec: model.ImageSpec, actual: model.ActualState, desired: model.DesiredState) -> list[str]:
    """Return, in words, the domains using image volume ``spec`` and the existing overlays declared on it."""
    users = [f"domain {user}" for user in volume_users(actual, spec.pool, spec.volume, besides="")]
    users += [
        f"the overlay {disk.pool}/{disk.volume} of VM {vm.name}" for vm in desired.vms.values() for disk in vm.disks
        if disk.image == spec.name and disk.clone == "overlay" and (disk.pool, disk.volume) in actual.volumes
    ]
    return users


def plan_import_leftovers(desired: model.DesiredState, actual: model.ActualState) -> list[plans.ResourcePlan]:
    """Return the removal of what interrupted imports left for images no manifest declares any more.

    Only in the pools this manifest set declares or imports into: the temporary volume of
    an import running right now belongs to whoever holds the host lock, which is this pass.
    """
    pools = set(desired.pools) | {image.pool for image in desired.images.values()}
    declared = {(image.pool, image.volume) for image in desired.images.values()}
    resources = []
    for pool, name in sorted(actual.volumes):
        if pool not in pools:
            continue
        if name.startswith(model.IMAGE_PARTIAL_PREFIX):
            final = name[len(model.IMAGE_PARTIAL_PREFIX):]
        elif name.startswith(model.IMAGE_COMPLETE_PREFIX):
            final = name[len(model.IMAGE_COMPLETE_PREFIX):]
            if (pool, final) in actual.volumes:
                continue  # the record of a complete image, declared or kept
        else:
            continue
        if (pool, final) in declared:
            continue  # plan_image takes care of it
        resources.append(plans.ResourcePlan(
            kind="Image", name=f"{pool}/{final}", actions=(Action.DELETE,), manifest=None,
            changes=(_leftover_change(pool, name),), steps=(plans.DeleteVolume(pool, name),),
        ))
    return resources


def _leftover_change(pool: str, name: str) -> FieldChange:
    return FieldChange(
        f"volume {pool}/{name}", "(leftover)", None, Impact.LIVE,
        note="left by an interrupted image import, holds nothing else; removed",
    )
