"""Sizes as people write them in manifests, and as kvmops prints them.

Memory is written as an integer number of MiB or a string with a unit; disk sizes as an
integer number of GiB (virt-install's ``size=50``) or a string with a unit.  Binary units
(``KiB``/``Ki``, ``MiB``/``Mi``, ...) are powers of 1024; decimal ones (``KB``, ``MB``, ...)
are powers of 1000.  Bare ``G`` or ``M`` are refused as ambiguous, which the schema's
pattern enforces and :func:`parse_bytes` repeats for callers that skip the schema.
"""

from __future__ import annotations

import re

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4

_UNITS = {
    "B": 1,
    "KiB": KIB, "Ki": KIB, "KB": 1000,
    "MiB": MIB, "Mi": MIB, "MB": 1000**2,
    "GiB": GIB, "Gi": GIB, "GB": 1000**3,
    "TiB": TIB, "Ti": TIB, "TB": 1000**4,
}  # fmt: skip

_QUANTITY = re.compile(r"^\s*(\d{1,15})(?:\.(\d{1,6}))?\s*([A-Za-z]*)\s*$")


def parse_bytes(value: int | str, *, bare_unit: int) -> int:
    """Return ``value`` in bytes; integers are counted in ``bare_unit`` bytes.

    Raises ``ValueError`` with a message fit for a user when the text is not a quantity,
    its unit is unknown, or it is not a whole number of bytes.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 2GiB or 512MiB, not a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema counts 2048.0 as an integer; so do we
    if isinstance(value, int):
        return value * bare_unit
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 2GiB or 512MiB, not {value!r}")
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size; write e.g. 2GiB, 512MiB or 20GB")
    whole, fraction, unit = match.groups()
    if unit not in _UNITS:
        hint = f" (did you mean {unit}iB?)" if unit in {"K", "M", "G", "T"} else ""
        raise ValueError(f"unknown unit {unit!r} in {value!r}{hint}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
    multiplier = _UNITS[unit]
    fraction = fraction or ""
    numerator = int(whole + fraction) * multiplier
    denominator = 10 ** len(fraction)
    if numerator % denominator:
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return numerator // denominator


def round_up(value: int, multiple: int) -> int:
    """Return ``value`` rounded up to the next multiple of ``multiple``."""
    return -(-value // multiple) * multiple


def format_bytes(value: int) -> str:
    """Return ``value`` bytes as the largest binary unit that divides it, e.g. ``2 GiB``.

    Values that are not a whole number of any unit are printed with one decimal in the
    largest unit below them, so ``1.5 GiB`` stays readable.
    """
    for unit, size in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    for unit, size in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def format_bytes_approx(value: int) -> str:
    """Return ``value`` bytes rounded to one decimal of the largest binary unit it reaches, e.g. ``37.4 GiB``.

    For measured amounts such as free space, where :func:`format_bytes`'s exact units
    would print a filesystem's 4 KiB blocks as ``9793512 KiB``.
    """
    for unit, size in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"
