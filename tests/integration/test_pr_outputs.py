"""What a pull-request bot posts: ``kvmops plan --output markdown`` and ``--output json``, as golden files.

One host, built from a test-driver node XML so that every UUID, MAC and volume is fixed,
and one manifest directory, together give every kind of change a reviewer must see:

* ``cache``: a new VM (create, start, a new volume);
* ``web``: memory raised within ``maxMemory`` on a running VM (update, live: balloon);
* ``app``: vcpus raised on a running VM (update, restart);
* ``db``: its disk points at another volume (update, replace);
* ``old``: owned by kvmops, declared by no manifest, running, with a Retain volume and a
  Delete volume kvmops created (delete, stop, data-loss);
* ``dns``: owned and exactly as declared (unchanged);
* ``legacy``: a foreign domain (listed, never touched).

An invalid manifest cannot share that plan: while any manifest is broken kvmops suspends
pruning, so ``old`` and its data loss would vanish from the very plan meant to show them.
So there are two golden pairs from the same host: ``plan-scenario.{md,json}`` is the
scenario above, and ``plan-scenario-invalid.{md,json}`` is the same directory plus one
broken manifest (``vms/broken.yaml``), where the problem, the suspension and ``old`` being
kept are what to look at, and everything else still plans as before.

Two things are replaced before comparing: the host's URI, which names a temporary file,
by ``test:///scenario/node.xml``; and the manifest digests in the JSON's domain XML by
``sha256:DIGEST``, because a digest covers the manifest with its schema defaults and so
changes whenever a schema gains a field, which is no change to the plan's output.

Regenerate the golden files with
``KVMOPS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/integration/test_pr_outputs.py``
and read the diff before committing it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.adapters import manifests
from reconciler.core import desired, domxml
from tests.integration import conftest

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KVMOPS_UPDATE_GOLDEN") == "1"
PLACEHOLDER_URI = "test:///scenario/node.xml"
MARKER = "<!-- kvmops-plan -->"

MANIFESTS = {
    "vms/web.yaml": """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: web
spec:
  memory: 768MiB
  maxMemory: 1GiB
  networks:
    - network: default
      mac: "52:54:00:00:01:01"
""",
    "vms/app.yaml": """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: app
spec:
  vcpus: 2
  memory: 512MiB
  networks:
    - network: default
      mac: "52:54:00:00:01:02"
""",
    "vms/db.yaml": """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: db
spec:
  memory: 512MiB
  disks:
    - name: data
      pool: default
      size: 1GiB
      volume: db-data-v2.qcow2
  networks:
    - network: default
      mac: "52:54:00:00:01:03"
""",
    "vms/dns.yaml": """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: dns
spec:
  memory: 256MiB
  networks:
    - network: default
      mac: "52:54:00:00:01:04"
""",
    "vms/cache.yaml": """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: cache
spec:
  memory: 256MiB
  disks:
    - name: root
      pool: default
      size: 2GiB
      deletionPolicy: Delete
  networks:
    - network: default
""",
}

BROKEN = """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: broken
spec:
  memory: 256MiB
  vcpus: many
"""

VOLUMES = (
    ("db-data.qcow2", 1024),
    ("old-root.qcow2", 2048),
    ("old-scratch.qcow2", 512),
    ("legacy-disk.qcow2", 1024),
)


def uuid_of(number: int) -> str:
    return f"5ce7a710-0000-4000-8000-{number:012d}"


def owned_domain(
    name: str, number: int, *, digest: str, vcpus: int = 1, memory_mib: int = 512, max_memory_mib: int | None = None,
    volumes: tuple[tuple[str, str], ...] = (), nic: bool = True,
) -> str:
    """Return a running, kvmops-owned domain: manifest vms/NAME.yaml, MAC 52:54:00:00:01:NN, volumes (name, policy) created by kvmops."""
    records = "".join(
        f'<kvmops:volume pool="default" name="{volume}" deletionPolicy="{policy}" created="true"/>'
        for volume, policy in volumes
    )
    disks = "".join(
        f"<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source pool='default' volume='{volume}'/><target dev='vd{chr(ord('a') + i)}' bus='virtio'/></disk>"
        for i, (volume, _policy) in enumerate(volumes)
    )
    interface = (
        f"<interface type='network'><mac address='52:54:00:00:01:{number:02d}'/><source network='default'/>"
        "<model type='virtio'/></interface>" if nic else ""
    )
    return f"""
  <domain type='test'>
    <name>{name}</name>
    <uuid>{uuid_of(number)}</uuid>
    <metadata>
      <kvmops:owner xmlns:kvmops="{domxml.NAMESPACE}" manifest="vms/{name}.yaml" digest="{digest}" runStrategy="Always" domain="{name}" uuid="{uuid_of(number)}">{records}</kvmops:owner>
    </metadata>
    <memory unit='KiB'>{(max_memory_mib or memory_mib) * 1024}</memory>
    <currentMemory unit='KiB'>{memory_mib * 1024}</currentMemory>
    <vcpu placement='static'>{vcpus}</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>
      {disks}{interface}
      <serial type='pty'><target port='0'/></serial>
      <console type='pty'><target type='serial' port='0'/></console>
    </devices>
  </domain>"""


@pytest.fixture
def scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Write the scenario's manifests to ./manifests (cwd is tmp_path) and its host; return the host's URI."""
    directory = tmp_path / "manifests"
    for relpath, text in MANIFESTS.items():
        (directory / relpath).parent.mkdir(parents=True, exist_ok=True)
        (directory / relpath).write_text(text, encoding="utf-8")
    built = desired.build(manifests.load(directory))
    assert not built.problems, built.problems
    digest = {name: spec.digest for name, spec in built.vms.items()}
    domains = (
        owned_domain("web", 1, digest=digest["web"], memory_mib=512, max_memory_mib=1024)
        + owned_domain("app", 2, digest=digest["app"])
        + owned_domain("db", 3, digest=digest["db"], volumes=(("db-data.qcow2", "Retain"),))
        + owned_domain("dns", 4, digest=digest["dns"], memory_mib=256)
        + owned_domain("old", 5, digest="sha256:0", nic=False,
                       volumes=(("old-root.qcow2", "Retain"), ("old-scratch.qcow2", "Delete")))
        + conftest.foreign_domain_xml("legacy", uuid_of(6), volume="legacy-disk.qcow2")
    )
    host = tmp_path / "host"
    host.mkdir()
    monkeypatch.chdir(tmp_path)
    return conftest.node_uri(host, domains, volumes="".join(conftest.volume_xml(n, mib) for n, mib in VOLUMES))


@pytest.fixture
def broken_scenario(scenario: str, tmp_path: Path) -> str:
    """Add the broken manifest vms/broken.yaml to the scenario; return the host's URI."""
    (tmp_path / "manifests" / "vms" / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    return scenario


def plan(uri: str, output: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run ``kvmops plan manifests --output OUTPUT``; return (status, stdout with the URI replaced, stderr)."""
    status = cli.main(["plan", "manifests", "--connect", uri, "--output", output])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    out = re.sub(r"test://\S+?/node\.xml", PLACEHOLDER_URI, out)
    return status, re.sub(r"sha256:[0-9a-f]{64}", "sha256:DIGEST", out), err


def assert_golden(name: str, actual: str) -> None:
    """Assert ``actual`` equals golden file ``name``; rewrite the file instead under KVMOPS_UPDATE_GOLDEN=1."""
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with KVMOPS_UPDATE_GOLDEN=1 to create it"
    assert actual == path.read_text(encoding="utf-8"), f"{name} differs; if the change is wanted, KVMOPS_UPDATE_GOLDEN=1"


def markdown_lines(uri: str, capsys: pytest.CaptureFixture) -> list[str]:
    status, out, _err = plan(uri, "markdown", capsys)
    assert status == 0
    return out.splitlines()


# --- the golden files -------------------------------------------------------------------


def test_the_markdown_plan_of_the_scenario_matches_its_golden_file(scenario, capsys):
    """The Markdown comment for the full scenario is byte for byte plan-scenario.md."""
    status, out, err = plan(scenario, "markdown", capsys)

    assert status == 0
    assert err == ""
    assert_golden("plan-scenario.md", out)


def test_the_json_plan_of_the_scenario_matches_its_golden_file(scenario, capsys):
    """The JSON plan for the full scenario is byte for byte plan-scenario.json."""
    status, out, err = plan(scenario, "json", capsys)

    assert status == 0
    assert err == ""
    assert_golden("plan-scenario.json", out)


def test_the_markdown_plan_with_an_invalid_manifest_matches_its_golden_file(broken_scenario, capsys):
    """The Markdown comment for the scenario plus a broken manifest is plan-scenario-invalid.md, and the exit status is 1."""
    status, out, err = plan(broken_scenario, "markdown", capsys)

    assert status == 1
    assert err == "manifests/vms/broken.yaml:7: spec.vcpus: expected an integer, got a string ('many')\n"
    assert_golden("plan-scenario-invalid.md", out)


def test_the_json_plan_with_an_invalid_manifest_matches_its_golden_file(broken_scenario, capsys):
    """The JSON plan for the scenario plus a broken manifest is plan-scenario-invalid.json, and the exit status is 1."""
    status, out, _err = plan(broken_scenario, "json", capsys)

    assert status == 1
    assert_golden("plan-scenario-invalid.json", out)


# --- what the Markdown must say -----------------------------------------------------------


def test_the_markdown_starts_with_the_marker_then_a_title(scenario, capsys):
    """The comment's first line is the HTML marker a CI job finds its comment by, the second a heading naming the host."""
    lines = markdown_lines(scenario, capsys)

    assert lines[0] == MARKER
    assert lines[1] == f"### kvmops plan for {PLACEHOLDER_URI}"
    assert sum(line == MARKER for line in lines) == 1


def test_the_markdown_calls_out_data_loss_and_replacement_above_the_summary_and_the_table(scenario, capsys):
    """Data loss (old's Delete volume) and the replaced disk (db) are warnings before the bold summary and the table."""
    lines = markdown_lines(scenario, capsys)

    warnings = [i for i, line in enumerate(lines) if line.startswith("> :warning:")]
    summary = lines.index("**Plan: 1 to create, 3 to update, 1 to delete, 1 to start, 1 to stop. "
                          "Impact: 1 restart, 1 replace, 1 data-loss. 1 unchanged.**")
    table = lines.index("| | Resource | Manifest | Actions | Impact |")
    assert len(warnings) == 2
    assert max(warnings) < summary < table
    data_loss = next(lines[i] for i in warnings if "**Data loss**" in lines[i])
    assert "`old`" in data_loss and "old-scratch.qcow2" in data_loss and "512 MiB" in data_loss
    replacement = next(lines[i] for i in warnings if "**Replacement**" in lines[i])
    assert "`db`" in replacement and "from `default/db-data.qcow2` to `default/db-data-v2.qcow2`" in replacement
    assert "new, empty volume" in replacement
    assert "old-root.qcow2" not in "\n".join(lines[i] for i in warnings), "a Retain volume is no data loss"


def test_the_first_warning_in_the_markdown_is_the_data_loss(scenario, capsys):
    """The most severe consequence, data loss, is the very first thing below the title."""
    lines = markdown_lines(scenario, capsys)

    first = next(line for line in lines if line.startswith("> :warning:"))
    assert "**Data loss**" in first


def test_the_markdown_table_has_one_row_per_changed_resource_with_its_worst_impact(scenario, capsys):
    """Every changed VM has a table row naming its manifest, actions and worst impact; dns (unchanged) and legacy (foreign) have none."""
    lines = markdown_lines(scenario, capsys)

    rows = [line for line in lines if line.startswith("| ") and "VirtualMachine" in line]
    assert rows == [
        "| ~ | VirtualMachine `app` | `vms/app.yaml` | update | restart |",
        "| + | VirtualMachine `cache` | `vms/cache.yaml` | create, start | new |",
        "| ~ | VirtualMachine `db` | `vms/db.yaml` | update | **replace** |",
        "| ~ | VirtualMachine `web` | `vms/web.yaml` | update | live |",
        "| - | VirtualMachine `old` | `vms/old.yaml` | delete, stop | **data-loss** |",
    ]


def test_the_markdown_folds_each_changed_resource_into_a_details_block(scenario, capsys):
    """Each changed VM has one balanced <details> block whose summary names it, holding its field-change table."""
    lines = markdown_lines(scenario, capsys)
    text = "\n".join(lines)

    assert lines.count("<details>") == lines.count("</details>") == 5
    summaries = [line for line in lines if line.startswith("<summary>")]
    assert summaries == [
        "<summary>VirtualMachine <code>app</code>: update (1 change)</summary>",
        "<summary>VirtualMachine <code>cache</code>: create, start (9 changes)</summary>",
        "<summary>VirtualMachine <code>db</code>: update (1 change)</summary>",
        "<summary>VirtualMachine <code>web</code>: update (1 change)</summary>",
        "<summary>VirtualMachine <code>old</code>: delete, stop (2 changes)</summary>",
    ]
    # GitHub renders Markdown inside <details> only after a blank line.
    for index, line in enumerate(lines):
        if line.startswith("<summary>"):
            assert lines[index + 1] == ""
    assert "| `memory` | 512 MiB | 768 MiB | live | balloon |" in lines
    assert "| `vcpus` | 1 | 2 | restart |  |" in lines
    assert "| `volume default/old-scratch.qcow2` | 512 MiB |  | **data-loss** | DATA LOSS: removed with the VM " \
           "(deletionPolicy Delete) |" in lines
    assert "- volume default/old-root.qcow2 is kept (deletionPolicy Retain)" in lines
    assert "Ignored foreign domains (not managed by kvmops): `legacy`" in lines
    assert "dns" not in text, "an unchanged VM is only counted, never listed"


def test_the_markdown_with_an_invalid_manifest_shows_the_problem_and_the_suspended_pruning(broken_scenario, capsys):
    """With a broken manifest the comment lists the problem, says pruning is suspended and that old is kept, and warns of no data loss."""
    status, out, _err = plan(broken_scenario, "markdown", capsys)
    lines = out.splitlines()

    assert status == 1
    assert lines[0] == MARKER
    problems = lines.index("#### :x: Problems (1)")
    assert lines[problems + 2] == (
        "- `manifests/vms/broken.yaml:7` `spec.vcpus` expected an integer, got a string ('many')"
    )
    suspended = next(line for line in lines if line.startswith("**Pruning suspended:**"))
    assert suspended.endswith("Kept: `old`.")
    assert "**Data loss**" not in out
    assert "VirtualMachine `old`" not in out
    assert "**Plan: 1 to create, 3 to update, 1 to start. Impact: 1 restart, 1 replace. 1 unchanged. 1 problem.**" in lines
    assert lines.count("<details>") == 4


# --- what the JSON must say ---------------------------------------------------------------


def test_the_json_plan_counts_every_action_and_impact_of_the_scenario(scenario, capsys):
    """The JSON plan is format_version "1" and its summary counts the scenario's actions, impacts and the unchanged VM."""
    status, out, _err = plan(scenario, "json", capsys)
    document = json.loads(out)

    assert status == 0
    assert document["format_version"] == "1"
    assert document["uri"] == PLACEHOLDER_URI
    assert document["has_changes"] is True
    assert document["snapshot"] is None
    assert document["summary"]["actions"] == {"create": 1, "update": 3, "delete": 1, "start": 1, "stop": 1, "migrate": 0}
    assert document["summary"]["impacts"] == {"live": 11, "restart": 1, "replace": 1, "data-loss": 1}
    assert document["summary"]["unchanged"] == 1
    assert document["summary"]["problems"] == 0
    assert document["foreign"] == ["legacy"]
    assert document["prune"] == {"suspended": False, "reason": None, "kept": []}
    assert document["problems"] == []


def test_the_json_plan_gives_each_vm_its_actions_and_the_impact_of_each_change(scenario, capsys):
    """Each VM's actions and (path, impact) pairs are what the scenario set up, and the prune deletes only the Delete volume."""
    _status, out, _err = plan(scenario, "json", capsys)
    resources = {r["name"]: r for r in json.loads(out)["resources"]}

    def impacts(name: str) -> list[tuple[str, str]]:
        return [(c["path"], c["impact"]) for c in resources[name]["changes"]]

    assert set(resources) == {"web", "app", "db", "dns", "cache", "old"}
    assert resources["dns"]["actions"] == [] and resources["dns"]["steps"] == []
    assert resources["web"]["actions"] == ["update"]
    assert impacts("web") == [("memory", "live")]
    assert [s["kind"] for s in resources["web"]["steps"]] == ["define_domain", "set_memory_live"]
    assert impacts("app") == [("vcpus", "restart")]
    assert impacts("db") == [("disks[data].volume", "replace")]
    assert [s["kind"] for s in resources["db"]["steps"]] == ["define_domain", "create_volume", "define_domain"]
    assert resources["cache"]["actions"] == ["create", "start"]
    assert {impact for _path, impact in impacts("cache")} == {"live"}
    assert resources["old"]["actions"] == ["delete", "stop"]
    assert impacts("old") == [("domain", "live"), ("volume default/old-scratch.qcow2", "data-loss")]
    deleted = [s["name"] for s in resources["old"]["steps"] if s["kind"] == "delete_volume"]
    assert deleted == ["old-scratch.qcow2"]
    redefined = next(s for s in resources["web"]["steps"] if s["kind"] == "define_domain")
    assert redefined["uuid"] == uuid_of(1) and "52:54:00:00:01:01" in redefined["xml"]


def test_the_json_plan_with_an_invalid_manifest_suspends_pruning_and_names_the_problem(broken_scenario, capsys):
    """With a broken manifest the JSON says pruning is suspended, keeps old, and carries the problem with file, line and field."""
    status, out, _err = plan(broken_scenario, "json", capsys)
    document = json.loads(out)

    assert status == 1
    assert document["prune"]["suspended"] is True
    assert document["prune"]["kept"] == ["old"]
    assert "1 problem(s) in the manifests" in document["prune"]["reason"]
    assert document["problems"] == [{
        "file": "manifests/vms/broken.yaml", "line": 7, "path": "spec.vcpus",
        "message": "expected an integer, got a string ('many')",
        "text": "manifests/vms/broken.yaml:7: spec.vcpus: expected an integer, got a string ('many')",
    }]
    assert document["summary"]["problems"] == 1
    assert document["summary"]["impacts"]["data-loss"] == 0
    assert "old" not in {r["name"] for r in document["resources"]}
