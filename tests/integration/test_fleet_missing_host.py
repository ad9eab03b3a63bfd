"""Never twice when a Host manifest goes: the fleet's roster in every mark, missing hosts, ``forget-host``.

Every mark a fleet writes names the fleet's Hosts. A Host manifest deleted without a drain
leaves its name in the marks on the other Hosts: kvmops then knows a host exists that it
cannot see, and treats it as an unreachable host that may run any VM (nothing created
elsewhere, no pruning) until the manifest is back or ``forget-host`` removes the name.
Test-driver hosts, pinned as in :mod:`tests.integration.test_fleet_cli`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.adapters import hypervisor as hv
from reconciler.core import domxml
from tests import factories
from tests.integration.conftest import node_uri
from tests.integration.test_fleet_cli import HOSTS, Fleet, host_doc, pin_hosts, run, web


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """h1, h2, h3 declared (rack a, a, b) and h4 ready to be added; web-1..4 spread by rack."""
    built = Fleet(tmp_path)
    (tmp_path / "h4").mkdir()
    built.uris["h4"] = node_uri(tmp_path / "h4")
    built.hypervisors["h4"] = hv.Hypervisor.open(built.uris["h4"])
    pin_hosts(monkeypatch, built.hypervisors.values())
    declare(built, *HOSTS)
    factories.write(built.manifests, "vms.yaml",
                    *(web(f"web-{i}", hostSelector={"room": "lab"}, spreadBy="rack") for i in range(1, 5)))
    yield built
    built.close()


def declare(fleet: Fleet, *names: str) -> None:
    factories.write(fleet.manifests, "hosts.yaml", *(
        host_doc(name, fleet.uris[name], rack="b" if name == "h3" else "a", room="lab") for name in names))


def rosters(fleet: Fleet) -> dict[str, tuple[str, ...]]:
    """Return the roster in the mark of every domain on every host, by domain name."""
    return {record.name: domxml.parse_owner(domxml.parse_tree(record.inactive_xml)).roster
            for h in fleet.hypervisors.values() for record in h.list_domains()}


def everywhere(fleet: Fleet) -> list[str]:
    return sorted(vm for vms in fleet.domains().values() for vm in vms)


def test_every_mark_names_the_fleets_hosts(fleet, capsys):
    assert run(capsys, "apply", str(fleet.manifests))[0] == 0

    assert rosters(fleet) == {f"web-{i}": ("h1", "h2", "h3") for i in range(1, 5)}


def test_a_host_whose_manifest_was_deleted_is_missing_and_its_vms_are_created_nowhere_else(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))
    before = fleet.domains()
    on_h3 = before["h3"]
    assert on_h3
    declare(fleet, "h1", "h2")  # h3's manifest deleted without a drain: its VMs still run there

    status, out, _err = run(capsys, "plan", str(fleet.manifests), "--detailed-exitcode")
    assert status == 1
    assert "Host h3: MISSING: Host h3 is named in the fleet's ownership marks but no Host manifest declares it" in out
    assert "kvmops forget-host h3 --apply" in out
    assert f"Unknown: {', '.join(sorted(on_h3))}" in out
    assert "+ " not in out  # nothing is created
    assert out.splitlines()[-1].endswith("1 missing (h3)")

    status, out, _err = run(capsys, "apply", str(fleet.manifests))
    assert status == 1
    assert fleet.domains() == before  # h3's VMs were not defined anew on h1 or h2


def test_a_missing_host_suspends_pruning_on_every_host(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))
    before = fleet.domains()
    kept = sorted(before["h1"])[0]
    declare(fleet, "h1", "h2")
    factories.write(fleet.manifests, "vms.yaml", *(web(f"web-{i}", hostSelector={"room": "lab"}, spreadBy="rack")
                                                   for i in range(1, 5) if f"web-{i}" != kept))

    status, out, _err = run(capsys, "apply", str(fleet.manifests))

    assert status == 1
    assert "missing host h3" in out and "no domain is removed on any host" in out
    assert fleet.domains() == before  # its manifest is gone, yet it stays while h3 cannot be seen


def test_a_broken_host_manifest_is_reported_as_broken_not_missing(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))
    before = fleet.domains()
    documents = [host_doc(name, fleet.uris[name], rack="b" if name == "h3" else "a", room="lab") for name in HOSTS]
    documents[2]["spec"]["uri"] = "qemu:///no such uri"
    factories.write(fleet.manifests, "hosts.yaml", *documents)

    status, out, _err = run(capsys, "apply", str(fleet.manifests))

    assert status == 1
    assert "a Host manifest did not load" in out and "MISSING" not in out
    assert fleet.domains() == before


def test_forget_host_refuses_a_host_that_a_manifest_declares(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))

    status, out, err = run(capsys, "forget-host", "h3", str(fleet.manifests), "--apply")

    assert status == 1 and out == ""
    assert err.count("\n") == 1 and "still declares Host h3" in err
    assert rosters(fleet)["web-1"] == ("h1", "h2", "h3")


def test_forget_host_rewrites_only_the_marks_and_the_next_apply_creates_the_held_vms(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))
    before = fleet.domains()
    on_h3 = sorted(before["h3"])
    declare(fleet, "h1", "h2")

    status, out, _err = run(capsys, "forget-host", "h3", str(fleet.manifests))
    assert status == 0
    assert "forget host h3 in the marks of" in out
    assert f"the next apply creates {', '.join(on_h3)} on the reachable Hosts" in out
    assert all("h3" in roster for roster in rosters(fleet).values())  # a plan changes nothing

    status, out, _err = run(capsys, "forget-host", "h3", str(fleet.manifests), "--apply")
    assert status == 0, out
    assert "Forgotten" in out
    assert fleet.domains() == before  # nothing but marks changed
    assert {vm: r for vm, r in rosters(fleet).items() if vm not in on_h3} == {
        vm: ("h1", "h2") for vms in (before["h1"], before["h2"]) for vm in vms}

    status, out, _err = run(capsys, "apply", str(fleet.manifests))
    assert status == 0, out
    created = {vm for host in ("h1", "h2") for vm in fleet.domains()[host]}
    assert set(on_h3) <= created  # h3 is gone for good: its VMs now run on the others
    assert run(capsys, "plan", str(fleet.manifests), "--detailed-exitcode")[0] == 0


def test_a_new_host_is_recorded_in_every_mark_as_one_line_per_host_and_then_the_plan_is_empty(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))
    before = fleet.domains()
    declare(fleet, *HOSTS, "h4")

    status, out, _err = run(capsys, "plan", str(fleet.manifests), "--detailed-exitcode")
    assert status == 2
    for host, vms in before.items():
        if vms:
            assert (f"metadata.hosts  h1, h2, h3 -> h1, h2, h3, h4  (live)  record the fleet's 4 hosts in the marks of "
                    f"{len(vms)} VM{'s' if len(vms) != 1 else ''} (no restart)") in out
    assert out.count("VirtualMachine web-") == 0  # no VM is redefined or restarted for it

    status, out, _err = run(capsys, "apply", str(fleet.manifests))
    assert status == 0, out
    assert fleet.domains() == before
    assert set(rosters(fleet).values()) == {("h1", "h2", "h3", "h4")}
    assert run(capsys, "plan", str(fleet.manifests), "--detailed-exitcode")[0] == 0


def test_evacuate_of_a_host_without_manifest_points_to_forget_host(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))
    declare(fleet, "h1", "h2")

    status, _out, err = run(capsys, "evacuate", "h3", str(fleet.manifests), "--host-is-dead")

    assert status == 1 and "kvmops forget-host h3" in err
