"""Time moving the tiny guest between two lab hosts, and what kvmops adds on top of libvirt.

    sudo .venv/bin/python bench/migrate.py [--runs 5] [--mode live|live-copy-storage|offline] [--unpaused] [--name PREFIX]

Starts a two-host lab (:mod:`tests.e2e.labfleet`: private libvirtd daemons on this
machine), boots the tiny guest (:mod:`tests.e2e.tinyguest`, TCG, 128 MiB) on h1 with its
disk in the shared pool (``live``, ``offline``) or the local one (``live-copy-storage``),
and moves it back and forth ``--runs`` times through the executor, as a fleet plan
would (a ``MigrateDomain`` step).  For each move it reports:

* ``step``: the executor's time for the step (kvmops' checks before and after, the
  shared-storage probe, the migration itself);
* ``libvirt``: ``virDomainMigrateToURI3`` alone;
* ``kvmops``: the difference, what kvmops adds (the hand-over's resume included);
* ``stopped`` (live modes): how long the guest did not run, from libvirt pausing it on the
  source at the switch-over to its running on the destination, as two threads polling both
  hosts every millisecond see it. kvmops moves a running guest held paused
  (``VIR_MIGRATE_PAUSED``) and resumes it once the source has let go of it, so that it
  never runs on both hosts (docs/design.md, "The hand-over"); ``--unpaused`` moves it as
  libvirt does by default, to see what that costs.

Prints one line per move and a JSON summary (medians) last.  Removes the lab whatever happens.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.core import plan as plans  # noqa: E402
from tests.e2e import tinyguest  # noqa: E402
from tests.e2e.labfleet import move, tiny_vm, two_hosts, wait_for_uptime  # noqa: E402

LIBVIRT_MS = re.compile(r"by libvirt in (\d+) ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mode", choices=[m.value for m in plans.MigrationMode], default="live")
    parser.add_argument("--unpaused", action="store_true",
                        help="move as libvirt does by default: resumed on the destination before the source lets go")
    parser.add_argument("--name", default="kvmops-bench-migrate", help="the lab's name prefix (default: %(default)s)")
    args = parser.parse_args()
    mode = plans.MigrationMode(args.mode)
    guest = tinyguest.build()
    rows = []
    with two_hosts(f"{args.name}-{uuid.uuid4().hex[:6]}") as fleet:
        name = f"{fleet.prefix}-vm"
        pool = fleet.local if mode is plans.MigrationMode.LIVE_COPY_STORAGE else fleet.shared
        running = mode is not plans.MigrationMode.OFFLINE
        domain_uuid, _mac = tiny_vm(fleet, guest, "h1", name, pool, start=running)
        if running:
            wait_for_uptime(fleet.serial_log("h1", name), 3)
        here, there = "h1", "h2"
        for run in range(1, args.runs + 1):
            extra = {"held_paused": False} if args.unpaused else {}
            with Stopped(fleet.lab_host(here).uri, fleet.lab_host(there).uri, domain_uuid) as stopped:
                report = move(fleet, name, domain_uuid, mode, source=here, destination=there, **extra)
            outcome = report.outcomes[0]
            if not report.ok:
                print(f"run {run}: {here} -> {there} failed: {outcome.error}", file=sys.stderr)
                return 1
            step = outcome.steps[0]
            libvirt_ms = int(LIBVIRT_MS.search(step.detail).group(1))
            rows.append({"run": run, "from": here, "to": there, "step_ms": step.duration_ms, "libvirt_ms": libvirt_ms,
                         "kvmops_ms": step.duration_ms - libvirt_ms, "stopped_ms": stopped.ms})
            print(f"run {run}: {here} -> {there}: step {step.duration_ms} ms, libvirt {libvirt_ms} ms, "
                  f"kvmops {step.duration_ms - libvirt_ms} ms, guest stopped {stopped.ms} ms")
            if mode is plans.MigrationMode.LIVE_COPY_STORAGE:  # the disk left on the source: in the way of the move back
                fleet.hosts[here].delete_volume(pool, f"{name}-root.qcow2")
            here, there = there, here
    summary = {
        "mode": mode.value, "runs": len(rows),
        "median_step_ms": statistics.median(r["step_ms"] for r in rows),
        "median_libvirt_ms": statistics.median(r["libvirt_ms"] for r in rows),
        "median_kvmops_ms": statistics.median(r["kvmops_ms"] for r in rows),
        "max_kvmops_ms": max(r["kvmops_ms"] for r in rows),
        "held_paused": not args.unpaused and running,
        **({"median_stopped_ms": statistics.median(r["stopped_ms"] for r in rows),
            "max_stopped_ms": max(r["stopped_ms"] for r in rows)} if running else {}),
    }
    print(json.dumps(summary))
    return 0


class Stopped:
    """Poll a guest on its source and its destination every millisecond while it moves; ``ms`` is how long it did
    not run, from its first pause on the source to its first run on the destination (None offline)."""

    def __init__(self, source_uri: str, destination_uri: str, domain_uuid: str) -> None:
        self.uris = (source_uri, destination_uri)
        self.uuid = domain_uuid
        self.paused: float | None = None
        self.running: float | None = None
        self.ms: int | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=(uri, side), daemon=True)
                         for side, uri in enumerate(self.uris)]

    def __enter__(self) -> Stopped:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        time.sleep(0.05)
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        if self.paused is not None and self.running is not None:
            self.ms = round((self.running - self.paused) * 1000)

    def _poll(self, uri: str, side: int) -> None:
        connection = libvirt.openReadOnly(uri)
        try:
            while not self._stop.is_set():
                try:
                    state = connection.lookupByUUIDString(self.uuid).state()[0]
                except libvirt.libvirtError:
                    state = None
                now = time.monotonic()
                if side == 0 and state == libvirt.VIR_DOMAIN_PAUSED and self.paused is None:
                    self.paused = now
                if side == 1 and state == libvirt.VIR_DOMAIN_RUNNING and self.running is None:
                    self.running = now
                time.sleep(0.001)
        finally:
            connection.close()


if __name__ == "__main__":
    sys.exit(main())
