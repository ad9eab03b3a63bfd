"""Ownership: only a mark written for the very domain carrying it makes a domain kvmops'.

The domains here go through the real reading path (:func:`reconciler.core.actual.interpret`
of raw XML records), since a clone is a matter of XML: ``virt-clone`` copies ``<metadata>``
and gives the copy a new name and UUID.
"""

from __future__ import annotations

import dataclasses
import re

from reconciler.core import actual, domxml, model, planner, render
from reconciler.core import plan as plans
from tests.unit import builders as b

RUNNING, SHUTOFF = model.PowerState.RUNNING, model.PowerState.SHUTOFF
CLONE_UUID = "0b5e3c55-1c1a-4b8e-9a5c-3f0d6c1e2a77"


def web(**fields) -> model.VMSpec:
    return b.vm("web", disks=(b.disk("root", b.GIB, policy=model.DeletionPolicy.DELETE),), **fields)


def applied_xml(spec: model.VMSpec, uuid: str = b.UUID) -> str:
    """Return the XML kvmops defines for ``spec`` on an empty host, with ``uuid``."""
    result = planner.plan_changes(b.desired(spec), b.actual())
    *_intent, define = [s for r in result.resources for s in r.steps if isinstance(s, plans.DefineDomain)]
    return define.xml.replace(define.uuid, uuid)  # the last definition: volumes recorded as complete


def cloned(xml: str, name: str, uuid: str = CLONE_UUID) -> str:
    """Return ``xml`` as virt-clone leaves it: new name, new UUID, the same metadata."""
    xml = re.sub(r"<name>[^<]*</name>", f"<name>{name}</name>", xml, count=1)
    return re.sub(r"<uuid>[^<]*</uuid>", f"<uuid>{uuid}</uuid>", xml, count=1)


def record(xml: str, power: model.PowerState = SHUTOFF) -> model.DomainRecord:
    root = domxml.parse_tree(xml)
    return model.DomainRecord(
        name=root.findtext("name"), uuid=root.findtext("uuid"), inactive_xml=xml, power=power,
        shutoff_reason=model.ShutoffReason.SHUTDOWN if power is SHUTOFF else None, autostart=False, persistent=True,
    )


def host(*xmls: str, volumes: tuple[model.ObservedVolume, ...] = ()) -> model.ActualState:
    return actual.interpret(model.Observation(
        host=b.host(), domains=tuple(record(x) for x in xmls), pools=(b.observed_pool(),), volumes=volumes,
    ))


def unbound(xml: str) -> str:
    """Return ``xml`` with its mark as kvmops wrote it before marks named their domain."""
    return re.sub(r' domain="[^"]*" uuid="[^"]*"', "", xml)


def test_the_mark_names_the_domain_it_was_written_for():
    """The owner mark kvmops writes records the domain's name and UUID, and reads back as bound to that domain."""
    xml = applied_xml(web())
    owner, binding = domxml.mark_binding(domxml.parse_tree(xml))
    assert (owner.bound_name, owner.bound_uuid, binding) == ("web", b.UUID, model.MarkBinding.BOUND)
    assert host(xml).domains["web"].owned


def test_a_cloned_domain_is_foreign():
    """A copy of web's XML under another name and UUID (what virt-clone makes) is foreign, with its copied mark kept for the report."""
    state = host(applied_xml(web()), cloned(applied_xml(web()), "web-clone"))
    clone = state.domains["web-clone"]
    assert not clone.owned and clone.definition is None
    assert clone.copied_mark is not None and clone.copied_mark.written_for() == f"domain web, UUID {b.UUID}"
    assert state.domains["web"].owned


def test_a_clone_is_never_pruned_and_the_plan_says_why():
    """With web's manifest in place and pruning on, the clone is neither stopped nor undefined; the plan warns about its copied mark."""
    state = host(applied_xml(web()), cloned(applied_xml(web()), "web-clone"))
    result = planner.plan_changes(b.desired(web()), state, settings=planner.Settings(prune=True))
    assert "web-clone" not in [r.name for r in result.resources]
    assert not any(getattr(s, "name", None) == "web-clone" for r in result.resources for s in r.steps)
    assert "web-clone" in result.foreign
    assert any(w.startswith(f"domain web-clone carries a copied kvmops mark (written for domain web, UUID {b.UUID}); "
                            "treated as foreign") for w in result.warnings), result.warnings


def test_a_clone_is_never_pruned_even_when_its_original_is_gone():
    """When the original was removed too, the clone's copied mark still proves nothing: nothing is planned for it."""
    state = host(cloned(applied_xml(web()), "web-clone"))
    result = planner.plan_changes(b.desired(b.vm("other")), state, settings=planner.Settings(prune=True))
    assert [r.name for r in result.changes] == ["other"]


def test_a_renamed_domain_is_foreign_too():
    """The same UUID under another name is not the domain the mark was written for."""
    state = host(cloned(applied_xml(web()), "web-renamed", uuid=b.UUID))
    assert not state.domains["web-renamed"].owned


def test_a_manifest_naming_a_clone_is_refused_naming_the_copied_mark():
    """A manifest declaring the clone's name gets a problem that says the mark was copied and points at adopt."""
    state = host(cloned(applied_xml(web()), "web-clone"))
    result = planner.plan_changes(b.desired(web(), b.vm("web-clone")), state)
    (problem,) = [p for p in result.problems if "web-clone" in p.message]
    assert "carries a kvmops mark copied from another domain (written for domain web" in problem.message
    assert "`kvmops adopt web-clone`" in problem.message


def test_an_unbound_mark_is_managed_and_bound_on_the_next_definition():
    """A domain marked by an older kvmops is still updated from its own manifest, and that definition binds the mark."""
    halted = web(run_strategy=model.RunStrategy.HALTED)
    state = host(unbound(applied_xml(halted)), volumes=b.volumes_of(halted))
    assert state.domains["web"].owned
    result = planner.plan_changes(b.desired(halted), state)
    (vm,) = result.changes
    (define,) = [s for s in vm.steps if isinstance(s, plans.DefineDomain)]
    assert domxml.mark_binding(domxml.parse_tree(define.xml))[1] is model.MarkBinding.BOUND
    assert [c.path for c in vm.changes] == ["metadata.boundTo"]
    after = host(define.xml, volumes=b.volumes_of(halted))
    assert not planner.plan_changes(b.desired(halted), after).has_changes


def test_an_unbound_mark_never_justifies_a_prune():
    """An owned domain whose mark names no domain and whose manifest is gone is kept, and the plan says so."""
    state = host(unbound(applied_xml(web())))
    result = planner.plan_changes(b.desired(b.vm("other")), state, settings=planner.Settings(prune=True))
    assert [r.name for r in result.changes] == ["other"]
    assert any("domain web carries a kvmops mark written by an older kvmops" in w and "never pruned" in w
               for w in result.warnings), result.warnings


def test_a_bound_orphan_is_still_pruned():
    """The binding takes nothing away from real ownership: web, bound and without manifest, is undefined."""
    result = planner.plan_changes(b.desired(b.vm("other")), host(applied_xml(web())), settings=planner.Settings(prune=True))
    (prune,) = [r for r in result.changes if r.name == "web"]
    assert any(isinstance(s, plans.UndefineDomain) for s in prune.steps)


def test_the_binding_survives_patch_and_parse():
    """Patching a bound domain's XML keeps the mark bound to it, so the next plan is empty."""
    xml = applied_xml(web())
    patched = domxml.patch(xml, dataclasses.replace(domxml.parse(xml), vcpus=4))
    assert domxml.parse(patched).owner.bound_uuid == b.UUID


def test_the_copied_mark_warning_is_printed_in_text_markdown_and_json():
    """Every output of a plan carries the clone's warning, not only the JSON."""
    state = host(applied_xml(web()), cloned(applied_xml(web()), "web-clone"))
    result = planner.plan_changes(b.desired(web()), state, settings=planner.Settings(prune=True))
    assert "Warning: domain web-clone carries a copied kvmops mark (written for domain web" in render.text(result)
    assert "domain web-clone carries a copied kvmops mark" in render.markdown(result)
    assert render.to_data(result)["warnings"] == list(result.warnings)
