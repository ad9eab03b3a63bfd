"""Benchmark: a no-op plan of a fleet of simulated hosts (default 50 hosts x 200 VMs = 10,000 VMs).

What is measured
    Each host is libvirt's in-process test driver, its own ``test:///<node.xml>``
    connection (pool ``default`` and network ``default``, as in plan_scale.py).  One
    repository holds a Host manifest per host (``spec.uri`` its test-driver URI) and the
    VMs (1 vCPU, 64 MiB, one disk, one NIC, named ``kvmops-bench-fleet-hNN-vNNNN``), each
    pinned to its host (``placement.host``).  The fleet is converged once (a fleet plan,
    each host's plan executed on its connection), then its no-op plan is timed, the way a
    fleet pass runs: read and validate the repository once, observe every host on a thread
    pool, then :func:`reconciler.core.fleet.plan_fleet` (placement, then each host's plan):

      1 thread      the hosts observed one after the other
      threads       observed on a pool of ``--workers`` threads (bounded concurrency)
      cold          threads, after forgetting what earlier passes parsed (the YAML,
                    validation and domain-XML memos), the manifests read and then the
                    hosts observed, one after the other; warm is what the controller
                    pays every pass
      live          what a fresh live ``kvmops plan`` process pays besides its imports
                    (the test driver's hosts live in this process, so another cannot
                    see them): cold, but the hosts are looked at while a forked child
                    reads the manifests (``reconciler/runtime/early_look.py``), through
                    the very functions the command calls; CPU includes the child's
      fresh         a new process: ``kvmops plan DIR --state FLEET.json`` against a
                    fleet snapshot of the converged hosts (what a PR job runs: imports,
                    reading the snapshot and the manifests, interpreting 2 XMLs per
                    running VM, plan_fleet, printing), in wall and CPU seconds of it and
                    of the child it forks to interpret the snapshot meanwhile

    ``--profile FILE`` then profiles one more cold pass of the largest fleet, its hosts
    observed on the main thread (cProfile sees only the thread it runs on), writes the pstats
    data to FILE and prints the functions that cost the most in themselves.

    ``--fresh-live`` then writes the converged hosts back into their test-driver files
    (pools with their volumes, networks, domains) and times whole ``kvmops plan DIR``
    processes against them, the Hosts looked at while a child reads the manifests and,
    for comparison, in one process (another thread running keeps kvmops from forking); and
    a process that only opens the hosts: libvirt's test driver parses every domain of a
    host's file when it is opened, in the process that opens it, work a real host's
    libvirtd did long before.

    ``--per-host`` times the other way: a manifest directory and one
    ``reconcile.make_plan`` per host (no Host manifests), on the same pool.

    Wall and CPU seconds are printed (medians of ``--reps``): the machine is shared, and
    other load inflates wall time but not the CPU time this process spends.  Two fleet
    sizes are timed (``--fleets``, default 5x200 and 50x200) so that the growth with the
    VM count shows: "growth/linear" 1.00x means the cost grows exactly as the VM count.

    The test driver answers in-process, so there is no network round trip: threads
    overlap only libvirt's own calls (which release the GIL); with real hosts they also
    overlap the latency of every remote call, which is what the pool is for.

Targets
    * the whole fleet (50 x 200): a no-op plan under 5 s on this 2-core machine: the
      controller's pass (threads, warm), a fresh live ``kvmops plan`` (live) and a fresh
      ``kvmops plan --state`` process (which interprets the snapshot in a forked child
      while it reads the manifests);
    * linear: per-VM CPU time of the largest fleet at most 1.25x that of the smallest.

Usage (from the repository root)::

    .venv/bin/python bench/fleet_scale.py [--fleets 5x200 50x200] [--workers 8] [--reps 3] [--per-host] [--profile FILE]

This is a benchmark: it prints numbers and exits 0 whether or not the targets are met
(1 only when a converge fails or a "no-op" plan is not empty).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import logging
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt  # noqa: E402
import structlog  # noqa: E402

from reconciler.adapters import hypervisor as hv  # noqa: E402
from reconciler.core import fleet, memo, planner  # noqa: E402
from reconciler.core import snapshot  # noqa: E402
from reconciler.runtime import early_look, execute, fleet_reconcile, observe, reconcile, snapshots  # noqa: E402

from plan_scale import NODE_XML, VM_MANIFEST  # noqa: E402  (one host of the fleet is one host of plan_scale)

PREFIX = "kvmops-bench-fleet-"
TARGET_SECONDS = 5.0
TARGET_GROWTH = 1.25

HOST_MANIFEST = """\
---
apiVersion: kvmops/v1
kind: Host
metadata:
  name: {name}
  labels:
    rack: r{rack}
spec:
  uri: {uri}
  capacity:
    vcpus: 1024
    memory: 1TiB
"""

PLACED = "  placement:\n    host: {host}\n"

# kvmops in one process: another thread running keeps it from forking a child to read the manifests
ONE_PROCESS = ("import sys, threading; threading.Thread(target=threading.Event().wait, daemon=True).start(); "
               "from reconciler.cli import main; sys.exit(main(sys.argv[1:]))")
OPEN_ONLY = "import sys, libvirt; [libvirt.openReadOnly(uri) for uri in sys.argv[1:]]"


class Host:
    """One simulated hypervisor: its own test-driver connection (the driver keeps its state in it)."""

    def __init__(self, index: int, workdir: Path) -> None:
        self.name = f"h{index:02d}"
        workdir.mkdir(parents=True)
        node = workdir / "node.xml"
        node.write_text(NODE_XML, encoding="utf-8")
        self.uri = f"test://{node}"
        self.hypervisor: hv.Hypervisor | None = hv.Hypervisor.open(self.uri)

    def close(self) -> None:
        if self.hypervisor is not None:
            self.hypervisor.close()
            self.hypervisor = None


def forget_parsed() -> None:
    """Forget what earlier passes parsed, as a fresh process would have."""
    memo.forget_all()


def write_vms(directory: Path, names: list[str], host: str | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        text = VM_MANIFEST.format(name=name) + (PLACED.format(host=host) if host else "")
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")


class Fleet:
    """``hosts`` simulated hosts with ``vms`` VMs each, planned the fleet's way or host by host.

    ``fleet`` mode: one repository with a Host manifest per host and every VM pinned to its
    host (``placement.host``); a pass reads it once, observes every host on a thread pool
    and calls :func:`reconciler.core.fleet.plan_fleet`.  ``per-host`` mode: a manifest
    directory per host and one ``reconcile.make_plan`` per host, on the same thread pool.
    """

    def __init__(self, hosts: int, vms: int, workdir: Path, mode: str) -> None:
        self.label = f"{hosts}x{vms}"
        self.count = hosts * vms
        self.mode = mode
        self.settings = planner.Settings()
        self.hosts = [Host(index, workdir / f"h{index:02d}") for index in range(hosts)]
        names = {h.name: [f"{PREFIX}{h.name}-v{n:04d}" for n in range(vms)] for h in self.hosts}
        if mode == "fleet":
            self.path = str(workdir / "manifests")
            (workdir / "manifests" / "hosts").mkdir(parents=True)
            (workdir / "manifests" / "hosts" / "hosts.yaml").write_text("".join(
                HOST_MANIFEST.format(name=h.name, rack=index % 5, uri=h.uri) for index, h in enumerate(self.hosts)
            ), encoding="utf-8")
            for host in self.hosts:
                write_vms(workdir / "manifests" / "vms", names[host.name], host.name)
        else:
            self.paths = {h.name: str(workdir / f"manifests-{h.name}") for h in self.hosts}
            for host in self.hosts:
                write_vms(Path(self.paths[host.name]) / "vms", names[host.name], None)
        self.workdir = workdir
        self.timings: dict[str, list[float]] = {"sequential": [], "concurrent": [], "cold": [], "live": [], "fresh": []}
        self.cpu: dict[str, list[float]] = {key: [] for key in self.timings}  # CPU seconds of this process
        self.stages: dict[str, list[float]] = {}

    # --- the fleet's way ---------------------------------------------------------------

    def fleet_plan(self, workers: int) -> fleet.FleetPlan:
        """Plan the fleet, its hosts observed on a pool of ``workers`` threads (0: on this thread)."""
        with reconcile.gc_paused():
            started = time.perf_counter()
            desired = reconcile.load_desired(self.path)
            read = time.perf_counter()
            if workers:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    observed = dict(zip([h.name for h in self.hosts],
                                        pool.map(lambda h: observe.observe(h.hypervisor), self.hosts)))
            else:
                observed = {h.name: observe.observe(h.hypervisor) for h in self.hosts}
            looked = time.perf_counter()
            result = fleet.plan_fleet(desired, observed, self.settings)
            done = time.perf_counter()
        for stage, seconds in (("read+validate", read - started), ("observe (threads)", looked - read),
                               ("plan_fleet", done - looked)):
            self.stages.setdefault(stage, []).append(seconds)
        return result

    def live_plan(self, workers: int) -> fleet.FleetPlan:
        """Plan the fleet as a fresh live ``kvmops plan`` does: its hosts looked at while a forked child reads the manifests."""
        by_uri = {h.uri: h.hypervisor for h in self.hosts}

        def opener(uri: str, read_only: bool) -> hv.Hypervisor:
            kept = hv.Hypervisor(by_uri[uri]._connection, uri)  # noqa: SLF001
            kept.abandon()  # the test driver's hosts live in this process: the pass must not close them
            return kept
        with reconcile.gc_paused():
            desired, looked = early_look.read_while_looking(
                self.path, load=lambda: reconcile.load_desired(self.path), host_workers=workers, opener=opener)
            return fleet_reconcile.plan_live(desired, settings=self.settings, host_workers=workers, looked=looked,
                                             opener=opener).plan

    def _check_fleet(self, result: fleet.FleetPlan) -> None:
        changed = [(h.host, r.name) for h in result.hosts if h.plan is not None for r in h.plan.changes]
        problems = [*result.problems, *(p for h in result.hosts if h.plan is not None for p in h.plan.problems)]
        placed = sum(len(h.vms) for h in result.hosts)
        if changed or problems or result.unreachable or placed != self.count:
            raise SystemExit(f"{self.label}: the no-op fleet plan is not empty: {changed[:3]} {problems[:3]} "
                             f"unreachable {[h.host for h in result.unreachable]}, {placed} VMs placed")

    # --- host by host ------------------------------------------------------------------

    def host_plan(self, host: Host) -> float:
        started = time.perf_counter()
        result = reconcile.make_plan(self.paths[host.name], host.hypervisor, settings=self.settings)
        if result.plan.has_changes or result.plan.problems:
            raise SystemExit(f"host {host.name}: the no-op plan is not empty: {[r.name for r in result.plan.changes][:3]}")
        return time.perf_counter() - started

    # --- both --------------------------------------------------------------------------

    def converge(self, workers: int) -> float:
        started = time.perf_counter()
        by_name = {h.name: h for h in self.hosts}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            if self.mode == "fleet":
                planned = self.fleet_plan(workers)
                reports = list(pool.map(lambda hp: execute.execute(hp.plan, by_name[hp.host].hypervisor),
                                        [hp for hp in planned.hosts if hp.plan is not None and hp.plan.has_changes]))
                failures = [f"{o.name}: {o.error}" for report in reports for o in report.failures]
            else:
                results = list(pool.map(
                    lambda h: reconcile.apply(self.paths[h.name], h.hypervisor, settings=self.settings), self.hosts))
                failures = [f"{o.name}: {o.error}" for r in results for o in r.report.failures]
        if failures:
            raise SystemExit(f"{self.label}: converge failed: {failures[:3]}")
        self.stages.clear()
        return time.perf_counter() - started

    def plan(self, workers: int) -> float:
        """Plan the whole fleet once on ``workers`` threads; return the wall-clock seconds."""
        started = time.perf_counter()
        if self.mode == "fleet":
            self._check_fleet(self.fleet_plan(workers))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(self.host_plan, self.hosts))
        return time.perf_counter() - started

    def export(self) -> str:
        """Write a fleet snapshot of the converged hosts (``kvmops state export``'s file); return its path."""
        taken_at = snapshots.now()
        taken = snapshot.FleetSnapshot(
            {h.name: snapshot.Snapshot(observe.collect(h.hypervisor), hostname=h.name, taken_at=taken_at) for h in self.hosts},
            {}, taken_at)
        path = self.workdir / "fleet-state.json"
        path.write_text(snapshots.fleet_to_json(taken), encoding="utf-8")
        return str(path)

    def write_back(self) -> None:
        """Write each converged host into its test-driver file, so that another process opening its URI sees it."""
        for host in self.hosts:
            connection = host.hypervisor._connection  # noqa: SLF001
            parts = ["<node>"]
            for pool in connection.listAllStoragePools():
                volumes = "".join(volume.XMLDesc(0) for volume in pool.listAllVolumes())
                parts.append(pool.XMLDesc(0).replace("</pool>", volumes + "</pool>"))
            parts.extend(network.XMLDesc(0) for network in connection.listAllNetworks())
            # a domain in a test-driver file runs once the file is opened, as the converged ones do
            parts.extend(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for domain in connection.listAllDomains())
            parts.append("</node>")
            Path(host.uri.removeprefix("test://")).write_text("\n".join(parts), encoding="utf-8")

    def process(self, argv: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
        """Run ``argv`` in a new process; return its wall and CPU seconds (its children's included) and the result."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), done

    def measure_fresh_live(self, reps: int) -> None:
        """Time whole ``kvmops plan DIR`` processes against the hosts written back (:meth:`write_back`)."""
        self.write_back()
        plan = ["plan", self.path, "--detailed-exitcode", "--no-color"]
        for _ in range(reps):
            for key, argv in (("fresh live", [sys.executable, "-m", "reconciler", *plan]),
                              ("fresh live, one process", [sys.executable, "-c", ONE_PROCESS, *plan]),
                              ("opening the hosts only", [sys.executable, "-c", OPEN_ONLY, *(h.uri for h in self.hosts)])):
                wall, cpu, done = self.process(argv)
                if done.returncode != 0:
                    raise SystemExit(f"{self.label}: {key} exited {done.returncode} (0: no changes expected): "
                                     f"{(done.stderr or done.stdout)[-2000:]}")
                self.timings.setdefault(key, []).append(wall)
                self.cpu.setdefault(key, []).append(cpu)

    def fresh(self, state: str) -> tuple[float, float]:
        """Run ``kvmops plan`` in a new process against ``state``; return its wall and CPU seconds."""
        wall, cpu, done = self.process([sys.executable, "-m", "reconciler", "plan", self.path, "--state", state,
                                        "--detailed-exitcode", "--no-color"])
        if done.returncode != 0:
            raise SystemExit(f"{self.label}: kvmops plan --state exited {done.returncode} (0: no changes expected): "
                             f"{(done.stderr or done.stdout)[-2000:]}")
        return wall, cpu

    def measure(self, reps: int, workers: int) -> None:
        self.plan(workers)  # warm-up: schema compilation, imports, the memos of what the converge read
        self.stages.clear()
        state = self.export() if self.mode == "fleet" else None
        for _ in range(reps):
            if state is not None:
                wall, cpu = self.fresh(state)
                self.timings["fresh"].append(wall)
                self.cpu["fresh"].append(cpu)
            for key, threads in (("sequential", 1), ("concurrent", workers)):
                cpu = time.process_time()
                self.timings[key].append(self.plan(threads))
                self.cpu[key].append(time.process_time() - cpu)
            if self.mode == "fleet":  # before cold, whose pass leaves the memos as warm passes find them
                forget_parsed()
                cpu, children = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                self._check_fleet(self.live_plan(workers))
                self.timings["live"].append(time.perf_counter() - started)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                child = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
                if child <= 0:
                    raise SystemExit(f"{self.label}: the live pass forked no child (another thread ran?): "
                                     f"its row would time the one-process pass")
                self.cpu["live"].append(time.process_time() - cpu + child)
            forget_parsed()
            cpu = time.process_time()
            self.timings["cold"].append(self.plan(workers))
            self.cpu["cold"].append(time.process_time() - cpu)

    def profile(self, path: str, top: int = 25) -> str:
        """Profile one cold pass, its hosts observed on this thread; write the pstats data to ``path``.

        Return the ``top`` functions by the time spent in themselves, as pstats prints them.
        The pass's stage times are left out of the timed ones.
        """
        stages = copy.deepcopy(self.stages)
        forget_parsed()
        profiler = cProfile.Profile()
        profiler.enable()
        self._check_fleet(self.fleet_plan(0))
        profiler.disable()
        self.stages = stages
        profiler.dump_stats(path)
        shown = io.StringIO()
        pstats.Stats(profiler, stream=shown).sort_stats("tottime").print_stats(top)
        return shown.getvalue()

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
    parser.add_argument("--workers", type=int, default=8, help="hosts observed at once (default: 8)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (default: 3)")
    parser.add_argument("--profile", metavar="FILE",
                        help="profile one more cold pass of the largest fleet (on the main thread), write the pstats data "
                             "to FILE and print its costliest functions")
    parser.add_argument("--fresh-live", action="store_true",
                        help="also time whole `kvmops plan` processes against the largest fleet written back to its "
                             "test-driver files, with and without the child, and opening those hosts alone")
    parser.add_argument("--per-host", action="store_true",
                        help="plan host by host (a manifest directory and a make_plan each) instead of plan_fleet")
    args = parser.parse_args(argv)
    if args.profile and args.per_host:
        parser.error("--profile profiles a pass of the fleet's way; leave out --per-host")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    mode = "per-host" if args.per_host else "fleet"

    fleets: list[Fleet] = []
    profiled = ""
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        try:
            sizes = sorted(set(args.fleets), key=lambda t: parse_fleet(t)[0] * parse_fleet(t)[1])
            for text in sizes:
                hosts, vms = parse_fleet(text)
                sized = Fleet(hosts, vms, Path(tmp, text), mode)
                fleets.append(sized)
                print(f"{sized.label}: converging {sized.count} VMs on {hosts} test-driver hosts ({mode})...", flush=True)
                seconds = sized.converge(args.workers)
                print(f"{sized.label}: converged in {seconds:.1f} s; timing {args.reps} no-op plans...", flush=True)
                sized.measure(args.reps, args.workers)
                if args.profile and mode == "fleet" and text == sizes[-1]:
                    profiled = sized.profile(args.profile)
                if args.fresh_live and mode == "fleet" and text == sizes[-1]:
                    print(f"{sized.label}: writing the hosts back to their files; timing {args.reps} fresh live plans...",
                          flush=True)
                    sized.measure_fresh_live(args.reps)
                sized.close()  # the test driver's state goes with its connection: nothing is left behind

            print()
            how = "plan_fleet over one repository" if mode == "fleet" else "one make_plan per host"
            print(f"No-op plan of a fleet of test-driver hosts, {how} (python {sys.version.split()[0]}, "
                  f"{args.workers} workers, median of {args.reps})")
            header = (f"{'fleet':>8} {'VMs':>6} {'1 thread s':>11} {'threads s':>10} {'cold s':>8} {'live s':>8} "
                      f"{'fresh s':>8} {'ms/VM':>7}")
            print(header)

            def shown(values: list[float]) -> str:
                return f"{statistics.median(values):8.2f}" if values else f"{'-':>8}"
            for sized in fleets:
                median: Callable[[str], float] = lambda key, f=sized: statistics.median(f.timings[key])
                print(f"{sized.label:>8} {sized.count:>6} {median('sequential'):11.2f} {median('concurrent'):10.2f} "
                      f"{median('cold'):8.2f} {shown(sized.timings['live'])} {shown(sized.timings['fresh'])} "
                      f"{median('concurrent') * 1000 / sized.count:7.3f}")
            print("CPU seconds this process spent (all threads; live: and its child; fresh: the child process), which "
                  "other load on the machine does not inflate:")
            for sized in fleets:
                cpu: Callable[[str], float] = lambda key, f=sized: statistics.median(f.cpu[key])
                print(f"{sized.label:>8} {sized.count:>6} {cpu('sequential'):11.2f} {cpu('concurrent'):10.2f} "
                      f"{cpu('cold'):8.2f} {shown(sized.cpu['live'])} {shown(sized.cpu['fresh'])} "
                      f"{cpu('concurrent') * 1000 / sized.count:7.3f}")
            print("Fastest run (the quietest moment of a shared machine), wall seconds:")
            for sized in fleets:
                def fastest(key: str, f: Fleet = sized) -> str:
                    return f"{min(f.timings[key]):8.2f}" if f.timings[key] else f"{'-':>8}"
                print(f"{sized.label:>8} {sized.count:>6} {min(sized.timings['sequential']):11.2f} "
                      f"{min(sized.timings['concurrent']):10.2f} {min(sized.timings['cold']):8.2f} {fastest('live')} "
                      f"{fastest('fresh')}")
            if mode == "fleet":
                print("Stages of the fleet pass, median wall seconds over every timed pass (warm and cold together):")
                for sized in fleets:
                    print(f"{sized.label:>8} " + "  ".join(
                        f"{stage} {statistics.median(values):.2f}" for stage, values in sized.stages.items()))
            load = os.getloadavg()[0]
            print(f"(load average {load:.1f} on {os.cpu_count()} CPUs when done: above {os.cpu_count()}, "
                  "other processes shared the machine and inflated the wall times)")

            print()
            print("Targets")
            largest = fleets[-1]
            whole = statistics.median(largest.timings["concurrent"])
            verdict = "MET" if whole < TARGET_SECONDS else "MISSED"
            print(f"  {largest.label} ({largest.count} VMs) no-op fleet plan {whole:.2f} s "
                  f"(target < {TARGET_SECONDS:.0f} s): {verdict}")
            if largest.timings["live"]:
                live = statistics.median(largest.timings["live"])
                verdict = "MET" if live < TARGET_SECONDS else "MISSED"
                print(f"  {largest.label} ({largest.count} VMs) no-op fleet plan by a fresh live `kvmops plan` "
                      f"(less its imports) {live:.2f} s (target < {TARGET_SECONDS:.0f} s): {verdict}")
            if largest.timings["fresh"]:
                fresh = statistics.median(largest.timings["fresh"])
                verdict = "MET" if fresh < TARGET_SECONDS else "MISSED"
                print(f"  {largest.label} ({largest.count} VMs) no-op fleet plan by a fresh `kvmops plan --state` "
                      f"process {fresh:.2f} s (target < {TARGET_SECONDS:.0f} s): {verdict}")
            if len(fleets) > 1:
                smallest = fleets[0]
                for key in ("concurrent", "cold", "live", "fresh"):
                    if not smallest.cpu[key] or not largest.cpu[key]:
                        continue
                    per_vm_small = statistics.median(smallest.cpu[key]) / smallest.count
                    per_vm_large = statistics.median(largest.cpu[key]) / largest.count
                    growth = per_vm_large / per_vm_small
                    verdict = "MET" if growth <= TARGET_GROWTH else "MISSED"
                    print(f"  growth/linear of CPU time, {key} ({largest.label} vs {smallest.label}): {growth:.2f}x "
                          f"(target <= {TARGET_GROWTH:.2f}x): {verdict}")
            fresh_live = [key for key in ("fresh live", "fresh live, one process", "opening the hosts only")
                          if key in fleets[-1].timings]
            if fresh_live:
                print()
                print(f"Whole processes against {fleets[-1].label} written back to its test-driver files "
                      f"(`kvmops plan DIR`, imports included), median of {args.reps}:")
                for key in fresh_live:
                    print(f"  {key:<26} wall {statistics.median(fleets[-1].timings[key]):6.2f} s (fastest "
                          f"{min(fleets[-1].timings[key]):.2f})  CPU {statistics.median(fleets[-1].cpu[key]):6.2f} s")
                print("  (the test driver parses every domain of a host's file in the process that opens it: "
                      "the last line's work, done by each real host's libvirtd long before, is in the first two)")
            if profiled:
                print()
                print(f"One more cold pass of {fleets[-1].label}, hosts observed on the main thread, profiled "
                      f"(pstats data in {args.profile}); the functions that cost the most in themselves:")
                print(profiled.rstrip())
        finally:
            for sized in fleets:
                sized.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
