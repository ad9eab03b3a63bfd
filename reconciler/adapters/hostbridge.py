"""The Linux bridges of this machine: what one looks like, and removing one.

Only meaningful where libvirt runs on this machine (a URI without a host name): a remote
libvirtd's bridges are on its own host.  Used for one repair (see
:meth:`reconciler.adapters.hypervisor.Hypervisor.start_network`): a libvirtd killed while
it started a network leaves the network's bridge behind, and every later start of that
network fails with "error creating bridge interface ...: File exists".
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from reconciler import errors

_SYS_CLASS_NET = "/sys/class/net"
_IFF_UP = 0x1


@dataclass(frozen=True)
class HostBridge:
    """A bridge as the kernel shows it: its MAC address, the interfaces attached to it, whether it is up."""

    name: str
    mac: str
    ports: tuple[str, ...]
    up: bool


def find(name: str) -> HostBridge | None:
    """Return the bridge called ``name`` on this machine, or None (no such interface, or not a bridge)."""
    base = os.path.join(_SYS_CLASS_NET, name)
    if not os.path.isdir(os.path.join(base, "bridge")):
        return None
    try:
        with open(os.path.join(base, "address"), encoding="ascii") as address:
            mac = address.read().strip().lower()
        with open(os.path.join(base, "flags"), encoding="ascii") as flags:
            up = bool(int(flags.read().strip(), 16) & _IFF_UP)
        ports = tuple(sorted(os.listdir(os.path.join(base, "brif"))))
    except (OSError, ValueError):
        return None  # gone while we looked
    return HostBridge(name, mac, ports, up)


def delete(name: str) -> None:
    """Delete the bridge ``name``; raise ``OperationRefused`` saying why when the kernel refuses."""
    try:
        done = subprocess.run(["ip", "link", "delete", "dev", name, "type", "bridge"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise errors.OperationRefused(f"cannot delete bridge {name}: {exc}") from exc
    if done.returncode != 0:
        raise errors.OperationRefused(f"cannot delete bridge {name}: {done.stderr.strip() or f'ip exited {done.returncode}'}")
