"""The trash's arithmetic and records: retention, when an entry becomes final, what a record holds."""

from __future__ import annotations

import json

import pytest

from reconciler.core import trash

DELETED = 1796511600  # 2026-12-05 23:00:00 UTC
DAY = 86400


def entry(**changes) -> trash.TrashEntry:
    fields = dict(pool="vmstore", volume="web-data.qcow2", entry=trash.entry_name("web-data.qcow2", DELETED),
                  scope="team-a", vm="web", vm_uuid="0d0d0d0d-0000-4000-8000-000000000001", deleted_at=DELETED,
                  capacity=10 * 2**30, reason="pruned with VM web")
    fields.update(changes)
    return trash.TrashEntry(**fields)


@pytest.mark.parametrize(("value", "seconds"), [
    ("24h", DAY), ("90m", 5400), ("7d", 7 * DAY), ("2w", 14 * DAY), ("45s", 45), ("45", 45), ("0", 0), (0, 0), (3600, 3600),
])
def test_retention_is_read_in_seconds_from_a_number_or_a_duration(value, seconds):
    assert trash.parse_retention(value) == seconds


@pytest.mark.parametrize("value", ["", "1.5h", "-1", "24 h", "1y", "h", True, -5, None, 2.5])
def test_anything_else_is_not_a_retention(value):
    with pytest.raises(ValueError):
        trash.parse_retention(value)


@pytest.mark.parametrize("value", ["1000000w", "99999999999999999999d", 10**12])
def test_a_retention_beyond_a_century_is_refused_so_every_deadline_can_be_shown(value):
    """A deadline past year 9999 cannot be written as a date: it would fail every plan that deletes a volume."""
    with pytest.raises(ValueError, match="at most"):
        trash.parse_retention(value)
    assert trash.format_instant(trash.final_at(2**32, trash.MAX_RETENTION)).endswith(" UTC")


@pytest.mark.parametrize(("seconds", "shown"), [(DAY, "24h"), (3600, "1h"), (5400, "90m"), (45, "45s"), (0, "0s"),
                                                (14 * DAY, "14d"), (2 * DAY, "2d"), (36 * 3600, "36h")])
def test_a_retention_is_shown_in_the_largest_unit_that_divides_it_days_from_two_on(seconds, shown):
    assert trash.format_retention(seconds) == shown


def test_an_entry_is_final_retention_after_its_deletion_and_due_from_then_on():
    """Deleted at 23:00 with 24h: restorable until 23:00 the next day, purged by any pass from that second."""
    deleted = entry()

    assert trash.final_at(DELETED, DAY) == DELETED + DAY
    assert not trash.is_due(deleted, DELETED + DAY - 1, DAY)
    assert trash.is_due(deleted, DELETED + DAY, DAY)
    assert trash.is_due(deleted, DELETED + 30 * DAY, DAY)


def test_the_purging_pass_retention_decides_so_raising_it_keeps_entries_longer():
    deleted = entry()

    assert trash.is_due(deleted, DELETED + 2 * DAY, DAY)
    assert not trash.is_due(deleted, DELETED + 2 * DAY, 7 * DAY)


def test_a_retention_of_zero_makes_an_entry_due_at_once():
    assert trash.is_due(entry(), DELETED, 0)


@pytest.mark.parametrize(("epoch", "shown"), [
    (DELETED, "2026-12-05 23:00 UTC"),
    (DELETED + DAY, "2026-12-06 23:00 UTC"),
    (DELETED + 1, "2026-12-05 23:01 UTC"),  # rounded up: the deadline is never shown before it is
    (DELETED + 59, "2026-12-05 23:01 UTC"),
    (DELETED - 1, "2026-12-05 23:00 UTC"),
])
def test_instants_are_shown_in_utc_to_the_minute_rounded_up(epoch, shown):
    assert trash.format_instant(epoch) == shown


def test_an_entry_is_named_by_its_deletion_time_and_volume():
    assert trash.entry_name("web-data.qcow2", DELETED) == "20261205T230000Z-web-data.qcow2"
    assert trash.is_entry_name("20261205T230000Z-web-data.qcow2")
    assert trash.is_entry_name("20261205T230000Z-web-data.qcow2.purging")
    assert not trash.is_entry_name("web-data.qcow2")
    assert not trash.is_entry_name(".entry.json.tmp")


def test_a_record_round_trips_and_holds_pool_volume_vm_scope_and_time():
    original = entry()

    text = trash.to_record(original)
    record = json.loads(text)

    assert record == {
        "format": 1, "pool": "vmstore", "volume": "web-data.qcow2", "entry": original.entry, "scope": "team-a",
        "vm": "web", "vmUuid": original.vm_uuid, "deletedAt": DELETED, "capacity": 10 * 2**30,
        "reason": "pruned with VM web",
    }
    assert trash.from_record(text, entry=original.entry, holds_volume=True) == original


def test_a_restored_record_keeps_everything_and_adds_when():
    restored = trash.restored(entry(), DELETED + 600)

    text = trash.to_record(restored)

    assert json.loads(text)["restoredAt"] == DELETED + 600
    back = trash.from_record(text, entry=restored.entry, holds_volume=False)
    assert back.restored_at == DELETED + 600
    assert back.claim


def test_an_entry_is_a_claim_only_once_restored_and_without_its_file():
    assert not entry().claim
    assert not entry(holds_volume=False).claim  # a move cut short, or the end of a purge
    assert not trash.restored(entry(), 1).claim  # restored_at written, the file not moved yet
    assert trash.restored(entry(holds_volume=False), 1).claim


def test_a_purging_entry_reads_its_record_under_the_purging_directory_name():
    original = entry()

    back = trash.from_record(trash.to_record(original), entry=original.entry + trash.PURGING_SUFFIX,
                             holds_volume=True, purging=True)

    assert back.entry == original.entry
    assert back.directory == original.entry + trash.PURGING_SUFFIX


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not JSON"),
    ("[]", "not a kvmops trash record"),
    ('{"format": 2}', "not a kvmops trash record"),
    ('{"format": 1, "pool": "p"}', "is missing"),
])
def test_a_record_kvmops_did_not_write_is_refused(text, message):
    with pytest.raises(trash.RecordError, match=message):
        trash.from_record(text, entry="20261205T230000Z-x", holds_volume=True)


def test_a_record_naming_another_entry_or_a_path_is_refused():
    """A record copied into another entry, or naming ../../etc/shadow as its volume, is not believed."""
    original = entry()
    with pytest.raises(trash.RecordError, match="not its directory"):
        trash.from_record(trash.to_record(original), entry="20261205T230000Z-other", holds_volume=True)
    sneaky = entry(volume="../../etc/shadow", entry="20261205T230000Z-x")
    with pytest.raises(trash.RecordError, match="is not a file name"):
        trash.from_record(trash.to_record(sneaky), entry="20261205T230000Z-x", holds_volume=True)


def test_entries_are_listed_newest_first():
    old, new = entry(deleted_at=DELETED, entry="a"), entry(deleted_at=DELETED + 5, entry="b")

    assert trash.newest_first([old, new]) == [new, old]
