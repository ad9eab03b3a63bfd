"""The generated manifest set of the invariant tests sets every field every schema allows."""

from __future__ import annotations

import pytest

from tests import manifest_sets


@pytest.mark.parametrize("kind", manifest_sets.KINDS)
def test_the_every_field_set_sets_every_schema_property(kind, tmp_path):
    """Each property of each kind's JSON Schema is set by some document of the set."""
    documents = manifest_sets.write_every_field(tmp_path / "m", prefix="kvmops-t", pool_dir=tmp_path)
    assert manifest_sets.schema_paths(kind) - manifest_sets.set_paths(documents, kind) == set()


def test_the_schema_walk_sees_nested_properties():
    """The walk reaches properties behind $ref, inside arrays and inside oneOf alternatives."""
    paths = manifest_sets.schema_paths("virtualmachine")
    assert {"spec.cpu.mode", "spec.disks[].pool", "spec.install.kernel.path", "spec.graphics.passwordFile"} <= paths
