"""Moving VMs between hosts, on a lab of two private libvirtd daemons (:mod:`tests.lab`).

The executor carries out :class:`~reconciler.core.plan.MigrateDomain` steps the way a
fleet plan will hand them over: the plan runs on the source host's hypervisor, the
destination is reached through ``hosts``.  The guest is the suite's tiny real guest
(:mod:`tests.e2e.tinyguest`) with its uptime heartbeat: a guest that kept running prints
an uptime on the destination larger than the last one it printed on the source; one that
booted again would start near zero and print its READY marker again.

Each host logs the guest's serial console to its own ``/var/log/libvirt/qemu`` (a
directory private to the host's namespace), so the source's and the destination's logs
never mix.  Two pools exist on both hosts: ``shared`` (one directory both hosts see,
standing for NFS) and ``local`` (``/var/lib/libvirt/images/...``: the same path on both
hosts, different files, as on real machines).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import model, storagexml
from reconciler.core import plan as plans
from reconciler.runtime import execute
from tests import lab as labs
from tests.e2e import tinyguest
from tests.e2e.conftest import PREFIX

pytestmark = pytest.mark.e2e

DISK_BYTES = 64 * 1024 * 1024


@dataclass
class Fleet:
    """Two lab hosts, a connection to each, and the names of their two pools."""

    lab: labs.Lab
    hosts: dict[str, hv.Hypervisor]
    prefix: str

    @property
    def shared(self) -> str:
        return f"{self.prefix}-shared"

    @property
    def local(self) -> str:
        return f"{self.prefix}-local"

    def lab_host(self, host: str) -> labs.LabHost:
        return self.lab.hosts[int(host[1:]) - 1]

    def serial_log(self, host: str, name: str) -> Path:
        """Return where ``host``'s virtlogd writes the serial console of ``name`` (seen from outside)."""
        return self.lab_host(host).directory / "log" / "qemu" / f"{name}-serial.log"

    def file_of(self, host: str, pool: str, volume: str) -> Path:
        """Return the file of volume ``pool/volume`` on ``host``, seen from outside the host's namespace."""
        path = next(v.path for v in self.hosts[host].list_volumes(pool) if v.name == volume)
        if path.startswith("/var/lib/libvirt/"):
            return self.lab_host(host).directory / "lib" / path[len("/var/lib/libvirt/"):]
        return Path(path)


@pytest.fixture(scope="module")
def fleet():
    """Return a two-host lab with a shared and a local pool on each host; removed, lab and all, afterwards."""
    missing = [tool for tool in ("unshare", "nsenter", "libvirtd", "virtlogd") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        why = f"the migration tests need root and {', '.join(missing) or 'namespaces'}"
        if os.environ.get("KVMOPS_E2E") == "required":
            pytest.fail(why)
        pytest.skip(why)
    name = f"{PREFIX}-lab-{uuid.uuid4().hex[:6]}"
    labs.sweep_abandoned(labs.LAB_ROOT, f"{PREFIX}-lab-*")
    lab = labs.Lab(name).start(2)
    connections: dict[str, hv.Hypervisor] = {}
    try:
        connections = {f"h{i}": hv.Hypervisor.open(host.uri) for i, host in enumerate(lab.hosts, 1)}
        world = Fleet(lab, connections, name)
        (lab.shared / "pool").mkdir()
        os.chmod(lab.shared / "pool", 0o755)
        for host in lab.hosts:
            (host.directory / "log" / "qemu").mkdir(parents=True, exist_ok=True)  # the guests' serial logs
        for connection in connections.values():
            for pool, path in ((world.shared, lab.shared / "pool"), (world.local, f"/var/lib/libvirt/images/{world.local}")):
                connection.define_pool(
                    f"<pool type='dir'><name>{pool}</name><target><path>{path}</path></target></pool>", pool)
                connection.build_pool(pool)
                connection.start_pool(pool)
        yield world
    finally:
        for connection in connections.values():
            connection.close()
        lab.stop()


def tiny_vm(fleet: Fleet, guest: tinyguest.Guest, host: str, name: str, pool: str, *, start: bool = True) -> tuple[str, str]:
    """Define (and start) the tiny guest ``name`` on ``host`` with a disk in ``pool``, marked as kvmops'; return (UUID, MAC)."""
    h = fleet.hosts[host]
    volume = f"{name}-root.qcow2"
    h.create_volume(pool, storagexml.render_volume(volume, DISK_BYTES), volume)
    mac = "52:54:00:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3])
    heartbeat = tinyguest.Guest(guest.kernel, guest.initrd, f"{guest.cmdline} {tinyguest.HEARTBEAT}")
    xml = tinyguest.domain_xml(name, heartbeat, network=None, serial_log=Path(f"/var/log/libvirt/qemu/{name}-serial.log"))
    xml = xml.replace("<devices>", f"""<devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='{pool}' volume='{volume}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>""", 1)
    h.define_domain(xml, name)
    domain_uuid = next(d.uuid for d in h.list_domains() if d.name == name)
    h.set_owner(name, model.Ownership(
        manifest=f"vms/{name}.yaml", digest="test", run_strategy=model.RunStrategy.ALWAYS,
        volumes=(model.OwnedVolume(pool, volume, model.DeletionPolicy.DELETE, created=True),),
        bound_name=name, bound_uuid=domain_uuid,
    ))
    if start:
        h.start_domain(name)
        tinyguest.wait_for_ready(fleet.serial_log(host, name), timeout=120)
    return domain_uuid, mac


def uptimes(log: Path) -> list[float]:
    """Return every uptime the guest printed into ``log``."""
    try:
        return [float(u) for u in tinyguest.UPTIME.findall(log.read_text(errors="replace"))]
    except FileNotFoundError:
        return []


def wait_for_uptime(log: Path, at_least: float, timeout: float = 60) -> float:
    """Return the first uptime in ``log`` of at least ``at_least`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [u for u in uptimes(log) if u >= at_least]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no uptime of at least {at_least} s in {log}; it ends with {log.read_text(errors='replace')[-500:]!r}")


def move(fleet: Fleet, name: str, domain_uuid: str, mode: plans.MigrationMode, *steps: plans.Step,
         xml: str = "") -> execute.ApplyReport:
    """Run a migration resource from h1 to h2, as a fleet plan hands it to the executor."""
    migrate = plans.MigrateDomain(name, domain_uuid, "h1", "h2", fleet.hosts["h2"].uri, mode, xml)
    resource = plans.ResourcePlan("VirtualMachine", name, (plans.Action.MIGRATE,), steps=(migrate, *steps))
    return execute.execute(plans.Plan(fleet.hosts["h1"].uri, (resource,)), fleet.hosts["h1"], hosts=fleet.hosts)


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
