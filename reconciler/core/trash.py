"""The trash: volumes a pass deleted, kept for a while so that a deletion can be undone.

A volume that a pass deletes under ``deletionPolicy: Delete`` is moved, not deleted, into
its pool's trash directory, ``<pool directory>/.kvmops-trash/<entry>/``, next to a record
(``entry.json``) saying which pool and volume it was, which VM owned it, in which scope,
and when it was deleted.  libvirt's ``dir`` pools list the files at the top of their
directory only (a subdirectory shows as one ``dir`` volume, which kvmops ignores), so a
volume in the trash is no volume any more; ``kvmops trash restore`` moves it back.  A
later pass purges an entry once ``trashRetention`` has passed since its deletion.

This module is the trash's arithmetic and its record format, without I/O or a clock:
the shell reads and writes the files (``adapters/trash.py``) and says what time it is.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from dataclasses import dataclass

TRASH_DIRECTORY = ".kvmops-trash"  # inside the pool's directory: a rename never crosses a filesystem
RECORD_NAME = "entry.json"
PURGING_SUFFIX = ".purging"  # an entry renamed so is being purged: its purge is decided, only unfinished
RECORD_FORMAT = 1
POOL_TYPES = ("dir", "fs", "netfs")  # pools whose volumes are files at the top of one directory
DEFAULT_RETENTION = 24 * 3600
MAX_RETENTION = 100 * 365 * 86400  # deadlines stay dates (year 9999 is as far as they can be shown)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RETENTION = re.compile(r"^([0-9]+)(s|m|h|d|w)?$")
_ENTRY = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[^/\x00]+$")


class RecordError(ValueError):
    """A trash record that is not one kvmops wrote."""


def parse_retention(value: object) -> int:
    """Return the retention ``value`` (seconds as a number, or ``90s``, ``15m``, ``24h``, ``7d``, ``2w``) in seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int) and value >= 0:
        seconds = value
    else:
        match = _RETENTION.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"{value!r} is not a duration such as 24h, 90m, 7d or 0")
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds > MAX_RETENTION:
        raise ValueError(f"{value!r} is too long: a retention is at most 100 years ({MAX_RETENTION // 86400}d)")
    return seconds


def format_retention(seconds: int) -> str:
    """Return ``seconds`` in the largest unit that divides it, days from two on: ``24h``, ``90m``, ``7d``."""
    if seconds >= 2 * _UNITS["d"] and seconds % _UNITS["d"] == 0:
        return f"{seconds // _UNITS['d']}d"
    for unit in ("h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def final_at(deleted_at: int, retention: int) -> int:
    """Return when an entry deleted at ``deleted_at`` (epoch seconds) may be purged: it is restorable until then."""
    return deleted_at + retention


def is_due(entry: TrashEntry, now: int, retention: int) -> bool:
    """Return whether ``entry`` may be purged at ``now`` under ``retention`` (the setting of the purging pass)."""
    return now >= final_at(entry.deleted_at, retention)


def format_instant(epoch: int) -> str:
    """Return ``epoch`` as ``2026-12-06 23:00 UTC``, rounded up to the minute (a deadline is never shown early)."""
    minute = -(-epoch // 60) * 60
    return datetime.datetime.fromtimestamp(minute, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def entry_name(volume: str, deleted_at: int) -> str:
    """Return the name of the trash entry of ``volume`` deleted at ``deleted_at``: ``20261205T230000Z-<volume>``."""
    stamp = datetime.datetime.fromtimestamp(deleted_at, tz=datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{volume}"


def is_entry_name(name: str) -> bool:
    """Return whether ``name`` is shaped like a trash entry's directory name (purging or not)."""
    return bool(_ENTRY.match(name.removesuffix(PURGING_SUFFIX)))


@dataclass(frozen=True)
class TrashEntry:
    """One entry of a pool's trash: its record, and what the shell found next to it.

    ``holds_volume``: the volume's file is in the entry (restorable, or purged when due).
    Without it the entry is a record only: once ``restored_at`` is set, the claim that
    the volume kvmops moved back into the pool is still kvmops' own creation (the next
    definition of VM ``vm`` that uses it records it as created); without ``restored_at``,
    a move that was interrupted before the file went, or the end of a purge.  ``purging``:
    the entry was renamed for its purge, which the next pass finishes.
    """

    pool: str
    volume: str
    entry: str
    scope: str
    vm: str  # the VM whose volume it was
    vm_uuid: str
    deleted_at: int  # epoch seconds
    capacity: int = 0  # bytes, as libvirt last reported it
    reason: str = ""  # "pruned with VM web", "disk removed from VM web"
    restored_at: int | None = None
    holds_volume: bool = True
    purging: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """Return (pool, entry): the entry's identity on the host."""
        return self.pool, self.entry

    @property
    def directory(self) -> str:
        """Return the entry's directory name in the trash (``.purging`` appended once its purge began)."""
        return self.entry + PURGING_SUFFIX if self.purging else self.entry

    @property
    def claim(self) -> bool:
        """Return whether this record is only the claim of a restored volume."""
        return self.restored_at is not None and not self.holds_volume and not self.purging


def to_record(entry: TrashEntry) -> str:
    """Return the text of ``entry``'s record file (JSON, one object)."""
    record = {
        "format": RECORD_FORMAT,
        "pool": entry.pool,
        "volume": entry.volume,
        "entry": entry.entry,
        "scope": entry.scope,
        "vm": entry.vm,
        "vmUuid": entry.vm_uuid,
        "deletedAt": entry.deleted_at,
        "capacity": entry.capacity,
        "reason": entry.reason,
    }
    if entry.restored_at is not None:
        record["restoredAt"] = entry.restored_at
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def from_record(text: str, *, entry: str, holds_volume: bool, purging: bool = False) -> TrashEntry:
    """Return the entry whose record file holds ``text`` and whose directory is ``entry``; raise RecordError if foreign."""
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise RecordError(f"not JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise RecordError(f"not a kvmops trash record of format {RECORD_FORMAT}")
    try:
        strings = {key: record[key] for key in ("pool", "volume", "entry", "scope", "vm", "vmUuid", "reason")}
        numbers = {key: record[key] for key in ("deletedAt", "capacity")}
    except KeyError as exc:
        raise RecordError(f"field {exc.args[0]} is missing") from exc
    restored = record.get("restoredAt")
    if not all(isinstance(value, str) for value in strings.values()):
        raise RecordError("a text field is not text")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers.values()):
        raise RecordError("deletedAt and capacity must be whole numbers")
    if restored is not None and (not isinstance(restored, int) or isinstance(restored, bool)):
        raise RecordError("restoredAt must be a whole number")
    if strings["entry"] != entry.removesuffix(PURGING_SUFFIX):
        raise RecordError(f"it names entry {strings['entry']!r}, not its directory {entry!r}")
    if "/" in strings["volume"] or strings["volume"] in ("", ".", ".."):
        raise RecordError(f"volume {strings['volume']!r} is not a file name")
    return TrashEntry(
        pool=strings["pool"], volume=strings["volume"], entry=strings["entry"], scope=strings["scope"],
        vm=strings["vm"], vm_uuid=strings["vmUuid"], deleted_at=numbers["deletedAt"], capacity=numbers["capacity"],
        reason=strings["reason"], restored_at=restored, holds_volume=holds_volume, purging=purging,
    )


def restored(entry: TrashEntry, at: int) -> TrashEntry:
    """Return ``entry`` as recorded once its volume is back in the pool: the claim."""
    return dataclasses.replace(entry, restored_at=at)


def newest_first(entries: list[TrashEntry]) -> list[TrashEntry]:
    """Return ``entries`` sorted by deletion time, the most recent first (then by pool and entry)."""
    return sorted(entries, key=lambda e: (-e.deleted_at, e.pool, e.entry))


def describe(entry: TrashEntry) -> str:
    """Return how plans and lists name ``entry``: ``pool/volume (deleted 2026-12-05 23:00 UTC)``."""
    return f"{entry.pool}/{entry.volume} (deleted {format_instant(entry.deleted_at)})"

