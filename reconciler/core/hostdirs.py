"""Host directories that kvmops never makes a new storage pool: :func:`system_directory`.

A dir pool hands its directory to libvirt, which runs as root: kvmops then creates
volumes there under names a manifest chooses, copies images into them, and lists every
file in it as a volume.  A manifest that could make ``/etc`` (or ``/etc/cron.d``, or
``/root/.ssh``) a pool could write files that change how the host boots, who may log in,
or what runs as root.  So a *new* pool may not be one of these directories.  A pool that
already exists in libvirt is observed, never defined, and is not judged here.

Pure: the caller normalises (``//``, ``/./``, trailing slashes) with :func:`normalise`,
and the shell resolves symlinks on the local host before asking.
"""

from __future__ import annotations

import posixpath
import re

# The directory and everything below it.  Each holds what the host runs or trusts:
# configuration, programs and libraries, the kernel and boot loader, root's home, the
# kernel's and udev's virtual files, runtime state and sockets, logs and spools that
# daemons parse, package databases, and libvirt's own state (domain XML, NVRAM,
# channel sockets, dnsmasq leases, TPM state), where a volume file would shadow it.
SYSTEM_TREES: dict[str, str] = {
    "/etc": "host configuration",
    "/usr": "programs and libraries",
    "/bin": "programs", "/sbin": "programs",
    "/boot": "the kernel and boot loader",
    "/root": "root's home directory",
    "/proc": "kernel interfaces", "/sys": "kernel interfaces", "/dev": "device files",
    "/run": "runtime state and sockets", "/var/run": "runtime state and sockets", "/var/lock": "runtime locks",
    "/var/log": "logs", "/var/spool": "spools (cron, mail) that daemons act on", "/var/mail": "mail",
    "/var/cache": "caches of system programs", "/var/backups": "system backups",
    "/var/lib/dpkg": "the package database", "/var/lib/apt": "the package database",
    "/var/lib/systemd": "systemd's state",
    "/var/lib/libvirt/qemu": "libvirt's domain state (NVRAM, sockets, snapshots)",
    "/var/lib/libvirt/dnsmasq": "libvirt's DHCP leases",
    "/var/lib/libvirt/network": "libvirt's network state",
    "/var/lib/libvirt/swtpm": "virtual TPM state",
    "/var/lib/libvirt/lockd": "libvirt's disk locks",
    "/lost+found": "file system repair",
}
# Only the directory itself (places below it are ordinary, e.g. /var/lib/libvirt/images,
# /home/alice/vms, /srv/kvmops): they hold other programs' and users' directories, which a
# pool would list as volumes and whose names a volume could take.
SYSTEM_DIRECTORIES: dict[str, str] = {
    "/": "the root directory",
    "/var": "system state", "/var/lib": "system state", "/var/lib/libvirt": "libvirt's own directory",
    "/home": "users' home directories", "/srv": "served data of every service", "/opt": "add-on software",
    "/mnt": "mount points", "/media": "mount points", "/tmp": "a shared scratch directory",
    "/var/tmp": "a shared scratch directory", "/var/local": "local system state",
}


def normalise(path: str) -> str:
    """Return absolute ``path`` in the one spelling libvirt keeps: no ``//``, ``/./``, ``..`` or trailing ``/``."""
    # posixpath.normpath keeps a leading '//' (POSIX leaves its meaning open); Linux does not.
    return posixpath.normpath("/" + path.lstrip("/"))


def system_directory(path: str) -> str | None:
    """Return why the normalised absolute ``path`` may not become a new pool, or None when it may."""
    if path in SYSTEM_DIRECTORIES:
        return SYSTEM_DIRECTORIES[path]
    parts = path.split("/")
    if len(parts) > 1 and re.fullmatch(r"lib(32|64|x32|exec)?", parts[1]):
        return "libraries"  # /lib, /lib32, /lib64, /libx32, /libexec
    for tree, why in SYSTEM_TREES.items():
        if path == tree or path.startswith(tree + "/"):
            return why
    if len(parts) > 3 and parts[1] == "home" and any(part.startswith(".") for part in parts[3:]):
        return "a user's hidden directory (keys, shell start-up files)"
    return None


# Block devices a disk may name under /dev (which is otherwise refused): whole disks,
# partitions, LVM volumes, device-mapper and md devices, and their stable by-* links.
_BLOCK_DEVICE = re.compile(
    r"/dev/(?:(?:sd|vd|xvd|hd)[a-z]+\d*|nvme\d+n\d+(?:p\d+)?|md\d+(?:p\d+)?|dm-\d+|zd\d+(?:p\d+)?|sr\d+|loop\d+"
    r"|mapper/[^/]+|md/[^/]+|disk/by-[a-z]+/[^/]+|zvol/.+|[A-Za-z0-9][A-Za-z0-9_.+-]*/[A-Za-z0-9][A-Za-z0-9_.+-]*)"
)


def refused_attached_file(path: str) -> str | None:
    """Return why ``path`` may not be attached as a disk or CD-ROM file, or None when it may.

    ``path`` must already be absolute and normalised (:func:`normalise`).  The file is
    only read by QEMU (written, for a disk), never created or changed by kvmops; still, a
    manifest must not hand a guest the host's configuration, keys or libvirt's state: a
    file in a system tree is refused.  Under ``/dev`` only block devices (disks,
    partitions, LVM, device-mapper, md) may be named.
    """
    if path != normalise(path):
        return f"{path} is not normalised (write {normalise(path)})"
    if path.startswith("/dev/"):
        return None if _BLOCK_DEVICE.fullmatch(path) else f"{path} is not a block device path ({SYSTEM_TREES['/dev']})"
    directory = posixpath.dirname(path)
    if directory == "/":
        return f"{path} is in the root directory"
    why = system_directory(directory)
    if why is not None and directory not in SYSTEM_DIRECTORIES:
        return f"{path} is in a system directory ({why})"
    return None
