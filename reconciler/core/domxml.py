"""Render a :class:`DomainDefinition` as libvirt domain XML, and parse one back.

Only the essence kvmops manages goes in or comes out: libvirt fills in the rest (PCI
addresses, controllers, the machine type, the emulator path, a video device for
graphics), and :func:`parse` ignores all of it, which is what keeps a second plan empty.
The round trip is exact: ``parse(render(d)) == d``.

Ownership lives in ``<metadata>`` under kvmops' own XML namespace, as virt-install keeps
its own there::

    <metadata>
      <kvmops:owner xmlns:kvmops="https://kvmops.dev/xmlns/owner/v1"
                    manifest="vms/web.yaml" digest="sha256:..." runStrategy="Always"
                    domain="web" uuid="4dea22b3-...">
        <kvmops:volume pool="vmstore" name="web-root.qcow2" deletionPolicy="Retain" created="true"/>
      </kvmops:owner>
    </metadata>

The mark names the domain it was written for (``domain``, ``uuid``): a copy of it on
another domain (``virt-clone`` copies metadata) proves nothing, see
:func:`mark_binding`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from reconciler.core import model

NAMESPACE = "https://kvmops.dev/xmlns/owner/v1"
PREFIX = "kvmops"
ARCH = "x86_64"
GRAPHICS_LISTEN = "127.0.0.1"

ET.register_namespace(PREFIX, NAMESPACE)
ET.register_namespace("libosinfo", "http://libosinfo.org/xmlns/libvirt/domain/1.0")  # virt-install's mark
_OWNER = f"{{{NAMESPACE}}}owner"
_VOLUME = f"{{{NAMESPACE}}}volume"
_KIB_PER_UNIT = {
    "b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
    "m": 1024, "mib": 1024, "mb": 1e6 / 1024, "g": 1024**2, "gib": 1024**2, "gb": 1e9 / 1024,
    "t": 1024**3, "tib": 1024**3, "tb": 1e12 / 1024,
    "p": 1024**4, "pib": 1024**4, "pb": 1e15 / 1024, "e": 1024**5, "eib": 1024**5, "eb": 1e18 / 1024,
}  # fmt: skip


class DomainXMLError(ValueError):
    """libvirt returned domain XML that cannot be read."""


def render(definition: model.DomainDefinition) -> str:
    """Return the domain XML for ``definition``, ready for ``virConnect.defineXML``."""
    domain = ET.Element("domain", type=definition.virt_type)
    ET.SubElement(domain, "name").text = definition.name
    if definition.uuid:
        ET.SubElement(domain, "uuid").text = definition.uuid
    if definition.owner is not None:
        ET.SubElement(domain, "metadata").append(render_owner(definition.owner))
    ET.SubElement(domain, "memory", unit="KiB").text = str(definition.max_memory)
    ET.SubElement(domain, "currentMemory", unit="KiB").text = str(definition.memory)
    ET.SubElement(domain, "vcpu", placement="static").text = str(definition.vcpus)
    domain.append(_render_os(definition))
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")  # without ACPI a graceful shutdown cannot reach the guest
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", offset="utc")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    cpu = _render_cpu(definition)
    if cpu is not None:
        domain.insert(list(domain).index(features) + 1, cpu)

    devices = ET.SubElement(domain, "devices")
    for disk in (*definition.disks, *definition.cdroms):
        devices.append(_render_disk(disk))
    for nic in definition.nics:
        devices.append(_render_nic(nic))
    if definition.console:
        devices.extend(_render_console())
    if definition.guest_agent:
        devices.append(_render_agent_channel())
    if definition.graphics != "none":
        devices.append(_render_graphics(definition))
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


AGENT_CHANNEL = "org.qemu.guest_agent.0"


def device_letters(position: int) -> str:
    """Return the suffix of the ``position``-th device name: a, b, ..., z, aa, ab, ..."""
    letters = ""
    position += 1
    while position:
        position, remainder = divmod(position - 1, 26)
        letters = chr(ord("a") + remainder) + letters
    return letters


def _render_os(definition: model.DomainDefinition) -> ET.Element:
    os_element = ET.Element("os")
    if definition.firmware == "efi":
        os_element.set("firmware", "efi")
    os_type = ET.SubElement(os_element, "type", arch=ARCH)
    if definition.machine:
        os_type.set("machine", definition.machine)
    os_type.text = "hvm"
    for tag, value in (("kernel", definition.kernel), ("initrd", definition.initrd), ("cmdline", definition.cmdline)):
        if value is not None:
            ET.SubElement(os_element, tag).text = value
    for device in definition.boot:
        ET.SubElement(os_element, "boot", dev=device)
    return os_element


def _render_cpu(definition: model.DomainDefinition) -> ET.Element | None:
    if definition.cpu_mode is None:
        return None
    if definition.cpu_mode != "custom":
        return ET.Element("cpu", mode=definition.cpu_mode)
    cpu = ET.Element("cpu", mode="custom", match="exact")
    ET.SubElement(cpu, "model", fallback="allow").text = definition.cpu_model or ""
    return cpu


def _render_agent_channel() -> ET.Element:
    channel = ET.Element("channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
    return channel


def patch(xml: str, definition: model.DomainDefinition, *, volumes_by_path: dict[str, tuple[str, str]] | None = None) -> str:
    """Return the persistent ``xml`` of an existing domain with ``definition`` written into it.

    Only what kvmops manages changes; everything else stays as libvirt and people left
    it: PCI addresses of unchanged devices (so guests keep their interface names),
    controllers, channels, ``on_crash``, metadata of other tools, graphics settings.
    ``parse(patch(xml, d)) == d`` for every ``d``.  ``volumes_by_path`` lets a file disk
    that is a pool volume match the manifest's disk naming that volume; it keeps its
    file form.
    """
    volumes_by_path = volumes_by_path or {}
    root = parse_tree(xml)
    root.set("type", definition.virt_type)
    _child(root, "name").text = definition.name
    if definition.uuid:
        _child(root, "uuid").text = definition.uuid
    metadata = root.find("metadata")
    if metadata is not None:
        for owner in metadata.findall(_OWNER):
            metadata.remove(owner)
    if definition.owner is not None:
        if metadata is None:
            metadata = ET.Element("metadata")
            root.insert(_index_after(root, ("uuid", "name")), metadata)
        metadata.append(render_owner(definition.owner))
    elif metadata is not None and not len(metadata):
        root.remove(metadata)
    for tag, value in (("memory", definition.max_memory), ("currentMemory", definition.memory)):
        element = _child(root, tag)
        element.attrib.clear()
        element.set("unit", "KiB")
        element.text = str(value)
    vcpu = _child(root, "vcpu")
    vcpu.attrib.pop("current", None)
    vcpu.text = str(definition.vcpus)
    _patch_os(root, definition)
    current = parse(root) if root.find("name") is not None else None
    if current is None or (current.cpu_mode, current.cpu_model) != (definition.cpu_mode, definition.cpu_model):
        for stale in root.findall("cpu"):
            root.remove(stale)
        cpu = _render_cpu(definition)
        if cpu is not None:
            root.insert(_index_after(root, ("features", "os", "vcpu")), cpu)

    devices = _child(root, "devices")
    for kind, wanted in (("disk", definition.disks), ("cdrom", definition.cdroms)):
        present = [d for d in devices.findall("disk") if d.get("device", "disk") == kind]
        by_source = {}
        for element in present:
            pool, where = _disk_key(_parse_disk(element))
            key = volumes_by_path.get(where, (pool, where)) if pool == "" else (pool, where)
            by_source[key] = element
        _replace(devices, present, [_patch_disk(by_source.get(_disk_key(disk)), disk) for disk in wanted])
    interfaces = devices.findall("interface")
    by_mac = {(_parse_nic(i).mac or ""): i for i in interfaces}
    _replace(devices, interfaces, [_patch_nic(by_mac.get(nic.mac or "\0"), nic) for nic in definition.nics])

    ptys = [e for e in (*devices.findall("serial"), *devices.findall("console")) if e.get("type") == "pty"]
    if not definition.console:
        for element in ptys:
            devices.remove(element)
    elif not ptys:
        devices.extend(_render_console())

    channels = [c for c in devices.findall("channel") if c.find(f"target[@name='{AGENT_CHANNEL}']") is not None]
    if not definition.guest_agent:
        for channel in channels:
            devices.remove(channel)
    elif not channels:
        devices.append(_render_agent_channel())

    graphics = devices.findall("graphics")
    keep = next((g for g in graphics if g.get("type") == definition.graphics), None)
    for element in graphics:
        if element is not keep:
            devices.remove(element)
    if definition.graphics != "none":
        if keep is None:
            devices.append(_render_graphics(definition))
        else:
            _set_listen(keep, definition.graphics_listen or GRAPHICS_LISTEN)
            if definition.graphics_password is not None:
                keep.set("passwd", definition.graphics_password)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def _patch_os(root: ET.Element, definition: model.DomainDefinition) -> None:
    os_element = _child(root, "os")
    if definition.firmware == "efi":
        os_element.set("firmware", "efi")
    else:
        os_element.attrib.pop("firmware", None)
        for tag in ("loader", "nvram"):
            for stale in os_element.findall(tag):
                os_element.remove(stale)
    os_type = _child(os_element, "type")
    if definition.machine:
        os_type.set("machine", definition.machine)
    for tag, value in (("kernel", definition.kernel), ("initrd", definition.initrd), ("cmdline", definition.cmdline)):
        element = os_element.find(tag)
        if value is None:
            if element is not None:
                os_element.remove(element)
        else:
            _child(os_element, tag).text = value
    for stale in os_element.findall("boot"):
        os_element.remove(stale)
    for device in definition.boot:
        ET.SubElement(os_element, "boot", dev=device)


def _child(parent: ET.Element, tag: str) -> ET.Element:
    element = parent.find(tag)
    if element is None:
        element = ET.SubElement(parent, tag)
    return element


def _index_after(root: ET.Element, tags: tuple[str, ...]) -> int:
    positions = [i for i, child in enumerate(root) if child.tag in tags]
    return max(positions) + 1 if positions else 0


def _replace(parent: ET.Element, old: list[ET.Element], new: list[ET.Element]) -> None:
    """Put ``new`` where the first of ``old`` was (or at the start), removing ``old``."""
    children = list(parent)
    position = min((children.index(e) for e in old), default=0)
    for element in old:
        parent.remove(element)
    for offset, element in enumerate(new):
        parent.insert(position + offset, element)


def _disk_key(disk: model.DiskDevice) -> tuple[str, str]:
    return (disk.pool, disk.volume or "") if disk.pool is not None else ("", disk.path or "")


def _patch_disk(element: ET.Element | None, disk: model.DiskDevice) -> ET.Element:
    if element is None:
        return _render_disk(disk)
    target = _child(element, "target")
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


def _patch_nic(element: ET.Element | None, nic: model.NicDevice) -> ET.Element:
    if element is None:
        return _render_nic(nic)
    current = _parse_nic(element)
    if (current.kind, current.source) != (nic.kind, nic.source):
        element.set("type", nic.kind)
        for stale in element.findall("source"):
            element.remove(stale)
        element.insert(1, ET.Element("source", {nic.kind: nic.source}))
    if nic.model:
        _child(element, "model").attrib = {"type": nic.model}
    return element


def _render_nic(nic: model.NicDevice) -> ET.Element:
    interface = ET.Element("interface", type=nic.kind)
    if nic.mac:
        ET.SubElement(interface, "mac", address=nic.mac)
    ET.SubElement(interface, "source", {nic.kind: nic.source})
    if nic.model:
        ET.SubElement(interface, "model", type=nic.model)
    return interface


def _render_console() -> list[ET.Element]:
    serial = ET.Element("serial", type="pty")
    ET.SubElement(serial, "target", port="0")
    console = ET.Element("console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    return [serial, console]


def _render_graphics(definition: model.DomainDefinition) -> ET.Element:
    graphics = ET.Element("graphics", type=definition.graphics, autoport="yes")
    _set_listen(graphics, definition.graphics_listen or GRAPHICS_LISTEN)
    if definition.graphics_password is not None:
        graphics.set("passwd", definition.graphics_password)
    return graphics


def _set_listen(graphics: ET.Element, address: str) -> None:
    graphics.set("listen", address)
    for listen in graphics.findall("listen"):
        if listen.get("type") == "address":
            listen.set("address", address)


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
    if owner.fleet:  # only in a fleet: single-host marks stay as they were
        element.set("fleet", owner.fleet)
    if owner.host:
        element.set("host", owner.host)
    for volume in owner.volumes:
        record = ET.SubElement(element, _VOLUME, pool=volume.pool, name=volume.name,
                               deletionPolicy=volume.deletion_policy, created="true" if volume.created else "false")
        if volume.digest:
            record.set("digest", volume.digest)
        if volume.pending:
            record.set("pending", "true")
    return element


def _render_disk(disk: model.DiskDevice) -> ET.Element:
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


def remark(xml: str, owner: model.Ownership) -> str:
    """Return the persistent ``xml`` of a domain with its kvmops mark replaced by ``owner``, nothing else changed.

    What a migration persists on the destination: the source's definition, its mark
    naming the new host.
    """
    root = parse_tree(xml)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        root.insert(_index_after(root, ("uuid", "name")), metadata)
    for element in metadata.findall(_OWNER):
        metadata.remove(element)
    metadata.append(render_owner(owner))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def parse_tree(xml: str) -> ET.Element:
    """Return the root element of ``xml``, or raise :class:`DomainXMLError`."""
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainXMLError(f"unreadable domain XML: {exc}") from exc


def parse_owner(root: ET.Element) -> model.Ownership | None:
    """Return kvmops' ownership record in the domain ``root``, or None for a foreign domain."""
    owner = root.find(f"metadata/{_OWNER}")
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
    )


def mark_binding(root: ET.Element) -> tuple[model.Ownership | None, model.MarkBinding | None]:
    """Return kvmops' mark in domain ``root`` and whether it was written for this very domain.

    (None, None) for a domain without the mark.  The domain's own ``<name>`` and
    ``<uuid>`` are what the mark must name: a clone keeps the mark but gets both anew.
    """
    owner = parse_owner(root)
    if owner is None:
        return None, None
    return owner, owner.binding(root.findtext("name", ""), root.findtext("uuid", ""))


def parse_storage(root: ET.Element) -> tuple[model.DiskDevice, ...]:
    """Return every storage source any domain ``root`` uses, however unusual the rest of its XML.

    Disks of every device type (CD-ROMs and floppies too), their backing chains where
    libvirt shows them, and direct-boot kernel and initrd files.
    """
    found: list[model.DiskDevice] = []
    try:
        for element in root.iterfind("devices/disk"):
            found.append(_parse_disk(element))
            for backing in element.iterfind(".//backingStore/source"):
                path = backing.get("file") or backing.get("dev")
                if path:
                    found.append(model.DiskDevice(target="", bus="", path=path))
        for tag in ("kernel", "initrd"):
            path = root.findtext(f"os/{tag}")
            if path:
                found.append(model.DiskDevice(target="", bus="", path=path))
    except (TypeError, ValueError, AttributeError):
        pass
    return tuple(d for d in found if d.pool is not None or d.path)


def parse_nics(root: ET.Element) -> tuple[model.NicDevice, ...]:
    """Return the NICs of any domain, however unusual the rest of its XML."""
    try:
        devices = root.find("devices")
        return tuple(_parse_nic(i) for i in devices.findall("interface")) if devices is not None else ()
    except (TypeError, ValueError, AttributeError):
        return ()


def parse(xml: str | ET.Element) -> model.DomainDefinition:
    """Return the managed essence of domain ``xml``; everything else in it is ignored."""
    root = parse_tree(xml) if isinstance(xml, str) else xml
    try:
        vcpu = root.find("vcpu")
        vcpus = int(vcpu.get("current") or vcpu.text) if vcpu is not None else 1
        max_memory = _kib(root.find("memory"))
        current = root.find("currentMemory")
        devices = root.find("devices")
        devices = devices if devices is not None else ET.Element("devices")
        graphics = devices.find("graphics")
        os_element = root.find("os")
        os_element = os_element if os_element is not None else ET.Element("os")
        os_type = os_element.find("type")
        loader = os_element.find("loader")
        efi = os_element.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash")
        cpu = root.find("cpu")
        cpu_mode = cpu.get("mode", "custom") if cpu is not None else None
        cpu_model = cpu.findtext("model") if cpu is not None and cpu_mode == "custom" else None
        if cpu_mode == "custom" and not cpu_model:
            cpu_mode = None  # a <cpu> holding only a topology: no CPU model is chosen
        channels = devices.findall("channel")
        return model.DomainDefinition(
            name=root.findtext("name", ""),
            uuid=(root.findtext("uuid") or None),
            virt_type=root.get("type", ""),
            vcpus=vcpus,
            memory=_kib(current) if current is not None else max_memory,
            max_memory=max_memory,
            disks=tuple(_parse_disk(d) for d in devices.findall("disk") if d.get("device", "disk") == "disk"),
            nics=tuple(_parse_nic(i) for i in devices.findall("interface")),
            console=any(e.get("type") == "pty" for e in (*devices.findall("serial"), *devices.findall("console"))),
            graphics=graphics.get("type", "none") if graphics is not None else "none",
            owner=parse_owner(root),
            firmware="efi" if efi else "bios",
            machine=os_type.get("machine") if os_type is not None else None,
            cpu_mode=cpu_mode,
            cpu_model=cpu_model,
            boot=tuple(b.get("dev", "") for b in os_element.findall("boot")),
            kernel=os_element.findtext("kernel"),
            initrd=os_element.findtext("initrd"),
            cmdline=os_element.findtext("cmdline"),
            cdroms=tuple(_parse_disk(d) for d in devices.findall("disk") if d.get("device") == "cdrom"),
            guest_agent=any(c.find(f"target[@name='{AGENT_CHANNEL}']") is not None for c in channels),
            graphics_listen=_graphics_listen(graphics),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise DomainXMLError(f"unreadable domain XML: {exc}") from exc


def _graphics_listen(graphics: ET.Element | None) -> str | None:
    if graphics is None:
        return None
    listen = graphics.find("listen")
    if listen is not None and listen.get("address"):
        return listen.get("address")
    return graphics.get("listen") or GRAPHICS_LISTEN


def _kib(element: ET.Element | None) -> int:
    if element is None or not element.text:
        return 0
    unit = element.get("unit", "KiB").lower()
    if unit not in _KIB_PER_UNIT:
        raise DomainXMLError(f"unknown memory unit {unit!r}")
    return round(int(element.text) * _KIB_PER_UNIT[unit])


def _parse_disk(element: ET.Element) -> model.DiskDevice:
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


def _parse_nic(element: ET.Element) -> model.NicDevice:
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
