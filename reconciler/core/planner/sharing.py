"""Which volumes are in use, and by whom: a volume another domain or manifest uses is never deleted or resized."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from reconciler.core import model
from reconciler.core.planner.marks import scope_of


def wanted_volumes(desired: model.DesiredState) -> set[tuple[str, str]]:
    """Return every (pool, volume) the manifests use (disks, images): such a volume is never deleted."""
    volumes = {(disk.pool, disk.volume) for spec in desired.vms.values() for disk in spec.disks if disk.path is None}
    volumes |= {(image.pool, image.volume) for image in desired.images.values()}
    return volumes


def vm_volumes(spec: model.VMSpec, images: Mapping[str, model.ImageSpec]) -> set[tuple[str, str]]:
    """Return every (pool, volume) VM ``spec`` names: its disks, the images they start from, its media and seed."""
    volumes = {(disk.pool, disk.volume) for disk in spec.disks if disk.path is None}
    volumes |= {(images[disk.image].pool, images[disk.image].volume) for disk in spec.disks
                if disk.image is not None and disk.image in images}
    files = [spec.cdrom] + ([spec.install.kernel, spec.install.initrd] if spec.install is not None else [])
    volumes |= {(ref.pool, ref.volume) for ref in files if ref is not None and ref.pool and ref.volume is not None}
    if spec.cloud_init is not None:
        volumes.add((spec.cloud_init.pool, spec.cloud_init.volume))
    return volumes


def volume_users(actual: model.ActualState, pool: str, name: str, *, besides: str) -> list[str]:
    """Return, in words, every domain but ``besides`` whose storage includes volume ``pool/name``.

    Any domain counts: foreign, another scope's, shut off or running.  Such a volume is
    never deleted or resized, whoever recorded it.
    """
    keys = {(pool, name)}
    volume = actual.volumes.get((pool, name))
    if volume is not None and volume.path:
        keys.add(("", posixpath.normpath(volume.path)))
    using = actual.storage_users()
    found = {other.name: other for key in keys for other in using.get(key, ())}
    users = []
    for other in (found[name] for name in sorted(found)):
        if other.name != besides:
            if not other.owned:
                whose = "foreign"
            else:
                whose = f"kvmops, scope {scope_of(other)}"
            users.append(f"{other.name} ({whose}, {other.power})")
    return users


def kept_for_users(actual: model.ActualState, record: model.OwnedVolume, domain: str, *, detached: bool = False) -> str | None:
    """Return the note keeping ``record``'s volume because other domains use it, or None."""
    users = volume_users(actual, record.pool, record.name, besides=domain)
    if not users:
        return None
    how = "is detached and kept" if detached else "is kept"
    return f"volume {record.pool}/{record.name} {how}: also used by domain {', '.join(users)}"
