"""``kvmops diff``: the plan between two git revisions of the manifests, with no hypervisor at all.

Each test makes a real git repository in ``tmp_path`` (``git init``, commits, edits) and
runs ``cli.main(["diff", ...])``.  ``KVMOPS_CONNECT`` points at a libvirt socket that
does not exist, so any attempt to reach a hypervisor would fail the command: a diff is
made on a CI runner with no libvirt.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from reconciler import cli
from tests import factories

UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "kvmops tests", "GIT_AUTHOR_EMAIL": "tests@kvmops.invalid",
    "GIT_COMMITTER_NAME": "kvmops tests", "GIT_COMMITTER_EMAIL": "tests@kvmops.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
}


class Repo:
    """A git working tree in a temporary directory, manifests under ``manifests/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests = root / "manifests"
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "--quiet", "--initial-branch=main")

    def git(self, *args: str) -> str:
        result = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True,
                                env={**os.environ, **GIT_ENV}, check=True)
        return result.stdout.strip()

    def vm(self, relpath: str, name: str, **spec: object) -> None:
        """Write a VirtualMachine manifest at manifests/RELPATH."""
        factories.write(self.manifests, relpath, factories.vm(name, **spec))

    def write(self, relpath: str, text: str) -> None:
        path = self.manifests / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def remove(self, relpath: str) -> None:
        (self.manifests / relpath).unlink()

    def commit(self, message: str) -> str:
        """Commit everything; return the full commit id."""
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def no_hypervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every libvirt default at a socket that does not exist."""
    monkeypatch.setenv("KVMOPS_CONNECT", UNREACHABLE)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """Return a repository whose first commit (on main) declares web in manifests/web.yaml."""
    repository = Repo(tmp_path / "repo")
    repository.vm("web.yaml", "web", disks=[factories.disk("root", "default", "1GiB")])
    repository.commit("web")
    return repository


def diff(repo: Repo, *args: str, capsys: pytest.CaptureFixture, path: str | None = None) -> tuple[int, str, str]:
    """Run ``kvmops diff PATH ARGS``; return (exit status, stdout, stderr), none of which may be a traceback."""
    status = cli.main(["diff", path or str(repo.manifests), *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, err
    return status, out, err


def resources(out: str) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(out)["resources"]}


# --- what changed -----------------------------------------------------------------------


def test_an_added_vm_is_planned_as_a_create_and_start(repo, capsys):
    """A manifest added in the working tree is a VM to create and start; the unchanged one is counted as such."""
    repo.vm("db.yaml", "db", disks=[factories.disk("root", "default", "2GiB")])

    status, out, err = diff(repo, "--base", "main", capsys=capsys)

    assert status == 0
    assert err == ""
    assert "  + VirtualMachine db  (db.yaml)  create, start\n" in out
    assert "disks[root]  default/db-root.qcow2 2 GiB as vda (virtio), Retain" in out
    assert "VirtualMachine web" not in out
    assert out.endswith("Plan: 1 to create, 1 to start. 1 unchanged.\n")


def test_an_added_vm_with_virt_type_auto_shows_auto_as_undecided_not_as_kvm(repo, capsys):
    """Offline, nobody knows whether the host can run kvm: virtType auto is shown as decided on the host."""
    repo.vm("db.yaml", "db", disks=[])

    status, out, _err = diff(repo, "--base", "main", capsys=capsys)

    assert status == 0
    assert "virtType     auto (decided on the host)\n" in out
    assert "virtType     kvm" not in out


def test_a_removed_vm_is_planned_as_a_delete_and_its_delete_volume_as_data_loss(repo, capsys):
    """A VM whose manifest is deleted is stopped and removed, and its Delete volume is called DATA LOSS."""
    repo.vm("db.yaml", "db", disks=[factories.disk("scratch", "default", "2GiB", deletionPolicy="Delete")])
    repo.commit("db")
    repo.remove("db.yaml")

    status, out, _err = diff(repo, "--base", "main", capsys=capsys)

    assert status == 0
    assert "  - VirtualMachine db  (db.yaml)  delete, stop\n" in out
    assert "      note: no manifest declares this VM any more\n" in out
    assert "DATA LOSS: VirtualMachine db: volume default/db-scratch.qcow2 moved to the trash, final 24h after the apply\n" in out
    assert out.endswith("Plan: 1 to delete, 1 to stop. Impact: 1 data-loss. 1 unchanged.\n")


def test_a_renamed_vm_is_reported_as_a_rename_on_both_sides(repo, capsys):
    """Renaming web to www is a delete and a create, each carrying a note that names the other."""
    repo.remove("web.yaml")
    repo.vm("www.yaml", "www", disks=[factories.disk("root", "default", "1GiB")])

    status, out, _err = diff(repo, "--base", "main", "--output", "json", capsys=capsys)
    planned = resources(out)

    assert status == 0
    assert planned["web"]["actions"] == ["delete", "stop"]
    assert planned["web"]["notes"][0] == (
        "renamed to www: kvmops removes this VM and creates www (new domain, new UUID; volumes follow their deletionPolicy)"
    )
    assert planned["www"]["actions"] == ["create", "start"]
    assert planned["www"]["notes"][0] == "renamed from web: created as a new VM"


def test_a_removed_and_an_added_vm_that_differ_are_not_called_a_rename(repo, capsys):
    """Replacing web by a VM of another shape is a plain delete and create, without rename notes."""
    repo.remove("web.yaml")
    repo.vm("www.yaml", "www", vcpus=4, disks=[factories.disk("root", "default", "1GiB")])

    _status, out, _err = diff(repo, "--base", "main", capsys=capsys)

    assert "+ VirtualMachine www" in out and "- VirtualMachine web" in out
    assert "renamed" not in out


def test_a_vm_moved_to_another_file_is_only_a_change_of_its_manifest_field(repo, capsys):
    """Moving web.yaml to vms/web.yaml neither deletes nor creates web: its manifest field changes, live."""
    (repo.manifests / "vms").mkdir()
    repo.git("mv", "manifests/web.yaml", "manifests/vms/web.yaml")

    status, out, _err = diff(repo, "--base", "main", "--output", "json", "--detailed-exitcode", capsys=capsys)
    web = resources(out)["web"]

    assert status == 2
    assert web["actions"] == ["update"]
    assert web["manifest"] == "vms/web.yaml"
    assert web["changes"] == [{"path": "manifest", "old": "web.yaml", "new": "vms/web.yaml", "impact": "live", "note": ""}]


# --- invalid manifests ------------------------------------------------------------------

BROKEN = """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: db
spec:
  memory: 512MiB
  vcpus: lots
"""


def test_an_invalid_manifest_at_the_head_commit_fails_the_diff_naming_it_as_head_colon_path(repo, capsys):
    """With --head HEAD, a broken manifest in that commit is exit 1 and one problem naming HEAD:manifests/db.yaml and its line."""
    repo.write("db.yaml", BROKEN)
    repo.commit("broken db")

    status, out, err = diff(repo, "--base", "main~1", "--head", "HEAD", "--detailed-exitcode", capsys=capsys)

    assert status == 1
    assert "Problems (1): these resources are left as they are\n" in out
    assert "  HEAD:manifests/db.yaml:7: spec.vcpus: expected an integer, got a string ('lots')\n" in out
    assert str(repo.root) not in out, "a problem names the revision, never a scratch directory"
    assert err == ""


def test_an_invalid_manifest_in_the_working_tree_fails_the_diff_naming_the_file_on_disk(repo, capsys):
    """Without --head, a broken manifest in the working tree is exit 1 and a problem naming its path on disk."""
    repo.write("db.yaml", BROKEN)

    status, out, err = diff(repo, "--base", "main", "--output", "json", capsys=capsys)
    document = json.loads(out)

    assert status == 1
    assert [p["text"] for p in document["problems"]] == [
        f"{repo.manifests}/db.yaml:7: spec.vcpus: expected an integer, got a string ('lots')"
    ]
    assert err == f"{repo.manifests}/db.yaml:7: spec.vcpus: expected an integer, got a string ('lots')\n"


def test_an_invalid_manifest_at_the_base_is_mentioned_in_the_diff(repo, capsys):
    """A diff from a base that did not validate says so, naming the base's broken file."""
    repo.write("db.yaml", BROKEN)
    repo.commit("broken db")
    repo.remove("db.yaml")

    _status, out, err = diff(repo, "--base", "HEAD", capsys=capsys)

    assert "HEAD:manifests/db.yaml:7" in out + err


# --- exit statuses ----------------------------------------------------------------------


def test_unchanged_manifests_exit_zero_with_detailed_exitcode(repo, capsys):
    """Comparing main with an untouched working tree gives 'No changes' and exit status 0."""
    status, out, _err = diff(repo, "--base", "main", "--detailed-exitcode", capsys=capsys)

    assert status == 0
    assert out.endswith("No changes. 1 resource up to date.\n")


def test_changes_exit_two_with_detailed_exitcode_and_zero_without(repo, capsys):
    """Any change gives exit status 2 under --detailed-exitcode, and 0 without it."""
    repo.vm("web.yaml", "web", vcpus=2, disks=[factories.disk("root", "default", "1GiB")])

    detailed, _out, _err = diff(repo, "--base", "main", "--detailed-exitcode", capsys=capsys)
    plain, out, _err = diff(repo, "--base", "main", capsys=capsys)

    assert (detailed, plain) == (2, 0)
    assert "      ~ vcpus  1 -> 2  (restart)\n" in out


def test_head_compares_two_commits_and_ignores_the_working_tree(repo, capsys):
    """--base A --head B plans B against A, whatever the working tree holds, and the title names both commits by short id."""
    first = repo.git("rev-parse", "HEAD")
    repo.vm("web.yaml", "web", vcpus=2, disks=[factories.disk("root", "default", "1GiB")])
    second = repo.commit("two vcpus")
    repo.vm("web.yaml", "web", vcpus=8, disks=[factories.disk("root", "default", "1GiB")])  # not committed

    status, out, _err = diff(repo, "--base", first, "--head", second, capsys=capsys)

    assert status == 0
    assert out.startswith(f"kvmops diff {first[:12]} → {second[:12]} (1 VM)\n")
    assert "      ~ vcpus  1 -> 2  (restart)\n" in out
    assert "-> 8" not in out


# --- outputs ----------------------------------------------------------------------------


def test_the_text_output_names_both_revisions_in_its_title(repo, capsys):
    """The text diff opens with 'kvmops diff main (<commit>) → working tree' and the counts of what is declared."""
    commit = repo.git("rev-parse", "HEAD")

    _status, out, _err = diff(repo, "--base", "main", capsys=capsys)

    assert out.splitlines()[0] == f"kvmops diff main ({commit[:12]}) → working tree (1 VM)"


def test_the_json_output_is_a_versioned_plan_whose_uri_names_the_base(repo, capsys):
    """--output json is the plan format "1" with the base revision as its uri and no foreign domains (there is no host)."""
    commit = repo.git("rev-parse", "HEAD")
    repo.vm("db.yaml", "db")

    status, out, _err = diff(repo, "--base", "main", "--output", "json", capsys=capsys)
    document = json.loads(out)

    assert status == 0
    assert document["format_version"] == "1"
    assert document["uri"] == f"git main ({commit[:12]})"
    assert document["has_changes"] is True
    assert document["summary"]["actions"] == {"create": 1, "update": 0, "delete": 0, "start": 1, "stop": 0, "migrate": 0}
    assert document["summary"]["unchanged"] == 1
    assert document["foreign"] == []
    assert document["snapshot"] is None


def test_the_markdown_output_is_a_pull_request_comment_titled_with_both_revisions(repo, capsys):
    """--output markdown starts with the kvmops-plan marker and a heading naming the base commit and the working tree."""
    commit = repo.git("rev-parse", "HEAD")
    repo.remove("web.yaml")
    repo.vm("db.yaml", "db")

    status, out, _err = diff(repo, "--base", "main", "--output", "markdown", capsys=capsys)
    lines = out.splitlines()

    assert status == 0
    assert lines[0] == "<!-- kvmops-plan -->"
    assert lines[1] == f"### kvmops diff main ({commit[:12]}) → working tree"
    assert "| + | VirtualMachine `db` | `db.yaml` | create, start | new |" in lines
    assert "| - | VirtualMachine `web` | `web.yaml` | delete, stop | removed, volumes kept |" in lines
    assert lines.count("<details>") == 2


# --- where the manifests are --------------------------------------------------------------


def test_a_path_that_did_not_exist_at_the_base_makes_every_vm_an_addition(tmp_path, capsys):
    """When the base commit has no manifests directory at all, every VM of the head is created and none is deleted."""
    repository = Repo(tmp_path / "repo")
    (repository.root / "README").write_text("nothing yet\n")
    repository.commit("empty")
    repository.vm("web.yaml", "web")
    repository.vm("vms/db.yaml", "db")

    status, out, _err = diff(repository, "--base", "main", "--output", "json", capsys=capsys)
    document = json.loads(out)

    assert status == 0
    assert {r["name"]: r["actions"] for r in document["resources"]} == {
        "web": ["create", "start"], "db": ["create", "start"],
    }
    assert document["summary"]["actions"]["delete"] == 0


def test_an_unknown_base_ref_is_one_clear_error_line(repo, capsys):
    """--base naming no commit gives exit 1, nothing on stdout, and one line naming the revision."""
    status, out, err = diff(repo, "--base", "no-such-branch", capsys=capsys)

    assert status == 1
    assert out == ""
    assert err == f"kvmops: error: unknown git revision 'no-such-branch' in {repo.root}\n"


def test_an_unknown_head_ref_is_one_clear_error_line(repo, capsys):
    """--head naming no commit gives exit 1 and one line naming the revision."""
    status, out, err = diff(repo, "--base", "main", "--head", "v9.9", capsys=capsys)

    assert status == 1
    assert out == ""
    assert err == f"kvmops: error: unknown git revision 'v9.9' in {repo.root}\n"


def test_a_path_outside_any_git_repository_is_one_clear_error_line(tmp_path, capsys):
    """A manifest directory that is not in a git working tree gives exit 1 and one line saying so."""
    directory = tmp_path / "plain"
    factories.write(directory, "web.yaml", factories.vm("web"))

    status = cli.main(["diff", str(directory), "--base", "main"])
    out, err = capsys.readouterr()

    assert status == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("kvmops: error: ")
    assert "not a git repository" in err


def test_a_path_whose_directory_does_not_exist_is_reported_as_missing_not_as_git_missing(repo, capsys):
    """A PATH under a directory that does not exist names that path; it never claims git is not installed."""
    missing = repo.root / "no" / "such" / "manifests"

    status, _out, err = diff(repo, "--base", "main", capsys=capsys, path=str(missing))

    assert status == 1
    assert "git is not installed" not in err
    assert str(missing) in err or "no such" in err.lower()


def test_an_absolute_path_missing_from_the_working_tree_still_compares_the_two_commits(repo, capsys):
    """--base/--head with an absolute PATH that the working tree lacks compares the commits, like the relative form does."""
    base = repo.git("rev-parse", "HEAD")
    repo.vm("web.yaml", "web", vcpus=2, disks=[factories.disk("root", "default", "1GiB")])
    head = repo.commit("two vcpus")
    repo.git("rm", "--quiet", "-r", "manifests")  # e.g. a checkout of another branch

    status, out, _err = diff(repo, "--base", base, "--head", head, "--detailed-exitcode", capsys=capsys,
                             path=str(repo.manifests))

    assert status == 2
    assert "      ~ vcpus  1 -> 2  (restart)\n" in out
