"""Patching an existing domain's XML: kvmops changes what it manages and nothing else."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from reconciler.core import domxml, model
from tests.unit.test_domxml import MACHINE
from tests.unit.test_domxml import WEB as RENDERED

# What the planner asks for on a host where libvirt chose the machine type: unmanaged
# fields are taken over from the domain as it is.
WEB = dataclasses.replace(RENDERED, machine=MACHINE)

GOLDEN = Path(__file__).parent / "golden"
EXPANDED = (GOLDEN / "web-libvirt-expanded.xml").read_text()
FOREIGN = (GOLDEN / "foreign-virt-install.xml").read_text().replace(
    "</devices>",
    "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>",
)

DATA = model.DiskDevice(target="vdc", bus="virtio", pool="vmstore", volume="web-data.qcow2")
SECOND_NIC = model.NicDevice(kind="bridge", source="br0", model="e1000e", mac="52:54:00:00:00:02")


def address_of(xml: str, tag: str, key: str, value: str) -> str | None:
    """Return the <address> of the device ``tag`` whose ``key`` source/mac is ``value``, as text."""
    for device in ET.fromstring(xml).find("devices").findall(tag):
        for child in device:
            if value in child.attrib.values():
                address = device.find("address")
                return ET.tostring(address, encoding="unicode").strip() if address is not None else None
    return None


@pytest.mark.parametrize("definition", [
    pytest.param(WEB, id="unchanged"),
    pytest.param(dataclasses.replace(WEB, vcpus=8, memory=1024 * 1024), id="vcpus-and-memory"),
    pytest.param(dataclasses.replace(WEB, disks=(*WEB.disks, DATA)), id="disk-added"),
    pytest.param(dataclasses.replace(WEB, disks=WEB.disks[:1]), id="disk-removed"),
    pytest.param(dataclasses.replace(WEB, disks=(dataclasses.replace(WEB.disks[0], bus="sata", target="sda"),)), id="bus-changed"),
    pytest.param(dataclasses.replace(WEB, nics=(*WEB.nics, SECOND_NIC)), id="nic-added"),
    pytest.param(dataclasses.replace(WEB, nics=()), id="nic-removed"),
    pytest.param(dataclasses.replace(WEB, nics=(dataclasses.replace(WEB.nics[0], kind="bridge", source="br1"),)), id="nic-moved-to-bridge"),
    pytest.param(dataclasses.replace(WEB, console=False, graphics="none", graphics_listen=None), id="console-and-graphics-off"),
    pytest.param(dataclasses.replace(WEB, graphics="spice"), id="graphics-switched"),
    pytest.param(dataclasses.replace(WEB, virt_type="qemu"), id="virt-type"),
])
def test_patched_xml_parses_back_to_the_definition(definition):
    """Whatever changed, the patched libvirt XML reads back as exactly the desired essence."""
    assert domxml.parse(domxml.patch(EXPANDED, definition)) == definition


def test_patching_keeps_what_kvmops_does_not_manage():
    """Controllers, the machine type, the emulator and on_crash survive a redefinition."""
    patched = ET.fromstring(domxml.patch(EXPANDED, dataclasses.replace(WEB, vcpus=8)))
    original = ET.fromstring(EXPANDED)
    assert patched.find("os/type").get("machine") == original.find("os/type").get("machine")
    assert patched.findtext("devices/emulator") == original.findtext("devices/emulator")
    assert len(patched.findall("devices/controller")) == len(original.findall("devices/controller"))
    assert patched.findtext("on_crash") == original.findtext("on_crash")


def test_unchanged_devices_keep_their_pci_addresses_when_another_is_removed():
    """Removing a disk must not move the NIC or the other disk to new slots (guests name NICs by slot)."""
    without_cache = dataclasses.replace(WEB, disks=WEB.disks[:1])
    patched = domxml.patch(EXPANDED, without_cache)
    assert address_of(patched, "interface", "address", WEB.nics[0].mac) == address_of(EXPANDED, "interface", "address", WEB.nics[0].mac)
    assert address_of(patched, "disk", "volume", "web-root.qcow2") == address_of(EXPANDED, "disk", "volume", "web-root.qcow2")


def test_a_disk_moved_to_another_bus_loses_its_old_address():
    """An address on the old bus means nothing on the new one, so libvirt must assign a new one."""
    moved = dataclasses.replace(WEB, disks=(dataclasses.replace(WEB.disks[0], bus="sata", target="sda"),))
    assert address_of(domxml.patch(EXPANDED, moved), "disk", "volume", "web-root.qcow2") is None


def test_adopting_a_foreign_domain_keeps_its_channels_and_other_metadata():
    """An adopted virt-install domain keeps its guest-agent channel and libosinfo metadata."""
    foreign = domxml.parse(FOREIGN)
    owner = model.Ownership("vms/legacy.yaml", "sha256:" + "0" * 64, model.RunStrategy.MANUAL)
    adopted = dataclasses.replace(foreign, owner=owner, vcpus=foreign.vcpus + 1)
    patched = domxml.patch(FOREIGN, adopted)
    assert domxml.parse(patched) == adopted
    original = ET.fromstring(FOREIGN)
    result = ET.fromstring(patched)
    assert [c.find("target").get("name") for c in result.findall("devices/channel")] == ["org.qemu.guest_agent.0"]
    assert len(original.find("metadata")) == 1
    assert result.find("metadata/{http://libosinfo.org/xmlns/libvirt/domain/1.0}libosinfo") is not None
    assert domxml.parse_owner(result) == owner
