"""The converge engine on a real libvirtd with QEMU: what ``kvmops plan`` and ``apply`` do to the world.

Every test declares a few tiny VMs (64 MiB of memory, 64 MiB qcow2 disks, TCG), runs the
``kvmops`` command as a separate process against ``qemu:///system`` and then looks at the
world itself: domains and their XML through libvirt, qcow2 files through ``qemu-img``.
Nothing is mocked.  The guests boot nothing (their disks are empty, they sit in SeaBIOS),
so an ACPI shutdown is ignored and every stop is a ``shutdownTimeout: 1`` wait followed by
a destroy.

The host is shared with other people's runs.  Every ``plan``/``apply``/``adopt`` here runs
in the test's own scope (``--scope <prefix>``, see :func:`kvmops`), so kvmops only ever
prunes what this test created; ``plan``/``apply`` also pass ``--no-prune`` unless pruning
is the subject of the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from reconciler.adapters import hypervisor as hv
from reconciler.core import planner
from reconciler.runtime import execute, reconcile
from tests import factories
from tests.e2e.commands import apply_ok, kvmops, output, plan_is_empty

MIB = 1024 * 1024
OWNER_NS = "https://kvmops.dev/xmlns/owner/v1"
OWNER = f"{{{OWNER_NS}}}owner"

pytestmark = pytest.mark.e2e


# --- helpers ---------------------------------------------------------------------------


def resource_block(stdout: str, kind: str, name: str) -> str:
    """Return the lines a text plan prints for one resource (its header up to the next blank line)."""
    match = re.search(rf"^  \S {kind} {re.escape(name)}  .*?(?=^\s*$)", stdout, re.M | re.S)
    assert match, f"no block for {kind} {name} in:\n{stdout}"
    return match.group(0)


def vm(host, suffix: str, *, disks=(), **spec) -> dict:
    """Return a tiny TCG VirtualMachine document named with the test's prefix."""
    spec.setdefault("virtType", "qemu")
    spec.setdefault("shutdownTimeout", 1)
    return factories.vm(host.name(suffix), disks=list(disks), **spec)


def disk(host, name: str, size: str = "64MiB", **fields) -> dict:
    """Return a disk entry on the test's pool."""
    return factories.disk(name, host.pool, size, **fields)


def write_pool(host) -> Path:
    """Declare the test's storage pool in ``pools/pool.yaml``."""
    return factories.write(host.manifests, "pools/pool.yaml", factories.pool(host.pool, str(host.pool_path)))


def volume_file(host, vm_suffix: str, disk_name: str) -> Path:
    """Return the path of the qcow2 file kvmops names ``<vm>-<disk>.qcow2`` in the test's pool."""
    return host.pool_path / f"{host.name(vm_suffix)}-{disk_name}.qcow2"


def in_trash(host, volume: str) -> list[Path]:
    """Return the files of the pool's trash holding ``volume`` (``.kvmops-trash/<entry>/<volume>``)."""
    return sorted((host.pool_path / ".kvmops-trash").glob(f"*/{volume}"))


def qcow2(path: Path) -> dict:
    """Return ``qemu-img info`` of ``path`` (``-U``: the image may be open by a running QEMU)."""
    done = subprocess.run(["qemu-img", "info", "-U", "--output", "json", str(path)],
                          capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def inactive_xml(host, name: str) -> str:
    """Return the persistent configuration of domain ``name``."""
    return host.domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def macs(xml: str) -> list[str]:
    """Return the MAC addresses of the interfaces in domain ``xml``, in order."""
    return [m.get("address") for m in ET.fromstring(xml).iterfind("devices/interface/mac")]


def line_of(path: Path, text: str) -> int:
    """Return the 1-based number of the first line of ``path`` containing ``text``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def private_network(host) -> str:
    """Define and start an isolated libvirt network (no IP, no DHCP) named with the prefix."""
    name = host.name("net")
    bridge = "kve" + host.prefix[-6:]  # at most 15 characters, unique per test
    network = host.connection.networkDefineXML(
        f"<network><name>{name}</name><bridge name='{bridge}' stp='off'/></network>"
    )
    network.create()
    return name


def define_foreign_domain(host, suffix: str, *, start: bool) -> libvirt.virDomain:
    """Define (and start) a domain the way a person would with virsh: no kvmops metadata."""
    domain = host.connection.defineXML(f"""
        <domain type='qemu'>
          <name>{host.name(suffix)}</name>
          <memory unit='MiB'>32</memory>
          <vcpu>1</vcpu>
          <os><type arch='x86_64'>hvm</type></os>
          <devices><serial type='pty'/><console type='pty'/></devices>
        </domain>""")
    if start:
        domain.create()
    return domain


def apply_pruning_own_objects(host, *, shutdown_timeout: float = 1.0):
    """Plan the manifests with pruning on, then execute only the steps for this test's objects.

    The planner and executor are kvmops' own, on the real libvirtd; only the resources of
    other people's runs on this shared host (owned domains that our manifests, naturally,
    do not declare) are left out of the execution.  Returns (plan, report).
    """
    settings = planner.Settings(prune=True, shutdown_timeout=shutdown_timeout, virt_type="qemu", scope=host.prefix)
    with hv.Hypervisor.open(host.uri) as hypervisor:
        planned = reconcile.make_plan(str(host.manifests), hypervisor, settings=settings)
        assert all(r.name.startswith(host.prefix + "-") for r in planned.plan.changes), "the scope keeps others out"
        report = execute.execute(planned.plan, hypervisor)
    return planned.plan, report


# --- creation and idempotence ----------------------------------------------------------


def test_apply_from_nothing_creates_the_pool_the_qcow2_files_and_running_domains(host):
    """Applying a pool and two VMs to an empty host builds the pool, real qcow2 files and two running, owned TCG domains."""
    write_pool(host)
    factories.write(host.manifests, "vms/web.yaml",
                    vm(host, "web", disks=[disk(host, "root"), disk(host, "data", "32MiB", deletionPolicy="Delete")]))
    factories.write(host.manifests, "vms/db.yaml",
                    vm(host, "db", vcpus=2, autostart=True, disks=[disk(host, "root", "96MiB")]))

    apply_ok(host)

    pool = host.connection.storagePoolLookupByName(host.pool)
    assert pool.isActive() and pool.autostart()
    assert ET.fromstring(pool.XMLDesc(0)).findtext("target/path") == str(host.pool_path)
    assert host.pool_path.is_dir()
    for vm_suffix, disk_name, size in (("web", "root", 64), ("web", "data", 32), ("db", "root", 96)):
        info = qcow2(volume_file(host, vm_suffix, disk_name))
        assert (info["format"], info["virtual-size"]) == ("qcow2", size * MIB), info

    for vm_suffix, manifest in (("web", "vms/web.yaml"), ("db", "vms/db.yaml")):
        name = host.name(vm_suffix)
        assert host.is_running(name)
        domain = host.domain(name)
        assert ET.fromstring(domain.XMLDesc(0)).get("type") == "qemu"  # TCG: kvm_pvm cannot run guests
        owner = ET.fromstring(domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS,
                                              libvirt.VIR_DOMAIN_AFFECT_CONFIG))
        assert owner.get("manifest") == manifest
        assert owner.get("runStrategy") == "Always"
        assert owner.get("digest", "").startswith("sha256:")
    assert host.domain(host.name("db")).autostart() == 1 and host.domain(host.name("web")).autostart() == 0
    assert host.domain(host.name("db")).info()[3] == 2
    web_owner = ET.fromstring(inactive_xml(host, host.name("web"))).find(f"metadata/{OWNER}")
    records = {v.get("name"): (v.get("pool"), v.get("deletionPolicy"), v.get("created"))
               for v in web_owner.iterfind(f"{{{OWNER_NS}}}volume")}
    assert records == {
        volume_file(host, "web", "root").name: (host.pool, "Retain", "true"),
        volume_file(host, "web", "data").name: (host.pool, "Delete", "true"),
    }


def test_a_converged_host_plans_no_changes_and_a_second_apply_touches_nothing(host):
    """After one apply the plan is empty, and applying again leaves domains, their XML and their disks as they were."""
    write_pool(host)
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", disks=[disk(host, "root")]))
    factories.write(host.manifests, "vms/db.yaml", vm(host, "db", disks=[disk(host, "root")], runStrategy="Halted"))
    apply_ok(host)

    def world():
        state = {}
        for suffix in ("web", "db"):
            domain = host.domain(host.name(suffix))
            state[suffix] = (domain.ID(), domain.UUIDString(), domain.state()[0],
                             domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
                             qcow2(volume_file(host, suffix, "root"))["virtual-size"])
        return state

    before = world()
    plan_is_empty(host)
    again = apply_ok(host)
    assert "Applying..." not in again.stdout, output(again)
    assert "No changes." in again.stdout, output(again)
    assert world() == before


def test_a_vm_on_an_unknown_network_is_refused_at_plan_time_while_the_others_converge(host):
    """A NIC on a network that exists nowhere is a problem naming the field (nothing is created for that VM); the other VMs converge, and once the network exists the next apply creates it."""
    network = host.name("net")  # not defined yet
    bad = factories.write(host.manifests, "vms/bad.yaml", vm(host, "bad", networks=[{"network": network}]))
    factories.write(host.manifests, "vms/good.yaml", vm(host, "good"))
    result = kvmops(host, "apply", host.manifests)
    assert result.returncode == 1, output(result)
    assert f"{bad}:{line_of(bad, 'network: ' + network)}: spec.networks[0].network: unknown network '{network}'" in result.stdout
    assert "Traceback" not in result.stderr
    assert host.domain(host.name("bad")) is None
    assert host.is_running(host.name("good"))

    private_network(host)
    apply_ok(host)
    assert host.is_running(host.name("bad"))
    plan_is_empty(host)


def test_a_vm_whose_first_start_fails_is_started_by_a_later_apply(host):
    """A Manual VM whose first start fails (QEMU may not enter the directory of its install kernel) makes apply exit 1 with libvirt's reason; once it may, the next apply starts it."""
    write_pool(host)
    boot = host.pool_path / "boot"
    boot.mkdir(mode=0o700, parents=True)  # root's alone: QEMU, user libvirt-qemu, cannot open what is inside
    (boot / "vmlinuz").write_bytes(b"not a kernel, but a file QEMU can open")
    (boot / "vmlinuz").chmod(0o644)
    kernel = {"pool": host.pool, "path": "boot/vmlinuz"}
    factories.write(host.manifests, "vms/bad.yaml",
                    vm(host, "bad", runStrategy="Manual", install={"kernel": kernel}, disks=[disk(host, "root")]))
    result = kvmops(host, "apply", host.manifests)
    assert result.returncode == 1, output(result)
    assert f"cannot start domain {host.name('bad')}" in result.stdout, output(result)
    assert host.domain(host.name("bad")).state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED]

    boot.chmod(0o755)
    result = kvmops(host, "apply", host.manifests)
    assert "runStrategy Manual: the domain's first start failed, starting it" in result.stdout, output(result)


def test_a_decimal_memory_size_leaves_no_restart_pending_after_creation(host):
    """A VM whose memory is not a whole number of MiB (100MB) is not reported 'restart pending' right after it starts."""
    factories.write(host.manifests, "vms/odd.yaml", vm(host, "odd", memory="100MB"))
    apply_ok(host)
    assert host.is_running(host.name("odd"))

    result = plan_is_empty(host)
    assert "restart pending" not in result.stdout, output(result)


# --- updates ---------------------------------------------------------------------------


def test_a_memory_change_is_planned_as_an_update_and_applied_keeping_uuid_and_mac(host):
    """Raising memory within maxMemory is planned as a live `~` update and applied by redefining the domain with its UUID and MAC."""
    network = private_network(host)
    path = factories.write(host.manifests, "vms/web.yaml",
                           vm(host, "web", memory="64MiB", maxMemory="128MiB", networks=[{"network": network}]))
    apply_ok(host)
    name = host.name("web")
    domain = host.domain(name)
    uuid, domain_id, mac = domain.UUIDString(), domain.ID(), macs(inactive_xml(host, name))
    assert len(mac) == 1 and mac[0].startswith("52:54:00:")

    factories.write(host.manifests, "vms/web.yaml",
                    vm(host, "web", memory="96MiB", maxMemory="128MiB", networks=[{"network": network}]))
    plan = kvmops(host, "plan", host.manifests, "--detailed-exitcode")
    assert plan.returncode == 2, output(plan)
    block = resource_block(plan.stdout, "VirtualMachine", name)
    assert block.startswith(f"  ~ VirtualMachine {name}  ({path.relative_to(host.manifests)})  update"), block
    assert re.search(r"~ memory\s+64 MiB -> 96 MiB\s+\(live\)", block), block

    applied = apply_ok(host)
    assert f"redefine domain {name}" in applied.stdout, output(applied)
    domain = host.domain(name)
    assert domain.UUIDString() == uuid
    assert macs(inactive_xml(host, name)) == mac
    assert domain.ID() == domain_id, "a balloon change must not restart the guest"
    config = ET.fromstring(inactive_xml(host, name))
    assert (config.findtext("currentMemory"), config.findtext("memory")) == (str(96 * 1024), str(128 * 1024))
    plan_is_empty(host)


def test_lowering_memory_of_a_running_vm_announces_every_restart_it_leaves_pending(host):
    """Whatever is 'restart pending' after an apply was announced by the plan before it."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", memory="64MiB"))
    apply_ok(host)
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", memory="48MiB"))
    plan = apply_ok(host)  # apply prints its plan first
    assert re.search(r"~ memory\s+64 MiB -> 48 MiB\s+\(live\)", plan.stdout), output(plan)
    after = plan_is_empty(host)
    assert "maxMemory" in plan.stdout or "restart pending" not in after.stdout, output(plan) + output(after)


def test_a_vcpus_change_on_a_running_vm_waits_for_the_next_boot(host):
    """Changing vcpus of a running VM is a `restart` change: the config is rewritten, the plan is then empty but notes "restart pending" until the guest reboots."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", vcpus=1))
    apply_ok(host)
    name = host.name("web")
    domain_id = host.domain(name).ID()

    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", vcpus=2))
    plan = apply_ok(host)  # apply prints its plan first
    assert re.search(r"~ vcpus\s+1 -> 2\s+\(restart\)", resource_block(plan.stdout, "VirtualMachine", name)), plan.stdout
    assert "Impact: 1 restart." in plan.stdout, output(plan)
    domain = host.domain(name)
    assert domain.ID() == domain_id, "kvmops must not reboot the guest for a restart-impact change"
    assert domain.info()[3] == 1  # still running with one vCPU
    assert ET.fromstring(inactive_xml(host, name)).findtext("vcpu") == "2"
    after = plan_is_empty(host)
    assert re.search(rf"VirtualMachine {re.escape(name)}: restart pending .*vcpus 1 -> 2", after.stdout), output(after)

    domain.destroy()  # the "reboot": runStrategy Always brings it back with the new config
    apply_ok(host)
    assert host.domain(name).info()[3] == 2
    assert "restart pending" not in plan_is_empty(host).stdout


# --- disks -----------------------------------------------------------------------------


def test_shrinking_a_disk_is_refused_naming_the_field_and_the_qcow2_keeps_its_size(host):
    """Lowering a disk size fails with exit 1 and FILE:LINE: spec.disks[0].size, and the qcow2 file keeps its virtual size."""
    write_pool(host)
    path = factories.write(host.manifests, "vms/db.yaml", vm(host, "db", runStrategy="Halted", disks=[disk(host, "root", "96MiB")]))
    apply_ok(host)
    image = volume_file(host, "db", "root")

    factories.write(host.manifests, "vms/db.yaml", vm(host, "db", runStrategy="Halted", disks=[disk(host, "root", "64MiB")]))
    result = kvmops(host, "apply", host.manifests)
    assert result.returncode == 1, output(result)
    assert (f"{path}:{line_of(path, 'size: 64MiB')}: spec.disks[0].size: disk 'root' would shrink from 96 MiB to 64 MiB"
            in result.stdout), output(result)
    assert qcow2(image)["virtual-size"] == 96 * MIB


def test_a_refused_shrink_leaves_the_whole_vm_as_it_was(host):
    """A VM whose manifest asks for a shrink is left entirely alone, other changes in the same manifest included."""
    write_pool(host)
    factories.write(host.manifests, "vms/db.yaml", vm(host, "db", runStrategy="Halted", disks=[disk(host, "root", "96MiB")]))
    apply_ok(host)
    name = host.name("db")
    before = inactive_xml(host, name)

    factories.write(host.manifests, "vms/db.yaml",
                    vm(host, "db", memory="48MiB", runStrategy="Halted", disks=[disk(host, "root", "64MiB")]))
    result = kvmops(host, "apply", host.manifests)
    assert result.returncode == 1, output(result)
    assert "Problems (1): these resources are left as they are" in result.stdout, output(result)
    assert inactive_xml(host, name) == before, output(result)


def test_growing_a_disk_of_a_halted_vm_resizes_the_qcow2_offline(host):
    """Raising the size of a halted VM's disk grows its qcow2 file in place (virStorageVolResize)."""
    write_pool(host)
    factories.write(host.manifests, "vms/db.yaml", vm(host, "db", runStrategy="Halted", disks=[disk(host, "root")]))
    apply_ok(host)
    image = volume_file(host, "db", "root")
    inode = image.stat().st_ino

    factories.write(host.manifests, "vms/db.yaml", vm(host, "db", runStrategy="Halted", disks=[disk(host, "root", "96MiB")]))
    result = apply_ok(host)
    assert re.search(r"~ disks\[root\]\.size\s+64 MiB -> 96 MiB\s+\(live\)", result.stdout), output(result)
    assert f"grow volume {host.pool}/{image.name} to 96 MiB" in result.stdout, output(result)

    assert qcow2(image)["virtual-size"] == 96 * MIB
    assert image.stat().st_ino == inode  # the same file, grown, not a new one
    assert not host.is_running(host.name("db"))
    plan_is_empty(host)


def test_growing_a_disk_of_a_running_vm_resizes_it_live(host):
    """Raising the size of a running VM's disk grows it through QEMU (blockResize), without restarting the guest."""
    write_pool(host)
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", disks=[disk(host, "root")]))
    apply_ok(host)
    name = host.name("web")
    image = volume_file(host, "web", "root")
    domain_id = host.domain(name).ID()

    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", disks=[disk(host, "root", "96MiB")]))
    result = apply_ok(host)
    assert f"grow disk vda of {name} to 96 MiB (live)" in result.stdout, output(result)

    assert qcow2(image)["virtual-size"] == 96 * MIB
    assert host.domain(name).blockInfo("vda")[0] == 96 * MIB  # the guest sees the new capacity now
    assert host.domain(name).ID() == domain_id
    plan_is_empty(host)


def test_a_delete_volume_detached_from_a_running_vm_is_deleted_only_once_the_vm_is_off(host):
    """Removing a Delete-policy disk from a running VM detaches it at once but deletes its qcow2 only after the guest stops."""
    write_pool(host)
    disks = [disk(host, "root"), disk(host, "scratch", "32MiB", deletionPolicy="Delete")]
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", disks=disks))
    apply_ok(host)
    name = host.name("web")
    root, scratch = volume_file(host, "web", "root"), volume_file(host, "web", "scratch")

    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", disks=disks[:1]))
    plan = apply_ok(host)  # apply prints its plan first
    block = resource_block(plan.stdout, "VirtualMachine", name)
    announced = [line for line in block.splitlines() if f"{host.pool}/{scratch.name}" in line and "DATA LOSS" in line]
    assert announced and "once the VM is stopped" in announced[-1], block
    assert host.is_running(name)
    assert scratch.is_file(), "QEMU still has the volume open: it must not be deleted under the running guest"
    config = ET.fromstring(inactive_xml(host, name))
    assert [t.get("dev") for t in config.iterfind("devices/disk/target")] == ["vda"]
    assert "restart pending" in plan_is_empty(host).stdout

    host.domain(name).destroy()
    plan = apply_ok(host)  # runStrategy Always: starts it again, then deletes the detached volume
    assert (f"DATA LOSS: VirtualMachine {name}: volume {host.pool}/{scratch.name} moved to the trash, final after"
            in plan.stdout), output(plan)
    assert host.is_running(name)
    assert not scratch.exists()
    assert in_trash(host, scratch.name)
    assert qcow2(root)["virtual-size"] == 64 * MIB
    assert "restart pending" not in plan_is_empty(host).stdout


# --- pruning ---------------------------------------------------------------------------


def test_a_removed_manifest_is_pruned_keeping_retain_volumes_and_deleting_delete_volumes(host):
    """A VM whose manifest is removed is stopped and undefined; its Retain volume stays on disk, its Delete volume is deleted and the plan said DATA LOSS."""
    write_pool(host)
    factories.write(host.manifests, "vms/keep.yaml", vm(host, "keep", runStrategy="Halted"))
    gone_manifest = factories.write(host.manifests, "vms/gone.yaml", vm(host, "gone", disks=[
        disk(host, "root"), disk(host, "scratch", "32MiB", deletionPolicy="Delete"),
    ]))
    apply_ok(host)
    gone = host.name("gone")
    assert host.is_running(gone)
    root, scratch = volume_file(host, "gone", "root"), volume_file(host, "gone", "scratch")
    assert root.is_file() and scratch.is_file()

    gone_manifest.unlink()
    plan = kvmops(host, "plan", host.manifests, "--shutdown-timeout", "1", prune=True)  # read-only
    assert plan.returncode == 0, output(plan)
    block = resource_block(plan.stdout, "VirtualMachine", gone)
    assert block.startswith(f"  - VirtualMachine {gone}  (vms/gone.yaml)  delete, stop"), block
    assert f"■ stop {gone}" in block
    assert re.search(rf"- volume {re.escape(host.pool)}/{re.escape(scratch.name)}\s+32 MiB\s+\(data-loss\)", block), block
    assert f"volume {host.pool}/{root.name} is kept (deletionPolicy Retain)" in block
    assert f"DATA LOSS: VirtualMachine {gone}: volume {host.pool}/{scratch.name} moved to the trash, final after" in plan.stdout

    planned, report = apply_pruning_own_objects(host)
    assert [r.name for r in planned.changes] == [gone], planned.changes
    assert report.ok, report

    assert host.domain(gone) is None
    assert qcow2(root)["virtual-size"] == 64 * MIB  # Retain: the data outlives the VM
    assert not scratch.exists()
    assert host.volume_capacity(scratch.name) is None  # no volume of the pool any more: a file in its trash
    assert in_trash(host, scratch.name)
    assert host.domain(host.name("keep")) is not None
    plan_is_empty(host)


def test_pruning_gives_the_guest_the_shutdown_timeout_its_manifest_asked_for(host):
    """The plan for a removed VM waits the VM's own shutdownTimeout before destroying it, not the global default."""
    manifest = factories.write(host.manifests, "vms/db.yaml", vm(host, "db", shutdownTimeout=5))
    factories.write(host.manifests, "vms/other.yaml", vm(host, "other", runStrategy="Halted"))
    apply_ok(host)
    manifest.unlink()

    plan = kvmops(host, "plan", host.manifests, prune=True)  # read-only: nothing is executed
    block = resource_block(plan.stdout, "VirtualMachine", host.name("db"))
    assert f"■ stop {host.name('db')} (ACPI shutdown, destroy after 5s)" in block, block


def test_a_broken_manifest_suspends_pruning_while_valid_vms_still_converge(host):
    """With one manifest invalid, an owned VM whose manifest was removed is kept, while the valid VMs are still created and updated."""
    factories.write(host.manifests, "vms/orphan.yaml", vm(host, "orphan"))
    factories.write(host.manifests, "vms/steady.yaml", vm(host, "steady", runStrategy="Halted"))
    broken = factories.write(host.manifests, "vms/broken.yaml", vm(host, "broken", runStrategy="Halted"))
    apply_ok(host)
    orphan = host.name("orphan")
    orphan_identity = (host.domain(orphan).UUIDString(), host.domain(orphan).ID())
    broken_xml = inactive_xml(host, host.name("broken"))

    (host.manifests / "vms/orphan.yaml").unlink()
    document = vm(host, "broken", runStrategy="Halted")
    document["spec"]["memroy"] = document["spec"].pop("memory")
    factories.write(host.manifests, "vms/broken.yaml", document)
    factories.write(host.manifests, "vms/steady.yaml", vm(host, "steady", memory="48MiB", runStrategy="Halted"))
    factories.write(host.manifests, "vms/newcomer.yaml", vm(host, "newcomer"))

    result = kvmops(host, "apply", host.manifests, prune=True)  # safe: a broken manifest suspends all pruning
    assert result.returncode == 1, output(result)
    assert f"{broken}:{line_of(broken, 'memroy')}: spec.memroy: unknown field 'memroy' (did you mean 'memory'?)" in result.stdout
    assert "Pruning suspended" in result.stdout, output(result)
    assert re.search(rf"kept although no manifest declares them: .*\b{re.escape(orphan)}\b", result.stdout), output(result)

    assert (host.domain(orphan).UUIDString(), host.domain(orphan).ID()) == orphan_identity  # untouched, still running
    assert host.is_running(orphan)
    assert inactive_xml(host, host.name("broken")) == broken_xml
    assert host.is_running(host.name("newcomer"))
    assert ET.fromstring(inactive_xml(host, host.name("steady"))).findtext("currentMemory") == str(48 * 1024)


def test_a_second_manifest_set_does_not_prune_the_first(host):
    """A manifest directory applied in its own scope never prunes the VMs another scope's directory declares."""
    first, second = host.manifests / "team-a", host.manifests / "team-b"
    factories.write(first, "vms/a.yaml", vm(host, "team-a", runStrategy="Halted"))
    factories.write(second, "vms/b.yaml", vm(host, "team-b", runStrategy="Halted"))
    for directory, scope in ((first, host.prefix + "-a"), (second, host.prefix + "-b")):
        result = kvmops(host, "apply", directory, scope=scope)
        assert result.returncode == 0, output(result)

    result = kvmops(host, "apply", second, prune=True, scope=host.prefix + "-b")
    assert result.returncode == 0, output(result)
    assert host.domain(host.name("team-a")) is not None
    plan = kvmops(host, "plan", second, "--output", "json", prune=True, scope=host.prefix + "-b")
    data = json.loads(plan.stdout)
    assert f"{host.name('team-a')} (scope {host.prefix}-a)" in data["elsewhere"]


def test_applying_a_single_file_never_prunes(host):
    """`kvmops apply one-file.yaml` converges that file's VMs and leaves every other VM of the scope alone."""
    factories.write(host.manifests, "vms/a.yaml", vm(host, "a", runStrategy="Halted"))
    single = factories.write(host.manifests, "vms/b.yaml", vm(host, "b", runStrategy="Halted"))
    apply_ok(host)
    result = kvmops(host, "apply", single, prune=True)
    assert result.returncode == 0, output(result)
    assert host.domain(host.name("a")) is not None


# --- foreign domains and adoption ------------------------------------------------------


def test_a_foreign_domain_is_listed_as_ignored_and_left_untouched(host):
    """A domain without kvmops' mark is reported as ignored and neither changed, stopped nor pruned."""
    foreign = define_foreign_domain(host, "handmade", start=True)
    xml, domain_id = foreign.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), foreign.ID()
    factories.write(host.manifests, "vms/mine.yaml", vm(host, "mine", runStrategy="Halted"))

    plan = kvmops(host, "plan", host.manifests, "--output", "json", prune=True)  # read-only
    assert plan.returncode == 0, output(plan)
    data = json.loads(plan.stdout)
    assert foreign.name() in data["foreign"]
    assert foreign.name() not in [r["name"] for r in data["resources"]]

    result = apply_ok(host)
    assert re.search(rf"^Ignored \d+ foreign domains? \(not managed by kvmops, never changed\): .*\b{re.escape(foreign.name())}\b",
                     result.stdout, re.M), output(result)
    assert foreign.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == xml
    assert (foreign.isActive(), foreign.ID()) == (1, domain_id)
    assert host.domain(host.name("mine")) is not None


def test_a_manifest_naming_a_foreign_domain_is_refused_with_a_pointer_to_adopt(host):
    """A manifest that names an existing foreign domain fails with exit 1 and a hint to `kvmops adopt`, and the domain is left exactly as it was."""
    foreign = define_foreign_domain(host, "handmade", start=True)
    xml, domain_id = foreign.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), foreign.ID()
    path = factories.write(host.manifests, "vms/handmade.yaml",
                           vm(host, "handmade", memory="48MiB", vcpus=2, runStrategy="Halted"))

    result = kvmops(host, "apply", host.manifests)
    assert result.returncode == 1, output(result)
    assert f"{path}:{line_of(path, 'name: ' + foreign.name())}: metadata.name: domain '{foreign.name()}' already exists" in result.stdout
    assert f"`kvmops adopt {foreign.name()}`" in result.stdout, output(result)
    assert "Traceback" not in result.stderr
    assert foreign.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == xml
    assert (foreign.isActive(), foreign.ID()) == (1, domain_id)


def test_an_adopted_domain_is_updated_in_place_keeping_its_uuid(host):
    """After `kvmops adopt`, the manifest naming the domain plans an update of it, never a creation, and apply keeps its UUID and leaves it running."""
    foreign = define_foreign_domain(host, "handmade", start=True)
    uuid, domain_id = foreign.UUIDString(), foreign.ID()
    result = kvmops(host, "adopt", foreign.name(), "--connect", host.uri)
    assert result.returncode == 0, output(result)
    assert f"domain {foreign.name()} is now managed by kvmops" in result.stdout
    owner = ET.fromstring(foreign.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    assert owner.get("runStrategy") == "Manual"

    factories.write(host.manifests, "vms/handmade.yaml", vm(host, "handmade", memory="32MiB", runStrategy="Manual"))
    plan = apply_ok(host)  # apply prints its plan first
    block = resource_block(plan.stdout, "VirtualMachine", foreign.name())
    assert block.startswith(f"  ~ VirtualMachine {foreign.name()}  (vms/handmade.yaml)  update\n"), block
    domain = host.domain(foreign.name())
    assert (domain.UUIDString(), domain.ID()) == (uuid, domain_id)
    owner = ET.fromstring(domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    assert owner.get("manifest") == "vms/handmade.yaml"
    plan_is_empty(host)


def test_updating_an_adopted_domain_keeps_what_kvmops_does_not_manage(host):
    """Applying a memory change to an adopted domain keeps its unmanaged configuration (a custom channel, on_crash)."""
    name = host.name("handmade")
    host.connection.defineXML(f"""
        <domain type='qemu'>
          <name>{name}</name>
          <memory unit='MiB'>32</memory>
          <vcpu>1</vcpu>
          <os><type arch='x86_64'>hvm</type></os>
          <on_crash>restart</on_crash>
          <devices>
            <serial type='pty'/><console type='pty'/>
            <channel type='unix'><target type='virtio' name='org.example.custom.0'/></channel>
          </devices>
        </domain>""")
    assert kvmops(host, "adopt", name, "--connect", host.uri).returncode == 0
    factories.write(host.manifests, "vms/handmade.yaml", vm(host, "handmade", memory="48MiB", runStrategy="Halted"))

    apply_ok(host)
    config = ET.fromstring(inactive_xml(host, name))
    assert config.findtext("currentMemory") == str(48 * 1024)
    assert config.find("devices/channel/target[@name='org.example.custom.0']") is not None
    assert config.findtext("on_crash") == "restart"


# --- power -----------------------------------------------------------------------------


def test_run_strategy_halted_stops_a_running_domain_gracefully_then_destroys_it(host):
    """Switching a running VM to Halted sends an ACPI shutdown, waits shutdownTimeout, then destroys it."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web"))
    apply_ok(host)
    name = host.name("web")
    assert host.is_running(name)

    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted", shutdownTimeout=1))
    started = time.monotonic()
    result = apply_ok(host)
    assert time.monotonic() - started >= 1.0  # the guest was given its shutdownTimeout
    block = resource_block(result.stdout, "VirtualMachine", name)
    assert f"■ stop {name} (ACPI shutdown, destroy after 1s)" in block, block
    assert re.search(r"~ runStrategy\s+Always -> Halted", block), block
    assert "destroyed: the guest did not power off within 1s" in result.stdout, output(result)  # SeaBIOS ignores ACPI
    assert host.domain(name).state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    plan_is_empty(host)
    assert not host.is_running(name)


def test_run_strategy_always_starts_a_domain_destroyed_behind_its_back(host):
    """After `virsh destroy`, the next apply starts a runStrategy Always VM again."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Always"))
    apply_ok(host)
    name = host.name("web")

    virsh = subprocess.run(["virsh", "-c", host.uri, "destroy", name], capture_output=True, text=True, timeout=60)
    assert virsh.returncode == 0, virsh.stderr
    assert not host.is_running(name)

    plan = apply_ok(host)  # apply prints its plan first
    block = resource_block(plan.stdout, "VirtualMachine", name)
    assert f"> start {name}" in block and "runStrategy Always: domain is off (destroyed), starting it" in block, block
    assert host.is_running(name)
    plan_is_empty(host)


def test_rerun_on_failure_restarts_a_crashed_domain(host):
    """A RerunOnFailure VM whose QEMU process dies (shut off, reason crashed) is started again by the next apply."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="RerunOnFailure"))
    apply_ok(host)
    name = host.name("web")
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    assert host.wait(lambda: not host.is_running(name))
    assert host.domain(name).state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]

    result = apply_ok(host)
    assert "runStrategy RerunOnFailure: domain stopped (crashed), restarting it" in result.stdout, output(result)
    assert host.is_running(name)
    plan_is_empty(host)


def test_manual_and_rerun_on_failure_leave_a_deliberately_destroyed_domain_off(host):
    """A Manual or RerunOnFailure VM that someone destroyed on purpose stays off: the plan is empty."""
    for strategy in ("Manual", "RerunOnFailure"):
        factories.write(host.manifests, f"vms/{strategy.lower()}.yaml", vm(host, strategy.lower(), runStrategy=strategy))
    apply_ok(host)
    names = [host.name("manual"), host.name("rerunonfailure")]
    for name in names:
        assert host.is_running(name)
        host.domain(name).destroy()

    plan_is_empty(host)
    apply_ok(host)
    assert not any(host.is_running(name) for name in names)
