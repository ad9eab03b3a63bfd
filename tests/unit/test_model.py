"""The small behaviours of model values: problem lines, field locations, power states."""

from __future__ import annotations

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
