"""Render a :class:`DomainDefinition` as libvirt domain XML, and parse one back.

Only the essence kvmops manages goes in or comes out: libvirt fills in the rest (PCI
addresses, controllers, the machine type, the emulator path, a video device for
graphics), and :func:`parse` ignores all of it, which is what keeps a second plan empty.
The round trip is exact: ``parse(render(d)) == d``.

Ownership lives in ``<metadata>`` under kvmops' own XML namespace, as virt-install keeps
its own there::

    <metadata>
      <kvmops:owner xmlns:kvmops="https://kvmops.dev/xmlns/owner/v1"
                    manifest="vms/web.yaml" digest="sha256:..." runStrategy="Always">
        <kvmops:volume pool="vmstore" name="web-root.qcow2" deletionPolicy="Retain" created="true"/>
      </kvmops:owner>
    </metadata>
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from reconciler.core import model

NAMESPACE = "https://kvmops.dev/xmlns/owner/v1"
PREFIX = "kvmops"
ARCH = "x86_64"
GRAPHICS_LISTEN = "127.0.0.1"

ET.register_namespace(PREFIX, NAMESPACE)
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
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch=ARCH).text = "hvm"
    ET.SubElement(os_element, "boot", dev="hd")
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")  # without ACPI a graceful shutdown cannot reach the guest
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", offset="utc")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"

    devices = ET.SubElement(domain, "devices")
    for disk in definition.disks:
        devices.append(_render_disk(disk))
    for nic in definition.nics:
        interface = ET.SubElement(devices, "interface", type=nic.kind)
        if nic.mac:
            ET.SubElement(interface, "mac", address=nic.mac)
        ET.SubElement(interface, "source", {nic.kind: nic.source})
        if nic.model:
            ET.SubElement(interface, "model", type=nic.model)
    if definition.console:
        serial = ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="serial", port="0")
    if definition.graphics != "none":
        ET.SubElement(devices, "graphics", type=definition.graphics, autoport="yes", listen=GRAPHICS_LISTEN)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def render_owner(owner: model.Ownership) -> ET.Element:
    """Return the ``<kvmops:owner>`` element recording ``owner``."""
    element = ET.Element(_OWNER, manifest=owner.manifest, digest=owner.digest, runStrategy=owner.run_strategy)
    for volume in owner.volumes:
        ET.SubElement(element, _VOLUME, pool=volume.pool, name=volume.name,
                      deletionPolicy=volume.deletion_policy, created="true" if volume.created else "false")
    return element


def _render_disk(disk: model.DiskDevice) -> ET.Element:
    if disk.pool is not None:
        element = ET.Element("disk", type="volume", device=disk.device)
        ET.SubElement(element, "driver", name="qemu", type="qcow2")
        ET.SubElement(element, "source", pool=disk.pool, volume=disk.volume or "")
    else:
        element = ET.Element("disk", type="file", device=disk.device)
        if disk.path:
            ET.SubElement(element, "source", file=disk.path)
    ET.SubElement(element, "target", dev=disk.target, bus=disk.bus)
    return element


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
            deletion_policy=policy, created=volume.get("created") == "true",
        ))
    try:
        strategy = model.RunStrategy(owner.get("runStrategy", "Always"))
    except ValueError:
        strategy = model.RunStrategy.MANUAL  # unknown: leave power alone
    return model.Ownership(
        manifest=owner.get("manifest", ""), digest=owner.get("digest", ""),
        run_strategy=strategy, volumes=tuple(volumes),
    )


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
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise DomainXMLError(f"unreadable domain XML: {exc}") from exc


def _kib(element: ET.Element | None) -> int:
    if element is None or not element.text:
        return 0
    unit = element.get("unit", "KiB").lower()
    if unit not in _KIB_PER_UNIT:
        raise DomainXMLError(f"unknown memory unit {unit!r}")
    return round(int(element.text) * _KIB_PER_UNIT[unit])


def _parse_disk(element: ET.Element) -> model.DiskDevice:
    target = element.find("target")
    source = element.find("source")
    source = source if source is not None else ET.Element("source")
    if element.get("type") == "volume":
        return model.DiskDevice(
            target=target.get("dev", "") if target is not None else "",
            bus=target.get("bus", "") if target is not None else "",
            pool=source.get("pool"), volume=source.get("volume"), device=element.get("device", "disk"),
        )
    return model.DiskDevice(
        target=target.get("dev", "") if target is not None else "",
        bus=target.get("bus", "") if target is not None else "",
        path=source.get("file") or source.get("dev") or source.get("name"),
        device=element.get("device", "disk"),
    )


def _parse_nic(element: ET.Element) -> model.NicDevice:
    kind = element.get("type", "")
    source = element.find("source")
    mac = element.find("mac")
    model_element = element.find("model")
    return model.NicDevice(
        kind=kind,
        source=(source.get(kind) or source.get("dev") or "") if source is not None else "",
        model=model_element.get("type") if model_element is not None else None,
        mac=mac.get("address", "").lower() or None if mac is not None else None,
    )
