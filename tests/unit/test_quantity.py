"""Sizes as people write them in manifests, and as kvmops prints them."""

from __future__ import annotations

import pytest

from reconciler.core import quantity

KIB, MIB, GIB, TIB = quantity.KIB, quantity.MIB, quantity.GIB, quantity.TIB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("512B", 512, id="bytes"),
        pytest.param("4KiB", 4 * KIB, id="kibibytes"),
        pytest.param("4Ki", 4 * KIB, id="kubernetes-style-Ki"),
        pytest.param("512MiB", 512 * MIB, id="mebibytes"),
        pytest.param("512Mi", 512 * MIB, id="kubernetes-style-Mi"),
        pytest.param("2GiB", 2 * GIB, id="gibibytes"),
        pytest.param("2Gi", 2 * GIB, id="kubernetes-style-Gi"),
        pytest.param("1TiB", TIB, id="tebibytes"),
        pytest.param("3Ti", 3 * TIB, id="kubernetes-style-Ti"),
        pytest.param("4KB", 4000, id="decimal-kilobytes"),
        pytest.param("20MB", 20 * 1000**2, id="decimal-megabytes"),
        pytest.param("20GB", 20 * 1000**3, id="decimal-gigabytes"),
        pytest.param("2TB", 2 * 1000**4, id="decimal-terabytes"),
        pytest.param("1.5GiB", 1536 * MIB, id="binary-decimal-fraction"),
        pytest.param("0.5KiB", 512, id="fraction-below-one"),
        pytest.param("1.25GB", 1_250_000_000, id="decimal-unit-fraction"),
        pytest.param("2 GiB", 2 * GIB, id="space-before-unit"),
        pytest.param("  2GiB  ", 2 * GIB, id="surrounding-spaces"),
        pytest.param("0GiB", 0, id="zero"),
    ],
)
def test_quantity_with_unit_is_converted_to_bytes(text, expected):
    """A number with a binary or decimal unit becomes the exact number of bytes."""
    assert quantity.parse_bytes(text, bare_unit=1) == expected


@pytest.mark.parametrize(
    ("value", "bare_unit", "expected"),
    [
        pytest.param(2048, MIB, 2 * GIB, id="memory-counts-mib"),
        pytest.param(20, GIB, 20 * GIB, id="disk-counts-gib"),
        pytest.param(0, GIB, 0, id="zero"),
    ],
)
def test_bare_integer_is_counted_in_the_callers_unit(value, bare_unit, expected):
    """An integer without a unit is a count of the unit the caller names (MiB for memory, GiB for disks)."""
    assert quantity.parse_bytes(value, bare_unit=bare_unit) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("2G", "did you mean GiB?", id="bare-G"),
        pytest.param("512M", "did you mean MiB?", id="bare-M"),
        pytest.param("4K", "did you mean KiB?", id="bare-K"),
        pytest.param("1T", "did you mean TiB?", id="bare-T"),
    ],
)
def test_ambiguous_single_letter_unit_is_refused_with_a_hint(text, words):
    """``2G`` could mean GB or GiB, so it is refused and the binary unit is suggested."""
    with pytest.raises(ValueError, match="unknown unit") as raised:
        quantity.parse_bytes(text, bare_unit=1)
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        pytest.param("lots", "is not a size", id="not-a-number"),
        pytest.param("-2GiB", "is not a size", id="negative"),
        pytest.param("1e3MiB", "is not a size", id="exponent"),
        pytest.param("2 gib", "unknown unit", id="wrong-case"),
        pytest.param("2PiB", "unknown unit", id="unsupported-unit"),
        pytest.param("1.0001B", "not a whole number of bytes", id="fraction-of-a-byte"),
        pytest.param("0.1KiB", "not a whole number of bytes", id="fraction-of-kib-not-whole"),
        pytest.param(True, "not a boolean", id="boolean"),
    ],
)
def test_malformed_quantity_is_refused_with_a_readable_message(value, words):
    """Text that is not a whole number of bytes in a known unit raises ValueError saying why."""
    with pytest.raises(ValueError, match=words):
        quantity.parse_bytes(value, bare_unit=MIB)


def test_integral_float_is_a_bare_number_or_a_value_error():
    """YAML ``2048.0`` passes the schema's integer type, so it is a count of the bare unit or a ValueError, never a crash."""
    try:
        result = quantity.parse_bytes(2048.0, bare_unit=MIB)  # type: ignore[arg-type]
    except ValueError:
        return
    assert result == 2 * GIB


@pytest.mark.parametrize(
    ("value", "multiple", "expected"),
    [
        pytest.param(0, MIB, 0, id="zero-stays"),
        pytest.param(MIB, MIB, MIB, id="exact-stays"),
        pytest.param(MIB + 1, MIB, 2 * MIB, id="one-over-rounds-up"),
        pytest.param(1, KIB, KIB, id="one-byte-is-a-kib"),
    ],
)
def test_round_up_reaches_the_next_multiple(value, multiple, expected):
    """Sizes are rounded up, never down, so a disk is never smaller than written."""
    assert quantity.round_up(value, multiple) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(0, "0 B", id="zero"),
        pytest.param(1023, "1023 B", id="below-a-kib"),
        pytest.param(KIB, "1 KiB", id="kib"),
        pytest.param(512 * MIB, "512 MiB", id="mib"),
        pytest.param(1536 * MIB, "1536 MiB", id="whole-mib-not-whole-gib"),
        pytest.param(20 * GIB, "20 GiB", id="gib"),
        pytest.param(3 * TIB, "3 TiB", id="tib"),
        pytest.param(1536, "1.5 KiB", id="fraction-one-decimal"),
        pytest.param(GIB + 512 * MIB + 1, "1.5 GiB", id="not-whole-in-any-unit"),
    ],
)
def test_format_bytes_uses_the_largest_unit_that_divides(value, text):
    """Printed sizes use the largest binary unit that divides them, else one decimal."""
    assert quantity.format_bytes(value) == text


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("512MiB", id="mib"),
        pytest.param("20GiB", id="gib"),
        pytest.param("3TiB", id="tib"),
        pytest.param("7KiB", id="kib"),
    ],
)
def test_formatted_whole_size_parses_back_to_the_same_bytes(text):
    """A size kvmops prints can be pasted into a manifest and means the same thing."""
    value = quantity.parse_bytes(text, bare_unit=1)
    assert quantity.parse_bytes(quantity.format_bytes(value).replace(" ", ""), bare_unit=1) == value
