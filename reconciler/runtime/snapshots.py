"""Snapshots of hosts (``kvmops state export``) taken and read back (``plan --state``).

A snapshot is one host's observation as JSON; a fleet snapshot holds every Host's, and
names the Hosts that could not be reached instead of leaving them out silently.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from pathlib import Path

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import model, snapshot
from reconciler.runtime import fleet_reconcile, observe


def now() -> str:
    """Return the instant a snapshot is taken, as it is written in the file."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def take(hypervisor: hv.Hypervisor) -> snapshot.Snapshot:
    """Return a snapshot of the host behind ``hypervisor``."""
    return snapshot.Snapshot(observe.collect(hypervisor), hostname=hypervisor.hostname(), taken_at=now())


def take_fleet(desired: model.DesiredState, *, only_host: str | None, host_workers: int,
               host_timeout: float = fleet_reconcile.DEFAULT_HOST_TIMEOUT) -> snapshot.FleetSnapshot:
    """Return a snapshot of every Host ``desired`` declares (or ``only_host``), naming those out of reach.

    Connecting to a Host gets ``host_timeout`` seconds, observing it
    :func:`~reconciler.runtime.deadlines.look_timeout` of it.
    """
    if only_host is not None:
        desired = dataclasses.replace(desired, hosts={only_host: desired.hosts[only_host]})
    taken_at = now()
    with fleet_reconcile.connect(desired, read_only=True, workers=max(1, host_workers),
                                 timeout=host_timeout) as connections:
        unreachable = dict(connections.unreachable)
        answers = connections.look_at_each(
            lambda _name, hypervisor: snapshot.Snapshot(observe.collect(hypervisor), hostname=hypervisor.hostname(),
                                                        taken_at=taken_at),
            workers=host_workers, what="being observed")
        hosts = {}
        for name, answer in answers.items():
            if isinstance(answer, errors.KvmopsError):
                unreachable[name] = str(answer)
            else:
                hosts[name] = answer
    return snapshot.FleetSnapshot(hosts, unreachable, taken_at)


def to_json(taken: snapshot.Snapshot) -> str:
    """Return the file's text for one host's snapshot."""
    return json.dumps(snapshot.to_data(taken), indent=2) + "\n"


def fleet_to_json(taken: snapshot.FleetSnapshot) -> str:
    """Return the file's text for a fleet snapshot."""
    return json.dumps(snapshot.fleet_to_data(taken), indent=2) + "\n"


def read(path: str) -> snapshot.Snapshot:
    """Read one host's snapshot from ``path`` (``-``: stdin); a fleet snapshot is refused with what to do instead."""
    try:
        data = json.loads(_text(path))
        if snapshot.is_fleet(data):
            raise errors.KvmopsError(
                f"{path}: a fleet snapshot (every Host of a fleet), but the manifests declare no Host; plan the fleet's "
                "manifests against it, or export this host alone with `kvmops state export --connect URI`")
        return snapshot.from_data(data)
    except OSError as exc:
        raise errors.KvmopsError(f"{path}: cannot read the snapshot: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise errors.KvmopsError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}), so not a kvmops snapshot; "
            "export it again with `kvmops state export`"
        ) from exc
    except (ValueError, snapshot.SnapshotError) as exc:
        raise errors.KvmopsError(f"{path}: {exc}") from exc


def read_fleet(path: str) -> snapshot.FleetSnapshot:
    """Read a fleet snapshot from ``path`` (``-``: stdin); one host's snapshot is refused with what to do instead."""
    try:
        data = json.loads(_text(path))
    except OSError as exc:
        raise errors.KvmopsError(f"{path}: cannot read the snapshot: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise errors.KvmopsError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}), so not a kvmops snapshot") from exc
    if not snapshot.is_fleet(data):
        raise errors.KvmopsError(
            f"{path}: a snapshot of one host, but the manifests declare Hosts; export the fleet with "
            "`kvmops state export --manifests PATH`")
    try:
        return snapshot.fleet_from_data(data)
    except snapshot.SnapshotError as exc:
        raise errors.KvmopsError(f"{path}: {exc}") from exc


def _text(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
