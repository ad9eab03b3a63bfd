"""Moving VMs between hosts, on a lab of two private libvirtd daemons (:mod:`tests.lab`).

The executor carries out :class:`~reconciler.core.plan.MigrateDomain` steps the way a
fleet plan will hand them over: the plan runs on the source host's hypervisor, the
destination is reached through ``hosts``.  The guest is the suite's tiny real guest
(:mod:`tests.e2e.tinyguest`) with its uptime heartbeat: a guest that kept running prints
an uptime on the destination larger than the last one it printed on the source; one that
booted again would start near zero and print its READY marker again.

The lab is the session's (``lab`` in :mod:`tests.e2e.conftest`); each test has pools of its
own on it and leaves nothing behind.  A guest is booted only where its booting is what is
looked at (the uptime heartbeat, READY on the destination); elsewhere it is started and
moved mid-boot, or only defined.  The lab, its pools and the guest's helpers are in
:mod:`tests.e2e.labfleet`.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from reconciler import errors
from reconciler.adapters import hypervisor as hv
import dataclasses

from reconciler.core import domxml, model
from reconciler.core import plan as plans
from reconciler.runtime import execute
from tests.e2e import tinyguest
from tests.e2e.labfleet import (DISK_BYTES, migration, move, on_lab, past_any_reboot, tiny_vm, uptimes,
                                wait_for_uptime)

pytestmark = pytest.mark.e2e


@pytest.fixture
def fleet(lab):
    """Return h1 and h2 of the session's lab, with a shared and a local pool of this test's own; whatever the test
    made is removed from the lab afterwards (:func:`tests.e2e.labfleet.reset`)."""
    with on_lab(lab, f"{lab.name}-{uuid.uuid4().hex[:4]}") as world:
        yield world


def live_mac(h: hv.Hypervisor, name: str) -> str:
    xml = h.live_xml(name) or ""
    return xml.split("<mac address='", 1)[1].split("'", 1)[0]


def test_a_running_guest_moves_live_on_shared_storage_and_is_not_rebooted(fleet, tiny_guest):
    name = f"{fleet.prefix}-live"
    domain_uuid, mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.shared)
    before = past_any_reboot(fleet.serial_log("h1", name))
    persistent = fleet.hosts["h1"].domain_xml(name).replace("</domain>", "<description>placed on h2</description></domain>")

    report = move(fleet, name, domain_uuid, plans.MigrationMode.LIVE, xml=persistent)

    assert report.ok, report.failures
    assert "live migration by libvirt in" in report.outcomes[0].steps[0].detail
    # the lab's shared directory is a local file system to libvirt: no paused hand-over there (docs/design.md)
    assert "unpaused (libvirt does not know its shared storage)" in report.outcomes[0].steps[0].detail
    assert fleet.hosts["h1"].domain_name_by_uuid(domain_uuid) is None
    assert fleet.hosts["h2"].domain_name_by_uuid(domain_uuid) == name
    assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.RUNNING
    assert live_mac(fleet.hosts["h2"], name) == mac
    assert "placed on h2" in fleet.hosts["h2"].domain_xml(name)  # the definition the plan gave is the one kept
    after = wait_for_uptime(fleet.serial_log("h2", name), before + 1)
    assert after > before and min(uptimes(fleet.serial_log("h2", name))) > before  # up since h1, all along
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
    before = past_any_reboot(fleet.serial_log("h1", name))
    cleanup = plans.DeleteMovedVolume(fleet.local, volume, name, domain_uuid, "h2")

    report = move(fleet, name, domain_uuid, plans.MigrationMode.LIVE_COPY_STORAGE, cleanup)

    assert report.ok, report.failures
    assert "resumed there" in report.outcomes[0].steps[0].detail  # held paused until h1 let go of it
    assert domxml.parse_owner(domxml.parse_tree(fleet.hosts["h2"].domain_xml(name))).resume_after_move is False
    assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.RUNNING
    assert live_mac(fleet.hosts["h2"], name) == mac
    assert fleet.hosts["h2"].domain_name_by_uuid(domain_uuid) == name
    assert fleet.hosts["h2"].volume_capacity(fleet.local, volume) == DISK_BYTES
    assert not fleet.hosts["h1"].volume_exists(fleet.local, volume)  # removed once the guest ran on h2
    assert wait_for_uptime(fleet.serial_log("h2", name), before + 1) > before
    assert min(uptimes(fleet.serial_log("h2", name))) > before  # never booted again


def test_a_shut_off_vm_moves_offline_with_its_disk_and_boots_on_the_destination(fleet, tiny_guest):
    name = f"{fleet.prefix}-off"
    volume = f"{name}-root.qcow2"
    domain_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.local, start=False)
    content = hashlib.sha256(fleet.file_of("h1", fleet.local, volume).read_bytes()).hexdigest()
    cleanup = plans.DeleteMovedVolume(fleet.local, volume, name, domain_uuid, "h2")

    report = move(fleet, name, domain_uuid, plans.MigrationMode.OFFLINE, cleanup, sends=((fleet.local, volume),))

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


def left_behind(h: hv.Hypervisor, name: str) -> tuple[model.LeftBehind, ...]:
    return domxml.parse_owner(domxml.parse_tree(h.domain_xml(name))).left_behind


def test_a_running_guest_that_must_restart_is_stopped_moved_offline_and_started_on_the_destination(fleet, tiny_guest):
    name = f"{fleet.prefix}-restart"
    volume = f"{name}-root.qcow2"
    domain_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.local, boot=False)
    cleanup = plans.DeleteMovedVolume(fleet.local, volume, name, domain_uuid, "h2", running=True, source="h1")
    forget = plans.ForgetMovedVolume(fleet.local, volume, name, domain_uuid, "h1", "h2")

    report = move(fleet, name, domain_uuid, plans.MigrationMode.OFFLINE, cleanup, forget,
                  sends=((fleet.local, volume),), stop_first=True, start_after=True, shutdown_timeout=1)

    assert report.ok, report.failures
    assert "started there" in report.outcomes[0].steps[0].detail
    assert fleet.hosts["h1"].domain_name_by_uuid(domain_uuid) is None
    assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.RUNNING
    tinyguest.wait_for_ready(fleet.serial_log("h2", name), timeout=120)  # booted again there: a restart, as planned
    assert not fleet.hosts["h1"].volume_exists(fleet.local, volume)
    assert left_behind(fleet.hosts["h2"], name) == ()


def test_a_live_move_sends_the_read_only_seed_itself_and_cleans_both_copies_up(fleet, tiny_guest):
    name = f"{fleet.prefix}-seed"
    volume, iso = f"{name}-root.qcow2", f"{name}-cidata.iso"
    domain_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.local, seed=True, boot=False)
    seed_bytes = hashlib.sha256(fleet.file_of("h1", fleet.local, iso).read_bytes()).hexdigest()
    steps = [step for v in (volume, iso) for step in (
        plans.DeleteMovedVolume(fleet.local, v, name, domain_uuid, "h2", running=True, source="h1"),
        plans.ForgetMovedVolume(fleet.local, v, name, domain_uuid, "h1", "h2"))]

    report = move(fleet, name, domain_uuid, plans.MigrationMode.LIVE_COPY_STORAGE, *steps,
                  copies=("vda",), sends=((fleet.local, iso),))

    assert report.ok, report.failures
    assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.RUNNING
    assert hashlib.sha256(fleet.file_of("h2", fleet.local, iso).read_bytes()).hexdigest() == seed_bytes
    assert not fleet.hosts["h1"].volume_exists(fleet.local, volume)
    assert not fleet.hosts["h1"].volume_exists(fleet.local, iso)
    assert left_behind(fleet.hosts["h2"], name) == ()


def test_a_file_outside_pools_moves_live_only_when_the_destination_sees_that_very_file(fleet, tiny_guest):
    shared_file = fleet.lab.shared / f"{fleet.prefix}-pathdisk.img"
    shared_file.write_bytes(b"\0" * (1024 * 1024))
    name = f"{fleet.prefix}-path"
    domain_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.shared, path_disk=str(shared_file), boot=False)

    report = move(fleet, name, domain_uuid, plans.MigrationMode.LIVE, shared_files=(str(shared_file),))

    assert report.ok, report.failures
    assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.RUNNING

    private = "/var/lib/libvirt/images/" + f"{fleet.prefix}-private.img"  # each lab host has its own /var/lib/libvirt
    (fleet.lab_host("h1").directory / "lib" / "images").mkdir(parents=True, exist_ok=True)
    (fleet.lab_host("h1").directory / "lib" / "images" / f"{fleet.prefix}-private.img").write_bytes(b"\0" * 1024 * 1024)
    lonely = f"{fleet.prefix}-lonely"
    lonely_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", lonely, fleet.shared, path_disk=private, boot=False)

    refused = move(fleet, lonely, lonely_uuid, plans.MigrationMode.LIVE, shared_files=(private,))

    assert refused.outcomes[0].status == "failed"
    assert f"is the file {private}, outside any pool, and h2 does not see that very file" in refused.outcomes[0].error
    assert fleet.hosts["h1"].domain_power(lonely)[0] is model.PowerState.RUNNING  # nothing happened to it


SCRIPT = """
import json, sys
from reconciler.adapters import hypervisor as hv
from reconciler.core import plan as plans
from reconciler.runtime import execute

def step(fields):
    kind = getattr(plans, fields.pop("kind"))
    if "mode" in fields:
        fields["mode"] = plans.MigrationMode(fields["mode"])
    return kind(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                   for k, v in fields.items()})

spec = json.loads(sys.argv[1])
hosts = {name: hv.Hypervisor.open(uri) for name, uri in spec["uris"].items()}
steps = tuple(step(s) for s in spec["steps"])
resource = plans.ResourcePlan("VirtualMachine", spec["name"], (plans.Action.MIGRATE,), steps=steps)
report = execute.execute(plans.Plan(hosts["h1"].uri, (resource,)), hosts["h1"], hosts=hosts)
print(json.dumps({"ok": report.ok, "calls": hv._mutating_calls}))
"""


def run_move_process(fleet, name: str, plan: plans.Plan, *, crash_at: int, only_migrate: bool = False,
                     wait: bool = True):
    """Run ``plan``'s migration resource in a kvmops process with the crash hook at ``crash_at``."""
    import json
    import subprocess
    import sys

    steps = plan.resources[0].steps[:1] if only_migrate else plan.resources[0].steps
    spec = {"uris": {n: h.uri for n, h in fleet.hosts.items()}, "name": name,
            "steps": [{"kind": type(step).__name__, **dataclasses.asdict(step)} for step in steps]}
    env = {**os.environ, "KVMOPS_TEST_CRASH_AT": str(crash_at)}
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def test_a_kill_between_the_move_and_the_cleanup_is_finished_by_the_next_pass(fleet, tiny_guest):
    from reconciler.core import fleet as fleets
    from reconciler.runtime import observe

    volume = lambda n: f"{n}-root.qcow2"  # noqa: E731
    counted = f"{fleet.prefix}-count"
    counted_uuid, _ = tiny_vm(fleet, tiny_guest, "h1", counted, fleet.local, start=False)
    plan = migration(fleet, counted, counted_uuid, plans.MigrationMode.OFFLINE,
                     plans.DeleteMovedVolume(fleet.local, volume(counted), counted, counted_uuid, "h2", source="h1"),
                     sends=((fleet.local, volume(counted)),))
    code, out, err = run_move_process(fleet, counted, plan, crash_at=10**6, only_migrate=True)
    assert code == 0, err
    import json
    calls = json.loads(out.strip().splitlines()[-1])["calls"]  # mutating calls of the move alone

    name = f"{fleet.prefix}-killed"
    domain_uuid, _ = tiny_vm(fleet, tiny_guest, "h1", name, fleet.local, start=False)
    cleanup = plans.DeleteMovedVolume(fleet.local, volume(name), name, domain_uuid, "h2", source="h1")
    plan = migration(fleet, name, domain_uuid, plans.MigrationMode.OFFLINE, cleanup,
                     plans.ForgetMovedVolume(fleet.local, volume(name), name, domain_uuid, "h1", "h2"),
                     sends=((fleet.local, volume(name)),))
    code, _out, err = run_move_process(fleet, name, plan, crash_at=calls + 1)

    assert code == -9, err  # killed right after the move, before the cleanup's first call
    assert fleet.hosts["h1"].domain_name_by_uuid(domain_uuid) is None
    assert fleet.hosts["h2"].domain_name_by_uuid(domain_uuid) == name
    assert fleet.hosts["h1"].volume_exists(fleet.local, volume(name))  # the copy left behind, still there
    assert left_behind(fleet.hosts["h2"], name) == (model.LeftBehind("h1", fleet.local, volume(name)),)

    # The next pass derives the cleanup from what it sees: the VM on h2, its record of the copy on h1.
    desired = model.DesiredState(vms={}, pools={}, hosts={n: _host(n, h.uri) for n, h in fleet.hosts.items()})
    observed = {n: observe.observe(h) for n, h in fleet.hosts.items()}
    result = fleets.plan_fleet(desired, observed)
    (owed,) = [r for r in result.host("h1").plan.resources if r.name == name]
    assert [type(s).__name__ for s in owed.steps] == ["DeleteMovedVolume", "ForgetMovedVolume"]
    report = execute.execute(plans.Plan(fleet.hosts["h1"].uri, (owed,)), fleet.hosts["h1"], hosts=fleet.hosts)

    assert report.ok, report.failures
    assert not fleet.hosts["h1"].volume_exists(fleet.local, volume(name))
    assert fleet.hosts["h2"].volume_exists(fleet.local, volume(name))
    assert left_behind(fleet.hosts["h2"], name) == ()
    again = fleets.plan_fleet(desired, {n: observe.observe(h) for n, h in fleet.hosts.items()})
    assert [r for r in again.host("h1").plan.resources if r.name == name] == []


def _host(name: str, uri: str) -> model.HostSpec:
    import inspect

    fields = inspect.signature(model.HostSpec).parameters
    values = {"name": name, "uri": uri, "labels": (), "capacity": model.HostCapacity(8, 8 << 20),
              "schedulable": True, "manifest": "", "origin": None}
    return model.HostSpec(**{k: v for k, v in values.items() if k in fields})


def power_of(h: hv.Hypervisor, name: str) -> model.PowerState | None:
    try:
        return h.domain_power(name)[0]
    except errors.ObjectNotFound:  # gone between two looks: libvirt's job ended meanwhile
        return None


def test_a_kill_in_the_middle_of_a_live_move_leaves_the_vm_on_exactly_one_host(fleet, tiny_guest):
    import time

    name = f"{fleet.prefix}-midway"
    domain_uuid, _ = tiny_vm(fleet, tiny_guest, "h1", name, fleet.local, boot=False)
    plan = migration(fleet, name, domain_uuid, plans.MigrationMode.LIVE_COPY_STORAGE, copies=("vda",))
    process = run_move_process(fleet, name, plan, crash_at=10**6, wait=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not fleet.hosts["h2"].domain_exists(name):
        time.sleep(0.05)  # libvirt's job has begun: the destination holds the incoming guest
    process.kill()  # kill -9 of kvmops mid-migration
    process.wait()

    seen_twice_running = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        on = {n: h.domain_name_by_uuid(domain_uuid) is not None for n, h in fleet.hosts.items()}
        running = [n for n, h in fleet.hosts.items() if on[n] and power_of(h, name) is model.PowerState.RUNNING]
        seen_twice_running |= len(running) > 1
        if sum(on.values()) == 1:
            break
        time.sleep(0.2)
    assert not seen_twice_running
    where = [n for n, h in fleet.hosts.items() if h.domain_name_by_uuid(domain_uuid) is not None]
    assert len(where) == 1, where  # libvirt finished (or abandoned) its job: one host has it
    if where == ["h2"]:  # libvirt finished it: the guest is held paused at the hand-over, for the next pass to resume
        assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.PAUSED
        resume = plans.ResourcePlan("VirtualMachine", name, (plans.Action.UPDATE,),
                                    steps=(plans.ResumeMovedDomain(name, domain_uuid, "h2", "h1"),))
        report = execute.execute(plans.Plan(fleet.hosts["h2"].uri, (resume,)), fleet.hosts["h2"], hosts=fleet.hosts)
        assert report.ok, report.outcomes[0].error
    assert fleet.hosts[where[0]].domain_power(name)[0] is model.PowerState.RUNNING


UEFI_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/></features>
<devices><graphics type='vnc'/></devices></domain>"""
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"


def nvram_file(fleet, host: str, name: str):
    return fleet.lab_host(host).directory / "lib" / "qemu" / "nvram" / f"{name}_VARS.fd"


@pytest.mark.skipif(not os.path.exists(OVMF_VARS), reason="needs OVMF (apt-get install ovmf)")
def test_a_uefi_vm_moved_offline_keeps_its_nvram_and_the_source_copy_goes_only_after_the_move(fleet):
    name = f"{fleet.prefix}-uefi"
    h1 = fleet.hosts["h1"]
    h1.define_domain(UEFI_XML.format(name=name), name)
    domain_uuid = next(d.uuid for d in h1.list_domains() if d.name == name)
    h1.set_owner(name, model.Ownership(manifest=f"vms/{name}.yaml", digest="test", run_strategy=model.RunStrategy.HALTED,
                                       bound_name=name, bound_uuid=domain_uuid))
    # boot entries a guest wrote: known bytes at the end of the variable store
    marked = bytearray(open(OVMF_VARS, "rb").read())
    marked[-4096:] = b"kvmops boot entry " * 227 + b"\0" * (4096 - 18 * 227)
    nvram_file(fleet, "h1", name).parent.mkdir(parents=True, exist_ok=True)
    nvram_file(fleet, "h1", name).write_bytes(bytes(marked))
    steps = (plans.DeleteMovedVolume(*model.NVRAM, name, domain_uuid, "h2", source="h1"),
             plans.ForgetMovedVolume(*model.NVRAM, name, domain_uuid, "h1", "h2"))

    report = move(fleet, name, domain_uuid, plans.MigrationMode.OFFLINE, *steps, nvram=True)

    assert report.ok, report.failures
    assert "its UEFI NVRAM copied by kvmops" in report.outcomes[0].steps[0].detail
    assert fleet.hosts["h2"].domain_name_by_uuid(domain_uuid) == name
    assert nvram_file(fleet, "h2", name).read_bytes() == bytes(marked)  # the boot entries moved with it
    assert not nvram_file(fleet, "h1", name).exists()  # the source's copy, removed after the move
    assert left_behind(fleet.hosts["h2"], name) == ()
    assert domxml.parse_owner(domxml.parse_tree(fleet.hosts["h2"].domain_xml(name))).sending == ()
    fleet.hosts["h2"].start_domain(name)  # OVMF starts from the moved variable store
    assert fleet.hosts["h2"].domain_power(name)[0] is model.PowerState.RUNNING
    fleet.hosts["h2"].destroy_domain(name)


def next_move(fleet, name: str, domain_uuid: str, **fields) -> plans.Plan:
    """Return the move as the fleet planner writes it for this VM on h1 now: what an interrupted move of it left
    on h2 (the sending records in its mark) is replaced (see fleet._migration)."""
    owner = domxml.parse_owner(domxml.parse_tree(fleet.hosts["h1"].domain_xml(name)))
    replaces = tuple((s.pool, s.name) for s in owner.sending if s.host == "h2")
    volumes = [(fleet.local, f"{name}-root.qcow2"), (fleet.local, f"{name}-cidata.iso")]
    steps = [step for pool, volume in volumes for step in (
        plans.DeleteMovedVolume(pool, volume, name, domain_uuid, "h2", source="h1"),
        plans.ForgetMovedVolume(pool, volume, name, domain_uuid, "h1", "h2"))]
    xml = domxml.remark(fleet.hosts["h1"].domain_xml(name), dataclasses.replace(
        owner, host="h2", sending=(), left_behind=tuple(model.LeftBehind("h1", p, v) for p, v in volumes)))
    return migration(fleet, name, domain_uuid, plans.MigrationMode.OFFLINE, *steps, xml=xml, sends=tuple(volumes),
                     replaces=replaces, **fields)


def test_a_kill_before_any_mutating_call_of_an_offline_move_with_copies_never_loses_or_doubles_the_vm(
        fleet, tiny_guest):
    import json
    import time

    from reconciler.core import fleet as fleets
    from reconciler.runtime import observe

    desired = model.DesiredState(vms={}, pools={}, hosts={n: _host(n, h.uri) for n, h in fleet.hosts.items()})
    started, n = time.monotonic(), 0
    while True:
        n += 1
        name = f"{fleet.prefix}-k{n}"
        domain_uuid, _mac = tiny_vm(fleet, tiny_guest, "h1", name, fleet.local, start=False, seed=True)
        volumes = [f"{name}-root.qcow2", f"{name}-cidata.iso"]
        digests = {v: hashlib.sha256(fleet.file_of("h1", fleet.local, v).read_bytes()).hexdigest() for v in volumes}
        code, out, err = run_move_process(fleet, name, next_move(fleet, name, domain_uuid), crash_at=n)
        finished = code == 0
        assert finished or code == -9, err
        where = [h for h, c in fleet.hosts.items() if c.domain_name_by_uuid(domain_uuid) is not None]
        assert len(where) == 1, f"kill before call {n}: {name} is on {where}"
        if where == ["h1"]:
            for volume in volumes:  # a copy cut short: the next move must replace it, not refuse it
                if fleet.hosts["h2"].volume_exists(fleet.local, volume):
                    fleet.file_of("h2", fleet.local, volume).write_bytes(b"partial")
            report = execute.execute(next_move(fleet, name, domain_uuid), fleet.hosts["h1"], hosts=fleet.hosts)
            assert report.ok, (n, err, report.failures)
        # the next fleet pass finishes what the move owes on h1, then has nothing left to do
        for _ in range(2):
            result = fleets.plan_fleet(desired, {h: observe.observe(c) for h, c in fleet.hosts.items()})
            owed = [r for r in result.host("h1").plan.resources if r.name == name]
            if owed:
                report = execute.execute(plans.Plan(fleet.hosts["h1"].uri, tuple(owed)), fleet.hosts["h1"],
                                         hosts=fleet.hosts)
                assert report.ok, (n, report.failures)
        assert owed == [], f"kill before call {n}: still owed {owed}"
        assert fleet.hosts["h1"].domain_name_by_uuid(domain_uuid) is None
        assert fleet.hosts["h2"].domain_name_by_uuid(domain_uuid) == name
        for volume in volumes:
            assert not fleet.hosts["h1"].volume_exists(fleet.local, volume), f"kill before call {n}: {volume} on h1"
            copy = hashlib.sha256(fleet.file_of("h2", fleet.local, volume).read_bytes()).hexdigest()
            assert copy == digests[volume], f"kill before call {n}: {volume} on h2 is not the VM's data"
        owner = domxml.parse_owner(domxml.parse_tree(fleet.hosts["h2"].domain_xml(name)))
        assert (owner.left_behind, owner.sending) == ((), ()), n
        leftovers = [v.name for v in fleet.hosts["h1"].list_volumes(fleet.local) if v.name in volumes]
        assert leftovers == [], f"kill before call {n}: {leftovers}"
        if finished:
            calls = json.loads(out.strip().splitlines()[-1])["calls"]
            assert n > calls
            break
    assert n > 5
    print(f"offline move with copies: {n - 1} kill points in {time.monotonic() - started:.1f} s")
