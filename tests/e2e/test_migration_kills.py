"""kvmops killed (``kill -9``) at any point of a live move with storage copy loses, doubles and leaks nothing.

The brief's rule: a kill or a libvirtd restart at any moment leaves nothing lost, leaked or
half-trusted, and the next pass finishes the job.  This file proves it for the move with
the most parts: a running UEFI guest whose disk is on a local (non-shared) pool.  libvirt
copies the disk over NBD while the guest runs (``VIR_MIGRATE_NON_SHARED_DISK``); kvmops
streams the cloud-init seed ISO (read-only: libvirt copies none) and the UEFI NVRAM (libvirt
carries no NVRAM file) before it; the source's copies of all three are deleted only once
the guest runs on the destination.

On two hosts of the session's lab (:mod:`tests.lab`), driven through the CLI as a user
would: Host manifests, a local pool on both hosts, a shared pool holding the kernel and
initrd of the tiny guest (:mod:`tests.e2e.tinyguest`, booted directly by OVMF, with its
uptime heartbeat), and one VM whose ``placement.host`` flips between h1 and h2.  Each point:

1. ``kvmops apply`` moves the VM and is killed: before its mutating libvirt call *n* (the
   crash hook, ``KVMOPS_TEST_CRASH_AT``; *n* counts up until an apply finishes by itself),
   or at a random moment while libvirt copies the disk (a seeded delay; the seed is
   printed, ``KVMOPS_KILL_SEED`` repeats it); or the destination's or the source's
   libvirtd is killed and started again while libvirt copies the disk;
2. once libvirt has finished or abandoned its job, the next ``kvmops apply`` converges;
3. then the VM is defined on exactly one host, the one its manifest names, and runs there;
   it was never seen running on both hosts (a watcher looks every 0.1 s throughout); its
   disk holds exactly the bytes written into it before the first move (``qemu-img
   compare``), its seed and NVRAM the same bytes as then; no volume, partial copy, probe
   file, NVRAM file or transient pool of kvmops' is left on either host; its mark records
   nothing sent, left behind or pending; and ``kvmops plan`` is empty.

What it costs, and why one guest.  The guest is not the subject, its moves are: one guest
serves every point, each point moving it back to where the previous one took it, so each
pays for exactly one live migration (~3 s; the OVMF boot, ~10 s, happens once) and three
short kvmops runs.  Every mutating call of the move is a point (23 of them), plus four
random kills and two restarts: the file takes about two minutes here.  The random kills and
the restarts slow libvirt's copy to 32 MiB/s (``virDomainMigrateSetMaxSpeed`` on the
guest), so that the 64 MiB disk takes two seconds to copy and the kill lands while it is
being copied, not after.  At the end, the guest's uptime proves it never booted again: every
move, interrupted or not, kept it running.

The destination's libvirtd is also killed as it holds the guest paused at the hand-over,
the moment libvirt 9.0 ran a guest on both hosts when it moved guests unpaused (two moves,
about 30 s). One moment is also tried on a second, smaller guest whose only disk is on the
shared pool (:class:`SharedVM`, which runs last: its fleet prunes the first VM): the
source's libvirtd killed as the destination takes over a move that copies nothing, which
only the records of the move itself prove (about 12 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest
import yaml

from reconciler.adapters import hypervisor as hv
from reconciler.core import domxml, model
from tests import lab as labs
from tests.e2e import labfleet, tinyguest

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]
DISK = 64 * 1024 * 1024
DATA = 24 * 1024 * 1024  # random bytes at the start of the disk; the rest stays zero
COPY_MIB_PER_SECOND = 32  # libvirt's copy speed for the random kills and restarts: the disk takes 2 s
RANDOM_KILLS = 4
SEED = int(os.environ.get("KVMOPS_KILL_SEED") or random.SystemRandom().randrange(1 << 32))
EFI_KERNEL = "vmlinuz"


def efi_kernel(guest: tinyguest.Guest, into: Path) -> None:
    """Write the tiny guest's kernel as its package ships it to ``into``: a bzImage with an EFI stub, which OVMF boots
    (the guest's own ``vmlinux`` is an ELF image for PVH, which only QEMU's direct boot without firmware knows)."""
    deb = guest.kernel.parent.parent.parent / "debs" / json.loads((guest.kernel.parent / "guest.json").read_text())["debs"][0]
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as unpacked:
        with tarfile.open(fileobj=unpacked.stdout, mode="r|") as archive:
            for member in archive:  # (read to the end: dpkg-deb complains of a broken pipe otherwise)
                if member.name.startswith("./boot/vmlinuz-"):
                    into.write_bytes(archive.extractfile(member).read())
    os.chmod(into, 0o644)


class TwiceRunning:
    """Watch two hosts every 0.1 s for a domain running on both at once; reconnect when a libvirtd restarts."""

    def __init__(self, uris: dict[str, str], domain_uuid: str) -> None:
        self.uris = uris
        self.uuid = domain_uuid
        self.seen: list[str] = []
        self.looks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="twice-running")

    def __enter__(self) -> TwiceRunning:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        connections: dict[str, libvirt.virConnect | None] = dict.fromkeys(self.uris)
        while not self._stop.wait(0.1):
            running = []
            for host, uri in self.uris.items():
                try:
                    if connections[host] is None:
                        connections[host] = libvirt.openReadOnly(uri)
                    if connections[host].lookupByUUIDString(self.uuid).state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                        running.append(host)
                except libvirt.libvirtError:  # not there, or libvirtd is being restarted
                    connection, connections[host] = connections[host], None
                    with contextlib.suppress(libvirt.libvirtError, AttributeError):
                        if connection.isAlive():
                            connections[host] = connection
            self.looks += 1
            if len(running) > 1:
                self.seen.append(f"{time.strftime('%H:%M:%S')}: running on {', '.join(running)}")
        for connection in connections.values():
            with contextlib.suppress(libvirt.libvirtError, AttributeError):
                connection.close()


@dataclass
class MovingVM:
    """The lab's h1 and h2 as a fleet, a VM on it, and what its disk, seed and NVRAM must hold."""

    lab: labs.Lab
    manifests: Path
    prefix: str
    reference: Path  # the bytes of the guest's disk (raw)
    seed_digest: str = ""
    nvram_digest: str = ""
    uuid: str = ""
    home: str = "h1"
    booted: float = 0.0  # time.monotonic() when the guest first started
    migrate_call: int = 0  # which mutating call of a move asks libvirt to migrate
    timings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.prefix}-vm"

    @property
    def local(self) -> str:
        return f"{self.prefix}-local"

    @property
    def shared(self) -> str:
        return f"{self.prefix}-shared"

    def uri(self, host: str) -> str:
        return self.lab_host(host).uri

    def lab_host(self, host: str) -> labs.LabHost:
        return self.lab.hosts[int(host[1:]) - 1]

    def volume_file(self, host: str, volume: str) -> Path:
        """Return the file of ``volume`` in the local pool of ``host``, seen from outside the host's namespace."""
        return self.lab_host(host).directory / "lib" / "images" / self.local / volume

    def nvram_file(self, host: str) -> Path:
        return self.lab_host(host).directory / "lib" / "qemu" / "nvram" / f"{self.name}_VARS.fd"

    def write_vm(self, host: str, run_strategy: str = "Always") -> None:
        guest = tinyguest.build()
        (self.manifests / "vm.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": self.name},
            "spec": {
                # OVMF, the EFI stub and this kernel need more than the 128 MiB the guest boots in without firmware
                "memory": "256MiB", "virtType": "qemu", "machine": "pc", "firmware": "uefi", "runStrategy": run_strategy,
                "install": {"kernel": {"pool": self.shared, "volume": EFI_KERNEL},
                            "initrd": {"pool": self.shared, "volume": guest.initrd.name},
                            "cmdline": f"{guest.cmdline} {tinyguest.HEARTBEAT}"},
                "disks": [{"name": "root", "pool": self.local, "size": f"{DISK // (1024 * 1024)}MiB",
                           "deletionPolicy": "Delete"}],
                "cloudInit": {"userData": "#cloud-config\n", "metaData": {"instanceId": self.name}},
                "placement": {"host": host},
            },
        }, sort_keys=False), encoding="utf-8")

    def kvmops(self, *argv: str, crash_at: int | None = None, wait: bool = True):
        """Run kvmops on the manifests (``plan`` and ``apply`` one VM at a time, for a deterministic order of calls)."""
        env = {**os.environ, "KVMOPS_STATE_DIR": str(self.manifests.parent / "state"), "NO_COLOR": "1"}
        env.pop(hv.CRASH_AT_VARIABLE, None)
        if crash_at is not None:
            env[hv.CRASH_AT_VARIABLE] = str(crash_at)
        command = [sys.executable, "-m", "reconciler", *argv, str(self.manifests), "--parallel", "1"]
        if not wait:
            return subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        return subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=600)

    def where(self) -> list[str]:
        """Return the hosts where the VM (its UUID) is defined."""
        found = []
        for host in ("h1", "h2"):
            with hv.Hypervisor.open(self.uri(host), read_only=True) as h:
                if h.domain_name_by_uuid(self.uuid) is not None:
                    found.append(host)
        return found

    def settle(self, timeout: float = 120) -> list[str]:
        """Wait until libvirt finished or abandoned any job moving the VM; return the hosts where it is defined then.

        The job is over when neither host runs a job on the VM and neither holds an incoming
        (paused, transient) copy of it.
        """
        deadline = time.monotonic() + timeout
        while True:
            where, busy = [], False
            for host in ("h1", "h2"):
                connection = libvirt.openReadOnly(self.uri(host))
                try:
                    domain = connection.lookupByUUIDString(self.uuid)
                    where.append(host)
                    if domain.isActive():
                        # (an incoming copy has no job statistics: "available only on the source host")
                        busy |= domain.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
                except libvirt.libvirtError:
                    busy |= host in where
                finally:
                    connection.close()
            if not busy or time.monotonic() > deadline:
                return where
            time.sleep(0.2)

    @contextlib.contextmanager
    def slow_copy(self) -> Iterator[libvirt.virDomain]:
        """Slow libvirt's next copy of the VM on its host to :data:`COPY_MIB_PER_SECOND`; yield the VM there."""
        connection = libvirt.open(self.uri(self.home))
        try:
            domain = connection.lookupByUUIDString(self.uuid)
            domain.migrateSetMaxSpeed(COPY_MIB_PER_SECOND, 0)
            yield domain
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()


def copying(domain: libvirt.virDomain, process: subprocess.Popen, timeout: float = 60) -> bool:
    """Wait until libvirt copies the disk of ``domain`` for the move ``process`` started; return False if it never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(libvirt.libvirtError):
            if domain.jobStats(0).get("disk_total"):
                return True
        time.sleep(0.02)
    return False


def progress(domain: libvirt.virDomain) -> str:
    """Return how far libvirt's job on ``domain`` is, in words."""
    try:
        stats = domain.jobStats(0)
    except libvirt.libvirtError:
        return "no job"
    if not stats.get("disk_total"):
        return "no copy"
    mib = 1024 * 1024
    return (f"disk {stats.get('disk_processed', 0) // mib}/{stats['disk_total'] // mib} MiB, memory "
            f"{stats.get('memory_processed', 0) // mib}/{stats.get('memory_total', 0) // mib} MiB copied")


def boot_files(lab, tiny_guest, prefix: str) -> Path:
    """Return the lab's shared directory for pool ``prefix``-pool, made to hold the guest's initrd and EFI-stub kernel."""
    shared = lab.shared / f"{prefix}-pool"
    shared.mkdir(mode=0o755)
    shutil.copyfile(tiny_guest.initrd, shared / tiny_guest.initrd.name)
    os.chmod(shared / tiny_guest.initrd.name, 0o644)
    efi_kernel(tiny_guest, shared / EFI_KERNEL)
    return shared


@pytest.fixture(scope="module")
def moving_vm(lab, tiny_guest, tmp_path_factory) -> Iterator[MovingVM]:
    """Return the VM on h1, running (booted, its heartbeat on), its disk full of known bytes; removed afterwards."""
    prefix = f"{lab.name}-k{uuid.uuid4().hex[:4]}"
    directory = tmp_path_factory.mktemp("kills")
    manifests = directory / "manifests"
    manifests.mkdir()
    world = MovingVM(lab, manifests, prefix, directory / "disk.raw")
    try:
        shared = boot_files(lab, tiny_guest, prefix)
        (manifests / "hosts.yaml").write_text(yaml.safe_dump_all([
            {"apiVersion": "kvmops/v1", "kind": "Host", "metadata": {"name": host, "labels": {"lab": prefix}},
             "spec": {"uri": world.uri(host)}} for host in ("h1", "h2")], sort_keys=False), encoding="utf-8")
        (manifests / "pools.yaml").write_text(yaml.safe_dump_all([
            {"apiVersion": "kvmops/v1", "kind": "StoragePool", "metadata": {"name": world.local},
             "spec": {"path": f"/var/lib/libvirt/images/{world.local}", "hosts": {}}},  # same path, files of its own
            {"apiVersion": "kvmops/v1", "kind": "StoragePool", "metadata": {"name": world.shared},
             "spec": {"path": str(shared), "shared": True, "hosts": {}}},
        ], sort_keys=False), encoding="utf-8")
        world.write_vm("h1", run_strategy="Halted")
        created = world.kvmops("apply")
        assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-2000:]
        with hv.Hypervisor.open(world.uri("h1"), read_only=True) as h:
            world.uuid = next(d.uuid for d in h.list_domains() if d.name == world.name)
        # known bytes the guest never writes over (it has no block driver): what every copy must hold
        with world.reference.open("wb") as reference:
            reference.write(random.Random(SEED).randbytes(DATA))
            reference.truncate(DISK)
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(world.reference),
                        str(world.volume_file("h1", f"{world.name}-root.qcow2"))], check=True, capture_output=True)
        world.seed_digest = hashlib.sha256(world.volume_file("h1", f"{world.name}-cidata.iso").read_bytes()).hexdigest()
        world.write_vm("h1")
        world.booted = time.monotonic()
        started = world.kvmops("apply")
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-2000:]
        labfleet.heartbeat(world.uri("h1"), world.name, timeout=180)  # booted: OVMF has written what it writes
        world.nvram_digest = hashlib.sha256(world.nvram_file("h1").read_bytes()).hexdigest()
        yield world
    finally:
        labfleet.reset(lab, prefix)


def converged(world: MovingVM, point: str) -> None:
    """Assert the VM is whole on ``world.home`` and nothing of it is left anywhere else (see the module's docstring)."""
    home, away = world.home, ("h2" if world.home == "h1" else "h1")
    with hv.Hypervisor.open(world.uri(home), read_only=True) as here, \
            hv.Hypervisor.open(world.uri(away), read_only=True) as there:
        assert here.domain_name_by_uuid(world.uuid) == world.name, f"{point}: {world.name} is not on {home}"
        assert there.domain_name_by_uuid(world.uuid) is None, f"{point}: {world.name} is still on {away}"
        assert not there.domain_exists(world.name), f"{point}: a domain {world.name} is on {away}"
        assert here.domain_power(world.name)[0] is model.PowerState.RUNNING, f"{point}: not running on {home}"
        owner = domxml.parse_owner(domxml.parse_tree(here.domain_xml(world.name)))
        assert (owner.sending, owner.left_behind, owner.host) == ((), (), home), f"{point}: mark {owner}"
        assert all(not record.pending for record in owner.volumes), f"{point}: pending records {owner.volumes}"
        volumes = {host: sorted(v.name for v in h.list_volumes(world.local)) for host, h in ((home, here), (away, there))}
        pools = {host: sorted(p.name for p in h.list_pools() if p.name.startswith("kvmops-file-probe-"))
                 for host, h in ((home, here), (away, there))}
    expected = sorted([f"{world.name}-cidata.iso", f"{world.name}-root.qcow2"])
    assert volumes == {home: expected, away: []}, f"{point}: volumes left {volumes}"
    assert pools == {home: [], away: []}, f"{point}: transient pools of kvmops' left {pools}"
    for host in (home, away):  # nothing libvirt does not list either (a probe, a partial file)
        files = sorted(p.name for p in (world.lab_host(host).directory / "lib" / "images" / world.local).iterdir())
        assert files == volumes[host], f"{point}: files on {host}: {files}"
    compared = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", str(world.reference),
                               str(world.volume_file(home, f"{world.name}-root.qcow2"))], capture_output=True, text=True)
    assert compared.returncode == 0, f"{point}: the disk on {home} is not the VM's data: {compared.stdout}"
    seed = hashlib.sha256(world.volume_file(home, f"{world.name}-cidata.iso").read_bytes()).hexdigest()
    assert seed == world.seed_digest, f"{point}: the seed on {home} is not the VM's"
    assert world.nvram_file(home).is_file(), f"{point}: no NVRAM on {home}"
    nvram = hashlib.sha256(world.nvram_file(home).read_bytes()).hexdigest()
    assert nvram == world.nvram_digest, f"{point}: the NVRAM on {home} is not the VM's"
    assert not world.nvram_file(away).exists(), f"{point}: the NVRAM is left on {away}"
    plan = world.kvmops("plan", "--detailed-exitcode")
    assert plan.returncode == 0, f"{point}: the plan after the apply is not empty:\n{plan.stdout[-3000:]}"


def finish(world: MovingVM, point: str, started: float) -> None:
    """Let libvirt end its job, apply again, and assert everything converged where the manifest places the VM."""
    where = world.settle()
    again = world.kvmops("apply")
    assert again.returncode == 0, f"{point}: the next apply did not converge:\n{again.stdout[-3000:]}{again.stderr[-2000:]}"
    converged(world, point)
    world.timings.append(f"{point}; after the kill on {' and '.join(where)}: {time.monotonic() - started:.1f} s")


def move_to(world: MovingVM) -> str:
    """Write the VM's placement to the other host; return that host (``world.home`` once converged)."""
    destination = "h2" if world.home == "h1" else "h1"
    world.write_vm(destination)
    return destination


def watching(world: MovingVM) -> TwiceRunning:
    return TwiceRunning({host: world.uri(host) for host in ("h1", "h2")}, world.uuid)


def test_a_kill_before_any_mutating_call_of_a_live_move_with_storage_copy_loses_doubles_and_leaks_nothing(moving_vm):
    world = moving_vm
    started = time.monotonic()
    calls: list[str] = []
    with watching(world) as watcher:
        n = 0
        while True:
            n += 1
            point_started = time.monotonic()
            destination = move_to(world)
            killed = world.kvmops("apply", crash_at=n)
            world.home = destination
            if killed.returncode == 0:  # fewer than n mutating calls: the apply ran to its end
                converged(world, f"the move without a kill ({n - 1} mutating calls)")
                break
            crash = re.search(rf"{hv.CRASH_AT_VARIABLE}={n}: SIGKILL before mutating call {n}: (.*)", killed.stderr)
            assert killed.returncode == -9 and crash, killed.stdout[-3000:] + killed.stderr[-3000:]
            calls.append(crash.group(1).split("(", 1)[0])
            if calls[-1] == "migrate":
                world.migrate_call = n
            finish(world, f"kill before call {n}, {crash.group(1)}", point_started)
    assert watcher.seen == [], watcher.seen
    print(f"\nlive move with storage copy: {len(calls)} kill points in {time.monotonic() - started:.1f} s "
          f"({watcher.looks} looks for a VM running twice)")
    for line in world.timings:
        print("  ", line)
    for call in ("send_volume", "send_file", "migrate", "delete_volume", "delete_file", "set_owner"):
        assert call in calls, f"no kill before {call}: {calls}"


def test_a_kill_at_any_point_of_the_move_that_replaces_what_an_interrupted_one_copied_loses_nothing(moving_vm):
    """The state a kill right before the migration leaves (the seed and the NVRAM copied to the destination, recorded
    in the mark as sent) makes the next move replace those copies first: a kill before each of its calls up to its
    migration.  (The calls after it are the first test's.)"""
    world = moving_vm
    if not world.migrate_call:
        pytest.skip("needs the kill points of the first test")
    started, first = time.monotonic(), len(world.timings)
    calls: list[str] = []
    with watching(world) as watcher:
        m = 0
        while not calls or not calls[-1].startswith("migrate("):
            m += 1
            point_started = time.monotonic()
            destination = move_to(world)
            interrupted = world.kvmops("apply", crash_at=world.migrate_call)
            assert interrupted.returncode == -9 and "before mutating call" in interrupted.stderr, interrupted.stderr[-3000:]
            killed = world.kvmops("apply", crash_at=m)
            world.home = destination
            crash = re.search(rf"{hv.CRASH_AT_VARIABLE}={m}: SIGKILL before mutating call {m}: (.*)", killed.stderr)
            assert killed.returncode == -9 and crash, killed.stdout[-3000:] + killed.stderr[-3000:]
            calls.append(crash.group(1))
            finish(world, f"kill before call {m} of the move after a kill before its migration, {crash.group(1)}",
                   point_started)
    assert watcher.seen == [], watcher.seen
    print(f"\nthe move after one killed before its migration: {len(calls)} kill points in "
          f"{time.monotonic() - started:.1f} s")
    for line in world.timings[first:]:
        print("  ", line)
    assert any(call.startswith("delete_volume(") and "cidata.iso" in call for call in calls), calls
    assert any(call.startswith("delete_file(") for call in calls), calls


def test_a_kill_at_a_random_moment_of_libvirts_copy_loses_doubles_and_leaks_nothing(moving_vm):
    world = moving_vm
    rng = random.Random(SEED)
    print(f"\nkill seed {SEED} (KVMOPS_KILL_SEED={SEED} repeats these delays)")
    started, first = time.monotonic(), len(world.timings)
    with watching(world) as watcher:
        for attempt in range(1, RANDOM_KILLS + 1):
            point_started = time.monotonic()
            destination = move_to(world)
            with world.slow_copy() as domain:
                process = world.kvmops("apply", wait=False)
                assert copying(domain, process), process.communicate()
                delay = rng.uniform(0, DISK / (COPY_MIB_PER_SECOND * 1024 * 1024))
                time.sleep(delay)
                at = progress(domain)
                process.kill()
            process.communicate()
            world.home = destination
            finish(world, f"random kill {attempt}, {delay:.2f} s into the copy ({at})", point_started)
    assert watcher.seen == [], watcher.seen
    print(f"{RANDOM_KILLS} random kills in {time.monotonic() - started:.1f} s")
    for line in world.timings[first:]:
        print("  ", line)


@pytest.mark.parametrize(("restarted", "then"), [("destination", "onward"), ("destination", "back"),
                                                   ("source", "onward")])
def test_a_libvirtd_restarted_in_the_middle_of_the_copy_loses_doubles_and_leaks_nothing(moving_vm, restarted, then):
    """``then``: the next apply still moves the VM (``onward``), or its placement names its old host again (``back``:
    the copies the cut-short move began on the destination are its to remove)."""
    world = moving_vm
    point_started = time.monotonic()
    source = world.home
    destination = move_to(world)
    daemon = world.lab_host(destination if restarted == "destination" else source)
    with watching(world) as watcher:
        with world.slow_copy() as domain:
            process = world.kvmops("apply", wait=False)
            assert copying(domain, process), process.communicate()
            time.sleep(0.5)
            at = progress(domain)
            daemon.kill_libvirtd()
        daemon.restart_libvirtd()
        process.communicate(timeout=600)
        world.home = destination
        if then == "back":
            world.write_vm(source)
            world.home = source
        finish(world, f"{restarted}'s libvirtd restarted ({at}; that apply's exit status {process.returncode}), "
                      f"then {then}", point_started)
    assert watcher.seen == [], watcher.seen
    print(f"\n{world.timings[-1]}")


def test_the_guest_never_booted_again(moving_vm):
    world = moving_vm
    uptime, _address = labfleet.heartbeat(world.uri(world.home), world.name)
    elapsed = time.monotonic() - world.booted
    assert uptime > elapsed / 2, (uptime, elapsed)  # one booted again would be up for seconds, not minutes
    print(f"\nthe guest has been up {uptime:.0f} s, since its first start {elapsed:.0f} s ago, through every move")




def test_a_source_libvirtd_restarted_as_the_destination_takes_over_leaves_a_stale_half_the_next_apply_discards(
        moving_vm):
    """libvirt ends a live move on the source (kills its QEMU, forgets its definition) once the destination holds the
    guest (paused, for kvmops to resume once the source has let go); a source libvirtd that dies right then comes
    back with its half paused at the switch-over and still defined: the VM is on both hosts, running on neither.
    The next apply proves which half is stale, resumes the guest on the destination, discards the stale half, then
    deletes the copies left on the source; nothing ever runs twice.  (The moment is a race with libvirt's own end of the job: the
    test tries a few moves until it wins one.)"""
    world = moving_vm
    halves = 0
    with watching(world) as watcher:
        for attempt in range(1, 6):
            point_started = time.monotonic()
            source = world.home
            destination = move_to(world)
            daemon = world.lab_host(source)
            there = libvirt.openReadOnly(world.uri(destination))
            try:
                with world.slow_copy() as domain:
                    process = world.kvmops("apply", wait=False)
                    assert copying(domain, process), process.communicate()
                    while process.poll() is None:
                        if handed_over(there, world.uuid):
                            break  # the destination holds the guest: libvirt is ending the job on the source
                        time.sleep(0.001)
                    daemon.kill_libvirtd()
            finally:
                there.close()
            daemon.restart_libvirtd()
            process.communicate(timeout=600)
            world.home = destination
            halves += len(world.settle()) == 2
            finish(world, f"{source}'s libvirtd restarted as {destination} took the guest over, attempt {attempt}",
                   point_started)
            if halves:
                break
    assert watcher.seen == [], watcher.seen
    print(f"\n{world.timings[-1]}")
    assert halves, "libvirt ended every move before its source's libvirtd died: no stale half to discard"




def test_a_destination_libvirtd_killed_at_the_hand_over_never_leaves_the_guest_running_on_both_hosts(moving_vm):
    """The moment libvirt 9.0 ran a guest on both hosts: the destination's libvirtd dies as it finishes the job.
    Moved unpaused, the destination had already resumed the guest, and the source, never hearing the end, resumed its
    own copy too. Moved paused (``VIR_MIGRATE_PAUSED``), the destination holds the guest paused until kvmops resumes
    it, once libvirt's job on the source has returned: the guest runs on one host at every moment (a watcher looks
    every 0.1 s). Depending on whether the source heard the end, the guest is then held paused on the destination
    (the next apply resumes it) or the source kept it, the destination keeping a copy that never ran (the next apply
    discards that copy and moves the guest again, replacing the disk copy it began); either way the next apply
    converges, with nothing lost, doubled or leaked. Two attempts, each moving the guest the other way."""
    world = moving_vm
    outcomes = []
    with watching(world) as watcher:
        for attempt in (1, 2):
            point_started = time.monotonic()
            source = world.home
            destination = move_to(world)
            daemon = world.lab_host(destination)
            there = libvirt.openReadOnly(world.uri(destination))
            try:
                with world.slow_copy() as domain:
                    process = world.kvmops("apply", wait=False)
                    assert copying(domain, process), process.communicate()
                    while process.poll() is None and not handed_over(there, world.uuid):
                        time.sleep(0.001)
                    killed = process.poll() is None
                    daemon.kill_libvirtd()
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    there.close()
            daemon.restart_libvirtd()
            process.communicate(timeout=600)
            assert killed, f"attempt {attempt}: the apply ended before the destination held the guest"
            outcomes.append("the source kept the guest" if source in world.settle() else "the destination held it")
            world.home = destination
            finish(world, f"{destination}'s libvirtd killed at the hand-over, attempt {attempt} "
                          f"({outcomes[-1]})", point_started)
    assert watcher.seen == [], watcher.seen
    print(f"\n{'; '.join(world.timings[-2:])}")


def handed_over(there: libvirt.virConnect, uuid: str) -> bool:
    """Return whether the destination has finished its part of a live move: the guest is there, held paused for
    kvmops to resume once the source lets go (or already running)."""
    with contextlib.suppress(libvirt.libvirtError):
        state = there.lookupByUUIDString(uuid).state()
        return state[0] == libvirt.VIR_DOMAIN_RUNNING or tuple(state) == (libvirt.VIR_DOMAIN_PAUSED,
                                                                          libvirt.VIR_DOMAIN_PAUSED_USER)
    return False


class SharedVM(MovingVM):
    """A VM whose only disk is on the shared pool, booted directly (no firmware, no seed): its live move copies
    nothing, so the marks hold no record of copies, only of the move itself."""

    def write_vm(self, host: str, run_strategy: str = "Always") -> None:
        guest = tinyguest.build()
        (self.manifests / "vm.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": self.name},
            "spec": {
                "memory": "128MiB", "virtType": "qemu", "machine": "pc", "runStrategy": run_strategy,
                "install": {"kernel": {"pool": self.shared, "volume": EFI_KERNEL},
                            "initrd": {"pool": self.shared, "volume": guest.initrd.name},
                            "cmdline": f"{guest.cmdline} {tinyguest.HEARTBEAT}"},
                "disks": [{"name": "root", "pool": self.shared, "size": "16MiB", "deletionPolicy": "Delete"}],
                "placement": {"host": host},
            },
        }, sort_keys=False), encoding="utf-8")


@pytest.fixture
def shared_vm(lab, tiny_guest, tmp_path) -> Iterator[SharedVM]:
    """Return a :class:`SharedVM` running on h1 (booted); removed afterwards."""
    prefix = f"{lab.name}-s{uuid.uuid4().hex[:4]}"
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    world = SharedVM(lab, manifests, prefix, tmp_path / "unused")
    try:
        shared = boot_files(lab, tiny_guest, prefix)  # (the bzImage: QEMU's direct boot takes it too)
        (manifests / "hosts.yaml").write_text(yaml.safe_dump_all([
            {"apiVersion": "kvmops/v1", "kind": "Host", "metadata": {"name": host, "labels": {"lab": prefix}},
             "spec": {"uri": world.uri(host)}} for host in ("h1", "h2")], sort_keys=False), encoding="utf-8")
        (manifests / "pools.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kvmops/v1", "kind": "StoragePool", "metadata": {"name": world.shared},
            "spec": {"path": str(shared), "shared": True, "hosts": {}}}, sort_keys=False), encoding="utf-8")
        world.write_vm("h1")
        created = world.kvmops("apply")
        assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-2000:]
        with hv.Hypervisor.open(world.uri("h1"), read_only=True) as h:
            world.uuid = next(d.uuid for d in h.list_domains() if d.name == world.name)
        labfleet.heartbeat(world.uri("h1"), world.name, timeout=120)
        yield world
    finally:
        labfleet.reset(lab, prefix)


def test_a_source_libvirtd_restarted_as_the_destination_takes_over_a_move_that_copied_nothing_is_finished_too(
        shared_vm):
    """The same moment as above for a VM whose disk is on the shared pool: the move copies nothing, so only the
    records of the move itself (begun to h2 in the source's mark, from h1 in the destination's) prove which half is
    stale.  The next apply discards it: the VM is on exactly one host, and the plan is empty."""
    world = shared_vm
    halves = 0
    with watching(world) as watcher:
        for attempt in range(1, 6):
            source = world.home
            destination = move_to(world)
            daemon = world.lab_host(source)
            there = libvirt.openReadOnly(world.uri(destination))
            try:
                with world.slow_copy():  # the guest's RAM, at 32 MiB/s: the switch-over comes seconds later
                    process = world.kvmops("apply", wait=False)
                    while process.poll() is None:
                        if handed_over(there, world.uuid):
                            break  # the destination holds the guest: libvirt is ending the job on the source
                        time.sleep(0.001)
                    killed = process.poll() is None
                    daemon.kill_libvirtd()
            finally:
                there.close()
            daemon.restart_libvirtd()
            process.communicate(timeout=600)
            assert killed, f"attempt {attempt}: the apply ended before the destination ran the guest"
            world.home = destination
            where = world.settle()
            halves += len(where) == 2
            again = world.kvmops("apply")
            assert again.returncode == 0, f"attempt {attempt} ({where}): the next apply did not converge:\n" \
                                          f"{again.stdout[-3000:]}{again.stderr[-2000:]}"
            assert world.where() == [destination], f"attempt {attempt}: on {world.where()}"
            with hv.Hypervisor.open(world.uri(destination), read_only=True) as h:
                assert h.domain_power(world.name)[0] is model.PowerState.RUNNING
                owner = domxml.parse_owner(domxml.parse_tree(h.domain_xml(world.name)))
                assert (owner.host, owner.moved_from, owner.moving_to) == (destination, source, "")
                assert h.volume_exists(world.shared, f"{world.name}-root.qcow2")  # the disk: shared, never deleted
            plan = world.kvmops("plan", "--detailed-exitcode")
            assert plan.returncode == 0, f"attempt {attempt}: the plan after the apply is not empty:\n" \
                                         f"{plan.stdout[-3000:]}"
            if halves:
                break
    assert watcher.seen == [], watcher.seen
    print(f"\nstale half discarded at attempt {attempt}")
    assert halves, "libvirt ended every move before its source's libvirtd died: no stale half to discard"
