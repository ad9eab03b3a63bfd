"""Snapshots of a host: ``kvmops state export`` writes one, ``kvmops plan --state`` reads it.

A snapshot is the raw :class:`~reconciler.core.model.Observation` (domain XML, power
states, pools, volumes) plus when and where it was taken, so that planning from it runs
exactly the code a live plan runs (:func:`reconciler.core.actual.interpret`).  Foreign
domains keep only their name, power state and the storage they use (kvmops never deletes
a volume another domain uses): the rest of their XML is none of kvmops' business and may
hold things a CI runner should not see.

The layout is versioned (``kvmops_snapshot``); a newer version is refused, not guessed at.
"""

from __future__ import annotations

import dataclasses

from reconciler.core import actual, domxml, model, netxml, redaction

SNAPSHOT_VERSION = 1


class SnapshotError(ValueError):
    """The file is not a kvmops snapshot this version can read."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """An observation of a host, with its provenance."""

    observation: model.Observation
    taken_at: str  # ISO 8601, UTC
    hostname: str

    def describe(self) -> str:
        """Return the line a plan made from this snapshot carries."""
        return (
            f"planned against a snapshot of {self.hostname} ({self.observation.host.uri}) taken {self.taken_at}, "
            "not against the live host"
        )


def to_data(snapshot: Snapshot) -> dict:
    """Return ``snapshot`` as JSON-ready data."""
    observation = snapshot.observation
    domains = []
    for record in observation.domains:
        owned = actual.is_owned(record)
        domains.append({
            "name": record.name,
            "uuid": record.uuid,
            "owned": owned,
            "power": record.power.value,
            "shutoff_reason": record.shutoff_reason.value if record.shutoff_reason else None,
            "autostart": record.autostart,
            "persistent": record.persistent,
            "inactive_xml": record.inactive_xml if owned else None,
            "live_xml": record.live_xml if owned else None,
            **({"paused_by_migration": True} if record.paused_by_migration else {}),
            **({} if owned else {"storage": _storage(record)}),
        })
    host = observation.host
    return {
        "kvmops_snapshot": SNAPSHOT_VERSION,
        "taken_at": snapshot.taken_at,
        "hostname": snapshot.hostname,
        "host": {
            "uri": redaction.redact_url(host.uri), "virt_types": list(host.virt_types), "test_driver": host.test_driver,
            "kvm_unusable_reason": host.kvm_unusable_reason, "trash_unavailable": host.trash_unavailable,
        },
        "domains": domains,
        "pools": [dataclasses.asdict(pool) for pool in observation.pools],
        "volumes": [dataclasses.asdict(volume) for volume in observation.volumes],
        "networks": [
            {"name": n.name, "active": n.active, "autostart": n.autostart,
             "xml": n.xml if netxml.parse(n.xml).owner is not None else None}
            for n in observation.networks
        ],
    }


def from_data(data: object) -> Snapshot:
    """Return the snapshot in ``data``; raise :class:`SnapshotError` naming what is wrong."""
    if not isinstance(data, dict) or "kvmops_snapshot" not in data:
        raise SnapshotError("not a kvmops snapshot (no 'kvmops_snapshot' field); create one with `kvmops state export`")
    if data["kvmops_snapshot"] != SNAPSHOT_VERSION:
        raise SnapshotError(f"snapshot format {data['kvmops_snapshot']!r} is not supported (this kvmops reads {SNAPSHOT_VERSION})")
    try:
        host = data["host"]
        records = []
        for entry in data["domains"]:
            xml = entry["inactive_xml"] or _stub(entry["name"], entry.get("storage") or [])
            reason = entry.get("shutoff_reason")
            records.append(model.DomainRecord(
                name=entry["name"], uuid=entry["uuid"], inactive_xml=xml,
                power=model.PowerState(entry["power"]),
                shutoff_reason=model.ShutoffReason(reason) if reason else None,
                autostart=bool(entry["autostart"]), persistent=bool(entry.get("persistent", True)),
                live_xml=entry.get("live_xml"), paused_by_migration=bool(entry.get("paused_by_migration", False)),
            ))
        observation = model.Observation(
            host=model.HostInfo(
                uri=host["uri"], virt_types=tuple(host["virt_types"]), test_driver=bool(host.get("test_driver")),
                kvm_unusable_reason=host.get("kvm_unusable_reason"),
                trash_unavailable=str(host.get("trash_unavailable") or ""),
            ),
            domains=tuple(records),
            pools=tuple(model.ObservedPool(**pool) for pool in data["pools"]),
            volumes=tuple(model.ObservedVolume(**volume) for volume in data["volumes"]),
            networks=tuple(
                model.NetworkRecord(n["name"], n["xml"] or f"<network><name>{_escape(n['name'])}</name></network>",
                                    bool(n["active"]), bool(n["autostart"]))
                for n in data.get("networks", [])
            ),
        )
        return Snapshot(observation, taken_at=str(data["taken_at"]), hostname=str(data["hostname"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"malformed kvmops snapshot: {type(exc).__name__}: {exc}") from exc


def _storage(record: model.DomainRecord) -> list[dict]:
    """Return the disk sources of ``record``: all a snapshot keeps of a foreign domain's XML."""
    devices = []
    for xml in (record.inactive_xml, record.live_xml):
        if xml:
            try:
                devices.extend(domxml.parse_storage(domxml.parse_tree(xml)))
            except domxml.DomainXMLError:
                continue
    return [
        {"pool": d.pool, "volume": d.volume or ""} if d.pool is not None else {"path": d.path}
        for d in dict.fromkeys(devices)
    ]


def _stub(name: str, storage: list[dict]) -> str:
    """Return a domain XML holding only ``name`` and the disk sources in ``storage``."""
    disks = "".join(
        f"<disk type='volume'><source pool='{_escape(s['pool'])}' volume='{_escape(s['volume'])}'/></disk>" if "pool" in s
        else f"<disk type='file'><source file='{_escape(s['path'])}'/></disk>"
        for s in storage
    )
    return f"<domain><name>{_escape(name)}</name><devices>{disks}</devices></domain>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


FLEET_SNAPSHOT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FleetSnapshot:
    """One snapshot per Host of a fleet, and why each other Host could not be observed."""

    hosts: dict[str, Snapshot]
    unreachable: dict[str, str]  # host -> the error
    taken_at: str  # ISO 8601, UTC

    def describe(self, host: str) -> str:
        """Return the line host ``host``'s plan made from this snapshot carries."""
        return self.hosts[host].describe() if host in self.hosts else unsnapshotted_host_line(self.taken_at)


def unsnapshotted_host_line(taken_at: str) -> str:
    """Return the line a Host's plan carries when the fleet snapshot taken at ``taken_at`` holds none of that Host."""
    return f"planned against a fleet snapshot taken {taken_at}"


def is_fleet(data: object) -> bool:
    """Return whether ``data`` is a fleet snapshot (``kvmops state export`` of manifests with Hosts)."""
    return isinstance(data, dict) and "kvmops_fleet_snapshot" in data


def fleet_to_data(taken: FleetSnapshot) -> dict:
    """Return a fleet snapshot as JSON-ready data: every host's snapshot, as :func:`to_data` writes one."""
    return {
        "kvmops_fleet_snapshot": FLEET_SNAPSHOT_VERSION,
        "taken_at": taken.taken_at,
        "hosts": {name: to_data(taken.hosts[name]) for name in sorted(taken.hosts)},
        "unreachable": dict(sorted(taken.unreachable.items())),
    }


def fleet_from_data(data: object) -> FleetSnapshot:
    """Return the fleet snapshot in ``data``; raise :class:`SnapshotError` naming what is wrong."""
    if not is_fleet(data):
        raise SnapshotError("not a kvmops fleet snapshot (no 'kvmops_fleet_snapshot' field); "
                            "create one with `kvmops state export --manifests DIR` on manifests declaring Hosts")
    if data["kvmops_fleet_snapshot"] != FLEET_SNAPSHOT_VERSION:
        raise SnapshotError(f"fleet snapshot format {data['kvmops_fleet_snapshot']!r} is not supported "
                            f"(this kvmops reads {FLEET_SNAPSHOT_VERSION})")
    try:
        hosts = {str(name): from_data(entry) for name, entry in dict(data["hosts"]).items()}
        unreachable = {str(name): str(error) for name, error in dict(data.get("unreachable") or {}).items()}
        return FleetSnapshot(hosts, unreachable, taken_at=str(data["taken_at"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SnapshotError):
            raise SnapshotError(f"in the fleet snapshot: {exc}") from exc
        raise SnapshotError(f"malformed kvmops fleet snapshot: {type(exc).__name__}: {exc}") from exc
