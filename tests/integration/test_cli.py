"""The ``kvmops`` command on libvirt's test driver: exit statuses, output, and what it does to the host.

Most tests start from the standard host of ``conftest.world`` (``web`` owned and declared,
``orphan`` owned and undeclared with a Retain and a Delete volume, ``legacy`` foreign)
and run ``cli.main([...])`` against it; the CLI's connection is pinned to the test's, so
the host can be inspected afterwards through the adapter's read methods.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.core import domxml
from tests import factories
from tests.integration import conftest

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent"


def run(*argv: str) -> int:
    """Run ``kvmops`` with ``argv``; return its exit status."""
    return cli.main(list(argv))


def assert_clean(out: str, err: str) -> None:
    """Assert that nothing in the output is a traceback or an internal error."""
    assert "Traceback" not in out + err
    assert "internal error" not in out + err


def add_db(directory: Path) -> None:
    """Declare a new VM ``db`` with one Retain disk in the default pool."""
    factories.write(directory, "db.yaml", factories.vm("db", disks=[factories.disk("root", "default", "64MiB")]))


# --- validate ---------------------------------------------------------------------------


def test_validate_accepts_the_example_manifests():
    """The repository's example manifests validate, with exit status 0 and a one-line summary."""
    status = run("validate", str(REPO / "manifests"))

    assert status == 0


def test_validate_accepts_the_examples_directory_with_nothing_that_is_not_a_manifest(capsys):
    """`kvmops validate examples` checks the example manifests and finds no CI job or other YAML to flag."""
    status = run("validate", str(REPO / "examples"))
    out, _ = capsys.readouterr()

    assert status == 0, out


def test_validate_prints_a_summary_and_exits_zero_when_valid(world, capsys):
    """A valid manifest directory gives exit status 0 and a summary counting what it holds."""
    status = run("validate", str(world.manifests))
    out, err = capsys.readouterr()

    assert status == 0
    assert out.strip() == f"{world.manifests}: valid (1 file(s), 1 VirtualMachine(s), 0 StoragePool(s), 0 Network(s), 0 Image(s))"


def test_validate_prints_one_line_per_problem_and_exits_one(manifest_dir, capsys):
    """Each problem is one ``FILE:LINE: field.path: message`` line, followed by a count, and the exit status is 1."""
    factories.write(manifest_dir, "a.yaml", factories.vm("a", vcpus=0))
    factories.write(manifest_dir, "b.yaml", factories.vm("b", memory="2G", graphics="sdl"))
    factories.write(manifest_dir, "ok.yaml", factories.vm("ok"))

    status = run("validate", str(manifest_dir))
    out, err = capsys.readouterr()

    assert status == 1
    assert_clean(out, err)
    *problems, summary = out.splitlines()
    assert sorted(problems) == [
        f"{manifest_dir}/a.yaml:7: spec.vcpus: 0 is too small; the minimum is 1",
        f"{manifest_dir}/b.yaml:6: spec.memory: '2G' is not valid: write a number and a unit, e.g. 2GiB, 512MiB or "
        "20GB (binary KiB/MiB/GiB/TiB, decimal KB/MB/GB/TB)",
        f"{manifest_dir}/b.yaml:7: spec.graphics: 'sdl' is not allowed; use one of: none, vnc, spice",
    ]
    assert summary == f"3 problem(s) found in {manifest_dir} (3 file(s), 1 VirtualMachine(s), 0 StoragePool(s), 0 Network(s), 0 Image(s) valid)"


def test_validate_json_lists_problems_with_file_line_and_path(manifest_dir, capsys):
    """``validate --output json`` gives the same problems as data."""
    factories.write(manifest_dir, "a.yaml", factories.vm("a", vcpus=0))

    status = run("validate", str(manifest_dir), "--output", "json")
    data = json.loads(capsys.readouterr().out)

    assert status == 1
    assert data["valid"] is False
    assert [(p["file"], p["line"], p["path"]) for p in data["problems"]] == [
        (f"{manifest_dir}/a.yaml", 7, "spec.vcpus"),
    ]


def test_validate_with_connect_reports_an_unknown_pool(manifest_dir, uri, capsys):
    """Only ``validate --connect`` knows the host's pools, so only it reports a disk in a pool that does not exist."""
    factories.write(manifest_dir, "db.yaml", factories.vm("db", disks=[factories.disk("root", "nosuch")]))

    offline = run("validate", str(manifest_dir))
    capsys.readouterr()
    online = run("validate", str(manifest_dir), "--connect", uri)
    out, err = capsys.readouterr()

    assert offline == 0
    assert online == 1
    assert_clean(out, err)
    problems = [line for line in out.splitlines() if line.startswith(str(manifest_dir))]
    assert len(problems) == 1
    assert problems[0].startswith(f"{manifest_dir}/db.yaml:9: spec.disks[0].pool: unknown storage pool 'nosuch': ")
    assert "declare it in a StoragePool manifest" in problems[0]


# --- plan -------------------------------------------------------------------------------


def test_plan_text_shows_creates_updates_and_deletes_with_old_new_values_and_impacts(world, capsys):
    """The text plan marks each resource +/~/-, shows ``old -> new`` with the impact, and calls out data loss."""
    add_db(world.manifests)
    factories.write(world.manifests, "web.yaml", {
        **conftest.WEB_DOCUMENT, "spec": {**conftest.WEB_DOCUMENT["spec"], "vcpus": 2},
    })
    before = world.state()

    status = run("plan", str(world.manifests), "--connect", world.uri)
    out, err = capsys.readouterr()

    assert status == 0
    assert_clean(out, err)
    assert re.search(r"^  \+ VirtualMachine db  \(db\.yaml\)  create, start$", out, re.M)
    assert re.search(r"^  ~ VirtualMachine web  \(web\.yaml\)  update$", out, re.M)
    assert re.search(r"^  - VirtualMachine orphan  \(orphan\.yaml\)  delete, stop$", out, re.M)
    assert re.search(r"^      ~ vcpus +1 -> 2  \(restart\)$", out, re.M)
    assert re.search(r"^      - volume default/orphan-scratch\.qcow2 +64 MiB  \(data-loss\)  DATA LOSS", out, re.M)
    assert ("DATA LOSS: VirtualMachine orphan: volume default/orphan-scratch.qcow2 deleted at once: the test driver "
            "keeps no files, so it has no trash") in out
    assert "note: volume default/orphan-keep.qcow2 is kept (deletionPolicy Retain)" in out
    assert out.rstrip().endswith(
        "Plan: 1 to create, 1 to update, 1 to delete, 1 to start, 1 to stop. Impact: 1 restart, 1 data-loss."
    )
    assert world.state() == before


def test_plan_json_parses_and_carries_its_format_version(world, capsys):
    """``plan --output json`` is one JSON document with ``format_version`` and every resource."""
    add_db(world.manifests)

    status = run("plan", str(world.manifests), "--connect", world.uri, "--output", "json")
    data = json.loads(capsys.readouterr().out)

    assert status == 0
    assert data["format_version"] == "1"
    assert data["has_changes"] is True
    actions = {r["name"]: r["actions"] for r in data["resources"]}
    assert actions == {"db": ["create", "start"], "web": [], "orphan": ["delete", "stop"]}
    assert data["foreign"] == ["legacy"]
    assert data["summary"]["impacts"]["data-loss"] == 1
    assert data["prune"] == {"suspended": False, "reason": None, "kept": []}


@pytest.mark.parametrize(("change", "expected"), [
    pytest.param(None, 0, id="no-changes"),
    pytest.param(add_db, 2, id="changes"),
    pytest.param(lambda d: (d / "bad.yaml").write_text("kind: [\n"), 1, id="error"),
])
def test_detailed_exitcode_tells_no_changes_changes_and_errors_apart(world, capsys, change, expected):
    """``plan --detailed-exitcode`` exits 0 for no changes, 2 for changes and 1 for an error."""
    if change is not None:
        change(world.manifests)
    flags = [] if change is not None else ["--no-prune"]

    status = run("plan", str(world.manifests), "--connect", world.uri, "--detailed-exitcode", *flags)

    assert status == expected, capsys.readouterr().out


def test_plan_without_detailed_exitcode_exits_zero_for_changes(world):
    """Without ``--detailed-exitcode`` a plan with changes is a success, exit status 0."""
    add_db(world.manifests)

    assert run("plan", str(world.manifests), "--connect", world.uri) == 0


# --- apply ------------------------------------------------------------------------------


def test_apply_converges_and_prints_what_it_did(world, capsys):
    """Apply creates what is declared, prints each step done, and exits 0 once a fresh plan is empty."""
    add_db(world.manifests)

    status = run("apply", str(world.manifests), "--connect", world.uri, "--no-prune")
    out, err = capsys.readouterr()

    assert status == 0, out + err
    assert_clean(out, err)
    assert "Applying..." in out
    assert "✓ VirtualMachine db: converged" in out
    assert "done: create volume default/db-root.qcow2 (64 MiB)" in out
    assert "done: define domain db" in out
    assert "done: start db" in out
    assert "Converged: a fresh plan shows no changes." in out
    record = next(r for r in world.hypervisor.list_domains() if r.name == "db")
    assert record.power.value == "running"
    assert domxml.parse_owner(domxml.parse_tree(record.inactive_xml)).manifest == "db.yaml"
    assert "db-root.qcow2" in world.volumes()


def test_apply_on_a_converged_host_changes_nothing_and_exits_zero(world, capsys):
    """Applying manifests the host already matches prints "No changes" and exits 0."""
    before = world.state()

    status = run("apply", str(world.manifests), "--connect", world.uri, "--no-prune")
    out, _ = capsys.readouterr()

    assert status == 0
    assert "No changes." in out
    assert "Applying..." not in out
    assert world.state() == before


def test_removed_manifest_prunes_domain_but_keeps_retained_volume(world, capsys):
    """An owned domain whose manifest is gone is removed with its Delete volume, its Retain volume is kept."""
    status = run("apply", str(world.manifests), "--connect", world.uri)
    out, err = capsys.readouterr()

    assert status == 0, out + err
    assert "(data-loss)" in out
    assert ("DATA LOSS: VirtualMachine orphan: volume default/orphan-scratch.qcow2 deleted at once: the test driver "
            "keeps no files, so it has no trash") in out
    assert "done: undefine domain orphan" in out
    assert world.domains() == {"web", "legacy"}
    assert world.volumes() == {"web-root.qcow2", "orphan-keep.qcow2", "legacy-disk.qcow2"}


def test_no_prune_keeps_a_domain_whose_manifest_is_gone(world, capsys):
    """With ``--no-prune`` the orphan and both its volumes stay, and the plan says why."""
    before = world.state()

    status = run("apply", str(world.manifests), "--connect", world.uri, "--no-prune")
    out, _ = capsys.readouterr()

    assert status == 0
    assert "Pruning suspended: pruning is disabled (--no-prune)" in out
    assert "kept although no manifest declares them: orphan" in out
    assert world.state() == before


def test_empty_manifest_directory_removes_nothing(world, capsys):
    """An empty manifest directory never reads as "delete every VM": nothing is pruned and the plan says why."""
    (world.manifests / "web.yaml").unlink()
    before = world.state()

    run("apply", str(world.manifests), "--connect", world.uri)
    out, err = capsys.readouterr()

    assert_clean(out, err)
    assert "Pruning suspended: the manifests declare no VirtualMachine but kvmops manages 2 resource(s)" in out
    assert "--allow-empty" in out
    assert "kept although no manifest declares them: orphan, web" in out
    assert "Applying..." not in out
    assert world.state() == before


def test_allow_empty_lets_an_empty_directory_prune_every_owned_domain(world, capsys):
    """``--allow-empty`` lifts the guard: every owned domain goes, Delete volumes with them, foreign ones stay."""
    (world.manifests / "web.yaml").unlink()
    legacy_before = world.state()["domains"]["legacy"]

    status = run("apply", str(world.manifests), "--connect", world.uri, "--allow-empty")
    out, err = capsys.readouterr()

    assert status == 0, out + err
    assert world.domains() == {"legacy"}
    assert world.volumes() == {"orphan-keep.qcow2", "legacy-disk.qcow2"}
    assert world.state()["domains"]["legacy"] == legacy_before


def test_nonexistent_manifest_directory_is_an_error_that_changes_nothing(world, tmp_path, capsys):
    """A manifest path that does not exist is one error line and exit 1, never "every VM was deleted"."""
    before = world.state()

    status = run("apply", str(tmp_path / "no-such-dir"), "--connect", world.uri, "--allow-empty")
    out, err = capsys.readouterr()

    assert status == 1
    assert_clean(out, err)
    assert err.strip().splitlines() == [
        f"kvmops: error: {tmp_path / 'no-such-dir'}: no such manifest file or directory; check the path (nothing was changed)"
    ]
    assert world.state() == before


def test_apply_with_an_error_in_one_manifest_exits_one(world, capsys):
    """A problem left after apply means not converged: exit status 1, even though nothing needed doing."""
    factories.write(world.manifests, "bad.yaml", factories.vm("bad", vcpus=0))

    status = run("apply", str(world.manifests), "--connect", world.uri)

    assert status == 1
    assert "bad.yaml:7: spec.vcpus: 0 is too small" in capsys.readouterr().out


# --- connection -------------------------------------------------------------------------


def test_kvmops_connect_is_used_when_connect_is_absent(world, monkeypatch, capsys):
    """Without ``--connect`` the host in ``$KVMOPS_CONNECT`` is the one planned for and changed."""
    monkeypatch.setenv("KVMOPS_CONNECT", world.uri)

    status = run("apply", str(world.manifests))
    out, err = capsys.readouterr()

    assert status == 0, out + err
    assert out.startswith(f"kvmops plan for {world.uri} from {world.manifests}")
    assert world.domains() == {"web", "legacy"}


def test_connect_option_wins_over_kvmops_connect(world, monkeypatch, capsys):
    """An explicit ``--connect`` is used even when ``$KVMOPS_CONNECT`` names another host."""
    monkeypatch.setenv("KVMOPS_CONNECT", UNREACHABLE)

    status = run("plan", str(world.manifests), "--connect", world.uri)
    out, err = capsys.readouterr()

    assert status == 0, err
    assert out.startswith(f"kvmops plan for {world.uri} ")


@pytest.mark.parametrize("argv", [
    pytest.param(["plan", "{dir}"], id="plan"),
    pytest.param(["apply", "{dir}"], id="apply"),
    pytest.param(["validate", "{dir}"], id="validate"),
    pytest.param(["adopt", "legacy"], id="adopt"),
])
def test_unreachable_uri_is_one_clear_error_line(manifest_dir, capsys, argv):
    """A libvirt URI nobody answers gives exit 1 and one error line with a hint, never a traceback."""
    factories.write(manifest_dir, "web.yaml", conftest.WEB_DOCUMENT)

    status = run(*[arg.format(dir=manifest_dir) for arg in argv], "--connect", UNREACHABLE)
    out, err = capsys.readouterr()

    assert status == 1
    assert_clean(out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"kvmops: error: cannot connect to {UNREACHABLE}: ")
    assert "is libvirtd running" in lines[0]


def test_usage_errors_exit_one_not_two(capsys):
    """A command line argparse rejects exits 1, because 2 means "there are changes"."""
    with pytest.raises(SystemExit) as exit_:
        run("plan")

    assert exit_.value.code == 1
    assert "kvmops plan: error:" in capsys.readouterr().err


# --- foreign domains and adoption -------------------------------------------------------


def test_foreign_domains_are_listed_as_ignored_and_never_modified(world, capsys):
    """A foreign domain is named in the plan as ignored and stays byte-for-byte the same, even when pruning everything."""
    (world.manifests / "web.yaml").unlink()
    legacy_before = world.state()["domains"]["legacy"]

    run("plan", str(world.manifests), "--connect", world.uri)
    planned = capsys.readouterr().out
    run("apply", str(world.manifests), "--connect", world.uri, "--allow-empty")
    capsys.readouterr()

    assert "Ignored 1 foreign domain (not managed by kvmops, never changed): legacy" in planned
    assert world.state()["domains"]["legacy"] == legacy_before
    assert "legacy-disk.qcow2" in world.volumes()


def test_adopt_marks_a_foreign_domain_owned_and_changes_nothing_else(world, capsys):
    """``kvmops adopt`` writes kvmops' mark into the domain, recording its volumes as not created by kvmops."""
    before = world.hypervisor.domain_xml("legacy")

    status = run("adopt", "legacy", "--connect", world.uri)
    out, _ = capsys.readouterr()

    assert status == 0
    assert "domain legacy is now managed by kvmops" in out
    after = domxml.parse_tree(world.hypervisor.domain_xml("legacy"))
    owner = domxml.parse_owner(after)
    assert owner is not None
    assert [(v.pool, v.name, v.deletion_policy.value, v.created) for v in owner.volumes] == [
        ("default", "legacy-disk.qcow2", "Retain", False),
    ]
    unmarked = re.sub(r"\n *<metadata>.*</metadata>", "", world.hypervisor.domain_xml("legacy"), flags=re.S)
    assert unmarked == before
    record = next(r for r in world.hypervisor.list_domains() if r.name == "legacy")
    assert (record.uuid, record.power.value) == (conftest.LEGACY_UUID, "running")


def test_adopted_domain_plans_as_an_update_not_a_create_or_replace(world, capsys):
    """After adoption, a manifest for the domain plans an in-place update that keeps its UUID."""
    factories.write(world.manifests, "legacy.yaml", factories.vm(
        "legacy", memory=128, vcpus=4, console="none",
        disks=[factories.disk("disk", "default", "64MiB", volume="legacy-disk.qcow2")],
    ))
    run("adopt", "legacy", "--connect", world.uri)
    capsys.readouterr()

    status = run("plan", str(world.manifests), "--connect", world.uri, "--output", "json", "--no-prune")
    data = json.loads(capsys.readouterr().out)

    assert status == 0
    legacy = next(r for r in data["resources"] if r["name"] == "legacy")
    assert legacy["actions"] == ["update"]
    assert legacy["problems"] == []
    assert {"path": "vcpus", "old": "2", "new": "4", "impact": "restart", "note": ""} in legacy["changes"]
    assert all(c["impact"] not in ("replace", "data-loss") for c in legacy["changes"])
    define = next(s for s in legacy["steps"] if s["kind"] == "define_domain")
    assert define["uuid"] == conftest.LEGACY_UUID
    assert data["foreign"] == []


def test_a_manifest_for_a_foreign_domain_is_refused_until_adopted(world, capsys):
    """Before adoption the same manifest is a problem that points at ``kvmops adopt``."""
    factories.write(world.manifests, "legacy.yaml", factories.vm("legacy", memory=128, vcpus=2))

    status = run("plan", str(world.manifests), "--connect", world.uri, "--no-prune")
    out, _ = capsys.readouterr()

    assert status == 1
    assert f"{world.manifests}/legacy.yaml:4: metadata.name: domain 'legacy' already exists" in out
    assert "run `kvmops adopt legacy`" in out


def test_adopt_an_unknown_domain_is_an_error(world, capsys):
    """Adopting a domain that does not exist is one error line and exit 1."""
    status = run("adopt", "nosuch", "--connect", world.uri)
    out, err = capsys.readouterr()

    assert status == 1
    assert err.strip().splitlines() == [f"kvmops: error: no domain named nosuch on {world.uri}"]


def test_adopt_an_owned_domain_changes_nothing(world, capsys):
    """Adopting a domain kvmops already manages says so and leaves its mark as it was."""
    before = world.state()

    status = run("adopt", "web", "--connect", world.uri)

    assert status == 0
    assert "domain web is already managed by kvmops" in capsys.readouterr().out
    assert world.state() == before


# --- demo -------------------------------------------------------------------------------


def test_demo_exits_zero_and_ends_with_an_empty_plan(capsys):
    """``kvmops demo`` validates, plans, applies and plans again; the last plan says "No changes"."""
    status = run("demo", str(REPO / "manifests"))
    out, err = capsys.readouterr()

    assert status == 0, out + err
    assert_clean(out, err)
    last_plan = out.rsplit("$ kvmops plan", 1)[1]
    assert "No changes." in last_plan
    assert "[exit status 0]" in last_plan


def kvmops_process(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``python -m reconciler argv`` in a process of its own, stdout and stderr to pipes (not terminals)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KVMOPS_")}
    return subprocess.run([sys.executable, "-m", "reconciler", *argv], capture_output=True, text=True,
                          cwd=cwd, env={**environment, "PYTHONPATH": str(REPO)}, timeout=120)


def test_apply_prints_each_step_once_when_stderr_is_not_a_terminal(tmp_path):
    """apply's report on stdout says what was done; stderr, a pipe, does not repeat each step as a JSON event."""
    factories.write(tmp_path, "db.yaml", factories.vm("db", disks=[factories.disk("root", "default-pool", "64MiB")]))

    result = kvmops_process("apply", str(tmp_path), "--connect", "test:///default")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: define domain db" in result.stdout
    assert result.stderr == ""


def test_log_level_info_shows_each_step_as_a_json_event_on_stderr(tmp_path):
    """Asked for with --log-level info (before or after the command), the step events come as JSON lines on stderr."""
    factories.write(tmp_path, "db.yaml", factories.vm("db"))

    result = kvmops_process("apply", str(tmp_path), "--connect", "test:///default", "--log-level", "info")

    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    assert result.returncode == 0 and "domain_defined" in events


def test_the_demo_prints_no_log_lines():
    """`kvmops demo`, as scripts/demo runs it, writes its story on stdout and nothing on stderr."""
    result = kvmops_process("--log-format", "console", "demo", "manifests")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert "Demo complete" in result.stdout
