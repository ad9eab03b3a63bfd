"""Never touching what is not kvmops', through the CLI and the executor on libvirt's test driver.

The same rules as ``tests/e2e/test_ownership.py`` (clones, shared volumes), fast enough
for every run: the world is a test-driver host file with an owned ``orphan`` (no
manifest, so an apply prunes it), its clone, and a foreign domain sharing its volume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.adapters import hypervisor as hv
from reconciler.core import domxml, model
from reconciler.core import plan as plans
from reconciler.runtime import execute
from tests import factories
from tests.integration import conftest as c

ORPHAN_UUID = "0a0a0a0a-0000-4000-8000-000000000001"
CLONE_UUID = "0a0a0a0a-0000-4000-8000-000000000002"
SHARER_UUID = "0a0a0a0a-0000-4000-8000-000000000003"


@pytest.fixture
def shared(tmp_path: Path, manifest_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Return (hypervisor, uri): orphan (owned, a Delete volume), orphan-clone (its mark copied), sharer (foreign, uses the volume)."""
    factories.write(manifest_dir, "keep.yaml", factories.vm("keep", memory="64MiB", runStrategy="Halted"))
    orphan = c.owned_domain_xml("orphan", ORPHAN_UUID, manifest="orphan.yaml", digest="sha256:0",
                                volumes=(("orphan-scratch.qcow2", "Delete", True),))
    clone = (c.owned_domain_xml("orphan", ORPHAN_UUID, manifest="orphan.yaml", digest="sha256:0",
                                volumes=(("orphan-clone.qcow2", "Delete", True),))
             .replace("<name>orphan</name>", "<name>orphan-clone</name>", 1)
             .replace(f"<uuid>{ORPHAN_UUID}</uuid>", f"<uuid>{CLONE_UUID}</uuid>", 1))
    sharer = c.foreign_domain_xml("sharer", SHARER_UUID, volume="orphan-scratch.qcow2")
    volumes = "".join(c.volume_xml(name) for name in ("orphan-scratch.qcow2", "orphan-clone.qcow2"))
    host = tmp_path / "host"
    host.mkdir()
    uri = c.node_uri(host, orphan + clone + sharer, volumes=volumes)
    with hv.Hypervisor.open(uri) as connection:
        c.pin_connection(monkeypatch, connection)
        yield connection, uri


def names(hypervisor: hv.Hypervisor) -> set[str]:
    return {record.name for record in hypervisor.list_domains()}


def volumes(hypervisor: hv.Hypervisor) -> set[str]:
    return {volume.name for volume in hypervisor.list_volumes("default")}


def test_an_apply_prunes_the_owner_but_neither_its_clone_nor_the_volume_another_domain_uses(shared, manifest_dir, capsys):
    """Pruning undefines orphan; its clone stays, and its Delete volume stays because sharer uses it; the output says both."""
    hypervisor, uri = shared
    status = cli.main(["apply", str(manifest_dir), "--connect", uri])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert "volume default/orphan-scratch.qcow2 is kept: also used by domain sharer (foreign, running)" in out
    assert "Warning: domain orphan-clone carries a copied kvmops mark (written for domain orphan" in out
    assert "DATA LOSS" not in out
    assert names(hypervisor) == {"keep", "orphan-clone", "sharer"}
    assert volumes(hypervisor) >= {"orphan-scratch.qcow2", "orphan-clone.qcow2"}


def test_the_executor_refuses_to_grow_or_delete_a_volume_another_domain_uses(shared):
    """Steps planned before sharer attached the volume fail at the last moment; the volume keeps its size."""
    hypervisor, uri = shared
    late = plans.Plan(uri=uri, resources=(
        plans.ResourcePlan(kind="VirtualMachine", name="a", actions=(plans.Action.UPDATE,),
                           steps=(plans.ResizeVolume("default", "orphan-scratch.qcow2", 128 * 1024 * 1024),)),
        plans.ResourcePlan(kind="VirtualMachine", name="b", actions=(plans.Action.DELETE,),
                           steps=(plans.DeleteVolume("default", "orphan-scratch.qcow2"),)),
    ))
    report = execute.execute(late, hypervisor)
    assert [o.status for o in report.outcomes] == ["failed", "failed"], report
    assert all("sharer (running)" in o.error and "kvmops will not" in o.error for o in report.outcomes), report
    assert hypervisor.volume_capacity("default", "orphan-scratch.qcow2") == 64 * 1024 * 1024


def test_adopting_a_clone_replaces_the_copied_mark_with_its_own(shared, capsys):
    """`kvmops adopt` on a clone writes a mark bound to the clone, recording its volumes as not created by kvmops."""
    hypervisor, uri = shared
    assert cli.main(["adopt", "orphan-clone", "--connect", uri]) == 0, capsys.readouterr()
    owner, binding = domxml.mark_binding(domxml.parse_tree(hypervisor.domain_xml("orphan-clone")))
    assert binding is model.MarkBinding.BOUND and (owner.bound_name, owner.bound_uuid) == ("orphan-clone", CLONE_UUID)
    assert [(v.name, v.created) for v in owner.volumes] == [("orphan-clone.qcow2", False)]


def test_a_plan_from_a_snapshot_also_knows_who_else_uses_a_volume(shared, manifest_dir, tmp_path, capsys):
    """The snapshot keeps the storage a foreign domain uses (not its XML), so a plan from it keeps the shared volume too."""
    _hypervisor, uri = shared
    snapshot = tmp_path / "state.json"
    assert cli.main(["state", "export", "--connect", uri, "--output", str(snapshot)]) == 0
    sharer = next(d for d in json.loads(snapshot.read_text())["domains"] if d["name"] == "sharer")
    assert sharer["inactive_xml"] is None and sharer["storage"] == [{"pool": "default", "volume": "orphan-scratch.qcow2"}]
    capsys.readouterr()
    assert cli.main(["plan", str(manifest_dir), "--state", str(snapshot)]) == 0
    out = capsys.readouterr().out
    assert "volume default/orphan-scratch.qcow2 is kept: also used by domain sharer (foreign, running)" in out
