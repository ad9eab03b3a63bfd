"""Each managed domain field is declared once, and the XML, the diff and the restart-pending checks read that declaration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reconciler.adapters import manifests
from reconciler.core import desired, domxml, fields, model, planner
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


# --- the desired side: a simple field needs no code of its own ---------------------------

NOT_SIMPLE = {"uuid", "virtType", "maxMemory", "memory", "install", "graphics", "graphics.listen", "graphics.password",
              "disks", "cdroms", "nics"}


def simple_fields() -> list:
    return [pytest.param(f, id=f.label) for f in fields.SIMPLE_FIELDS]


def bare() -> model.DomainDefinition:
    """A plain VM's definition without devices: what it plans needs no pool or network."""
    return dataclasses.replace(plain(), disks=(), nics=())


def round_trip(domain: model.DomainDefinition) -> tuple[dict, model.VMSpec, model.DomainDefinition, dict]:
    """Import ``domain``; return the manifest's spec, the VMSpec read from it, its planned definition and creation lines."""
    document, warnings = desired.manifest_for(domain, autostart=False, capacities={})
    assert warnings == []
    state = desired.build(builders.manifest_set({"vms/web.yaml": manifests.dump([document])}))
    assert state.problems == ()
    spec = state.vms[domain.name]
    host = builders.actual(host_info=builders.host("kvm", "qemu"))
    definition = planner.desired_definition(spec, None, host, state, planner.Settings())
    plan = planner.plan_changes(state, host)
    (resource,) = [r for r in plan.resources if r.name == domain.name]
    return document["spec"], spec, definition, {c.path: c.new for c in resource.changes}


def test_a_manifest_field_either_maps_to_the_definition_or_names_the_code_that_reads_it():
    """A simple field carries its manifest mapping; any other manifest field says in desired_by what reads it."""
    for declared in fields.FIELDS:
        if declared.schema is None:
            assert declared.manifest is None and not declared.desired_by, declared.label
        else:
            assert (declared.manifest is not None) != bool(declared.desired_by), declared.label
    assert {f.label for f in fields.FIELDS if f.schema is not None and f.manifest is None} == NOT_SIMPLE


@pytest.mark.parametrize("declared", simple_fields())
def test_a_simple_field_is_one_manifest_value_and_the_same_attributes_on_the_spec_and_the_definition(declared):
    """``spec.<key>`` in the schema; VMSpec has the definition's attributes, with the same defaults."""
    assert "." not in declared.manifest_key
    assert declared.schema in manifest_sets.schema_paths("virtualmachine")
    on_spec = {f.name: f for f in dataclasses.fields(model.VMSpec)}
    for name in declared.attrs:
        assert name in on_spec, f"VMSpec.{name} is missing"
        assert on_spec[name].default == fields.DEFAULTS.get(name, dataclasses.MISSING), name


@pytest.mark.parametrize("declared", simple_fields())
def test_a_simple_field_goes_through_import_the_manifest_and_a_new_vms_plan_with_no_code_of_its_own(declared):
    """Import writes it, the manifest reader reads it, the plan defines it and the creation summary shows it."""
    changed = {name: OTHER_VALUES[name] for name in declared.attrs}
    domain = dataclasses.replace(bare(), **changed)
    manifest, spec, definition, created = round_trip(domain)
    assert declared.manifest_key in manifest
    assert {name: getattr(spec, name) for name in declared.attrs} == changed
    assert {name: getattr(definition, name) for name in declared.attrs} == changed
    assert created[declared.label] == declared.text(domain)


@pytest.mark.parametrize("declared", simple_fields())
def test_a_simple_field_at_its_default_is_left_out_of_an_imported_manifest_and_of_a_new_vms_summary(declared):
    """A definition at the field's default imports without the key, reads back as the default, and says nothing."""
    domain = bare()
    manifest, spec, definition, created = round_trip(domain)
    written = not declared.at_default(domain)
    assert (declared.manifest_key in manifest) == written
    assert (declared.label in created) == written
    assert {name: getattr(spec, name) for name in declared.attrs} == {name: getattr(domain, name) for name in declared.attrs}


def test_the_creation_order_and_the_import_order_name_declared_fields_only():
    """The older orders that plans and imported manifests keep name fields that exist (a typo would drop one)."""
    assert {f.label for f in fields.CREATION_ORDER} == {f.label for f in fields.FIELDS}
    assert set(fields._CREATION_FIRST) <= {f.label for f in fields.FIELDS}
    assert set(desired._IMPORT_FIRST) <= {f.manifest_key for f in fields.FIELDS if f.schema is not None}
