"""Render a :class:`DomainDefinition` as libvirt domain XML, patch it into existing XML, and parse one back.

Only the essence kvmops manages goes in or comes out: libvirt fills in the rest (PCI
addresses, controllers, the machine type, the emulator path, a video device for
graphics), and :func:`parse` ignores all of it, which is what keeps a second plan empty.
The round trip is exact: ``parse(render(d)) == d`` and ``parse(patch(xml, d)) == d``.

There is no per-field code here: every field is declared once in
:data:`reconciler.core.fields.FIELDS` with its XML codec, and render, patch and parse
loop over those declarations.  :func:`render` is a patch of :func:`skeleton`, the part
of a domain kvmops always writes and does not manage (ACPI, the clock, what a power
event does), so a new domain and a redefined one are written by the same code.

Ownership lives in ``<metadata>`` (:mod:`reconciler.core.domainparts` shows the mark).
The mark names the domain it was written for (``domain``, ``uuid``): a copy of it on
another domain (``virt-clone`` copies metadata) proves nothing, see
:func:`mark_binding`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from reconciler.core import fields, model
from reconciler.core.domainparts import (  # noqa: F401  (re-exported: the domain XML's public names)
    AGENT_CHANNEL,
    ARCH,
    GRAPHICS_LISTEN,
    NAMESPACE,
    PREFIX,
    ROSTER_NAMESPACE,
    ROSTER_PREFIX,
    DomainXMLError,
    OwnerMark,
    parse_disk,
    parse_nic,
    parse_owner,
    parse_roster,
    render_owner,
    render_roster,
)
from reconciler.core.xmlproperty import WriteContext, find_all


def skeleton() -> ET.Element:
    """Return what every domain kvmops defines holds besides its declared fields."""
    domain = ET.Element("domain")
    ET.SubElement(domain, "vcpu", placement="static")
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch=ARCH).text = "hvm"
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")  # without ACPI a graceful shutdown cannot reach the guest
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", offset="utc")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    ET.SubElement(domain, "devices")
    return domain


def render(definition: model.DomainDefinition) -> str:
    """Return the domain XML for ``definition``, ready for ``virConnect.defineXML``."""
    return _write(skeleton(), definition, WriteContext())


def patch(xml: str, definition: model.DomainDefinition, *, volumes_by_path: dict[str, tuple[str, str]] | None = None) -> str:
    """Return the persistent ``xml`` of an existing domain with ``definition`` written into it.

    Only what kvmops manages changes; everything else stays as libvirt and people left
    it: PCI addresses of unchanged devices (so guests keep their interface names),
    controllers, channels, ``on_crash``, metadata of other tools, graphics settings.
    ``parse(patch(xml, d)) == d`` for every ``d``.  ``volumes_by_path`` lets a file disk
    that is a pool volume match the manifest's disk naming that volume; it keeps its
    file form.
    """
    return _write(parse_tree(xml), definition, WriteContext(volumes_by_path or {}))


def _write(root: ET.Element, definition: model.DomainDefinition, context: WriteContext) -> str:
    for declared in fields.FIELDS:
        declared.write_xml(root, definition, context)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def remark(xml: str, owner: model.Ownership) -> str:
    """Return the persistent ``xml`` of a domain with its kvmops mark replaced by ``owner``, nothing else changed.

    What a migration persists on the destination: the source's definition, its mark
    naming the new host.
    """
    root = parse_tree(xml)
    OwnerMark().write(root, (owner,), WriteContext())
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


_UNREAD = object()


def parse(xml: str | ET.Element, *, owner: model.Ownership | None | object = _UNREAD) -> model.DomainDefinition:
    """Return the managed essence of domain ``xml``; everything else in it is ignored.

    ``owner``: the mark :func:`mark_binding` already read from this very tree, so it is
    not read twice.
    """
    root = parse_tree(xml) if isinstance(xml, str) else xml
    values: dict[str, object] = {}
    try:
        for declared in fields.FIELDS:
            if owner is not _UNREAD and declared.attrs == ("owner",):
                values["owner"] = owner
                continue
            values.update(zip(declared.attrs, declared.xml.read(root), strict=True))  # read_xml() without its dict
    except (TypeError, ValueError, AttributeError) as exc:
        raise DomainXMLError(f"unreadable domain XML: {exc}") from exc
    return model.DomainDefinition(**values)


def device_letters(position: int) -> str:
    """Return the suffix of the ``position``-th device name: a, b, ..., z, aa, ab, ..."""
    letters = ""
    position += 1
    while position:
        position, remainder = divmod(position - 1, 26)
        letters = chr(ord("a") + remainder) + letters
    return letters


def parse_tree(xml: str) -> ET.Element:
    """Return the root element of ``xml``, or raise :class:`DomainXMLError`."""
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainXMLError(f"unreadable domain XML: {exc}") from exc


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
        for element in find_all(root, "devices/disk"):
            found.append(parse_disk(element))
            for store in element.iter("backingStore"):
                for backing in store.findall("source"):
                    path = backing.get("file") or backing.get("dev")
                    if path:
                        found.append(model.DiskDevice(target="", bus="", path=path))
        os_element = root.find("os")
        for tag in ("kernel", "initrd"):
            path = os_element.findtext(tag) if os_element is not None else None
            if path:
                found.append(model.DiskDevice(target="", bus="", path=path))
    except (TypeError, ValueError, AttributeError):
        pass
    return tuple(d for d in found if d.pool is not None or d.path)


def parse_nics(root: ET.Element) -> tuple[model.NicDevice, ...]:
    """Return the NICs of any domain, however unusual the rest of its XML."""
    try:
        devices = root.find("devices")
        return tuple(parse_nic(i) for i in devices.findall("interface")) if devices is not None else ()
    except (TypeError, ValueError, AttributeError):
        return ()
