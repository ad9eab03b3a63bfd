"""How the plan words values: sizes, seconds, booleans, digests and NICs, the same way in every change line."""

from __future__ import annotations

from reconciler.core import model
from reconciler.core.quantity import format_bytes

KIB = 1024


def kib(value: int) -> str:
    """Return a size given in KiB (libvirt's memory unit) for people."""
    return format_bytes(value * KIB)


def seconds(value: float | None) -> str:
    """Return a timeout for people; None is the default."""
    return "default" if value is None else f"{value:g}s"


def yes_no(value: bool) -> str:
    """Return a boolean as the manifests write it."""
    return "true" if value else "false"


def short_digest(digest: str) -> str:
    """Return the start of a manifest digest, enough to tell two apart."""
    return digest[:19] if digest else "(none)"


def nic_text(nic: model.NicDevice) -> str:
    """Return a NIC as the plan shows it: kind, source, model and MAC."""
    mac = f" mac {nic.mac}" if nic.mac else ""
    return f"{nic.kind} {nic.source} ({nic.model or 'default model'}){mac}"
