"""How a pass removes data: a volume goes to its pool's trash or is deleted at once; trash entries are purged.

The planner asks :func:`removal` for the step that takes away a volume deleted under
``deletionPolicy: Delete`` and for the words of its DATA LOSS line, and adds
:func:`plan_trash` resources: the purge of entries whose retention has passed, and the
removal of records that hold no data.  Deleted at once (a ``DeleteVolume``) when the
retention is 0, when the host's files are not this machine's (a remote URI, the test
driver), or when the pool is not a directory; the plan says which.
"""

from __future__ import annotations

from reconciler.core import model, trash
from reconciler.core import plan as plans
from reconciler.core.plan import Action, FieldChange, Impact
from reconciler.core.quantity import format_bytes


def removal(
    volume: model.ObservedVolume, actual: model.ActualState, *, retention: int, now: int, scope: str,
    domain: str, uuid: str, reason: str, after: tuple[str, ...] = (),
) -> tuple[plans.Step, str]:
    """Return the step that removes ``volume`` (owned by ``domain``) and how its DATA LOSS line says it goes."""
    pool = actual.pools.get(volume.pool)
    why_not = _no_trash(volume, pool, actual.host, retention)
    if why_not:
        return plans.DeleteVolume(volume.pool, volume.name, domain, uuid, after), f"deleted at once: {why_not}"
    step = plans.MoveVolumeToTrash(
        pool=volume.pool, name=volume.name, path=volume.path, pool_path=pool.path or "",
        entry=_free_entry_name(actual, volume, now), deleted_at=now, scope=scope, capacity=volume.capacity,
        reason=reason, domain=domain, uuid=uuid, after=after,
    )
    if actual.host.offline:
        return step, f"moved to the trash, final {trash.format_retention(retention)} after the apply"
    return step, f"moved to the trash, final after {trash.format_instant(trash.final_at(now, retention))}"


def _free_entry_name(actual: model.ActualState, volume: model.ObservedVolume, now: int) -> str:
    """Return the entry name for ``volume`` deleted ``now``, with a suffix if that second already has one."""
    taken = {e.entry for e in actual.trash if e.pool == volume.pool}
    base = name = trash.entry_name(volume.name, now)
    number = 1
    while name in taken:
        number += 1
        name = f"{base}.{number}"
    return name


def _no_trash(volume: model.ObservedVolume, pool: model.ObservedPool | None, host: model.HostInfo, retention: int) -> str:
    """Return why ``volume`` cannot go to a trash ("" when it can)."""
    if retention == 0:
        return "trashRetention is 0"
    if host.trash_unavailable:
        return host.trash_unavailable
    if pool is None or pool.type not in trash.POOL_TYPES or not pool.path:
        kind = pool.type if pool is not None else "unknown"
        return f"pool {volume.pool} is a {kind} pool, not a directory, so it has no trash"
    if not volume.path.startswith(pool.path.rstrip("/") + "/") or "/" in volume.path[len(pool.path.rstrip("/")) + 1:]:
        return f"its file {volume.path} is not at the top of pool {volume.pool}'s directory"
    return ""


def plan_trash(actual: model.ActualState, *, retention: int, now: int, scope: str,
               held: str | None, claimed: set[tuple[str, str]]) -> list[plans.ResourcePlan]:
    """Return the purges and record removals the trash of this scope needs now.

    ``held``: why removals are held this pass (pruning suspended or off), or None.
    ``claimed``: (pool, entry) of claims a VM of this plan consumes itself, after its
    definition records the volume as created: not removed here.
    """
    resources = []
    for entry in sorted(actual.trash, key=lambda e: e.key):
        pool = actual.pools.get(entry.pool)
        if pool is None or not pool.path or entry.key in claimed:
            continue
        if entry.scope not in (scope, "") or held is not None:
            continue
        step = plans.PurgeTrashEntry(entry.pool, pool.path, entry.directory, entry.holds_volume)
        if entry.purging:
            change = FieldChange(
                f"trash entry {entry.pool}/{entry.directory}", "(being purged)", None, Impact.LIVE,
                note="a purge was cut short; it is finished",
            )
        elif entry.holds_volume and not entry.claim:
            if not trash.is_due(entry, now, retention):
                continue
            change = FieldChange(
                f"trash entry {trash.describe(entry)}", format_bytes(entry.capacity), None, Impact.DATA_LOSS,
                note=f"{entry.reason or 'deleted'}, kept for {trash.format_retention(retention)} (trashRetention)",
                loss="is purged: final, it can no longer be restored",
            )
        elif entry.claim:
            if now < trash.final_at(entry.restored_at or 0, retention):
                continue  # time to declare the disk again
            change = FieldChange(
                f"trash record {entry.pool}/{entry.volume}", "(restored)", None, Impact.LIVE,
                note=f"restored {trash.format_instant(entry.restored_at or 0)} and not declared again by VM {entry.vm} "
                     f"within trashRetention; the volume stays, as one kvmops did not create (never deleted)",
            )
        else:
            change = FieldChange(
                f"trash record {entry.pool}/{entry.entry}", "(empty)", None, Impact.LIVE,
                note="left by a move to the trash that was cut short; holds no data",
            )
        resources.append(plans.ResourcePlan(
            kind="Trash", name=f"{entry.pool}/{entry.directory}", actions=(Action.DELETE,), manifest=None,
            changes=(change,), steps=(step,),
        ))
    return resources


def claims_in_use(actual: model.ActualState, desired: model.DesiredState, scope: str) -> dict[tuple[str, str, str], trash.TrashEntry]:
    """Return the claims a VM of ``desired`` consumes this pass, by (pool, volume, VM): it declares the disk again."""
    found = {}
    for vm in desired.vms.values():
        for disk in vm.disks:
            if disk.path is None and (disk.pool, disk.volume) in actual.volumes:
                claim = claim_for(actual, disk.pool, disk.volume, scope=scope, vm=vm.name)
                if claim is not None:
                    found[(disk.pool, disk.volume, vm.name)] = claim
    return found


def claim_for(actual: model.ActualState, pool: str, volume: str, *, scope: str, vm: str) -> trash.TrashEntry | None:
    """Return the claim saying that ``pool/volume``, restored from the trash, was VM ``vm``'s creation in ``scope``."""
    claims = [e for e in actual.trash if e.claim and (e.pool, e.volume) == (pool, volume) and e.scope == scope
              and e.vm == vm]
    return max(claims, key=lambda e: e.restored_at or 0) if claims else None


def consume_claim(claim: trash.TrashEntry, actual: model.ActualState) -> tuple[plans.Step, FieldChange]:
    """Return the removal of ``claim`` once a definition records its volume as created, and its plan line."""
    pool = actual.pools[claim.pool]
    return (
        plans.PurgeTrashEntry(claim.pool, pool.path or "", claim.directory, holds_volume=False),
        FieldChange(f"trash record {claim.pool}/{claim.volume}", "(restored)", None, Impact.LIVE,
                    note="the volume is recorded by this VM again; the trash's record of it is removed"),
    )
