"""Benchmark: what an idle ``kvmops run`` costs while 50 converged VMs need nothing.

What is measured (real libvirtd, ``qemu:///system``)
    ``--vms`` (50) managed VMs, each 64 MiB, 1 vCPU, ``virtType: qemu`` (TCG), one 64 MiB
    qcow2 volume, serial console, no NIC, ``runStrategy: Always`` (the guests boot
    nothing), one manifest file each, are converged first with ``kvmops apply
    --no-prune`` (``--create-with controller`` lets the controller create them instead).
    Then the controller runs as a subprocess::

        python -m reconciler --log-format json run <manifests> --connect qemu:///system \\
            --resync-interval 600 --state-dir <tmp> --listen 127.0.0.1:0 --no-prune \
            [--scope kvmops-bench2-idle-scope]

    (``--no-prune`` because the daemon is shared: without it the controller would shut
    down and undefine every other kvmops-managed domain on the host.  ``--scope``, also
    given to the apply, makes it ignore the events of domains other manifest sets own,
    as on a shared host; ``--scope ''`` leaves it out, so that every event of other
    people's kvmops VMs (scope "default") wakes our controller: the noisy case.)  Once it is healthy
    and every VM runs, and ``--settle`` seconds later, nothing is changed for
    ``--windows`` consecutive windows of ``--duration`` (60) seconds each; per window:

    * CPU: utime + stime of the whole process (all threads) from /proc/<pid>/stat, as a
      percentage of one core over the window's wall time;
    * memory: VmRSS from /proc/<pid>/status, sampled every ``--interval`` s, the maximum
      (VmHWM, the lifetime peak, is printed beside it);
    * passes: the delta of ``kvmops_reconcile_passes_total`` (all results) on /metrics,
      read once at each end of the window, with the wake-ups by source, and the
      lifecycle events this process received, ours and foreign.

Targets
    * CPU under 1 % of one core (median of the windows);
    * RSS under 80 MB (max over all windows; MB = 10^6 bytes, also shown in MiB).

Noise
    Other engineers run tests and benchmarks on the same libvirtd.  Each lifecycle event
    of any domain wakes the controller for a full pass, so their activity makes passes in
    our "idle" windows.  To separate that, each window is also cut into ``--slice``-second
    slices (passes placed from the controller's log): the CPU of slices no pass overlaps is
    the controller's true idle cost, and a least-squares fit CPU = idle + k x passes gives
    the cost of one pass.  Finally (``--pass-cost``, after the windows) the benchmark
    causes full no-op passes itself, by rewriting a manifest unchanged, and measures the
    CPU of one: what every wake-up and every resync costs (the default resync interval
    is 60 s; the benchmark runs with 600).

Safety
    Every libvirt object and directory is named ``kvmops-bench2-idle-*``; leftovers of that
    prefix (and a controller left running by a crashed run, found by its pid file) are
    removed at start, and everything is removed in a ``finally`` block: controller stopped
    first, domains destroyed concurrently and undefined, volumes deleted, pool removed,
    directories deleted.  A window during which someone restarted libvirtd (an e2e test
    does) is discarded and measured again once the controller is healthy.

Usage (from the repository root, as a user who may manage qemu:///system)::

    .venv/bin/python bench/controller_idle.py [--vms 50] [--duration 60] [--windows 3]

``--profile`` runs the controller under cProfile (main thread: the passes) and prints its
top functions at the end.  A benchmark: it prints tables and exits 0 whether or not the
targets are met (1 when the VMs cannot be converged).
"""

from __future__ import annotations

import argparse
import io
import pstats
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from controller_support import (
    CLK_TCK,
    REPO,
    URI,
    ControllerProcess,
    code_version,
    EventRecorder,
    Libvirt,
    Names,
    ProcSample,
    load1,
    kvmops_env,
    prepare,
    recover,
    scope_args,
    sweep,
    teardown,
    write_manifest,
)

NAMES = Names("idle")
TARGET_CPU_PERCENT = 1.0
TARGET_RSS_BYTES = 80_000_000


@dataclass
class Window:
    index: int
    samples: list[ProcSample]
    passes: float
    wakeups: dict[str, float]
    our_events: int
    foreign_events: int
    pass_times: list[float]  # wall time stamps of reconcile_finished in the window
    pass_durations_ms: list[float]
    load: tuple[float, float]
    foreign_running: int
    slices: list[tuple[float, int, float, int]] = field(default_factory=list)  # (cpu %, passes, s, ticks)

    @property
    def wall(self) -> float:
        return self.samples[-1].monotonic - self.samples[0].monotonic

    @property
    def cpu_seconds(self) -> float:
        return (self.samples[-1].cpu_ticks - self.samples[0].cpu_ticks) / CLK_TCK

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.wall

    @property
    def rss_max_kib(self) -> int:
        return max(s.rss_kib for s in self.samples)


def converge_with_apply(args: argparse.Namespace) -> float:
    env = kvmops_env()
    argv = [sys.executable, "-m", "reconciler", "--log-format", "json", "apply", str(NAMES.manifests),
            "--connect", URI, "--no-prune", "--no-color", "--state-dir", str(NAMES.state_dir), *scope_args(args.scope)]
    print(f"converging: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env, cwd=REPO)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"kvmops apply did not converge (exit {result.returncode}):\n{result.stdout[-2000:]}\n"
                         f"{result.stderr[-3000:]}")
    return seconds


def wait_all_running(lv: Libvirt, count: int, controller: ControllerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    running = 0
    while time.monotonic() < deadline:
        controller.check_alive()
        running = len(lv.our_domains(active_only=True))
        if running >= count:
            return
        time.sleep(0.5)
    raise SystemExit(f"only {running} of {count} VMs run after {timeout}s\n{controller.log_tail()}")


def measure_window(index: int, args: argparse.Namespace, lv: Libvirt, controller: ControllerProcess,
                   recorder: EventRecorder) -> Window:
    before = controller.metrics()
    load_start = load1()
    samples = [controller.sample()]
    end = samples[0].monotonic + args.duration
    while True:
        now = time.monotonic()
        if now >= end:
            break
        time.sleep(min(args.interval, end - now))
        samples.append(controller.sample())
    after = controller.metrics()
    controller.check_alive()
    start_mono, end_mono = samples[0].monotonic, samples[-1].monotonic
    start_wall, end_wall = samples[0].wall, samples[-1].wall
    events = recorder.between(start_mono, end_mono)
    passes = [r for r in controller.records()
              if r.get("event") == "reconcile_finished" and start_wall <= r.get("_t", 0) < end_wall]

    def delta(prefix: str) -> dict[str, float]:
        keys = {k for k in after if k.startswith(prefix)}
        return {k: after[k] - before.get(k, 0.0) for k in keys if after[k] - before.get(k, 0.0)}

    wakeups = {k.split('"')[1]: v for k, v in delta("kvmops_wakeups_total{").items()}
    window = Window(
        index=index, samples=samples,
        passes=controller.total(after, "kvmops_reconcile_passes_total")
        - controller.total(before, "kvmops_reconcile_passes_total"),
        wakeups=wakeups,
        our_events=sum(1 for e in events if NAMES.ours(e.name)),
        foreign_events=sum(1 for e in events if not NAMES.ours(e.name)),
        pass_times=[r["_t"] for r in passes], pass_durations_ms=[r.get("duration_ms", 0) for r in passes],
        load=(load_start, load1()), foreign_running=lv.foreign_running(),
    )
    window.slices = slices_of(window, args.slice)
    return window


def slices_of(window: Window, width: float) -> list[tuple[float, int]]:
    """Cut the window into ``width``-second slices: (CPU % of one core, passes overlapping it).

    A pass overlaps a slice when its run (finish time stamp minus its duration) intersects
    the slice, so a slice counted as "no pass" had no planning in it at all.
    """
    samples = window.samples
    t0 = samples[0].monotonic
    runs = [(t - d / 1000, t) for t, d in zip(window.pass_times, window.pass_durations_ms)]
    result = []
    start = samples[0]
    k = 1
    for sample in samples[1:]:
        if sample.monotonic < t0 + k * width - 0.05:
            continue
        seconds = sample.monotonic - start.monotonic
        cpu = 100.0 * (sample.cpu_ticks - start.cpu_ticks) / CLK_TCK / seconds
        passes = sum(1 for begin, end in runs if begin < sample.wall and end >= start.wall)
        result.append((cpu, passes, seconds, sample.cpu_ticks - start.cpu_ticks))
        start = sample
        k += 1
    return result


@dataclass
class PassCost:
    passes: float
    cpu_seconds: float  # above the idle baseline
    wall_ms: list[float]

    @property
    def cpu_ms_per_pass(self) -> float:
        return self.cpu_seconds / self.passes * 1000 if self.passes else float("nan")


def measure_pass_cost(args: argparse.Namespace, controller: ControllerProcess, idle_percent: float) -> PassCost:
    """Make the controller do ``--pass-cost`` full no-op passes; return their CPU cost.

    Each pass is caused by rewriting one manifest with the same content (atomically), so
    the pass re-reads everything and finds nothing to do: the cost of a resync or of any
    wake-up, with ``--vms`` VMs.
    """
    before = controller.metrics()
    first = controller.sample()
    for index in range(args.pass_cost):
        write_manifest(NAMES.manifests, NAMES.vm(index % args.vms), NAMES.pool)
        time.sleep(args.pass_gap)
    wanted = controller.total(before, "kvmops_reconcile_passes_total") + args.pass_cost
    deadline = time.monotonic() + 30
    after = controller.metrics()
    while controller.total(after, "kvmops_reconcile_passes_total") < wanted and time.monotonic() < deadline:
        time.sleep(0.5)
        after = controller.metrics()
    last = controller.sample()
    passes = controller.total(after, "kvmops_reconcile_passes_total") - controller.total(before, "kvmops_reconcile_passes_total")
    elapsed = last.monotonic - first.monotonic
    cpu = (last.cpu_ticks - first.cpu_ticks) / CLK_TCK - idle_percent / 100 * elapsed
    walls = [r["duration_ms"] for r in controller.records() if r.get("event") == "reconcile_finished"
             and first.wall <= r.get("_t", 0) <= last.wall]
    return PassCost(passes, cpu, walls)


def fit(points: list[tuple[float, int, float, int]]) -> tuple[float, float] | None:
    """Least squares cpu = a + b * passes; None when the passes do not vary."""
    if len(points) < 3:
        return None
    xs = [p[1] for p in points]
    ys = [p[0] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    return mean_y - b * mean_x, b


def report(args: argparse.Namespace, windows: list[Window], converge_s: float | None, how: str,
           startup: dict, slice_width: float, controller_argv: list[str], cost: PassCost | None) -> None:
    med = statistics.median
    print()
    print(f"code: {code_version()}")
    print(f"controller: {' '.join(controller_argv)}")
    print(f"Idle kvmops run on {URI}: {args.vms} managed VMs (TCG, 64 MiB, one 64 MiB qcow2), "
          f"converged by {how}" + (f" in {converge_s:.1f} s" if converge_s is not None else ""))
    print(f"controller start-up: first pass {startup.get('first_pass_ms', float('nan')):.0f} ms; "
          f"healthy and all running {startup.get('ready_s', float('nan')):.1f} s after launch")
    print()
    print(f"{'window':>6} {'wall s':>6} {'CPU s':>6} {'CPU %':>6} {'RSS max':>8} {'VmHWM':>7} {'passes':>6} "
          f"{'pass ms':>7} {'our ev':>6} {'foreign ev':>10} {'others up':>9} {'load1':>9}")
    for w in windows:
        mean_pass = statistics.fmean(w.pass_durations_ms) if w.pass_durations_ms else 0.0
        print(f"{w.index:>6} {w.wall:6.1f} {w.cpu_seconds:6.2f} {w.cpu_percent:6.2f} "
              f"{w.rss_max_kib / 1024:6.1f}Mi {w.samples[-1].hwm_kib / 1024:5.1f}Mi {w.passes:6.0f} {mean_pass:7.0f} "
              f"{w.our_events:>6} {w.foreign_events:>10} {w.foreign_running:>9} {w.load[0]:4.2f}-{w.load[1]:<4.2f}")
    print("(CPU % of one core; RSS max: VmRSS sampled every "
          f"{args.interval:g} s; passes: kvmops_reconcile_passes_total delta; pass ms: mean wall time of a pass; "
          "ev: lifecycle events of our / other people's domains in the window)")
    for w in windows:
        print(f"  window {w.index} wake-ups by source: "
              + (", ".join(f"{k} {v:.0f}" for k, v in sorted(w.wakeups.items())) or "none"))

    cpu_median = med([w.cpu_percent for w in windows])
    rss_max = max(w.rss_max_kib for w in windows) * 1024
    points = [p for w in windows for p in w.slices]
    quiet = [p for p in points if p[1] == 0]
    quiet_cpu = 100.0 * sum(p[3] for p in quiet) / CLK_TCK / sum(p[2] for p in quiet) if quiet else 0.0
    line = fit(points)
    print()
    print(f"Separating other people's noise: {len(points)} slices of {slice_width:g} s, "
          f"{len(quiet)} without any pass")
    if quiet:
        print(f"  CPU of the slices no pass overlapped: {quiet_cpu:.2f} % over their {sum(p[2] for p in quiet):.0f} s "
              f"(per slice: median {med([p[0] for p in quiet]):.2f} %, max {max(p[0] for p in quiet):.2f} %)"
              "  -> the controller's own idle cost")
    if line is not None:
        idle, per_pass = line
        per_pass_cpu_ms = per_pass / 100 * slice_width * 1000
        print(f"  fit CPU % = {idle:.2f} + {per_pass:.2f} x passes per slice  -> about {per_pass_cpu_ms:.0f} ms of CPU "
              f"per pass; a resync every 60 s (the default interval) would add ~{per_pass_cpu_ms / 60 / 10:.2f} %")
    else:
        print("  (no fit: the number of passes per slice did not vary)")
    total_passes = sum(w.passes for w in windows)
    total_wall = sum(w.wall for w in windows)
    print(f"  passes: {total_passes:.0f} in {total_wall:.0f} s "
          f"({total_passes / total_wall * 60:.1f} per minute), all woken by "
          + ", ".join(sorted({k for w in windows for k in w.wakeups})) if total_passes else "  passes: none")

    if cost is not None and cost.passes:
        print()
        print(f"Cost of one full no-op pass with {args.vms} VMs ({cost.passes:.0f} passes caused by rewriting a manifest "
              f"unchanged, every {args.pass_gap:g} s): {cost.cpu_ms_per_pass:.0f} ms of CPU each (idle baseline "
              f"subtracted), wall time median {statistics.median(cost.wall_ms) if cost.wall_ms else float('nan'):.0f} ms"
              f"; so a resync every 60 s (the default interval) costs ~{cost.cpu_ms_per_pass / 600:.2f} % of a core, "
              f"and every wake-up (a libvirt event of a declared or owned domain) costs one such pass")

    print()
    print("Targets")
    print(f"  CPU: median of windows {cpu_median:.2f} % of one core (windows: "
          + ", ".join(f"{w.cpu_percent:.2f}" for w in windows)
          + f")  target < {TARGET_CPU_PERCENT:g} %: {'MET' if cpu_median < TARGET_CPU_PERCENT else 'MISSED'}")
    if quiet:
        print(f"       without other people's events (slices no pass overlapped): {quiet_cpu:.2f} %: "
              f"{'MET' if quiet_cpu < TARGET_CPU_PERCENT else 'MISSED'}")
    print(f"  RSS: max {rss_max / 1e6:.1f} MB ({rss_max / 2**20:.1f} MiB)  target < {TARGET_RSS_BYTES / 1e6:.0f} MB: "
          f"{'MET' if rss_max < TARGET_RSS_BYTES else 'MISSED'}")
    print("  passes in the windows: " + ", ".join(f"{w.passes:.0f}" for w in windows)
          + f" (median {med([w.passes for w in windows]):.0f} per {args.duration:g} s window)")


def print_profile(path: Path, top: int) -> None:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    out.write("\n--- cProfile of the controller's main thread (passes), kvmops' functions by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(r"reconciler/|libvirt", top)
    stats.strip_dirs()
    out.write("\n--- by own time ---\n")
    stats.sort_stats("tottime").print_stats(top)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=50, help="managed VMs (default: 50)")
    parser.add_argument("--duration", type=float, default=60, help="seconds per measurement window (default: 60)")
    parser.add_argument("--windows", type=int, default=3, help="consecutive windows (default: 3)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between /proc samples (default: 0.5)")
    parser.add_argument("--slice", type=float, default=2.0, help="seconds per slice for the noise split (default: 2)")
    parser.add_argument("--settle", type=float, default=10, help="seconds to wait after convergence (default: 10)")
    parser.add_argument("--pass-cost", type=int, default=10,
                        help="after the windows, cause this many full no-op passes to measure one's cost (default: 10)")
    parser.add_argument("--pass-gap", type=float, default=2.0, help="seconds between those passes (default: 2)")
    parser.add_argument("--create-with", choices=("apply", "controller"), default="apply",
                        help="who creates the VMs: kvmops apply first (default) or the controller")
    parser.add_argument("--scope", default=f"{NAMES.prefix}scope",
                        help="--scope for apply and the controller (default: %(default)s); '' for none ('default')")
    parser.add_argument("--max-disruptions", type=int, default=3,
                        help="libvirtd restarts by others to tolerate (the window is redone) before giving up")
    parser.add_argument("--profile", action="store_true", help="run the controller under cProfile, print its top")
    parser.add_argument("--top", type=int, default=30, help="profile lines to print")
    parser.add_argument("--keep-log", metavar="FILE", help="copy the controller's JSON log here before cleaning up")
    args = parser.parse_args(argv)
    if not 1 <= args.vms <= 99 or args.duration <= 0 or args.windows < 1:
        parser.error("--vms must be 1-99, --duration positive, --windows at least 1")

    lv = Libvirt(NAMES)
    recorder = EventRecorder()
    controller: ControllerProcess | None = None
    profile_path = NAMES.workdir / "controller.prof"
    profile_copy: Path | None = None
    try:
        print(f"sweeping leftovers named {NAMES.prefix}* on {URI}...", flush=True)
        sweep(lv)
        prepare(lv)
        for index in range(args.vms):
            write_manifest(NAMES.manifests, NAMES.vm(index), NAMES.pool)
        converge_s = converge_with_apply(args) if args.create_with == "apply" else None
        if converge_s is not None:
            print(f"  converged {args.vms} VMs in {converge_s:.1f} s", flush=True)
        controller = ControllerProcess(NAMES, profile_to=profile_path if args.profile else None, scope=args.scope)
        print(f"starting: {controller.command_line()}", flush=True)
        launched = time.monotonic()
        controller.start()
        wait_all_running(lv, args.vms, controller, timeout=900)
        controller.wait_healthy(timeout=300)
        ready_s = time.monotonic() - launched
        first = next((r for r in controller.records() if r.get("event") == "reconcile_finished"), {})
        startup = {"first_pass_ms": first.get("duration_ms", float("nan")), "ready_s": ready_s}
        print(f"controller pid {controller.pid} healthy, {args.vms} VMs running ({ready_s:.1f} s after launch); "
              f"settling {args.settle:g} s", flush=True)
        recorder.wait_quiet(args.settle, timeout=args.settle * 6, names=NAMES.ours)
        windows: list[Window] = []
        disruptions = 0
        while len(windows) < args.windows:
            index = len(windows) + 1
            began = time.monotonic()
            try:
                window = measure_window(index, args, lv, controller, recorder)
            except libvirt.libvirtError:
                if lv.alive():
                    raise
                window = None
            if window is None or recorder.disconnected_since(began):
                disruptions += 1  # someone restarted libvirtd: this window does not count
                if disruptions > args.max_disruptions:
                    raise SystemExit(f"libvirtd was restarted {disruptions} times; giving up")
                recover(lv, recorder, controller)
                wait_all_running(lv, args.vms, controller, timeout=300)
                recorder.wait_quiet(args.settle, timeout=args.settle * 6, names=NAMES.ours)
                continue
            windows.append(window)
            print(f"  window {index}: CPU {window.cpu_percent:.2f} % of one core, RSS max "
                  f"{window.rss_max_kib / 1024:.1f} MiB, {window.passes:.0f} passes, "
                  f"{window.foreign_events} foreign / {window.our_events} own events", flush=True)
        cost = None
        if args.pass_cost:
            points = [p for w in windows for p in w.slices if p[1] == 0]
            idle = 100.0 * sum(p[3] for p in points) / CLK_TCK / sum(p[2] for p in points) if points else 0.0
            print(f"pass cost: {args.pass_cost} manifest rewrites (no change), every {args.pass_gap:g} s", flush=True)
            cost = measure_pass_cost(args, controller, idle)
        report(args, windows, converge_s, "kvmops apply" if converge_s is not None else "the controller",
               startup, args.slice, controller.argv, cost)
        if args.profile:
            controller.stop()
            if profile_path.exists():
                profile_copy = Path(f"/tmp/{NAMES.prefix}controller.prof")
                profile_copy.write_bytes(profile_path.read_bytes())
    finally:
        teardown(lv, controller, args.keep_log)
        recorder.close()
        lv.close()
    if profile_copy is not None:
        print_profile(profile_copy, args.top)
        profile_copy.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
