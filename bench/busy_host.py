"""Benchmark: how long a whole look at a busy libvirtd takes, and whether a fleet takes that host for unreachable.

What is measured (real libvirtd, ``qemu:///system``)

    ``--others`` (50) transient TCG guests (32 MiB, no disk, no NIC) are destroyed and
    created again in turn, as fast as ``--churn-threads`` (4) connections allow, by the
    churn process of bench/drift_under_churn.py. Their starts and destroys hold
    libvirtd's per-domain locks, which a whole-host listing (``listAllDomains``) waits for.
    After ``--warmup`` seconds of churn:

      look      ``observe.collect`` on a read-only connection, ``--looks`` times: what a
                pass (the controller's, or a command's) spends looking at that host
      fleet     ``kvmops plan`` of a fleet of one Host, this libvirtd through its socket
                (so with keepalives, as any remote Host), ``--plans`` times, with the
                default ``--host-timeout`` (10 s): its wall time, and whether it called the
                Host unreachable

    A busy libvirtd answers its keepalives while its calls are slow; a look bound to
    ``--host-timeout`` took it for a dead one whenever a look outlasted 10 s (1 run in 10
    before ``deadlines.look_timeout``).

Load
    The churn rate (destroys and creates per second) and the 1-minute load are printed.

Safety
    Every domain is named ``--prefix`` + ``other-NN`` (default ``kvmops-bench2-busy-``);
    the churn process destroys its own domains when it ends (its stdin closes, or this
    process dies), and every domain of the prefix is destroyed in a ``finally`` block.

Usage (from the repository root, as root)::

    .venv/bin/python bench/busy_host.py [--others 50] [--looks 12] [--plans 10]

A benchmark: it prints numbers and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from reconciler.adapters import hypervisor as hv  # noqa: E402
from reconciler.runtime import observe  # noqa: E402

from drift_under_churn import Churn  # noqa: E402  (the same churn, its own process)

URI = "qemu:///system"
SOCKET_URI = "qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock"


def sweep(prefix: str) -> int:
    """Destroy every (transient) domain named ``prefix``*; return how many there were."""
    removed = 0
    connection = libvirt.open(URI)
    try:
        for domain in connection.listAllDomains(0):
            if domain.name().startswith(prefix):
                with contextlib.suppress(libvirt.libvirtError):
                    if domain.isActive():
                        domain.destroy()
                    if domain.isPersistent():
                        domain.undefine()
                removed += 1
    finally:
        connection.close()
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--others", type=int, default=50, help="churning domains (default: 50)")
    parser.add_argument("--churn-threads", type=int, default=4, help="connections churning at once (default: 4)")
    parser.add_argument("--warmup", type=float, default=20, help="seconds of churn before measuring (default: 20)")
    parser.add_argument("--looks", type=int, default=12, help="whole looks timed (default: 12)")
    parser.add_argument("--plans", type=int, default=10, help="fleet plans run (default: 10)")
    parser.add_argument("--prefix", default="kvmops-bench2-busy-", help="name prefix (default: %(default)s)")
    args = parser.parse_args(argv)

    if sweep(args.prefix):
        print(f"removed domains an earlier run left under {args.prefix}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="kvmops-bench2-busy-"))
    (work / "manifests").mkdir()
    (work / "manifests" / "hosts.yaml").write_text(
        f"apiVersion: kvmops/v1\nkind: Host\nmetadata:\n  name: busy\nspec:\n  uri: {SOCKET_URI}\n", encoding="utf-8")
    churn = Churn(args.prefix, work, args.others, args.churn_threads)
    try:
        print(f"churning {args.others} guests for {args.warmup:g} s before measuring ...", flush=True)
        time.sleep(args.warmup)
        looks = []
        with hv.Hypervisor.open(URI, read_only=True) as hypervisor:
            for index in range(args.looks):
                started = time.perf_counter()
                observe.collect(hypervisor)
                looks.append(time.perf_counter() - started)
                print(f"look {index + 1}: {looks[-1]:.2f} s", flush=True)
        plans = []
        for index in range(args.plans):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "reconciler", "plan", str(work / "manifests"), "--no-color"],
                                  capture_output=True, text=True, cwd=REPOSITORY,
                                  env={**os.environ, "KVMOPS_STATE_DIR": str(work / "state")})
            took = time.perf_counter() - started
            unreachable = "unreachable" in done.stdout.rsplit("\n", 2)[-2] if done.stdout.strip() else True
            plans.append((took, done.returncode, unreachable))
            print(f"plan {index + 1}: {took:.1f} s, exit {done.returncode}"
                  + (": the Host was called unreachable" if unreachable else ""), flush=True)
        counters = churn.counters()
        rate = (counters["destroys"] + counters["creates"]) / max(1e-9, counters["now"] - counters["since"])
        print()
        print(f"churn: {rate:.1f} destroys+creates/s, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"whole look: median {statistics.median(looks):.2f} s, max {max(looks):.2f} s, "
              f"over 10 s (the default --host-timeout): {sum(look > 10 for look in looks)} of {len(looks)}")
        print(f"fleet plan: median {statistics.median(p[0] for p in plans):.1f} s, max {max(p[0] for p in plans):.1f} s, "
              f"Host called unreachable in {sum(p[2] for p in plans)} of {len(plans)}")
    finally:
        churn.stop()
        left = sweep(args.prefix)
        if left:
            print(f"cleanup: destroyed {left} domains the churn left", flush=True)
        with contextlib.suppress(OSError):
            for path in sorted(work.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            work.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
