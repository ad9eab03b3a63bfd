"""The parts of a domain's XML that one place cannot hold, each with the code that writes and reads it.

Device lists matched by identity (disks and CD-ROMs by source, NICs by MAC), devices
whose presence is the value (the serial console pair, the guest agent's channel), the
graphics device, the CPU, the firmware, and kvmops' ownership mark.  Each codec here
has the ``write``/``read`` contract of :class:`reconciler.core.xmlproperty.XMLCodec` and
is named by its field's declaration in :mod:`reconciler.core.fields`; the scalar fields
use :mod:`reconciler.core.xmlproperty` directly.

Ownership lives in ``<metadata>`` under kvmops' own XML namespace, as virt-install keeps
its own there::

    <metadata>
      <kvmops:owner xmlns:kvmops="https://kvmops.dev/xmlns/owner/v1"
                    manifest="vms/web.yaml" digest="sha256:..." runStrategy="Always"
                    domain="web" uuid="4dea22b3-...">
        <kvmops:volume pool="vmstore" name="web-root.qcow2" deletionPolicy="Retain" created="true"/>
      </kvmops:owner>
    </metadata>

A VM a fleet placed also carries ``fleet`` and ``host`` attributes there (only then).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.core import model
from reconciler.core.xmlproperty import WriteContext, find, make, place

NAMESPACE = "https://kvmops.dev/xmlns/owner/v1"
PREFIX = "kvmops"
# The fleet's roster lives in a metadata element of its own: libvirt writes one namespace's
# element at a time, so recording the roster never rewrites (and never races with) the mark.
ROSTER_NAMESPACE = "https://kvmops.dev/xmlns/roster/v1"
ROSTER_PREFIX = "kvmopsroster"
ARCH = "x86_64"
GRAPHICS_LISTEN = "127.0.0.1"
AGENT_CHANNEL = "org.qemu.guest_agent.0"

ET.register_namespace(PREFIX, NAMESPACE)
ET.register_namespace(ROSTER_PREFIX, ROSTER_NAMESPACE)
ET.register_namespace("libosinfo", "http://libosinfo.org/xmlns/libvirt/domain/1.0")  # virt-install's mark
_OWNER = f"{{{NAMESPACE}}}owner"
_VOLUME = f"{{{NAMESPACE}}}volume"
_LEFT_BEHIND = f"{{{NAMESPACE}}}leftBehind"
_SENDING = f"{{{NAMESPACE}}}sending"
_ROSTER = f"{{{ROSTER_NAMESPACE}}}roster"
_KIB_PER_UNIT = {
    "b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
    "m": 1024, "mib": 1024, "mb": 1e6 / 1024, "g": 1024**2, "gib": 1024**2, "gb": 1e9 / 1024,
    "t": 1024**3, "tib": 1024**3, "tb": 1e12 / 1024,
    "p": 1024**4, "pib": 1024**4, "pb": 1e15 / 1024, "e": 1024**5, "eib": 1024**5, "eb": 1e18 / 1024,
}  # fmt: skip


class DomainXMLError(ValueError):
    """libvirt returned domain XML that cannot be read."""


def kib(element: ET.Element) -> int:
    """Return a memory element's size in KiB, whatever unit it states (KiB when it states none)."""
    if not element.text:
        return 0
    unit = element.get("unit", "KiB").lower()
    if unit not in _KIB_PER_UNIT:
        raise DomainXMLError(f"unknown memory unit {unit!r}")
    return round(int(element.text) * _KIB_PER_UNIT[unit])


def current_vcpus(element: ET.Element) -> int:
    """Return the vCPUs a guest runs with: ``<vcpu current='2'>4</vcpu>`` is two."""
    return int(element.get("current") or element.text)


def _devices(root: ET.Element) -> ET.Element:
    devices = root.find("devices")
    return devices if devices is not None else ET.Element("devices")


# --- ownership mark ---------------------------------------------------------------------


def render_owner(owner: model.Ownership) -> ET.Element:
    """Return the ``<kvmops:owner>`` element recording ``owner``."""
    element = ET.Element(_OWNER, manifest=owner.manifest, digest=owner.digest, runStrategy=owner.run_strategy,
                         scope=owner.scope)
    if owner.shutdown_timeout is not None:
        element.set("shutdownTimeout", f"{owner.shutdown_timeout:g}")
    if owner.revision:
        element.set("revision", owner.revision)
    if owner.keep_nvram:
        element.set("keepNvram", "true")
    if owner.graphics_password_digest:
        element.set("graphicsPasswordDigest", owner.graphics_password_digest)
    if owner.install_pending:
        element.set("installPending", "true")
    if owner.bound_uuid:
        element.set("domain", owner.bound_name)
        element.set("uuid", owner.bound_uuid)
    if owner.start_pending:
        element.set("startPending", "true")
    if owner.fleet:
        element.set("fleet", owner.fleet)
    if owner.host:
        element.set("host", owner.host)
    if owner.moving_to:
        element.set("movingTo", owner.moving_to)
    if owner.moved_from:
        element.set("movedFrom", owner.moved_from)
    if owner.resume_after_move:
        element.set("resumeAfterMove", "true")
    for volume in owner.volumes:
        record = ET.SubElement(element, _VOLUME, pool=volume.pool, name=volume.name,
                               deletionPolicy=volume.deletion_policy, created="true" if volume.created else "false")
        if volume.digest:
            record.set("digest", volume.digest)
        if volume.pending:
            record.set("pending", "true")
    for left in owner.left_behind:
        ET.SubElement(element, _LEFT_BEHIND, host=left.host, pool=left.pool, name=left.name)
    for sending in owner.sending:
        ET.SubElement(element, _SENDING, host=sending.host, pool=sending.pool, name=sending.name)
    return element


def parse_owner(root: ET.Element) -> model.Ownership | None:
    """Return kvmops' ownership record in the domain ``root``, or None for a foreign domain."""
    owner = find(root, "metadata")
    owner = owner.find(_OWNER) if owner is not None else None
    if owner is None:
        return None
    volumes = []
    for volume in owner.findall(_VOLUME):
        try:
            policy = model.DeletionPolicy(volume.get("deletionPolicy", "Retain"))
        except ValueError:
            policy = model.DeletionPolicy.RETAIN  # unreadable means keep: data is never lost by doubt
        volumes.append(model.OwnedVolume(
            pool=volume.get("pool", ""), name=volume.get("name", ""),
            deletion_policy=policy, created=volume.get("created") == "true", digest=volume.get("digest", ""),
            pending=volume.get("pending") == "true",
        ))
    try:
        strategy = model.RunStrategy(owner.get("runStrategy", "Always"))
    except ValueError:
        strategy = model.RunStrategy.MANUAL  # unknown: leave power alone
    try:
        timeout = float(owner.get("shutdownTimeout")) if owner.get("shutdownTimeout") else None
    except ValueError:
        timeout = None
    return model.Ownership(
        manifest=owner.get("manifest", ""), digest=owner.get("digest", ""),
        run_strategy=strategy, volumes=tuple(volumes), scope=owner.get("scope") or "default",
        shutdown_timeout=timeout, revision=owner.get("revision", ""),
        keep_nvram=owner.get("keepNvram") == "true",
        graphics_password_digest=owner.get("graphicsPasswordDigest", ""),
        install_pending=owner.get("installPending") == "true",
        bound_name=owner.get("domain", ""), bound_uuid=owner.get("uuid", ""),
        start_pending=owner.get("startPending") == "true",
        fleet=owner.get("fleet", ""), host=owner.get("host", ""),
        moving_to=owner.get("movingTo", ""), moved_from=owner.get("movedFrom", ""),
        resume_after_move=owner.get("resumeAfterMove") == "true",
        roster=parse_roster(root),
        left_behind=tuple(model.LeftBehind(left.get("host", ""), left.get("pool", ""), left.get("name", ""))
                          for left in owner.findall(_LEFT_BEHIND)),
        sending=tuple(model.Sending(sent.get("host", ""), sent.get("pool", ""), sent.get("name", ""))
                      for sent in owner.findall(_SENDING)),
    )


def render_roster(roster: tuple[str, ...]) -> ET.Element:
    """Return the element recording the fleet's Host names (:attr:`~reconciler.core.model.Ownership.roster`)."""
    return ET.Element(_ROSTER, hosts=",".join(roster))


def parse_roster(root: ET.Element) -> tuple[str, ...]:
    """Return the fleet's Host names recorded in the domain ``root``, sorted; () when none are."""
    metadata = root.find("metadata")
    element = metadata.find(_ROSTER) if metadata is not None else None
    if element is None:
        return ()
    return tuple(sorted({name for name in element.get("hosts", "").split(",") if name}))


@dataclass(frozen=True)
class OwnerMark:
    """kvmops' mark in ``<metadata>``, and the fleet's roster beside it; other applications' metadata stays as it is."""

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (owner,) = values
        metadata = root.find("metadata")
        if metadata is not None:
            for stale in (*metadata.findall(_OWNER), *metadata.findall(_ROSTER)):
                metadata.remove(stale)
        if owner is not None:
            make(root, "metadata").append(render_owner(owner))
            if owner.roster:
                root.find("metadata").append(render_roster(owner.roster))
        elif metadata is not None and not len(metadata):
            root.remove(metadata)

    def read(self, root: ET.Element) -> tuple:
        return (parse_owner(root),)


# --- firmware and CPU -------------------------------------------------------------------


@dataclass(frozen=True)
class Firmware:
    """``efi`` or ``bios``: ``<os firmware='efi'>`` (or a pflash loader libvirt or virt-install wrote)."""

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (firmware,) = values
        os_element = make(root, "os")
        if firmware == "efi":
            os_element.set("firmware", "efi")
            return
        os_element.attrib.pop("firmware", None)
        for tag in ("loader", "nvram"):  # a BIOS guest keeps no UEFI loader or variable store
            for stale in os_element.findall(tag):
                os_element.remove(stale)

    def read(self, root: ET.Element) -> tuple:
        os_element = root.find("os")
        if os_element is None:
            return ("bios",)
        loader = os_element.find("loader")
        efi = os_element.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash")
        return ("efi" if efi else "bios",)


@dataclass(frozen=True)
class CPU:
    """The CPU mode and, for ``custom``, its model; an unchanged ``<cpu>`` keeps its topology and features."""

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        mode, cpu_model = values
        if self.read(root) == (mode, cpu_model):
            return
        for stale in root.findall("cpu"):
            root.remove(stale)
        if mode is None:
            return
        if mode != "custom":
            cpu = ET.Element("cpu", mode=mode)
        else:
            cpu = ET.Element("cpu", mode="custom", match="exact")
            ET.SubElement(cpu, "model", fallback="allow").text = cpu_model or ""
        place(root, cpu, "")

    def read(self, root: ET.Element) -> tuple:
        cpu = root.find("cpu")
        mode = cpu.get("mode", "custom") if cpu is not None else None
        cpu_model = cpu.findtext("model") if cpu is not None and mode == "custom" else None
        if mode == "custom" and not cpu_model:
            mode = None  # a <cpu> holding only a topology: no CPU model is chosen
        return (mode, cpu_model)


# --- devices present or not -------------------------------------------------------------


def _console_pair() -> list[ET.Element]:
    serial = ET.Element("serial", type="pty")
    ET.SubElement(serial, "target", port="0")
    console = ET.Element("console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    return [serial, console]


def _agent_channel() -> list[ET.Element]:
    channel = ET.Element("channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
    return [channel]


@dataclass(frozen=True)
class DevicePresence:
    """A boolean that is the presence of devices of ``tags`` that ``matches``; ``makes`` them when missing."""

    tags: tuple[str, ...]
    matches: Callable[[ET.Element], bool]
    makes: Callable[[], list[ET.Element]]

    def _present(self, devices: ET.Element) -> list[ET.Element]:
        return [e for tag in self.tags for e in devices.findall(tag) if self.matches(e)]

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (wanted,) = values
        devices = make(root, "devices")
        present = self._present(devices)
        if not wanted:
            for element in present:
                devices.remove(element)
        elif not present:
            for element in self.makes():
                place(devices, element, "devices")

    def read(self, root: ET.Element) -> tuple:
        return (bool(self._present(_devices(root))),)


CONSOLE = DevicePresence(("serial", "console"), lambda e: e.get("type") == "pty", _console_pair)
GUEST_AGENT = DevicePresence(("channel",), lambda e: e.find(f"target[@name='{AGENT_CHANNEL}']") is not None,
                             _agent_channel)


# --- graphics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Graphics:
    """The graphics type (``none``: no device); a device of the wanted type keeps its settings."""

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (kind,) = values
        devices = make(root, "devices")
        present = devices.findall("graphics")
        keep = next((g for g in present if g.get("type") == kind), None)
        for element in present:
            if element is not keep:
                devices.remove(element)
        if kind != "none" and keep is None:
            place(devices, ET.Element("graphics", type=kind, autoport="yes"), "devices")

    def read(self, root: ET.Element) -> tuple:
        graphics = _devices(root).find("graphics")
        return (graphics.get("type", "none") if graphics is not None else "none",)


@dataclass(frozen=True)
class GraphicsListen:
    """The address the graphics device listens on (written after :class:`Graphics` made the device)."""

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (address,) = values
        graphics = find(root, "devices/graphics")
        if graphics is None:
            return
        address = address or GRAPHICS_LISTEN
        graphics.set("listen", address)
        for listen in graphics.findall("listen"):
            if listen.get("type") == "address":
                listen.set("address", address)

    def read(self, root: ET.Element) -> tuple:
        graphics = _devices(root).find("graphics")
        if graphics is None:
            return (None,)
        listen = graphics.find("listen")
        if listen is not None and listen.get("address"):
            return (listen.get("address"),)
        return (graphics.get("listen") or GRAPHICS_LISTEN,)


@dataclass(frozen=True)
class GraphicsPassword:
    """The graphics password: written when set, never read back (libvirt hides it; the mark keeps a digest)."""

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (password,) = values
        graphics = find(root, "devices/graphics")
        if graphics is not None and password is not None:
            graphics.set("passwd", password)

    def read(self, root: ET.Element) -> tuple:
        return (None,)


# --- disks, CD-ROMs and NICs ------------------------------------------------------------


def _replace(parent: ET.Element, old: list[ET.Element], new: list[ET.Element]) -> None:
    """Put ``new`` where the first of ``old`` was (or where libvirt puts such devices), removing ``old``."""
    if not old:
        for element in new:
            place(parent, element, "devices")
        return
    position = min(list(parent).index(e) for e in old)
    for element in old:
        parent.remove(element)
    for offset, element in enumerate(new):
        parent.insert(position + offset, element)


@dataclass(frozen=True)
class Disks:
    """The ``<disk>`` devices of one ``device`` kind (``disk`` or ``cdrom``), matched by source.

    A kept disk keeps its PCI address (guests name disks by slot) unless its bus changes.
    ``WriteContext.volumes_by_path`` lets a file disk that is a pool volume match the
    manifest's disk naming that volume; it keeps its file form.  The disks' declaration
    comes before the CD-ROMs', so that new CD-ROMs follow the disks.
    """

    device: str

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (wanted,) = values
        devices = make(root, "devices")
        present = [d for d in devices.findall("disk") if d.get("device", "disk") == self.device]
        by_source = {}
        for element in present:
            pool, where = _disk_key(parse_disk(element))
            key = context.volumes_by_path.get(where, (pool, where)) if pool == "" else (pool, where)
            by_source[key] = element
        _replace(devices, present, [_patch_disk(by_source.get(_disk_key(disk)), disk) for disk in wanted])

    def read(self, root: ET.Element) -> tuple:
        return (tuple(parse_disk(d) for d in _devices(root).findall("disk") if d.get("device", "disk") == self.device),)


@dataclass(frozen=True)
class Nics:
    """The ``<interface>`` devices, matched by MAC; a kept NIC keeps its PCI address and settings."""

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (wanted,) = values
        devices = make(root, "devices")
        interfaces = devices.findall("interface")
        by_mac = {(parse_nic(i).mac or ""): i for i in interfaces}
        _replace(devices, interfaces, [_patch_nic(by_mac.get(nic.mac or "\0"), nic) for nic in wanted])

    def read(self, root: ET.Element) -> tuple:
        return (tuple(parse_nic(i) for i in _devices(root).findall("interface")),)


def _disk_key(disk: model.DiskDevice) -> tuple[str, str]:
    return (disk.pool, disk.volume or "") if disk.pool is not None else ("", disk.path or "")


def _patch_disk(element: ET.Element | None, disk: model.DiskDevice) -> ET.Element:
    if element is None:
        return render_disk(disk)
    target = element.find("target")
    if target is None:
        target = ET.SubElement(element, "target")
    if target.get("bus") != disk.bus:
        address = element.find("address")
        if address is not None:
            element.remove(address)  # an address on the old bus means nothing on the new one
    target.set("dev", disk.target)
    target.set("bus", disk.bus)
    _set_relabel(element, disk.relabel)
    return element


def _set_relabel(element: ET.Element, relabel: bool) -> None:
    """Say in disk ``element``'s source whether libvirt's DAC driver may chown the file.

    libvirt chowns a disk's file to QEMU's user at start and, for read-only media,
    never gives it back (other guests may share it): media kvmops did not create carry
    ``<seclabel model='dac' relabel='no'/>``, so their ownership is never changed.
    """
    source = element.find("source")
    if source is None:
        return
    for seclabel in source.findall("seclabel"):
        if seclabel.get("model", "dac") == "dac":
            source.remove(seclabel)
    if not relabel:
        ET.SubElement(source, "seclabel", model="dac", relabel="no")


def _relabels(source: ET.Element) -> bool:
    return not any(s.get("relabel") == "no" and s.get("model", "dac") == "dac" for s in source.findall("seclabel"))


def render_disk(disk: model.DiskDevice) -> ET.Element:
    """Return the ``<disk>`` element of a new disk or CD-ROM drive."""
    image_format = disk.format or ("qcow2" if disk.device == "disk" else "raw")
    if disk.pool is not None:
        element = ET.Element("disk", type="volume", device=disk.device)
        ET.SubElement(element, "driver", name="qemu", type=image_format)
        ET.SubElement(element, "source", pool=disk.pool, volume=disk.volume or "")
    elif disk.path and disk.path.startswith("/dev/"):
        element = ET.Element("disk", type="block", device=disk.device)
        ET.SubElement(element, "driver", name="qemu", type=disk.format or "raw")
        ET.SubElement(element, "source", dev=disk.path)
    else:
        element = ET.Element("disk", type="file", device=disk.device)
        ET.SubElement(element, "driver", name="qemu", type=image_format)
        if disk.path:
            ET.SubElement(element, "source", file=disk.path)
    _set_relabel(element, disk.relabel)
    ET.SubElement(element, "target", dev=disk.target, bus=disk.bus)
    if disk.device == "cdrom":
        ET.SubElement(element, "readonly")
    return element


def parse_disk(element: ET.Element) -> model.DiskDevice:
    """Return the disk a ``<disk>`` element describes: a pool volume, a file or a block device."""
    target = element.find("target")
    driver = element.find("driver")
    image_format = driver.get("type") if driver is not None else None
    source = element.find("source")
    source = source if source is not None else ET.Element("source")
    if element.get("type") == "volume":
        return model.DiskDevice(
            target=target.get("dev", "") if target is not None else "",
            bus=target.get("bus", "") if target is not None else "",
            pool=source.get("pool"), volume=source.get("volume"), device=element.get("device", "disk"),
            format=image_format, relabel=_relabels(source),
        )
    return model.DiskDevice(
        target=target.get("dev", "") if target is not None else "",
        bus=target.get("bus", "") if target is not None else "",
        path=source.get("file") or source.get("dev") or source.get("name"),
        device=element.get("device", "disk"),
        format=image_format,
        relabel=_relabels(source),
    )


def _patch_nic(element: ET.Element | None, nic: model.NicDevice) -> ET.Element:
    if element is None:
        return _render_nic(nic)
    current = parse_nic(element)
    if (current.kind, current.source) != (nic.kind, nic.source):
        element.set("type", nic.kind)
        for stale in element.findall("source"):
            element.remove(stale)
        element.insert(1, ET.Element("source", {nic.kind: nic.source}))
    if nic.model:
        model_element = element.find("model")
        if model_element is None:
            model_element = ET.SubElement(element, "model")
        model_element.attrib = {"type": nic.model}
    return element


def _render_nic(nic: model.NicDevice) -> ET.Element:
    interface = ET.Element("interface", type=nic.kind)
    if nic.mac:
        ET.SubElement(interface, "mac", address=nic.mac)
    ET.SubElement(interface, "source", {nic.kind: nic.source})
    if nic.model:
        ET.SubElement(interface, "model", type=nic.model)
    return interface


def parse_nic(element: ET.Element) -> model.NicDevice:
    """Return the NIC an ``<interface>`` element describes."""
    kind = element.get("type", "")
    source = element.find("source")
    if source is not None and source.get("network") and kind != "network":
        # A running NIC of a bridge- or direct-mode network shows the type libvirt resolved
        # (bridge, direct) but still names its network: it is that network's NIC.
        kind = "network"
    mac = element.find("mac")
    model_element = element.find("model")
    return model.NicDevice(
        kind=kind,
        source=(source.get(kind) or source.get("dev") or "") if source is not None else "",
        model=model_element.get("type") if model_element is not None else None,
        mac=mac.get("address", "").lower() or None if mac is not None else None,
    )
