"""The crash suite: kill -9 kvmops, or libvirtd, at seeded points; the next pass finishes the job.

Every trial runs on a private libvirtd of :mod:`tests.lab` (so libvirtd itself may be
killed and restarted without disturbing the machine's daemon), applies or prunes the set
of :mod:`tests.e2e.crash` (three VMs with Retain and Delete disks, a network, an image
from a loopback HTTP server, a cloud-init seed, an NVRAM file), kills at a
:class:`~tests.e2e.crash.KillPoint`, re-applies until ``apply`` exits 0, and checks the
world: converged, no volume lost, none leaked, no temporary file left, no domain without
its mark, no foreign object changed.  A failure names the seed and the kill point;
``bench/crash_trials.py`` runs the same trials by the hundred.

``KVMOPS_CRASH_SEED`` picks the seeded kill points (default 8).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import uuid
from pathlib import Path

import libvirt
import pytest

from tests import lab as labs
from tests.e2e import crash, labfleet
from tests.e2e.conftest import PREFIX, start_lab_or_skip

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("KVMOPS_CRASH_SEED", "8"))


@pytest.fixture(scope="module")
def world(lab):
    """Return a :class:`crash.CrashWorld` on the session's lab libvirtd; what it made is removed after the module.

    The lab outlives this module: a VM of the trials left marked in the default scope would
    be a managed domain to every later test on that host (a fleet apply there would refuse
    to prune it as an empty manifest set, and rightly)."""
    world = crash.CrashWorld(lab.hosts[0], lab.name)
    try:
        yield world.open(seed=SEED)
    finally:
        try:
            world.close()
        finally:
            labfleet.reset(lab, world.prefix)


@pytest.fixture(scope="module")
def baseline(world):
    """Return how long an uninterrupted apply and prune take (kill delays are drawn within)."""
    return crash.measure_baseline(world)


def assert_every_invariant_held(results: list[crash.TrialResult]) -> None:
    broken = [r.describe() for r in results if not r.ok]
    assert not broken, f"{len(broken)} of {len(results)} trials broke an invariant:\n" + "\n".join(broken)


# --- the lab ----------------------------------------------------------------------------


def test_a_lab_host_is_a_libvirtd_of_its_own(world):
    """A lab host answers on its own socket with its own hostname and host UUID, not the machine's."""
    conn = libvirt.open(world.host.uri)
    try:
        assert conn.getHostname() == world.host.name != socket.gethostname()
        assert f"<uuid>{world.host.host_uuid}</uuid>" in conn.getCapabilities()
    finally:
        conn.close()


def test_a_killed_lab_libvirtd_restarts_and_finds_its_guest_running(world):
    """kill -9 of a lab libvirtd leaves its guest running; restarted, it reports the guest running again."""
    name = world.vm("restart-probe")
    conn = libvirt.open(world.host.uri)
    conn.createXML(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
                   "<os><type arch='x86_64'>hvm</type></os></domain>", 0)
    conn.close()
    before = world.host.libvirtd_pid
    assert world.host.kill_libvirtd()
    world.host.restart_libvirtd()
    assert world.host.libvirtd_pid not in (None, before)
    conn = libvirt.open(world.host.uri)
    try:
        assert conn.lookupByName(name).isActive() == 1
    finally:
        with contextlib.suppress(libvirt.libvirtError):  # (libvirtd may still be reconnecting to it)
            conn.lookupByName(name).destroy()
        conn.close()


def _processes_in(namespace: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "mnt") == namespace and not labs._zombie(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_a_stopped_lab_leaves_nothing_behind():
    """Stopping a lab whose libvirtd was killed with a guest and a network up leaves no process, mount, bridge or file."""
    name = f"{PREFIX}-lab-{uuid.uuid4().hex[:6]}"
    lab = start_lab_or_skip(name)
    host = lab.hosts[0]
    bridge = labs.bridge_name(PREFIX, name[-4:])
    try:
        conn = libvirt.open(host.uri)
        network = conn.networkDefineXML(
            f"<network><name>{name}-net</name><bridge name='{bridge}'/>"
            "<ip address='10.254.254.1' netmask='255.255.255.0'/></network>")
        network.create()
        conn.createXML(
            f"<domain type='qemu'><name>{name}-vm</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os><devices><interface type='network'>"
            f"<source network='{name}-net'/></interface></devices></domain>", 0)
        conn.close()
        members = host.members()
        mounts = os.readlink(f"/proc/{host.holder_pid}/ns/mnt")  # the lab's mounts live as long as it has a process
        assert len(members) >= 5  # holder, virtlogd, libvirtd, dnsmasq, QEMU
        host.kill_libvirtd()
    finally:
        lab.stop()
    assert not [pid for pid in members if Path(f"/proc/{pid}").exists() and not labs._zombie(pid)]
    assert not _processes_in(mounts)
    assert not list(Path("/sys/fs/cgroup").glob(f"*/machine/qemu-*-{name}-vm.libvirt-qemu"))
    assert not Path(f"/sys/class/net/{bridge}").exists()
    assert bridge not in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert not lab.directory.exists()


# --- crash trials -----------------------------------------------------------------------


def test_an_uninterrupted_apply_and_prune_keep_every_invariant(baseline):
    """Without a kill, the set converges and every invariant holds (else the trials below prove nothing)."""
    assert baseline.apply_passes == 1


def test_an_uninterrupted_prune_converges_in_one_pass(baseline):
    """Pruning VMs together with the network they use converges in one apply."""
    assert baseline.prune_passes == 1


@pytest.mark.parametrize(("kind", "point"), crash.TARGETED, ids=[f"{k}-{p.victim}-{p.at}" for k, p in crash.TARGETED])
def test_a_kill_in_a_known_crash_window_loses_and_leaks_nothing(world, baseline, kind, point):
    """A kill in a window where a crash once lost or leaked something (issue 8, items 4-6) leaves nothing to clean up."""
    assert_every_invariant_held([crash.run_trial(world, kind, point, SEED)])


def test_kvmops_killed_at_seeded_points_of_apply_and_prune_loses_and_leaks_nothing(world, baseline):
    """kill -9 of kvmops at three seeded points (two in an apply, one in a prune), then re-apply: every invariant holds."""
    rng = random.Random(SEED)
    hook = crash.crash_hook_available()
    trials = [(kind, crash.random_point(rng, kind, "kvmops", baseline, hook=hook)) for kind in ("apply", "prune", "apply")]
    assert_every_invariant_held([crash.run_trial(world, kind, point, SEED) for kind, point in trials])


def test_libvirtd_killed_and_restarted_during_apply_and_prune_loses_and_leaks_nothing(world, baseline):
    """kill -9 of libvirtd (then restarted) at a seeded point of an apply and of a prune: every invariant holds."""
    rng = random.Random(SEED + 1)
    trials = [(kind, crash.random_point(rng, kind, "libvirtd", baseline, hook=False)) for kind in ("apply", "prune")]
    assert_every_invariant_held([crash.run_trial(world, kind, point, SEED + 1) for kind, point in trials])
