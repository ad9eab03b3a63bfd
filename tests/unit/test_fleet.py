"""Fleet plans: one plan per host on its share of the manifests, migrations, unreachable hosts, split brain."""

from __future__ import annotations

import dataclasses

from reconciler.core import desired, domxml, fleet, model, planner
from reconciler.core import plan as plans
from tests.unit import builders

HOSTS = """\
apiVersion: kvmops/v1
kind: Host
metadata: {name: a, labels: {zone: x}}
spec: {uri: "qemu+ssh://a/system", capacity: {vcpus: 8, memory: 16GiB}}
---
apiVersion: kvmops/v1
kind: Host
metadata: {name: b, labels: {zone: y}}
spec: {uri: "qemu+ssh://b/system", capacity: {vcpus: 8, memory: 16GiB}}
"""
POOLS = """\
apiVersion: kvmops/v1
kind: StoragePool
metadata: {name: vmstore}
spec: {path: /var/lib/kvmops/vmstore}
---
apiVersion: kvmops/v1
kind: StoragePool
metadata: {name: nfs}
spec: {path: /srv/nfs, shared: true}
---
apiVersion: kvmops/v1
kind: StoragePool
metadata: {name: everywhere}
spec: {path: /srv/everywhere, hosts: {}}
"""
NETWORK = """\
apiVersion: kvmops/v1
kind: Network
metadata: {name: lan}
spec: {mode: isolated}
"""


def vm_yaml(name: str, *, where: str = "", pool: str = "vmstore", network: bool = False, halted: bool = False) -> str:
    spec = f"  memory: 1GiB\n  disks: [{{name: root, pool: {pool}, size: 1GiB}}]\n"
    if network:
        spec += "  networks: [{network: lan}]\n"
    if where:
        spec += f"  placement: {where}\n"
    if halted:
        spec += "  runStrategy: Halted\n"
    return builders.vm_yaml(name, spec)


def manifests(*vms: str) -> model.DesiredState:
    files = {"hosts.yaml": HOSTS, "pools.yaml": POOLS, "networks.yaml": NETWORK}
    files.update({f"vms/{i}.yaml": text for i, text in enumerate(vms)})
    state = desired.build(builders.manifest_set(files))
    assert state.problems == (), [str(p) for p in state.problems]
    return state


def running_on(host: str, spec: model.VMSpec, *, power=model.PowerState.RUNNING, uuid: str = builders.UUID,
               fleet_name: str = "default", roster: tuple[str, ...] = ("a", "b")) -> model.ObservedDomain:
    """Return the domain an apply of ``spec`` on ``host`` leaves: its mark names the fleet, the host and the fleet's Hosts."""
    seed = spec.cloud_init
    definition = builders.definition(spec, uuid=uuid, extra_volumes=() if seed is None else (
        model.OwnedVolume(seed.pool, seed.volume, model.DeletionPolicy.DELETE, True, seed.digest),))
    definition = dataclasses.replace(definition, owner=dataclasses.replace(definition.owner, fleet=fleet_name, host=host,
                                                                                   roster=roster))
    domain = builders.domain(definition, power=power)
    return dataclasses.replace(domain, xml=domxml.render(definition))


def host_state(*domains: model.ObservedDomain, state: model.DesiredState, pools: tuple[str, ...] = ("vmstore",)) -> model.ActualState:
    specs = [state.vms[d.name] for d in domains if d.name in state.vms]
    return builders.actual(*domains, pools=tuple(builders.observed_pool(p, state.pools[p].path) for p in pools),
                           volumes=builders.volumes_of(*specs))


def steps(plan: plans.Plan, name: str) -> list[plans.Step]:
    return [step for r in plan.resources if r.name == name for step in r.steps]


def test_each_host_plans_its_own_vms_and_what_they_use():
    state = manifests(vm_yaml("web", where="{host: a}", network=True), vm_yaml("db", where="{host: b}"))
    result = fleet.plan_fleet(state, {"a": builders.actual(pools=()), "b": builders.actual(pools=())})
    a, b = result.host("a").plan, result.host("b").plan
    assert [r.key for r in a.resources] == ["StoragePool/everywhere", "StoragePool/vmstore", "Network/lan",
                                           "VirtualMachine/web"]
    assert [r.key for r in b.resources] == ["StoragePool/everywhere", "StoragePool/vmstore", "VirtualMachine/db"]
    define = [s for s in steps(a, "web") if isinstance(s, plans.DefineDomain)][-1]
    owner = domxml.parse_owner(domxml.parse_tree(define.xml))
    assert (owner.fleet, owner.host) == ("default", "a")
    assert result.migrations == () and result.problems == ()
    assert result.summary() == "Fleet default: 2 hosts; VMs per host: a 1, b 1; 0 migrations"


def test_a_converged_fleet_plans_nothing():
    state = manifests(vm_yaml("web", where="{host: a}"), vm_yaml("db", where="{host: b}"))
    observed = {"a": host_state(running_on("a", state.vms["web"]), state=state, pools=("vmstore", "everywhere")),
                "b": host_state(running_on("b", state.vms["db"]), state=state, pools=("vmstore", "everywhere"))}
    result = fleet.plan_fleet(state, observed)
    assert not result.has_changes, [r.key for h in result.hosts for r in h.plan.changes]


def test_a_vm_whose_placement_changed_migrates_live_copying_its_local_disks():
    state = manifests(vm_yaml("web", where="{host: b}"))
    observed = {"a": host_state(running_on("a", state.vms["web"]), state=state),
                "b": host_state(state=state)}
    result = fleet.plan_fleet(state, observed)
    (migration,) = result.migrations
    assert (migration.key, migration.actions) == ("VirtualMachine/web", (plans.Action.MIGRATE,))
    (step,) = migration.steps
    assert (step.source, step.destination, step.destination_uri, step.mode) == (
        "a", "b", "qemu+ssh://b/system", plans.MigrationMode.LIVE_COPY_STORAGE)
    assert [(c.path, c.old, c.new, c.impact) for c in migration.changes] == [("host", "a", "b", plans.Impact.LIVE)]
    assert "b:StoragePool/vmstore" in migration.requires
    owner = domxml.parse_owner(domxml.parse_tree(step.xml))
    assert (owner.fleet, owner.host, owner.digest) == ("default", "b", state.vms["web"].digest)
    assert "VirtualMachine/web" in [r.key for r in result.host("a").plan.changes]  # the move, in the source's plan
    assert steps(result.host("a").plan, "web") == [step]  # never pruned on the source: migrated
    assert steps(result.host("b").plan, "web") == []  # never created on the destination
    assert "StoragePool/vmstore" in [r.key for r in result.host("b").plan.resources]  # what it needs is made first
    assert result.summary() == "Fleet default: 2 hosts; VMs per host: a 0, b 1; 1 migration"


def test_a_moved_vm_leaves_its_local_volumes_behind_only_as_their_deletion_policy_allows():
    text = vm_yaml("web", where="{host: b}").replace("size: 1GiB}", "size: 1GiB, deletionPolicy: Delete}")
    text = text.replace("  disks: [", "  disks: [{name: keep, pool: vmstore, size: 1GiB}, {name: shared, pool: nfs, size: 1GiB, "
                                      "deletionPolicy: Delete}, ")
    state = manifests(text)
    observed = {"a": host_state(running_on("a", state.vms["web"]), state=state, pools=("vmstore", "nfs")),
                "b": host_state(state=state)}
    (migration,) = fleet.plan_fleet(state, observed).migrations
    assert [type(s).__name__ for s in migration.steps] == ["MigrateDomain", "DeleteMovedVolume", "ForgetMovedVolume"]
    assert migration.steps[1] == plans.DeleteMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "b",
                                                         running=True, source="a")
    assert migration.steps[2] == plans.ForgetMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "a", "b")
    assert "volume vmstore/web-keep.qcow2 on a is left behind after the move (deletionPolicy Retain): never deleted " \
           "by kvmops; remove it yourself when you no longer need it" in migration.notes
    # the destination's definition records the copy it leaves, before anything is deleted
    owner = domxml.parse_owner(domxml.parse_tree(migration.steps[0].xml))
    assert owner.left_behind == (model.LeftBehind("a", "vmstore", "web-root.qcow2"),)


def test_a_vm_on_shared_storage_migrates_live_and_a_stopped_one_offline():
    state = manifests(vm_yaml("shared", where="{host: b}", pool="nfs"), vm_yaml("stopped", where="{host: b}", halted=True))
    observed = {"a": host_state(running_on("a", state.vms["shared"]),
                                running_on("a", state.vms["stopped"], power=model.PowerState.SHUTOFF, uuid=builders.OTHER_UUID),
                                state=state, pools=("nfs", "vmstore")),
                "b": host_state(state=state)}
    result = fleet.plan_fleet(state, observed)
    modes = {m.name: (m.steps[0].mode, m.changes[0].impact) for m in result.migrations}
    assert modes == {"shared": (plans.MigrationMode.LIVE, plans.Impact.LIVE),
                     "stopped": (plans.MigrationMode.OFFLINE, plans.Impact.RESTART)}


def test_cordoning_a_host_drains_its_vms_to_the_others():
    state = manifests(vm_yaml("web"), vm_yaml("db"))
    cordoned = dataclasses.replace(state, hosts={**state.hosts, "a": dataclasses.replace(state.hosts["a"], schedulable=False)})
    observed = {"a": host_state(running_on("a", state.vms["web"]), running_on("a", state.vms["db"], uuid=builders.OTHER_UUID),
                                state=state),
                "b": host_state(state=state)}
    result = fleet.plan_fleet(cordoned, observed)
    assert [(m.name, m.steps[0].destination) for m in result.migrations] == [("db", "b"), ("web", "b")]
    assert all("cordoned" in m.notes[0] for m in result.migrations)


def test_an_unreachable_host_is_its_own_section_and_its_vms_stay_unknown():
    state = manifests(vm_yaml("web"), vm_yaml("db", where="{host: b}"))
    orphan = running_on("b", builders.vm("gone"), uuid=builders.OTHER_UUID)
    observed = {"a": fleet.HostUnreachable("a", "cannot connect: No route to host"),
                "b": host_state(running_on("b", state.vms["db"]), orphan, state=state)}
    result = fleet.plan_fleet(state, observed)
    a = result.host("a")
    assert (a.plan, a.unreachable) == (None, "cannot connect: No route to host")
    assert result.unknown == {"web": ("a",)} and a.unknown == ("web",) and a.vms == ("web",)
    b = result.host("b").plan
    assert steps(b, "web") == []  # never placed elsewhere while its host may run it
    assert any(isinstance(s, plans.UndefineDomain) for s in steps(b, "gone"))  # the reachable host converges fully
    assert result.problems == ()
    assert result.summary().endswith("0 migrations; 1 unreachable (a)")


def test_a_host_missing_from_the_observations_counts_as_unreachable():
    state = manifests(vm_yaml("web", where="{host: a}"))
    result = fleet.plan_fleet(state, {"b": host_state(state=state)})
    assert result.host("a").unreachable == "not observed" and result.host("a").plan is None


def test_evacuating_a_dead_host_recreates_its_vms_elsewhere_and_refuses_live_hosts():
    state = manifests(vm_yaml("web"))
    observed = {"a": fleet.HostUnreachable("a", "down"), "b": host_state(state=state)}
    result = fleet.plan_fleet(state, observed, evacuate={"a"})
    assert any(isinstance(s, plans.DefineDomain) for s in steps(result.host("b").plan, "web"))
    (web,) = [r for r in result.host("b").plan.resources if r.name == "web"]
    assert web.notes[-1] == "evacuated from a, declared dead: defined anew here; its local disks (root) start new and empty here"
    refused = fleet.plan_fleet(state, observed, evacuate={"b"})
    assert [p.message for p in refused.problems] == [
        "host b answers: evacuate is for dead hosts only; use `kvmops drain b` to move its VMs off"]


def nfs_volume(name: str) -> model.ObservedVolume:
    return model.ObservedVolume("nfs", name, 1 << 30, 1 << 20, f"/srv/nfs/{name}")


def test_an_evacuated_vm_attaches_its_disk_on_a_shared_pool_not_yet_running_on_its_new_host():
    # c is dead; b runs the shared pool; a has never had it: web lands on a, which sees the pool through b
    three = HOSTS + """\
---
apiVersion: kvmops/v1
kind: Host
metadata: {name: c, labels: {zone: z}}
spec: {uri: "qemu+ssh://c/system", capacity: {vcpus: 8, memory: 16GiB}}
"""
    files = {"hosts.yaml": three, "pools.yaml": POOLS, "vms/web.yaml": vm_yaml("web", pool="nfs"),
             "vms/peer.yaml": vm_yaml("peer", where="{host: b}", pool="nfs")}
    state = desired.build(builders.manifest_set(files))
    nfs = builders.observed_pool("nfs", "/srv/nfs")
    observed = {
        "a": builders.actual(pools=()),
        "b": builders.actual(running_on("b", state.vms["peer"]), pools=(nfs,),
                             volumes=(nfs_volume("peer-root.qcow2"), nfs_volume("web-root.qcow2"))),
        "c": fleet.HostUnreachable("c", "down"),
    }
    result = fleet.plan_fleet(state, observed, evacuate={"c"})

    a = result.host("a").plan
    assert [type(s).__name__ for s in steps(a, "nfs")] == ["DefinePool", "BuildPool", "StartPool", "SetPoolAutostart"]
    web = steps(a, "web")
    assert not any(isinstance(s, plans.CreateVolume) for s in web)  # the disk the VM ran on, not a new one
    assert [s.creates for s in web if isinstance(s, plans.DefineDomain)] == [()]
    (resource,) = [r for r in a.resources if r.name == "web"]
    assert "volume web-root.qcow2 exists on shared pool nfs (seen from host b): used as it is once nfs runs here" in resource.notes
    assert "evacuated from c" in resource.notes[-1]


def test_a_shared_pool_seen_nowhere_else_or_defined_differently_lends_no_volumes():
    state = manifests(vm_yaml("web", where="{host: a}", pool="nfs"))
    elsewhere = builders.observed_pool("nfs", "/srv/other")  # the same name, another directory: not the same storage
    for pools in ((), (elsewhere,), (builders.observed_pool("nfs", "/srv/nfs", active=False),)):
        observed = {"a": builders.actual(pools=()),
                    "b": builders.actual(pools=pools, volumes=(nfs_volume("web-root.qcow2"),))}
        web = steps(fleet.plan_fleet(state, observed).host("a").plan, "web")
        assert any(isinstance(s, plans.CreateVolume) for s in web), pools


def test_an_evacuation_onto_a_shared_pool_no_reachable_host_runs_says_its_disk_is_attached_by_the_next_apply():
    state = manifests(vm_yaml("web", pool="nfs"))
    observed = {"a": fleet.HostUnreachable("a", "down"), "b": builders.actual(pools=())}
    (web,) = [r for r in fleet.plan_fleet(state, observed, evacuate={"a"}).host("b").plan.resources if r.name == "web"]
    assert "shared pool nfs runs on no reachable host" in web.notes[-1]
    assert "the next apply attaches it as it is" in web.notes[-1]


def test_a_local_pool_never_lends_its_volumes():
    state = manifests(vm_yaml("web", where="{host: a}"))
    observed = {"a": builders.actual(pools=()),
                "b": builders.actual(pools=(builders.observed_pool("vmstore"),),
                                     volumes=(builders.volume("vmstore", "web-root.qcow2", 1 << 30),))}
    web = steps(fleet.plan_fleet(state, observed).host("a").plan, "web")
    assert any(isinstance(s, plans.CreateVolume) for s in web)


def test_a_vm_marked_on_two_hosts_is_split_brain_and_neither_copy_is_touched():
    state = manifests(vm_yaml("web"))
    spec = state.vms["web"]
    stale = builders.vm("stale")
    observed = {"a": host_state(running_on("a", spec), running_on("a", stale, uuid=builders.OTHER_UUID), state=state),
                "b": host_state(running_on("b", spec, power=model.PowerState.SHUTOFF), state=state)}
    result = fleet.plan_fleet(state, observed)
    assert result.split_brain == (fleet.SplitBrain("web", ("a", "b")),)
    (problem,) = result.problems
    assert problem.file == "manifests/vms/0.yaml" and "VM web is marked by fleet default on 2 hosts (a, b)" in problem.message
    for name in ("a", "b"):
        assert steps(result.host(name).plan, "web") == []  # not started, not stopped, not pruned
    assert steps(result.host("a").plan, "stale") == []  # and nothing is pruned anywhere while it lasts
    assert "stale" in result.host("a").plan.kept
    assert result.migrations == ()


def test_only_host_plans_that_host_alone():
    state = manifests(vm_yaml("web", where="{host: a}"), vm_yaml("db", where="{host: b}"))
    result = fleet.plan_fleet(state, {"a": builders.actual(pools=()), "b": builders.actual(pools=())}, only_host="b")
    assert [h.host for h in result.hosts] == ["b"]


def test_vms_of_another_fleet_are_not_ours():
    state = manifests(vm_yaml("web", where="{host: a}"))
    other = running_on("b", state.vms["web"], fleet_name="other")
    other = dataclasses.replace(other, definition=dataclasses.replace(
        other.definition, owner=dataclasses.replace(other.definition.owner, scope="other")))
    result = fleet.plan_fleet(state, {"a": builders.actual(pools=()), "b": host_state(other, state=state)})
    assert result.split_brain == () and result.migrations == ()
    assert any(isinstance(s, plans.DefineDomain) for s in steps(result.host("a").plan, "web"))


def test_a_single_host_vm_gains_its_fleet_mark_as_a_visible_change():
    state = manifests(vm_yaml("web", where="{host: a}"))
    definition = builders.definition(state.vms["web"])
    observed = {"a": host_state(dataclasses.replace(builders.domain(definition), xml=domxml.render(definition)),
                                state=state),
                "b": builders.actual(pools=())}
    (resource,) = [r for r in fleet.plan_fleet(state, observed).host("a").plan.changes if r.name == "web"]
    assert [(c.path, c.old, c.new) for c in resource.changes] == [("metadata.host", "(no fleet)", "a (fleet default)"),
                                                                  ("metadata.hosts", "(none)", "a, b")]


def test_settings_hold_keeps_a_domain_out_of_pruning():
    spec = builders.vm("web")
    actual = builders.actual(builders.domain(builders.definition(spec)))
    plan = planner.plan_changes(builders.desired(builders.vm("other")), actual,
                                settings=planner.Settings(held=frozenset({"web"})))
    assert steps(plan, "web") == [] and "web" not in plan.kept


def test_after_a_migration_the_next_fleet_plan_is_empty():
    state = manifests(vm_yaml("web", where="{host: b}"))
    before = {"a": host_state(running_on("a", state.vms["web"]), state=state), "b": host_state(state=state)}
    (step,) = fleet.plan_fleet(state, before).migrations[0].steps
    arrived = domxml.parse(step.xml)
    # as the executor leaves it: resumed, the record of the hand-over dropped
    arrived = dataclasses.replace(arrived, owner=dataclasses.replace(arrived.owner, resume_after_move=False))
    moved = builders.domain(arrived)
    pools = ("vmstore", "everywhere")
    after = {"a": host_state(state=state, pools=pools), "b": host_state(moved, state=state, pools=pools)}
    result = fleet.plan_fleet(state, after)
    assert not result.has_changes, [(r.key, r.changes) for h in result.hosts for r in h.plan.changes]


def test_a_running_guest_moves_live_held_paused_at_the_hand_over_and_a_shut_off_one_moves_as_it_is():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    spec = state.vms["web"]
    for power, held in ((model.PowerState.RUNNING, True), (model.PowerState.PAUSED, False),
                        (model.PowerState.SHUTOFF, False)):
        observed = {"a": host_state(running_on("a", spec, power=power), state=state, pools=("nfs",)),
                    "b": host_state(state=state, pools=("nfs",))}
        (step,) = fleet.plan_fleet(state, observed).migrations[0].steps
        assert step.held_paused is held, power
        assert domxml.parse(step.xml).owner.resume_after_move is held, power  # the record the next pass reads


def held_at_hand_over(state: model.DesiredState, *, power=model.PowerState.PAUSED,
                      moved_from: str = "a") -> model.ObservedDomain:
    """Return web on host b as a kill of kvmops between libvirt's end of a live move and its resume leaves it."""
    return marked(running_on("b", state.vms["web"], power=power), moved_from=moved_from, resume_after_move=True)


def test_a_guest_a_kill_left_paused_at_the_hand_over_is_resumed_once_its_source_is_seen_without_it():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    result = fleet.plan_fleet(state, {"a": host_state(state=state, pools=("nfs",)),
                                      "b": host_state(held_at_hand_over(state), state=state, pools=("nfs",))})

    assert result.problems == () and result.migrations == () and result.split_brain == ()
    assert steps(result.host("b").plan, "web") == [plans.ResumeMovedDomain("web", builders.UUID, "b", "a")]
    (resource,) = [r for r in result.host("b").plan.changes if r.name == "web"]
    assert [(c.path, c.old, c.new) for c in resource.changes] == [("power", "paused", "running")]
    assert steps(result.host("a").plan, "web") == []


def test_a_guest_held_at_the_hand_over_stays_paused_while_the_host_it_came_from_cannot_be_seen():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    result = fleet.plan_fleet(state, {"a": fleet.HostUnreachable("a", "down"),
                                      "b": host_state(held_at_hand_over(state), state=state, pools=("nfs",))})

    assert steps(result.host("b").plan, "web") == []
    (resource,) = [r for r in result.host("b").plan.resources if r.name == "web"]
    assert not resource.actions
    assert "held paused" in resource.notes[0] and "host a is not reachable" in resource.notes[0]


def test_a_guest_paused_by_a_person_after_its_move_stays_paused():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    paused = marked(running_on("b", state.vms["web"], power=model.PowerState.PAUSED), moved_from="a")
    result = fleet.plan_fleet(state, {"a": host_state(state=state, pools=("nfs",)),
                                      "b": host_state(paused, state=state, pools=("nfs",))})

    assert steps(result.host("b").plan, "web") == []
    assert not any(r.name == "web" for h in result.hosts for r in h.plan.changes)


def test_a_guest_that_runs_with_the_record_of_its_hand_over_only_loses_the_record():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    result = fleet.plan_fleet(state, {"a": host_state(state=state, pools=("nfs",)),
                                      "b": host_state(held_at_hand_over(state, power=model.PowerState.RUNNING),
                                                      state=state, pools=("nfs",))})

    assert steps(result.host("b").plan, "web") == [plans.ResumeMovedDomain("web", builders.UUID, "b", "a")]
    (resource,) = [r for r in result.host("b").plan.changes if r.name == "web"]
    assert [(c.path, c.new) for c in resource.changes] == [("hand-over record", None)]


def every_storage(name: str) -> str:
    """Return a VM (to move to b) with a local disk, a shared disk, a file outside pools, a seed and a CD-ROM."""
    return builders.vm_yaml(name, (
        "  memory: 1GiB\n"
        "  placement: {host: b}\n"
        "  disks:\n"
        "    - {name: root, pool: vmstore, size: 1GiB, deletionPolicy: Delete}\n"
        "    - {name: data, pool: nfs, size: 1GiB, deletionPolicy: Delete}\n"
        "    - {name: archive, path: /srv/archive.img}\n"
        "  cdrom: {pool: vmstore, volume: rescue.iso}\n"
        "  cloudInit: {userData: '#cloud-config', metaData: {instanceId: x}}\n"
    ))


def test_a_move_names_what_becomes_of_every_storage_the_vm_uses():
    state = manifests(every_storage("web"))
    spec = state.vms["web"]
    observed = {"a": host_state(running_on("a", spec), state=state, pools=("vmstore", "nfs")), "b": host_state(state=state)}
    (migration,) = fleet.plan_fleet(state, observed).migrations
    step = migration.steps[0]
    root, data, _archive = spec.disks
    assert step.mode is plans.MigrationMode.LIVE_COPY_STORAGE
    assert step.copies == (root.target,)  # only the local disk: the shared one is the same file there
    assert step.sends == (("vmstore", "web-cidata.iso"),)  # read-only: libvirt does not copy it, kvmops does
    assert step.shared_files == ("/srv/archive.img",)
    assert step.media == (("vmstore", "rescue.iso"),)
    assert not step.stop_first
    assert "copied by libvirt while the guest runs: vmstore/web-root.qcow2" in migration.notes
    assert "copied by kvmops before the move: vmstore/web-cidata.iso" in migration.notes
    assert "on shared storage, not copied: pool nfs" in migration.notes
    assert any("/srv/archive.img; b must see the very same file" in n for n in migration.notes)
    assert any("rescue.iso; b must have them" in n for n in migration.notes)
    # the seed and the local disk are kvmops' own (Delete): recorded as left on a, deleted there after the move
    deleted = [(s.pool, s.name) for s in migration.steps if isinstance(s, plans.DeleteMovedVolume)]
    assert deleted == [("vmstore", "web-root.qcow2"), ("vmstore", "web-cidata.iso")]
    owner = domxml.parse_owner(domxml.parse_tree(step.xml))
    assert {(left.host, left.pool, left.name) for left in owner.left_behind} == set(
        [("a", "vmstore", "web-root.qcow2"), ("a", "vmstore", "web-cidata.iso")])
    assert ("vmstore", data.volume) not in deleted and ("nfs", data.volume) not in deleted


def test_a_shut_off_vm_moves_offline_with_kvmops_streaming_its_local_volumes():
    state = manifests(every_storage("web").replace("  memory: 1GiB\n", "  memory: 1GiB\n  runStrategy: Halted\n"))
    observed = {"a": host_state(running_on("a", state.vms["web"], power=model.PowerState.SHUTOFF), state=state,
                                pools=("vmstore", "nfs")), "b": host_state(state=state)}
    (migration,) = fleet.plan_fleet(state, observed).migrations
    step = migration.steps[0]
    assert (step.mode, step.copies, step.stop_first, step.start_after) == (plans.MigrationMode.OFFLINE, (), False, False)
    assert step.sends == (("vmstore", "web-root.qcow2"), ("vmstore", "web-cidata.iso"))
    assert not [s for s in migration.steps if isinstance(s, plans.DeleteMovedVolume) and s.running]


def test_a_running_vm_that_cannot_move_live_is_restarted_on_its_new_host():
    state = manifests(vm_yaml("web", where="{host: b}").replace("  memory: 1GiB\n", "  memory: 1GiB\n  shutdownTimeout: 45\n"))
    domain = running_on("a", state.vms["web"])
    passthrough = dataclasses.replace(domain.definition, cpu_mode="host-passthrough")
    domain = dataclasses.replace(domain, definition=passthrough, xml=domxml.render(passthrough))
    observed = {"a": host_state(domain, state=state), "b": host_state(state=state)}
    (migration,) = fleet.plan_fleet(state, observed).migrations
    step = migration.steps[0]
    assert (step.mode, step.stop_first, step.start_after, step.shutdown_timeout) == (
        plans.MigrationMode.OFFLINE, True, True, 45.0)
    assert step.sends == (("vmstore", "web-root.qcow2"),) and step.copies == ()
    (change,) = migration.changes
    assert change.impact is plans.Impact.RESTART and "host-passthrough" in change.note
    assert step.describe() == "migrate web from a to b (stopped, moved offline, started again)"


def moved(state: model.DesiredState, vm: str, *left: model.LeftBehind, power=model.PowerState.RUNNING) -> model.ObservedDomain:
    """Return ``vm`` on host b after a move from a that recorded ``left``."""
    domain = running_on("b", state.vms[vm], power=power)
    definition = dataclasses.replace(domain.definition, owner=dataclasses.replace(domain.definition.owner, left_behind=left))
    return dataclasses.replace(domain, definition=definition, xml=domxml.render(definition))


def leftover(state: model.DesiredState, *names: str, users: tuple[model.ObservedDomain, ...] = ()) -> model.ActualState:
    actual = host_state(*users, state=state)
    volumes = dict(actual.volumes)
    for name in names:
        volumes[("vmstore", name)] = builders.volume("vmstore", name, 1 << 30)
    return dataclasses.replace(actual, volumes=volumes)


LEFT = model.LeftBehind("a", "vmstore", "web-root.qcow2")


def delete_yaml(name: str, policy: str = "Delete", **kw) -> str:
    return vm_yaml(name, where="{host: b}", **kw).replace("size: 1GiB}", f"size: 1GiB, deletionPolicy: {policy}}}")


def test_a_copy_a_finished_move_left_is_deleted_on_its_old_host_by_the_next_pass():
    state = manifests(delete_yaml("web"))
    result = fleet.plan_fleet(state, {"a": leftover(state, "web-root.qcow2"),
                                      "b": host_state(moved(state, "web", LEFT), state=state)})
    assert steps(result.host("a").plan, "web") == [
        plans.DeleteMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "b", running=True, source="a"),
        plans.ForgetMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "a", "b"),
    ]
    assert steps(result.host("b").plan, "web") == []  # the destination keeps its record until the deletion is done
    assert result.migrations == ()


def test_a_record_of_a_copy_already_gone_is_only_dropped():
    state = manifests(delete_yaml("web"))
    result = fleet.plan_fleet(state, {"a": leftover(state), "b": host_state(moved(state, "web", LEFT), state=state)})
    assert steps(result.host("a").plan, "web") == [
        plans.ForgetMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "a", "b")]


def test_a_left_copy_is_kept_under_retain_while_used_or_until_the_vm_runs():
    retained = manifests(delete_yaml("web", "Retain"))
    result = fleet.plan_fleet(retained, {"a": leftover(retained, "web-root.qcow2"),
                                         "b": host_state(moved(retained, "web", LEFT), state=retained)})
    (resource,) = [r for r in result.host("a").plan.resources if r.name == "web"]
    assert [type(s).__name__ for s in resource.steps] == ["ForgetMovedVolume"]
    assert "is kept (deletionPolicy Retain)" in resource.notes[0]

    state = manifests(delete_yaml("web"))
    stopped = fleet.plan_fleet(state, {"a": leftover(state, "web-root.qcow2"),
                                       "b": host_state(moved(state, "web", LEFT, power=model.PowerState.SHUTOFF),
                                                       state=state)})
    (resource,) = [r for r in stopped.host("a").plan.resources if r.name == "web"]
    assert resource.steps == () and "deleted once web runs on b" in resource.notes[0]

    user = builders.foreign("other")
    user = dataclasses.replace(user, storage=(("vmstore", "web-root.qcow2"),))
    used = fleet.plan_fleet(state, {"a": leftover(state, "web-root.qcow2", users=(user,)),
                                    "b": host_state(moved(state, "web", LEFT), state=state)})
    (resource,) = [r for r in used.host("a").plan.resources if r.name == "web"]
    assert resource.steps == () and "used by domain other" in resource.notes[0]


def test_a_copy_left_in_a_pool_now_shared_is_never_deleted():
    state = manifests(delete_yaml("web"))
    shared = dataclasses.replace(state, pools={**state.pools, "vmstore": dataclasses.replace(state.pools["vmstore"],
                                                                                            shared=True)})
    result = fleet.plan_fleet(shared, {"a": leftover(state, "web-root.qcow2"),
                                       "b": host_state(moved(state, "web", LEFT), state=state)})
    assert [type(s).__name__ for s in steps(result.host("a").plan, "web")] == ["ForgetMovedVolume"]


def test_a_destination_plan_keeps_the_record_of_a_left_copy_when_it_redefines_the_vm():
    state = manifests(delete_yaml("web"))
    changed = manifests(delete_yaml("web").replace("memory: 1GiB", "memory: 2GiB"))
    result = fleet.plan_fleet(changed, {"a": builders.actual(pools=()),
                                        "b": host_state(moved(state, "web", LEFT), state=state)})
    defines = [s for s in steps(result.host("b").plan, "web") if isinstance(s, plans.DefineDomain)]
    assert defines and all(domxml.parse_owner(domxml.parse_tree(d.xml)).left_behind == (LEFT,) for d in defines)


def test_a_vm_in_the_middle_of_a_libvirt_migration_is_never_touched_on_either_host():
    state = manifests(vm_yaml("web", where="{host: b}"))
    incoming = dataclasses.replace(running_on("a", state.vms["web"], power=model.PowerState.PAUSED), persistent=False)
    result = fleet.plan_fleet(state, {"a": host_state(running_on("a", state.vms["web"]), state=state),
                                      "b": host_state(incoming, state=state)})
    assert result.split_brain == (fleet.SplitBrain("web", ("a", "b")),)
    (problem,) = result.problems
    assert "is being migrated from a to b by libvirt" in problem.message
    assert steps(result.host("a").plan, "web") == [] and steps(result.host("b").plan, "web") == []
    assert result.migrations == ()


def test_a_uefi_vm_carries_its_nvram_and_a_copy_an_interrupted_move_began_is_replaced():
    state = manifests(vm_yaml("web", where="{host: b}", halted=True))
    domain = running_on("a", state.vms["web"], power=model.PowerState.SHUTOFF)
    sending = (model.Sending("b", "vmstore", "web-root.qcow2"), model.Sending("b", *model.NVRAM),
               model.Sending("c", "vmstore", "web-root.qcow2"))
    definition = dataclasses.replace(domain.definition, firmware="efi",
                                     owner=dataclasses.replace(domain.definition.owner, sending=sending))
    domain = dataclasses.replace(domain, definition=definition, xml=domxml.render(definition))
    (migration,) = fleet.plan_fleet(state, {"a": host_state(domain, state=state), "b": host_state(state=state)}).migrations
    step = migration.steps[0]
    assert step.nvram and step.replaces == (("vmstore", "web-root.qcow2"), model.NVRAM)
    owner = domxml.parse_owner(domxml.parse_tree(step.xml))
    assert owner.sending == (model.Sending("c", "vmstore", "web-root.qcow2"),)  # a copy on a third host: removed later
    assert model.LeftBehind("a", *model.NVRAM) in owner.left_behind
    assert plans.DeleteMovedVolume(*model.NVRAM, "web", builders.UUID, "b", source="a") in migration.steps
    nvram_line = next(c for c in migration.changes if c.path == "UEFI NVRAM on a")
    assert nvram_line.impact is plans.Impact.LIVE and "lives on at b, so this is no data loss" in nvram_line.note
    assert any("replaced by this move's copy" in note for note in migration.notes)


def test_a_kept_nvram_is_left_behind_and_said_so():
    state = manifests(vm_yaml("web", where="{host: b}", halted=True).replace("  memory: 1GiB\n",
                                                                              "  memory: 1GiB\n  firmware: uefi\n  keepNvram: true\n"))
    domain = running_on("a", state.vms["web"], power=model.PowerState.SHUTOFF)
    definition = dataclasses.replace(domain.definition, firmware="efi")
    domain = dataclasses.replace(domain, definition=definition, xml=domxml.render(definition))
    (migration,) = fleet.plan_fleet(state, {"a": host_state(domain, state=state), "b": host_state(state=state)}).migrations
    assert migration.steps[0].nvram
    assert not [s for s in migration.steps if isinstance(s, plans.DeleteMovedVolume) and (s.pool, s.name) == model.NVRAM]
    assert any("UEFI NVRAM on a is left behind after the move (keepNvram)" in note for note in migration.notes)


def test_a_vm_being_created_counts_on_its_host_so_placement_does_not_depend_on_how_far_that_got():
    state = manifests(vm_yaml("w1"), vm_yaml("w2"))
    empty = {"a": builders.actual(pools=()), "b": builders.actual(pools=())}
    assert (fleet.plan_fleet(state, empty).host("a").vms, fleet.plan_fleet(state, empty).host("b").vms) == (("w1",), ("w2",))

    result = fleet.plan_fleet(state, empty, arriving={"w2": "a"})

    assert (result.host("a").vms, result.host("b").vms) == (("w2",), ("w1",))
    assert [r.key for r in result.host("a").plan.changes if r.kind == "VirtualMachine"] == ["VirtualMachine/w2"]


def test_a_network_the_vms_left_stays_on_their_old_host_until_its_manifest_goes():
    state = manifests(vm_yaml("web", where="{host: b}", network=True))
    lan = state.networks["lan"]
    network = model.ObservedNetwork(
        "lan", True, dataclasses.replace(lan.definition, owner=model.NetworkOwnership(lan.manifest, "digest")),
        active=True, autostart=True)
    pools = ("vmstore", "everywhere")
    web = running_on("b", state.vms["web"])
    after = {"a": dataclasses.replace(host_state(state=state, pools=pools), networks={"lan": network}),
             "b": dataclasses.replace(host_state(web, state=state, pools=pools), networks={"lan": network})}
    result = fleet.plan_fleet(state, after)
    host_a = next(h for h in result.hosts if h.host == "a")
    assert [r.key for r in host_a.plan.changes if r.kind == "Network"] == []

    gone = dataclasses.replace(state, networks={})
    result = fleet.plan_fleet(gone, after)
    host_a = next(h for h in result.hosts if h.host == "a")
    assert [r.key for r in host_a.plan.changes if r.kind == "Network"] == ["Network/lan"]


def test_a_network_of_another_scope_on_a_host_is_not_pulled_into_its_share():
    state = manifests(vm_yaml("web", where="{host: b}", network=True))
    lan = state.networks["lan"]
    theirs = model.ObservedNetwork(
        "lan", True, dataclasses.replace(lan.definition, owner=model.NetworkOwnership("x.yaml", "digest", scope="team-b")),
        active=True, autostart=True)
    pools = ("vmstore", "everywhere")
    observed = {"a": dataclasses.replace(host_state(state=state, pools=pools), networks={"lan": theirs}),
                "b": host_state(running_on("b", state.vms["web"]), state=state, pools=pools)}
    host_a = next(h for h in fleet.plan_fleet(state, observed).hosts if h.host == "a")
    assert [r.key for r in host_a.plan.resources if r.kind == "Network"] == []
    assert host_a.plan.problems == ()


# --- the roster: missing hosts, keeping it current, forgetting a host --------------------


def test_a_host_named_in_the_marks_but_declared_by_no_manifest_is_missing():
    state = manifests(vm_yaml("web", where="{host: a}"))
    observed = {"a": host_state(running_on("a", state.vms["web"], roster=("a", "b", "c")), state=state, pools=("vmstore", "everywhere")),
                "b": host_state(state=state, pools=("vmstore", "everywhere"))}
    result = fleet.plan_fleet(state, observed)
    (c,) = result.missing
    assert (c.host, c.plan, c.missing) == ("c", None, True)
    assert c.unreachable == fleet.missing_host_message("c")
    assert c in result.unreachable  # every check of unreachable hosts (exit codes, convergence, health) sees it
    assert result.summary() == "Fleet default: 2 hosts; VMs per host: a 1, b 0; 0 migrations; 1 missing (c)"


def test_a_mark_naming_its_host_counts_too():
    state = manifests(vm_yaml("web", where="{host: a}"))
    stray = dataclasses.replace(running_on("a", state.vms["web"]), name="web")
    stray = dataclasses.replace(stray, definition=dataclasses.replace(stray.definition, owner=dataclasses.replace(
        stray.definition.owner, host="c", roster=())))
    result = fleet.plan_fleet(state, {"a": host_state(stray, state=state, pools=("vmstore", "everywhere")), "b": host_state(state=state, pools=("vmstore", "everywhere"))})
    assert [h.host for h in result.missing] == ["c"]


def test_while_a_host_is_missing_a_vm_found_nowhere_is_unknown_and_created_nowhere():
    state = manifests(vm_yaml("web", where="{host: a}"), vm_yaml("db"), vm_yaml("pinned", where="{host: b}"))
    observed = {"a": host_state(running_on("a", state.vms["web"], roster=("a", "b", "c")), state=state, pools=("vmstore", "everywhere")),
                "b": host_state(state=state, pools=("vmstore", "everywhere"))}
    result = fleet.plan_fleet(state, observed)
    # a missing host has no manifest saying what it may run: any VM found on no reachable host may run there
    assert result.unknown == {"db": ("c",), "pinned": ("c",)}
    assert result.host("c").unknown == ("db", "pinned")
    assert [s for h in ("a", "b") for s in steps(result.host(h).plan, "db") + steps(result.host(h).plan, "pinned")] == []
    assert result.problems == ()


def test_a_missing_host_suspends_pruning_on_every_host():
    state = manifests(vm_yaml("web", where="{host: a}"))
    orphan = running_on("b", builders.vm("gone"), uuid=builders.OTHER_UUID, roster=("a", "b", "c"))
    observed = {"a": host_state(running_on("a", state.vms["web"], roster=("a", "b", "c")), state=state, pools=("vmstore", "everywhere")),
                "b": host_state(orphan, state=state, pools=("vmstore", "everywhere"))}
    b = fleet.plan_fleet(state, observed).host("b").plan
    assert steps(b, "gone") == [] and b.kept == ("gone",)
    assert b.prune_suspended.startswith("missing host c (named in the fleet's marks, declared by no Host manifest)")


def test_a_host_manifest_that_did_not_load_is_broken_not_missing():
    state = dataclasses.replace(manifests(vm_yaml("web", where="{host: a}"), vm_yaml("db")), hosts_complete=False)
    observed = {"a": host_state(running_on("a", state.vms["web"], roster=("a", "b", "c")), state=state, pools=("vmstore", "everywhere")),
                "b": host_state(state=state, pools=("vmstore", "everywhere"))}
    result = fleet.plan_fleet(state, observed)
    assert result.missing == ()
    assert any("a Host manifest did not load" in p.message for p in result.problems)
    # its name stays in the marks all the same: only forget-host removes a name
    written = [s for r in result.host("a").plan.resources for s in r.steps
               if isinstance(s, (plans.DefineDomain, plans.RecordRoster))]
    assert written == []


def test_marks_with_an_older_roster_are_brought_up_to_date_in_one_step_per_host_without_redefining():
    state = manifests(vm_yaml("web", where="{host: a}"), vm_yaml("db", where="{host: a}"))
    observed = {"a": host_state(running_on("a", state.vms["web"], roster=("a",)),
                                running_on("a", state.vms["db"], uuid=builders.OTHER_UUID, roster=("a",)), state=state, pools=("vmstore", "everywhere")),
                "b": host_state(state=state, pools=("vmstore", "everywhere"))}
    a = fleet.plan_fleet(state, observed).host("a").plan
    (record,) = a.changes
    assert (record.key, record.actions) == ("Host/a", (plans.Action.UPDATE,))
    assert record.steps == (plans.RecordRoster("db", builders.OTHER_UUID, ("a", "b")),
                            plans.RecordRoster("web", builders.UUID, ("a", "b")))
    assert [(c.path, c.old, c.new, c.impact, c.note) for c in record.changes] == [
        ("metadata.hosts", "a", "a, b", plans.Impact.LIVE, "record the fleet's 2 hosts in the marks of 2 VMs (no restart)")]


def test_a_vm_redefined_anyway_carries_the_roster_in_its_definition_not_a_second_step():
    state = manifests(vm_yaml("web", where="{host: a}"))
    observed = {"a": host_state(running_on("a", state.vms["web"], roster=("a",)), state=state, pools=("vmstore", "everywhere")),
                "b": host_state(state=state, pools=("vmstore", "everywhere"))}
    changed = manifests(vm_yaml("web", where="{host: a}").replace("memory: 1GiB", "memory: 2GiB"))
    a = fleet.plan_fleet(changed, observed).host("a").plan
    assert [r.key for r in a.changes] == ["VirtualMachine/web"]
    (web,) = a.changes
    define = [s for s in web.steps if isinstance(s, plans.DefineDomain)][-1]
    assert domxml.parse_owner(domxml.parse_tree(define.xml)).roster == ("a", "b")
    assert ("metadata.hosts", "a", "a, b") in [(c.path, c.old, c.new) for c in web.changes]


def test_a_new_vm_and_a_migration_write_the_current_roster():
    state = manifests(vm_yaml("web", where="{host: b}"), vm_yaml("new", where="{host: a}"))
    observed = {"a": host_state(running_on("a", state.vms["web"], roster=("a", "b")), state=state, pools=("vmstore", "everywhere")),
                "b": host_state(state=state, pools=("vmstore", "everywhere"))}
    result = fleet.plan_fleet(state, observed)
    (migration,) = result.migrations
    assert domxml.parse_owner(domxml.parse_tree(migration.steps[0].xml)).roster == ("a", "b")
    define = [s for s in steps(result.host("a").plan, "new") if isinstance(s, plans.DefineDomain)][-1]
    assert domxml.parse_owner(domxml.parse_tree(define.xml)).roster == ("a", "b")
    assert "Host/a" not in [r.key for r in result.host("a").plan.changes]


def test_forgetting_a_missing_host_rewrites_only_the_marks_naming_it():
    state = manifests(vm_yaml("web", where="{host: a}"), vm_yaml("db"))
    observed = {"a": host_state(running_on("a", state.vms["web"], roster=("a", "b", "c")), state=state, pools=("vmstore", "everywhere")),
                "b": host_state(state=state, pools=("vmstore", "everywhere"))}
    result = fleet.plan_forget(state, observed, "c")
    (record,) = result.host("a").plan.changes
    assert record.steps == (plans.RecordRoster("web", builders.UUID, ("a", "b")),)
    assert result.host("b").plan.changes == () and result.problems == ()
    assert result.notes[0].startswith("after this, the next apply creates db on the reachable Hosts")
    # once the marks no longer name it, the VM held back for it is placed
    forgotten = {"a": host_state(running_on("a", state.vms["web"], roster=("a", "b")), state=state, pools=("vmstore", "everywhere")),
                 "b": observed["b"]}
    after = fleet.plan_fleet(state, forgotten)
    assert after.missing == () and after.unknown == {}
    assert any(plans.Action.CREATE in r.actions for h in after.hosts for r in h.plan.resources if r.name == "db")


def test_a_declared_host_is_never_forgotten():
    state = manifests(vm_yaml("web", where="{host: a}"))
    observed = {"a": host_state(running_on("a", state.vms["web"]), state=state, pools=("vmstore", "everywhere")), "b": host_state(state=state, pools=("vmstore", "everywhere"))}
    result = fleet.plan_forget(state, observed, "b")
    assert not result.has_changes
    assert [p.message for p in result.problems] == [
        "forget-host b: a Host manifest declares it; delete that manifest first (drain the host before, "
        "`kvmops drain b --apply`)"]


def interrupted(state: model.DesiredState, vm: str, *sending: model.Sending) -> model.ObservedDomain:
    """Return ``vm`` on host a, its mark recording copies a move to another host began (``sending``)."""
    domain = running_on("a", state.vms[vm])
    definition = dataclasses.replace(domain.definition, owner=dataclasses.replace(domain.definition.owner, sending=sending))
    return dataclasses.replace(domain, definition=definition, xml=domxml.render(definition))


PARTIAL = model.Sending("b", "vmstore", "web-root.qcow2")


def test_a_partial_copy_a_move_no_longer_wanted_began_is_deleted_whatever_the_deletion_policy():
    state = manifests(delete_yaml("web", "Retain").replace("{host: b}", "{host: a}"))
    result = fleet.plan_fleet(state, {"a": host_state(interrupted(state, "web", PARTIAL), state=state),
                                      "b": leftover(state, "web-root.qcow2")})
    assert steps(result.host("b").plan, "web") == [
        plans.DeleteMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "a", source="b", abandoned=True),
        plans.ForgetMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "b", "a", abandoned=True),
    ]
    (change,) = next(r for r in result.host("b").plan.resources if r.name == "web").changes
    assert change.impact is plans.Impact.LIVE and "so this is no data loss" in change.note
    assert steps(result.host("a").plan, "web") == [] and result.migrations == ()


def test_a_partial_copy_already_gone_only_drops_its_record_and_one_in_use_is_kept():
    state = manifests(delete_yaml("web").replace("{host: b}", "{host: a}"))
    gone = fleet.plan_fleet(state, {"a": host_state(interrupted(state, "web", PARTIAL), state=state),
                                    "b": leftover(state)})
    assert steps(gone.host("b").plan, "web") == [
        plans.ForgetMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "b", "a", abandoned=True)]

    other = dataclasses.replace(builders.domain(builders.definition(state.vms["web"], uuid=builders.OTHER_UUID)), name="other",
                                storage=(("vmstore", "web-root.qcow2"),), owned=False, definition=None)
    used = fleet.plan_fleet(state, {"a": host_state(interrupted(state, "web", PARTIAL), state=state),
                                    "b": leftover(state, "web-root.qcow2", users=(other,))})
    (resource,) = [r for r in used.host("b").plan.resources if r.name == "web"]
    assert resource.steps == () and "is used by domain other there: kept" in resource.notes[0]


def test_a_vm_moving_elsewhere_carries_the_record_of_a_partial_copy_on_a_third_host():
    state = manifests(delete_yaml("web").replace("{host: b}", "{hostSelector: {zone: y}}"))
    third = model.Sending("c", "vmstore", "web-root.qcow2")
    result = fleet.plan_fleet(state, {"a": host_state(interrupted(state, "web", third), state=state),
                                      "b": host_state(state=state)})
    (migration,) = result.migrations
    owner = domxml.parse_owner(domxml.parse_tree(migration.steps[0].xml))
    assert owner.sending == (third,)


def fleet_marked(state: model.DesiredState, vm: str, roster: tuple[str, ...]) -> model.ObservedDomain:
    """Return ``vm`` as a fleet left it on host a, its marks naming the fleet's Hosts ``roster``."""
    domain = running_on("a", state.vms[vm])
    definition = dataclasses.replace(domain.definition, owner=dataclasses.replace(domain.definition.owner, roster=roster))
    return dataclasses.replace(domain, definition=definition, xml=domxml.render(definition))


def test_manifests_without_hosts_plan_nothing_where_a_fleet_placed_vms_and_its_other_hosts_are_unseen():
    fleet_state = manifests(vm_yaml("web", where="{host: a}"), vm_yaml("db", where="{host: b}"))
    alone = desired.build(builders.manifest_set({"pools.yaml": POOLS, "vms/web.yaml": vm_yaml("web"),
                                                 "vms/db.yaml": vm_yaml("db")}))
    assert not alone.is_fleet

    plan = planner.plan_changes(alone, host_state(fleet_marked(fleet_state, "web", ("a", "b")), state=fleet_state))

    assert plan.resources == () and plan.prune_suspended
    (problem,) = plan.problems
    assert "placed by fleet default (on Host a: web)" in problem.message and "forget-host" in problem.message


def test_a_host_the_fleet_left_alone_in_its_roster_may_run_on_its_own():
    fleet_state = manifests(vm_yaml("web", where="{host: a}"))
    alone = desired.build(builders.manifest_set({"pools.yaml": POOLS, "vms/web.yaml": vm_yaml("web")}))

    plan = planner.plan_changes(alone, host_state(fleet_marked(fleet_state, "web", ("a",)), state=fleet_state))

    assert plan.problems == ()
    (web,) = [r for r in plan.changes if r.kind == "VirtualMachine"]
    assert web.actions == (plans.Action.UPDATE,) and "metadata.host" in [c.path for c in web.changes]


def stale_half(state: model.DesiredState, vm: str, *sending: model.Sending,
               power=model.PowerState.PAUSED) -> model.ObservedDomain:
    """Return ``vm`` on host a as a move to b leaves it there when a's libvirtd loses the end of the job: not running,
    its mark as it was before the move (recording ``sending``), its disks still its own."""
    domain = interrupted(state, vm, *sending)
    return dataclasses.replace(domain, power=power, storage=(("vmstore", f"{vm}-root.qcow2"),))


def test_the_half_a_move_libvirt_finished_left_on_its_source_is_discarded_then_the_copies_are_deleted():
    state = manifests(delete_yaml("web"))
    for power in (model.PowerState.PAUSED, model.PowerState.SHUTOFF):
        result = fleet.plan_fleet(state, {"a": host_state(stale_half(state, "web", PARTIAL, power=power), state=state),
                                          "b": host_state(moved(state, "web", LEFT), state=state)})

        assert result.problems == () and result.split_brain == () and result.migrations == ()
        assert steps(result.host("a").plan, "web") == [
            plans.DiscardMovedSource("web", builders.UUID, "a", "b"),
            plans.DeleteMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "b", running=True, source="a"),
            plans.ForgetMovedVolume("vmstore", "web-root.qcow2", "web", builders.UUID, "a", "b"),
        ]
        assert steps(result.host("b").plan, "web") == []  # the guest runs there, as it is
        (resource,) = [r for r in result.host("a").plan.resources if r.name == "web"]
        assert "libvirt finished moving web to b" in resource.changes[0].note


def test_two_halves_that_prove_no_finished_move_stay_a_split_brain():
    state = manifests(delete_yaml("web"))
    running_too = stale_half(state, "web", PARTIAL, power=model.PowerState.RUNNING)
    nothing_sent = stale_half(state, "web")
    sent_elsewhere = stale_half(state, "web", model.Sending("c", "vmstore", "web-root.qcow2"))
    cases = {
        "the source's half runs too": (running_too, moved(state, "web", LEFT)),
        "the source's mark records nothing sent": (nothing_sent, moved(state, "web", LEFT)),
        "what it sent went to another host": (sent_elsewhere, moved(state, "web", LEFT)),
        "the destination's mark records no copy left on a": (stale_half(state, "web", PARTIAL), moved(state, "web")),
        "the destination's half does not run": (stale_half(state, "web", PARTIAL),
                                                moved(state, "web", LEFT, power=model.PowerState.PAUSED)),
    }
    for case, (here, there) in cases.items():
        result = fleet.plan_fleet(state, {"a": host_state(here, state=state), "b": host_state(there, state=state)})
        assert result.split_brain == (fleet.SplitBrain("web", ("a", "b")),), case
        assert steps(result.host("a").plan, "web") == [] and steps(result.host("b").plan, "web") == [], case


def test_a_split_brain_says_where_the_vm_runs_and_that_an_active_copy_must_be_destroyed_before_it_is_undefined():
    state = manifests(vm_yaml("web"))
    spec = state.vms["web"]
    twice = fleet.plan_fleet(state, {"a": host_state(running_on("a", spec), state=state),
                                     "b": host_state(running_on("b", spec), state=state)})
    (problem,) = twice.problems
    assert "it RUNS on a and b at once, stop one now" in problem.message
    assert "(virsh -c URI destroy NAME where it is active, then virsh -c URI undefine NAME)" in problem.message

    off = fleet.plan_fleet(state, {"a": host_state(running_on("a", spec, power=model.PowerState.SHUTOFF), state=state),
                                   "b": host_state(running_on("b", spec, power=model.PowerState.SHUTOFF), state=state)})
    (problem,) = off.problems
    assert "RUNS" not in problem.message and "(virsh -c URI undefine NAME)" in problem.message


def marked(domain: model.ObservedDomain, **records) -> model.ObservedDomain:
    """Return ``domain`` with ``records`` (``moving_to``, ``moved_from``, ``host``...) written into its mark."""
    definition = dataclasses.replace(domain.definition, owner=dataclasses.replace(domain.definition.owner, **records))
    return dataclasses.replace(domain, definition=definition, xml=domxml.render(definition))


def shared_move(state: model.DesiredState, *, power=model.PowerState.PAUSED, there_power=model.PowerState.RUNNING,
                moving_to: str = "b", moved_from: str = "a") -> tuple[model.ObservedDomain, model.ObservedDomain]:
    """Return the halves of web (its disk on shared pool nfs) after a live move from a to b whose end a's libvirtd
    lost: a's half (``power``) recording the move begun to ``moving_to``, b's recording it came from ``moved_from``."""
    spec = state.vms["web"]
    here = marked(running_on("a", spec, power=power), moving_to=moving_to)
    there = marked(running_on("b", spec, power=there_power), moved_from=moved_from)
    return here, there


def shared_state(here: model.ObservedDomain, there: model.ObservedDomain, state: model.DesiredState):
    return {"a": host_state(here, state=state, pools=("nfs",)), "b": host_state(there, state=state, pools=("nfs",))}


def test_the_half_a_move_that_copied_nothing_left_on_its_source_is_discarded_and_its_shared_disk_kept():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    for power in (model.PowerState.PAUSED, model.PowerState.SHUTOFF):
        result = fleet.plan_fleet(state, shared_state(*shared_move(state, power=power), state))

        assert result.problems == () and result.split_brain == () and result.migrations == ()
        assert steps(result.host("a").plan, "web") == [plans.DiscardMovedSource("web", builders.UUID, "a", "b")]
        assert steps(result.host("b").plan, "web") == []  # the guest runs there, as it is: no plan change either
        assert not any(r.name == "web" for r in result.host("b").plan.changes)


def test_a_move_whose_source_libvirtd_lost_the_end_of_the_hand_over_is_finished_and_the_guest_resumed():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    here, _there = shared_move(state)
    here = dataclasses.replace(here, paused_by_migration=True)  # stopped at the switch-over, never ran since
    result = fleet.plan_fleet(state, shared_state(here, held_at_hand_over(state), state))

    assert result.problems == () and result.split_brain == () and result.migrations == ()
    # resumed first: destroying the stale half hands the disks back to root (libvirt's labels), and a guest not
    # yet running could not open them to resume; the stale half, stopped for good at the switch-over, waits
    assert steps(result.host("a").plan, "web") == [plans.ResumeMovedDomain("web", builders.UUID, "b", "a"),
                                                   plans.DiscardMovedSource("web", builders.UUID, "a", "b")]
    assert steps(result.host("b").plan, "web") == []


def test_the_copy_a_move_left_on_a_destination_that_lost_the_end_of_the_hand_over_is_discarded():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    kept = {  # how the source kept the guest, and how the destination's restarted libvirtd left its copy
        "the source resumed its copy; the destination's libvirtd killed the guest it never resumed":
            (model.PowerState.RUNNING, False, model.PowerState.SHUTOFF),
        "the source resumed its copy; the destination still holds it paused": (model.PowerState.RUNNING, False,
                                                                                model.PowerState.PAUSED),
        "the source's half is paused at the switch-over, the destination's copy is gone": (model.PowerState.PAUSED,
                                                                                           True, model.PowerState.SHUTOFF),
        "the source's copy ran, and a person paused it since; the destination still holds it paused":
            (model.PowerState.PAUSED, False, model.PowerState.PAUSED),
    }
    for case, (power, by_migration, there_power) in kept.items():
        here, _there = shared_move(state, power=power)
        here = dataclasses.replace(here, paused_by_migration=by_migration)
        result = fleet.plan_fleet(state, shared_state(here, held_at_hand_over(state, power=there_power), state))

        assert result.problems == () and result.split_brain == (), case
        assert steps(result.host("b").plan, "web") == [plans.DiscardCancelledArrival("web", builders.UUID, "a", "b")], case
        (resource,) = [r for r in result.host("b").plan.changes if r.name == "web"]
        assert "a kept the guest, and this copy never ran" in resource.changes[0].note, case
        (move,) = result.migrations  # and the move is tried again, once the copy is gone (migrations run after)
        assert [type(step) for step in move.steps] == [plans.MigrateDomain], case


def test_two_copies_that_prove_no_move_cancelled_at_its_end_stay_a_split_brain():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    here, _there = shared_move(state, power=model.PowerState.RUNNING)
    cases = {
        "the destination's copy runs": (here, held_at_hand_over(state, power=model.PowerState.RUNNING)),
        "the destination's copy records no hand-over": (here, marked(running_on("b", state.vms["web"], power=model.PowerState.PAUSED),
                                                                     moved_from="a")),
        "the source's mark records no move to b": (marked(here, moving_to=""), held_at_hand_over(state)),
        "the destination's copy came from another host": (here, held_at_hand_over(state, moved_from="c")),
    }
    for case, (source_half, destination_half) in cases.items():
        result = fleet.plan_fleet(state, shared_state(source_half, destination_half, state))
        assert result.split_brain == (fleet.SplitBrain("web", ("a", "b")),), case
        assert steps(result.host("a").plan, "web") == [] and steps(result.host("b").plan, "web") == [], case


def test_halves_of_a_move_without_copies_whose_records_do_not_name_that_very_move_stay_a_split_brain():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    spec = state.vms["web"]
    here, there = shared_move(state)
    cases = {
        "the source's half runs too": shared_move(state, power=model.PowerState.RUNNING),
        "the destination's half does not run": shared_move(state, there_power=model.PowerState.PAUSED),
        "the source's mark records no move begun (an old mark)": (marked(here, moving_to=""), there),
        "the source's mark records a move begun to another host": shared_move(state, moving_to="c"),
        "the destination's mark records no move (defined there otherwise, say evacuated)": (
            here, marked(there, moved_from="")),
        "the destination's mark records a move from another host": shared_move(state, moved_from="c"),
        "the destination's mark names the source as its host": (here, marked(there, host="a")),
        "the source's mark names the destination as its host": (marked(here, host="b"), there),
        "the destination's copy is transient": (here, dataclasses.replace(there, persistent=False)),
        "the halves are different domains (UUID)": (here, marked(running_on("b", spec, uuid=builders.OTHER_UUID),
                                                                 moved_from="a")),
        "the source's mark is a copy from another domain": (
            marked(here, bound_uuid=builders.OTHER_UUID), there),
    }
    for case, (a, b) in cases.items():
        result = fleet.plan_fleet(state, shared_state(a, b, state))
        assert result.split_brain == (fleet.SplitBrain("web", ("a", "b")),), case
        assert steps(result.host("a").plan, "web") == [] and steps(result.host("b").plan, "web") == [], case


def test_a_move_records_where_it_comes_from_in_the_definition_it_gives_the_destination_and_no_move_begun():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    # (a kill after an earlier attempt recorded the move begun, before libvirt was asked to migrate)
    stale = marked(running_on("a", state.vms["web"]), moving_to="b", moved_from="c")
    result = fleet.plan_fleet(state, {"a": host_state(stale, state=state, pools=("nfs",)),
                                      "b": host_state(state=state, pools=("nfs",))})
    (migration,) = result.migrations
    owner = domxml.parse_owner(domxml.parse_tree(migration.steps[0].xml))
    assert (owner.host, owner.moved_from, owner.moving_to) == ("b", "a", "")


def test_a_mark_records_a_move_begun_and_where_it_came_from_and_an_older_mark_without_them_reads_as_none():
    state = manifests(vm_yaml("web", where="{host: b}", pool="nfs"))
    domain = marked(running_on("a", state.vms["web"]), moving_to="b", moved_from="c")
    owner = domxml.parse_owner(domxml.parse_tree(domain.xml))
    assert (owner.moving_to, owner.moved_from) == ("b", "c")
    old = domxml.parse_owner(domxml.parse_tree(running_on("a", state.vms["web"]).xml))
    assert (old.moving_to, old.moved_from) == ("", "")
    assert 'movingTo' not in running_on("a", state.vms["web"]).xml


def test_a_vm_redefined_on_its_host_keeps_where_it_came_from_and_drops_a_move_begun():
    state = manifests(vm_yaml("web", where="{host: a}", pool="nfs"))
    domain = marked(running_on("a", state.vms["web"]), moving_to="b", moved_from="c")
    unchanged = fleet.plan_fleet(state, {"a": host_state(domain, state=state, pools=("nfs",)),
                                         "b": host_state(state=state, pools=("nfs",))})
    assert steps(unchanged.host("a").plan, "web") == []  # records are no change

    grown = manifests(vm_yaml("web", where="{host: a}", pool="nfs").replace("memory: 1GiB", "memory: 2GiB"))
    result = fleet.plan_fleet(grown, {"a": host_state(domain, state=grown, pools=("nfs",)),
                                      "b": host_state(state=grown, pools=("nfs",))})
    (define,) = [s for s in steps(result.host("a").plan, "web") if isinstance(s, plans.DefineDomain)]
    owner = domxml.parse_owner(domxml.parse_tree(define.xml))
    assert (owner.moved_from, owner.moving_to) == ("c", "")
