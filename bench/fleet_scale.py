"""Benchmark: a no-op plan of a fleet of simulated hosts (default 50 hosts x 200 VMs = 10,000 VMs).

What is measured
    Each host is libvirt's in-process test driver, its own ``test:///<node.xml>``
    connection (pool ``default`` and network ``default``, as in plan_scale.py), with its
    own manifest directory of VMs (1 vCPU, 64 MiB, one disk, one NIC, named
    ``kvmops-bench-fleet-hNN-vNNNN``), converged once.  Then the fleet's no-op plan is
    timed: one ``reconcile.make_plan`` per host - read and validate its manifests,
    observe its connection, plan - the code path each host of a fleet plan takes:

      sequential    the hosts one after the other; the sum of the per-host times
      concurrent    the hosts on a thread pool of ``--workers`` (bounded concurrency, as
                    the fleet runtime observes hosts), wall-clock time of the whole fleet
      cold          concurrent, after forgetting what earlier passes parsed (the YAML,
                    validation and domain-XML memos): what a fresh ``kvmops plan``
                    process pays; warm is what the controller pays every pass

    Every timing is the median of ``--reps`` repetitions.  Two fleet sizes are timed
    (``--fleets``, default 5x200 and 50x200) so that the growth with the VM count shows:
    "growth/linear" 1.00x means the cost grows exactly as the VM count.

    The test driver answers in-process, so there is no network round trip: threads
    overlap only libvirt's own calls (which release the GIL); with real hosts they also
    overlap the latency of every remote call, which is what the pool is for.

Targets
    * the whole fleet (50 x 200): a no-op plan under 5 s (concurrent, warm) on this 2-core machine;
    * linear: per-VM CPU time of the largest fleet at most 1.25x that of the smallest (CPU time,
      because other processes on a shared machine inflate wall time, not the work done).

    Until the fleet planner (``core/fleet.py``) exists, the fleet's plan is these per-host plans;
    once it does, :meth:`Fleet.concurrent` is the place to call it instead.

Usage (from the repository root)::

    .venv/bin/python bench/fleet_scale.py [--fleets 5x200 50x200] [--workers 8] [--reps 3]

This is a benchmark: it prints numbers and exits 0 whether or not the targets are met
(1 only when a converge fails or a "no-op" plan is not empty).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402

from reconciler.adapters import hypervisor as hv  # noqa: E402
from reconciler.adapters import manifests  # noqa: E402
from reconciler.core import actual, planner, validation  # noqa: E402
from reconciler.runtime import reconcile  # noqa: E402

PREFIX = "kvmops-bench-fleet-"
TARGET_SECONDS = 5.0
TARGET_GROWTH = 1.25

NODE_XML = """\
<node>
  <pool type='dir'>
    <name>default</name>
    <target><path>/var/lib/libvirt/images</path></target>
  </pool>
  <network>
    <name>default</name>
    <bridge name='virbr0'/>
    <forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'/>
  </network>
</node>
"""

VM_MANIFEST = """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels:
    app: bench
spec:
  vcpus: 1
  memory: 64MiB
  disks:
    - name: root
      pool: default
      size: 1GiB
  networks:
    - network: default
  console: serial
  graphics: none
  runStrategy: Always
"""


class Host:
    """One simulated hypervisor: a test-driver connection and the manifests of its VMs."""

    def __init__(self, index: int, vms: int, workdir: Path) -> None:
        self.name = f"h{index:02d}"
        self.vms = vms
        self.path = str(workdir / "manifests")
        directory = workdir / "manifests" / "vms"
        directory.mkdir(parents=True)
        for number in range(vms):
            name = f"{PREFIX}{self.name}-v{number:04d}"
            (directory / f"{name}.yaml").write_text(VM_MANIFEST.format(name=name), encoding="utf-8")
        node = workdir / "node.xml"
        node.write_text(NODE_XML, encoding="utf-8")
        self.hypervisor = hv.Hypervisor.open(f"test://{node}")
        self.settings = planner.Settings()

    def converge(self) -> None:
        result = reconcile.apply(self.path, self.hypervisor, settings=self.settings)
        if not result.converged:
            failures = [f"{o.name}: {o.error}" for o in result.report.failures][:3]
            raise SystemExit(f"host {self.name}: converge failed: {failures}")

    def close(self) -> None:
        if self.hypervisor is not None:
            self.hypervisor.close()
            self.hypervisor = None

    def plan(self) -> float:
        """Plan this host once; return the seconds it took.  Exits when the plan is not empty."""
        started = time.perf_counter()
        result = reconcile.make_plan(self.path, self.hypervisor, settings=self.settings)
        seconds = time.perf_counter() - started
        if result.plan.has_changes or result.plan.problems or len(result.actual.domains) != self.vms:
            changed = [r.name for r in result.plan.changes][:3]
            raise SystemExit(f"host {self.name}: the no-op plan is not empty: {changed} {result.plan.problems[:3]}")
        return seconds


def forget_parsed() -> None:
    """Forget what earlier passes parsed, as a fresh process would have."""
    manifests._PARSED.clear()
    validation._VALID_BODIES.clear()
    actual._READ.clear()


class Fleet:
    """``hosts`` simulated hosts with ``vms`` VMs each."""

    def __init__(self, hosts: int, vms: int, workdir: Path) -> None:
        self.label = f"{hosts}x{vms}"
        self.count = hosts * vms
        self.hosts = [Host(index, vms, workdir / f"h{index:02d}") for index in range(hosts)]
        self.timings: dict[str, list[float]] = {"sequential": [], "concurrent": [], "cold": []}
        self.cpu: dict[str, list[float]] = {key: [] for key in self.timings}  # CPU seconds of this process
        self.slowest_host: list[float] = []

    def converge(self, workers: int) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(Host.converge, self.hosts))
        return time.perf_counter() - started

    def concurrent(self, workers: int) -> tuple[float, list[float]]:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            per_host = list(pool.map(Host.plan, self.hosts))
        return time.perf_counter() - started, per_host

    def measure(self, reps: int, workers: int) -> None:
        for host in self.hosts:
            host.plan()  # warm-up: schema compilation, imports
        for _ in range(reps):
            cpu = time.process_time()
            self.timings["sequential"].append(sum(host.plan() for host in self.hosts))
            self.cpu["sequential"].append(time.process_time() - cpu)
            cpu = time.process_time()
            wall, per_host = self.concurrent(workers)
            self.cpu["concurrent"].append(time.process_time() - cpu)
            self.timings["concurrent"].append(wall)
            self.slowest_host.append(max(per_host))
            forget_parsed()
            cpu = time.process_time()
            self.timings["cold"].append(self.concurrent(workers)[0])
            self.cpu["cold"].append(time.process_time() - cpu)

    def close(self) -> None:
        for host in self.hosts:
            host.close()


def parse_fleet(text: str) -> tuple[int, int]:
    hosts, _, vms = text.partition("x")
    return int(hosts), int(vms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleets", nargs="+", default=["5x200", "50x200"], type=str,
                        help="fleet sizes as HOSTSxVMS (default: 5x200 50x200)")
    parser.add_argument("--workers", type=int, default=8, help="hosts planned at once (default: 8)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (default: 3)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

    fleets: list[Fleet] = []
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        try:
            for text in sorted(set(args.fleets), key=lambda t: parse_fleet(t)[0] * parse_fleet(t)[1]):
                hosts, vms = parse_fleet(text)
                fleet = Fleet(hosts, vms, Path(tmp, text))
                fleets.append(fleet)
                print(f"{fleet.label}: converging {fleet.count} VMs on {hosts} test-driver hosts...", flush=True)
                seconds = fleet.converge(args.workers)
                print(f"{fleet.label}: converged in {seconds:.1f} s; timing {args.reps} no-op fleet plans...", flush=True)
                fleet.measure(args.reps, args.workers)
                fleet.close()  # the test driver's state goes with its connection: nothing is left behind

            print()
            print(f"No-op plan of a fleet of test-driver hosts (python {sys.version.split()[0]}, "
                  f"{args.workers} workers, median of {args.reps})")
            print(f"{'fleet':>8} {'VMs':>6} {'sequential s':>13} {'concurrent s':>13} {'cold s':>8} "
                  f"{'slowest host s':>15} {'ms/VM':>7}")
            for fleet in fleets:
                median: Callable[[str], float] = lambda key, f=fleet: statistics.median(f.timings[key])
                print(f"{fleet.label:>8} {fleet.count:>6} {median('sequential'):13.2f} {median('concurrent'):13.2f} "
                      f"{median('cold'):8.2f} {statistics.median(fleet.slowest_host):15.2f} "
                      f"{median('concurrent') * 1000 / fleet.count:7.3f}")
            print("CPU seconds this process spent (all threads), which other load on the machine does not inflate:")
            for fleet in fleets:
                cpu: Callable[[str], float] = lambda key, f=fleet: statistics.median(f.cpu[key])
                print(f"{fleet.label:>8} {fleet.count:>6} {cpu('sequential'):13.2f} {cpu('concurrent'):13.2f} "
                      f"{cpu('cold'):8.2f} {'':>15} {cpu('concurrent') * 1000 / fleet.count:7.3f}")
            load = os.getloadavg()[0]
            print(f"(load average {load:.1f} on {os.cpu_count()} CPUs when done: wall times above "
                  f"{os.cpu_count()} mean other processes shared the machine)")

            print()
            print("Targets")
            largest = fleets[-1]
            whole = statistics.median(largest.timings["concurrent"])
            verdict = "MET" if whole < TARGET_SECONDS else "MISSED"
            print(f"  {largest.label} ({largest.count} VMs) no-op fleet plan {whole:.2f} s "
                  f"(target < {TARGET_SECONDS:.0f} s): {verdict}")
            if len(fleets) > 1:
                smallest = fleets[0]
                for key in ("concurrent", "cold"):
                    per_vm_small = statistics.median(smallest.cpu[key]) / smallest.count
                    per_vm_large = statistics.median(largest.cpu[key]) / largest.count
                    growth = per_vm_large / per_vm_small
                    verdict = "MET" if growth <= TARGET_GROWTH else "MISSED"
                    print(f"  growth/linear of CPU time, {key} ({largest.label} vs {smallest.label}): {growth:.2f}x "
                          f"(target <= {TARGET_GROWTH:.2f}x): {verdict}")
        finally:
            for fleet in fleets:
                fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
