"""Domain XML: rendering golden files, exact round trips, and parsing past libvirt's defaults.

``golden/web.xml``, ``db.xml`` and ``minimal.xml`` are the renderer's output, reviewed by
hand; regenerate them with ``KVMOPS_UPDATE_GOLDEN=1`` and read the diff before keeping it.
``web-libvirt-expanded.xml`` and ``web-libvirt-live.xml`` are what libvirt returns for
``web.xml`` (``virsh dumpxml --inactive`` and the live XML), and ``foreign-virt-install.xml``
a domain kvmops did not define; those three are written by hand and never regenerated.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from reconciler.core import domxml, model, storagexml
from tests.unit import builders

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KVMOPS_UPDATE_GOLDEN") == "1"

WEB = model.DomainDefinition(
    name="web",
    uuid=builders.UUID,
    virt_type="kvm",
    vcpus=2,
    memory=2 * 1024 * 1024,
    max_memory=4 * 1024 * 1024,
    disks=(
        model.DiskDevice(target="vda", bus="virtio", pool="vmstore", volume="web-root.qcow2"),
        model.DiskDevice(target="vdb", bus="virtio", pool="vmstore", volume="web-cache.qcow2"),
    ),
    nics=(model.NicDevice(kind="network", source="default", model="virtio", mac="52:54:00:6b:3c:01"),),
    console=True,
    graphics="vnc",
    graphics_listen="127.0.0.1",
    owner=model.Ownership(
        manifest="vms/web.yaml",
        digest="sha256:" + "ab" * 32,
        run_strategy=model.RunStrategy.ALWAYS,
        volumes=(
            model.OwnedVolume("vmstore", "web-root.qcow2", model.DeletionPolicy.RETAIN, created=True),
            model.OwnedVolume("vmstore", "web-cache.qcow2", model.DeletionPolicy.DELETE, created=True),
        ),
    ),
)

DB = model.DomainDefinition(
    name="db",
    uuid=builders.OTHER_UUID,
    virt_type="qemu",
    vcpus=4,
    memory=4 * 1024 * 1024,
    max_memory=4 * 1024 * 1024,
    disks=(
        model.DiskDevice(target="vda", bus="virtio", pool="vmstore", volume="db-root.qcow2"),
        model.DiskDevice(target="sda", bus="scsi", pool="vmstore", volume="db-data.qcow2"),
    ),
    nics=(
        model.NicDevice(kind="network", source="default", model="virtio", mac="52:54:00:6b:3c:02"),
        model.NicDevice(kind="bridge", source="br0", model="e1000e", mac="52:54:00:6b:3c:03"),
    ),
    console=True,
    graphics="spice",
    graphics_listen="127.0.0.1",
    owner=model.Ownership(
        manifest="vms/backend.yaml",
        digest="sha256:" + "cd" * 32,
        run_strategy=model.RunStrategy.RERUN_ON_FAILURE,
        volumes=(
            model.OwnedVolume("vmstore", "db-root.qcow2", model.DeletionPolicy.RETAIN, created=True),
            model.OwnedVolume("vmstore", "db-data.qcow2", model.DeletionPolicy.RETAIN, created=False),
        ),
    ),
)

MINIMAL = model.DomainDefinition(
    name="tiny", uuid=None, virt_type="test", vcpus=1, memory=65536, max_memory=65536,
    disks=(), nics=(), console=False, graphics="none", owner=None,
)

CASES = [
    pytest.param(WEB, "web.xml", id="web"),
    pytest.param(DB, "db.xml", id="db-scsi-bridge-spice"),
    pytest.param(MINIMAL, "minimal.xml", id="minimal-unowned"),
]


def golden(name: str, rendered: str | None = None) -> str:
    """Return golden file ``name``; with KVMOPS_UPDATE_GOLDEN=1 write ``rendered`` there first."""
    path = GOLDEN / name
    if UPDATE and rendered is not None:
        path.write_text(rendered + "\n", encoding="utf-8")
    return path.read_text(encoding="utf-8").rstrip("\n")


@pytest.mark.parametrize(("definition", "name"), CASES)
def test_render_matches_the_golden_file(definition, name):
    """The rendered XML is exactly the reviewed golden file."""
    rendered = domxml.render(definition)
    assert rendered == golden(name, rendered)


@pytest.mark.parametrize(("definition", "name"), CASES)
def test_parse_of_render_is_the_identity(definition, name):
    """Rendering then parsing gives back the very same essence."""
    assert domxml.parse(domxml.render(definition)) == definition


@pytest.mark.parametrize(("definition", "name"), CASES)
def test_golden_file_parses_to_its_definition(definition, name):
    """The committed golden XML reads back as the definition it was rendered from."""
    assert domxml.parse(golden(name)) == definition


MACHINE = "pc-q35-8.2"


def test_libvirt_expanded_xml_parses_to_the_same_essence():
    """Addresses, controllers, emulator, video, inputs and audio are ignored; the machine type libvirt chose is read."""
    expanded = golden("web-libvirt-expanded.xml")
    assert domxml.parse(golden("web.xml")) == WEB
    assert domxml.parse(expanded) == dataclasses.replace(WEB, machine=MACHINE)


def test_libvirt_live_xml_parses_to_the_same_essence():
    """Live XML adds aliases, tap devices, ports, a security label and the expanded CPU; the rest is unchanged."""
    live = domxml.parse(golden("web-libvirt-live.xml"))
    assert live.cpu_mode == "custom" and live.cpu_model
    assert dataclasses.replace(live, cpu_mode=None, cpu_model=None) == dataclasses.replace(WEB, machine=MACHINE)


def test_rendered_domain_asks_for_what_a_managed_guest_needs():
    """The rendered XML boots from disk, has ACPI for graceful shutdowns and listens on loopback only."""
    root = ET.fromstring(domxml.render(WEB))
    assert root.get("type") == "kvm"
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("features/acpi") is not None
    assert root.find("devices/graphics").get("listen") == "127.0.0.1"
    assert root.find("memory").text == str(4 * 1024 * 1024) and root.find("currentMemory").text == str(2 * 1024 * 1024)
    assert [d.find("source").attrib for d in root.findall("devices/disk")] == [
        {"pool": "vmstore", "volume": "web-root.qcow2"}, {"pool": "vmstore", "volume": "web-cache.qcow2"},
    ]


def test_foreign_domain_has_no_owner():
    """A domain defined by someone else (no kvmops metadata) parses with owner None."""
    foreign = golden("foreign-virt-install.xml")
    assert domxml.parse_owner(ET.fromstring(foreign)) is None
    parsed = domxml.parse(foreign)
    assert parsed.owner is None
    assert (parsed.name, parsed.vcpus, parsed.memory) == ("win10", 4, 8 * 1024 * 1024)


def test_foreign_file_and_cdrom_disks_are_read_by_path_and_cdroms_skipped():
    """File-backed disks keep their path; CD-ROMs are not disks kvmops manages."""
    parsed = domxml.parse(golden("foreign-virt-install.xml"))
    assert parsed.disks == (
        model.DiskDevice(target="sda", bus="sata", path="/var/lib/libvirt/images/win10.qcow2"),
    )
    assert parsed.disks[0].source == "/var/lib/libvirt/images/win10.qcow2"


def owner_xml(attributes: str, volumes: str = "") -> str:
    return (
        "<domain type='kvm'><name>x</name><memory unit='KiB'>65536</memory><metadata>"
        f"<k:owner xmlns:k='{domxml.NAMESPACE}' {attributes}>{volumes}</k:owner>"
        "<other:thing xmlns:other='http://example.org/other'/></metadata></domain>"
    )


def test_ownership_metadata_is_read_whatever_prefix_libvirt_uses():
    """The owner mark is found by namespace, with its manifest, digest, strategy and volume records."""
    xml = owner_xml(
        "manifest='vms/a.yaml' digest='sha256:1' runStrategy='Halted'",
        "<k:volume pool='p' name='a.qcow2' deletionPolicy='Delete' created='true'/>"
        "<k:volume pool='p' name='b.qcow2' deletionPolicy='Retain' created='false'/>",
    )
    assert domxml.parse(xml).owner == model.Ownership(
        manifest="vms/a.yaml", digest="sha256:1", run_strategy=model.RunStrategy.HALTED,
        volumes=(
            model.OwnedVolume("p", "a.qcow2", model.DeletionPolicy.DELETE, created=True),
            model.OwnedVolume("p", "b.qcow2", model.DeletionPolicy.RETAIN, created=False),
        ),
    )


def test_unreadable_ownership_values_err_on_the_side_of_keeping():
    """An unknown deletion policy reads as Retain, an unknown strategy as Manual, a missing created as false."""
    xml = owner_xml("manifest='m' digest='d' runStrategy='Sometimes'",
                    "<k:volume pool='p' name='a.qcow2' deletionPolicy='Shred'/>")
    owner = domxml.parse(xml).owner
    assert owner.run_strategy is model.RunStrategy.MANUAL
    assert owner.volumes == (model.OwnedVolume("p", "a.qcow2", model.DeletionPolicy.RETAIN, created=False),)


def test_metadata_of_other_applications_is_not_ownership():
    """Metadata under another namespace (libosinfo, virt-manager) does not make a domain ours."""
    xml = ("<domain type='kvm'><name>x</name><metadata><libosinfo:libosinfo "
           "xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'/></metadata></domain>")
    assert domxml.parse(xml).owner is None


@pytest.mark.parametrize(
    ("memory", "kib"),
    [
        pytest.param("<memory unit='KiB'>1048576</memory>", 1048576, id="kib"),
        pytest.param("<memory>1048576</memory>", 1048576, id="default-unit-is-kib"),
        pytest.param("<memory unit='MiB'>1024</memory>", 1048576, id="mib"),
        pytest.param("<memory unit='G'>1</memory>", 1048576, id="g"),
        pytest.param("<memory unit='bytes'>1073741824</memory>", 1048576, id="bytes"),
    ],
)
def test_memory_units_are_normalised_to_kib(memory, kib):
    """Whatever unit the XML states, memory is compared in KiB; currentMemory defaults to memory."""
    parsed = domxml.parse(f"<domain type='kvm'><name>x</name>{memory}</domain>")
    assert (parsed.max_memory, parsed.memory) == (kib, kib)


def test_current_vcpus_are_what_the_guest_runs_with():
    """``<vcpu current='2'>4</vcpu>`` is two vCPUs; a plain count is itself."""
    assert domxml.parse("<domain type='kvm'><name>x</name><vcpu current='2'>4</vcpu></domain>").vcpus == 2
    assert domxml.parse("<domain type='kvm'><name>x</name><vcpu>3</vcpu></domain>").vcpus == 3


@pytest.mark.parametrize(
    "xml",
    [
        pytest.param("<domain><name>x", id="truncated"),
        pytest.param("not xml at all", id="not-xml"),
        pytest.param("<domain type='kvm'><name>x</name><vcpu>many</vcpu></domain>", id="non-numeric-vcpu"),
    ],
)
def test_unreadable_xml_raises_domain_xml_error(xml):
    """XML kvmops cannot read raises DomainXMLError, never a bare parser exception."""
    with pytest.raises(domxml.DomainXMLError):
        domxml.parse(xml)


def test_unknown_memory_unit_raises_domain_xml_error():
    """A unit outside kvmops' table is a DomainXMLError, not a KeyError that breaks the observation."""
    with pytest.raises(domxml.DomainXMLError):
        domxml.parse("<domain type='kvm'><name>x</name><memory unit='furlongs'>1</memory></domain>")


def test_libvirt_large_memory_units_are_understood():
    """libvirt accepts PiB and EiB; 1 PiB is 2**40 KiB."""
    parsed = domxml.parse("<domain type='kvm'><name>x</name><memory unit='PiB'>1</memory></domain>")
    assert parsed.max_memory == 2**40


def test_pool_xml_names_a_dir_pool_at_its_path():
    """A StoragePool renders as a dir pool with the manifest's name and target path."""
    root = ET.fromstring(storagexml.render_pool(builders.pool("vmstore", "/srv/vmstore")))
    assert (root.get("type"), root.findtext("name"), root.findtext("target/path")) == ("dir", "vmstore", "/srv/vmstore")


def test_volume_xml_is_a_sparse_qcow2_of_the_exact_capacity():
    """A volume renders in bytes, unallocated, as qcow2."""
    root = ET.fromstring(storagexml.render_volume("web-root.qcow2", 20 * builders.GIB))
    assert root.findtext("name") == "web-root.qcow2"
    assert (root.find("capacity").get("unit"), root.findtext("capacity")) == ("bytes", str(20 * builders.GIB))
    assert root.findtext("allocation") == "0"
    assert root.find("target/format").get("type") == "qcow2"


def test_a_fleet_placed_vm_carries_its_fleet_and_host_in_the_mark():
    """The mark records the fleet and the host that placed the VM, and reads them back."""
    placed = dataclasses.replace(WEB, owner=dataclasses.replace(WEB.owner, fleet="prod", host="kvm-2"))
    mark = ET.fromstring(domxml.render(placed)).find(f"metadata/{{{domxml.NAMESPACE}}}owner")
    assert (mark.get("fleet"), mark.get("host")) == ("prod", "kvm-2")
    assert domxml.parse(domxml.render(placed)) == placed
    assert domxml.parse(domxml.patch(golden("web-libvirt-expanded.xml"), placed)).owner == placed.owner


def test_a_single_host_mark_has_no_fleet_attributes():
    """Outside a fleet the mark is what it always was: no fleet or host attribute."""
    mark = ET.fromstring(domxml.render(WEB)).find(f"metadata/{{{domxml.NAMESPACE}}}owner")
    assert "fleet" not in mark.attrib and "host" not in mark.attrib


def test_hugepages_live_in_memory_backing_and_leave_its_other_settings_alone():
    """hugepages is <memoryBacking><hugepages/>, placed where libvirt puts it; removing it keeps <access> and the rest."""
    huge = dataclasses.replace(WEB, hugepages=True)
    root = ET.fromstring(domxml.render(huge))
    assert root.find("memoryBacking/hugepages") is not None
    assert [c.tag for c in root][[c.tag for c in root].index("currentMemory") + 1] == "memoryBacking"
    shared = domxml.render(huge).replace("<hugepages />", "<hugepages />\n<access mode='shared'/>")
    patched = ET.fromstring(domxml.patch(shared, WEB))
    assert patched.find("memoryBacking/hugepages") is None and patched.find("memoryBacking/access") is not None
    assert ET.fromstring(domxml.patch(domxml.render(huge), WEB)).find("memoryBacking") is None
    assert domxml.parse(domxml.patch(domxml.render(WEB), huge)) == huge
