"""Crash trials by the hundred: kill -9 kvmops or libvirtd, finish the job, check the world.

The trials of tests/e2e/crash.py (the crash suite runs ten of them), on a private libvirtd
of tests/lab.py, so the machine's libvirtd is never disturbed.  ``--kills N`` trials:

* the five kill points aimed at the windows of known bugs (issue 8, items 4-6, and a
  network's bridge, issue 9);
* with the crash hook (``KVMOPS_TEST_CRASH_AT``), every step boundary: kvmops killed right
  before each mutating libvirt call of an apply, then of a prune, one trial each;
* the rest at seeded random delays within an uninterrupted run, in turn: kvmops killed
  during an apply, during a prune; libvirtd killed (and restarted) during an apply,
  during a prune.

When ``N`` is smaller than the first two groups, a seeded sample of them is taken.  After
each kill, ``kvmops apply`` is re-run until it exits 0, and the invariants are checked:
converged (a fresh plan is empty), no volume lost (image bytes included), none leaked
(after the apply trials, also once the VMs are pruned), no temporary file left, no domain
without its mark, no foreign object changed.

Usage (root, from the repository root)::

    .venv/bin/python bench/crash_trials.py --kills 100 --seed 1
    .venv/bin/python bench/crash_trials.py --reproduce "apply kvmops hook 9" --seed 1

Prints a summary table (counts of trials that broke each invariant) and, for every trial
that broke one, how to reproduce it.  Exit status 0 when every invariant held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import lab as labs  # noqa: E402
from tests.e2e import crash  # noqa: E402

COLUMNS = ("tries", "killed", "converged", "lost", "leaked", "temp files", "unmarked", "foreign changed",
           "internal errors")


def schedule(kills: int, rng: random.Random, baseline: crash.Baseline, hook: bool) -> list[tuple[str, crash.KillPoint]]:
    """Return the ``kills`` trials to run, in order."""
    fixed = list(crash.TARGETED)
    if hook:
        fixed += [("apply", crash.KillPoint("kvmops", "hook", n)) for n in range(1, (baseline.apply_calls or 0) + 1)]
        fixed += [("prune", crash.KillPoint("kvmops", "hook", n)) for n in range(1, (baseline.prune_calls or 0) + 1)]
    if kills <= len(fixed):
        return sorted(rng.sample(fixed, kills), key=fixed.index)
    rotation = [("apply", "kvmops"), ("prune", "kvmops"), ("apply", "libvirtd"), ("prune", "libvirtd")]
    extra = [rotation[i % len(rotation)] for i in range(kills - len(fixed))]
    return fixed + [(kind, crash.random_point(rng, kind, victim, baseline, hook=False)) for kind, victim in extra]


def label(kind: str, point: crash.KillPoint) -> str:
    """Return the table row a trial belongs to."""
    return f"{kind} / kill {point.victim} / {point.how}"


def summarize(results: list[crash.TrialResult]) -> str:
    """Return the summary table."""
    rows: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    for result in results:
        for key in (label(result.kind, result.point), "total"):
            row = rows[key]
            row["tries"] += 1
            row["killed"] += result.killed
            row["converged"] += not result.violations.get("converged")
            for column in ("lost", "leaked", "temp files", "unmarked", "foreign changed"):
                row[column] += bool(result.violations.get(column))
            row["internal errors"] += bool(result.internal_errors)
    width = max(len(k) for k in rows) + 2
    lines = ["trial".ljust(width) + "  ".join(COLUMNS)]
    for key in sorted(k for k in rows if k != "total") + ["total"]:
        lines.append(key.ljust(width) + "  ".join(str(rows[key][c]).rjust(len(c)) for c in COLUMNS))
    return "\n".join(lines)


def _tally(forced: list[str]) -> str:
    """Return "12 cgroup, 1 bridge" for the lines :meth:`tests.lab.Lab.stop` returns."""
    counts: dict[str, int] = defaultdict(int)
    for line in forced:
        counts[line.split()[0]] += 1
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))


def parse_point(text: str) -> tuple[str, crash.KillPoint]:
    """Return the trial ``"KIND VICTIM HOW AT"`` names (as printed for a broken trial)."""
    kind, victim, how, at = text.split()
    return kind, crash.KillPoint(victim, how, float(at) if how == "delay" else int(at) if how == "hook" else at)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--image-mib", type=int, default=16, help="size of the image the set imports")
    parser.add_argument("--reproduce", metavar="'KIND VICTIM HOW AT'", help="run this one trial only")
    args = parser.parse_args()
    prefix = os.environ.get("KVMOPS_TEST_PREFIX", "kvmops-bench")
    name = f"{prefix}-lab-{uuid.uuid4().hex[:6]}"
    labs.sweep_abandoned(labs.LAB_ROOT, f"{prefix}-lab-*")
    lab = labs.Lab(name).start(1)
    world = crash.CrashWorld(lab.hosts[0], name, image_size=args.image_mib * crash.MIB)
    started = time.monotonic()
    results: list[crash.TrialResult] = []
    harness_errors: list[str] = []
    try:
        world.open(seed=args.seed)
        baseline = crash.measure_baseline(world)
        hook = crash.crash_hook_available()
        print(f"lab host {lab.hosts[0].uri}; uninterrupted apply {baseline.apply_seconds:.1f}s "
              f"({baseline.apply_calls} mutating calls, {baseline.apply_passes} pass), prune "
              f"{baseline.prune_seconds:.1f}s ({baseline.prune_calls} calls, {baseline.prune_passes} passes); "
              f"crash hook {'available' if hook else 'absent'}", flush=True)
        rng = random.Random(args.seed)
        trials = [parse_point(args.reproduce)] if args.reproduce else schedule(args.kills, rng, baseline, hook)
        for index, (kind, point) in enumerate(trials, 1):
            try:
                result = crash.run_trial(world, kind, point, args.seed)
            except Exception as exc:  # noqa: BLE001 (a broken trial is a finding; the others still run)
                print(f"[{index}/{len(trials)}] {kind} {point.victim} {point.how} {point.at}: HARNESS ERROR {exc!r}")
                harness_errors.append(f"{kind} {point}: {exc!r}")
                continue
            results.append(result)
            verdict = "ok" if result.ok else "BROKEN: " + "; ".join(
                f"{k}: {len(v)}" for k, v in result.violations.items()) + (" internal errors" if result.internal_errors else "")
            print(f"[{index}/{len(trials)}] {kind} {point.victim} {point.how} {point.at}: "
                  f"{'killed' if result.killed else 'not killed'}, {result.reapplies} re-apply, "
                  f"{result.seconds:.1f}s, {verdict}", flush=True)
            if not result.ok:
                print(result.describe().replace("\n", "\n    "), flush=True)
    finally:
        world.close()
        forced = lab.stop()
    print()
    print(f"{len(results)} trials in {time.monotonic() - started:.0f}s, seed {args.seed}, "
          f"image {args.image_mib} MiB; lab cleanup had to remove: {_tally(forced) or 'nothing'}")
    print(summarize(results))
    if harness_errors:
        print(f"\n{len(harness_errors)} trials could not be judged (harness errors):", *harness_errors, sep="\n  ")
    broken = [r for r in results if not r.ok]
    if broken:
        print("\nBroken trials (reproduce one with --reproduce 'KIND VICTIM HOW AT' --seed SEED):")
        for result in broken:
            print(f"[{result.kind} {result.point.victim} {result.point.how} {result.point.at}] " + result.describe())
    return 1 if broken or harness_errors else 0


if __name__ == "__main__":
    sys.exit(main())
