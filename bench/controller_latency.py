"""Benchmark: how fast ``kvmops run`` reacts to a new manifest and repairs a destroyed VM.

What is measured (real libvirtd, ``qemu:///system``; each VM 64 MiB, 1 vCPU, ``virtType:
qemu`` (TCG), one 64 MiB qcow2 volume, serial console, no NIC, ``runStrategy: Always``;
the guests boot nothing)

    The controller runs as a subprocess::

        python -m reconciler --log-format json run <manifests> --connect qemu:///system \\
            --resync-interval 600 --state-dir <tmp> --listen 127.0.0.1:0 --no-prune \
            [--scope kvmops-bench2-lat-scope]

    (``--no-prune`` because the daemon is shared: without it the controller would shut
    down and undefine every other kvmops-managed domain on the host, e.g. other
    engineers' ``kvmops-e2e-*`` VMs.  ``--scope`` (``--scope ''`` to leave it out) makes
    it ignore the events of domains other manifest sets own, as on a shared host.)  Its default quiet period (0.3 s) is kept unless
    ``--quiet-period`` is given.  This process receives libvirt's lifecycle events itself
    (``virEventRegisterDefaultImpl`` + ``domainEventRegisterAny``) and time-stamps them with
    ``time.monotonic()`` in the callback, so nothing is polled.

    (a) new manifest -> define, -> running: a VM manifest is written atomically (a hidden
        temporary file renamed into the watched directory); latency from the rename to the
        domain's DEFINED event, and to its STARTED event.  ``--tries`` times, one new VM
        each (plus ``--warmup`` discarded tries).
    (b) drift repair: ``domain.destroy()`` of a running ``runStrategy: Always`` VM; latency
        from ``destroy()`` returning to the STARTED event of the restart the controller
        makes.  ``--tries`` times, round robin over the VMs of (a).
    bare start: ``domain.create()`` of an equivalent domain that kvmops does not manage
        (the inactive XML of one of its VMs without kvmops' metadata and UUID, on its own
        64 MiB volume), timed around the call; interleaved with (b), one bare start after
        each repair, so that both see the same load.  "repair minus bare start" is the
        controller's overhead (noticing, planning, dispatching).
    bare restart: the same twin destroyed and, as soon as ``destroy()`` returns, created
        again; ``destroy()`` returned -> STARTED event.  A repair with no controller in
        it: a stricter floor, since a domain started right after its destroy starts
        slower here than one at rest.

    Medians and p95 (nearest rank) are printed, with a per-phase breakdown taken from the
    controller's JSON logs (its own step durations and time stamps).

Targets
    * file change -> define: median < 500 ms (the 300 ms quiet period included);
    * drift repair: median < 500 ms + the domain's own (bare) start time, i.e.
      "repair minus bare start" median < 500 ms.

Noise
    Other engineers run tests and benchmarks on the same libvirtd (``kvmops-e2e-*``,
    ``kvmops-bench-*``).  Their domains' lifecycle events wake our controller too, and each
    wake-up is a full pass, so a try can wait behind a pass someone else caused.  The
    number of foreign events during each try and the 1-minute load are printed.  Someone
    restarting libvirtd (an e2e test does) voids the try in progress: this process notices
    (keepalive and close callback), reconnects, waits for the controller to be healthy and
    every VM to run again, and redoes the try (``--max-disruptions``).

Safety
    Every libvirt object and directory is named ``kvmops-bench2-lat-*``; leftovers of that
    prefix (and a controller left running by a crashed run, found by its pid file) are
    removed at start, and everything is removed in a ``finally`` block: controller stopped
    first (so it restarts nothing), domains destroyed concurrently and undefined, volumes
    deleted, pool removed, directories deleted.

Usage (from the repository root, as a user who may manage qemu:///system)::

    .venv/bin/python bench/controller_latency.py [--tries 20] [--warmup 1] [--gap 1.5]

A benchmark: it prints tables and exits 0 whether or not the targets are met (1 when the
controller fails to create or repair a VM in time).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from controller_support import (
    URI,
    ControllerProcess,
    code_version,
    Disrupted,
    EventRecorder,
    Libvirt,
    Names,
    load1,
    p95,
    prepare,
    recover,
    summary_header,
    summary_row,
    sweep,
    teardown,
    write_manifest,
)

NAMES = Names("lat")
BARE = f"{NAMES.prefix}bare"
BARE_VOLUME = f"{BARE}-root.qcow2"
VOLUME_BYTES = 64 * 1024 * 1024
TARGET_DEFINE_S = 0.5
TARGET_REPAIR_OVERHEAD_S = 0.5


@dataclass
class CreateTry:
    name: str
    write_wall: float
    defined_s: float
    running_s: float
    foreign_events: int
    load: float
    steps: dict = field(default_factory=dict)  # from the controller's log
    passes_before: int = 0  # passes the controller finished between the rename and its first step


@dataclass
class RepairTry:
    name: str
    destroy_s: float  # destroy() call -> return
    stopped_s: float  # STOPPED event relative to destroy() returning
    repair_s: float  # destroy() returned -> STARTED event
    bare_create_s: float  # bare domain.create() call -> return
    bare_event_s: float  # bare domain.create() call -> STARTED event
    bare_restart_create_s: float  # bare create() right after its destroy() returned
    bare_restart_s: float  # bare destroy() returned -> STARTED event of the immediate create()
    foreign_events: int
    load: float
    steps: dict = field(default_factory=dict)


def fail(message: str, controller: ControllerProcess) -> SystemExit:
    return SystemExit(f"{message}\n--- controller log (tail)\n{controller.log_tail()}")


def step_times(controller: ControllerProcess, vm: str, since_wall: float) -> dict:
    """Return the controller's step records for ``vm`` logged after ``since_wall``: begin and duration."""
    steps: dict = {}
    for record in controller.records():
        if record.get("vm") != vm or record.get("_t", 0) < since_wall or "duration_ms" not in record:
            continue
        event = record.get("event")
        if event in ("volume_created", "domain_defined", "domain_started") and event not in steps:
            duration = record["duration_ms"] / 1000
            steps[event] = {"begin": record["_t"] - duration, "duration": duration}
    return steps


def settle(recorder: EventRecorder, gap: float) -> None:
    """Let the controller finish the passes our own last change caused."""
    recorder.wait_quiet(gap, timeout=30, names=NAMES.ours)


def bare_domain_xml(source_xml: str) -> str:
    """Return ``source_xml`` (a kvmops domain) as an unmanaged domain named BARE on BARE_VOLUME."""
    root = ET.fromstring(source_xml)
    for tag in ("uuid", "metadata"):
        for element in root.findall(tag):
            root.remove(element)
    root.find("name").text = BARE
    for source in root.iterfind("devices/disk/source"):
        if source.get("volume"):
            source.set("volume", BARE_VOLUME)
        if source.get("file"):
            source.set("file", source.get("file").rsplit("/", 1)[0] + "/" + BARE_VOLUME)
    for interface in root.iterfind("devices/interface"):
        for mac in interface.findall("mac"):
            interface.remove(mac)  # libvirt picks a new MAC (the benchmark VMs have no NIC anyway)
    return ET.tostring(root, encoding="unicode")


class Bench:
    def __init__(self, args: argparse.Namespace, lv: Libvirt, recorder: EventRecorder,
                 controller: ControllerProcess) -> None:
        self.args, self.lv, self.recorder, self.controller = args, lv, recorder, controller
        self.created: list[str] = []
        self.disruptions = 0
        self.creates: list[CreateTry] = []
        self.repairs: list[RepairTry] = []

    def foreign_between(self, start: float, end: float) -> int:
        return sum(1 for e in self.recorder.between(start, end) if not NAMES.ours(e.name))

    # (a) ------------------------------------------------------------------------------------

    def create_one(self, index: int) -> CreateTry:
        name = NAMES.vm(index)
        load = load1()
        write_wall = time.time()
        write_manifest(NAMES.manifests, name, NAMES.pool)
        written = time.monotonic()
        defined = self.recorder.wait_for(name, "defined", after=written - 0.001, timeout=self.args.timeout)
        if defined is None:
            raise fail(f"{name}: not defined {self.args.timeout}s after its manifest appeared", self.controller)
        started = self.recorder.wait_for(name, "started", after=written - 0.001, timeout=self.args.timeout)
        if started is None:
            raise fail(f"{name}: defined but not started within {self.args.timeout}s", self.controller)
        self.created.append(name)
        result = CreateTry(name, write_wall, defined.monotonic - written, started.monotonic - written,
                           self.foreign_between(written, started.monotonic), load)
        settle(self.recorder, self.args.gap)
        result.steps = step_times(self.controller, name, write_wall)
        first = result.steps.get("volume_created", result.steps.get("domain_defined"))
        if first:
            result.passes_before = sum(1 for r in self.controller.records()
                                       if r.get("event") == "reconcile_finished"
                                       and write_wall <= r.get("_t", 0) <= first["begin"])
        return result

    # (b) ------------------------------------------------------------------------------------

    def repair_one(self, name: str) -> tuple[float, float, float, float, int, dict]:
        connection = self.lv.main
        domain = connection.lookupByName(name)
        if not domain.isActive():
            raise fail(f"{name} is not running before the repair try", self.controller)
        load = load1()
        called_wall = time.time()
        called = time.monotonic()
        domain.destroy()
        returned = time.monotonic()
        returned_wall = time.time()
        stopped = self.recorder.wait_for(name, "stopped", after=called, timeout=10)
        started = self.recorder.wait_for(name, "started", after=called, timeout=self.args.timeout)
        if started is None:
            raise fail(f"{name}: not restarted within {self.args.timeout}s of its destroy", self.controller)
        foreign = self.foreign_between(called, started.monotonic)
        settle(self.recorder, self.args.gap)
        steps = step_times(self.controller, name, called_wall)
        steps["_returned_wall"] = returned_wall
        stopped_s = (stopped.monotonic - returned) if stopped else float("nan")
        return returned - called, stopped_s, started.monotonic - returned, load, foreign, steps

    def bare_start(self) -> tuple[float, float, float, float]:
        """Time the unmanaged twin: a start from rest, then a restart right after a destroy.

        Returns (create() of a domain at rest, its call -> STARTED event, create() right
        after destroy() returned, destroy() returned -> STARTED event of that restart).
        The last is the floor of a repair: the same sequence with no controller in it.
        """
        domain = self.lv.main.lookupByName(BARE)
        called = time.monotonic()
        domain.create()
        returned = time.monotonic()
        started = self.recorder.wait_for(BARE, "started", after=called, timeout=30)
        event_s = (started.monotonic - called) if started else float("nan")
        settle(self.recorder, self.args.gap)
        domain.destroy()
        destroyed = time.monotonic()
        domain.create()
        restarted = time.monotonic()
        again = self.recorder.wait_for(BARE, "started", after=destroyed, timeout=30)
        restart_event_s = (again.monotonic - destroyed) if again else float("nan")
        domain.destroy()
        self.recorder.wait_for(BARE, "stopped", after=restarted, timeout=10)
        settle(self.recorder, self.args.gap)
        return returned - called, event_s, restarted - destroyed, restart_event_s

    def define_bare(self) -> bool:
        source = self.lv.main.lookupByName(self.created[0]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        pool = self.lv.main.storagePoolLookupByName(NAMES.pool)
        if BARE_VOLUME not in pool.listVolumes():
            self.lv.create_volume(BARE_VOLUME, VOLUME_BYTES)
        self.lv.main.defineXML(bare_domain_xml(source))
        settle(self.recorder, self.args.gap)
        return True

    # the run -------------------------------------------------------------------------------

    def attempt(self, function, *args):
        """Run one try; if someone restarted libvirtd meanwhile, recover and return None."""
        started = time.monotonic()
        try:
            result = function(*args)
        except (Disrupted, libvirt.libvirtError) as exc:
            if (isinstance(exc, libvirt.libvirtError) and self.lv.alive()
                    and not self.recorder.disconnected_since(started)):
                raise
            result = None
        if result is not None and not self.recorder.disconnected_since(started):
            return result
        self.disruptions += 1
        if self.disruptions > self.args.max_disruptions:
            raise SystemExit(f"libvirtd was restarted {self.disruptions} times during the benchmark; giving up")
        recover(self.lv, self.recorder, self.controller)
        self.after_recovery()
        return None

    def after_recovery(self) -> None:
        """Bring the world back to the state a try starts from: every VM of ours running, the twin off."""
        with contextlib.suppress(libvirt.libvirtError):
            bare = self.lv.main.lookupByName(BARE)
            if bare.isActive():
                bare.destroy()
        expected = {path.stem for path in NAMES.manifests.glob("*.yaml")}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            running = set(self.lv.our_domains(active_only=True))
            if expected <= running:
                break
            time.sleep(0.5)
        self.created = [name for name in self.created if name in expected]
        settle(self.recorder, self.args.gap)

    def repair_try(self, name: str) -> RepairTry:
        destroy_s, stopped_s, repair_s, load, foreign, steps = self.repair_one(name)
        bare_create_s, bare_event_s, restart_create_s, restart_s = self.bare_start()
        return RepairTry(name, destroy_s, stopped_s, repair_s, bare_create_s, bare_event_s,
                         restart_create_s, restart_s, foreign, load, steps)

    def run(self) -> None:
        args = self.args
        # The seed VM (index 0) was created by the controller's first pass.
        print(f"(a) {args.warmup + args.tries} new-manifest tries ({args.warmup} warm-up)", flush=True)
        index, warm = 0, 0
        while len(self.creates) < args.tries:
            index += 1
            result = self.attempt(self.create_one, index)
            if result is None:
                continue
            print(f"  {result.name}: defined {result.defined_s * 1000:6.0f} ms, running "
                  f"{result.running_s * 1000:6.0f} ms  (foreign events {result.foreign_events})"
                  + ("  [warm-up]" if warm < args.warmup else ""), flush=True)
            if warm < args.warmup:
                warm += 1
                continue
            self.creates.append(result)
        while self.attempt(self.define_bare) is None:
            pass
        print(f"(b) {args.warmup + args.tries} drift repairs ({args.warmup} warm-up), each followed by a bare start",
              flush=True)
        turn, warm = 0, 0
        while len(self.repairs) < args.tries:
            victims = self.created[1:] or self.created  # not the seed
            name = victims[turn % len(victims)]
            turn += 1
            result = self.attempt(self.repair_try, name)
            if result is None:
                continue
            print(f"  {name}: destroy {result.destroy_s * 1000:5.0f} ms, repaired (running) "
                  f"{result.repair_s * 1000:6.0f} ms after destroy returned; bare start "
                  f"{result.bare_create_s * 1000:5.0f} ms, bare restart {result.bare_restart_s * 1000:5.0f} ms  "
                  f"(foreign events {result.foreign_events})" + ("  [warm-up]" if warm < args.warmup else ""),
                  flush=True)
            if warm < args.warmup:
                warm += 1
                continue
            self.repairs.append(result)


def report(bench: Bench, controller_passes: float, wakeups: dict[str, float]) -> None:
    med = statistics.median
    creates, repairs = bench.creates, bench.repairs
    print()
    print(f"code: {code_version()}")
    print(f"controller: {bench.controller.command_line()}")
    print(f"kvmops run on {URI}: {len(creates)} new-manifest tries, {len(repairs)} repairs "
          f"(TCG, 64 MiB, one 64 MiB qcow2; quiet period "
          f"{bench.args.quiet_period if bench.args.quiet_period is not None else 'default 0.3'} s)")

    print("\n(a) per try: manifest rename -> ...   (ms; 'pass' = rename until the controller's first step began, "
          "i.e. watcher + quiet period + queue + plan)")
    print(f"{'vm':<24} {'pass':>6} {'passes':>6} {'volume':>6} {'define':>6} {'DEFINED':>8} {'start':>6} "
          f"{'STARTED':>8} {'foreign ev':>10} {'load1':>5}")
    for c in creates:
        s = c.steps
        vol = s.get("volume_created", {})
        begin = vol.get("begin", s.get("domain_defined", {}).get("begin"))
        pass_ms = (begin - c.write_wall) * 1000 if begin else float("nan")
        print(f"{c.name:<24} {pass_ms:6.0f} {c.passes_before:>6} {vol.get('duration', float('nan')) * 1000:6.0f} "
              f"{s.get('domain_defined', {}).get('duration', float('nan')) * 1000:6.0f} {c.defined_s * 1000:8.0f} "
              f"{s.get('domain_started', {}).get('duration', float('nan')) * 1000:6.0f} {c.running_s * 1000:8.0f} "
              f"{c.foreign_events:>10} {c.load:5.2f}")

    print("(passes: controller passes that finished between the rename and that first step, i.e. the one that did "
          "the work and those it queued behind)")
    print("\n(b) per try: after destroy() returned -> ...   (ms; 'pass' = until the controller's start step began)")
    print(f"{'vm':<24} {'destroy':>7} {'STOPPED':>8} {'pass':>6} {'start':>6} {'STARTED':>8} {'bare':>6} "
          f"{'bare ev':>7} {'restart':>7} {'foreign ev':>10} {'load1':>5}")
    for r in repairs:
        start = r.steps.get("domain_started")
        pass_ms = (start["begin"] - r.steps["_returned_wall"]) * 1000 if start else float("nan")
        start_ms = start["duration"] * 1000 if start else float("nan")
        print(f"{r.name:<24} {r.destroy_s * 1000:7.0f} {r.stopped_s * 1000:8.0f} {pass_ms:6.0f} {start_ms:6.0f} "
              f"{r.repair_s * 1000:8.0f} {r.bare_create_s * 1000:6.0f} {r.bare_event_s * 1000:7.0f} "
              f"{r.bare_restart_s * 1000:7.0f} {r.foreign_events:>10} {r.load:5.2f}")
    print("(bare: create() of the unmanaged twin at rest; bare ev: to its STARTED event; restart: its destroy() "
          "returned -> STARTED of a create() issued at once, i.e. a repair with no controller)")

    def steps_of(items, key, field_name="duration"):
        return [i.steps[key][field_name] for i in items if key in i.steps]

    create_pass = [c.steps["volume_created"]["begin"] - c.write_wall for c in creates if "volume_created" in c.steps]
    repair_pass = [r.steps["domain_started"]["begin"] - r.steps["_returned_wall"] for r in repairs
                   if "domain_started" in r.steps]
    print("\nSummary")
    print(summary_header())
    print(summary_row("(a) rename -> DEFINED event", [c.defined_s for c in creates]))
    print(summary_row("(a) rename -> STARTED event (running)", [c.running_s for c in creates]))
    print(summary_row("    rename -> first step begins (log)", create_pass))
    print(summary_row("    create volume step (log)", steps_of(creates, "volume_created")))
    print(summary_row("    define step (log)", steps_of(creates, "domain_defined")))
    print(summary_row("    start step (log)", steps_of(creates, "domain_started")))
    print(summary_row("(b) destroy() returned -> STARTED event", [r.repair_s for r in repairs]))
    print(summary_row("    destroy() call -> return", [r.destroy_s for r in repairs]))
    print(summary_row("    destroy() returned -> start step (log)", repair_pass))
    print(summary_row("    start step (log)", steps_of(repairs, "domain_started")))
    print(summary_row("bare start: create() call -> return", [r.bare_create_s for r in repairs]))
    print(summary_row("bare start: create() call -> STARTED event", [r.bare_event_s for r in repairs]))
    print(summary_row("bare restart: destroy() returned -> STARTED", [r.bare_restart_s for r in repairs]))
    print(summary_row("    of which the create() call", [r.bare_restart_create_s for r in repairs]))
    paired = [r.repair_s - r.bare_create_s for r in repairs]
    paired_restart = [r.repair_s - r.bare_restart_s for r in repairs]
    print(summary_row("repair minus bare start (paired per try)", paired))
    print(summary_row("repair minus bare restart (paired per try)", paired_restart))
    foreign = [c.foreign_events for c in creates] + [r.foreign_events for r in repairs]
    print(f"\nNoise: foreign lifecycle events during a try: median {med(foreign):.0f}, max {max(foreign)}; "
          f"load1 {min(c.load for c in creates + repairs):.2f}-{max(c.load for c in creates + repairs):.2f}; "
          f"libvirtd restarts by others (tries redone): {bench.disruptions}; "
          f"controller passes in the whole run: {controller_passes:.0f}; wake-ups by source: "
          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(wakeups.items())))

    limit = bench.args.calm_events
    calm_creates = [c for c in creates if c.foreign_events <= limit]
    calm_repairs = [r for r in repairs if r.foreign_events <= limit]
    print(f"\nCalm tries only (at most {limit} foreign events during the try): "
          f"{len(calm_creates)} of (a), {len(calm_repairs)} of (b)")
    print(summary_header())
    print(summary_row("(a) rename -> DEFINED event", [c.defined_s for c in calm_creates]))
    print(summary_row("(b) destroy() returned -> STARTED event", [r.repair_s for r in calm_repairs]))
    print(summary_row("bare start: create() call -> return", [r.bare_create_s for r in calm_repairs]))
    print(summary_row("repair minus bare start (paired per try)", [r.repair_s - r.bare_create_s for r in calm_repairs]))

    define_med = med([c.defined_s for c in creates])
    repair_med = med([r.repair_s for r in repairs])
    bare_med = med([r.bare_create_s for r in repairs])
    overhead = repair_med - bare_med
    print("\nTargets")
    print(f"  file change -> define: median {define_med * 1000:.0f} ms (p95 "
          f"{p95([c.defined_s for c in creates]) * 1000:.0f} ms)  "
          f"target < {TARGET_DEFINE_S * 1000:.0f} ms: {'MET' if define_med < TARGET_DEFINE_S else 'MISSED'}")
    print(f"  drift repair: median {repair_med * 1000:.0f} ms; bare start median {bare_med * 1000:.0f} ms; "
          f"repair minus bare start {overhead * 1000:.0f} ms (paired median {med(paired) * 1000:.0f} ms)  "
          f"target < {TARGET_REPAIR_OVERHEAD_S * 1000:.0f} ms: {'MET' if overhead < TARGET_REPAIR_OVERHEAD_S else 'MISSED'}")
    restart_med = med([r.bare_restart_s for r in repairs])
    print(f"  (stricter floor: bare restart right after a destroy, median {restart_med * 1000:.0f} ms; "
          f"repair minus that {(repair_med - restart_med) * 1000:.0f} ms, paired median {med(paired_restart) * 1000:.0f} ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20, help="measured tries of (a) and of (b) (default: 20)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded tries before each series (default: 1)")
    parser.add_argument("--gap", type=float, default=1.5,
                        help="seconds without events of our domains before the next try (default: 1.5)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for a define or a start")
    parser.add_argument("--scope", default=f"{NAMES.prefix}scope",
                        help="--scope for the controller (default: %(default)s); '' for none (scope 'default')")
    parser.add_argument("--calm-events", type=int, default=2,
                        help="a try with at most this many foreign events counts as calm in the extra summary")
    parser.add_argument("--max-disruptions", type=int, default=5,
                        help="libvirtd restarts by others to tolerate (the try is redone) before giving up")
    parser.add_argument("--quiet-period", type=float, default=None,
                        help="pass --quiet-period to the controller (default: the controller's own, 0.3 s)")
    parser.add_argument("--keep-log", metavar="FILE", help="copy the controller's JSON log here before cleaning up")
    args = parser.parse_args(argv)
    if args.tries < 1 or args.warmup < 0 or args.tries + args.warmup > 90:
        parser.error("--tries must be at least 1 and --tries + --warmup at most 90")

    lv = Libvirt(NAMES)
    recorder = EventRecorder()
    controller: ControllerProcess | None = None
    try:
        print(f"sweeping leftovers named {NAMES.prefix}* on {URI}...", flush=True)
        sweep(lv)
        prepare(lv)
        extra = ["--quiet-period", f"{args.quiet_period:g}"] if args.quiet_period is not None else []
        write_manifest(NAMES.manifests, NAMES.vm(0), NAMES.pool)  # the seed: an empty set is a "problem"
        controller = ControllerProcess(NAMES, extra=extra, scope=args.scope)
        print(f"starting: {controller.command_line()}", flush=True)
        started = time.monotonic()
        controller.start()
        if recorder.wait_for(NAMES.vm(0), "started", after=started, timeout=args.timeout) is None:
            raise fail("the seed VM did not start", controller)
        controller.wait_healthy(timeout=args.timeout)
        settle(recorder, args.gap)
        print(f"controller pid {controller.pid} healthy on {controller.address} "
              f"(seed VM running {time.monotonic() - started:.1f} s after launch)", flush=True)
        bench = Bench(args, lv, recorder, controller)
        bench.created.append(NAMES.vm(0))
        bench.run()
        metrics = controller.metrics()
        wakeups = {k.split('"')[1]: v for k, v in metrics.items() if k.startswith("kvmops_wakeups_total{")}
        report(bench, controller.total(metrics, "kvmops_reconcile_passes_total"), wakeups)
    finally:
        teardown(lv, controller, args.keep_log)
        recorder.close()
        lv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
