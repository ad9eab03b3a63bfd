"""Printing plans: text for people, versioned JSON for programs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reconciler.core import model, planner, render
from reconciler.core import plan as plans
from reconciler.core.plan import Action, FieldChange, Impact
from tests.unit import builders as b

DELETE = model.DeletionPolicy.DELETE
ROOT = b.disk("root", 10 * b.GIB)
SCRATCH = b.disk("scratch", b.GIB, target="vdb", policy=DELETE)


def creation_plan() -> plans.Plan:
    """Return the plan for a new pool and VM on an empty host."""
    spec = b.vm("web", disks=(ROOT, SCRATCH), nics=(b.nic(),))
    return planner.plan_changes(b.desired(spec, pools=(b.pool(),)), b.actual(pools=()))


def busy_plan() -> plans.Plan:
    """Return a plan that updates web (restart), stops halted db and prunes old with data loss."""
    web = b.vm("web", disks=(ROOT,))
    db = b.vm("db", run_strategy=model.RunStrategy.HALTED)
    old = b.vm("old", disks=(SCRATCH,))
    actual = b.actual(
        b.domain(b.definition(web, uuid=b.UUID)),
        b.domain(b.definition(dataclasses.replace(db, run_strategy=model.RunStrategy.ALWAYS), uuid=b.OTHER_UUID)),
        b.domain(b.definition(old, uuid="11111111-1111-4111-8111-111111111111")),
        b.foreign("win10"),
        volumes=b.volumes_of(web, old),
    )
    return planner.plan_changes(b.desired(dataclasses.replace(web, vcpus=4), db), actual)


def test_text_marks_each_resource_with_its_action_glyph():
    """Created resources carry '+', updated '~', deleted '-', and start/stop steps '>' and '■'."""
    text = render.text(creation_plan())
    assert "  + StoragePool vmstore  (pools/vmstore.yaml)  create" in text
    assert "  + VirtualMachine web  (vms/web.yaml)  create, start" in text
    assert "      > start web" in text
    busy = render.text(busy_plan())
    assert "  ~ VirtualMachine web  (vms/web.yaml)  update" in busy
    assert "  - VirtualMachine old  (vms/old.yaml)  delete, stop" in busy
    assert "      ■ stop db (ACPI shutdown, destroy after 60s)" in busy


def test_text_shows_old_and_new_values_with_their_impact():
    """An updated field reads ``old -> new`` followed by its impact in words."""
    text = render.text(busy_plan())
    assert "~ vcpus  2 -> 4  (restart)" in text


def test_text_calls_out_data_loss_in_words():
    """A deleted volume is labelled data-loss on its line and repeated in a DATA LOSS footer."""
    text = render.text(busy_plan())
    assert f"- volume {b.POOL}/old-scratch.qcow2  1 GiB  (data-loss)  DATA LOSS: removed with the VM" in text
    assert (f"DATA LOSS: VirtualMachine old: volume {b.POOL}/old-scratch.qcow2 moved to the trash, final after "
            "1970-01-02 00:00 UTC") in text  # the plan's clock (Settings.now) is 0 here


def test_text_lists_foreign_domains_as_ignored():
    """Foreign domains are named as never changed."""
    assert "Ignored 1 foreign domain (not managed by kvmops, never changed): win10" in render.text(busy_plan())


def test_summary_counts_actions_and_impacts():
    """The last line counts resources per action and changes per costly impact."""
    assert render.summary(busy_plan()) == "Plan: 2 to update, 1 to delete, 2 to stop. Impact: 1 restart, 1 data-loss."
    assert render.summary(creation_plan()) == "Plan: 2 to create, 1 to start."


def test_empty_plan_says_no_changes():
    """A converged host prints "No changes." with how many resources are up to date."""
    desired = b.desired(b.vm("web", disks=(ROOT,)), pools=(b.pool(),))
    result = planner.plan_changes(desired, b.converged(desired))
    text = render.text(result)
    assert text.endswith("No changes. 2 resources up to date.\n")
    assert "->" not in text and "DATA LOSS" not in text


def test_creation_lines_show_values_without_arrows_or_impacts():
    """A resource being created lists its fields once, without ``old -> new``."""
    text = render.text(creation_plan())
    assert "disks[scratch]  vmstore/web-scratch.qcow2 1 GiB as vdb (virtio), Delete" in text
    assert "->" not in text and "(live)" not in text


def test_problems_and_suspended_pruning_are_printed():
    """Problems are listed one per line, and suspended pruning says why and what it keeps."""
    problem = model.Problem("manifests/vms/x.yaml", 3, "spec.memory", "'2G' is not valid")
    result = planner.plan_changes(b.desired(problems=(problem,)), b.actual(b.domain(b.definition(b.vm("old")))))
    text = render.text(result)
    assert "Problems (1): these resources are left as they are\n  manifests/vms/x.yaml:3: spec.memory: '2G' is not valid" in text
    assert "Pruning suspended: 1 problem(s)" in text
    assert "kept although no manifest declares them: old" in text
    assert text.endswith("No changes. 0 resources up to date. 1 problem.\n")


def test_colour_is_off_unless_asked_for():
    """Plain text has no escape codes; colour adds them around glyphs."""
    assert "\x1b[" not in render.text(busy_plan())
    assert "\x1b[32m+\x1b[0m" in render.text(creation_plan(), colour=True)


def test_deferred_deletion_on_a_converged_vm_is_not_announced_as_destroyed_now():
    """While the guest runs nothing is deleted, so a plan without steps must not claim data is destroyed."""
    spec = b.vm("web", disks=(ROOT,))
    config = b.definition(spec, extra_volumes=(model.OwnedVolume(b.POOL, "web-scratch.qcow2", DELETE, created=True),))
    actual = b.actual(b.domain(config), volumes=(*b.volumes_of(spec), b.volume(b.POOL, "web-scratch.qcow2", b.GIB)))
    result = planner.plan_changes(b.desired(spec), actual)
    assert not result.has_changes
    assert "is destroyed" not in render.text(result)
    assert render.to_data(result)["summary"]["impacts"]["data-loss"] == 0


# --- JSON -------------------------------------------------------------------------------


def test_json_has_format_version_one_and_round_trips():
    """The JSON is version "1" and reads back to exactly the data it was made from."""
    result = busy_plan()
    text = render.to_json(result)
    data = json.loads(text)
    assert data["format_version"] == "1"
    assert data == json.loads(json.dumps(render.to_data(result)))
    assert render.to_json(result) == text


def test_json_lists_resources_with_steps_changes_and_problems():
    """Each resource carries its actions, changes with impacts, and steps with their kind first."""
    data = render.to_data(busy_plan())
    web = next(r for r in data["resources"] if r["name"] == "web")
    assert web["actions"] == ["update"]
    assert web["changes"] == [{"path": "vcpus", "old": "2", "new": "4", "impact": "restart", "note": ""}]
    (step,) = web["steps"]
    assert list(step)[:3] == ["kind", "name", "uuid"]
    assert (step["kind"], step["uuid"]) == ("define_domain", b.UUID) and step["xml"].startswith("<domain")
    old = next(r for r in data["resources"] if r["name"] == "old")
    assert [s["kind"] for s in old["steps"]] == ["stop_domain", "move_volume_to_trash", "undefine_domain"]
    assert data["foreign"] == ["win10"]
    assert data["prune"] == {"suspended": False, "reason": None, "kept": []}
    assert data["summary"]["actions"] == {"create": 0, "update": 2, "delete": 1, "start": 0, "stop": 2, "migrate": 0}
    assert data["summary"]["impacts"] == {"live": 2, "restart": 1, "replace": 0, "data-loss": 1}
    assert data["has_changes"] is True


def test_json_problems_carry_location_and_one_line_text():
    """Problems in JSON have file, line, path, message and the text users see."""
    problem = model.Problem("manifests/vms/x.yaml", 3, "spec.memory", "bad")
    data = render.to_data(planner.plan_changes(b.desired(problems=(problem,)), b.actual()))
    assert data["problems"] == [{"file": "manifests/vms/x.yaml", "line": 3, "path": "spec.memory", "message": "bad",
                                 "text": "manifests/vms/x.yaml:3: spec.memory: bad"}]
    assert data["summary"]["problems"] == 1 and data["has_changes"] is False


def test_json_of_an_empty_plan_has_no_changes():
    """A converged host gives has_changes false and empty action lists."""
    desired = b.desired(b.vm("web"))
    data = render.to_data(planner.plan_changes(desired, b.converged(desired)))
    assert data["has_changes"] is False
    assert [r["actions"] for r in data["resources"]] == [[]]
    assert data["summary"]["text"] == "No changes. 1 resource up to date."


@pytest.mark.parametrize(
    ("action", "glyph"),
    [
        pytest.param(Action.CREATE, "+", id="create"),
        pytest.param(Action.UPDATE, "~", id="update"),
        pytest.param(Action.DELETE, "-", id="delete"),
        pytest.param(Action.START, ">", id="start"),
        pytest.param(Action.STOP, "■", id="stop"),
    ],
)
def test_each_action_has_its_glyph(action, glyph):
    """The action enum doubles as the glyph printed in text plans."""
    assert action.glyph == glyph


def test_replace_impact_is_printed_with_its_note():
    """A replace change says so, with the note explaining what happens to the old volume."""
    change = FieldChange("disks[root].volume", "vmstore/a.qcow2", "vmstore/b.qcow2", Impact.REPLACE, note="old one kept")
    resource = plans.ResourcePlan("VirtualMachine", "web", actions=(Action.UPDATE,), changes=(change,),
                                  steps=(plans.StartDomain("web"),))
    text = render.text(plans.Plan(uri=b.URI, resources=(resource,)))
    assert "~ disks[root].volume  vmstore/a.qcow2 -> vmstore/b.qcow2  (replace)  old one kept" in text
    assert text.rstrip().endswith("Impact: 1 replace.")
