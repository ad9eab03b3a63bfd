"""Every command knows the fleet: plan, apply, status, state export, doctor, wait, drain and
evacuate across several test-driver hosts, output per host, ``--host`` to pick one, and a Host
that cannot be reached kept out of everything but its own error.

Each Host is a ``test:///<dir>/node.xml`` of its own; the test driver gives every
connection a private copy of its host, so the hosts are opened once and the CLI is routed
to those connections (:func:`pin_hosts`), as ``pin_connection`` does for one host. The
test driver cannot migrate (the moves themselves are proven on the lab), so drain is
checked as far as its plan.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.adapters import hypervisor as hv
from tests import factories
from tests.integration.conftest import Pinned, node_uri

HOSTS = ("h1", "h2", "h3")


def host_doc(name: str, uri: str, **labels: str) -> dict:
    return {"apiVersion": "kvmops/v1", "kind": "Host", "metadata": {"name": name, "labels": labels},
            "spec": {"uri": uri, "capacity": {"vcpus": 8, "memory": "4GiB"}}}


def web(name: str, **placement: object) -> dict:
    document = factories.vm(name, disks=[factories.disk("root", "default", "16MiB", deletionPolicy="Delete")],
                            networks=[{"network": "default"}])
    document["metadata"]["labels"] = {"app": "web"}
    if placement:
        document["spec"]["placement"] = placement
    return document


class Fleet:
    """Three test-driver Hosts (h1, h2, h3: room lab, rack a/a/b), their open connections, and a manifest directory.

    ``write_hosts(dead=True)`` adds h4 (room attic), whose URI cannot be opened. The VMs
    select room lab: a VM whose placement admits an unreachable host is Unknown (it may
    run there), so it would be neither created nor placed.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.manifests = tmp_path / "manifests"
        self.uris = {}
        for name in HOSTS:
            (tmp_path / name).mkdir()
            self.uris[name] = node_uri(tmp_path / name)
        self.hypervisors = {name: hv.Hypervisor.open(uri) for name, uri in self.uris.items()}
        self.dead_uri = f"test://{tmp_path}/nowhere/node.xml"  # no such file: the connection fails

    def write_hosts(self, *, dead: bool = False) -> None:
        documents = [host_doc(name, uri, rack="a" if name != "h3" else "b", room="lab") for name, uri in self.uris.items()]
        if dead:
            documents.append(host_doc("h4", self.dead_uri, rack="c", room="attic"))
        factories.write(self.manifests, "hosts.yaml", *documents)

    def domains(self) -> dict[str, set[str]]:
        return {name: {r.name for r in h.list_domains()} for name, h in self.hypervisors.items()}

    def close(self) -> None:
        for h in self.hypervisors.values():
            h.close()


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    built = Fleet(tmp_path)
    pin_hosts(monkeypatch, built.hypervisors.values())
    built.write_hosts()
    factories.write(built.manifests, "vms.yaml", *(web(f"web-{i}", hostSelector={"room": "lab"}, spreadBy="rack") for i in range(1, 5)))
    yield built
    built.close()


def pin_hosts(monkeypatch: pytest.MonkeyPatch, hypervisors) -> None:
    """Make every ``Hypervisor.open`` of one of ``hypervisors``' URIs return that open connection."""
    pinned = {h.uri: h for h in hypervisors}
    original = hv.Hypervisor.open.__func__

    def open_pinned(cls, uri: str, **options):
        if uri in pinned:
            return Pinned(pinned[uri])
        return original(cls, uri, **options)

    monkeypatch.setattr(hv.Hypervisor, "open", classmethod(open_pinned))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_fleet_plan_places_every_vm_and_groups_the_changes_per_host(fleet, capsys):
    status, out, err = run(capsys, "plan", str(fleet.manifests), "--detailed-exitcode")

    assert (status, err) == (2, "")
    assert out.index("Host h1") < out.index("Host h2") < out.index("Host h3")
    assert out.splitlines()[-1] == "Fleet default: 3 hosts; VMs per host: h1 1, h2 1, h3 2; 0 migrations"
    assert fleet.domains() == {"h1": set(), "h2": set(), "h3": set()}  # a plan changes nothing


def test_apply_converges_every_host_and_the_next_plan_is_empty(fleet, capsys):
    status, out, _err = run(capsys, "apply", str(fleet.manifests))

    assert status == 0, out
    assert "Fleet converged" in out
    placed = fleet.domains()
    assert sorted(vm for vms in placed.values() for vm in vms) == ["web-1", "web-2", "web-3", "web-4"]
    assert all(len(vms) >= 1 for vms in placed.values())
    assert run(capsys, "plan", str(fleet.manifests), "--detailed-exitcode")[0] == 0


def test_each_vm_carries_the_fleet_and_its_host_in_its_mark(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))

    for name, hypervisor in fleet.hypervisors.items():
        for record in hypervisor.list_domains():
            assert 'fleet="default"' in record.inactive_xml and f'host="{name}"' in record.inactive_xml


def test_host_restricts_apply_to_that_host_and_places_nothing_twice(fleet, capsys):
    status, out, _err = run(capsys, "apply", str(fleet.manifests), "--host", "h3")

    assert status == 0, out
    assert fleet.domains()["h1"] == fleet.domains()["h2"] == set()
    on_h3 = fleet.domains()["h3"]
    assert on_h3

    run(capsys, "apply", str(fleet.manifests))
    everywhere = [vm for vms in fleet.domains().values() for vm in vms]
    assert sorted(everywhere) == ["web-1", "web-2", "web-3", "web-4"]  # what h3 got first stayed there
    assert fleet.domains()["h3"] == on_h3


def test_an_unreachable_host_is_an_error_in_its_own_section_and_the_others_converge(fleet, capsys):
    fleet.write_hosts(dead=True)
    factories.write(fleet.manifests, "pinned.yaml", web("db", host="h4"))

    status, out, _err = run(capsys, "apply", str(fleet.manifests))

    assert status == 1
    assert "Host h4" in out and "UNREACHABLE" in out
    assert "1 unreachable (h4)" in out
    everywhere = sorted(vm for vms in fleet.domains().values() for vm in vms)
    assert everywhere == ["web-1", "web-2", "web-3", "web-4"]  # db is Unknown: never created elsewhere
    assert "Unknown: db" in out


@pytest.mark.parametrize("breakage", ["a typo in its URI", "its URI given to another Host too"])
def test_a_vm_on_a_host_whose_manifest_broke_is_never_created_on_another(fleet, capsys, breakage):
    """Without its manifest kvmops cannot see that Host: a VM found on no other Host may run there, so it is not placed."""
    run(capsys, "apply", str(fleet.manifests))
    before = fleet.domains()
    documents = [host_doc(name, uri, rack="a" if name != "h3" else "b", room="lab") for name, uri in fleet.uris.items()]
    documents[2]["spec"]["uri"] = "qemu:///no such uri" if breakage == "a typo in its URI" else fleet.uris["h2"]
    factories.write(fleet.manifests, "hosts.yaml", *documents)

    status, out, _err = run(capsys, "apply", str(fleet.manifests))

    assert status == 1
    assert fleet.domains() == before  # h3's VMs were not defined anew on h1 or h2 (nor h2's removed)
    assert "a Host manifest did not load" in out


def test_status_lists_the_vms_per_host_and_names_an_unreachable_one(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))
    fleet.write_hosts(dead=True)

    status, out, _err = run(capsys, "status", "--manifests", str(fleet.manifests))

    assert status == 1
    sections = out.split("\nHost ")
    assert [s.split(" ")[0] for s in ["Host " + sections[0][5:], *sections[1:]]][:4] == ["Host", "h2", "h3", "h4"]
    for name, vms in fleet.domains().items():
        section = out[out.index(f"Host {name} "):]
        for vm in vms:
            assert vm in section.split("\n\n")[0]
    assert "UNREACHABLE" in out[out.index("Host h4"):]
    assert out.splitlines()[-1] == "Fleet default: 4 host(s), 4 managed VM(s); unreachable: h4"

    status, out, _err = run(capsys, "status", "--manifests", str(fleet.manifests), "--host", "h3", "-o", "json")
    data = json.loads(out)
    assert status == 0 and [h["host"] for h in data["hosts"]] == ["h3"]
    assert {vm["name"] for vm in data["hosts"][0]["vms"]} == fleet.domains()["h3"]


def test_a_fleet_snapshot_holds_every_host_and_plans_like_the_live_fleet(fleet, capsys, tmp_path):
    run(capsys, "apply", str(fleet.manifests))
    snapshot = tmp_path / "fleet.json"

    status, _out, err = run(capsys, "state", "export", "--manifests", str(fleet.manifests), "-o", str(snapshot))
    assert status == 0, err
    data = json.loads(snapshot.read_text())
    assert sorted(data["hosts"]) == ["h1", "h2", "h3"]

    factories.write(fleet.manifests, "more.yaml", web("web-5", hostSelector={"room": "lab"}, spreadBy="rack"))
    status, from_snapshot, _ = run(capsys, "plan", str(fleet.manifests), "--state", str(snapshot), "--detailed-exitcode")
    assert status == 2
    assert "planned against a snapshot" in from_snapshot
    _status, live, _ = run(capsys, "plan", str(fleet.manifests))
    assert from_snapshot.splitlines()[-1] == live.splitlines()[-1]


def test_a_single_host_snapshot_is_refused_for_a_fleet(fleet, capsys, tmp_path):
    snapshot = tmp_path / "one.json"
    run(capsys, "state", "export", "--connect", fleet.uris["h1"], "-o", str(snapshot))

    status, _out, err = run(capsys, "plan", str(fleet.manifests), "--state", str(snapshot))

    assert status == 1
    assert "a snapshot of one host, but the manifests declare Hosts" in err


def test_drain_plans_the_host_cordoned_and_changes_nothing(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))
    before = fleet.domains()
    busy = next(name for name, vms in before.items() if vms)

    status, out, err = run(capsys, "drain", busy, str(fleet.manifests))

    assert status == 0, err
    assert f"kvmops drain {busy}" in out
    assert f"{len(before[busy])} migration" in out.splitlines()[-1]
    assert "the cordon holds for this command only" in err
    assert fleet.domains() == before


def test_evacuate_refuses_vms_whose_disks_are_not_shared(fleet, capsys):
    fleet.write_hosts(dead=True)
    factories.write(fleet.manifests, "pinned.yaml", web("db", host="h4"))
    (fleet.manifests / "pinned.yaml").write_text(
        (fleet.manifests / "pinned.yaml").read_text().replace("host: h4", "hostSelector: {rack: c}"))

    status, _out, err = run(capsys, "evacuate", "h4", str(fleet.manifests))
    assert status == 1 and "--host-is-dead" in err

    status, _out, err = run(capsys, "evacuate", "h4", str(fleet.manifests), "--host-is-dead")
    assert status == 1
    assert "refused, nothing planned: VM db has disks that are not on a shared pool (root)" in err


def test_fleet_options_are_refused_where_they_mean_nothing(fleet, capsys, tmp_path):
    status, _out, err = run(capsys, "plan", str(fleet.manifests), "--connect", fleet.uris["h1"])
    assert status == 1 and "declare Hosts, each reached at its own spec.uri" in err

    status, _out, err = run(capsys, "plan", str(fleet.manifests), "--host", "nope")
    assert status == 1 and "no Host named 'nope'" in err

    single = tmp_path / "single"
    factories.write(single, "vm.yaml", web("solo"))
    status, _out, err = run(capsys, "plan", str(single), "--connect", fleet.uris["h1"], "--host", "h1")
    assert status == 1 and "no Host manifests here" in err


def test_without_hosts_apply_drives_the_connect_host_as_before(fleet, capsys, tmp_path):
    single = tmp_path / "single"
    factories.write(single, "vm.yaml", web("solo"))

    status, out, _err = run(capsys, "apply", str(single), "--connect", fleet.uris["h2"])

    assert status == 0
    assert "Fleet" not in out and "Converged: a fresh plan shows no changes." in out
    assert fleet.domains() == {"h1": set(), "h2": {"solo"}, "h3": set()}
    record = next(iter(fleet.hypervisors["h2"].list_domains()))
    assert "fleet=" not in record.inactive_xml and "host=" not in record.inactive_xml


def test_doctor_checks_every_host_and_fails_for_the_unreachable_one(fleet, capsys):
    fleet.write_hosts(dead=True)

    status, out, _err = run(capsys, "doctor", str(fleet.manifests))

    assert status == 1
    assert [line.split(" ")[1] for line in out.splitlines() if line.startswith("Host ")] == ["h1", "h2", "h3", "h4"]
    assert "[FAIL] libvirtd" in out[out.index("Host h4"):]
    assert out.splitlines()[-1].startswith("4 host(s), ")


def test_doctor_shows_no_password_of_a_host_uri(fleet, capsys):
    """Every check's detail is redacted: a libvirt that answers quotes its URI, secrets and all."""
    documents = [host_doc(name, uri, room="lab") for name, uri in fleet.uris.items()]
    documents[0]["spec"]["uri"] = "test:///default?password=s3cretpw"
    factories.write(fleet.manifests, "hosts.yaml", *documents)

    _status, out, err = run(capsys, "doctor", str(fleet.manifests), "--host", "h1")

    assert "libvirtd: test:///default?password=*** answers" in out
    assert "s3cretpw" not in out + err


def test_wait_finds_the_vm_on_its_host(fleet, capsys):
    run(capsys, "apply", str(fleet.manifests))
    where = next(name for name, vms in fleet.domains().items() if "web-1" in vms)

    status, out, _err = run(capsys, "wait", "web-1", "--for", "running", "--manifests", str(fleet.manifests),
                            "--timeout", "5")

    assert status == 0
    assert out.strip() == f"{where}: web-1 is running"


@pytest.mark.parametrize("broken", ["qemu+ssh://bad host/system", 42])
def test_a_fleet_whose_every_host_is_broken_changes_no_host_at_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, broken: object):
    local = hv.Hypervisor.open(node_uri(tmp_path))
    try:
        pin_hosts(monkeypatch, [local])
        manifests = tmp_path / "manifests"
        factories.write(manifests, "hosts.yaml", host_doc("h1", broken))  # type: ignore[arg-type]
        factories.write(manifests, "vms.yaml", web("web-1"))

        status = cli.main(["apply", str(manifests), "--connect", local.uri])

        assert status == cli.EXIT_ERROR
        assert "web-1" not in {record.name for record in local.list_domains()}
        assert "declare Hosts" in capsys.readouterr().err
        assert cli.main(["plan", str(manifests)]) == cli.EXIT_ERROR  # no host to plan on: the broken Host is the answer
        assert "hosts.yaml:" in capsys.readouterr().out
    finally:
        local.close()


def test_the_host_timeout_is_the_flag_else_the_configuration_files_and_above_zero(fleet, capsys, tmp_path):
    from reconciler.runtime import command_settings

    config = tmp_path / "kvmops.yaml"
    config.write_text("hostTimeout: 2.5\n", encoding="utf-8")
    assert command_settings.host_timeout(str(config), None) == 2.5
    assert command_settings.host_timeout(str(config), 7.0) == 7.0
    assert command_settings.host_timeout(None, None) == 10.0

    status, out, _err = run(capsys, "plan", str(fleet.manifests), "--config", str(config))
    assert status == 0 and "Fleet default: 3 hosts" in out

    with pytest.raises(SystemExit) as usage:
        cli.main(["plan", str(fleet.manifests), "--host-timeout", "0"])
    assert usage.value.code == 1 and "between 0 (excluded) and 3600 seconds" in capsys.readouterr().err
    config.write_text("hostTimeout: 0\n", encoding="utf-8")
    status, _out, err = run(capsys, "plan", str(fleet.manifests), "--config", str(config))
    assert status == 1 and "hostTimeout" in err and "Traceback" not in err



def test_a_looking_command_takes_the_flags_scope_else_the_configuration_files(tmp_path):
    from reconciler.runtime import command_settings

    config = tmp_path / "kvmops.yaml"
    config.write_text("scope: blue\n", encoding="utf-8")

    assert command_settings.scoped(None, str(config)).scope == "blue"  # doctor and validate --live in a fleet
    assert command_settings.scoped("green", str(config)).scope == "green"
    assert command_settings.scoped(None).scope == "default"


def test_a_host_slower_to_look_at_than_the_host_timeout_is_waited_for_not_taken_for_unreachable(fleet, capsys, monkeypatch):
    """A busy libvirtd answers slowly but answers (its keepalives too): only silence, or a look past
    ``deadlines.look_timeout``, makes a Host unreachable. With 50 guests churning, a whole look took up to 10.2 s,
    past the 10 s default ``--host-timeout``, which once made a busy Host unreachable one pass in six."""
    from reconciler.runtime import observe

    slow = fleet.hypervisors["h2"]
    look = observe.observe

    def slow_look(hypervisor, *args, **kwargs):
        if getattr(hypervisor, "enter_result", hypervisor) is slow:  # (the CLI is handed Pinned wrappers)
            time.sleep(1.5)
        return look(hypervisor, *args, **kwargs)

    monkeypatch.setattr(observe, "observe", slow_look)
    status, out, err = run(capsys, "plan", str(fleet.manifests), "--host-timeout", "1", "--detailed-exitcode")

    assert (status, err) == (2, ""), out + err
    assert "UNREACHABLE" not in out and "did not answer" not in out
    assert out.splitlines()[-1] == "Fleet default: 3 hosts; VMs per host: h1 1, h2 1, h3 2; 0 migrations"
