"""What a fleet decides for one VM's commands: whether a domain may be adopted on a Host, the roster
its mark records, and what each Host lacks for its share of the manifests (``validate --live``)."""

from __future__ import annotations

import dataclasses

from reconciler.core import fleet, model
from tests.unit import builders
from tests.unit.test_fleet import host_state, manifests, running_on, vm_yaml


def test_a_foreign_domain_on_a_host_its_placement_admits_may_be_adopted():
    state = manifests(vm_yaml("old", where="{hostSelector: {zone: x}}"))
    observed = {"a": builders.actual(builders.foreign("old")), "b": builders.actual()}
    assert fleet.adoption_refusal(state, observed, "old", "a", "default") is None


def test_adoption_is_refused_where_the_next_plan_would_move_the_vm():
    state = manifests(vm_yaml("old", where="{host: b}"))
    observed = {"a": builders.actual(builders.foreign("old")), "b": builders.actual()}
    refusal = fleet.adoption_refusal(state, observed, "old", "a", "default")
    assert refusal.startswith("Host a may not run it (placement.host is b), so the next plan would move it")

    anywhere = manifests(vm_yaml("old"))
    cordoned = dataclasses.replace(anywhere, hosts={**anywhere.hosts, "a": dataclasses.replace(anywhere.hosts["a"],
                                                                                                 schedulable=False)})
    refusal = fleet.adoption_refusal(cordoned, observed, "old", "a", "default")
    assert refusal.startswith("Host a is cordoned (schedulable: false)")


def test_adoption_is_refused_when_another_host_defines_the_name_whoever_owns_it():
    state = manifests(vm_yaml("web"))
    for other in (running_on("b", state.vms["web"]), builders.foreign("web")):
        observed = {"a": builders.actual(builders.foreign("web")), "b": builders.actual(other)}
        refusal = fleet.adoption_refusal(state, observed, "web", "a", "default")
        assert refusal.startswith("a domain named web is also defined on Host b (")
        assert ("managed by this fleet" if other.owned else "not managed by kvmops") in refusal


def test_adoption_fails_closed_while_any_host_cannot_be_seen():
    state = manifests(vm_yaml("web"))
    silent = {"a": builders.actual(builders.foreign("web")), "b": fleet.HostUnreachable("b", "connection refused")}
    assert fleet.adoption_refusal(state, silent, "web", "a", "default").startswith(
        "Host b does not answer (connection refused): kvmops cannot check that no domain web is defined there")

    # a mark on a names Host c, which no manifest declares: web may run there unseen
    roster = ("a", "b", "c")
    other = dataclasses.replace(state.vms["web"], name="db")
    marked = running_on("a", other, roster=roster)
    observed = {"a": builders.actual(builders.foreign("web"), marked), "b": builders.actual()}
    assert fleet.adoption_refusal(state, observed, "web", "a", "default").startswith(
        "the fleet's marks name c, which no Host manifest declares")
    assert fleet.roster_of(state, observed, "default") == roster


def test_the_roster_an_adopted_mark_records_is_the_one_the_fleet_plan_records():
    state = manifests(vm_yaml("web", where="{host: a}"))
    observed = {"a": host_state(running_on("a", state.vms["web"], roster=("a",)), state=state),
                "b": fleet.HostUnreachable("b", "down")}
    assert fleet.roster_of(state, observed, "default") == ("a", "b")
    (record,) = [r for r in fleet.plan_fleet(state, observed).host("a").plan.resources if r.kind == "Host"]
    assert record.steps[0].hosts == ("a", "b")


def test_each_host_is_checked_against_its_own_share():
    """web (pool vmstore) goes to a, db (pool nosuch, declared nowhere) to b: b lacks nosuch, a lacks nothing."""
    state = manifests(vm_yaml("web", where="{host: a}"), vm_yaml("db", where="{host: b}", pool="nosuch"))
    observed = {"a": builders.actual(pools=(builders.observed_pool("vmstore", "/var/lib/kvmops/vmstore"),)),
                "b": builders.actual(pools=())}
    checked = fleet.check_hosts(state, observed)
    assert [(h.host, h.unreachable) for h in checked.hosts] == [("a", None), ("b", None)]
    assert checked.hosts[0].problems == ()
    assert [(p.path, "unknown storage pool 'nosuch'" in p.message) for p in checked.hosts[1].problems] == [
        ("spec.disks[0].pool", True)]
    assert checked.problems == () and checked.failed

    only = fleet.check_hosts(state, observed, only_host="a")
    assert [h.host for h in only.hosts] == ["a"] and not only.failed


def test_an_unreachable_host_is_not_checked_and_fails_the_check():
    state = manifests(vm_yaml("web", where="{host: a}"))
    observed = {"a": builders.actual(pools=(builders.observed_pool("vmstore", "/var/lib/kvmops/vmstore"),)),
                "b": fleet.HostUnreachable("b", "connection refused")}
    checked = fleet.check_hosts(state, observed)
    assert [(h.host, h.unreachable) for h in checked.hosts] == [("a", None), ("b", "connection refused")]
    assert checked.failed


def test_a_vm_no_host_can_take_is_the_fleets_problem_not_a_hosts():
    state = manifests(vm_yaml("web", where="{hostSelector: {zone: nowhere}}"))
    observed: dict[str, model.ActualState | fleet.HostUnreachable] = {
        "a": builders.actual(), "b": builders.actual()}
    checked = fleet.check_hosts(state, observed)
    assert [(p.path, p.message) for p in checked.problems] == [
        ("spec.placement", "no eligible host: no Host matches hostSelector zone=nowhere")]
    assert all(h.problems == () for h in checked.hosts) and checked.failed


def test_a_host_the_marks_name_and_no_manifest_declares_is_a_missing_section_of_the_check():
    state = manifests(vm_yaml("web", where="{host: a}"))
    marked = running_on("a", state.vms["web"], roster=("a", "b", "c"))
    observed = {"a": host_state(marked, state=state), "b": builders.actual()}
    checked = fleet.check_hosts(state, observed)
    assert [(h.host, h.missing, h.unreachable is not None) for h in checked.hosts] == [
        ("a", False, False), ("b", False, False), ("c", True, True)]
    assert checked.failed
