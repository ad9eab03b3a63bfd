"""Moving VMs between hosts, on a lab of two private libvirtd daemons (:mod:`tests.lab`).

The executor carries out :class:`~reconciler.core.plan.MigrateDomain` steps the way a
fleet plan will hand them over: the plan runs on the source host's hypervisor, the
destination is reached through ``hosts``.  The guest is the suite's tiny real guest
(:mod:`tests.e2e.tinyguest`) with its uptime heartbeat: a guest that kept running prints
an uptime on the destination larger than the last one it printed on the source; one that
booted again would start near zero and print its READY marker again.

The lab, its pools and the guest's helpers are in :mod:`tests.e2e.labfleet`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid

import pytest

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import model
from reconciler.core import plan as plans
from reconciler.runtime import execute
from tests import lab as labs
from tests.e2e import tinyguest
from tests.e2e.conftest import PREFIX
from tests.e2e.labfleet import DISK_BYTES, move, tiny_vm, two_hosts, wait_for_uptime

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet():
    """Return a two-host lab with a shared and a local pool on each host; removed, lab and all, afterwards."""
    missing = [tool for tool in ("unshare", "nsenter", "libvirtd", "virtlogd") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        why = f"the migration tests need root and {', '.join(missing) or 'namespaces'}"
        if os.environ.get("KVMOPS_E2E") == "required":
            pytest.fail(why)
        pytest.skip(why)
    labs.sweep_abandoned(labs.LAB_ROOT, f"{PREFIX}-lab-*")
    with two_hosts(f"{PREFIX}-lab-{uuid.uuid4().hex[:6]}") as world:
        yield world


def live_mac(h: hv.Hypervisor, name: str) -> str:
    xml = h.live_xml(name) or ""
    return xml.split("<mac address='", 1)[1].split("'", 1)[0]


def test_a_running_guest_moves_live_on_shared_storage_and_is_not_rebooted(fleet, tiny_guest):
    name = f"{fleet.prefix}-live"
    domain_uuid, mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.shared)
    before = wait_for_uptime(fleet.serial_log("h1", name), 8)
    persistent = fleet.hosts["h1"].domain_xml(name).replace("</domain>", "<description>placed on h2</description></domain>")

    report = move(fleet, name, domain_uuid, plans.MigrationMode.LIVE, xml=persistent)

    assert report.ok, report.failures
    assert "live migration by libvirt in" in report.outcomes[0].steps[0].detail
    assert fleet.hosts["h1"].domain_name_by_uuid(domain_uuid) is None
    assert fleet.hosts["h2"].domain_name_by_uuid(domain_uuid) == name
    assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.RUNNING
    assert live_mac(fleet.hosts["h2"], name) == mac
    assert "placed on h2" in fleet.hosts["h2"].domain_xml(name)  # the definition the plan gave is the one kept
    after = wait_for_uptime(fleet.serial_log("h2", name), before + 1)
    assert after > before
    assert tinyguest.READY.search(fleet.serial_log("h2", name).read_text(errors="replace")) is None  # never booted there
    assert fleet.hosts["h2"].volume_exists(fleet.shared, f"{name}-root.qcow2")


def test_a_volume_in_a_shared_pool_is_never_deleted_after_a_move(fleet, tiny_guest):
    name = f"{fleet.prefix}-keep"
    domain_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.shared, start=False)
    volume = f"{name}-root.qcow2"
    cleanup = plans.DeleteMovedVolume(fleet.shared, volume, name, domain_uuid, "h2")

    report = move(fleet, name, domain_uuid, plans.MigrationMode.OFFLINE, cleanup)

    assert report.outcomes[0].status == "failed"
    assert "is shared with h2" in report.outcomes[0].error
    assert fleet.hosts["h2"].domain_name_by_uuid(domain_uuid) == name  # moved, its disk kept
    assert fleet.hosts["h2"].volume_exists(fleet.shared, volume)


def test_a_running_guest_moves_live_with_its_disk_copied_from_a_local_pool(fleet, tiny_guest):
    name = f"{fleet.prefix}-copy"
    volume = f"{name}-root.qcow2"
    domain_uuid, mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.local)
    before = wait_for_uptime(fleet.serial_log("h1", name), 5)
    cleanup = plans.DeleteMovedVolume(fleet.local, volume, name, domain_uuid, "h2")

    report = move(fleet, name, domain_uuid, plans.MigrationMode.LIVE_COPY_STORAGE, cleanup)

    assert report.ok, report.failures
    assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.RUNNING
    assert live_mac(fleet.hosts["h2"], name) == mac
    assert fleet.hosts["h2"].domain_name_by_uuid(domain_uuid) == name
    assert fleet.hosts["h2"].volume_capacity(fleet.local, volume) == DISK_BYTES
    assert not fleet.hosts["h1"].volume_exists(fleet.local, volume)  # removed once the guest ran on h2
    assert wait_for_uptime(fleet.serial_log("h2", name), before + 1) > before


def test_a_shut_off_vm_moves_offline_with_its_disk_and_boots_on_the_destination(fleet, tiny_guest):
    name = f"{fleet.prefix}-off"
    volume = f"{name}-root.qcow2"
    domain_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.local, start=False)
    content = hashlib.sha256(fleet.file_of("h1", fleet.local, volume).read_bytes()).hexdigest()
    cleanup = plans.DeleteMovedVolume(fleet.local, volume, name, domain_uuid, "h2")

    report = move(fleet, name, domain_uuid, plans.MigrationMode.OFFLINE, cleanup)

    assert report.ok, report.failures
    assert fleet.hosts["h1"].domain_name_by_uuid(domain_uuid) is None
    assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.SHUTOFF
    assert hashlib.sha256(fleet.file_of("h2", fleet.local, volume).read_bytes()).hexdigest() == content
    assert not fleet.hosts["h1"].volume_exists(fleet.local, volume)
    fleet.hosts["h2"].start_domain(name)
    tinyguest.wait_for_ready(fleet.serial_log("h2", name), timeout=120)


def test_a_move_onto_a_host_that_has_the_name_already_is_refused_and_nothing_moves(fleet, tiny_guest):
    name = f"{fleet.prefix}-twice"
    domain_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.local, start=False)
    tiny_vm(fleet, tiny_guest, "h2", name, fleet.local, start=False)  # another VM of that name

    report = move(fleet, name, domain_uuid, plans.MigrationMode.OFFLINE)

    assert report.outcomes[0].status == "failed"
    assert "already has a domain" in report.outcomes[0].error
    assert fleet.hosts["h1"].domain_name_by_uuid(domain_uuid) == name
    assert fleet.hosts["h2"].domain_name_by_uuid(domain_uuid) is None


def test_a_move_of_a_replaced_domain_is_refused(fleet, tiny_guest):
    name = f"{fleet.prefix}-replaced"
    tiny_vm(fleet, tiny_guest, "h1", name, fleet.local, start=False)

    report = move(fleet, name, str(uuid.uuid4()), plans.MigrationMode.OFFLINE)

    assert report.outcomes[0].status == "failed"
    assert "replaced since the plan was made" in report.outcomes[0].error
    assert fleet.hosts["h1"].domain_exists(name) and not fleet.hosts["h2"].domain_exists(name)


def test_a_live_move_to_an_unreachable_destination_fails_retryably_and_the_guest_stays(fleet, tiny_guest):
    name = f"{fleet.prefix}-stay"
    domain_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.shared, start=False)
    fleet.hosts["h1"].start_domain(name)
    migrate = plans.MigrateDomain(name, domain_uuid, "h1", "h2", "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
                                  plans.MigrationMode.LIVE)
    resource = plans.ResourcePlan("VirtualMachine", name, (plans.Action.MIGRATE,), steps=(migrate,))

    report = execute.execute(plans.Plan(fleet.hosts["h1"].uri, (resource,)), fleet.hosts["h1"], hosts=fleet.hosts)

    assert report.outcomes[0].status == "failed" and report.outcomes[0].retryable
    assert "could not reach" in report.outcomes[0].error
    assert fleet.hosts["h1"].domain_power(name)[0] is model.PowerState.RUNNING
    with pytest.raises(errors.ObjectNotFound):
        fleet.hosts["h2"].domain_power(name)
