"""A tiny real guest for end-to-end tests: a Debian kernel and a busybox initramfs.

``build(cache_dir)`` returns a :class:`Guest` (``kernel``, ``initrd``, ``cmdline``) to boot
with libvirt's direct kernel boot (``<os><kernel/><initrd/><cmdline/>``) in a
``<domain type='qemu'>`` (TCG: this host's /dev/kvm cannot run a standard guest kernel).

What the guest does, and what a test can rely on (see :func:`domain_xml` and
:func:`network_xml` for XML that works)::

    serial console (ttyS0)  ->  "TINYGUEST READY ip=10.213.7.23"  once eth0 has a DHCP lease
                                "TINYGUEST READY ip=none"         when the guest has no eth0
    with HEARTBEAT on the       ->  "TINYGUEST UPTIME 12.34 ip=10.213.7.23/24" every second
    kernel command line             (eth0's address now: ip=none without one)
    ACPI power button       ->  "TINYGUEST POWEROFF", then ``poweroff -f``: the domain stops
                                by itself within a second or two, libvirt reason SHUTDOWN

Match the marker with :data:`READY` (or :func:`wait_for_ready` on a serial log file).

Boot it with at least 80 MiB of memory (:func:`domain_xml` gives 128): this kernel takes
~46 MiB before init, and with 64 MiB the guest panics ("Out of memory and no killable
processes").  ``on_poweroff`` must stay ``destroy`` (the default) for the ACPI shutdown to
end the domain.  Shut it down only after READY: an ACPI shutdown sent before acpid listens
(in the first ~1.5-2 s of a boot) is lost for good (measured: the guest never stops), as a
real OS would ignore a power button while it boots.  After a restart of the same domain
libvirt still reports the previous boot's DHCP lease (dnsmasq keeps it an hour), so
wait for the READY marker, not for a lease: ``<log append='off'>`` truncates the serial log
at every start, so an old marker never satisfies :func:`wait_for_ready`.

What it is made of, and why:

- Kernel: Debian's ``linux-image-cloud-amd64`` (the smallest Debian kernel: few drivers,
  so little probing).  Its ``vmlinuz`` is a bzImage with an LZ4 payload (bookworm).  We
  extract the uncompressed ELF ``vmlinux`` (payload located by the boot header, recognised
  by its magic; gzip/xz/lzma/bzip2 with the stdlib, LZ4 in pure Python below, zstd with the
  ``zstd`` tool) and check it carries the Xen ``PHYS32_ENTRY`` ELF note: QEMU then boots it
  directly through PVH (its ``pvh.bin`` option ROM): no real-mode setup, no decompressor.
  It does, on this kernel; it saves only ~0.2 s over the bzImage (LZ4 is quick even under
  TCG; an xz kernel would gain more).  Without the note (a kernel without CONFIG_PVH) we
  keep the bzImage, which boots too.
- Kernel modules, as this kernel builds them as modules (dependencies read from each
  module's ``.modinfo`` ``depends=``: the package has no ``modules.dep`` until depmod runs
  in its postinst), in load order: ``button`` (the ACPI power button: without it the guest
  never hears libvirt's shutdown) and ``evdev`` (busybox acpid reads the button from
  /dev/input/event*; there is no /proc/acpi/event), then ``virtio_ring
  virtio_pci_modern_dev virtio_pci_legacy_dev virtio virtio_pci`` (the PCI transport) and
  ``failover net_failover virtio_net`` (the NIC).  The 8250 serial driver, devtmpfs,
  AF_PACKET and the ACPI core are built in.
- ``busybox`` from Debian's ``busybox-static`` (one static binary for sh, mount, insmod, ip,
  ifconfig, route, udhcpc, acpid, poweroff...), linked under /bin by symlinks in the cpio.
- ``/init`` (PID 1): mounts proc, sysfs and devtmpfs, loads button and evdev, starts
  ``acpid`` (power button -> /etc/acpi/PWRF/00000080 -> ``poweroff -f``) and waits until it
  listens, loads the virtio modules, brings up lo and eth0 and runs ``udhcpc``, whose
  script sets the address and default route and prints the READY marker; udhcpc then stays
  in the background and renews the lease.
- The initramfs is an uncompressed newc cpio (~2.4 MiB) written in pure Python: no root
  needed for its /dev/console node, no cpio tool, nothing for the guest to decompress.
- The kernel command line is :data:`CMDLINE`; each option was measured (see there).

Nothing is installed on the host: the two packages are fetched with ``apt-get download``
(after ``apt-get update`` only if apt does not know them) and unpacked with ``dpkg-deb -x``
into a scratch directory, so no kernel postinst hook ever runs.

Cache (``$KVMOPS_E2E_CACHE``, default ``/var/tmp/kvmops-e2e-cache``), everything by content,
readable by QEMU's user libvirt-qemu (directories 0755, files 0644)::

    debs/<sha256>.deb                  the packages, named by the SHA-256 apt publishes
    guests/<key>/vmlinux|bzImage       key: SHA-256 of this file's source and of the debs
    guests/<key>/initrd.cpio
    guests/<key>/guest.json            what went in (kernel release, modules, debs)
    recipes/<sha256 of this file>      the key this version of this file built last

A second ``build()`` reads the recipe pointer and returns at once without asking apt
anything (it works offline, and the guest does not change under a test run); pass
``refresh=True`` to ask apt again and pick up a newer Debian kernel.  Any edit of this file
makes a new recipe, hence one rebuild (a few seconds; the debs stay).  Builds are
serialised by a lock file and published by renames, so concurrent sessions may share the
cache; only the newest few guests are kept.

Measured on this host (2 cores shared with ~15 other TCG guests and other test runs, so
single runs vary by seconds; libvirtd 9.0, QEMU 7.2, kernel 6.1.0-56-cloud-amd64, busybox
1.35, 128 MiB, 1 vCPU, machine ``pc``, SeaBIOS):

- build: cold ~7 s (apt-cache ~2 s, download ~1 s, dpkg-deb ~2 s, LZ4 ~1.5 s), or ~3-6 s
  with the debs cached; warm 0.2 ms;
- ``virDomainCreate`` -> DHCP lease (the READY marker follows within 50 ms): median of a
  run ~2.5-4 s (single boots 2.3-4.3 s, up to 11 s while the host was saturated), of which
  ~0.5 s is libvirt starting QEMU, ~0.4 s firmware and loading, ~1.8 s the guest itself
  (its uptime at the lease);
- ``virDomainShutdown`` -> shut off, reason SHUTDOWN: ~1.3-2 s, of which the guest takes
  ~25 ms (power button to ``poweroff -f``); the rest is QEMU and libvirt tearing down.
- Tried and not worth it: qboot (``<loader type='rom'>/usr/share/qemu/qboot.rom``) instead
  of SeaBIOS, ~0.1 s at best; ``quiet``, no measurable change.
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

KERNEL_PACKAGE = "linux-image-cloud-amd64"  # a metapackage: its Depends names the image
BUSYBOX_PACKAGE = "busybox-static"
# Kernel modules the guest loads (with their dependencies), in this order: the power button
# first, so that acpid listens as early as possible, then the NIC.
ACPI_MODULES = ("button", "evdev")
MODULES = (*ACPI_MODULES, "virtio_pci", "virtio_net")

# console=ttyS0: the serial port is the guest's only output.  The rest skips work that is
# useless in a throwaway guest.  Measured together (A/B, 5 boots each, median guest uptime
# at the lease) they take the guest's boot from ~2.3 s to ~1.8 s; cryptomgr.notests alone
# is ~0.2 s of it (crypto_algapi_init runs every self-test, slow under TCG).
#   cryptomgr.notests    no crypto self-tests at boot
#   mitigations=off      no speculation mitigations: cheaper entry/exit and context switches
#   no_timer_check       no IO-APIC timer check
#   tsc=reliable         no clocksource watchdog
#   i8042.noaux          no PS/2 mouse probing
#   8250.nr_uarts=1      one legacy serial port to register, not four
# quiet made no measurable difference (the kernel's ~400 lines are cheap on the emulated
# UART) but keeps the serial log to the markers and errors; drop it to debug a boot
# (``dataclasses.replace(guest, cmdline=...)``).
CMDLINE = "console=ttyS0 quiet cryptomgr.notests mitigations=off no_timer_check tsc=reliable i8042.noaux 8250.nr_uarts=1"

READY = re.compile(r"TINYGUEST READY ip=(\S+)")
UPTIME = re.compile(r"TINYGUEST UPTIME ([0-9.]+)")  # with HEARTBEAT on the command line, every second
HEARTBEAT_LINE = re.compile(r"TINYGUEST UPTIME ([0-9.]+) ip=(\S+)")  # the uptime and eth0's address (a.b.c.d/prefix)
HEARTBEAT = "tinyguest.heartbeat"
POWEROFF_MARKER = "TINYGUEST POWEROFF"

DEFAULT_CACHE = Path("/var/tmp/kvmops-e2e-cache")


@dataclass(frozen=True)
class Guest:
    """What libvirt's direct kernel boot needs: ``<kernel>``, ``<initrd>`` and ``<cmdline>``."""

    kernel: Path
    initrd: Path
    cmdline: str


def default_cache_dir() -> Path:
    """Return ``$KVMOPS_E2E_CACHE`` or ``/var/tmp/kvmops-e2e-cache``."""
    return Path(os.environ.get("KVMOPS_E2E_CACHE") or DEFAULT_CACHE)


def build(cache_dir: Path | None = None, *, refresh: bool = False) -> Guest:
    """Return the tiny guest, building it into ``cache_dir`` unless it is there already.

    Without ``refresh`` a guest built earlier by this version of this file is returned at
    once; with it, apt is asked for the current packages first (a rebuild if they changed).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    recipe = _recipe_hash()
    pointer = cache / "recipes" / recipe
    if not refresh:
        guest = _load(cache, pointer)
        if guest is not None:
            return guest
    _mkdirs(cache)
    with _locked(cache / ".lock"):
        if not refresh:  # another process may have built it while we waited for the lock
            guest = _load(cache, pointer)
            if guest is not None:
                return guest
        packages = _resolve()
        key = hashlib.sha256(
            "\n".join([recipe, *(f"{p['Package']} {p['SHA256']}" for p in packages)]).encode()
        ).hexdigest()[:32]
        target = cache / "guests" / key
        if not (target / "guest.json").exists():
            debs = [_fetch(cache, package) for package in packages]
            _build_into(cache, target, *debs)
        _write_atomically(pointer, key.encode())
        guest = _load(cache, pointer)
        assert guest is not None
        _prune(cache)
        return guest


# -- libvirt XML and the serial log ----------------------------------------------------

DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"


def network_xml(name: str, bridge: str, subnet: str) -> str:
    """Return an isolated libvirt network with DHCP on ``subnet`` (``"10.213.7"``: a /24).

    No ``<forward>``: the guests reach the host and each other, nothing else, and libvirt adds
    no NAT rules.  No DNS server (``<dns enable='no'/>``: dnsmasq serves DHCP only).
    dnsmasq's ``no-ping`` option skips its ICMP probe of an address before offering it,
    which otherwise delays every new lease by ~3 s (measured: boot to lease 5.9-7.4 s
    without it, 2.5-3.0 s with it).
    """
    return f"""<network xmlns:dnsmasq='{DNSMASQ_NS}'>
  <name>{escape(name)}</name>
  <bridge name={quoteattr(bridge)} stp='off' delay='0'/>
  <dns enable='no'/>
  <ip address='{subnet}.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='{subnet}.10' end='{subnet}.250'/>
    </dhcp>
  </ip>
  <dnsmasq:options>
    <dnsmasq:option value='no-ping'/>
  </dnsmasq:options>
</network>
"""


def domain_xml(name: str, guest: Guest, *, network: str | None, serial_log: Path, memory_mib: int = 128,
               mac: str | None = None) -> str:
    """Return a TCG domain that boots ``guest`` directly, with a virtio NIC on ``network``.

    The serial console is a pty (``virsh console`` works) whose output virtlogd also writes
    to ``serial_log`` (created by libvirt; its directory must exist).  No USB controller, no
    balloon, no graphics: every device is PCI probing the guest need not do.
    """
    nic = ""
    if network is not None:
        mac_element = f"\n      <mac address={quoteattr(mac)}/>" if mac else ""
        nic = f"""
    <interface type='network'>{mac_element}
      <source network={quoteattr(network)}/>
      <model type='virtio'/>
    </interface>"""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(guest.kernel))}</kernel>
    <initrd>{escape(str(guest.initrd))}</initrd>
    <cmdline>{escape(guest.cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{nic}
    <serial type='pty'>
      <log file={quoteattr(str(serial_log))} append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def wait_for_ready(serial_log: Path, timeout: float = 60.0) -> str:
    """Return the address in the guest's READY marker (``"none"`` without a NIC).

    Raises ``TimeoutError`` (with the end of the log) if it does not appear in time.
    """
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        with contextlib.suppress(OSError):
            text = serial_log.read_text(errors="replace")
        match = READY.search(text)
        if match:
            return match.group(1)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no READY marker in {serial_log} after {timeout} s; it ends with:\n{text[-2000:]}")
        time.sleep(0.05)


# -- apt -------------------------------------------------------------------------------


def _apt_show(*names: str) -> list[dict[str, str]]:
    """Return apt's record of the candidate version of each package (none if apt knows none)."""
    result = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True, check=False
    )
    records = []
    for paragraph in result.stdout.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): ?(.*)$", paragraph, flags=re.M))
        if fields.get("Package") in names and "SHA256" in fields:
            records.append(fields)
    return records


def _resolve() -> list[dict[str, str]]:
    """Return apt's records of the kernel image package (not the metapackage) and busybox."""
    wanted = (KERNEL_PACKAGE, BUSYBOX_PACKAGE)
    records = _apt_show(*wanted)
    if len(records) < len(wanted):
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=True)
        records = _apt_show(*wanted)
    by_name = {r["Package"]: r for r in records}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise RuntimeError(f"apt knows no package {missing} (is a Debian amd64 source configured?)")
    meta = by_name[KERNEL_PACKAGE]
    image = re.match(r"\s*(linux-image-[^\s,(|]+)", meta.get("Depends", ""))
    if image is None:
        raise RuntimeError(f"cannot find the kernel image in {KERNEL_PACKAGE}'s Depends: {meta.get('Depends')!r}")
    (image_record,) = _apt_show(image.group(1)) or [None]
    if image_record is None:
        raise RuntimeError(f"apt knows no package {image.group(1)}")
    return [image_record, by_name[BUSYBOX_PACKAGE]]


def _fetch(cache: Path, record: dict[str, str]) -> Path:
    """Return ``cache/debs/<sha256>.deb``, downloading it with ``apt-get download`` if needed."""
    target = cache / "debs" / f"{record['SHA256']}.deb"
    if target.exists():
        return target
    _mkdirs(target.parent)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as scratch:
        subprocess.run(
            ["apt-get", "download", "-q", f"{record['Package']}={record['Version']}"],
            cwd=scratch, capture_output=True, check=True,
        )
        (downloaded,) = Path(scratch).glob("*.deb")
        digest = _sha256_file(downloaded)
        if digest != record["SHA256"]:
            raise RuntimeError(f"{downloaded.name}: SHA-256 {digest}, apt says {record['SHA256']}")
        os.chmod(downloaded, 0o644)
        os.replace(downloaded, target)
    return target


# -- the build -------------------------------------------------------------------------


def _build_into(cache: Path, target: Path, kernel_deb: Path, busybox_deb: Path) -> None:
    """Unpack both packages in a scratch directory and publish the guest at ``target``."""
    started = time.monotonic()
    _mkdirs(target.parent)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as scratch:
        root = Path(scratch)
        for deb, into in ((kernel_deb, root / "kernel"), (busybox_deb, root / "busybox")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True, capture_output=True)
        out = root / "out"
        out.mkdir()
        (vmlinuz,) = (root / "kernel" / "boot").glob("vmlinuz-*")
        vmlinux = extract_vmlinux(vmlinuz.read_bytes())
        if vmlinux is not None and has_pvh_note(vmlinux):
            kernel_name = "vmlinux"
            (out / kernel_name).write_bytes(vmlinux)
        else:  # no PVH entry point: QEMU can only boot the bzImage (and decompress in the guest)
            kernel_name = "bzImage"
            shutil.copyfile(vmlinuz, out / kernel_name)
        (moddir,) = (root / "kernel" / "lib" / "modules").iterdir()
        modules = resolve_modules(moddir, MODULES)
        busybox = (root / "busybox" / "bin" / "busybox").read_bytes()
        (out / "initrd.cpio").write_bytes(initramfs(busybox, modules))
        (out / "guest.json").write_text(json.dumps({
            "kernel": kernel_name,
            "initrd": "initrd.cpio",
            "kernel_release": moddir.name,
            "modules": [name for name, _ in modules],
            "debs": [kernel_deb.name, busybox_deb.name],
            "build_seconds": round(time.monotonic() - started, 2),
        }, indent=2) + "\n")
        for path in out.iterdir():
            os.chmod(path, 0o644)
        os.chmod(out, 0o755)
        if target.exists():  # a half-published earlier build (no guest.json): replace it
            shutil.rmtree(target)
        os.rename(out, target)


def _load(cache: Path, pointer: Path) -> Guest | None:
    """Return the guest the recipe pointer names, or None if it is not (completely) there."""
    try:
        target = cache / "guests" / pointer.read_text().strip()
        meta = json.loads((target / "guest.json").read_text())
    except (OSError, ValueError):
        return None
    kernel, initrd = target / meta["kernel"], target / meta["initrd"]
    if not (kernel.is_file() and initrd.is_file()):
        return None
    with contextlib.suppress(OSError):  # the last use, for _prune
        os.utime(target / "guest.json")
    return Guest(kernel=kernel, initrd=initrd, cmdline=CMDLINE)


def _prune(cache: Path, keep: int = 4) -> None:
    """Remove all but the ``keep`` guests last used, the debs and recipes they do not need,
    and the scratch directories of builds that died more than an hour ago."""
    def last_use(guest: Path) -> float:
        try:
            return (guest / "guest.json").stat().st_mtime
        except OSError:
            return 0.0

    guests = sorted((cache / "guests").iterdir(), key=last_use, reverse=True)
    kept, needed = set(), set()
    for guest in guests:
        try:
            debs = json.loads((guest / "guest.json").read_text())["debs"]
        except (OSError, ValueError, KeyError):
            debs = None
        if debs is None and time.time() - last_use(guest) < 3600:
            continue  # not ours to judge (being published?)
        if debs is not None and len(kept) < keep:
            kept.add(guest.name)
            needed.update(debs)
        else:
            shutil.rmtree(guest, ignore_errors=True)
    for recipe in (cache / "recipes").iterdir():
        with contextlib.suppress(OSError):
            if recipe.read_text().strip() not in kept:
                recipe.unlink()
    for deb in (cache / "debs").glob("*.deb"):
        if deb.name not in needed:
            deb.unlink(missing_ok=True)
    for scratch in [*cache.glob(".build-*"), *cache.glob(".download-*")]:
        with contextlib.suppress(OSError):
            if time.time() - scratch.stat().st_mtime > 3600:
                shutil.rmtree(scratch, ignore_errors=True)


# -- the kernel ------------------------------------------------------------------------

_MAGICS = {
    "gzip": b"\x1f\x8b\x08",
    "xz": b"\xfd7zXZ\x00",
    "lzma": b"\x5d\x00\x00",
    "bzip2": b"BZh",
    "lz4": b"\x02\x21\x4c\x18",  # the legacy LZ4 frame the kernel uses
    "zstd": b"\x28\xb5\x2f\xfd",
}


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """Return the uncompressed ELF kernel inside a bzImage, or None if none can be found.

    The boot protocol header (2.08+) says where the compressed payload lies; failing that,
    every offset where a known compression magic occurs is tried (as the kernel's own
    scripts/extract-vmlinux does).  The result must be an ELF file.
    """
    candidates: list[tuple[int, int | None]] = []
    if bzimage[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", bzimage, 0x206)[0] >= 0x208:
        setup_sects = bzimage[0x1F1] or 4
        offset, length = struct.unpack_from("<II", bzimage, 0x248)
        start = (setup_sects + 1) * 512 + offset
        candidates.append((start, start + length))
    for magic in _MAGICS.values():
        position = bzimage.find(magic)
        while position != -1 and len(candidates) < 64:
            candidates.append((position, None))
            position = bzimage.find(magic, position + 1)
    for start, end in candidates:
        payload = bzimage[start:end]
        for name, magic in _MAGICS.items():
            if payload.startswith(magic):
                with contextlib.suppress(Exception):
                    data = _decompress(name, payload, exact=end is not None)
                    if data and data.startswith(b"\x7fELF"):
                        return data
    return None


def _decompress(name: str, payload: bytes, exact: bool) -> bytes | None:
    """Decompress a kernel payload (the kernel appends the 4-byte size to all but gzip)."""
    if name == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    if name in ("xz", "lzma"):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ if name == "xz" else lzma.FORMAT_ALONE).decompress(payload)
    if name == "bzip2":
        return bz2.BZ2Decompressor().decompress(payload)
    if name == "lz4":
        return lz4_legacy_decompress(payload)
    if name == "zstd":
        body = payload[:-4] if exact else payload
        try:
            from compression import zstd  # Python 3.14+
        except ImportError:
            if not shutil.which("zstd"):
                return None
            return subprocess.run(["zstd", "-dcq"], input=body, capture_output=True, check=False).stdout
        return zstd.ZstdDecompressor().decompress(body)
    return None


def lz4_legacy_decompress(data: bytes) -> bytes:
    """Decompress a legacy LZ4 frame (magic, then blocks of <u32 size><LZ4 block>).

    Stops at the first size that does not fit, i.e. at the kernel's appended length.  Pure
    Python, yet ~1.5 s for a 50 MiB kernel: literals and matches are copied as slices.
    """
    view, out, i = memoryview(data), bytearray(), 4
    while i + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, i)
        if size == 0x184C2102:  # another frame's magic
            i += 4
            continue
        if size == 0 or i + 4 + size > len(data):
            break
        out += _lz4_block(view[i + 4 : i + 4 + size])
        i += 4 + size
    return bytes(out)


def _lz4_block(src: memoryview) -> bytearray:
    """Decompress one LZ4 block (each block of a legacy frame stands alone)."""
    out, i, n = bytearray(), 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        literals = token >> 4
        if literals == 15:
            while True:
                extra = src[i]
                i += 1
                literals += extra
                if extra != 255:
                    break
        out += src[i : i + literals]
        i += literals
        if i >= n:  # the last sequence has literals only
            break
        offset = src[i] | src[i + 1] << 8
        i += 2
        length = token & 15
        if length == 15:
            while True:
                extra = src[i]
                i += 1
                length += extra
                if extra != 255:
                    break
        length += 4
        start = len(out) - offset
        if length <= offset:
            out += out[start : start + length]
        else:  # overlapping match: the last `offset` bytes repeated
            period = out[start:]
            out += period * (length // offset) + period[: length % offset]
    return out


def has_pvh_note(elf: bytes) -> bool:
    """Return whether an ELF64 kernel has the Xen PHYS32_ENTRY note QEMU needs to PVH-boot it."""
    if elf[:5] != b"\x7fELF\x02":
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + index * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        position, end = p_offset, p_offset + p_filesz
        while position + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, position)
            name = elf[position + 12 : position + 12 + namesz].rstrip(b"\x00")
            if name == b"Xen" and note_type == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            position += 12 + (namesz + 3 & ~3) + (descsz + 3 & ~3)
    return False


# -- modules ---------------------------------------------------------------------------


def resolve_modules(moddir: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """Return ``(name, uncompressed .ko)`` for ``wanted`` and their dependencies, in load order.

    Modules built into the kernel (``modules.builtin``) are left out.
    """
    def norm(name: str) -> str:
        return name.replace("-", "_")

    files = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        files[norm(path.name.split(".ko")[0])] = path
    builtin = {norm(Path(line).name.split(".ko")[0]) for line in (moddir / "modules.builtin").read_text().split()}
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            raise RuntimeError(f"module {name} is neither built into {moddir.name} nor shipped with it")
        image = _read_module(files[name])
        for dependency in _modinfo(image).get("depends", "").split(","):
            if dependency:
                visit(norm(dependency))
        ordered.append((name, image))

    for name in wanted:
        visit(norm(name))
    return ordered


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
    return data


def _modinfo(ko: bytes) -> dict[str, str]:
    """Return the ``key=value`` pairs of a module's ``.modinfo`` section."""
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", ko, shoff + index * shentsize)
        return name, offset, size

    _, names_offset, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if ko[names_offset + name : ko.index(b"\x00", names_offset + name)] == b".modinfo":
            pairs = (entry.split(b"=", 1) for entry in ko[offset : offset + size].split(b"\x00") if b"=" in entry)
            return {key.decode(): value.decode(errors="replace") for key, value in pairs}
    return {}


# -- the initramfs ---------------------------------------------------------------------

INIT = r"""#!/bin/sh
# tinyguest /init (PID 1): see tests/e2e/tinyguest.py
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
load() {
    for module in "$@"; do
        insmod /lib/modules/$module.ko || echo "tinyguest: insmod $module failed"
    done
}
load {acpi_modules}
acpid -c /etc/acpi -l /dev/null -p /run/acpid.pid
# acpid writes its pid file once it listens on /dev/input/event*: from then on an ACPI
# shutdown is heard (one sent earlier is lost).  Waits at most 2 s.
n=0
while [ ! -e /run/acpid.pid ] && [ $n -lt 200 ]; do usleep 10000; n=$((n + 1)); done
load {net_modules}
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    # Blocks until the first lease (the script prints the READY marker), then daemonises
    # and keeps renewing; it retries forever meanwhile.
    udhcpc -i eth0 -s /etc/udhcpc.sh -t 5 -T 1 -A 1 -p /run/udhcpc.pid
else
    echo "TINYGUEST READY ip=none"
fi
# tinyguest.heartbeat on the command line: print the uptime every second, so that a test
# can tell a guest that kept running (a live migration) from one that booted again, and
# eth0's address as the guest has it now (ip=none without one).
case " $(cat /proc/cmdline) " in
*" tinyguest.heartbeat "*)
    while true; do
        read up idle </proc/uptime
        set -- $(ip -4 -o addr show dev eth0 2>/dev/null)
        echo "TINYGUEST UPTIME $up ip=${4:-none}"
        sleep 1
    done ;;
esac
while true; do sleep 3600; done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc event handler: $1 is deconfig|bound|renew|nak|leasefail
event=$1
case "$event" in
deconfig)
    ifconfig "$interface" 0.0.0.0
    ;;
bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}"
    if [ -n "$router" ]; then
        route del default 2>/dev/null
        set -- $router
        route add default gw "$1" dev "$interface"
    fi
    if [ "$event" = bound ]; then
        read uptime idle </proc/uptime
        echo "tinyguest: $interface has $ip after ${uptime}s of uptime" >/dev/console
        echo "TINYGUEST READY ip=$ip" >/dev/console
    fi
    ;;
esac
exit 0
"""

POWER_BUTTON = r"""#!/bin/sh
# run by busybox acpid on the ACPI power button (PWRF/00000080)
echo "TINYGUEST POWEROFF" >/dev/console
poweroff -f
"""

APPLETS = ("sh", "mount", "insmod", "ip", "ifconfig", "route", "udhcpc", "acpid", "poweroff",
           "echo", "sleep", "usleep", "cat", "ls", "dmesg", "mkdir", "uptime", "ps")


def initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """Return the newc cpio archive of the guest's root file system."""
    acpi = [name for name, _ in modules if name in ACPI_MODULES]
    net = [name for name, _ in modules if name not in ACPI_MODULES]
    init = INIT.replace("{acpi_modules}", " ".join(acpi)).replace("{net_modules}", " ".join(net))
    archive = _Cpio()
    for directory in ("bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules",
                      "proc", "run", "sys", "tmp", "var"):
        archive.add(directory, 0o040755)
    archive.add("dev/console", 0o020600, rdev=(5, 1))  # the kernel opens it before /init
    archive.add("var/run", 0o120777, b"../run")
    archive.add("bin/busybox", 0o100755, busybox)
    for applet in APPLETS:
        archive.add(f"bin/{applet}", 0o120777, b"busybox")
    for name, image in modules:
        archive.add(f"lib/modules/{name}.ko", 0o100644, image)
    archive.add("init", 0o100755, init.encode())
    archive.add("etc/udhcpc.sh", 0o100755, UDHCPC_SCRIPT.encode())
    archive.add("etc/acpi/PWRF/00000080", 0o100755, POWER_BUTTON.encode())
    return archive.finish()


class _Cpio:
    """A newc ("070701") cpio writer: what the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._inode = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nlink = 2 if mode & 0o170000 == 0o040000 else 1
        fields = (self._inode, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields) + name.encode() + b"\x00"
        self._parts += [header, b"\x00" * (-len(header) % 4), data, b"\x00" * (-len(data) % 4)]
        self._inode += 1

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        body = b"".join(self._parts)
        return body + b"\x00" * (-len(body) % 512)


# -- files -----------------------------------------------------------------------------


def _recipe_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:32]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mkdirs(path: Path) -> None:
    """Create ``path`` and missing parents, each 0755 (QEMU's user must traverse them)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
            os.chmod(directory, 0o755)


def _write_atomically(path: Path, data: bytes) -> None:
    _mkdirs(path.parent)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_bytes(data)
    os.chmod(scratch, 0o644)
    os.replace(scratch, path)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+b") as lock:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
