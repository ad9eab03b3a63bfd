"""Time converging a fleet of lab hosts at once, against the sequential floor and the hosts one after another.

    .venv/bin/python bench/fleet_apply.py [--hosts 3] [--vms 10] [--runs 2] [--run-strategy Always|Halted]   # as root

Starts a lab of ``--hosts`` private libvirtd daemons (:mod:`tests.lab`), writes Host
manifests for them, a local pool and ``--vms`` VMs pinned to each host (TCG guests
without an operating system, 64 MiB, a 64 MiB qcow2 disk: QEMU really starts), then,
``--runs`` times:

* ``floor``: the sequential floor, as ``bench/apply_real.py`` has it for one host: the
  libvirt calls of converging as many VMs made directly, one after another, host after
  host (``bench/libvirt_floor.py``: per VM create its volume, define the domain, start
  it; the same domain XML less kvmops' metadata), in this process as kvmops runs here
  (not with ``--run-strategy Halted``: the floor starts its VMs);
* ``sequential``: apply the fleet one host at a time (``--host h1``, then ``h2``, ...),
  kvmops without parallelism across the hosts (but with its own on each);
* ``fleet``: one fleet apply, hosts side by side (what ``kvmops apply`` does);

removing every VM between them (an apply of the manifests without VMs,
``--allow-empty``; the floor's, which are not kvmops', directly). Each kvmops time covers
the whole pass: connect, observe, plan, execute, observe and plan again. Prints one line
per measurement and a JSON summary last (medians, and the ratios fleet / floor, the
target being at most 0.5, and fleet / sequential), and how busy the machine's CPUs were
meanwhile, with the CPU seconds each kind of process spent (QEMU, libvirtd, this process
where kvmops runs, everything else) and the wall time the machine's cores could not beat:
starting QEMU is CPU work, so when one host's apply already keeps every core busy the
hosts' parallelism cannot show. ``--run-strategy Halted`` defines the VMs and creates their
volumes without starting QEMU, which shows the parallelism of kvmops' and libvirtd's own
work. Removes the lab whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from reconciler import logconfig  # noqa: E402
from reconciler.core import planner  # noqa: E402
from reconciler.runtime import fleet_reconcile, reconcile  # noqa: E402
from tests import lab as labs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import apply_real  # noqa: E402
import libvirt_floor  # noqa: E402

DISK = "64MiB"  # as libvirt_floor.VOLUME_BYTES: the floor's VMs are these VMs


def write_manifests(directory: Path, lab: labs.Lab, prefix: str, vms: int, *, with_vms: bool = True,
                    run_strategy: str = "Always") -> None:
    names = [f"h{i}" for i in range(1, len(lab.hosts) + 1)]
    documents = [{"apiVersion": "kvmops/v1", "kind": "Host", "metadata": {"name": name},
                  "spec": {"uri": host.uri}} for name, host in zip(names, lab.hosts)]
    pool = pool_name(prefix)
    documents.append({"apiVersion": "kvmops/v1", "kind": "StoragePool", "metadata": {"name": pool},
                      "spec": {"path": f"/var/lib/libvirt/images/{pool}"}})
    for name in names if with_vms else ():
        for index in range(1, vms + 1):
            documents.append({
                "apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": f"{prefix}-{name}-vm{index:02d}"},
                "spec": {"memory": "64MiB", "virtType": "qemu", "placement": {"host": name}, "runStrategy": run_strategy,
                         "disks": [{"name": "root", "pool": pool, "size": DISK, "deletionPolicy": "Delete"}]},
            })
    (directory / "fleet.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")


def pool_name(prefix: str) -> str:
    return f"{prefix}-local"


def floor(lab: labs.Lab, prefix: str, vms: int) -> float:
    """Make the floor's libvirt calls for ``vms`` VMs on each host, host after host; return the seconds."""
    started = time.monotonic()
    for index, host in enumerate(lab.hosts, start=1):
        libvirt_floor.converge(host.uri, pool_name(prefix),
                               [f"{apply_real.FLOOR_VM}h{index}-vm{n:02d}" for n in range(1, vms + 1)])
    return time.monotonic() - started


def remove_floor(lab: labs.Lab, prefix: str) -> None:
    """Remove the floor's domains and volumes (not kvmops': it leaves them be), hosts side by side."""
    def remove_on(uri: str) -> None:
        connections = apply_real.Connections(uri, apply_real.TEARDOWN_CONNECTIONS)
        try:
            apply_real.remove_domains(connections, apply_real.FLOOR_VM, pool=pool_name(prefix))
        finally:
            connections.close()
    with ThreadPoolExecutor(max_workers=len(lab.hosts)) as hosts:
        list(hosts.map(remove_on, [host.uri for host in lab.hosts]))


def cpu_busy() -> tuple[int, int]:
    """Return the machine's (busy, total) CPU jiffies so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_by_process() -> dict[int, tuple[str, int, float]]:
    """Return each live process's (command, start time in ticks, CPU seconds so far), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        command, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        found[int(entry.name)] = (command, int(rest[19]), (int(rest[11]) + int(rest[12])) / TICKS)
    return found


def cpu_spent(before: dict[int, tuple[str, int, float]], after: dict[int, tuple[str, int, float]]) -> dict[str, float]:
    """Return CPU seconds spent between two :func:`cpu_by_process` readings: QEMU, libvirtd, this process, other.

    Processes that ended meanwhile are not counted (the bench's own kvmops work runs in
    this process, and the guests stay up until the reading after).
    """
    spent = {"qemu": 0.0, "libvirtd": 0.0, "kvmops": 0.0, "other": 0.0}
    for pid, (command, started, seconds) in after.items():
        earlier = before.get(pid)
        # the same process by its start time: a kernel worker renames itself, QEMU is libvirtd's child renamed
        used = seconds - (earlier[2] if earlier and earlier[1] == started else 0.0)
        kind = ("kvmops" if pid == os.getpid() else "qemu" if command.startswith("qemu-system")
                else "libvirtd" if command == "libvirtd" else "other")
        spent[kind] += used
    return spent


def describe_cpu(spent: dict[str, float], seconds: float) -> str:
    """Return the CPU a run used, and the floor the machine's cores put under its wall time."""
    total = sum(spent.values())
    cores = os.cpu_count() or 1
    parts = ", ".join(f"{kind} {value:.1f}" for kind, value in spent.items())
    return (f"CPU-s {total:.1f} ({parts}); {cores} cores cannot do that in under {total / cores:.2f} s, "
            f"{100 * total / cores / max(seconds, 1e-9):.0f}% of this run's wall time")


def converge(directory: Path, *, only_host: str | None = None, allow_empty: bool = False) -> tuple[float, bool]:
    """Apply the fleet at ``directory`` (one host, or all side by side); return (seconds, converged)."""
    started = time.monotonic()
    desired = reconcile.load_desired(str(directory))
    settings = planner.Settings(allow_empty=allow_empty, virt_type="qemu", shutdown_timeout=5)
    with fleet_reconcile.connect(desired, read_only=False) as connections:
        planned = fleet_reconcile.make_plan(desired, connections, settings=settings, only_host=only_host)
        if not planned.plan.has_changes:
            return time.monotonic() - started, True
        result = fleet_reconcile.apply(planned, connections)
    return time.monotonic() - started, result.converged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--vms", type=int, default=10, help="VMs per host (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--name", default="kvmops-bench-fleet", help="the lab's name prefix (default: %(default)s)")
    parser.add_argument("--run-strategy", default="Always", choices=("Always", "Halted"),
                        help="Always: QEMU starts every guest (CPU work); Halted: VMs and volumes are only defined, "
                             "what kvmops and libvirtd do without QEMU (default: %(default)s)")
    args = parser.parse_args()
    logconfig.configure(format="console", level="warning")
    prefix = f"{args.name}-{uuid.uuid4().hex[:6]}"
    lab = labs.Lab(prefix).start(args.hosts)
    sequential, parallel, floors = [], [], []
    try:
        directory = lab.directory / "manifests"
        directory.mkdir()
        hosts = [f"h{i}" for i in range(1, args.hosts + 1)]

        def clean() -> None:
            write_manifests(directory, lab, prefix, args.vms, with_vms=False)
            _seconds, ok = converge(directory, allow_empty=True)
            if not ok:
                raise SystemExit("removing the VMs did not converge")
            write_manifests(directory, lab, prefix, args.vms, run_strategy=args.run_strategy)

        clean()
        for run in range(1, args.runs + 1):
            per_host = []
            busy, total = cpu_busy()
            processes = cpu_by_process()
            for host in hosts:
                seconds, ok = converge(directory, only_host=host)
                if not ok:
                    raise SystemExit(f"run {run}: {host} alone did not converge")
                per_host.append(seconds)
            sequential.append(sum(per_host))
            busy_after, total_after = cpu_busy()
            print(f"run {run}: sequential {sum(per_host):.2f} s ({', '.join(f'{h} {s:.2f}' for h, s in zip(hosts, per_host))}), "
                  f"machine CPU busy {100 * (busy_after - busy) / max(1, total_after - total):.0f}%; "
                  f"{describe_cpu(cpu_spent(processes, cpu_by_process()), sum(per_host))}", flush=True)
            clean()
            busy, total = cpu_busy()
            processes = cpu_by_process()
            seconds, ok = converge(directory)
            busy_after, total_after = cpu_busy()
            spent = cpu_spent(processes, cpu_by_process())
            if not ok:
                raise SystemExit(f"run {run}: the fleet apply did not converge")
            parallel.append(seconds)
            print(f"run {run}: fleet {seconds:.2f} s, ratio to sequential {seconds / sum(per_host):.2f}, "
                  f"machine CPU busy {100 * (busy_after - busy) / max(1, total_after - total):.0f}%; "
                  f"{describe_cpu(spent, seconds)}", flush=True)
            clean()
            if args.run_strategy == "Always":  # the floor starts its VMs
                busy, total = cpu_busy()
                processes = cpu_by_process()
                floor_seconds = floor(lab, prefix, args.vms)
                busy_after, total_after = cpu_busy()
                floors.append(floor_seconds)
                print(f"run {run}: floor {floor_seconds:.2f} s, fleet / floor {seconds / floor_seconds:.2f}, "
                      f"machine CPU busy {100 * (busy_after - busy) / max(1, total_after - total):.0f}%; "
                      f"{describe_cpu(cpu_spent(processes, cpu_by_process()), floor_seconds)}", flush=True)
                remove_floor(lab, prefix)
    finally:
        lab.stop()
    summary = {
        "hosts": args.hosts, "vms_per_host": args.vms, "runs": args.runs, "run_strategy": args.run_strategy,
        "sequential_s": round(statistics.median(sequential), 2), "fleet_s": round(statistics.median(parallel), 2),
        "ratio_to_sequential": round(statistics.median(parallel) / statistics.median(sequential), 2),
    }
    if floors:
        summary.update({"floor_s": round(statistics.median(floors), 2),
                        "ratio_to_floor": round(statistics.median(parallel) / statistics.median(floors), 2),
                        "ratio_to_floor_per_run": [round(p / f, 2) for p, f in zip(parallel, floors)],
                        "target_ratio_to_floor": 0.5})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
