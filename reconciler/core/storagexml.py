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


def render_volume(name: str, capacity: int) -> str:
    """Return the XML of a qcow2 volume ``name`` of ``capacity`` bytes."""
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(volume, "target")
    ET.SubElement(target, "format", type="qcow2")
    ET.indent(volume)
    return ET.tostring(volume, encoding="unicode")
