"""The planner's invariants: creation, convergence, ownership, pruning, virt types and impacts."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.core import domxml, model, planner
from reconciler.core import plan as plans
from reconciler.core.plan import Action, Impact
from tests.unit import builders as b

RUNNING, SHUTOFF = model.PowerState.RUNNING, model.PowerState.SHUTOFF
DELETE, RETAIN = model.DeletionPolicy.DELETE, model.DeletionPolicy.RETAIN


def plan(desired: model.DesiredState, actual: model.ActualState, **settings) -> plans.Plan:
    """Return the plan for ``desired`` on ``actual`` with ``settings`` overriding the defaults."""
    return planner.plan_changes(desired, actual, settings=planner.Settings(**settings))


def resource(result: plans.Plan, name: str, kind: str = "VirtualMachine") -> plans.ResourcePlan:
    (found,) = [r for r in result.resources if (r.kind, r.name) == (kind, name)]
    return found


def kinds(steps) -> list[str]:
    return [step.kind for step in steps]


def changes(result: plans.ResourcePlan) -> dict[str, tuple[str | None, str | None, Impact]]:
    return {c.path: (c.old, c.new, c.impact) for c in result.changes}


def web(**fields) -> model.VMSpec:
    """Return the reference VM: two disks (Retain root, Delete cache), one NIC, autostart."""
    defaults = dict(
        disks=(b.disk("root", 10 * b.GIB), b.disk("cache", b.GIB, target="vdb", policy=DELETE)),
        nics=(b.nic(),), autostart=True,
    )
    return b.vm("web", **{**defaults, **fields})


# --- creation and convergence -------------------------------------------------------------


def test_creation_plans_pool_then_volumes_then_domain_then_power():
    """An empty host gets the pool built and started; the domain defined announcing its volumes, the volumes
    created, the domain redefined with them complete, and started."""
    desired = b.desired(web(), pools=(b.pool(),))
    result = plan(desired, b.actual(pools=()))
    pool = resource(result, "vmstore", "StoragePool")
    vm = resource(result, "web")
    assert kinds(pool.steps) == ["define_pool", "build_pool", "start_pool", "set_pool_autostart"]
    assert pool.actions == (Action.CREATE,)
    assert kinds(vm.steps) == [
        "define_domain", "create_volume", "create_volume", "define_domain", "set_autostart", "start_domain"]
    assert vm.actions == (Action.CREATE, Action.START)
    assert vm.requires == ("StoragePool/vmstore",)
    assert [r.key for r in result.resources] == ["StoragePool/vmstore", "VirtualMachine/web"]
    assert result.problems == () and result.has_changes


def test_creation_defines_a_new_domain_that_records_its_volumes_as_created():
    """The first definition names the new domain's identity and marks each volume it is about to create as
    kvmops' (pending), before any exists; the second, after them, records them complete."""
    result = plan(b.desired(web()), b.actual())
    steps = resource(result, "web").steps
    intent, define = [s for s in steps if isinstance(s, plans.DefineDomain)]
    assert steps.index(intent) < min(steps.index(s) for s in steps if isinstance(s, plans.CreateVolume))
    assert steps.index(define) > max(steps.index(s) for s in steps if isinstance(s, plans.CreateVolume))
    assert intent.create and not define.create and intent.uuid == define.uuid == planner.new_uuid("default", web())
    assert intent.creates == ((b.POOL, "web-cache.qcow2"), (b.POOL, "web-root.qcow2"))
    assert domxml.parse(intent.xml).owner.volumes == (
        model.OwnedVolume(b.POOL, "web-root.qcow2", RETAIN, created=True, pending=True),
        model.OwnedVolume(b.POOL, "web-cache.qcow2", DELETE, created=True, pending=True),
    )
    parsed = domxml.parse(define.xml)
    assert parsed.owner.volumes == (
        model.OwnedVolume(b.POOL, "web-root.qcow2", RETAIN, created=True),
        model.OwnedVolume(b.POOL, "web-cache.qcow2", DELETE, created=True),
    )
    assert parsed.virt_type == "kvm" and parsed.uuid == define.uuid
    created = [s for s in resource(result, "web").steps if isinstance(s, plans.CreateVolume)]
    assert [(s.pool, s.name, s.capacity) for s in created] == [
        (b.POOL, "web-root.qcow2", 10 * b.GIB), (b.POOL, "web-cache.qcow2", b.GIB),
    ]


def test_creation_keeps_a_pinned_uuid():
    """A manifest that pins a UUID defines the domain with it."""
    result = plan(b.desired(web(uuid=b.UUID)), b.actual())
    defines = [s for s in resource(result, "web").steps if isinstance(s, plans.DefineDomain)]
    assert [domxml.parse(d.xml).uuid for d in defines] == [b.UUID, b.UUID]


def test_existing_volume_is_attached_not_created_and_not_recorded_as_created():
    """A volume that already exists is used as it is; kvmops may never delete it later."""
    spec = web()
    existing = b.volume(b.POOL, "web-cache.qcow2", b.GIB)
    result = plan(b.desired(spec), b.actual(volumes=(existing,)))
    vm = resource(result, "web")
    assert [s.name for s in vm.steps if isinstance(s, plans.CreateVolume)] == ["web-root.qcow2"]
    for define in [s for s in vm.steps if isinstance(s, plans.DefineDomain)]:
        assert domxml.parse(define.xml).owner.volume(b.POOL, "web-cache.qcow2").created is False
        assert define.creates in ((), ((b.POOL, "web-root.qcow2"),))


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(web(), id="running-always"),
        pytest.param(web(run_strategy=model.RunStrategy.HALTED), id="halted-off"),
        pytest.param(web(max_memory=2 * b.MEMORY_1GIB, graphics="vnc", console=False), id="balloon-headroom"),
        pytest.param(web(nics=(b.nic(mac="52:54:00:12:34:56"), b.nic("br0", kind="bridge", model_name="e1000"))),
                     id="pinned-and-generated-macs"),
        pytest.param(web(disks=(b.disk("root"), b.disk("data", bus="scsi", target="sda"))), id="scsi-disk"),
    ],
)
def test_second_plan_is_empty_when_actual_equals_desired(spec):
    """Once the host looks like the manifests, the plan has nothing to do."""
    desired = b.desired(spec, pools=(b.pool(),))
    result = plan(desired, b.converged(desired))
    assert not result.has_changes
    assert [(r.key, r.actions, r.changes) for r in result.resources] == [
        ("StoragePool/vmstore", (), ()), ("VirtualMachine/web", (), ()),
    ]
    assert result.problems == ()


def test_what_the_planner_defines_is_what_it_later_reads_as_converged():
    """Feeding the defined XML back as the observed domain gives an empty plan: render and parse agree."""
    desired = b.desired(web())
    first = plan(desired, b.actual())
    define = [s for s in resource(first, "web").steps if isinstance(s, plans.DefineDomain)][-1]
    config = dataclasses.replace(
        domxml.parse(define.xml),
        nics=tuple(dataclasses.replace(n, mac=b.mac(i)) for i, n in enumerate(domxml.parse(define.xml).nics)),
    )
    after = b.actual(b.domain(config, autostart=True), volumes=b.volumes_of(web()))
    assert not plan(desired, after).has_changes


def test_only_a_changed_digest_redefines_with_a_note():
    """A manifest change that alters nothing in the VM (labels) only refreshes the recorded digest."""
    desired = b.desired(web())
    actual = b.converged(desired)
    result = plan(b.desired(web(digest="sha256:" + "1" * 64)), actual)
    vm = resource(result, "web")
    assert kinds(vm.steps) == ["define_domain"]
    assert [(c.path, c.impact) for c in vm.changes] == [("digest", Impact.LIVE)]
    assert "do not alter the VM" in vm.changes[0].note


# --- ownership ----------------------------------------------------------------------------


def test_foreign_domain_named_by_a_manifest_is_a_problem_and_gets_no_steps():
    """kvmops never adopts silently: a same-named unmarked domain is reported and left alone."""
    result = plan(b.desired(web()), b.actual(b.foreign("web")))
    vm = resource(result, "web")
    assert vm.steps == () and vm.actions == ()
    (problem,) = result.problems
    assert problem.path == "metadata.name"
    assert "not managed by kvmops" in problem.message and "kvmops adopt web" in problem.message
    assert result.foreign == ("web",)


def test_foreign_domains_are_listed_and_never_get_steps():
    """Unmarked domains appear in ``foreign`` and no resource plans anything for them."""
    desired = b.desired(web())
    actual = b.converged(desired)
    actual = b.actual(*actual.domains.values(), b.foreign("win10"), b.foreign("alpine", power=SHUTOFF),
                      volumes=tuple(actual.volumes.values()))
    result = plan(desired, actual)
    assert result.foreign == ("alpine", "win10")
    assert {r.name for r in result.resources} == {"web"}
    assert not result.has_changes


def test_owned_domain_with_unreadable_xml_is_a_problem():
    """A marked domain whose XML cannot be parsed is not redefined blindly."""
    broken = dataclasses.replace(b.domain(b.definition(web())), definition=None, live=None, error="bad XML")
    result = plan(b.desired(web()), b.actual(broken))
    assert resource(result, "web").steps == ()
    assert "cannot be read (bad XML)" in result.problems[0].message


def test_uuid_pinned_differently_from_the_domain_is_a_problem():
    """A pinned UUID that differs from the existing domain's would need a replacement: refused."""
    actual = b.actual(b.domain(b.definition(web(), uuid=b.UUID)), volumes=b.volumes_of(web()))
    result = plan(b.desired(web(uuid=b.OTHER_UUID)), actual)
    assert resource(result, "web").steps == ()
    assert [p.path for p in result.problems] == ["spec.uuid"]


# --- pruning ------------------------------------------------------------------------------


def orphan(name: str = "old", *, power: model.PowerState = RUNNING, records=()) -> model.ObservedDomain:
    """Return an owned domain no manifest declares, whose owner mark lists ``records``."""
    spec = b.vm(name)
    config = b.definition(spec, uuid=b.OTHER_UUID, extra_volumes=tuple(records))
    return b.domain(config, power=power)


def test_prune_stops_deletes_only_created_delete_volumes_and_then_undefines():
    """An owned domain without a manifest goes, and only volumes kvmops created under Delete go with it."""
    records = (
        model.OwnedVolume(b.POOL, "old-scratch.qcow2", DELETE, created=True),
        model.OwnedVolume(b.POOL, "old-root.qcow2", RETAIN, created=True),
        model.OwnedVolume(b.POOL, "adopted.qcow2", DELETE, created=False),
        model.OwnedVolume(b.POOL, "vanished.qcow2", DELETE, created=True),
    )
    volumes = tuple(b.volume(b.POOL, n, b.GIB) for n in ("old-scratch.qcow2", "old-root.qcow2", "adopted.qcow2"))
    desired = b.desired(web())
    converged = b.converged(desired)
    actual = b.actual(*converged.domains.values(), orphan(records=records),
                      volumes=(*converged.volumes.values(), *volumes))
    result = plan(desired, actual)
    old = resource(result, "old")
    assert old.actions == (Action.DELETE, Action.STOP)
    assert [(s.kind, getattr(s, "name", None)) for s in old.steps] == [
        ("stop_domain", "old"), ("move_volume_to_trash", "old-scratch.qcow2"), ("undefine_domain", "old"),
    ]  # the domain's mark, the record that the volume is kvmops' to delete, goes last
    assert changes(old)[f"volume {b.POOL}/old-scratch.qcow2"] == ("1 GiB", None, Impact.DATA_LOSS)
    assert f"volume {b.POOL}/old-root.qcow2 is kept (deletionPolicy Retain)" in old.notes
    assert f"volume {b.POOL}/adopted.qcow2 is kept (kvmops did not create it)" in old.notes
    assert result.prune_suspended is None


def test_prune_of_a_shut_off_domain_needs_no_stop():
    """A domain that is already off is undefined without a stop step."""
    desired = b.desired(web())
    converged = b.converged(desired)
    actual = b.actual(*converged.domains.values(), orphan(power=SHUTOFF), volumes=tuple(converged.volumes.values()))
    old = resource(plan(desired, actual), "old")
    assert kinds(old.steps) == ["undefine_domain"] and old.actions == (Action.DELETE,)


@pytest.mark.parametrize(
    ("desired", "settings", "why"),
    [
        pytest.param(
            b.desired(web(), problems=(model.Problem("manifests/vms/x.yaml", 3, "spec", "broken"),)), {},
            "1 problem(s)", id="any-manifest-problem",
        ),
        pytest.param(b.desired(web(disks=(b.disk(pool="nowhere"),))), {}, "1 problem(s)", id="plan-time-problem"),
        pytest.param(b.desired(), {}, "declare no VirtualMachine", id="desired-empty"),
        pytest.param(b.desired(pools=(b.pool(),)), {}, "declare no VirtualMachine", id="only-pools-declared"),
        pytest.param(b.desired(web()), {"prune": False}, "--no-prune", id="no-prune"),
    ],
)
def test_prune_is_suspended_when_the_manifests_cannot_be_trusted(desired, settings, why):
    """Orphans are kept and listed when pruning would rest on a broken, empty or disabled input."""
    actual = b.actual(orphan("old"), orphan("older"), b.foreign("win10"))
    result = plan(desired, actual, **settings)
    assert why in result.prune_suspended
    assert result.kept == ("old", "older")
    assert all(r.name not in ("old", "older") for r in result.resources)


def test_empty_manifests_facing_owned_domains_is_itself_a_problem():
    """An empty manifest set with owned domains on the host fails the plan instead of silently doing nothing."""
    result = plan(b.desired(), b.actual(orphan("old")))
    assert [p.message for p in result.problems] == [result.prune_suspended]
    assert "--allow-empty" in result.prune_suspended


def test_allow_empty_lets_an_empty_manifest_set_prune_everything():
    """With allow_empty an empty desired state removes the owned domains, never the foreign ones."""
    result = plan(b.desired(), b.actual(orphan("old"), b.foreign("win10")), allow_empty=True)
    assert result.prune_suspended is None
    assert [(r.name, r.actions) for r in result.resources] == [("old", (Action.DELETE, Action.STOP))]


def test_no_orphans_means_nothing_to_suspend():
    """With nothing to prune there is no suspension to report, even with problems."""
    desired = b.desired(problems=(model.Problem("f", 1, "", "broken"),))
    assert plan(desired, b.actual(b.foreign("win10"))).prune_suspended is None


# --- virt type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "host", "expected"),
    [
        pytest.param("auto", b.host("kvm", "qemu"), "kvm", id="auto-kvm"),
        pytest.param("auto", b.host("kvm", "qemu", kvm_unusable="kvm_pvm"), "qemu", id="auto-kvm-unusable"),
        pytest.param("auto", b.host("qemu"), "qemu", id="auto-no-kvm"),
        pytest.param("auto", b.host("test", uri="test:///default", test_driver=True), "test", id="auto-test-driver"),
        pytest.param("qemu", b.host("kvm", "qemu"), "qemu", id="explicit-qemu"),
        pytest.param("kvm", b.host("test", uri="test:///default", test_driver=True), "kvm", id="explicit-on-test-driver"),
    ],
)
def test_virt_type_resolution(requested, host, expected):
    """``auto`` is kvm where it works, else qemu, and test on the test driver; explicit types are kept."""
    assert planner.resolve_virt_type(requested, host) == (expected, None)


def test_explicit_virt_type_the_host_lacks_is_a_problem_and_gets_no_steps():
    """Asking for kvm on a host without it is reported with the way out, and nothing is done."""
    result = plan(b.desired(web(virt_type="kvm")), b.actual(host_info=b.host("qemu")))
    assert resource(result, "web").steps == ()
    (problem,) = result.problems
    assert problem.path == "spec.virtType" and "use virtType: qemu" in problem.message


def test_host_without_any_usable_type_is_a_problem():
    """``auto`` on a host offering neither kvm nor qemu is refused, naming what is offered."""
    result = plan(b.desired(web()), b.actual(host_info=b.host("xen")))
    assert "no usable domain type" in result.problems[0].message and "xen" in result.problems[0].message


def test_global_virt_type_applies_when_the_manifest_sets_none():
    """A VM without virtType takes the global default from the settings."""
    result = plan(b.desired(web()), b.actual(), virt_type="qemu")
    for define in [s for s in resource(result, "web").steps if isinstance(s, plans.DefineDomain)]:
        assert domxml.parse(define.xml).virt_type == "qemu"


# --- pools --------------------------------------------------------------------------------


def test_disk_in_an_unknown_pool_is_a_problem():
    """A disk whose pool is neither declared nor on the host is refused, located at its pool field."""
    result = plan(b.desired(web()), b.actual(pools=()))
    assert [p.path for p in result.problems] == ["spec.disks[0].pool", "spec.disks[1].pool"]
    assert resource(result, "web").steps == ()


def test_disk_in_an_inactive_undeclared_pool_is_a_problem():
    """An existing pool that is not running cannot take volumes; the problem says how to start it."""
    result = plan(b.desired(web()), b.actual(pools=(b.observed_pool(active=False),)))
    assert "virsh pool-start vmstore" in result.problems[0].message


def test_existing_pool_at_another_path_is_a_problem_never_changed():
    """kvmops never redefines an existing pool; a path mismatch is a problem with both paths."""
    result = plan(b.desired(pools=(b.pool(path="/srv/new"),)), b.actual(pools=(b.observed_pool(path="/srv/old"),)))
    pool = resource(result, "vmstore", "StoragePool")
    assert pool.steps == ()
    assert "/srv/old" in result.problems[0].message


def test_inactive_pool_is_started_and_autostart_corrected():
    """A declared pool that exists but is stopped and not autostarted is started and marked autostart."""
    result = plan(b.desired(pools=(b.pool(),)), b.actual(pools=(b.observed_pool(active=False, autostart=False),)))
    pool = resource(result, "vmstore", "StoragePool")
    assert kinds(pool.steps) == ["set_pool_autostart", "start_pool"]
    assert pool.actions == (Action.UPDATE, Action.START)


# --- updates and impacts ------------------------------------------------------------------


def updated(spec: model.VMSpec, *, power=RUNNING, reason=None, live="same", base: model.VMSpec | None = None):
    """Return the plan for ``spec`` on a host where ``base`` (the reference VM) was applied."""
    base = base or web()
    actual = b.actual(
        b.domain(b.definition(base), power=power, reason=reason, autostart=base.autostart, live=live),
        volumes=b.volumes_of(base),
    )
    return resource(plan(b.desired(spec), actual), spec.name)


@pytest.mark.parametrize(
    ("power", "impact"),
    [
        pytest.param(RUNNING, Impact.RESTART, id="running-restart"),
        pytest.param(SHUTOFF, Impact.LIVE, id="off-live"),
    ],
)
def test_vcpu_change_takes_effect_at_next_boot_on_a_running_vm(power, impact):
    """vCPUs are written to the config; on a running guest that means restart, on a stopped one live."""
    strategy = model.RunStrategy.ALWAYS if power is RUNNING else model.RunStrategy.HALTED
    vm = updated(web(vcpus=4, run_strategy=strategy), power=power, base=web(run_strategy=strategy))
    assert changes(vm) == {"vcpus": ("2", "4", impact)}
    assert kinds(vm.steps) == ["define_domain"]
    assert vm.actions == (Action.UPDATE,)


def test_memory_within_max_memory_is_ballooned_live():
    """Raising memory up to the running guest's maxMemory applies now through the balloon."""
    base = web(max_memory=4 * b.MEMORY_1GIB)
    vm = updated(web(memory=3 * b.MEMORY_1GIB, max_memory=4 * b.MEMORY_1GIB), base=base)
    assert changes(vm) == {"memory": ("1 GiB", "3 GiB", Impact.LIVE)}
    assert vm.changes[0].note == "balloon"
    assert kinds(vm.steps) == ["define_domain", "set_memory_live"]
    assert vm.steps[1] == plans.SetMemoryLive("web", 3 * b.MEMORY_1GIB)


def test_memory_beyond_the_running_max_memory_waits_for_a_restart():
    """Memory above what the running guest can balloon to is a restart, with no live step."""
    vm = updated(web(memory=2 * b.MEMORY_1GIB, max_memory=2 * b.MEMORY_1GIB))
    assert changes(vm) == {
        "memory": ("1 GiB", "2 GiB", Impact.RESTART),
        "maxMemory": ("1 GiB", "2 GiB", Impact.RESTART),
    }
    assert "set_memory_live" not in kinds(vm.steps)


def test_lowering_memory_without_max_memory_shows_the_ceiling_dropping_at_next_boot():
    """With maxMemory unset the ceiling follows memory: the balloon shrinks now, the ceiling at next boot."""
    vm = updated(web(memory=b.MEMORY_1GIB // 2, max_memory=b.MEMORY_1GIB // 2))
    assert changes(vm) == {
        "memory": ("1 GiB", "512 MiB", Impact.LIVE),
        "maxMemory": ("1 GiB", "512 MiB", Impact.RESTART),
    }
    assert "set_memory_live" in kinds(vm.steps)


def test_memory_change_on_a_stopped_vm_is_live_without_a_balloon_step():
    """A stopped guest simply boots with the new memory next time."""
    vm = updated(web(memory=2 * b.MEMORY_1GIB, max_memory=2 * b.MEMORY_1GIB), power=SHUTOFF,
                 base=web(run_strategy=model.RunStrategy.HALTED))
    assert changes(vm)["memory"] == ("1 GiB", "2 GiB", Impact.LIVE)
    assert "set_memory_live" not in kinds(vm.steps)


def test_max_memory_change_is_reported_when_it_is_explicit():
    """Raising only maxMemory on a running VM is a restart change of maxMemory."""
    vm = updated(web(max_memory=2 * b.MEMORY_1GIB))
    assert changes(vm) == {"maxMemory": ("1 GiB", "2 GiB", Impact.RESTART)}


@pytest.mark.parametrize(
    "autostart",
    [pytest.param(True, id="enable"), pytest.param(False, id="disable")],
)
def test_autostart_change_is_live_and_needs_no_redefinition(autostart):
    """Autostart is toggled through its own call, live, without redefining the domain."""
    base = web(autostart=not autostart)
    vm = updated(web(autostart=autostart), base=base)
    assert changes(vm) == {"autostart": (str(not autostart).lower(), str(autostart).lower(), Impact.LIVE)}
    assert vm.steps == (plans.SetAutostart("web", autostart),)


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        pytest.param("graphics", "vnc", "graphics", id="graphics"),
        pytest.param("console", False, "console", id="console"),
        pytest.param("virt_type", "qemu", "virtType", id="virt-type"),
    ],
)
def test_device_changes_on_a_running_vm_are_restart(field, value, path):
    """Graphics, console and domain type are configured now and take effect at the next boot."""
    vm = updated(web(**{field: value}))
    assert [(c.path, c.impact) for c in vm.changes] == [(path, Impact.RESTART)]


def test_redefinition_keeps_the_uuid_and_the_generated_macs():
    """A redefined domain keeps the UUID and NIC MACs libvirt generated, though the manifest pins neither."""
    base = web(nics=(b.nic(), b.nic("br0", kind="bridge")))
    vm = updated(web(vcpus=8, nics=base.nics), base=base)
    (define,) = [s for s in vm.steps if isinstance(s, plans.DefineDomain)]
    assert define.uuid == b.UUID
    parsed = domxml.parse(define.xml)
    assert parsed.uuid == b.UUID
    assert [n.mac for n in parsed.nics] == [b.mac(0), b.mac(1)]


def test_adding_a_nic_keeps_the_existing_macs_and_gives_the_new_one_its_own():
    """A NIC appended to the manifest gets a fresh MAC in the plan; the existing NIC keeps its own."""
    vm = updated(web(nics=(b.nic(), b.nic("br0", kind="bridge"))))
    (define,) = [s for s in vm.steps if isinstance(s, plans.DefineDomain)]
    kept, fresh = [n.mac for n in domxml.parse(define.xml).nics]
    assert kept == b.mac(0) and fresh.startswith("52:54:00:") and fresh != kept
    assert changes(vm) == {"networks[1]": (None, f"bridge br0 (virtio) mac {fresh}", Impact.RESTART)}


def test_removing_a_nic_does_not_move_another_nics_mac():
    """Dropping the first of two NICs leaves the second with its own MAC, not the removed one's."""
    base = web(nics=(b.nic(), b.nic("br0", kind="bridge")))
    vm = updated(web(nics=(b.nic("br0", kind="bridge"),)), base=base)
    (define,) = [s for s in vm.steps if isinstance(s, plans.DefineDomain)]
    assert [n.mac for n in domxml.parse(define.xml).nics] == [b.mac(1)]


def test_inserting_a_nic_first_keeps_the_existing_nic_mac_on_its_network():
    """A NIC inserted before an existing one gets a new MAC; the existing NIC keeps its identity."""
    vm = updated(web(nics=(b.nic("br0", kind="bridge"), b.nic())))
    (define,) = [s for s in vm.steps if isinstance(s, plans.DefineDomain)]
    (first, first_mac), second = [(n.source, n.mac) for n in domxml.parse(define.xml).nics]
    assert first == "br0" and first_mac not in (None, b.mac(0))
    assert second == ("default", b.mac(0))


def test_pinned_mac_change_replaces_the_nic():
    """Changing a pinned MAC is a different NIC: the old one is removed and the new one added."""
    base = web(nics=(b.nic(mac="52:54:00:00:00:01"),))
    vm = updated(web(nics=(b.nic(mac="52:54:00:00:00:02"),)), base=base)
    assert changes(vm) == {
        "networks[0]": (None, "network default (virtio) mac 52:54:00:00:00:02", Impact.RESTART),
        "networks[52:54:00:00:00:01]": ("network default (virtio) mac 52:54:00:00:00:01", None, Impact.RESTART),
    }


def test_disk_reordering_moves_targets_but_keeps_each_volume():
    """Swapping two disks in the manifest retargets them; no volume is replaced or detached."""
    base = web()
    swapped = web(disks=(b.disk("cache", b.GIB, target="vda", policy=DELETE), b.disk("root", 10 * b.GIB, target="vdb")))
    vm = updated(swapped, base=base)
    assert changes(vm) == {
        "disks[cache].target": ("vdb", "vda", Impact.RESTART),
        "disks[root].target": ("vda", "vdb", Impact.RESTART),
    }
    assert all(step.kind not in ("create_volume", "delete_volume", "move_volume_to_trash") for step in vm.steps)


def test_pointing_a_disk_at_another_volume_is_a_replace():
    """A disk whose volume changes gets a new, empty disk: impact replace, the old volume kept."""
    vm = updated(web(disks=(b.disk("root", 10 * b.GIB, volume="web-root-v2.qcow2"), web().disks[1])))
    assert changes(vm)["disks[root].volume"] == (f"{b.POOL}/web-root.qcow2", f"{b.POOL}/web-root-v2.qcow2", Impact.REPLACE)
    assert [s.name for s in vm.steps if isinstance(s, plans.CreateVolume)] == ["web-root-v2.qcow2"]
    assert f"volume {b.POOL}/web-root.qcow2 is detached and kept (deletionPolicy Retain)" in vm.notes
    assert "delete_volume" not in kinds(vm.steps) and "move_volume_to_trash" not in kinds(vm.steps)


def test_restart_pending_is_a_note_not_a_change():
    """When the config is ahead of the running guest, the plan is empty but says a restart is pending."""
    spec = web(vcpus=4)
    config = b.definition(spec)
    live = dataclasses.replace(config, vcpus=2)
    actual = b.actual(b.domain(config, live=live, autostart=True), volumes=b.volumes_of(spec))
    vm = resource(plan(b.desired(spec), actual), "web")
    assert vm.steps == () and vm.changes == ()
    assert vm.notes == ("restart pending (changed earlier, takes effect at next boot): vcpus 2 -> 4",)


def test_restart_pending_ignores_memory_the_balloon_moves():
    """Live memory lagging behind the config is not a pending restart."""
    spec = web()
    config = b.definition(spec)
    live = dataclasses.replace(config, memory=config.memory // 2)
    actual = b.actual(b.domain(config, live=live, autostart=True), volumes=b.volumes_of(spec))
    assert resource(plan(b.desired(spec), actual), "web").notes == ()


def test_plan_is_a_pure_function_of_its_inputs():
    """Planning twice from the same values gives equal plans."""
    desired = b.desired(web(vcpus=4), pools=(b.pool(),))
    actual = b.converged(b.desired(web(), pools=(b.pool(),)))
    assert plan(desired, actual) == plan(desired, actual)


def test_an_empty_manifest_set_with_pruning_off_is_not_a_problem():
    """With --no-prune an empty manifest directory removes nothing and is not an error either."""
    actual = b.actual(b.domain(b.definition(web())))
    result = planner.plan_changes(b.desired(), actual, settings=planner.Settings(prune=False))
    assert result.problems == ()
    assert result.prune_suspended == "pruning is disabled (--no-prune)"
    assert not result.has_changes
