"""Benchmark: ``kvmops apply`` and a no-op ``kvmops plan`` on a real libvirtd, against a floor.

What is measured (wall time of whole processes, on ``qemu:///system``)
    converge  ``kvmops apply`` of ``--vms`` VMs from nothing: each VM 64 MiB, 1 vCPU,
              ``virtType: qemu`` (TCG), one 64 MiB qcow2 volume, serial console, no NIC,
              ``runStrategy: Always`` (so it is started).  One manifest file per VM.
    no-op     ``kvmops plan --detailed-exitcode`` of those converged VMs (must exit 0:
              nothing to do), repeated ``--plan-runs`` times per round.
    floor     the same libvirt calls made directly with libvirt-python in one sequential
              loop, for as many other VMs: per VM ``storagePool.createXML`` (the same
              volume XML), ``defineXML`` (the domain XML kvmops renders, without its
              metadata) and ``create``.  Run as a whole process too
              (bench/libvirt_floor.py, which imports nothing but libvirt and the
              smallest stdlib modules), so both sides pay interpreter start-up and
              connecting; the loop's own time is reported beside it.
    read floor  interleaved with the no-op plans: a process making the read-only libvirt
              calls of one kvmops observation (``libvirt_floor.py observe``), so the
              plan's figure can be told apart from libvirtd being slow under other load.
    Every round (``--runs``) does a converge and a floor from nothing, in alternating
    order, each followed by a teardown that is not timed, so both start from the same
    machine state; ratios are taken per round and their median is reported.

Targets
    * converge: kvmops apply / floor process <= 1.0x (median over rounds);
    * no-op plan: median wall time < 0.5 s.
    When the plan target is missed, one plan process is profiled with cProfile and the
    top functions are printed (``--profile`` forces it), with the import-time share.

Safety
    Every libvirt object and directory is named ``kvmops-bench-*`` (pool directory under
    /var/tmp, mode 0755 so QEMU can read the images).  ``kvmops`` runs with
    ``--no-prune``, so it never plans anything for other people's domains (other
    engineers run ``kvmops-e2e-*`` objects on the same daemon).  Leftovers of the prefix
    are swept at start, and everything is removed in a ``finally`` block: domains
    destroyed concurrently (several connections, because libvirtd serves only five calls
    at a time per client), undefined, volumes deleted, the pool stopped and undefined,
    its directory deleted.  Nothing outside the prefix is ever touched.

Bytecode
    The measured processes get a warm private ``PYTHONPYCACHEPREFIX`` (removed at the
    end), as an installed kvmops has its .pyc files; on a machine with
    ``PYTHONDONTWRITEBYTECODE=1`` every run would otherwise recompile kvmops' modules.
    ``--no-bytecode-cache`` measures the environment as it is; the report shows both
    import times.

Usage (from the repository root, as a user who may manage qemu:///system)::

    .venv/bin/python bench/apply_real.py [--vms 20] [--runs 3] [--plan-runs 5]
    .venv/bin/python bench/apply_real.py --cleanup-only   # after a crash or kill -9

A benchmark: it prints tables and exits 0 whether or not the targets are met (1 when a
converge fails or the no-op plan is not empty).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt

REPO = Path(__file__).resolve().parents[1]
URI = os.environ.get("KVMOPS_BENCH_URI", "qemu:///system")
PREFIX = "kvmops-bench-"
POOL = f"{PREFIX}pool"
WORK_ROOT = Path("/var/tmp")
WORKDIR = WORK_ROOT / f"{PREFIX}work"
POOL_PATH = WORKDIR / "pool"
KVMOPS_VM = f"{PREFIX}vm-"
FLOOR_VM = f"{PREFIX}floor-"
FLOOR_SCRIPT = Path(__file__).resolve().with_name("libvirt_floor.py")
TARGET_RATIO = 1.0
TARGET_PLAN_SECONDS = 0.5
TEARDOWN_CONNECTIONS = 4  # libvirtd's max_client_requests is 5 per connection

libvirt.registerErrorHandler(lambda _context, _error: None, None)

VM_MANIFEST = """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  vcpus: 1
  memory: 64MiB
  virtType: qemu
  disks:
    - name: root
      pool: {pool}
      size: 64MiB
  console: serial
  graphics: none
  runStrategy: Always
"""


def vm_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index:02d}" for index in range(count)]


# --- libvirt housekeeping (prefix only) -------------------------------------------------


class Connections:
    """A few connections to spread concurrent calls over (libvirtd caps calls per client)."""

    def __init__(self, uri: str, count: int) -> None:
        self.uri = uri
        self.items = [libvirt.open(uri) for _ in range(count)]

    def refresh(self, *, wait: float = 60.0) -> None:
        """Replace connections that died (libvirtd restarted by someone), retrying for ``wait`` seconds."""
        deadline = time.monotonic() + wait
        for index, connection in enumerate(self.items):
            try:
                if connection.isAlive():
                    continue
            except libvirt.libvirtError:
                pass
            while True:
                try:
                    self.items[index] = libvirt.open(self.uri)
                    break
                except libvirt.libvirtError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1.0)

    def map(self, function: Callable[[libvirt.virConnect, str], None], names: Iterable[str]) -> None:
        names = list(names)
        if not names:
            return
        lock = threading.Lock()
        counter = iter(range(len(names)))

        def run(name: str) -> None:
            with lock:
                index = next(counter)
            function(self.items[index % len(self.items)], name)

        with ThreadPoolExecutor(max_workers=min(len(names), 5 * len(self.items))) as executor:
            list(executor.map(run, names))

    def close(self) -> None:
        for connection in self.items:
            try:
                connection.close()
            except libvirt.libvirtError:
                pass


def _ours(name: str, prefix: str) -> bool:
    return name.startswith(PREFIX) and name.startswith(prefix)


def remove_domains(connections: Connections, prefix: str, *, pool: str = POOL) -> int:
    """Destroy (concurrently) and undefine every domain named ``prefix*``; delete its volumes in ``pool``."""
    main = connections.items[0]
    names = [d.name() for d in main.listAllDomains(0) if _ours(d.name(), prefix)]

    def destroy(connection: libvirt.virConnect, name: str) -> None:
        try:
            domain = connection.lookupByName(name)
            if domain.isActive():
                domain.destroy()
        except libvirt.libvirtError:
            pass

    def undefine(connection: libvirt.virConnect, name: str) -> None:
        try:
            domain = connection.lookupByName(name)
            try:
                domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            except libvirt.libvirtError:
                domain.undefine()
        except libvirt.libvirtError:
            pass

    connections.map(destroy, names)
    connections.map(undefine, names)
    volumes: list[str] = []
    try:
        storage = main.storagePoolLookupByName(pool)
        if storage.isActive():
            storage.refresh(0)
            volumes = [v.name() for v in storage.listAllVolumes(0) if _ours(v.name(), prefix)]
    except libvirt.libvirtError:
        pass

    def delete(connection: libvirt.virConnect, name: str) -> None:
        try:
            connection.storagePoolLookupByName(pool).storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError:
            pass

    connections.map(delete, volumes)
    return len(names)


def remove_everything(connections: Connections) -> None:
    """Remove every ``kvmops-bench-*`` domain, volume, pool and work directory."""
    remove_domains(connections, PREFIX)
    main = connections.items[0]
    for pool in main.listAllStoragePools(0):
        if not pool.name().startswith(PREFIX):
            continue
        try:
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)
            for volume in pool.listAllVolumes(0):
                volume.delete(0)
        except libvirt.libvirtError:
            pass
        try:
            if pool.isActive():
                pool.destroy()
        except libvirt.libvirtError:
            pass
        try:
            pool.undefine()
        except libvirt.libvirtError:
            pass
    for stale in glob.glob(str(WORK_ROOT / f"{PREFIX}*")):
        shutil.rmtree(stale, ignore_errors=True)


def create_pool(connection: libvirt.virConnect) -> None:
    """Define, build and start the benchmark's dir pool under /var/tmp, readable by QEMU."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    os.chmod(WORKDIR, 0o755)
    xml = f"<pool type='dir'><name>{POOL}</name><target><path>{POOL_PATH}</path></target></pool>"
    pool = connection.storagePoolDefineXML(xml, 0)
    pool.build(0)
    os.chmod(POOL_PATH, 0o755)
    pool.create(0)


def active_domains(connection: libvirt.virConnect, prefix: str) -> int:
    return sum(1 for d in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE) if _ours(d.name(), prefix))


def foreign_running(connection: libvirt.virConnect) -> int:
    """Return how many domains outside our prefix are running (other people's load)."""
    return sum(1 for d in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE) if not d.name().startswith(PREFIX))


def load1() -> float:
    return os.getloadavg()[0]


# --- the measured processes --------------------------------------------------------------


def kvmops_argv() -> list[str]:
    script = Path(sys.executable).with_name("kvmops")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reconciler"]


# Where the measured processes keep their bytecode (.pyc).  An installed kvmops has its
# .pyc files; this checkout may have none (PYTHONDONTWRITEBYTECODE is set on some dev
# machines), and compiling every module on every run would be measured instead of kvmops.
# A private PYTHONPYCACHEPREFIX gives the processes a warm cache without writing anything
# into the source tree.  None: leave the environment as it is (--no-bytecode-cache).
PYCACHE: dict[str, str | None] = {"prefix": None}


def process_env(*, bytecode_cache: bool = True) -> dict[str, str]:
    """Return the environment of a measured process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KVMOPS_CONNECT", None)
    # apply holds a per-host lock under the state directory: a private one, so that the
    # benchmark never waits for (or fails on) another engineer's apply or controller.
    env["KVMOPS_STATE_DIR"] = str(WORKDIR / "state")
    if bytecode_cache and PYCACHE["prefix"]:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE["prefix"]
    return env


def run_timed(argv: list[str], *, timeout: float = 600, bytecode_cache: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    env = process_env(bytecode_cache=bytecode_cache)
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    return time.perf_counter() - started, result


def kvmops_step_times(stderr: str, started: float, finished: float) -> tuple[dict[str, float], dict[str, float]]:
    """Return, from kvmops' JSON log lines, seconds per step kind (busy time, summed over
    the workers) and the phases of the process on the wall clock: ``before`` the first
    step (start-up, imports, first plan), ``steps`` (first step start to last step end)
    and ``after`` (the verifying observation and plan, the report, exit).

    ``started``/``finished`` are the process' wall-clock (``time.time()``) bounds.
    """
    events = {"volume_created": "create volume", "domain_defined": "define domain", "domain_started": "start domain"}
    spent: dict[str, float] = {}
    first = last = None
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or "duration_ms" not in record or "action" not in record:
            continue
        label = events.get(record.get("event"), record.get("event"))
        duration = record["duration_ms"] / 1000
        spent[label] = spent.get(label, 0.0) + duration
        try:
            end = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError, AttributeError):
            continue
        first = end - duration if first is None else min(first, end - duration)
        last = end if last is None else max(last, end)
    phases = {}
    if first is not None:
        phases = {"before": first - started, "steps": last - first, "after": finished - last}
    return spent, phases


def fail(message: str, result: subprocess.CompletedProcess | None = None) -> SystemExit:
    if result is not None:
        message += f"\n--- exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    return SystemExit(message)


class Bench:
    def __init__(self, args: argparse.Namespace, manifests: Path) -> None:
        self.args = args
        self.manifests = manifests
        self.connections = Connections(URI, TEARDOWN_CONNECTIONS)
        self.rounds: list[dict] = []
        self.plans: list[float] = []
        self.plan_loads: list[float] = []
        self.read_floors: list[float] = []
        self.read_floor_calls: list[float] = []

    @property
    def main(self) -> libvirt.virConnect:
        return self.connections.items[0]

    def planning_args(self) -> list[str]:
        return [str(self.manifests), "--connect", URI, "--no-prune", "--no-color"]

    def converge_kvmops(self, record: dict) -> None:
        record["load_kvmops"] = load1()
        argv = [*kvmops_argv(), "--log-format", "json", "apply", *self.planning_args()]
        if self.args.parallel:
            argv += ["--parallel", str(self.args.parallel)]
        wall_started = time.time()
        seconds, result = run_timed(argv)
        wall_finished = time.time()
        if result.returncode != 0:
            raise fail("kvmops apply did not converge", result)
        running = active_domains(self.main, KVMOPS_VM)
        if running != self.args.vms:
            raise fail(f"kvmops apply exited 0 but {running} of {self.args.vms} VMs run", result)
        record["kvmops_s"] = seconds
        record["kvmops_calls"], record["kvmops_phases"] = kvmops_step_times(result.stderr, wall_started, wall_finished)

    def noop_plans(self) -> None:
        time.sleep(self.args.settle)  # let the fresh TCG guests get through their firmware
        argv = [*kvmops_argv(), "--log-format", "json", "plan", *self.planning_args(), "--detailed-exitcode"]
        floor = [sys.executable, str(FLOOR_SCRIPT), "observe", URI]
        for index in range(self.args.plan_runs):
            for which in (("plan", "floor") if index % 2 == 0 else ("floor", "plan")):
                if which == "plan":
                    self.plan_loads.append(load1())
                    seconds, result = run_timed(argv)
                    if result.returncode != 0:
                        raise fail("the plan of the converged VMs is not a no-op (expected exit 0)", result)
                    self.plans.append(seconds)
                else:
                    seconds, result = run_timed(floor)
                    if result.returncode != 0:
                        raise fail("the read floor failed", result)
                    self.read_floors.append(seconds)
                    self.read_floor_calls.append(json.loads(result.stdout.strip().splitlines()[-1])["calls_s"])

    def converge_floor(self, record: dict) -> None:
        record["load_floor"] = load1()
        argv = [sys.executable, str(FLOOR_SCRIPT), "converge", URI, POOL, *vm_names(FLOOR_VM, self.args.vms)]
        seconds, result = run_timed(argv)
        if result.returncode != 0:
            raise fail("the floor failed", result)
        running = active_domains(self.main, FLOOR_VM)
        if running != self.args.vms:
            raise fail(f"the floor ran but {running} of {self.args.vms} VMs run", result)
        record["floor_s"] = seconds
        record.update({f"floor_{k}": v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()})

    def teardown(self, prefix: str) -> float:
        started = time.perf_counter()
        self.connections.refresh()
        remove_domains(self.connections, prefix)
        return time.perf_counter() - started

    def run(self) -> None:
        for index in range(self.args.runs):
            record: dict = {"round": index + 1, "foreign": foreign_running(self.main)}
            order = ("kvmops", "floor") if index % 2 == 0 else ("floor", "kvmops")
            record["order"] = " then ".join(order)
            for phase in order:
                if phase == "kvmops":
                    self.converge_kvmops(record)
                    print(f"  round {index + 1}: kvmops apply {record['kvmops_s']:.2f} s; no-op plans...", flush=True)
                    self.noop_plans()
                    record["teardown_kvmops_s"] = self.teardown(KVMOPS_VM)
                else:
                    self.converge_floor(record)
                    print(f"  round {index + 1}: floor {record['floor_s']:.2f} s", flush=True)
                    record["teardown_floor_s"] = self.teardown(FLOOR_VM)
            self.rounds.append(record)

    def close(self) -> None:
        self.connections.close()


def import_time(runs: int, *, bytecode_cache: bool = True) -> float:
    """Return the median wall time of starting Python and importing the kvmops CLI."""
    times = []
    for _ in range(runs):
        seconds, _ = run_timed([sys.executable, "-c", "import reconciler.cli"], bytecode_cache=bytecode_cache)
        times.append(seconds)
    return statistics.median(times)


def warm_bytecode_cache() -> None:
    """Compile what the measured processes import into the private bytecode cache."""
    if PYCACHE["prefix"]:
        run_timed([sys.executable, "-c", "import reconciler.cli, libvirt, json"])
        run_timed([sys.executable, str(FLOOR_SCRIPT), "usage"])


def profile_plan(bench: Bench, top: int) -> str:
    """Return cProfile's top functions of one whole ``kvmops plan`` process."""
    with tempfile.NamedTemporaryFile(prefix=PREFIX, suffix=".prof", delete=False) as handle:
        target = handle.name
    try:
        argv = [sys.executable, "-m", "cProfile", "-o", target, "-m", "reconciler", "--log-format", "json",
                "plan", *bench.planning_args()]
        _seconds, result = run_timed(argv)
        if result.returncode != 0:
            return f"(profiling failed: exit {result.returncode}: {result.stderr[-500:]})"
        import io
        import pstats

        out = io.StringIO()
        stats = pstats.Stats(target, stream=out)
        out.write("\n--- cProfile of one `kvmops plan` process: kvmops' own functions, by cumulative time ---\n")
        out.write("(everything above cli.py:main is interpreter start-up and imports)\n")
        stats.sort_stats("cumulative").print_stats(r"reconciler/|libvirtmod", top)
        stats.strip_dirs()
        out.write("\n--- the whole process, by own time ---\n")
        stats.sort_stats("tottime").print_stats(top)
        return out.getvalue()
    finally:
        os.unlink(target)


def report(bench: Bench, imports: float, imports_cold: float, profile: str | None) -> None:
    args, rounds = bench.args, bench.rounds
    med = statistics.median
    print()
    workers = f"--parallel {args.parallel}" if args.parallel else "kvmops' default --parallel"
    print(f"Real libvirtd {URI}: {args.vms} VMs (64 MiB, 1 vCPU, TCG, one 64 MiB qcow2), {len(rounds)} round(s), {workers}")
    print(f"{'round':>5} {'order':<18} {'kvmops s':>9} {'floor s':>8} {'loop s':>7} {'ratio':>6} "
          f"{'load1 k/f':>10} {'others up':>9}")
    ratios = []
    for r in rounds:
        ratio = r["kvmops_s"] / r["floor_s"]
        ratios.append(ratio)
        print(f"{r['round']:>5} {r['order']:<18} {r['kvmops_s']:9.2f} {r['floor_s']:8.2f} {r['floor_loop_s']:7.2f} "
              f"{ratio:6.2f} {r['load_kvmops']:4.1f}/{r['load_floor']:<4.1f} {r['foreign']:>9}")
    kvmops_s = med([r["kvmops_s"] for r in rounds])
    floor_s = med([r["floor_s"] for r in rounds])
    loop_s = med([r["floor_loop_s"] for r in rounds])
    print(f"{'median':>5} {'':<18} {kvmops_s:9.2f} {floor_s:8.2f} {loop_s:7.2f} {med(ratios):6.2f}")
    print("(kvmops s, floor s: whole-process wall time; loop s: the floor's sequential calls alone; "
          "ratio: kvmops / floor process, per round)")

    print()
    print("Where the converge time goes: seconds summed per call kind, median over rounds")
    print("(kvmops works on several VMs at once, so its sums are busy time, not wall time)")
    kinds = ("create volume", "define domain", "start domain")
    print(f"{'call':<16} {'kvmops sum':>10} {'floor sum':>10}")
    for kind in kinds:
        k = med([r["kvmops_calls"].get(kind, 0.0) for r in rounds])
        f = med([r["floor_calls_s"].get(kind, 0.0) for r in rounds])
        print(f"{kind:<16} {k:10.2f} {f:10.2f}")
    print(f"{'floor connect':<16} {'':>10} {med([r['floor_connect_s'] for r in rounds]):10.2f}")
    phased = [r["kvmops_phases"] for r in rounds if r.get("kvmops_phases")]
    if phased:
        print("kvmops apply process on the wall clock, median s: "
              f"before the first step (start-up, imports, plan) {med([p['before'] for p in phased]):.2f}; "
              f"steps {med([p['steps'] for p in phased]):.2f}; "
              f"after the last (verifying plan, report, exit) {med([p['after'] for p in phased]):.2f}")
    teardown = [r.get("teardown_kvmops_s", 0) for r in rounds] + [r.get("teardown_floor_s", 0) for r in rounds]
    print(f"teardown of {args.vms} VMs (concurrent destroy, not timed in any figure): median {med(teardown):.2f} s")

    print()
    plans = bench.plans
    print(f"No-op `kvmops plan` of {args.vms} converged VMs, whole process, {len(plans)} runs")
    floors, calls = bench.read_floors, bench.read_floor_calls
    print(f"{'':<34} {'median':>7} {'min':>7} {'max':>7}")
    print(f"{'kvmops plan (process)':<34} {med(plans):7.3f} {min(plans):7.3f} {max(plans):7.3f}")
    print(f"{'read floor (process)':<34} {med(floors):7.3f} {min(floors):7.3f} {max(floors):7.3f}")
    print(f"{'read floor: libvirt calls alone':<34} {med(calls):7.3f} {min(calls):7.3f} {max(calls):7.3f}")
    print(f"{'python start + import reconciler.cli':<34} {imports:7.3f}")
    print(f"{'  same, environment as is (no .pyc)':<34} {imports_cold:7.3f}")
    cache = f"warm private .pyc cache ({PYCACHE['prefix']})" if PYCACHE["prefix"] else "environment as is (--no-bytecode-cache)"
    print(f"  kvmops processes ran with: {cache}")
    print(f"  plan / read floor: {med(plans) / med(floors):.2f}x; load1 during the runs "
          f"{min(bench.plan_loads):.1f}-{max(bench.plan_loads):.1f}")
    spread = max(plans) / min(plans)
    if spread > 1.5:
        print(f"  note: plan times varied {spread:.1f}x between runs: other load on this machine or on libvirtd "
              "(compare the read floor's max)")

    print()
    print("Targets")
    ratio = med(ratios)
    print(f"  converge kvmops/floor = {ratio:.3f}x  (target <= {TARGET_RATIO:.1f}x): {'MET' if ratio <= TARGET_RATIO else 'MISSED'}")
    print(f"  no-op plan median = {med(plans):.3f} s  (target < {TARGET_PLAN_SECONDS} s): "
          f"{'MET' if med(plans) < TARGET_PLAN_SECONDS else 'MISSED'}")
    if profile:
        print(profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=20, help="VMs per converge (default: 20)")
    parser.add_argument("--runs", type=int, default=3, help="rounds: kvmops converge + floor each (default: 3)")
    parser.add_argument("--plan-runs", type=int, default=5, help="no-op plans per round (default: 5)")
    parser.add_argument("--parallel", type=int, default=0, metavar="N",
                        help="pass --parallel N to kvmops apply (default: kvmops' own default)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after a converge before planning")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print")
    parser.add_argument("--profile", action="store_true", help="profile a plan process even when the target is met")
    parser.add_argument("--cleanup-only", action="store_true", help=f"only remove every {PREFIX}* object and exit")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="run the processes in this environment as is (with PYTHONDONTWRITEBYTECODE=1, "
                             "every module is compiled on every run) instead of with a warm private .pyc cache")
    args = parser.parse_args(argv)
    if args.vms < 1 or args.vms > 99 or args.runs < 1 or args.plan_runs < 1:
        parser.error("--vms must be 1-99, --runs and --plan-runs at least 1")

    try:
        probe = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        raise SystemExit(f"cannot connect to {URI}: {exc}") from exc
    probe.close()
    if args.cleanup_only:
        connections = Connections(URI, TEARDOWN_CONNECTIONS)
        remove_everything(connections)
        connections.close()
        for stale in glob.glob(os.path.join(tempfile.gettempdir(), f"{PREFIX}*")):
            shutil.rmtree(stale, ignore_errors=True)
        print(f"removed every {PREFIX}* domain, volume, pool, /var/tmp and temporary directory on {URI}")
        return 0

    bench = None
    status = 0
    manifests = Path(tempfile.mkdtemp(prefix=PREFIX))
    if not args.no_bytecode_cache:
        PYCACHE["prefix"] = tempfile.mkdtemp(prefix=f"{PREFIX}pycache-")
    try:
        warm_bytecode_cache()
        vms = manifests / "vms"
        vms.mkdir()
        for name in vm_names(KVMOPS_VM, args.vms):
            (vms / f"{name}.yaml").write_text(VM_MANIFEST.format(name=name, pool=POOL), encoding="utf-8")
        bench = Bench(args, manifests)
        print(f"sweeping leftovers named {PREFIX}* on {URI}...", flush=True)
        remove_everything(bench.connections)
        create_pool(bench.main)
        print(f"{args.runs} round(s) of {args.vms} VMs each (kvmops apply, {args.plan_runs} no-op plans, floor)", flush=True)
        try:
            bench.run()
        except libvirt.libvirtError as exc:
            print(f"\nlibvirt failed during the run ({exc}); was libvirtd restarted by someone else? "
                  "No figures are reported; run the benchmark again.", file=sys.stderr)
            return 1
        imports = import_time(5)
        imports_cold = import_time(5, bytecode_cache=False) if PYCACHE["prefix"] else imports
        missed = statistics.median(bench.plans) >= TARGET_PLAN_SECONDS
        profile = None
        if args.profile or missed:
            bench.converge_kvmops({})
            time.sleep(args.settle)
            profile = profile_plan(bench, args.top)
        report(bench, imports, imports_cold, profile)
    finally:
        shutil.rmtree(manifests, ignore_errors=True)
        if PYCACHE["prefix"]:
            shutil.rmtree(PYCACHE["prefix"], ignore_errors=True)
        if bench is not None:
            print(f"\ncleaning up {PREFIX}* ...", flush=True)
            try:
                bench.connections.refresh()
                remove_everything(bench.connections)
            except libvirt.libvirtError as exc:
                print(f"cleanup failed ({exc}); run: {sys.executable} {__file__} --cleanup-only", file=sys.stderr)
                status = 1
            bench.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
