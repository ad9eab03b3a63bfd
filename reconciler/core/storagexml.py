"""Render the storage pool and volume XML kvmops hands to libvirt."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from reconciler.core import model


def render_pool(spec: model.PoolSpec) -> str:
    """Return the pool XML for ``spec`` (a ``dir`` pool at ``spec.path``)."""
    pool = ET.Element("pool", type=spec.type)
    ET.SubElement(pool, "name").text = spec.name
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = spec.path
    ET.indent(pool)
    return ET.tostring(pool, encoding="unicode")


def render_volume(name: str, capacity: int, *, backing: tuple[str, str] | None = None, image_format: str = "qcow2") -> str:
    """Return the XML of a volume ``name`` of ``capacity`` bytes.

    ``backing`` (path, format) makes it a copy-on-write qcow2 overlay on that image.
    """
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(volume, "target")
    ET.SubElement(target, "format", type=image_format)
    if backing is not None:
        store = ET.SubElement(volume, "backingStore")
        ET.SubElement(store, "path").text = backing[0]
        ET.SubElement(store, "format", type=backing[1])
    ET.indent(volume)
    return ET.tostring(volume, encoding="unicode")
