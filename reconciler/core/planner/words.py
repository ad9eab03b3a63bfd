"""How the plan words values: sizes, seconds, booleans, digests and NICs, the same way in every change line."""

from __future__ import annotations

from reconciler.core import model
from reconciler.core.quantity import format_bytes

KIB = 1024


def kib(value: int) -> str:
    return format_bytes(value * KIB)


def seconds(value: float | None) -> str:
    return "default" if value is None else f"{value:g}s"


def yes_no(value: bool) -> str:
    return "true" if value else "false"


def short_digest(digest: str) -> str:
    return digest[:19] if digest else "(none)"


def nic_text(nic: model.NicDevice) -> str:
    mac = f" mac {nic.mac}" if nic.mac else ""
    return f"{nic.kind} {nic.source} ({nic.model or 'default model'}){mac}"
