"""Volumes: growth, refused shrinks, replacements and the rules for deleting data."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.core import domxml, hostdirs, model, planner, quantity
from reconciler.core import plan as plans
from reconciler.core.plan import Action, Impact
from tests.unit import builders as b

RUNNING, SHUTOFF = model.PowerState.RUNNING, model.PowerState.SHUTOFF
DELETE, RETAIN = model.DeletionPolicy.DELETE, model.DeletionPolicy.RETAIN
HALTED = model.RunStrategy.HALTED

ROOT = b.disk("root", 10 * b.GIB)
SCRATCH = b.disk("scratch", b.GIB, target="vdb", policy=DELETE)


def vm_plan(
    spec: model.VMSpec,
    base: model.VMSpec,
    *,
    power: model.PowerState = RUNNING,
    volumes: tuple[model.ObservedVolume, ...] | None = None,
    live: object = "same",
    created: bool = True,
) -> tuple[plans.Plan, plans.ResourcePlan]:
    """Return the plan, and the VM's part of it, for ``spec`` where ``base`` was applied."""
    actual = b.actual(
        b.domain(b.definition(base, created=created), power=power, live=live),
        volumes=b.volumes_of(base) if volumes is None else volumes,
    )
    result = planner.plan_changes(b.desired(spec), actual)
    (vm,) = result.resources
    return result, vm


def kinds(vm: plans.ResourcePlan) -> list[str]:
    return [s.kind for s in vm.steps]


@pytest.mark.parametrize(
    ("power", "strategy", "step"),
    [
        pytest.param(SHUTOFF, HALTED, plans.ResizeVolume(b.POOL, "web-root.qcow2", 20 * b.GIB), id="off-resize-volume"),
        pytest.param(RUNNING, model.RunStrategy.ALWAYS,
                     plans.ResizeDisk("web", b.UUID, "vda", 20 * b.GIB, b.POOL, "web-root.qcow2"), id="running-resize-disk"),
    ],
)
def test_disk_growth_resizes_in_place(power, strategy, step):
    """A bigger size grows the volume: offline through the pool, live through QEMU when running."""
    base = b.vm("web", disks=(ROOT,), run_strategy=strategy)
    spec = b.vm("web", disks=(dataclasses.replace(ROOT, size=20 * b.GIB),), run_strategy=strategy)
    result, vm = vm_plan(spec, base, power=power)
    assert vm.steps == (step,)
    assert [(c.path, c.old, c.new, c.impact) for c in vm.changes] == [("disks[root].size", "10 GiB", "20 GiB", Impact.LIVE)]
    assert vm.actions == (Action.UPDATE,)
    assert result.problems == ()


def test_growth_of_a_disk_the_running_guest_does_not_have_yet_resizes_the_volume():
    """A disk added to the config but not yet in the live guest is grown offline, not through QEMU."""
    base = b.vm("web", disks=(ROOT,))
    live = dataclasses.replace(b.definition(base), disks=())
    spec = b.vm("web", disks=(dataclasses.replace(ROOT, size=20 * b.GIB),))
    _, vm = vm_plan(spec, base, live=live)
    assert vm.steps == (plans.ResizeVolume(b.POOL, "web-root.qcow2", 20 * b.GIB),)


def test_shrink_is_refused_and_leaves_the_whole_vm_as_it_is():
    """A smaller size is a problem, and the VM's other changes wait until the manifest is fixed."""
    base = b.vm("web", disks=(ROOT,))
    spec = b.vm("web", vcpus=4, disks=(dataclasses.replace(ROOT, size=5 * b.GIB),))
    result, vm = vm_plan(spec, base)
    (problem,) = result.problems
    assert problem.path == "spec.disks[0].size"
    assert "would shrink from 10 GiB to 5 GiB" in problem.message and "never shrinks" in problem.message
    assert kinds(vm) == []
    assert vm.problems == (problem,)


def test_shrink_message_suggests_a_size_that_is_enough():
    """The size the problem tells the user to write is at least the volume's real capacity."""
    base = b.vm("web", disks=(ROOT,))
    odd = b.volume(b.POOL, "web-root.qcow2", 10 * b.GIB + 512)  # created outside kvmops, not MiB-aligned
    result, _ = vm_plan(b.vm("web", disks=(ROOT,)), base, volumes=(odd,))
    suggested = result.problems[0].message.split("Set size to ")[1].split(" or more")[0]
    assert quantity.parse_bytes(suggested.replace(" ", ""), bare_unit=1) >= odd.capacity


def test_vanished_volume_of_an_existing_disk_is_recreated_as_a_replace():
    """A volume gone from its pool is created anew (announced first, recorded complete after), and the plan
    says the disk is now empty."""
    base = b.vm("web", disks=(ROOT,))
    _, vm = vm_plan(base, base, volumes=())
    assert kinds(vm) == ["define_domain", "create_volume", "define_domain"]
    (change,) = vm.changes
    assert (change.path, change.old, change.impact) == ("disks[root].volume", "(missing)", Impact.REPLACE)


def pending(spec: model.VMSpec, *names: str) -> model.DomainDefinition:
    """Return the definition of ``spec`` as an interrupted apply left it: the records of ``names`` still pending."""
    config = b.definition(spec)
    volumes = tuple(dataclasses.replace(v, pending=True) if v.name in names else v for v in config.owner.volumes)
    return dataclasses.replace(config, owner=dataclasses.replace(config.owner, volumes=volumes))


def test_a_volume_announced_but_never_created_is_created_without_claiming_it_vanished():
    """After a crash between announcing a volume and creating it, the next plan creates it (no second
    announcement, no "vanished" replace) and then records it complete."""
    spec = b.vm("web", disks=(ROOT, SCRATCH), run_strategy=HALTED)
    actual = b.actual(b.domain(pending(spec, "web-scratch.qcow2"), power=SHUTOFF),
                      volumes=(b.volume(b.POOL, "web-root.qcow2", 10 * b.GIB),))
    (vm,) = planner.plan_changes(b.desired(spec), actual).resources
    assert kinds(vm) == ["create_volume", "define_domain"]
    assert not [c for c in vm.changes if c.impact in (Impact.REPLACE, Impact.DATA_LOSS)]
    record = domxml.parse(vm.steps[-1].xml).owner.volume(b.POOL, "web-scratch.qcow2")
    assert record == model.OwnedVolume(b.POOL, "web-scratch.qcow2", DELETE, created=True)


def test_a_volume_an_interrupted_apply_was_creating_is_created_again_and_then_recorded_complete():
    """A volume whose record is still pending may be incomplete (a copy cut short): it is kvmops' own, never
    used by a guest, so the next plan deletes and creates it again, and says why."""
    spec = b.vm("web", disks=(ROOT, SCRATCH), run_strategy=HALTED)
    actual = b.actual(b.domain(pending(spec, "web-scratch.qcow2"), power=SHUTOFF), volumes=b.volumes_of(spec))
    (vm,) = planner.plan_changes(b.desired(spec), actual).resources
    assert kinds(vm) == ["delete_volume", "create_volume", "define_domain"]
    (change,) = vm.changes
    assert "interrupted apply" in change.note and change.impact is Impact.LIVE
    assert not domxml.parse(vm.steps[-1].xml).owner.volume(b.POOL, "web-scratch.qcow2").pending


def test_removing_a_delete_disk_from_a_stopped_vm_deletes_its_volume_after_the_redefinition():
    """The volume of a removed Delete disk goes (to the trash), after the domain stops referring to it."""
    base = b.vm("web", disks=(ROOT, SCRATCH), run_strategy=HALTED)
    spec = b.vm("web", disks=(ROOT,), run_strategy=HALTED)
    result, vm = vm_plan(spec, base, power=SHUTOFF)
    assert kinds(vm) == ["define_domain", "move_volume_to_trash", "define_domain"]
    move = vm.steps[1]
    assert (move.pool, move.name, move.domain, move.uuid) == (b.POOL, "web-scratch.qcow2", "web", b.UUID)  # only while web is ours and off
    changes = {c.path: (c.old, c.new, c.impact) for c in vm.changes}
    assert changes[f"volume {b.POOL}/web-scratch.qcow2"] == ("1 GiB", None, Impact.DATA_LOSS)
    assert changes["disks[vdb]"] == (f"{b.POOL}/web-scratch.qcow2", None, Impact.LIVE)
    detach, forget = [s for s in vm.steps if isinstance(s, plans.DefineDomain)]
    # The record that the volume is kvmops' to delete stays until the volume is gone: a crash between
    # the two steps must not leave a volume nobody knows to delete.
    assert domxml.parse(detach.xml).disks == domxml.parse(forget.xml).disks
    assert domxml.parse(detach.xml).owner.volume(b.POOL, "web-scratch.qcow2").created
    assert domxml.parse(forget.xml).owner.volume(b.POOL, "web-scratch.qcow2") is None


def test_removing_a_delete_disk_from_a_running_vm_defers_the_deletion():
    """QEMU may still write to it, so the volume stays recorded and is only deleted once the VM is off."""
    base = b.vm("web", disks=(ROOT, SCRATCH))
    spec = b.vm("web", disks=(ROOT,))
    _, vm = vm_plan(spec, base, power=RUNNING)
    assert "delete_volume" not in kinds(vm) and "move_volume_to_trash" not in kinds(vm)
    assert kinds(vm) == ["define_domain"]
    assert not [c for c in vm.changes if c.impact is Impact.DATA_LOSS]  # nothing is destroyed by this plan
    (pending,) = [n for n in vm.notes if n.startswith("DATA LOSS pending")]
    assert "web-scratch.qcow2" in pending and "deleted once the VM is stopped" in pending
    (define,) = [s for s in vm.steps if isinstance(s, plans.DefineDomain)]
    record = domxml.parse(define.xml).owner.volume(b.POOL, "web-scratch.qcow2")
    assert record == model.OwnedVolume(b.POOL, "web-scratch.qcow2", DELETE, created=True)


def test_deferred_deletion_happens_once_the_vm_is_off():
    """The next pass after the guest stopped deletes the volume still recorded as created under Delete."""
    spec = b.vm("web", disks=(ROOT,), run_strategy=model.RunStrategy.MANUAL)
    config = b.definition(spec, extra_volumes=(model.OwnedVolume(b.POOL, "web-scratch.qcow2", DELETE, created=True),))
    actual = b.actual(b.domain(config, power=SHUTOFF),
                      volumes=(*b.volumes_of(spec), b.volume(b.POOL, "web-scratch.qcow2", b.GIB)))
    (vm,) = planner.plan_changes(b.desired(spec), actual).resources
    assert kinds(vm) == ["move_volume_to_trash", "define_domain"]


def test_halting_a_vm_deletes_its_removed_delete_disk_after_the_stop():
    """When the same plan stops the VM, the removed volume is deleted after the stop."""
    base = b.vm("web", disks=(ROOT, SCRATCH))
    spec = b.vm("web", disks=(ROOT,), run_strategy=HALTED)
    _, vm = vm_plan(spec, base, power=RUNNING)
    assert kinds(vm) == ["define_domain", "stop_domain", "move_volume_to_trash", "define_domain"]
    assert vm.actions == (Action.UPDATE, Action.STOP)


@pytest.mark.parametrize(
    ("disk", "created", "note"),
    [
        pytest.param(dataclasses.replace(SCRATCH, deletion_policy=RETAIN), True, "detached and kept", id="retain"),
        pytest.param(SCRATCH, False, "detached and kept", id="delete-but-not-created-by-kvmops"),
    ],
)
def test_removed_disk_keeps_its_volume_unless_created_under_delete(disk, created, note):
    """Only volumes kvmops created under Delete are ever deleted; others are detached and kept."""
    base = b.vm("web", disks=(ROOT, disk), run_strategy=HALTED)
    spec = b.vm("web", disks=(ROOT,), run_strategy=HALTED)
    _, vm = vm_plan(spec, base, power=SHUTOFF, created=created)
    assert kinds(vm) == ["define_domain"]
    assert all(c.impact is not Impact.DATA_LOSS for c in vm.changes)
    assert any(note in n for n in vm.notes)


def test_removed_delete_disk_whose_volume_is_gone_needs_no_deletion():
    """A recorded volume that no longer exists is simply forgotten."""
    base = b.vm("web", disks=(ROOT, SCRATCH), run_strategy=HALTED)
    spec = b.vm("web", disks=(ROOT,), run_strategy=HALTED)
    _, vm = vm_plan(spec, base, power=SHUTOFF, volumes=b.volumes_of(spec))
    assert kinds(vm) == ["define_domain"]


def test_deletion_policy_change_is_recorded_live_with_a_warning():
    """Switching a disk to Delete rewrites its record and says what that will mean."""
    base = b.vm("web", disks=(ROOT,))
    spec = b.vm("web", disks=(dataclasses.replace(ROOT, deletion_policy=DELETE),))
    _, vm = vm_plan(spec, base)
    (change,) = vm.changes
    assert (change.path, change.old, change.new, change.impact) == ("disks[root].deletionPolicy", "Retain", "Delete", Impact.LIVE)
    assert "will be deleted" in change.note


def test_adding_a_disk_announces_its_volume_before_creating_it():
    """A new disk's volume is recorded as kvmops' (pending) before it exists, and complete once it does."""
    base = b.vm("web", disks=(ROOT,))
    spec = b.vm("web", disks=(ROOT, b.disk("data", 5 * b.GIB, target="vdb")))
    _, vm = vm_plan(spec, base)
    assert kinds(vm) == ["define_domain", "create_volume", "define_domain"]
    intent, final = (domxml.parse(s.xml).owner.volume(b.POOL, "web-data.qcow2") for s in vm.steps[::2])
    assert (intent.created, intent.pending, final.created, final.pending) == (True, True, True, False)
    assert vm.steps[0].creates == ((b.POOL, "web-data.qcow2"),)
    assert [(c.path, c.impact) for c in vm.changes] == [("disks[data]", Impact.RESTART)]


def test_pruning_never_deletes_a_volume_a_declared_vm_uses():
    """Renaming a VM and pointing the new one at the old disk keeps the disk: the prune must not delete it."""
    old = b.vm("web", disks=(dataclasses.replace(ROOT, deletion_policy=DELETE),))
    renamed = b.vm("web2", disks=(dataclasses.replace(ROOT, volume="web-root.qcow2", deletion_policy=DELETE),))
    actual = b.actual(b.domain(b.definition(old)), volumes=b.volumes_of(old))
    result = planner.plan_changes(b.desired(renamed), actual)
    deleted = [s for r in result.resources for s in r.steps if isinstance(s, (plans.DeleteVolume, plans.MoveVolumeToTrash))]
    assert deleted == []


def test_moving_a_disk_to_another_vm_does_not_delete_it():
    """A volume detached from one VM and attached to another in the same change is kept."""
    data = b.disk("data", target="vdb", volume="data.qcow2", policy=DELETE)
    a_before = b.vm("a", disks=(ROOT, data), run_strategy=HALTED)
    c_before = b.vm("c", disks=(ROOT,), run_strategy=HALTED)
    a_after = b.vm("a", disks=(ROOT,), run_strategy=HALTED)
    c_after = b.vm("c", disks=(ROOT, data), run_strategy=HALTED)
    actual = b.actual(
        b.domain(b.definition(a_before), power=SHUTOFF),
        b.domain(b.definition(c_before, uuid=b.OTHER_UUID), power=SHUTOFF),
        volumes=b.volumes_of(a_before, c_before),
    )
    result = planner.plan_changes(b.desired(a_after, c_after), actual)
    deleted = [s for r in result.resources for s in r.steps if isinstance(s, (plans.DeleteVolume, plans.MoveVolumeToTrash))]
    assert deleted == []
    assert all(c.impact is not Impact.DATA_LOSS for r in result.resources for c in r.changes)


# --- pools in system directories --------------------------------------------------------


def pool_plan(spec: model.PoolSpec, *, existing: tuple[model.ObservedPool, ...] = (), uri: str = b.URI,
              vms: tuple[model.VMSpec, ...] = ()) -> plans.Plan:
    """Return the plan for ``spec`` (and ``vms``) on a host with only the ``existing`` pools."""
    return planner.plan_changes(b.desired(*vms, pools=(spec,)),
                                b.actual(pools=existing, host_info=b.host(uri=uri)))


@pytest.mark.parametrize("path", [
    "/", "/etc", "/etc/cron.d", "/usr", "/usr/local/pool", "/boot", "/root", "/root/.ssh", "/proc", "/sys", "/dev/shm",
    "/run", "/run/user", "/var/lib/libvirt/qemu", "/var/lib/libvirt/qemu/nvram", "/var/lib/libvirt", "/bin", "/sbin",
    "/lib", "/lib64", "/libx32", "/var/log", "/var/log/libvirt", "/home", "/home/alice/.ssh", "/var/spool/cron",
    "/var", "/var/lib", "/tmp",
])
def test_a_new_pool_in_a_system_directory_is_refused(path):
    """A pool kvmops would define in a system directory is a problem on spec.path, and nothing is defined."""
    result = pool_plan(b.pool("store", path))
    (resource,) = result.resources
    assert resource.steps == ()
    assert [(p.path, "is a system directory" in p.message) for p in resource.problems] == [("spec.path", True)]


@pytest.mark.parametrize("path", [
    "/var/lib/libvirt/images", "/var/lib/libvirt/images/store", "/var/lib/kvmops/store", "/srv/kvmops",
    "/home/alice/vms", "/data/vms", "/mnt/disk1/vms", "/opt/vms", "/tmp/kvmops-test/pool", "/libvirt-pools",
    "/var/lib/libvirt/boot", "/etcetera",
])
def test_a_new_pool_in_an_ordinary_directory_is_defined(path):
    """The usual places for disks stay allowed; only the directories themselves are judged, not name prefixes."""
    (resource,) = pool_plan(b.pool("store", path)).resources
    assert resource.problems == () and resource.steps[0].kind == "define_pool"


def test_an_existing_pool_in_a_system_directory_is_observed_not_refused():
    """A pool libvirt already has is never defined by kvmops, so the rule does not apply to it."""
    (resource,) = pool_plan(b.pool("store", "/var/lib/libvirt"), existing=(b.observed_pool("store", "/var/lib/libvirt"),)).resources
    assert resource.problems == ()


def test_a_pool_path_leading_to_a_system_directory_on_this_host_is_refused():
    """With libvirt on this machine, where the path leads after symlinks counts too."""
    spec = dataclasses.replace(b.pool("store", "/srv/pool"), host_path="/etc")
    (resource,) = pool_plan(spec, uri="qemu:///system").resources
    assert "leads to /etc on this host, a system directory" in resource.problems[0].message


def test_this_machines_symlinks_say_nothing_about_a_remote_host():
    """On a remote libvirt this machine's symlinks are not the host's: only the path as written is judged."""
    spec = dataclasses.replace(b.pool("store", "/srv/pool"), host_path="/etc")
    (resource,) = pool_plan(spec, uri="qemu+ssh://other/system").resources
    assert resource.problems == ()


def test_a_vm_on_a_refused_pool_says_why_it_cannot_be_created():
    """The disks' pool will never exist: the VM gets a problem pointing at the pool's manifest, and no steps."""
    result = pool_plan(b.pool(b.POOL, "/etc"), vms=(b.vm(disks=(ROOT,)),))
    vm = next(r for r in result.resources if r.kind == "VirtualMachine")
    assert vm.steps == ()
    assert [p.path for p in vm.problems] == ["spec.disks[0].pool"]
    assert f"storage pool {b.POOL!r} cannot be created" in vm.problems[0].message


@pytest.mark.parametrize(("written", "normal"), [
    ("//", "/"), ("///etc//", "/etc"), ("/etc/.", "/etc"), ("/etc/./cron.d/", "/etc/cron.d"), ("//etc", "/etc"),
    ("/var/lib/kvmops/", "/var/lib/kvmops"),
])
def test_a_pool_path_is_normalised_as_libvirt_keeps_it(written, normal):
    """Every spelling of a directory is judged, and compared with libvirt's, in one form."""
    assert hostdirs.normalise(written) == normal

def test_a_volume_an_interrupted_apply_created_is_kept_once_a_running_guest_uses_it():
    """If the guest was started on a volume whose record is still pending, it holds the guest's data: it is
    kept, never recreated, and its record completed."""
    spec = b.vm("web", disks=(ROOT, SCRATCH))
    actual = b.actual(b.domain(pending(spec, "web-scratch.qcow2"), power=RUNNING, live=b.definition(spec)),
                      volumes=b.volumes_of(spec))
    (vm,) = planner.plan_changes(b.desired(spec), actual).resources
    assert kinds(vm) == ["define_domain"]
    assert domxml.parse(vm.steps[0].xml).owner.volume(b.POOL, "web-scratch.qcow2") == model.OwnedVolume(
        b.POOL, "web-scratch.qcow2", DELETE, created=True)
    assert any("in use by the running guest" in n for n in vm.notes)


# --- the start at creation -------------------------------------------------------------


@pytest.mark.parametrize("strategy", [model.RunStrategy.MANUAL, model.RunStrategy.RERUN_ON_FAILURE])
def test_the_start_at_creation_is_recorded_as_owed_until_it_happened(strategy):
    """A Manual or RerunOnFailure VM is defined owing its first start, started, then redefined without the debt."""
    spec = b.vm("web", disks=(ROOT,), run_strategy=strategy)
    (vm,) = planner.plan_changes(b.desired(spec), b.actual()).resources
    assert kinds(vm)[-2:] == ["start_domain", "define_domain"]
    defined = [domxml.parse(s.xml).owner.start_pending for s in vm.steps if isinstance(s, plans.DefineDomain)]
    assert defined == [True, True, False]


@pytest.mark.parametrize("strategy", [model.RunStrategy.MANUAL, model.RunStrategy.RERUN_ON_FAILURE])
def test_a_vm_whose_first_start_was_interrupted_is_started_by_the_next_pass(strategy):
    """After a crash between defining a Manual or RerunOnFailure VM and starting it, the next pass starts it
    (its shut-off reason alone would say "leave it off") and then clears the debt."""
    spec = b.vm("web", disks=(ROOT,), run_strategy=strategy)
    config = b.definition(spec)
    owed = dataclasses.replace(config, owner=dataclasses.replace(config.owner, start_pending=True))
    actual = b.actual(b.domain(owed, power=SHUTOFF), volumes=b.volumes_of(spec))
    (vm,) = planner.plan_changes(b.desired(spec), actual).resources
    assert kinds(vm) == ["start_domain", "define_domain"]
    assert not domxml.parse(vm.steps[-1].xml).owner.start_pending
    assert any("first start was interrupted" in n for n in vm.notes)
    without_debt = b.actual(b.domain(config, power=SHUTOFF), volumes=b.volumes_of(spec))
    (left_off,) = planner.plan_changes(b.desired(spec), without_debt).resources
    assert kinds(left_off) == []  # stopped on purpose: Manual leaves it off


def test_a_removed_delete_disk_of_a_vm_that_is_off_is_deleted_before_the_vm_starts_again():
    """An Always VM found off gets its removed Delete volume deleted while it is still off, then started:
    the deletion checks the domain is off, so it must not come after the start."""
    base = b.vm("web", disks=(ROOT, SCRATCH))
    spec = b.vm("web", disks=(ROOT,))
    _, vm = vm_plan(spec, base, power=SHUTOFF)
    assert kinds(vm) == ["define_domain", "move_volume_to_trash", "define_domain", "start_domain"]
    assert vm.actions == (Action.UPDATE, Action.START)
