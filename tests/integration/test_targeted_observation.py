"""A targeted observation: the last whole-host observation with a few domains looked at again.

A controller pass woken by one VM's lifecycle event refreshes that VM (its record, its
live XML, the pools and volumes it uses) by lookups, never by listing the host's domains:
on a busy host that listing waits behind every start and destroy.  These tests change
the test driver's host behind the first observation's back and check what a refresh of
some domains sees, and what it keeps as it was.
"""

from __future__ import annotations

from reconciler.core import actual as actual_state
from reconciler.core import model
from reconciler.runtime import observe
from tests.integration import conftest as c

NEWCOMER_UUID = "5a1d6c3e-0000-4000-8000-0000000000f1"


def test_a_refreshed_domain_shows_its_new_power_and_nothing_else_changes(world):
    """Destroying web and defining a newcomer behind the observation's back: a refresh of web sees the destroy, not the newcomer."""
    before = observe.collect(world.hypervisor)
    world.hypervisor.destroy_domain("web")
    world.hypervisor.define_domain(c.foreign_domain_xml("newcomer", NEWCOMER_UUID), "newcomer")

    after = actual_state.interpret(observe.refresh(world.hypervisor, before, ["web"]))

    assert after.domains["web"].power is model.PowerState.SHUTOFF
    assert after.domains["orphan"].power is model.PowerState.RUNNING
    assert "newcomer" not in after.domains
    assert "newcomer" in observe.observe(world.hypervisor).domains


def test_a_domain_undefined_meanwhile_is_gone_from_the_refreshed_observation(world):
    """An undefined domain is dropped by its refresh, and only it."""
    before = observe.collect(world.hypervisor)
    world.hypervisor.destroy_domain("orphan")
    world.hypervisor.undefine_domain("orphan")

    after = actual_state.interpret(observe.refresh(world.hypervisor, before, ["orphan", "no-such-domain"]))

    assert set(after.domains) == {"web", "legacy"}
    assert after.domains["web"].power is model.PowerState.RUNNING


def test_the_volumes_a_refreshed_domain_uses_and_those_asked_for_are_looked_up_again(world):
    """A volume deleted and another created meanwhile: the refresh sees both for the domain's and the named volumes, and no others."""
    before = observe.collect(world.hypervisor)
    world.hypervisor.delete_volume("default", "web-root.qcow2")
    world.hypervisor.create_volume("default", c.volume_xml("web-data.qcow2", 8), "web-data.qcow2")
    world.hypervisor.create_volume("default", c.volume_xml("unrelated.qcow2", 8), "unrelated.qcow2")
    world.hypervisor.delete_volume("default", "legacy-disk.qcow2")

    after = actual_state.interpret(
        observe.refresh(world.hypervisor, before, ["web"], volumes={("default", "web-data.qcow2")}))

    assert ("default", "web-root.qcow2") not in after.volumes
    assert after.volumes[("default", "web-data.qcow2")].capacity == 8 * 1024 * 1024
    assert ("default", "unrelated.qcow2") not in after.volumes  # nobody asked: the pool is not listed
    assert ("default", "legacy-disk.qcow2") in after.volumes  # legacy was not refreshed
