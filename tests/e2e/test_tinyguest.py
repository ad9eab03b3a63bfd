"""Self-test of tests/e2e/tinyguest.py on the real libvirtd: build, boot, lease, ACPI shutdown.

Everything here goes through libvirt directly (no kvmops), with the XML of
:func:`tinyguest.network_xml` and :func:`tinyguest.domain_xml`, which is what kvmops must
produce for its own tiny guests.  Every libvirt object and file is named
``kvmops-g-<6 hex>-...`` and removed afterwards whatever happens; objects of earlier runs that
died (their owner process is gone) are swept first.  Nothing else on this shared libvirtd is
touched.

Run with ``-s`` to see the measurements (build cold/warm, boot to lease, shutdown), and with
``KVMOPS_TINYGUEST_BOOTS=N`` to boot N guests in turn and print the median (the suite boots one).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import random
import re
import shutil
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests.lab import process_start
from tests.e2e import tinyguest

pytestmark = pytest.mark.e2e

PREFIX = "kvmops-g-"
WORK_ROOT = Path(os.environ.get("KVMOPS_E2E_WORKDIR", "/var/tmp"))
# Boots of the lease-and-shutdown test: one proves it; KVMOPS_TINYGUEST_BOOTS=5 for a median worth printing.
BOOTS = int(os.environ.get("KVMOPS_TINYGUEST_BOOTS", "1"))
READY_TIMEOUT = 90.0  # seconds; a boot takes ~3 s, but the host is shared and may be busy
SHUTDOWN_LIMIT = 10.0
_TOKEN = re.compile(r"^" + re.escape(PREFIX) + r"([0-9a-f]{6})(?:-|$)")


# -- ownership and cleanup --------------------------------------------------------------



def _alive(workdir: Path) -> bool:
    """Return whether the test process that wrote ``workdir/owner`` still runs."""
    try:
        pid, started = (workdir / "owner").read_text(encoding="ascii").split()
        return process_start(int(pid)) == started
    except (OSError, ValueError):
        return False


def _remove(connection, prefix: str) -> None:
    """Destroy and undefine every domain, then every network, named ``prefix...``."""
    for domain in connection.listAllDomains(0):
        if domain.name().startswith(prefix):
            with contextlib.suppress(libvirt.libvirtError):
                if domain.isActive():
                    domain.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    for network in connection.listAllNetworks(0):
        if network.name().startswith(prefix):
            with contextlib.suppress(libvirt.libvirtError):
                if network.isActive():
                    network.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                network.undefine()


def _sweep_abandoned(connection) -> None:
    """Remove ``kvmops-g-<token>-*`` objects and directories whose owner process is gone.

    A run creates its work directory (with the owner file) before any libvirt object, so an
    object without a live owner is left over from a run that died.
    """
    names = [d.name() for d in connection.listAllDomains(0)] + [n.name() for n in connection.listAllNetworks(0)]
    names += [path.name for path in WORK_ROOT.glob(f"{PREFIX}*")]
    for token in sorted({m.group(1) for m in map(_TOKEN.match, names) if m}):
        workdir = WORK_ROOT / f"{PREFIX}{token}"
        if not _alive(workdir):
            _remove(connection, f"{PREFIX}{token}-")
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Lab:
    """This test's name prefix, work directory and isolated DHCP network."""

    connection: object
    prefix: str
    workdir: Path
    network: libvirt.virNetwork | None = None
    subnet: str = ""

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"


@pytest.fixture
def lab(system_connection):
    """Yield a :class:`Lab`; afterwards remove everything named with its prefix, whatever happened."""
    _sweep_abandoned(system_connection)
    token = uuid.uuid4().hex[:6]
    prefix = f"{PREFIX}{token}-"
    workdir = WORK_ROOT / f"{PREFIX}{token}"
    workdir.mkdir(parents=True)
    os.chmod(workdir, 0o755)
    (workdir / "owner").write_text(f"{os.getpid()} {process_start(os.getpid())}\n", encoding="ascii")
    try:
        yield Lab(system_connection, prefix, workdir)
    finally:
        try:
            _remove(system_connection, prefix)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _used_subnets(connection) -> set[str]:
    """Return the ``a.b.c`` of every IPv4 /24 that libvirt networks or host routes use."""
    used = set()
    for network in connection.listAllNetworks(0):
        with contextlib.suppress(libvirt.libvirtError):
            used.update(re.findall(r"address=['\"](\d+\.\d+\.\d+)\.\d+['\"]", network.XMLDesc(0)))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            destination = int(line.split()[1], 16)
            used.add(".".join(str(destination >> shift & 255) for shift in (0, 8, 16)))
    return used


def _start_network(lab: Lab) -> None:
    """Define and start the lab's network on a free ``10.213.<n>.0/24`` (retry on a clash)."""
    token = lab.prefix[len(PREFIX):-1]
    last_error = None
    for _attempt in range(8):
        free = [n for n in range(1, 255) if f"10.213.{n}" not in _used_subnets(lab.connection)]
        subnet = f"10.213.{random.choice(free)}"
        xml = tinyguest.network_xml(lab.name("net"), f"kvg{token}", subnet)
        network = lab.connection.networkDefineXML(xml)
        try:
            network.create()
        except libvirt.libvirtError as error:  # another run took the subnet meanwhile
            last_error = error
            with contextlib.suppress(libvirt.libvirtError):
                network.undefine()
            continue
        lab.network, lab.subnet = network, subnet
        return
    raise AssertionError(f"could not start a network: {last_error}")


# -- the tests ---------------------------------------------------------------------------


def _readable_by_anyone(path: Path) -> bool:
    """Return whether ``path`` can be read, and every directory above it traversed, by any user."""
    if path.stat().st_mode & 0o004 == 0:
        return False
    return all(parent.stat().st_mode & 0o005 == 0o005 for parent in path.parents)


def test_build_is_cached_and_readable_by_qemu(lab, tiny_guest):
    """A cold build makes a PVH-bootable vmlinux and an initramfs; a warm one returns at once."""
    # Cold: a fresh cache, the packages linked in from the shared cache (same content, same
    # name) so as not to download them on every run; the shared cache fetched them once.
    cold_cache = lab.workdir / "cache"
    (cold_cache / "debs").mkdir(parents=True)
    shared_debs = tiny_guest.kernel.parent.parent.parent / "debs"
    for deb in shared_debs.glob("*.deb"):
        try:
            os.link(deb, cold_cache / "debs" / deb.name)
        except OSError:  # another file system
            shutil.copyfile(deb, cold_cache / "debs" / deb.name)
    started = time.monotonic()
    cold = tinyguest.build(cold_cache)
    cold_seconds = time.monotonic() - started
    started = time.monotonic()
    warm = tinyguest.build(cold_cache)
    warm_seconds = time.monotonic() - started
    started = time.monotonic()
    refreshed = tinyguest.build(cold_cache, refresh=True)  # asks apt, finds the same packages
    refresh_seconds = time.monotonic() - started
    print(f"\ntinyguest build: cold {cold_seconds:.2f} s (packages already downloaded), "
          f"warm {warm_seconds * 1000:.1f} ms, refresh (apt-cache, no change) {refresh_seconds:.2f} s")

    assert warm == cold == refreshed
    assert warm_seconds < 0.5
    assert cold.cmdline == tiny_guest.cmdline and "console=ttyS0" in cold.cmdline
    if cold.kernel.parent.name == tiny_guest.kernel.parent.name:  # same key: same recipe and debs
        assert cold.kernel.read_bytes() == tiny_guest.kernel.read_bytes()  # so the same bytes
        assert cold.initrd.read_bytes() == tiny_guest.initrd.read_bytes()
    for guest in (tiny_guest, cold):
        for path in (guest.kernel, guest.initrd):
            assert path.stat().st_mode & 0o777 == 0o644, path
            assert guest.kernel.parent.stat().st_mode & 0o777 == 0o755
            assert _readable_by_anyone(path), f"{path}: QEMU (user libvirt-qemu) could not read it"
    kind = "PVH ELF" if tiny_guest.kernel.read_bytes()[:4] == b"\x7fELF" else "bzImage"
    print(f"tinyguest kernel: {tiny_guest.kernel.name} ({kind}), "
          f"{tiny_guest.kernel.stat().st_size >> 20} MiB; initrd {tiny_guest.initrd.stat().st_size >> 10} KiB")
    if tiny_guest.kernel.name == "vmlinux":
        assert tinyguest.has_pvh_note(tiny_guest.kernel.read_bytes())
    initrd = tiny_guest.initrd.read_bytes()
    assert initrd.startswith(b"070701") and b"TRAILER!!!" in initrd
    for member in (b"init\x00", b"bin/busybox\x00", b"lib/modules/virtio_net.ko\x00", b"etc/acpi/PWRF/00000080\x00"):
        assert member in initrd


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, bz2.compress])
def test_extract_vmlinux_finds_a_payload_by_its_magic(compress):
    """Without a usable boot header, the payload is found by its compression magic."""
    elf = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
    assert tinyguest.extract_vmlinux(b"\x00" * 1000 + compress(elf) + b"\x10\x42\x00\x00") == elf
    assert tinyguest.extract_vmlinux(b"\x00" * 1000 + compress(b"not an ELF")) is None


@pytest.mark.timeout(900)
def test_boots_gets_a_lease_and_shuts_down_gracefully(lab, tiny_guest):
    """Boot, DHCP lease, READY marker, then virDomainShutdown stops it within 10 s (reason SHUTDOWN)."""
    _start_network(lab)
    print(f"\ntinyguest network {lab.network.name()} on {lab.subnet}.0/24")

    timings = []
    for run in range(1, BOOTS + 1):
        # A new domain (so a new MAC) each time: after a restart libvirt would still report
        # the previous boot's lease, which dnsmasq keeps for an hour.
        name = lab.name(f"vm{run}")
        serial_log = lab.workdir / f"{name}.log"
        xml = tinyguest.domain_xml(name, tiny_guest, network=lab.network.name(), serial_log=serial_log)
        domain = lab.connection.defineXML(xml)
        started = time.monotonic()
        domain.create()
        created = time.monotonic()
        lease_ip = _wait_for_lease(domain, READY_TIMEOUT)
        leased = time.monotonic()
        ready_ip = tinyguest.wait_for_ready(serial_log, timeout=READY_TIMEOUT)
        ready = time.monotonic()
        assert ready_ip == lease_ip, serial_log.read_text(errors="replace")
        assert ready_ip.startswith(lab.subnet + ".")
        assert lease_ip in {lease["ipaddr"] for lease in lab.network.DHCPLeases()}
        uptime = re.search(r"after ([0-9.]+)s of uptime", serial_log.read_text(errors="replace"))

        stopping = time.monotonic()
        domain.shutdown()  # ACPI power button, not a destroy
        while domain.isActive() and time.monotonic() - stopping < SHUTDOWN_LIMIT + 5:
            time.sleep(0.02)
        stopped = time.monotonic()
        state, reason = domain.state()
        log = _wait_for_text(serial_log, tinyguest.POWEROFF_MARKER, 2.0)  # virtlogd may lag
        assert state == libvirt.VIR_DOMAIN_SHUTOFF, f"still running {stopped - stopping:.1f} s after shutdown():\n{log}"
        assert reason == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, f"shut off for reason {reason}, not SHUTDOWN"
        assert stopped - stopping <= SHUTDOWN_LIMIT
        assert tinyguest.POWEROFF_MARKER in log

        timing = {
            "create": created - started,
            "lease": leased - started,
            "ready": ready - started,
            "guest uptime at lease": float(uptime.group(1)) if uptime else float("nan"),
            "shutdown": stopped - stopping,
        }
        timings.append(timing)
        domain.undefine()
        print(f"tinyguest boot {run}: " + ", ".join(f"{key} {value:.2f} s" for key, value in timing.items())
              + f" (ip {lease_ip})")
    print("tinyguest median of %d: " % len(timings) + ", ".join(
        f"{key} {statistics.median(t[key] for t in timings):.2f} s" for key in timings[0]))


def _wait_for_text(path: Path, text: str, timeout: float) -> str:
    """Return the contents of ``path`` once they contain ``text``, or as they are after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        contents = path.read_text(errors="replace")
        if text in contents or time.monotonic() > deadline:
            return contents
        time.sleep(0.05)


def _wait_for_lease(domain, timeout: float) -> str:
    """Return the domain's IPv4 address from libvirt's DHCP leases once it has one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(libvirt.libvirtError):
            interfaces = domain.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
            for interface in interfaces.values():
                for address in interface.get("addrs") or []:
                    if address["type"] == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                        return address["addr"]
        if not domain.isActive():
            raise AssertionError("the domain stopped before it got a lease")
        time.sleep(0.05)
    raise AssertionError(f"no DHCP lease after {timeout} s")


@pytest.mark.timeout(300)
def test_without_a_nic_it_is_ready_at_once_and_restarts_with_a_fresh_log(lab, tiny_guest):
    """No NIC: ``READY ip=none``.  A restart truncates the serial log (``append='off'``)."""
    name = lab.name("nonic")
    serial_log = lab.workdir / f"{name}.log"
    domain = lab.connection.defineXML(tinyguest.domain_xml(name, tiny_guest, network=None, serial_log=serial_log))
    for boot in (1, 2):
        started = time.monotonic()
        domain.create()
        assert tinyguest.wait_for_ready(serial_log, timeout=READY_TIMEOUT) == "none"
        ready = time.monotonic()
        log = serial_log.read_text(errors="replace")
        assert log.count("TINYGUEST READY") == 1 and tinyguest.POWEROFF_MARKER not in log, log
        stopping = time.monotonic()
        domain.shutdown()
        while domain.isActive() and time.monotonic() - stopping < SHUTDOWN_LIMIT + 5:
            time.sleep(0.02)
        assert domain.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
        print(f"\ntinyguest without NIC, boot {boot}: ready {ready - started:.2f} s, "
              f"shutdown {time.monotonic() - stopping:.2f} s")
