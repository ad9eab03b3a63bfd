"""Fuzzing: every mutated manifest tree gets problem lines with exit 1, or a valid plan.

Property-based (Hypothesis): ``tests.manifest_fuzzing`` mutates the example trees (YAML
tags, values of other types, huge and non-finite numbers, deleted and duplicated lines,
truncation, aliases, unicode, deep nesting, paths out of the tree) and runs
``kvmops validate`` and ``kvmops plan`` on the test driver, in-process.  No internal
error, no traceback, no hang.  Derandomized, so CI runs the same examples every time;
``KVMOPS_FUZZ_EXAMPLES`` raises the count (``bench/fuzz_manifests.py`` runs 2,500 and
prints a summary).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from tests import manifest_fuzzing as fuzzing

EXAMPLES = int(os.environ.get("KVMOPS_FUZZ_EXAMPLES", "150"))


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=fuzzing.cases())
def test_a_mutated_manifest_tree_gets_problem_lines_or_a_valid_plan(case, tmp_path):
    """validate and plan answer a mutated tree with exit 1 and FILE:LINE lines, or exit 0; never a crash or a hang."""
    verdict = fuzzing.judge(case, tmp_path)
    assert verdict.outcome != "failure", f"{case.seed}/{case.relpath}:\n{case.content!r}\n\n{verdict.why}"


@pytest.mark.parametrize("seed", sorted(fuzzing.SEEDS))
def test_every_seed_tree_is_valid_before_it_is_mutated(seed, tmp_path):
    """The fuzz starts from valid trees, so a problem it finds is the mutation's doing."""
    relpath = next(p for p in sorted(fuzzing.SEEDS[seed]) if p.endswith(".yaml"))
    verdict = fuzzing.judge(fuzzing.Case(seed, relpath, fuzzing.SEEDS[seed][relpath]), tmp_path)
    assert verdict.outcome == "valid", verdict.why


def test_the_judge_fails_an_internal_error(tmp_path, monkeypatch):
    """A fuzz test that cannot fail is a defect: an exception inside kvmops is reported as a failure."""
    from reconciler.adapters import manifests

    def crash(*_args, **_kwargs):
        raise AttributeError("'NoneType' object has no attribute 'groupdict'")

    monkeypatch.setattr(manifests, "parse_text", crash)
    verdict = fuzzing.judge(fuzzing.Case("hostile", "vms/files.yaml", "a: 1\n"), tmp_path)
    assert verdict.outcome == "failure" and "groupdict" in verdict.why


def test_the_judge_fails_a_configuration_that_crashes_and_passes_its_located_problems(tmp_path, monkeypatch):
    """The policy and fleet seeds plan with --config: its problems are located lines, a crash reading it a failure."""
    from reconciler.core import policy

    config = fuzzing.manifest_seeds.CONFIG
    bad = fuzzing.judge(fuzzing.Case("policy", config, "policy:\n  maxPrunePerPass: -1\n"), tmp_path)
    assert bad.outcome == "problems", bad.why

    def crash(*_args, **_kwargs):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(policy, "from_config", crash)
    verdict = fuzzing.judge(fuzzing.Case("fleet", config, fuzzing.SEEDS["fleet"][config]), tmp_path)
    assert verdict.outcome == "failure" and "unhashable" in verdict.why
