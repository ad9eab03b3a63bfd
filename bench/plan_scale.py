"""Benchmark: how long a no-op ``plan`` takes for 100 and 1,000 VMs, and where the time goes.

What is measured
    ``reconcile.make_plan`` - the whole no-op plan: read and validate every manifest,
    observe libvirt, and plan - on libvirt's in-process test driver, after the VMs have
    been converged once.  The manifests are generated on the fly into a temporary
    directory, one file per VM (each VM: 1 vCPU, 64 MiB, one disk in pool ``default``,
    one NIC on network ``default``), the way a GitOps repository lays them out.  One
    ``Hypervisor`` opened on ``test:///<node.xml>`` is shared by the converge and every
    timed plan, because the test driver keeps its state inside that connection.

    Each size is timed over ``--reps`` repetitions (median and min are printed), then
    each stage of the pass is timed on its own, the same number of times:

      read           adapters.manifests.load    (find files, YAML -> documents)
      validate+build core.desired.build         (JSON Schema, defaults, VMSpecs)
      observe        runtime.observe.observe    (libvirt listing + XML parsing), split
                     into its libvirt calls (list_domains with XMLDesc, live_xml per
                     running domain, pools, volumes) and the rest (parsing the XML)
      plan_changes   core.planner.plan_changes  (pure diff)

    The breakdown's "growth/linear" column says, per stage, how much faster than the VM
    count it grows between the smallest and the largest size (1.00x = linear), which
    points at a superlinear stage even when other load blurs the totals.

    The test driver answers in-process, so "libvirt" here is the binding and XML
    formatting cost, not a daemon round trip: apply_real.py measures the real daemon.

Targets
    * 1,000 VMs: a no-op make_plan under 1 s (median) on this 2-core machine;
    * linear growth: median(1,000) <= 11 x median(100).
    When a target is missed, the largest size is profiled with cProfile and the top
    functions are printed (``--profile`` forces it, ``--no-profile`` skips it).

Usage (from the repository root)::

    .venv/bin/python bench/plan_scale.py [--sizes 100 1000] [--reps 7]

This is a benchmark: it prints numbers and exits 0 whether or not the targets are met
(1 only when the converge itself fails or the "no-op" plan is not empty).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402

from reconciler.adapters import hypervisor as hv  # noqa: E402
from reconciler.adapters import manifests  # noqa: E402
from reconciler.core import desired as desired_state  # noqa: E402
from reconciler.core import planner  # noqa: E402
from reconciler.runtime import observe, reconcile  # noqa: E402

TARGET_SECONDS_1000 = 1.0
TARGET_RATIO = 11.0
PREFIX = "kvmops-bench-"

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


def write_manifests(directory: Path, count: int) -> None:
    """Write ``count`` VirtualMachine manifests, one file per VM, under ``directory/vms``."""
    vms = directory / "vms"
    vms.mkdir(parents=True)
    for index in range(count):
        name = f"{PREFIX}{index:04d}"
        (vms / f"{name}.yaml").write_text(VM_MANIFEST.format(name=name), encoding="utf-8")


def timed(function: Callable[[], object], reps: int) -> tuple[list[float], object]:
    """Call ``function`` ``reps`` times; return the durations in seconds and the last result."""
    durations = []
    result = None
    for _ in range(reps):
        gc.collect()
        started = time.perf_counter()
        result = function()
        durations.append(time.perf_counter() - started)
    return durations, result


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


class Size:
    """One benchmark size: a test-driver host with ``count`` converged VMs."""

    def __init__(self, count: int, workdir: Path) -> None:
        self.count = count
        self.workdir = workdir
        self.path = str(workdir / "manifests")
        workdir.mkdir(parents=True)
        node = workdir / "node.xml"
        node.write_text(NODE_XML, encoding="utf-8")
        write_manifests(workdir / "manifests", count)
        self.hypervisor = hv.Hypervisor.open(f"test://{node}")
        self.settings = planner.Settings()
        self.stages: dict[str, list[float]] = {}
        self.total: list[float] = []
        self.converge_seconds = 0.0

    def converge(self) -> None:
        started = time.perf_counter()
        result = reconcile.apply(self.path, self.hypervisor, settings=self.settings)
        self.converge_seconds = time.perf_counter() - started
        if not result.converged:
            failures = [f"{o.name}: {o.error}" for o in result.report.failures][:5]
            raise SystemExit(f"converge of {self.count} VMs failed: {failures} {result.after and result.after.problems[:3]}")

    def plan(self) -> reconcile.PlanResult:
        return reconcile.make_plan(self.path, self.hypervisor, settings=self.settings)

    def measure(self, reps: int) -> None:
        self.plan()  # warm-up: schema compilation, imports, caches
        self.total, result = timed(self.plan, reps)
        if result.plan.has_changes or result.plan.problems:
            changed = [r.name for r in result.plan.changes][:5]
            raise SystemExit(f"the plan of {self.count} converged VMs is not empty: {changed} {result.plan.problems[:3]}")
        if len(result.actual.domains) != self.count:
            raise SystemExit(f"expected {self.count} domains, observed {len(result.actual.domains)}")

        h = self.hypervisor
        loaded = manifests.load(self.path)
        built = desired_state.build(loaded)
        actual = observe.observe(h)
        running = [name for name, d in actual.domains.items() if d.power.active]

        def libvirt_calls() -> None:
            h.host_info()
            h.list_domains()
            for name in running:
                h.live_xml(name)
            for pool in h.list_pools():
                if pool.active:
                    h.list_volumes(pool.name)

        stages: dict[str, Callable[[], object]] = {
            "read (YAML)": lambda: manifests.load(self.path),
            "validate+build": lambda: desired_state.build(loaded),
            "observe": lambda: observe.observe(h),
            "  libvirt calls": libvirt_calls,
            "  list_domains": h.list_domains,
            "  live_xml x running": lambda: [h.live_xml(name) for name in running],
            "plan_changes": lambda: planner.plan_changes(built, actual, settings=self.settings),
        }
        for label, function in stages.items():
            self.stages[label], _ = timed(function, reps)


def profile(size: Size, top: int) -> str:
    """Return cProfile's top functions of one make_plan, by own time and by cumulative time."""
    profiler = cProfile.Profile()
    gc.collect()
    profiler.enable()
    size.plan()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    out.write(f"\n--- cProfile of one make_plan, {size.count} VMs, by own time (tottime) ---\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write(f"\n--- cProfile of one make_plan, {size.count} VMs, by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="VM counts (default: 100 1000)")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per size and stage (default: 7)")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print (default: 25)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", action="store_true", help="profile the largest size even when targets are met")
    group.add_argument("--no-profile", action="store_true", help="never profile")
    args = parser.parse_args(argv)

    # kvmops logs every step of the converge; the benchmark only prints its own tables.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

    sizes: list[Size] = []
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        try:
            for count in sorted(set(args.sizes)):
                size = Size(count, Path(tmp, str(count)))
                sizes.append(size)
                print(f"{count} VMs: converging on the test driver...", flush=True)
                size.converge()
                print(f"{count} VMs: converged in {size.converge_seconds:.2f} s; timing {args.reps} no-op plans...",
                      flush=True)
                size.measure(args.reps)

            print()
            print(f"No-op make_plan on test:///<node.xml> (python {sys.version.split()[0]}, {args.reps} reps)")
            print(f"{'VMs':>6} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'ms/VM':>7}")
            for size in sizes:
                med = statistics.median(size.total)
                print(f"{size.count:>6} {ms(med):>10} {ms(min(size.total))} {ms(max(size.total))} "
                      f"{med * 1000 / size.count:7.3f}")

            print()
            print("Breakdown, median ms per stage (each stage timed on its own)")
            smallest, largest = sizes[0], sizes[-1]
            scale = largest.count / smallest.count

            def growth(small: float, large: float) -> str:
                # 1.0x: the stage grows linearly with the VM count; 2.0x: twice as fast as linear.
                return f"{large / small / scale:8.2f}x" if len(sizes) > 1 and small > 0 else ""

            header = f"{'stage':<22}" + "".join(f"{size.count:>10}" for size in sizes) + "   share   growth/linear"
            print(header)
            staged_total = sum(statistics.median(largest.stages[k]) for k in ("read (YAML)", "validate+build", "observe", "plan_changes"))
            for label in largest.stages:
                row = f"{label:<22}" + "".join(f"{statistics.median(size.stages[label]) * 1000:10.1f}" for size in sizes)
                share = "" if label.startswith(" ") else f"{statistics.median(largest.stages[label]) / staged_total:6.1%}"
                row += f"   {share:>6} {growth(statistics.median(smallest.stages[label]), statistics.median(largest.stages[label]))}"
                print(row)

            def parsing(size: Size) -> float:
                return statistics.median(size.stages["observe"]) - statistics.median(size.stages["  libvirt calls"])

            row = f"{'  observe - libvirt':<22}" + "".join(f"{parsing(s) * 1000:10.1f}" for s in sizes)
            print(row + f"   {'':>6} {growth(parsing(smallest), parsing(largest))}   (parsing XML into the model)")
            print(f"(share: of the largest size's staged total; growth/linear: ({largest.count} VMs / {smallest.count} VMs) "
                  f"/ {scale:g}, so 1.00x is linear and more means the stage grows faster than the VM count)")

            verdicts = []
            by_count = {s.count: s for s in sizes}
            missed = False
            if 1000 in by_count:
                med = statistics.median(by_count[1000].total)
                ok = med < TARGET_SECONDS_1000
                missed |= not ok
                verdicts.append(f"1,000 VMs median {med:.3f} s  (target < {TARGET_SECONDS_1000:.1f} s): {'MET' if ok else 'MISSED'}")
            if 100 in by_count and 1000 in by_count:
                ratio = statistics.median(by_count[1000].total) / statistics.median(by_count[100].total)
                ok = ratio <= TARGET_RATIO
                missed |= not ok
                verdicts.append(f"ratio 1000/100 = {ratio:.2f}x  (target <= {TARGET_RATIO:.0f}x): {'MET' if ok else 'MISSED'}")
                floor_ratio = min(by_count[1000].total) / min(by_count[100].total)
                verdicts.append(f"  (ratio of the minimums, less sensitive to other load: {floor_ratio:.2f}x)")
            for size in sizes:
                spread = max(size.total) / min(size.total)
                if spread > 1.25:
                    verdicts.append(f"note: {size.count} VMs varied {spread:.2f}x between runs (other load?); rerun to confirm")
            print()
            for size in sizes:
                print(f"converge (apply from nothing) of {size.count} VMs: {size.converge_seconds:.2f} s (one run, informational)")
            print()
            print("Targets")
            for verdict in verdicts:
                print("  " + verdict)

            if args.profile or (missed and not args.no_profile):
                print(profile(largest, args.top))
        finally:
            for size in sizes:
                size.hypervisor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
