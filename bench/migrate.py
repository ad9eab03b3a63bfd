"""Time moving the tiny guest between two lab hosts, and what kvmops adds on top of libvirt.

    sudo .venv/bin/python bench/migrate.py [--runs 5] [--mode live|live-copy-storage|offline] [--name PREFIX]

Starts a two-host lab (:mod:`tests.e2e.labfleet`: private libvirtd daemons on this
machine), boots the tiny guest (:mod:`tests.e2e.tinyguest`, TCG, 128 MiB) on h1 with its
disk in the shared pool (``live``, ``offline``) or the local one (``live-copy-storage``),
and moves it back and forth ``--runs`` times through the executor, as a fleet plan
would (a ``MigrateDomain`` step).  For each move it reports:

* ``step``: the executor's time for the step (kvmops' checks before and after, the
  shared-storage probe, the migration itself);
* ``libvirt``: ``virDomainMigrateToURI3`` alone;
* ``kvmops``: the difference, what kvmops adds.

Prints one line per move and a JSON summary (medians) last.  Removes the lab whatever happens.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.core import plan as plans  # noqa: E402
from tests.e2e import tinyguest  # noqa: E402
from tests.e2e.labfleet import move, tiny_vm, two_hosts, wait_for_uptime  # noqa: E402

LIBVIRT_MS = re.compile(r"by libvirt in (\d+) ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mode", choices=[m.value for m in plans.MigrationMode], default="live")
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
            report = move(fleet, name, domain_uuid, mode, source=here, destination=there)
            outcome = report.outcomes[0]
            if not report.ok:
                print(f"run {run}: {here} -> {there} failed: {outcome.error}", file=sys.stderr)
                return 1
            step = outcome.steps[0]
            libvirt_ms = int(LIBVIRT_MS.search(step.detail).group(1))
            rows.append({"run": run, "from": here, "to": there, "step_ms": step.duration_ms, "libvirt_ms": libvirt_ms,
                         "kvmops_ms": step.duration_ms - libvirt_ms})
            print(f"run {run}: {here} -> {there}: step {step.duration_ms} ms, libvirt {libvirt_ms} ms, "
                  f"kvmops {step.duration_ms - libvirt_ms} ms")
            if mode is plans.MigrationMode.LIVE_COPY_STORAGE:  # the disk left on the source: in the way of the move back
                fleet.hosts[here].delete_volume(pool, f"{name}-root.qcow2")
            here, there = there, here
    summary = {
        "mode": mode.value, "runs": len(rows),
        "median_step_ms": statistics.median(r["step_ms"] for r in rows),
        "median_libvirt_ms": statistics.median(r["libvirt_ms"] for r in rows),
        "median_kvmops_ms": statistics.median(r["kvmops_ms"] for r in rows),
        "max_kvmops_ms": max(r["kvmops_ms"] for r in rows),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
