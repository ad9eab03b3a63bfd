"""Placement: deterministic, sticky, capacity-aware; cordon, spread, anti-affinity, unreachable hosts."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core import model, placement
from reconciler.core.placement import Move
from tests.unit import builders

GIB_KIB = 1024 * 1024


def host(name: str, *, vcpus: int | None = 8, memory_gib: int | None = 16, schedulable: bool = True,
         cpu_overcommit: float = 1.0, **labels: str) -> model.HostSpec:
    return model.HostSpec(
        name=name, uri=f"qemu+ssh://{name}/system", labels=tuple(sorted(labels.items())),
        capacity=model.HostCapacity(vcpus=vcpus, memory=memory_gib * GIB_KIB if memory_gib else None,
                                    cpu_overcommit=cpu_overcommit),
        schedulable=schedulable, manifest="hosts.yaml", origin=builders.origin("manifests/hosts.yaml"),
    )


def vm(name: str, *, vcpus: int = 1, memory_gib: int = 1, labels: dict[str, str] | None = None,
       **where: object) -> model.VMSpec:
    spec = builders.vm(name, vcpus=vcpus, memory=memory_gib * GIB_KIB)
    selector = tuple(sorted(where.pop("host_selector", {}).items()))
    fixed = model.Placement(host_selector=selector, **where) if where or selector else None
    return dataclasses.replace(spec, placement=fixed, labels=tuple(sorted((labels or {}).items())))


def fleet(hosts: list[model.HostSpec], vms: list[model.VMSpec]) -> model.DesiredState:
    return dataclasses.replace(builders.desired(*vms), hosts=MappingProxyType({h.name: h for h in hosts}))


def test_new_vms_go_to_the_least_loaded_host_ties_broken_by_name():
    result = placement.place(fleet([host("b"), host("a")], [vm("v1"), vm("v2"), vm("v3", memory_gib=4)]), {})
    assert dict(result.assignments) == {"v1": "a", "v2": "b", "v3": "a"}
    assert result.moves == () and result.problems == ()


def test_load_is_a_share_of_capacity_times_overcommit():
    big = host("big", vcpus=4, memory_gib=64, cpu_overcommit=4)  # room for 16 vcpus
    small = host("small", vcpus=8, memory_gib=64)
    result = placement.place(fleet([big, small], [vm("a", vcpus=4), vm("b", vcpus=4)]), {})
    assert dict(result.assignments) == {"a": "big", "b": "small"}  # a on big: 4/16 = 0.25 < 4/8 for small


def test_a_vm_already_on_an_eligible_host_stays_there():
    result = placement.place(fleet([host("a"), host("b")], [vm("v1"), vm("v2")]), {"v1": "b", "v2": "b"})
    assert dict(result.assignments) == {"v1": "b", "v2": "b"}
    assert result.moves == ()


def test_a_vm_stays_even_when_its_host_is_over_capacity():
    result = placement.place(fleet([host("a", memory_gib=1), host("b")], [vm("v1", memory_gib=4)]), {"v1": "a"})
    assert dict(result.assignments) == {"v1": "a"} and result.problems == ()


def test_capacity_is_never_exceeded_and_what_does_not_fit_is_a_located_problem():
    hosts = [host("a", memory_gib=4), host("b", memory_gib=4)]
    result = placement.place(fleet(hosts, [vm(f"v{i}", memory_gib=3) for i in range(3)]), {})
    assert dict(result.assignments) == {"v0": "a", "v1": "b"}
    (problem,) = result.problems
    assert problem.file == "manifests/vms/v2.yaml" and problem.path == "metadata.name"
    assert problem.message == ("no capacity: no eligible Host has room for 1 vcpus, 3 GiB (a: 7 vcpus, 1 GiB free; b: 7 vcpus, 1 GiB free)")


def test_pinned_and_selected_vms_go_only_where_their_placement_admits():
    hosts = [host("a", zone="x"), host("b", zone="y"), host("c", zone="y")]
    vms = [vm("pinned", host="c"), vm("zoned", host_selector={"zone": "y"}), vm("nowhere", host_selector={"zone": "z"})]
    result = placement.place(fleet(hosts, vms), {})
    assert dict(result.assignments) == {"pinned": "c", "zoned": "b"}
    assert [p.message for p in result.problems] == ["no eligible host: no Host matches hostSelector zone=z"]
    assert result.problems[0].path == "spec.placement"


def test_a_cordoned_host_takes_no_new_vm_and_its_vms_move_off():
    hosts = [host("a", schedulable=False), host("b"), host("c")]
    result = placement.place(fleet(hosts, [vm("old"), vm("new")]), {"old": "a"})
    assert dict(result.assignments) == {"new": "b", "old": "c"}
    assert result.moves == (Move("old", "a", "c", "host a is cordoned (schedulable: false)"),)


def test_a_changed_placement_moves_the_vm_with_the_reason():
    hosts = [host("a", zone="x"), host("b", zone="y")]
    result = placement.place(fleet(hosts, [vm("v", host_selector={"zone": "y"}), vm("p", host="a")]), {"v": "a", "p": "b"})
    assert result.moves == (Move("p", "b", "a", "placement.host is a"),
                            Move("v", "a", "b", "host a does not match hostSelector zone=y"))


def test_a_vm_that_must_move_but_has_nowhere_to_go_stays_with_a_problem():
    hosts = [host("a", schedulable=False), host("b", memory_gib=1)]
    result = placement.place(fleet(hosts, [vm("v", memory_gib=2)]), {"v": "a"})
    assert dict(result.assignments) == {"v": "a"} and result.moves == ()
    assert result.problems[0].message.startswith("must move off a (host a is cordoned (schedulable: false)) but no capacity")


def test_spread_by_spreads_a_group_over_the_values_of_a_host_label():
    hosts = [host("a1", rack="r1"), host("a2", rack="r1"), host("b1", rack="r2")]
    web = [vm(f"web{i}", labels={"app": "web"}, spread_by="rack", anti_affinity="app") for i in range(4)]
    result = placement.place(fleet(hosts, web + [vm("other")]), {})
    racks = {"a1": "r1", "a2": "r1", "b1": "r2"}
    assert sorted(racks[result.assignments[f"web{i}"]] for i in range(4)) == ["r1", "r1", "r2", "r2"]
    assert dict(result.assignments) == {"other": "a1", "web0": "a2", "web1": "b1", "web2": "a1", "web3": "b1"}


def test_strict_anti_affinity_keeps_vms_with_one_label_value_on_different_hosts():
    hosts = [host("a"), host("b")]
    dbs = [vm(f"db{i}", labels={"app": "db"}, anti_affinity="app") for i in range(3)]
    result = placement.place(fleet(hosts, dbs + [vm("web", labels={"app": "web"}, anti_affinity="app")]), {})
    assert dict(result.assignments) == {"db0": "a", "db1": "b", "web": "a"}
    assert [p.file for p in result.problems] == ["manifests/vms/db2.yaml"]
    assert "antiAffinity" in result.problems[0].message


def test_a_vm_that_may_run_on_an_unreachable_host_is_not_placed_elsewhere():
    hosts = [host("a"), host("dead")]
    result = placement.place(fleet(hosts, [vm("v"), vm("pinned", host="a")]), {}, unreachable={"dead"})
    assert dict(result.assignments) == {"pinned": "a", "v": "dead"}
    assert dict(result.unknown) == {"v": ("dead",)} and result.moves == ()


def test_evacuating_a_dead_host_places_its_vms_elsewhere():
    hosts = [host("a"), host("dead")]
    result = placement.place(fleet(hosts, [vm("v")]), {}, unreachable={"dead"}, evacuate={"dead"})
    assert dict(result.assignments) == {"v": "a"} and result.unknown == {}
    assert result.moves == (Move("v", "dead", "a", "host dead was declared dead (evacuate)"),)


# --- properties -------------------------------------------------------------------------

HOST_NAMES = [f"h{i}" for i in range(5)]


@st.composite
def fleets(draw):
    hosts = [host(name, vcpus=draw(st.integers(1, 16)), memory_gib=draw(st.integers(1, 32)),
                  schedulable=draw(st.booleans()), rack=draw(st.sampled_from(["r1", "r2"])))
             for name in draw(st.lists(st.sampled_from(HOST_NAMES), min_size=1, max_size=5, unique=True))]
    vms = []
    for index in range(draw(st.integers(0, 12))):
        where = draw(st.sampled_from([{}, {"host": draw(st.sampled_from(HOST_NAMES))},
                                      {"host_selector": {"rack": draw(st.sampled_from(["r1", "r2"]))}},
                                      {"spread_by": "rack", "anti_affinity": "app"}, {"anti_affinity": "app"}]))
        vms.append(vm(f"vm{index}", vcpus=draw(st.integers(1, 4)), memory_gib=draw(st.integers(1, 8)),
                      labels={"app": draw(st.sampled_from(["web", "db"]))}, **where))
    names = [h.name for h in hosts]
    located = {v.name: draw(st.sampled_from(names)) for v in vms if draw(st.booleans())}
    return hosts, vms, located


@settings(max_examples=200, deadline=None, derandomize=True)
@given(fleets(), st.randoms(use_true_random=False))
def test_placement_is_deterministic_and_ignores_the_order_of_hosts_and_vms(drawn, random):
    hosts, vms, located = drawn
    first = placement.place(fleet(hosts, vms), located)
    random.shuffle(hosts)
    random.shuffle(vms)
    again = placement.place(fleet(hosts, vms), dict(reversed(list(located.items()))))
    assert again == first


@settings(max_examples=200, deadline=None, derandomize=True)
@given(fleets())
def test_new_and_moved_vms_never_exceed_any_hosts_capacity(drawn):
    hosts, vms, located = drawn
    result = placement.place(fleet(hosts, vms), located)
    staying = {name for name, where in located.items() if result.assignments.get(name) == where}
    for h in hosts:
        on = [v for v in vms if result.assignments.get(v.name) == h.name]
        if any(v.name in staying for v in on):
            continue  # a VM that stays where it runs is never evicted for room
        assert sum(v.vcpus for v in on) <= h.capacity.vcpus
        assert sum(v.memory for v in on) <= h.capacity.memory
        assert h.schedulable or not on
