"""The small behaviours of model values: problem lines, field locations, power states."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.core import model
from tests.unit import builders


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        pytest.param(model.Problem("m/web.yaml", 7, "spec.vcpus", "too small"), "m/web.yaml:7: spec.vcpus: too small", id="full"),
        pytest.param(model.Problem("m/web.yaml", None, "spec", "bad"), "m/web.yaml: spec: bad", id="no-line"),
        pytest.param(model.Problem("m/web.yaml", 3, "", "YAML syntax error"), "m/web.yaml:3: YAML syntax error", id="no-path"),
    ],
)
def test_problem_prints_as_file_line_path_message(problem, text):
    """A problem is the one line ``FILE:LINE: field.path: message``, leaving out what it does not know."""
    assert str(problem) == text


@pytest.mark.parametrize(
    ("path", "line"),
    [
        pytest.param("spec.disks[1].size", 12, id="exact"),
        pytest.param("spec.disks[1].volume", 10, id="absent-field-falls-back-to-its-item"),
        pytest.param("spec.disks[3].size", 8, id="absent-item-falls-back-to-the-list"),
        pytest.param("spec.uuid", 5, id="absent-top-field-falls-back-to-spec"),
        pytest.param("kind", 1, id="unknown-falls-back-to-the-document"),
    ],
)
def test_origin_locates_a_field_or_its_nearest_ancestor(path, line):
    """A problem about a field that is not written points at the closest enclosing field that is."""
    where = builders.origin("m/web.yaml", 1, spec=5, spec__disks=8, **{"spec.disks[1]": 10, "spec.disks[1].size": 12})
    assert where.line_of(path) == line
    assert where.problem(path, "x") == model.Problem("m/web.yaml", line, path, "x")


@pytest.mark.parametrize(
    ("power", "active"),
    [
        pytest.param(model.PowerState.RUNNING, True, id="running"),
        pytest.param(model.PowerState.PAUSED, True, id="paused"),
        pytest.param(model.PowerState.TRANSITIONAL, True, id="transitional"),
        pytest.param(model.PowerState.SHUTOFF, False, id="shutoff"),
        pytest.param(model.PowerState.CRASHED, False, id="crashed"),
    ],
)
def test_a_domain_is_active_while_its_qemu_process_exists(power, active):
    """Running, paused and transitional domains have a QEMU process; shut-off and crashed ones do not."""
    assert power.active is active


def test_ownership_finds_a_volume_record_by_pool_and_name():
    """The owner mark answers for exactly the pool/name pair it recorded."""
    record = model.OwnedVolume("p", "a.qcow2", model.DeletionPolicy.DELETE, created=True)
    owner = model.Ownership("vms/a.yaml", "sha256:1", model.RunStrategy.ALWAYS, (record,))
    assert owner.volume("p", "a.qcow2") is record
    assert owner.volume("q", "a.qcow2") is None and owner.volume("p", "b.qcow2") is None


def test_desired_state_is_complete_only_without_problems():
    """Any problem makes the desired state incomplete, which is what keeps pruning off."""
    assert builders.desired().complete
    assert not builders.desired(problems=(model.Problem("f", 1, "", "x"),)).complete


@pytest.mark.parametrize("text", ["x\ny", "x\r\ny", "x\x1b[31my", "x\u2028y", "x\x85y", "x\x00y"])
def test_a_problem_is_one_line_whatever_its_parts_hold(text):
    """A file name, field path or message carrying a line break or a terminal escape still prints as one line."""
    problem = model.Problem(f"m/{text}.yaml", 3, f"spec.{text}", f"cannot open {text}: No such file or directory")
    shown = str(problem)
    assert shown.splitlines() == [shown]
    assert "\x1b" not in shown and "\x00" not in shown
    assert shown.startswith("m/") and ":3: spec." in shown


def test_the_storage_users_of_a_state_name_every_domain_using_a_volume_in_name_order():
    """Each volume or file any domain uses, foreign ones too, maps to those domains sorted by name."""
    shared = ("default", "shared.qcow2")
    zeta = dataclasses.replace(builders.foreign("zeta"), storage=(shared, ("", "/srv/iso/boot.iso")))
    alpha = dataclasses.replace(builders.foreign("alpha"), storage=(shared,))
    state = builders.actual(zeta, alpha)
    assert [d.name for d in state.storage_users()[shared]] == ["alpha", "zeta"]
    assert [d.name for d in state.storage_users()[("", "/srv/iso/boot.iso")]] == ["zeta"]
    assert ("default", "other.qcow2") not in state.storage_users()


def test_the_macs_in_use_of_a_state_include_foreign_domains():
    """A new NIC's MAC must avoid every domain's, kvmops' or not."""
    nic = model.NicDevice(kind="network", source="default", mac="52:54:00:aa:bb:cc", model="virtio")
    state = builders.actual(dataclasses.replace(builders.foreign("other"), nics=(nic,)))
    assert state.macs_in_use() == {"52:54:00:aa:bb:cc"}


def test_the_indexes_of_a_state_are_built_once():
    """The planner asks them per VM: a second call returns the very same index, and a changed state its own."""
    state = builders.actual(dataclasses.replace(builders.foreign("a"), storage=(("default", "a.qcow2"),)))
    assert state.storage_users() is state.storage_users()
    assert state.volumes_by_path() is state.volumes_by_path()
    changed = dataclasses.replace(state, domains={})
    assert changed.storage_users() == {}
