"""Undoing a deletion: list what the pools' trash holds, and bring one volume back (``kvmops trash``).

A volume in the trash is a file in ``<pool directory>/.kvmops-trash/<entry>/`` that
libvirt does not list.  Restoring it moves the file back to the top of the pool's
directory (refusing when the name is taken, in the pool or in libvirt), refreshes the
pool so libvirt lists it again, and leaves the entry's record behind marked restored:
that claim is how the next definition of the VM it belonged to, in the same scope,
records the volume as created by kvmops again (so ``deletionPolicy: Delete`` applies to
it as before) instead of as an existing volume kvmops must never delete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.adapters.trash import PoolTrash
from reconciler.core import quantity, trash
from reconciler.runtime import observe


@dataclass(frozen=True)
class Listing:
    """What the trash of every directory pool holds: entries newest first, and what could not be read."""

    entries: tuple[trash.TrashEntry, ...]
    unreadable: tuple[str, ...]


def listing(hypervisor: hv.Hypervisor) -> Listing:
    """Return the trash entries of ``hypervisor``'s pools; refuse on a host where kvmops keeps no trash."""
    host = hypervisor.host_info()
    if host.trash_unavailable:
        raise errors.OperationUnsupported(f"no trash on {hypervisor.uri}: {host.trash_unavailable}")
    entries, unreadable = observe.collect_trash(host, tuple(hypervisor.list_pools()))
    return Listing(tuple(trash.newest_first(list(entries))), unreadable)


def rows(found: Listing, now: int, retention: int | None) -> list[dict]:
    """Return one row per entry for ``kvmops trash list``; ``retention`` None: unknown (no configuration)."""
    result = []
    for entry in found.entries:
        if entry.purging:
            state = "being purged"
        elif entry.claim:
            state = f"restored {trash.format_instant(entry.restored_at or 0)}"
        elif not entry.holds_volume:
            state = "empty (a move or purge cut short; removed by the next pass)"
        elif retention is None:
            state = "in the trash"
        elif trash.is_due(entry, now, retention):
            state = "due: purged by the next pass"
        else:
            state = f"restorable until {trash.format_instant(trash.final_at(entry.deleted_at, retention))}"
        result.append({
            "pool": entry.pool, "volume": entry.volume, "vm": entry.vm, "scope": entry.scope,
            "size": quantity.format_bytes(entry.capacity) if entry.volume else "",
            "deleted": trash.format_instant(entry.deleted_at) if entry.deleted_at else "",
            "state": state, "entry": entry.directory,
        })
    return result


@dataclass(frozen=True)
class Restored:
    """A volume brought back: its entry (now a claim) and its file."""

    entry: trash.TrashEntry
    path: str
    others: int  # other entries of the same volume name left in the trash


def restore(hypervisor: hv.Hypervisor, volume: str, pool: str | None = None, *, now: int | None = None) -> Restored:
    """Move the most recently deleted ``volume`` (in ``pool``) back into its pool and make libvirt list it again.

    The caller holds the host lock: no pass purges or moves while this runs.
    """
    found = listing(hypervisor)
    candidates = [e for e in found.entries if e.volume == volume and e.holds_volume and not e.purging
                  and (pool is None or e.pool == pool)]
    if not candidates:
        where = f"pool {pool}'s trash" if pool else "the trash of any pool"
        raise errors.ObjectNotFound(f"no volume named {volume} in {where}; `kvmops trash list` shows what there is")
    pools = sorted({e.pool for e in candidates})
    if len(pools) > 1:
        raise errors.KvmopsError(
            f"volume {volume} is in the trash of pools {', '.join(pools)}; say which with --pool"
        )
    chosen = candidates[0]  # newest first
    if hypervisor.volume_exists(chosen.pool, chosen.volume):
        raise errors.OperationRefused(
            f"volume {chosen.pool}/{chosen.volume} exists; kvmops will not overwrite it with the one in the trash. "
            "Rename or remove it first (virsh vol-delete), then restore again"
        )
    pool_path = hypervisor.pool_directory(chosen.pool)
    if pool_path is None:
        raise errors.OperationRefused(f"pool {chosen.pool} has no directory any more; the trash cannot be restored")
    at = int(time.time()) if now is None else now
    path = PoolTrash(chosen.pool, pool_path).restore(chosen, at)
    hypervisor.refresh_pool(chosen.pool)
    if not hypervisor.volume_exists(chosen.pool, chosen.volume):
        raise errors.OperationRefused(
            f"{path} is back in pool {chosen.pool}'s directory but libvirt does not list it after a refresh; "
            f"check the pool (virsh pool-refresh {chosen.pool}; virsh vol-list {chosen.pool})"
        )
    return Restored(trash.restored(chosen, at), path, len(candidates) - 1)
