"""``kvmops diff`` of a fleet: the pull-request plan is grouped per host, and a drain is a migration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.test_diff import Repo, diff, no_hypervisor  # noqa: F401 (the fixture applies here too)

FLEET_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet"


@pytest.fixture
def fleet_repo(tmp_path: Path) -> Repo:
    """Return a repository whose first commit is the fleet example, with kvm3 schedulable."""
    repository = Repo(tmp_path / "repo")
    shutil.copytree(FLEET_EXAMPLE, repository.manifests)
    hosts = repository.manifests / "hosts" / "hosts.yaml"
    hosts.write_text(hosts.read_text(encoding="utf-8").replace("schedulable: false", "schedulable: true"), encoding="utf-8")
    repository.commit("fleet")
    return repository


def test_an_unchanged_fleet_plans_nothing_on_any_host(fleet_repo, capsys):
    status, out, err = diff(fleet_repo, "--base", "main", "--detailed-exitcode", capsys=capsys)
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == "Fleet default: 3 hosts; VMs per host: kvm1 2, kvm2 1, kvm3 0; 0 migrations"
    assert out.count("No changes.") == 3


def test_cordoning_a_host_migrates_its_vm_in_the_pull_request_comment(fleet_repo, capsys):
    hosts = fleet_repo.manifests / "hosts" / "hosts.yaml"
    cordoned = hosts.read_text(encoding="utf-8").replace(
        "capacity: {vcpus: 32, memory: 128GiB, cpuOvercommit: 4}\n",
        "capacity: {vcpus: 32, memory: 128GiB, cpuOvercommit: 4}\n  schedulable: false\n")
    hosts.write_text(cordoned, encoding="utf-8")

    status, out, _err = diff(fleet_repo, "--base", "main", "-o", "markdown", capsys=capsys)

    assert status == 0
    assert "**Fleet default: 3 hosts; VMs per host: kvm1 3, kvm2 0, kvm3 0; 1 migration**" in out
    assert "| → | `web-1` | `kvm2` | `kvm1` | live | live |" in out
    assert out.index("### Host kvm1") < out.index("### Host kvm2") < out.index("### Host kvm3")

    status, out, _err = diff(fleet_repo, "--base", "main", "-o", "json", capsys=capsys)
    data = json.loads(out)
    assert data["kind"] == "fleet" and [m["vm"] for m in data["migrations"]] == ["web-1"]


def test_host_restricts_a_fleet_diff_to_that_host(fleet_repo, capsys):
    hosts = fleet_repo.manifests / "hosts" / "hosts.yaml"
    hosts.write_text(hosts.read_text(encoding="utf-8").replace(
        "capacity: {vcpus: 32, memory: 128GiB, cpuOvercommit: 4}\n",
        "capacity: {vcpus: 32, memory: 128GiB, cpuOvercommit: 4}\n  schedulable: false\n"), encoding="utf-8")

    status, out, _err = diff(fleet_repo, "--base", "main", "--host", "kvm1", capsys=capsys)

    assert status == 0
    assert "Host kvm1" in out and "Host kvm2" not in out and "Host kvm3" not in out

    status, _out, err = diff(fleet_repo, "--base", "main", "--host", "kvm9", capsys=capsys)
    assert status == 1 and "no Host named 'kvm9'" in err


def test_a_pull_request_deleting_a_host_manifest_shows_the_host_missing_and_creates_nothing(fleet_repo, capsys):
    hosts = fleet_repo.manifests / "hosts" / "hosts.yaml"
    documents = hosts.read_text(encoding="utf-8").split("---\n")
    hosts.write_text("---\n".join(d for d in documents if "name: kvm2" not in d), encoding="utf-8")

    status, out, _err = diff(fleet_repo, "--base", "main", capsys=capsys)

    assert status == 1
    assert "Host kvm2: MISSING: Host kvm2 is named in the fleet's ownership marks" in out
    assert "Unknown: web-1" in out and "+ VirtualMachine" not in out
    assert out.splitlines()[-1].endswith("1 missing (kvm2)")
