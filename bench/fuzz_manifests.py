"""Fuzz run: thousands of mutated manifest trees through ``kvmops validate`` and ``plan``.

What is measured
    Each try is one mutated manifest tree from ``tests/manifest_fuzzing.py`` (YAML tags,
    values of other types, huge and non-finite numbers, deleted, duplicated and
    re-indented lines, truncation, aliases, unicode, deep nesting, paths out of the
    tree, bytes that are not UTF-8), answered by ``kvmops validate`` and ``kvmops plan``
    on libvirt's test driver, in-process.  The seed trees include a fleet (Hosts on
    test-driver URIs, placement, shared pools, hosts selectors) and policy configuration
    files (``plan --config``), which are mutated too.  An answer is acceptable when it is exit 0
    (valid) or exit 1 with problem lines that each name a file; anything else is a
    failure: an exception or "internal error", a traceback, another exit status, or no
    answer within the time bound (a hang).

Targets
    failures 0 (internal errors 0, hangs 0).

Usage (from the repository root)::

    .venv/bin/python bench/fuzz_manifests.py [--examples 2500] [--seed 8]

Prints a summary table and the first failures; exits 1 when there is any failure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from tests import manifest_fuzzing as fuzzing  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=8, help="Hypothesis seed, for a reproducible run")
    args = parser.parse_args()

    verdicts: list[fuzzing.Verdict] = []
    failures: list[tuple[fuzzing.Case, fuzzing.Verdict]] = []
    seeds: Counter[str] = Counter()

    with tempfile.TemporaryDirectory(prefix="kvmops-fuzz-") as scratch:
        @seed(args.seed)
        @settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=fuzzing.cases())
        def one(case: fuzzing.Case) -> None:
            verdict = fuzzing.judge(case, Path(scratch))
            verdicts.append(verdict)
            seeds[case.seed] += 1
            if verdict.outcome == "failure":
                failures.append((case, verdict))

        started = time.monotonic()
        one()
        elapsed = time.monotonic() - started

    outcomes = Counter(v.outcome for v in verdicts)
    hangs = sum(1 for _, v in failures if v.why.startswith("no answer"))
    times = sorted(v.seconds for v in verdicts)
    rows = [
        ("tries", len(verdicts)),
        ("valid plans (validate 0, plan 0)", outcomes["valid"]),
        ("problem results (exit 1, FILE:LINE lines)", outcomes["problems"]),
        ("  of which validate was clean (plan-time problems)", sum(1 for v in verdicts if v.statuses[:1] == (0,))),
        ("internal errors / tracebacks / bad lines", len(failures) - hangs),
        ("hangs (no answer within %d s)" % fuzzing.EXAMPLE_SECONDS, hangs),
        ("max time per try (validate + plan)", f"{times[-1]:.3f} s" if times else "-"),
        ("median time per try", f"{statistics.median(times):.3f} s" if times else "-"),
        ("total", f"{elapsed:.0f} s"),
        ("seed trees", ", ".join(f"{k} {n}" for k, n in sorted(seeds.items()))),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"kvmops manifest fuzz, Hypothesis seed {args.seed}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for case, verdict in failures[:5]:
        print(f"\nFAILURE in {case.seed}/{case.relpath}:\n{case.content!r:.2000}\n{verdict.why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
