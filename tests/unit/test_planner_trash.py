"""Deletion you can undo: where a Delete volume goes, what the DATA LOSS line says, purges, and restored volumes."""

from __future__ import annotations

import dataclasses

from reconciler.core import domxml, model, planner, render, trash
from reconciler.core import plan as plans
from reconciler.core import policy as policies
from reconciler.core.plan import Action, Impact
from tests.unit import builders as b

SHUTOFF, HALTED = model.PowerState.SHUTOFF, model.RunStrategy.HALTED
DELETE = model.DeletionPolicy.DELETE
NOW = 1796511600  # 2026-12-05 23:00:00 UTC
DAY = 86400
ROOT = b.disk("root", 10 * b.GIB)
DATA = b.disk("data", b.GIB, target="vdb", policy=DELETE)
SETTINGS = planner.Settings(now=NOW)


def pruned_world(**host) -> model.ActualState:
    """A host where VM web (off, with its Delete disk data) is owned and no manifest declares it any more."""
    web = b.vm("web", disks=(ROOT, DATA), run_strategy=HALTED)
    state = b.actual(b.domain(b.definition(web), power=SHUTOFF), volumes=b.volumes_of(web))
    return dataclasses.replace(state, host=dataclasses.replace(state.host, **host)) if host else state


def prune_of(result: plans.Plan) -> plans.ResourcePlan:
    return next(r for r in result.resources if r.name == "web")


def plan(actual: model.ActualState, *vms: model.VMSpec, settings: planner.Settings = SETTINGS) -> plans.Plan:
    return planner.plan_changes(b.desired(*(vms or (b.vm("other"),))), actual, settings=settings)


def entry(**changes) -> trash.TrashEntry:
    fields = dict(pool=b.POOL, volume="web-data.qcow2", entry=trash.entry_name("web-data.qcow2", NOW - 2 * DAY),
                  scope="default", vm="web", vm_uuid=b.UUID, deleted_at=NOW - 2 * DAY, capacity=b.GIB,
                  reason="pruned with VM web")
    fields.update(changes)
    return trash.TrashEntry(**fields)


# -- where a deleted volume goes ----------------------------------------------------------------


def test_a_pruned_vms_delete_volume_moves_to_its_pools_trash_recorded_as_deleted_now():
    result = plan(pruned_world())

    (move,) = [s for s in prune_of(result).steps if isinstance(s, plans.MoveVolumeToTrash)]
    assert (move.pool, move.name, move.path, move.pool_path) == (
        b.POOL, "web-data.qcow2", f"{b.POOL_PATH}/web-data.qcow2", b.POOL_PATH)
    assert (move.entry, move.deleted_at, move.scope, move.domain, move.uuid) == (
        "20261205T230000Z-web-data.qcow2", NOW, "default", "web", b.UUID)
    assert move.reason == "pruned with VM web"
    assert [s.kind for s in prune_of(result).steps][-1] == "undefine_domain"  # the mark, the proof, goes last


def test_a_second_deletion_of_the_same_volume_within_one_second_gets_an_entry_of_its_own():
    state = dataclasses.replace(pruned_world(), trash=(entry(deleted_at=NOW, entry=trash.entry_name("web-data.qcow2", NOW)),))

    (move,) = [s for s in prune_of(plan(state)).steps if isinstance(s, plans.MoveVolumeToTrash)]

    assert move.entry == "20261205T230000Z-web-data.qcow2.2"


def test_the_data_loss_line_says_when_the_move_becomes_final():
    text = render.text(plan(pruned_world()))

    assert (f"DATA LOSS: VirtualMachine web: volume {b.POOL}/web-data.qcow2 moved to the trash, final after "
            "2026-12-06 23:00 UTC") in text


def test_a_longer_retention_moves_the_final_date():
    text = render.text(plan(pruned_world(), settings=planner.Settings(now=NOW, trash_retention=7 * DAY)))

    assert "moved to the trash, final after 2026-12-12 23:00 UTC" in text


def test_a_retention_of_zero_deletes_at_once_and_says_so():
    result = plan(pruned_world(), settings=planner.Settings(now=NOW, trash_retention=0))

    steps = prune_of(result).steps
    assert [s.kind for s in steps] == ["delete_volume", "undefine_domain"]
    assert f"volume {b.POOL}/web-data.qcow2 deleted at once: trashRetention is 0" in render.text(result)


def test_on_a_host_whose_files_kvmops_cannot_move_the_volume_is_deleted_at_once_with_the_reason():
    result = plan(pruned_world(uri="qemu+ssh://hv2/system", trash_unavailable="libvirt runs on another machine"))

    assert [s.kind for s in prune_of(result).steps] == ["delete_volume", "undefine_domain"]
    assert "deleted at once: libvirt runs on another machine" in render.text(result)


def test_a_volume_of_a_pool_that_is_not_a_directory_is_deleted_at_once():
    state = pruned_world()
    state = dataclasses.replace(state, pools={b.POOL: dataclasses.replace(state.pools[b.POOL], type="logical")})

    result = plan(state)

    assert [s.kind for s in prune_of(result).steps] == ["delete_volume", "undefine_domain"]
    assert f"deleted at once: pool {b.POOL} is a logical pool, not a directory, so it has no trash" in render.text(result)


def test_a_delete_disk_removed_from_a_stopped_vm_goes_to_the_trash_before_its_record():
    base = b.vm("web", disks=(ROOT, DATA), run_strategy=HALTED)
    spec = b.vm("web", disks=(ROOT,), run_strategy=HALTED)
    state = b.actual(b.domain(b.definition(base), power=SHUTOFF), volumes=b.volumes_of(base))

    (vm,) = plan(state, spec).resources

    assert [s.kind for s in vm.steps] == ["define_domain", "move_volume_to_trash", "define_domain"]
    assert vm.steps[1].reason == "disk removed from VM web"
    (lost,) = [c for c in vm.changes if c.impact is Impact.DATA_LOSS]
    assert lost.loss == "moved to the trash, final after 2026-12-06 23:00 UTC"


def test_the_generated_seed_is_deleted_at_once_not_trashed():
    """The cloud-init seed holds no one's data: it never goes to the trash."""
    seed = model.OwnedVolume(b.POOL, "web-cidata.iso", DELETE, True, digest="sha256:" + "0" * 64)
    web = b.vm("web", disks=(ROOT,), run_strategy=HALTED)
    config = b.definition(web, extra_volumes=(seed,))
    state = b.actual(b.domain(config, power=SHUTOFF),
                     volumes=(*b.volumes_of(web), b.volume(b.POOL, "web-cidata.iso", 1024)))

    steps = prune_of(plan(state)).steps

    assert [s.kind for s in steps] == ["delete_volume", "undefine_domain"]


def test_the_policy_forbidding_data_loss_holds_a_move_to_the_trash_too():
    """A move to the trash is a deletion: allowDataLoss: false refuses it as it refuses a delete."""
    rules = policies.from_config({"allowDataLoss": False})

    result = plan(pruned_world(), settings=planner.Settings(now=NOW, policy=rules))

    assert not [s for r in result.resources for s in r.steps if isinstance(s, plans.MoveVolumeToTrash)]
    assert result.problems


# -- purges --------------------------------------------------------------------------------------


def converged_with(*entries: trash.TrashEntry) -> tuple[model.ActualState, model.VMSpec]:
    other = b.vm("other")
    state = b.converged(b.desired(other))
    return dataclasses.replace(state, trash=entries), other


def test_an_entry_past_its_retention_is_purged_with_final_data_loss_wording():
    state, other = converged_with(entry())

    result = plan(state, other)

    (purge,) = [r for r in result.resources if r.kind == "Trash"]
    assert purge.actions == (Action.DELETE,)
    assert purge.steps == (plans.PurgeTrashEntry(b.POOL, b.POOL_PATH, entry().entry, holds_volume=True),)
    (change,) = purge.changes
    assert change.impact is Impact.DATA_LOSS
    assert (f"DATA LOSS: Trash {b.POOL}/{entry().entry}: trash entry {b.POOL}/web-data.qcow2 (deleted "
            "2026-12-03 23:00 UTC) is purged: final, it can no longer be restored") in render.text(result)


def test_an_entry_within_its_retention_is_kept():
    state, other = converged_with(entry(deleted_at=NOW - 3600))

    assert not plan(state, other).changes


def test_only_the_entries_of_this_scope_are_purged():
    state, other = converged_with(entry(scope="team-b"))

    assert not plan(state, other).changes


def test_purges_wait_while_pruning_is_suspended_or_off():
    state, other = converged_with(entry())
    broken = b.desired(other, problems=(model.Problem("vms/x.yaml", 1, "spec", "broken"),))

    assert not [r for r in planner.plan_changes(broken, state, settings=SETTINGS).resources if r.kind == "Trash"]
    assert not plan(state, other, settings=planner.Settings(now=NOW, prune=False)).changes


def test_purges_wait_when_the_policy_forbids_data_loss():
    state, other = converged_with(entry())

    assert not plan(state, other, settings=planner.Settings(now=NOW, policy=policies.from_config({"allowDataLoss": False}))).changes


def test_a_record_left_by_a_move_cut_short_is_removed_as_holding_no_data():
    state, other = converged_with(entry(holds_volume=False, deleted_at=NOW))

    (sweep,) = [r for r in plan(state, other).resources if r.kind == "Trash"]
    assert sweep.steps == (plans.PurgeTrashEntry(b.POOL, b.POOL_PATH, entry().entry, holds_volume=False),)
    assert sweep.changes[0].impact is Impact.LIVE


def test_a_purge_cut_short_is_finished():
    state, other = converged_with(entry(purging=True))

    (finish,) = [r for r in plan(state, other).resources if r.kind == "Trash"]
    assert finish.steps[0].directory == entry().entry + ".purging"


# -- restored volumes ------------------------------------------------------------------------------


def restored_world(vm_name: str = "web") -> tuple[model.ActualState, trash.TrashEntry]:
    claim = trash.restored(entry(holds_volume=False, vm=vm_name), NOW - 60)
    state = b.actual(volumes=(b.volume(b.POOL, "web-root.qcow2", 10 * b.GIB), b.volume(b.POOL, "web-data.qcow2", b.GIB)))
    return dataclasses.replace(state, trash=(claim,)), claim


def test_a_restored_volume_declared_again_by_its_vm_is_recorded_as_created_and_its_claim_removed_after_the_definition():
    state, claim = restored_world()
    web = b.vm("web", disks=(ROOT, DATA), run_strategy=HALTED)

    result = plan(state, web)

    (vm,) = [r for r in result.resources if r.kind == "VirtualMachine"]
    define = next(s for s in vm.steps if isinstance(s, plans.DefineDomain))
    record = domxml.parse(define.xml).owner.volume(b.POOL, "web-data.qcow2")
    assert record.created and record.deletion_policy is DELETE
    assert vm.steps.index(define) < len(vm.steps) - 1
    assert vm.steps[-1] == plans.PurgeTrashEntry(b.POOL, b.POOL_PATH, claim.entry, holds_volume=False)
    assert not [r for r in result.resources if r.kind == "Trash"]  # the VM removes it itself, after its definition
    assert any("restored from the trash" in note for note in vm.notes)


def test_a_restored_volume_declared_by_another_vm_stays_a_volume_kvmops_did_not_create():
    state, _claim = restored_world()
    db = b.vm("db", disks=(b.disk("root", 10 * b.GIB, volume="web-root.qcow2"),
                           b.disk("data", b.GIB, target="vdb", volume="web-data.qcow2", policy=DELETE)),
              run_strategy=HALTED)

    (vm,) = [r for r in plan(state, db).resources if r.kind == "VirtualMachine"]

    define = next(s for s in vm.steps if isinstance(s, plans.DefineDomain))
    assert not domxml.parse(define.xml).owner.volume(b.POOL, "web-data.qcow2").created
    assert not any(isinstance(s, plans.PurgeTrashEntry) for s in vm.steps)


def test_once_its_volume_is_recorded_again_a_leftover_claim_is_removed_by_the_vm():
    """A crash after the definition, before the claim went: the next pass removes it, and changes nothing else."""
    web = b.vm("web", disks=(ROOT, DATA), run_strategy=HALTED)
    state = b.actual(b.domain(b.definition(web), power=SHUTOFF), volumes=b.volumes_of(web))
    claim = trash.restored(entry(holds_volume=False), NOW - 60)
    state = dataclasses.replace(state, trash=(claim,))

    (vm,) = plan(state, web).resources

    assert vm.steps == (plans.PurgeTrashEntry(b.POOL, b.POOL_PATH, claim.entry, holds_volume=False),)
    assert vm.actions == (Action.UPDATE,)


def test_a_claim_nobody_takes_up_within_the_retention_is_dropped_leaving_the_volume():
    claim = trash.restored(entry(holds_volume=False), NOW - 2 * DAY)
    state, other = converged_with(claim)

    (drop,) = [r for r in plan(state, other).resources if r.kind == "Trash"]

    assert drop.steps == (plans.PurgeTrashEntry(b.POOL, b.POOL_PATH, claim.entry, holds_volume=False),)
    assert drop.changes[0].impact is Impact.LIVE and "never deleted" in drop.changes[0].note


def test_a_trash_that_could_not_be_read_is_a_warning_saying_purges_may_be_missing():
    state, other = converged_with()
    state = dataclasses.replace(state, trash_unreadable=("/srv/vms/.kvmops-trash: cannot read the trash: Permission denied",))

    result = plan(state, other)

    assert result.warnings == ("/srv/vms/.kvmops-trash: cannot read the trash: Permission denied; purges due there, if "
                               "any, are not in this plan",)
