"""``kvmops state export`` and ``kvmops plan PATH --state FILE``: planning where libvirt is out of reach.

The host is the standard one of ``conftest.world`` (``web`` owned and declared, ``orphan``
owned and undeclared with a Retain and a Delete volume, ``legacy`` foreign), and the
manifests change ``web`` and add ``db``, so that a plan has an update, a create, a prune
with data loss and a foreign domain.  A snapshot taken with ``state export`` and planned
with ``--state`` must give exactly the plan a live ``plan`` gives, say where it came from,
and carry nothing of the foreign domain but its name and power state.  The plans from a
snapshot run with ``--connect`` pointing at a socket that does not exist.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from reconciler import cli
from tests import factories
from tests.integration import conftest

UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


@pytest.fixture
def changed(world: conftest.World) -> conftest.World:
    """Return the standard world with web's vcpus raised to 2 and a new VM db declared."""
    document = factories.vm(
        "web", vcpus=2, disks=[factories.disk("root", "default", "64MiB", deletionPolicy="Delete")],
        networks=[{"network": "default", "mac": conftest.WEB_MAC}],
    )
    factories.write(world.manifests, "web.yaml", document)
    factories.write(world.manifests, "db.yaml", factories.vm("db", disks=[factories.disk("root", "default", "64MiB")]))
    return world


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run ``kvmops ARGV``; return (exit status, stdout, stderr), none of which may be a traceback."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, err
    return status, out, err


@pytest.fixture
def snapshot_file(changed: conftest.World, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    """Return the path of a snapshot of the world's host written by ``kvmops state export --output``."""
    path = tmp_path / "host-snapshot.json"
    status, out, err = run(capsys, "state", "export", "--connect", changed.uri, "--output", str(path))
    assert status == 0, err
    assert out == ""
    return path


def live_plan(world: conftest.World, capsys: pytest.CaptureFixture, output: str) -> str:
    status, out, err = run(capsys, "plan", str(world.manifests), "--connect", world.uri, "--output", output)
    assert status == 0, err
    return out


def snapshot_plan(world: conftest.World, snapshot: Path, capsys: pytest.CaptureFixture, output: str) -> str:
    status, out, err = run(capsys, "plan", str(world.manifests), "--state", str(snapshot), "--output", output)
    assert status == 0, err
    return out


@pytest.fixture(autouse=True)
def unreachable_default_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --connect, kvmops would connect to a host that does not answer: a plan --state never asks it."""
    monkeypatch.setenv("KVMOPS_CONNECT", UNREACHABLE)


def test_state_and_connect_together_are_refused_as_contradictory(world, tmp_path, capsys):
    """--state plans against a snapshot and --connect against a live host: given both, plan refuses in one line."""
    status, out, err = run(capsys, "plan", str(world.manifests), "--state", str(tmp_path / "snap.json"),
                           "--connect", world.uri)
    assert (status, out) == (1, "")
    assert err == (f"kvmops: error: --state {tmp_path / 'snap.json'} and --connect {world.uri} contradict each other: "
                   "--state plans against a snapshot, --connect against a live host; give one of them\n")


# --- export -----------------------------------------------------------------------------


def test_export_writes_every_domain_pool_and_volume_of_the_host(changed, tmp_path, capsys):
    """state export --output FILE writes a version-1 snapshot of all three domains, the pool and its volumes, and says so on stderr."""
    path = tmp_path / "snap.json"

    status, out, err = run(capsys, "state", "export", "--connect", changed.uri, "--output", str(path))
    data = json.loads(path.read_text())

    assert status == 0
    assert out == ""
    assert err.startswith("snapshot of ") and err.endswith(f" ({changed.uri}) written to {path}\n")
    assert data["kvmops_snapshot"] == 1
    assert data["host"]["uri"] == changed.uri
    assert {d["name"]: (d["owned"], d["power"]) for d in data["domains"]} == {
        "web": (True, "running"), "orphan": (True, "running"), "legacy": (False, "running"),
    }
    assert [p["name"] for p in data["pools"]] == ["default"]
    assert {v["name"] for v in data["volumes"]} == {
        "web-root.qcow2", "orphan-keep.qcow2", "orphan-scratch.qcow2", "legacy-disk.qcow2",
    }


def test_export_without_output_prints_the_snapshot_on_stdout(changed, capsys):
    """Without --output the snapshot is the command's stdout, as JSON."""
    status, out, _err = run(capsys, "state", "export", "--connect", changed.uri)

    assert status == 0
    assert json.loads(out)["kvmops_snapshot"] == 1


def test_the_snapshot_holds_no_xml_of_a_foreign_domain(snapshot_file):
    """The foreign domain legacy is a name, a UUID, a power state and the storage it uses: neither its inactive nor its live XML is in the file."""
    text = snapshot_file.read_text()
    domains = {d["name"]: d for d in json.loads(text)["domains"]}

    assert domains["legacy"]["inactive_xml"] is None
    assert domains["legacy"]["live_xml"] is None
    assert domains["legacy"]["storage"] == [{"pool": "default", "volume": "legacy-disk.qcow2"}]
    assert "<name>legacy</name>" not in text
    assert conftest.LEGACY_UUID not in (domains["web"]["inactive_xml"] + domains["orphan"]["inactive_xml"])
    assert "<name>web</name>" in domains["web"]["inactive_xml"], "owned domains keep their XML"
    assert domains["web"]["live_xml"] is not None


def test_export_from_an_unreachable_libvirt_is_one_error_line(capsys, tmp_path):
    """state export with a URI nobody answers exits 1 with one error line and writes no file."""
    path = tmp_path / "snap.json"

    status, out, err = run(capsys, "state", "export", "--connect", UNREACHABLE, "--output", str(path))

    assert status == 1
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("kvmops: error: ")
    assert not path.exists()


# --- plan --state -----------------------------------------------------------------------


def test_a_plan_from_the_snapshot_is_the_live_plan(changed, snapshot_file, capsys):
    """plan --state gives the live plan's resources, changes, steps, foreign domains and summary; only the snapshot field differs."""
    live = json.loads(live_plan(changed, capsys, "json"))
    offline = json.loads(snapshot_plan(changed, snapshot_file, capsys, "json"))

    assert {r["name"]: r["actions"] for r in live["resources"]} == {
        "web": ["update"], "db": ["create", "start"], "orphan": ["delete", "stop"],
    }
    assert live["summary"]["impacts"]["data-loss"] == 1
    assert live["snapshot"] is None
    assert offline.pop("snapshot") is not None
    live.pop("snapshot")
    assert offline == live


def test_a_plan_from_the_snapshot_says_so_in_text_json_and_markdown(changed, snapshot_file, capsys):
    """Each output of plan --state carries the line naming the snapshot's host, URI and time, and 'not against the live host'."""
    taken = json.loads(snapshot_file.read_text())
    expected = (f"planned against a snapshot of {taken['hostname']} ({changed.uri}) taken {taken['taken_at']}, "
                "not against the live host")

    text = snapshot_plan(changed, snapshot_file, capsys, "text")
    document = json.loads(snapshot_plan(changed, snapshot_file, capsys, "json"))
    markdown = snapshot_plan(changed, snapshot_file, capsys, "markdown")

    assert text.splitlines()[1] == expected
    assert document["snapshot"] == expected
    assert markdown.splitlines()[0] == "<!-- kvmops-plan -->"
    assert markdown.splitlines()[3].startswith("_planned against a snapshot of ")
    assert "not against the live host_" in markdown.splitlines()[3]
    assert "planned against a snapshot" not in live_plan(changed, capsys, "text")


def test_a_snapshot_read_from_stdin_plans_like_a_file(changed, snapshot_file, capsys, monkeypatch):
    """plan --state - reads the snapshot from stdin, so export can be piped into plan."""
    monkeypatch.setattr("sys.stdin", io.StringIO(snapshot_file.read_text()))

    status, out, _err = run(capsys, "plan", str(changed.manifests), "--state", "-", "--output", "json",
                            "--detailed-exitcode")

    assert status == 2
    assert json.loads(out) == json.loads(snapshot_plan(changed, snapshot_file, capsys, "json"))


def test_a_plan_from_a_snapshot_leaves_the_host_alone(changed, snapshot_file, capsys):
    """Planning from a snapshot changes nothing on the host it was taken from."""
    before = changed.state()

    snapshot_plan(changed, snapshot_file, capsys, "text")

    assert changed.state() == before


# --- bad snapshot files -----------------------------------------------------------------


def plan_with(world: conftest.World, path: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    return run(capsys, "plan", str(world.manifests), "--state", str(path))


def assert_one_error_line(status: int, out: str, err: str, path: Path) -> str:
    """Assert exit 1, no output and one error line naming ``path``; return the message after the path."""
    assert status == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    prefix = f"kvmops: error: {path}: "
    assert err.startswith(prefix)
    return err[len(prefix):].strip()


def test_a_snapshot_of_a_newer_format_is_refused_in_one_line(changed, snapshot_file, capsys):
    """A snapshot whose kvmops_snapshot is 2 is refused with exit 1 and one line naming both versions."""
    data = json.loads(snapshot_file.read_text())
    data["kvmops_snapshot"] = 2
    snapshot_file.write_text(json.dumps(data))

    message = assert_one_error_line(*plan_with(changed, snapshot_file, capsys), snapshot_file)

    assert message.endswith("snapshot format 2 is not supported (this kvmops reads 1)")


def test_json_that_is_not_a_snapshot_is_refused_in_one_line(changed, tmp_path, capsys):
    """A JSON file without kvmops_snapshot (here a plan) is refused, saying how to make a snapshot."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format_version": "1", "resources": []}))

    message = assert_one_error_line(*plan_with(changed, path, capsys), path)

    assert "not a kvmops snapshot" in message and "kvmops state export" in message


def test_a_snapshot_missing_a_field_is_refused_in_one_line(changed, snapshot_file, capsys):
    """A snapshot without its domains is called malformed, naming the missing field."""
    data = json.loads(snapshot_file.read_text())
    del data["domains"]
    snapshot_file.write_text(json.dumps(data))

    message = assert_one_error_line(*plan_with(changed, snapshot_file, capsys), snapshot_file)

    assert "malformed kvmops snapshot" in message and "domains" in message


def test_a_missing_snapshot_file_is_one_error_line(changed, tmp_path, capsys):
    """--state naming no file exits 1 with one line saying it cannot be read."""
    path = tmp_path / "nowhere.json"

    message = assert_one_error_line(*plan_with(changed, path, capsys), path)

    assert message.endswith("cannot read the snapshot: No such file or directory")


def test_a_file_that_is_not_json_is_one_error_line(changed, snapshot_file, capsys):
    """A truncated snapshot exits 1 with a single error line naming the file."""
    snapshot_file.write_text(snapshot_file.read_text()[:200])

    assert_one_error_line(*plan_with(changed, snapshot_file, capsys), snapshot_file)


def test_a_file_that_is_not_json_is_called_not_a_json_snapshot(changed, snapshot_file, capsys):
    """The error for a truncated snapshot says the file is not valid JSON, so the user knows to export it again."""
    snapshot_file.write_text(snapshot_file.read_text()[:200])

    message = assert_one_error_line(*plan_with(changed, snapshot_file, capsys), snapshot_file)

    assert "JSON" in message or "snapshot" in message, message


def test_a_domain_libvirt_paused_at_a_migrations_switch_over_is_still_so_in_a_snapshot():
    """What proves a move's source half stale when its destination holds the guest paused (core.fleet)."""
    from reconciler.core import model, snapshot

    def record(name: str, *, by_migration: bool) -> model.DomainRecord:
        return model.DomainRecord(name, f"7b1c2d3e-0000-4000-8000-00000000000{int(by_migration)}",
                                  f"<domain type='qemu'><name>{name}</name></domain>", model.PowerState.PAUSED, None,
                                  False, True, paused_by_migration=by_migration)

    taken = snapshot.Snapshot(model.Observation(model.HostInfo("test:///default", ("qemu",)),
                                                (record("moved", by_migration=True), record("held", by_migration=False)),
                                                (), ()), "2026-12-06T00:00:00Z", "h1")

    read = snapshot.from_data(json.loads(json.dumps(snapshot.to_data(taken))))

    assert [(r.name, r.paused_by_migration) for r in read.observation.domains] == [("moved", True), ("held", False)]
