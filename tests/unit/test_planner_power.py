"""Power: what each runStrategy does with a domain in each state, without ever touching libvirt."""

from __future__ import annotations

import pytest

from reconciler.core import model, planner
from reconciler.core import plan as plans
from reconciler.core.plan import Action
from tests.unit import builders as b

S = model.RunStrategy
P = model.PowerState
R = model.ShutoffReason


def power_steps(strategy: model.RunStrategy, power: model.PowerState, reason: model.ShutoffReason | None = None,
                **settings) -> plans.ResourcePlan:
    """Return the plan of a converged VM with ``strategy`` whose domain is in ``power``."""
    spec = b.vm("web", run_strategy=strategy, disks=(b.disk(),))
    actual = b.actual(b.domain(b.definition(spec), power=power, reason=reason), volumes=b.volumes_of(spec))
    result = planner.plan_changes(b.desired(spec), actual, settings=planner.Settings(**settings))
    (vm,) = result.resources
    return vm


@pytest.mark.parametrize(
    ("strategy", "power", "reason", "expected"),
    [
        pytest.param(S.ALWAYS, P.SHUTOFF, R.SHUTDOWN, "start", id="always-starts-after-guest-shutdown"),
        pytest.param(S.ALWAYS, P.SHUTOFF, R.DESTROYED, "start", id="always-starts-after-destroy"),
        pytest.param(S.ALWAYS, P.SHUTOFF, R.UNKNOWN, "start", id="always-starts-for-unknown-reason"),
        pytest.param(S.ALWAYS, P.CRASHED, None, "start", id="always-starts-crashed"),
        pytest.param(S.ALWAYS, P.RUNNING, None, None, id="always-leaves-running"),
        pytest.param(S.ALWAYS, P.PAUSED, None, None, id="always-leaves-paused"),
        pytest.param(S.ALWAYS, P.TRANSITIONAL, None, None, id="always-waits-for-transition"),
        pytest.param(S.HALTED, P.RUNNING, None, "stop", id="halted-stops-running"),
        pytest.param(S.HALTED, P.PAUSED, None, "stop", id="halted-stops-paused"),
        pytest.param(S.HALTED, P.SHUTOFF, R.SHUTDOWN, None, id="halted-leaves-off"),
        pytest.param(S.HALTED, P.SHUTOFF, R.FAILED, None, id="halted-never-starts"),
        pytest.param(S.HALTED, P.TRANSITIONAL, None, None, id="halted-waits-for-transition"),
        pytest.param(S.RERUN_ON_FAILURE, P.SHUTOFF, R.CRASHED, "start", id="rerun-restarts-after-crash"),
        pytest.param(S.RERUN_ON_FAILURE, P.SHUTOFF, R.FAILED, "start", id="rerun-restarts-after-failed-start"),
        pytest.param(S.RERUN_ON_FAILURE, P.CRASHED, None, "start", id="rerun-restarts-crashed-state"),
        pytest.param(S.RERUN_ON_FAILURE, P.SHUTOFF, R.SHUTDOWN, None, id="rerun-respects-guest-shutdown"),
        pytest.param(S.RERUN_ON_FAILURE, P.SHUTOFF, R.DESTROYED, None, id="rerun-respects-destroy"),
        pytest.param(S.RERUN_ON_FAILURE, P.RUNNING, None, None, id="rerun-leaves-running"),
        pytest.param(S.MANUAL, P.SHUTOFF, R.FAILED, "start", id="manual-retries-failed-start"),
        pytest.param(S.MANUAL, P.SHUTOFF, R.SHUTDOWN, None, id="manual-leaves-off"),
        pytest.param(S.MANUAL, P.SHUTOFF, R.CRASHED, None, id="manual-leaves-crashed"),
        pytest.param(S.MANUAL, P.SHUTOFF, R.DESTROYED, None, id="manual-leaves-destroyed"),
        pytest.param(S.MANUAL, P.RUNNING, None, None, id="manual-leaves-running"),
        pytest.param(S.MANUAL, P.PAUSED, None, None, id="manual-leaves-paused"),
    ],
)
def test_run_strategy_power_rules(strategy, power, reason, expected):
    """Each strategy starts, stops or leaves the domain exactly as KubeVirt's vocabulary says."""
    vm = power_steps(strategy, power, reason)
    power_kinds = [s.kind for s in vm.steps if s.kind in ("start_domain", "stop_domain")]
    assert power_kinds == ([f"{expected}_domain"] if expected else [])
    assert vm.actions == ((Action(expected),) if expected else ())
    assert [s for s in vm.steps if s.kind not in ("start_domain", "stop_domain")] == []


@pytest.mark.parametrize(
    ("strategy", "starts"),
    [
        pytest.param(S.ALWAYS, True, id="always"),
        pytest.param(S.RERUN_ON_FAILURE, True, id="rerun-on-failure"),
        pytest.param(S.MANUAL, True, id="manual"),
        pytest.param(S.HALTED, False, id="halted"),
    ],
)
def test_creation_starts_the_domain_unless_halted(strategy, starts):
    """Every strategy but Halted starts a freshly created domain once."""
    spec = b.vm("web", run_strategy=strategy)
    (vm,) = planner.plan_changes(b.desired(spec), b.actual()).resources
    assert ("start_domain" in [s.kind for s in vm.steps]) is starts
    assert vm.actions == ((Action.CREATE, Action.START) if starts else (Action.CREATE,))


@pytest.mark.parametrize(
    ("spec_timeout", "settings", "expected"),
    [
        pytest.param(None, {}, 60.0, id="global-default"),
        pytest.param(None, {"shutdown_timeout": 30.0}, 30.0, id="global-setting"),
        pytest.param(120.0, {"shutdown_timeout": 30.0}, 120.0, id="manifest-wins"),
    ],
)
def test_stop_is_graceful_with_the_manifests_timeout(spec_timeout, settings, expected):
    """A stop carries the shutdown timeout: the VM's own, else the global one."""
    spec = b.vm("web", run_strategy=S.HALTED, shutdown_timeout=spec_timeout)
    actual = b.actual(b.domain(b.definition(spec), power=P.RUNNING))
    (vm,) = planner.plan_changes(b.desired(spec), actual, settings=planner.Settings(**settings)).resources
    assert vm.steps == (plans.StopDomain("web", expected),)


def test_paused_domain_gets_a_note_and_is_left_paused():
    """kvmops never resumes a paused guest; the plan says how to."""
    vm = power_steps(S.ALWAYS, P.PAUSED)
    assert any("virsh resume" in note for note in vm.notes)


def test_a_domain_a_migration_left_paused_is_left_paused_and_the_note_says_why_and_what_to_check():
    """libvirt pauses a guest at a live migration's switch-over; a job ended without finishing can leave it so."""
    import dataclasses

    spec = b.vm("web", disks=(b.disk(),))
    domain = dataclasses.replace(b.domain(b.definition(spec), power=P.PAUSED), paused_by_migration=True)
    (vm,) = planner.plan_changes(b.desired(spec), b.actual(domain, volumes=b.volumes_of(spec))).resources
    assert vm.steps == ()
    assert any("paused by a migration" in note and "no other host runs it" in note for note in vm.notes)


def test_domain_in_transition_is_left_for_the_next_pass():
    """A domain shutting down or saving is not started or stopped in the middle of it."""
    vm = power_steps(S.ALWAYS, P.TRANSITIONAL)
    assert vm.steps == ()
    assert any("in transition" in note for note in vm.notes)


def test_run_strategy_change_updates_the_recorded_strategy_live():
    """Switching Always to Manual on a running VM rewrites the owner mark and leaves power alone."""
    base = b.vm("web")
    spec = b.vm("web", run_strategy=S.MANUAL)
    actual = b.actual(b.domain(b.definition(base), power=P.RUNNING))
    (vm,) = planner.plan_changes(b.desired(spec), actual).resources
    assert [(c.path, c.old, c.new, c.impact.value) for c in vm.changes] == [("runStrategy", "Always", "Manual", "live")]
    assert [s.kind for s in vm.steps] == ["define_domain"]
