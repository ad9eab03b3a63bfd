"""validate --live, import, adopt and ssh know the fleet: each acts on the Host the VM (or its
share of the manifests) is on, ``--host NAME`` picks one, and what would put a VM on two Hosts,
or move it, is refused with nothing written.

The Hosts are test-driver hosts opened once and pinned (see tests/integration/test_fleet_cli.py);
a foreign domain is one defined on a Host's connection without kvmops' mark.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reconciler.core import domxml
from tests import factories
from tests.integration.conftest import foreign_domain_xml, volume_xml
from tests.integration.test_fleet_cli import Fleet, fleet, pin_hosts, run, web  # noqa: F401 - fleet is a fixture

LEGACY_UUID = "5a1d6c3e-0000-4000-8000-0000000000cc"


def define_foreign(fleet: Fleet, host: str, name: str = "legacy", uuid: str = LEGACY_UUID) -> None:
    """Define, on ``host``, a domain kvmops does not manage, with one disk in pool default."""
    hypervisor = fleet.hypervisors[host]
    hypervisor.create_volume("default", volume_xml(f"{name}.qcow2"), f"{name}.qcow2")
    hypervisor.define_domain(foreign_domain_xml(name, uuid, volume=f"{name}.qcow2"), name)


def mark_of(fleet: Fleet, host: str, name: str = "legacy"):
    return domxml.parse(fleet.hypervisors[host].domain_xml(name)).owner


def import_to(fleet: Fleet, capsys, name: str = "legacy", *extra: str) -> tuple[int, str]:
    path = fleet.manifests / f"{name}.yaml"
    status, _out, err = run(capsys, "import", name, "--manifests", str(fleet.manifests), "-o", str(path), *extra)
    return status, err


@pytest.fixture
def applied(fleet: Fleet, capsys) -> Fleet:
    """The fleet with web-1..4 applied: every Host runs VMs it placed (h1 1, h2 1, h3 2)."""
    status, out, _err = run(capsys, "apply", str(fleet.manifests))
    assert status == 0, out
    return fleet


def where(fleet: Fleet, name: str) -> str:
    (host,) = [host for host, names in fleet.domains().items() if name in names]
    return host


# --- validate --live -------------------------------------------------------------------------------


def add_pool(fleet: Fleet, host: str, name: str) -> None:
    """Define and start a directory pool ``name`` on ``host`` only (no manifest declares it)."""
    hypervisor = fleet.hypervisors[host]
    hypervisor.define_pool(f"<pool type='dir'><name>{name}</name><target><path>/var/lib/{name}</path></target></pool>",
                           name)
    hypervisor.start_pool(name)


def db(host: str) -> dict:
    return factories.vm("db", disks=[factories.disk("root", "fast", "16MiB")], placement={"host": host})


def test_validate_live_checks_each_host_against_the_share_the_fleet_gives_it(fleet, capsys):
    """Pool fast exists on h1 alone: db pinned to h1 is valid, pinned to h2 it is h2's problem, not h1's or h3's."""
    add_pool(fleet, "h1", "fast")
    factories.write(fleet.manifests, "db.yaml", db("h1"))
    status, out, err = run(capsys, "validate", str(fleet.manifests), "--live")
    assert (status, err) == (0, ""), out
    assert [line.split(":")[0].split(" (")[0] for line in out.splitlines()[:3]] == ["Host h1", "Host h2", "Host h3"]
    assert all(line.endswith(": ok") for line in out.splitlines()[:3])
    assert out.splitlines()[-1].endswith("valid (3 file(s), 5 VirtualMachine(s), 0 StoragePool(s), 0 Network(s), "
                                         "0 Image(s), 3 Host(s)); Hosts checked: h1, h2, h3")

    factories.write(fleet.manifests, "db.yaml", db("h2"))
    status, out, _err = run(capsys, "validate", str(fleet.manifests), "--live")

    assert status == 1
    h2 = out[out.index("Host h2 ("):out.index("Host h3 (")]
    assert h2.splitlines()[0].endswith(": 1 problem(s)")
    assert h2.splitlines()[1].startswith(f"  {fleet.manifests / 'db.yaml'}:")
    assert "spec.disks[0].pool: unknown storage pool 'fast'" in h2
    assert out.count("unknown storage pool") == 1
    assert out.splitlines()[-1].startswith(f"1 problem(s) found in {fleet.manifests} (")
    assert run(capsys, "validate", str(fleet.manifests))[0] == 0  # offline, as ever: no host is asked


def test_validate_live_with_host_checks_that_host_alone(fleet, capsys):
    add_pool(fleet, "h1", "fast")
    factories.write(fleet.manifests, "db.yaml", db("h2"))

    status, out, _err = run(capsys, "validate", str(fleet.manifests), "--host", "h1", "-o", "json")
    assert status == 0
    data = json.loads(out)
    assert data["valid"] is True and [h["host"] for h in data["hosts"]] == ["h1"]

    status, out, _err = run(capsys, "validate", str(fleet.manifests), "--host", "h2", "-o", "json")
    data = json.loads(out)
    assert status == 1 and data["valid"] is False and data["problems"] == []
    (h2,) = data["hosts"]
    assert (h2["host"], h2["unreachable"]) == ("h2", None)
    assert [p["path"] for p in h2["problems"]] == ["spec.disks[0].pool"]


def test_validate_live_reports_a_vm_no_host_can_take(fleet, capsys):
    """Placement is part of the live check: a VM larger than any Host (4 GiB each) is the fleet's problem."""
    factories.write(fleet.manifests, "db.yaml", factories.vm(
        "db", memory="8GiB", disks=[factories.disk("root", "default", "16MiB")], placement={"hostSelector": {"room": "lab"}}))

    status, out, _err = run(capsys, "validate", str(fleet.manifests), "--live")

    assert status == 1
    assert any(line.startswith(f"{fleet.manifests / 'db.yaml'}:") for line in out.splitlines())
    assert run(capsys, "validate", str(fleet.manifests))[0] == 0


def test_validate_live_names_the_host_that_did_not_answer_and_checks_the_others(fleet, capsys):
    fleet.write_hosts(dead=True)

    status, out, _err = run(capsys, "validate", str(fleet.manifests), "--live")

    assert status == 1
    (h4,) = [line for line in out.splitlines() if line.startswith("Host h4 ")]
    assert ": UNREACHABLE: " in h4
    assert [line for line in out.splitlines() if line.startswith("Host h") and line.endswith(": ok")] == [
        f"Host {name} ({fleet.uris[name]}): ok" for name in ("h1", "h2", "h3")]
    assert out.splitlines()[-1].endswith("; Hosts checked: h1, h2, h3; not checked: h4")


def test_validate_refuses_connect_in_a_fleet_and_host_without_one(fleet, capsys, tmp_path):
    status, out, err = run(capsys, "validate", str(fleet.manifests), "--connect", fleet.uris["h2"])
    assert (status, out) == (1, "")
    assert "drop --connect and give --live to check every Host" in err
    assert f"is Host h2's spec.uri: --host h2" in err

    single = tmp_path / "single"
    factories.write(single, "vm.yaml", web("solo"))
    status, _out, err = run(capsys, "validate", str(single), "--host", "h1")
    assert status == 1 and "no Host manifests here" in err
    status, _out, err = run(capsys, "validate", str(fleet.manifests), "--host", "nope")
    assert status == 1 and "no Host named 'nope'" in err


def test_validate_connect_reports_a_network_the_host_lacks(fleet, capsys, tmp_path):
    """One host, as before, but the networks count too: a NIC on a network neither declared nor defined there."""
    single = tmp_path / "single"
    document = web("solo")
    document["spec"]["networks"] = [{"network": "nosuch"}]
    factories.write(single, "vm.yaml", document)

    assert run(capsys, "validate", str(single))[0] == 0
    status, out, _err = run(capsys, "validate", str(single), "--connect", fleet.uris["h1"])

    assert status == 1
    assert f"{single / 'vm.yaml'}:" in out and "spec.networks[0].network: unknown network 'nosuch'" in out


# --- import ----------------------------------------------------------------------------------------


def test_import_reads_the_domain_from_its_host_and_pins_the_manifest_there(fleet, capsys):
    define_foreign(fleet, "h2")

    status, err = import_to(fleet, capsys)

    assert status == 0, err
    text = (fleet.manifests / "legacy.yaml").read_text()
    assert text.startswith(f"# Imported from Host h2 ({fleet.uris['h2']}) by kvmops import legacy.\n")
    assert "# Next: kvmops adopt legacy --manifests <dir holding this file> --host h2, then kvmops plan." in text
    spec = yaml.safe_load(text)["spec"]
    assert spec["placement"] == {"host": "h2"} and spec["uuid"] == LEGACY_UUID
    assert run(capsys, "validate", str(fleet.manifests))[0] == 0


def test_import_with_host_reads_that_host_and_refuses_what_is_not_there(fleet, capsys):
    define_foreign(fleet, "h2")
    define_foreign(fleet, "h3", uuid="5a1d6c3e-0000-4000-8000-0000000000dd")

    status, err = import_to(fleet, capsys)
    assert status == 1 and "legacy is defined on h2, h3: give --host NAME" in err
    assert not (fleet.manifests / "legacy.yaml").exists()

    status, err = import_to(fleet, capsys, "legacy", "--host", "h3")
    assert status == 0, err
    assert yaml.safe_load((fleet.manifests / "legacy.yaml").read_text())["spec"]["uuid"] == "5a1d6c3e-0000-4000-8000-0000000000dd"

    status, _out, err = run(capsys, "import", "legacy", "--manifests", str(fleet.manifests), "--host", "h1")
    assert status == 1 and err.strip().endswith("no domain named legacy on Host h1")
    status, _out, err = run(capsys, "import", "legacy", "--manifests", str(fleet.manifests), "--connect",
                            fleet.uris["h2"])
    assert status == 1 and "--host h2" in err


def test_import_of_a_vm_no_reachable_host_has_names_the_silent_ones(fleet, capsys):
    fleet.write_hosts(dead=True)

    status, out, err = run(capsys, "import", "legacy", "--manifests", str(fleet.manifests))

    assert (status, out) == (1, "")
    assert "no domain named legacy on any reachable Host (unreachable: h4)" in err


# --- adopt -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["pinned by import", "a selector admitting every Host"])
def test_adopting_on_a_fleet_host_leaves_the_next_fleet_plan_empty(applied, capsys, placement):
    """import --host then adopt --host: the domain is the fleet's VM on h2, marked so, and nothing moves or changes."""
    define_foreign(applied, "h2")
    assert import_to(applied, capsys)[0] == 0
    if placement != "pinned by import":
        path = applied.manifests / "legacy.yaml"
        path.write_text(path.read_text().replace("placement:\n    host: h2", "placement:\n    hostSelector:\n"
                                                                           "      room: lab"))
    before = applied.domains()

    status, out, err = run(capsys, "adopt", "legacy", "--manifests", str(applied.manifests), "--host", "h2")

    assert (status, err) == (0, ""), err
    assert "domain legacy is now managed by kvmops as the fleet's VM on Host h2" in out
    owner = mark_of(applied, "h2")
    assert (owner.fleet, owner.host, owner.roster, owner.manifest) == ("default", "h2", ("h1", "h2", "h3"), "legacy.yaml")
    status, out, _err = run(capsys, "plan", str(applied.manifests), "--detailed-exitcode")
    assert status == 0, out
    assert out.splitlines()[-1] == "Fleet default: 3 hosts; VMs per host: h1 1, h2 2, h3 2; 0 migrations"
    status, out, _err = run(capsys, "apply", str(applied.manifests))
    assert status == 0 and applied.domains() == before


def test_adopt_refuses_a_host_the_placement_does_not_admit(applied, capsys):
    define_foreign(applied, "h2")
    assert import_to(applied, capsys)[0] == 0
    path = applied.manifests / "legacy.yaml"
    path.write_text(path.read_text().replace("host: h2", "host: h1"))

    status, out, err = run(capsys, "adopt", "legacy", "--manifests", str(applied.manifests), "--host", "h2")

    assert (status, out) == (1, "")
    assert ("domain legacy is not adopted on Host h2: Host h2 may not run it (placement.host is h1), so the next plan "
            "would move it") in err
    assert mark_of(applied, "h2") is None


def test_adopt_refuses_a_cordoned_host(applied, capsys):
    define_foreign(applied, "h2")
    assert import_to(applied, capsys)[0] == 0
    hosts = applied.manifests / "hosts.yaml"
    documents = list(yaml.safe_load_all(hosts.read_text()))
    documents[1]["spec"]["schedulable"] = False
    factories.write(applied.manifests, "hosts.yaml", *documents)

    status, _out, err = run(capsys, "adopt", "legacy", "--manifests", str(applied.manifests), "--host", "h2")

    assert status == 1 and "Host h2 is cordoned (schedulable: false), so the next plan would move it off" in err
    assert mark_of(applied, "h2") is None


def test_adopt_refuses_a_name_another_host_already_runs(applied, capsys):
    """web-1 runs on its Host; a foreign web-1 elsewhere, adopted, would be the same VM twice (split brain)."""
    home = where(applied, "web-1")
    other = next(host for host in ("h1", "h2", "h3") if host != home)
    define_foreign(applied, other, name="web-1")

    status, _out, err = run(capsys, "adopt", "web-1", "--manifests", str(applied.manifests), "--host", other)

    assert status == 1
    assert f"a domain named web-1 is also defined on Host {home} (managed by this fleet)" in err
    assert mark_of(applied, other, "web-1") is None
    status, out, _err = run(capsys, "plan", str(applied.manifests))
    assert status == 0 and "split brain" not in out  # the foreign copy is left alone as foreign, nothing more


def test_adopt_refuses_while_a_host_does_not_answer(applied, capsys):
    define_foreign(applied, "h2")
    assert import_to(applied, capsys)[0] == 0
    applied.write_hosts(dead=True)

    status, _out, err = run(capsys, "adopt", "legacy", "--manifests", str(applied.manifests), "--host", "h2")

    assert status == 1
    assert "Host h4 does not answer" in err and "cannot check that no domain legacy is defined there" in err
    assert mark_of(applied, "h2") is None


def test_adopt_in_a_fleet_needs_host_and_takes_no_connect(applied, capsys):
    define_foreign(applied, "h2")
    assert import_to(applied, capsys)[0] == 0

    status, _out, err = run(capsys, "adopt", "legacy", "--manifests", str(applied.manifests))
    assert status == 1 and "the manifests declare Hosts; give --host NAME" in err
    status, _out, err = run(capsys, "adopt", "legacy", "--manifests", str(applied.manifests), "--connect",
                            applied.uris["h2"])
    assert status == 1 and "is Host h2's spec.uri: --host h2" in err
    factories.write(applied.manifests, "ghost.yaml", web("ghost", hostSelector={"room": "lab"}))
    status, _out, err = run(capsys, "adopt", "ghost", "--manifests", str(applied.manifests), "--host", "h3")
    assert status == 1 and err.strip().endswith("domain ghost is not adopted on Host h3: no domain named ghost on Host h3")
    status, _out, err = run(capsys, "adopt", "legacy", "--connect", applied.uris["h2"], "--host", "h2")
    assert status == 1 and "no Host manifests here" in err
    assert mark_of(applied, "h2") is None


@pytest.mark.parametrize("with_manifests", [False, True])
def test_adopt_connect_on_a_host_the_fleet_placed_vms_on_is_refused(applied, capsys, tmp_path, with_manifests):
    """A single-host mark there would leave the VM out of the fleet's placement: refused, pointing to --host."""
    define_foreign(applied, "h2")
    extra = []
    if with_manifests:
        alone = tmp_path / "alone"
        factories.write(alone, "vm.yaml", web("legacy"))
        extra = ["--manifests", str(alone)]

    status, out, err = run(capsys, "adopt", "legacy", "--connect", applied.uris["h2"], *extra)

    assert (status, out) == (1, "")
    assert f"{applied.uris['h2']} is Host h2 of fleet default" in err
    assert "kvmops adopt legacy --manifests DIR --host h2" in err
    assert mark_of(applied, "h2") is None


def test_adopt_brings_a_single_host_mark_into_the_fleet(fleet, capsys, tmp_path):
    """A domain adopted on a host before the fleet placed anything there is made the fleet's VM by adopt --host."""
    define_foreign(fleet, "h2")
    assert import_to(fleet, capsys)[0] == 0
    path = fleet.manifests / "legacy.yaml"
    path.write_text(path.read_text().replace("placement:\n    host: h2\n", ""))  # what a single host's manifest says
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "legacy.yaml").write_text(path.read_text())
    status, _out, err = run(capsys, "adopt", "legacy", "--connect", fleet.uris["h2"], "--manifests", str(alone))
    assert status == 0, err
    assert mark_of(fleet, "h2").fleet == ""
    assert "metadata.host" in run(capsys, "plan", str(fleet.manifests))[1]

    status, out, err = run(capsys, "adopt", "legacy", "--manifests", str(fleet.manifests), "--host", "h2")

    assert (status, err) == (0, "")
    assert "carried kvmops' mark of a single host; it is now the fleet's VM on Host h2" in out
    owner = mark_of(fleet, "h2")
    assert (owner.fleet, owner.host, owner.roster) == ("default", "h2", ("h1", "h2", "h3"))
    status, out, _err = run(capsys, "plan", str(fleet.manifests))
    assert status == 0 and "VirtualMachine legacy" not in out and "metadata.host" not in out
    status, out, _err = run(capsys, "adopt", "legacy", "--manifests", str(fleet.manifests), "--host", "h2")
    assert (status, out.strip()) == (0, "domain legacy is already managed by kvmops (fleet default, Host h2)")


# --- ssh -------------------------------------------------------------------------------------------


def address_of(fleet: Fleet, capsys, name: str) -> str:
    _status, out, _err = run(capsys, "status", name, "--manifests", str(fleet.manifests), "-o", "json")
    (row,) = [vm for host in json.loads(out)["hosts"] for vm in host["vms"]]
    return row["addresses"][0]["ip"]


def test_ssh_finds_the_host_running_the_vm_and_asks_it_for_the_address(applied, capsys, execs):
    home = where(applied, "web-3")
    address = address_of(applied, capsys, "web-3")

    status, _out, err = run(capsys, "ssh", "web-3", "--manifests", str(applied.manifests), "--", "-p", "2222", "uptime")

    assert status == 1  # the test stops the exec
    assert f"kvmops: ssh to web-3 on Host {home} at {address} (lease)" in err
    assert execs == [["ssh", "ssh", "-p", "2222", address, "uptime"]]


def test_ssh_with_host_looks_there_only(applied, capsys, execs):
    home = where(applied, "web-3")
    other = next(host for host in ("h1", "h2", "h3") if host != home)

    status, _out, err = run(capsys, "ssh", "web-3", "--manifests", str(applied.manifests), "--host", home)
    assert status == 1 and f"on Host {home}" in err and len(execs) == 1

    status, _out, err = run(capsys, "ssh", "web-3", "--manifests", str(applied.manifests), "--host", other)
    assert status == 1 and err.strip().endswith(f"no domain named web-3 on Host {other}") and len(execs) == 1


def test_ssh_refuses_a_vm_on_two_hosts_and_one_on_none(applied, capsys, execs):
    home = where(applied, "web-1")
    other = next(host for host in ("h1", "h2", "h3") if host != home)
    define_foreign(applied, other, name="web-1")

    status, _out, err = run(capsys, "ssh", "web-1", "--manifests", str(applied.manifests))
    assert status == 1 and f"web-1 is defined on {', '.join(sorted((home, other)))}: give --host NAME" in err

    applied.write_hosts(dead=True)
    status, _out, err = run(capsys, "ssh", "db", "--manifests", str(applied.manifests))
    assert status == 1 and "no domain named db on any reachable Host (unreachable: h4)" in err

    status, _out, err = run(capsys, "ssh", "web-3", "--manifests", str(applied.manifests), "--connect",
                            applied.uris["h1"])
    assert status == 1 and "drop --connect" in err
    assert execs == []
