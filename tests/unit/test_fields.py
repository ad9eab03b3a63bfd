"""Each managed domain field is declared once, and the XML, the diff and the restart-pending checks read that declaration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reconciler.core import domxml, fields, model, planner
from reconciler.core.xmlproperty import WriteContext
from tests import manifest_sets
from tests.unit import builders

# A value for each declared attribute that differs from what builders.definition gives a plain VM.
OTHER_VALUES = {
    "virt_type": "qemu", "vcpus": 3, "max_memory": 4 * 1024 * 1024, "memory": 3 * 1024 * 1024, "console": False,
    "firmware": "efi", "machine": "pc-q35-7.2", "cpu_mode": "custom", "cpu_model": "qemu64", "boot": ("cdrom", "hd"),
    "kernel": "/var/lib/kvmops/vmlinuz", "initrd": "/var/lib/kvmops/initrd", "cmdline": "console=ttyS0",
    "guest_agent": True, "graphics_listen": "0.0.0.0", "graphics": "spice",
    "hugepages": True,
}


LIBVIRT_XML = (Path(__file__).parent / "golden" / "web-libvirt-expanded.xml").read_text(encoding="utf-8")


def plain() -> model.DomainDefinition:
    return builders.definition(builders.vm(memory=2 * 1024**3, max_memory=4 * 1024**3, graphics="vnc", console=True))


def declarations() -> list:
    return [pytest.param(f, id=f.label) for f in fields.DOMAIN_FIELDS]


def test_every_definition_field_is_declared_exactly_once():
    """Each DomainDefinition attribute belongs to exactly one declaration of the one table."""
    declared = [name for f in fields.FIELDS for name in f.attrs]
    assert sorted(declared) == sorted(f.name for f in dataclasses.fields(model.DomainDefinition))


def test_a_field_a_plan_does_not_compare_says_what_plans_it():
    """Device lists and identity name the code that handles them instead; compared fields need no such note."""
    assert all(bool(f.planned_by) != f.compared for f in fields.FIELDS)
    assert {f.label for f in fields.FIELDS if not f.compared} == {
        "name", "uuid", "owner", "graphics.password", "disks", "cdroms", "nics"}


def test_every_declared_attribute_has_a_test_value():
    """This module can change every declared attribute (a new field needs a value here)."""
    assert {name for f in fields.DOMAIN_FIELDS for name in f.attrs} == set(OTHER_VALUES)


@pytest.mark.parametrize("declared", [pytest.param(f, id=f.label) for f in fields.FIELDS if f.schema is not None])
def test_a_declared_field_names_a_manifest_field(declared):
    """The schema path of each declaration exists in the VirtualMachine schema."""
    assert declared.schema in manifest_sets.schema_paths("virtualmachine")


@pytest.mark.parametrize("declared", declarations())
def test_a_declaration_alone_writes_and_reads_its_field(declared):
    """A field's codec reads back what it wrote, into kvmops' XML and into libvirt's, with no other code."""
    after = dataclasses.replace(plain(), **{name: OTHER_VALUES[name] for name in declared.attrs})
    for root in (domxml.parse_tree(domxml.render(plain())), domxml.parse_tree(LIBVIRT_XML)):
        declared.write_xml(root, after, WriteContext())
        assert declared.read_xml(root) == {name: getattr(after, name) for name in declared.attrs}


@pytest.mark.parametrize("declared", declarations())
def test_a_change_of_a_declared_field_survives_the_xml_and_is_planned_under_its_label(declared):
    """Changing one declared field changes the rendered XML as parsed back, and the plan names the field."""
    before = plain()
    after = dataclasses.replace(before, **{name: OTHER_VALUES[name] for name in declared.attrs})
    assert domxml.parse(domxml.render(after)) == after
    assert domxml.parse(domxml.patch(domxml.render(before), after)) == after
    assert declared.differs(before, after)
    pending = {label for label, _old, _new in planner.restart_pending(before, after)}
    assert (declared.label in pending) == declared.pending


def test_graphics_listen_is_not_a_change_of_its_own_when_graphics_goes():
    """Switching graphics off reports graphics, not the listen address that goes with it."""
    before = plain()
    after = dataclasses.replace(before, graphics="none", graphics_listen=None)
    assert [f.label for f in fields.DOMAIN_FIELDS if f.differs(before, after)] == ["graphics"]
