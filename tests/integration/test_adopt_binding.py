"""`kvmops adopt` on domains kvmops already marks: a legacy (unbound) mark is bound, another scope's is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.adapters import hypervisor as hv
from reconciler.core import domxml, model
from tests.integration import conftest as c

LEGACY_UUID = "0c0c0c0c-0000-4000-8000-000000000001"
TWIN_UUID = "0c0c0c0c-0000-4000-8000-000000000002"
OTHER_UUID = "0c0c0c0c-0000-4000-8000-000000000003"


def unbound(xml: str) -> str:
    """Return ``xml`` with its mark as kvmops wrote it before marks named their domain."""
    return re.sub(r' domain="[^"]*" uuid="[^"]*"', "", xml, count=1)


def in_scope(xml: str, scope: str) -> str:
    return xml.replace('runStrategy="Always"', f'runStrategy="Always" scope="{scope}"', 1)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """legacy and twin: the same unbound mark (twin is a clone of a legacy VM); other: a bound mark of scope `other`."""
    legacy = unbound(c.owned_domain_xml("legacy", LEGACY_UUID, manifest="legacy.yaml", digest="sha256:0",
                                        volumes=(("legacy-root.qcow2", "Delete", True),)))
    solo = unbound(c.owned_domain_xml("solo", "0c0c0c0c-0000-4000-8000-000000000004", manifest="solo.yaml",
                                      digest="sha256:0", volumes=(("solo-root.qcow2", "Delete", True),)))
    twin = legacy.replace("<name>legacy</name>", "<name>twin</name>", 1).replace(LEGACY_UUID, TWIN_UUID, 1)
    other = in_scope(c.owned_domain_xml("other", OTHER_UUID, manifest="other.yaml", digest="sha256:0"), "other")
    directory = tmp_path / "host"
    directory.mkdir()
    uri = c.node_uri(directory, legacy + twin + solo + other,
                     volumes="".join(c.volume_xml(n) for n in ("legacy-root.qcow2", "solo-root.qcow2")))
    with hv.Hypervisor.open(uri) as connection:
        c.pin_connection(monkeypatch, connection)
        yield connection, uri


def mark(hypervisor: hv.Hypervisor, name: str):
    return domxml.mark_binding(domxml.parse_tree(hypervisor.domain_xml(name)))


def test_adopt_binds_a_legacy_mark_to_its_domain_and_says_so(host, capsys):
    """A mark from an older kvmops is bound to the domain carrying it, keeping its records; the output says so."""
    hypervisor, uri = host
    assert cli.main(["adopt", "solo", "--connect", uri]) == 0
    out = capsys.readouterr().out
    owner, binding = mark(hypervisor, "solo")
    assert binding is model.MarkBinding.BOUND and owner.bound_uuid == "0c0c0c0c-0000-4000-8000-000000000004"
    assert [(v.name, v.created) for v in owner.volumes] == [("solo-root.qcow2", True)]
    assert owner.manifest == "solo.yaml"
    assert "bound" in out and "older kvmops" in out


def test_adopt_refuses_to_bind_a_legacy_mark_another_domain_also_carries(host, capsys):
    """Two domains with the same legacy mark (a clone of an old VM): adopt cannot tell the original, so it binds neither."""
    hypervisor, uri = host
    assert cli.main(["adopt", "twin", "--connect", uri]) == 1
    err = capsys.readouterr().err
    assert "legacy" in err and "clone" in err
    assert mark(hypervisor, "twin")[1] is model.MarkBinding.UNBOUND


def test_adopt_refuses_a_domain_of_another_scope(host, capsys):
    """A domain another manifest set manages is not taken over: the mark stays, the exit status is 1."""
    hypervisor, uri = host
    before = hypervisor.domain_xml("other")
    assert cli.main(["adopt", "other", "--connect", uri]) == 1
    assert "scope other" in capsys.readouterr().err
    assert hypervisor.domain_xml("other") == before
