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
