"""The executor's own checks right before it writes or deletes a volume, on libvirt's test driver.

Plans are data made earlier; by the time a step runs, another tool may have made, taken
or attached the volume it names.  Each step below is built by hand as a stale plan would
hold it, and the world is checked after it ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.adapters import hypervisor as hv
from reconciler.core import plan as plans
from reconciler.runtime import execute
from tests.integration import conftest as c

WEB_UUID = "0d0d0d0d-0000-4000-8000-000000000001"
SHARER_UUID = "0d0d0d0d-0000-4000-8000-000000000002"
SEED_FILES = (("user-data", b"#cloud-config\n"), ("meta-data", b"instance-id: web\n"))
MIB = 1024 * 1024


@pytest.fixture
def world(tmp_path: Path):
    """web (owned) records its seed web-cidata.iso; loose.iso exists and nobody records it."""
    web = c.owned_domain_xml("web", WEB_UUID, manifest="web.yaml", digest="sha256:0",
                             volumes=(("web-cidata.iso", "Delete", True),))
    directory = tmp_path / "host"
    directory.mkdir()
    uri = c.node_uri(directory, web, volumes=c.volume_xml("web-cidata.iso") + c.volume_xml("loose.iso"))
    with hv.Hypervisor.open(uri) as connection:
        yield connection


def run(hypervisor: hv.Hypervisor, step: plans.Step) -> execute.ResourceOutcome:
    plan = plans.Plan(uri=hypervisor.uri, resources=(
        plans.ResourcePlan(kind="VirtualMachine", name="web", actions=(plans.Action.UPDATE,), steps=(step,)),))
    (outcome,) = execute.execute(plan, hypervisor).outcomes
    return outcome


def seed(name: str) -> plans.WriteSeed:
    return plans.WriteSeed("default", name, SEED_FILES, "sha256:1", domain="web", uuid=WEB_UUID)


def test_a_seed_is_never_written_over_a_volume_its_domain_did_not_create(world):
    """A volume that appeared under the seed's name, recorded by no one, is refused and left as it was."""
    outcome = run(world, seed("loose.iso"))
    assert outcome.status == "failed" and "did not create" in outcome.error, outcome
    assert world.volume_capacity("default", "loose.iso") == 64 * MIB


def test_a_seed_is_never_rewritten_while_another_domain_uses_it(world):
    """web's own seed, attached meanwhile to a foreign domain, is refused and left as it was."""
    world.define_domain(c.foreign_domain_xml("sharer", SHARER_UUID, volume="web-cidata.iso"), "sharer")
    outcome = run(world, seed("web-cidata.iso"))
    assert outcome.status == "failed" and "sharer" in outcome.error, outcome
    assert world.volume_capacity("default", "web-cidata.iso") == 64 * MIB


def test_a_domain_s_own_seed_passes_the_checks(world):
    """The seed web's mark records as created by kvmops, used by no one else, is replaced (up to the upload, which the test driver lacks)."""
    outcome = run(world, seed("web-cidata.iso"))
    assert "virStorageVolUpload" in (outcome.error or ""), outcome  # the checks let it through; only the driver stops it
    assert world.volume_capacity("default", "web-cidata.iso") < 64 * MIB  # the old seed was replaced by the new ISO's size


# --- a Delete volume two pruned VMs share ------------------------------------------------------

PAIR_UUIDS = ("0d0d0d0d-0000-4000-8000-00000000000a", "0d0d0d0d-0000-4000-8000-00000000000b")


@pytest.fixture
def pair(tmp_path: Path, manifest_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """pair-a and pair-b (owned, no manifest) both record shared.qcow2 as created with deletionPolicy Delete."""
    from tests import factories

    factories.write(manifest_dir, "keep.yaml", factories.vm("keep", memory="64MiB", runStrategy="Halted"))
    domains = "".join(
        c.owned_domain_xml(name, uuid, manifest=f"{name}.yaml", digest="sha256:0", volumes=(("shared.qcow2", "Delete", True),))
        for name, uuid in zip(("pair-a", "pair-b"), PAIR_UUIDS)
    )
    directory = tmp_path / "host"
    directory.mkdir()
    uri = c.node_uri(directory, domains, volumes=c.volume_xml("shared.qcow2"))
    with hv.Hypervisor.open(uri) as connection:
        c.pin_connection(monkeypatch, connection)
        yield connection, uri


def test_a_delete_volume_two_pruned_vms_share_is_deleted_once_after_both_are_gone(pair, manifest_dir, capsys):
    """One apply prunes both VMs and deletes their shared Delete volume once, after the first is gone; the plan says DATA LOSS."""
    from reconciler import cli

    hypervisor, uri = pair
    status = cli.main(["apply", str(manifest_dir), "--connect", uri])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert "DATA LOSS" in out and "shared.qcow2" in out
    assert {r.name for r in hypervisor.list_domains()} == {"keep"}
    assert "shared.qcow2" not in {v.name for v in hypervisor.list_volumes("default")}
    assert cli.main(["plan", str(manifest_dir), "--connect", uri, "--detailed-exitcode"]) == 0


def test_a_shared_delete_volume_stays_while_a_domain_outside_the_prune_uses_it(pair, manifest_dir, capsys):
    """With a foreign domain also using it, neither prune deletes the shared volume, and the plan names that user."""
    from reconciler import cli

    hypervisor, uri = pair
    hypervisor.define_domain(c.foreign_domain_xml("sharer", SHARER_UUID, volume="shared.qcow2"), "sharer")
    assert cli.main(["apply", str(manifest_dir), "--connect", uri]) == 0
    out = capsys.readouterr().out
    assert "sharer (foreign" in out and "DATA LOSS" not in out
    assert "shared.qcow2" in {v.name for v in hypervisor.list_volumes("default")}


def test_the_last_user_s_deletion_waits_until_the_other_pruned_vm_is_gone(pair):
    """Run on its own (the controller runs resources separately), the deletion is refused while pair-a is still defined."""
    hypervisor, _uri = pair
    hypervisor.destroy_domain("pair-b")  # off, as its prune's stop leaves it
    step = plans.DeleteVolume("default", "shared.qcow2", "pair-b", PAIR_UUIDS[1], after=("pair-a",))
    plan = plans.Plan(uri=hypervisor.uri, resources=(
        plans.ResourcePlan(kind="VirtualMachine", name="pair-b", actions=(plans.Action.DELETE,), steps=(step,)),))
    (outcome,) = execute.execute(plan, hypervisor).outcomes
    assert outcome.status == "failed" and "pair-a" in outcome.error, outcome
    assert "shared.qcow2" in {v.name for v in hypervisor.list_volumes("default")}


# --- an image volume without its completion record ---------------------------------------------


def test_an_image_volume_an_overlay_is_built_on_is_never_replaced_by_a_new_import(world, tmp_path):
    """An image without its completion record (older kvmops) under an overlay: the import refuses before downloading."""
    image = "debian-0123456789ab.qcow2"
    world.create_volume("default", f"<volume><name>{image}</name><capacity unit='MiB'>64</capacity></volume>", image)
    path = next(v.path for v in world.list_volumes("default") if v.name == image)
    overlay = (f"<volume><name>web-root.qcow2</name><capacity unit='MiB'>64</capacity>"
               f"<backingStore><path>{path}</path><format type='qcow2'/></backingStore></volume>")
    world.create_volume("default", overlay, "web-root.qcow2")
    (tmp_path / "image.qcow2").write_bytes(b"not the image")
    step = plans.ImportImage("default", image, None, "image.qcow2", "0" * 64, "qcow2", tree=str(tmp_path))
    outcome = run(world, step)
    assert outcome.status == "failed" and "overlay default/web-root.qcow2" in outcome.error, outcome
    assert "vol-create-as" in outcome.error
    assert image in {v.name for v in world.list_volumes("default")}
