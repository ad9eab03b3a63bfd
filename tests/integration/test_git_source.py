"""``kvmops run --git URL``: the controller follows a branch of a repository it fetches itself.

The repository is a local bare one (``file://``) that the test pushes to from its own
clone; the controller (the real :class:`Controller`, its ``run()`` in a thread) fetches it
every half second.  It runs on ``test:///default``, which every connection of the process
shares, so the controller's changes can be seen through the test's own connection and
through ``kvmops status``; that host is shared with other tests too, so each VM has a
unique name, pruning is off, and every VM is removed once the controller has stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pytest
import yaml

from reconciler import cli, logconfig
from reconciler.adapters import hypervisor as hv
from reconciler.adapters import systemd
from reconciler.core import planner
from reconciler.runtime import observe
from reconciler.runtime.controller import Controller, ControllerSettings
from reconciler.runtime.gitsource import GitSettings
from tests import factories
from tests.integration.conftest import SHARED_URI, Leftovers

GIT_ENV = {
    "GIT_AUTHOR_NAME": "kvmops tests", "GIT_AUTHOR_EMAIL": "tests@kvmops.invalid",
    "GIT_COMMITTER_NAME": "kvmops tests", "GIT_COMMITTER_EMAIL": "tests@kvmops.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
}
BROKEN = """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  memory: 64MiB
  vcpus: lots
"""


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    """Return True as soon as ``condition()`` is true, False if it is still false after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def get(url: str) -> tuple[int, str]:
    """Return (status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, **GIT_ENV}, check=True)
    return result.stdout.strip()


@dataclass
class Upstream:
    """A bare repository on branch main, and the clone the test pushes from (manifests under ``manifests/``)."""

    bare: Path
    clone: Path

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def write(self, relpath: str, text: str) -> None:
        path = self.clone / "manifests" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def vm(self, relpath: str, name: str, **spec: object) -> None:
        self.write(relpath, yaml.safe_dump(factories.vm(name, **spec), sort_keys=False))

    def push(self, message: str) -> str:
        """Commit everything and push it to main; return the commit id."""
        git(self.clone, "add", "--all")
        git(self.clone, "commit", "--quiet", "--allow-empty", "-m", message)
        git(self.clone, "push", "--quiet", "origin", "HEAD:main")
        return git(self.clone, "rev-parse", "HEAD")


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    bare, clone = tmp_path / "upstream.git", tmp_path / "clone"
    bare.mkdir()
    git(bare, "init", "--quiet", "--bare", "--initial-branch=main")
    clone.mkdir()
    git(clone, "init", "--quiet", "--initial-branch=main")
    git(clone, "remote", "add", "origin", f"file://{bare}")
    return Upstream(bare, clone)


@pytest.fixture
def vm_name(leftovers: Leftovers) -> str:
    """Return a unique VM name, removed from the shared host after the test."""
    leftovers.domains.append(f"git-web-{uuid.uuid4().hex[:10]}")
    return leftovers.domains[-1]


@pytest.fixture
def host() -> Iterator[hv.Hypervisor]:
    """Return the test's own connection to the shared host."""
    with hv.Hypervisor.open(SHARED_URI) as connection:
        yield connection


@dataclass
class Following:
    """A controller following ``upstream`` in a thread, and the file its JSON log lines go to."""

    controller: Controller
    thread: threading.Thread
    log: Path
    sink: TextIO

    def log_to_file(self) -> None:
        """Send structlog's output back to the log file (``cli.main`` points it at the test's captured stderr)."""
        logconfig.configure(format="json", level="info", stream=self.sink)

    def events(self, name: str) -> list[dict]:
        """Return the log entries named ``name`` so far."""
        complete = self.log.read_text().split("\n")[:-1]  # the controller may be writing the last line
        entries = [json.loads(line) for line in complete if line.startswith("{")]
        return [entry for entry in entries if entry.get("event") == name]

    def url(self, path: str) -> str:
        return f"http://{self.controller.listen_address}{path}"

    def git(self) -> dict:
        return self.controller.status_document()["git"]

    def healthz(self) -> tuple[int, str]:
        return get(self.url("/healthz"))


@pytest.fixture
def follow(tmp_path: Path, leftovers: Leftovers) -> Iterator[Callable[[str], Following]]:
    """Return a starter of a controller following URL's main branch, path manifests, every 0.5 s (with an HTTP
    listener unless told otherwise); each is stopped afterwards."""
    started: list[Following] = []
    log = tmp_path / "controller.log"
    sink = log.open("w", encoding="utf-8")
    logconfig.configure(format="json", level="info", stream=sink)

    def start(url: str, *, listen: bool = True) -> Following:
        settings = ControllerSettings(
            path="", uri=SHARED_URI,
            git=GitSettings(url=url, branch="main", path="manifests", interval=0.5),
            planner=planner.Settings(prune=False), resync_interval=600, quiet_period=0.05, termination_grace=5,
            listen="127.0.0.1:0" if listen else "", state_dir=tmp_path / "state",
        )
        controller = Controller(settings, notifier=systemd.Notifier({}))
        thread = threading.Thread(target=controller.run, name="kvmops-run-git", daemon=True)
        thread.start()
        started.append(Following(controller, thread, log, sink))
        if listen:
            assert wait_until(lambda: controller.listen_address is not None, 5), "the listener never started"
        return started[-1]

    yield start
    for following in started:
        following.controller.request_stop()
        following.thread.join(10)
    sink.close()


def domain(host: hv.Hypervisor, name: str):
    """Return the observed domain ``name`` on the shared host, or None."""
    return observe.observe(host).domains.get(name)


def follows(host: hv.Hypervisor, name: str, commit: str, vcpus: int) -> Callable[[], bool]:
    """Return a condition: ``name`` runs with ``vcpus`` configured and its owner mark records ``commit``."""
    def check() -> bool:
        found = domain(host, name)
        return (
            found is not None and found.power.value == "running" and found.definition is not None
            and found.definition.vcpus == vcpus and found.definition.owner.revision == commit
        )
    return check


# --- following the branch ---------------------------------------------------------------


def test_a_pushed_commit_is_applied_and_recorded_in_the_vm_and_in_status(upstream, follow, host, vm_name):
    """After a push the VM is defined and running, its owner mark's revision is the commit, and /status git.applied is it."""
    upstream.vm("web.yaml", vm_name)
    commit = upstream.push("add web")

    following = follow(upstream.url)

    assert wait_until(follows(host, vm_name, commit, vcpus=1), 5), f"{vm_name}: {domain(host, vm_name)}"
    assert wait_until(lambda: following.healthz()[0] == 200, 3), following.healthz()
    # /status describes the host as the last pass saw it; the pass after the VM's start event sees it defined.
    assert wait_until(lambda: following.controller.status_document()["vms"][vm_name]["revision"] == commit, 3)
    status, body = get(following.url("/status"))
    document = json.loads(body)
    assert status == 200
    assert document["git"]["applied"] == commit
    assert document["git"]["fetched"] == commit
    assert document["git"]["rejected"] is None
    assert document["git"]["branch"] == "main" and document["git"]["path"] == "manifests"
    assert document["vms"][vm_name]["revision"] == commit
    assert document["vms"][vm_name]["manifest"] == "web.yaml"


def test_a_broken_commit_changes_nothing_until_a_fix_is_pushed(upstream, follow, host, vm_name, leftovers):
    """A commit with an invalid manifest is rejected as a whole (503, status, log) and the next good commit converges."""
    leftovers.domains.append(f"{vm_name}-b")
    upstream.vm("web.yaml", vm_name)
    good = upstream.push("add web")
    following = follow(upstream.url)
    assert wait_until(follows(host, vm_name, good, vcpus=1), 5)
    assert wait_until(lambda: following.healthz()[0] == 200, 3)

    upstream.vm("web.yaml", vm_name, vcpus=2)  # a good change, in the same commit as a broken file
    upstream.write("broken.yaml", BROKEN.format(name=f"{vm_name}-b"))
    broken = upstream.push("two vcpus, and a typo")
    assert wait_until(lambda: following.git()["rejected"] is not None, 5), following.git()

    rejected = following.git()["rejected"]
    assert rejected["commit"] == broken
    assert len(rejected["problems"]) == 1
    assert rejected["problems"][0].endswith("broken.yaml:7: spec.vcpus: expected an integer, got a string ('lots')")
    assert following.git()["applied"] == good
    code, why = following.healthz()
    assert code == 503
    assert why == f"git commit {broken[:12]} does not validate; {good} stays applied\n"
    assert wait_until(lambda: following.events("git_revision_kept"), 2), "the rejection was never logged"
    rejections = following.events("git_revision_rejected")
    assert [(e["commit"], e["field"], e["line"], e["level"]) for e in rejections] == [(broken, "spec.vcpus", 7, "error")]
    assert [e["commit"] for e in following.events("git_revision_kept")] == [good]
    time.sleep(1.1)  # two more fetches: the broken commit is neither applied nor reported again
    assert follows(host, vm_name, good, vcpus=1)()
    assert domain(host, f"{vm_name}-b") is None
    assert len(following.events("git_revision_rejected")) == 1

    (upstream.clone / "manifests" / "broken.yaml").unlink()
    fixed = upstream.push("remove the typo")

    assert wait_until(follows(host, vm_name, fixed, vcpus=2), 5), f"{vm_name}: {domain(host, vm_name)}"
    assert following.git()["applied"] == fixed
    assert following.git()["rejected"] is None
    assert wait_until(lambda: following.healthz()[0] == 200, 3), following.healthz()


def test_a_rejected_problem_names_the_file_as_commit_colon_path(upstream, follow, vm_name):
    """A problem of a rejected commit names its file the way git does, COMMIT:manifests/broken.yaml."""
    upstream.vm("web.yaml", vm_name)
    upstream.write("broken.yaml", BROKEN.format(name=f"{vm_name}-b"))
    broken = upstream.push("a typo")
    following = follow(upstream.url, listen=False)

    assert wait_until(lambda: following.git()["rejected"] is not None, 5), following.git()
    problem = following.git()["rejected"]["problems"][0]
    assert problem.startswith(f"{broken[:12]}:manifests/broken.yaml:7: "), problem


def test_an_unreachable_repository_is_reported_in_status_and_nothing_is_applied(tmp_path, follow):
    """A URL with no repository behind it leaves git.applied empty, shows the fetch error, and /healthz is 503."""
    following = follow(f"file://{tmp_path}/no-such-repository.git")

    assert wait_until(lambda: following.git()["error"], 5), following.git()
    assert following.git()["error"].startswith("git clone failed: ")
    assert following.git()["applied"] is None
    assert following.healthz()[0] == 503


def test_kvmops_status_shows_the_commit_each_vm_was_applied_from(upstream, follow, host, vm_name, capsys):
    """`kvmops status --connect test:///default NAME` shows the VM's revision in its table and in its JSON."""
    upstream.vm("web.yaml", vm_name)
    commit = upstream.push("add web")
    following = follow(upstream.url, listen=False)
    assert wait_until(follows(host, vm_name, commit, vcpus=1), 5)

    table_status = cli.main(["status", vm_name, "--connect", SHARED_URI])
    following.log_to_file()
    table = capsys.readouterr().out
    json_status = cli.main(["status", vm_name, "--connect", SHARED_URI, "--output", "json"])
    following.log_to_file()
    rows = json.loads(capsys.readouterr().out)

    assert (table_status, json_status) == (0, 0)
    header, row, *details = table.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "DESIRED"] and header.split()[-1] == "REVISION"
    assert row.split()[:3] == [vm_name, "running", "running"] and row.split()[-1] == commit[:12]
    assert "manifest: web.yaml   scope: default" in "\n".join(details)
    assert [(r["name"], r["revision"], r["manifest"]) for r in rows] == [(vm_name, commit, "web.yaml")]


def test_the_fetch_error_of_an_unreachable_repository_says_what_is_wrong(tmp_path, follow):
    """The git error in /status names the missing repository, not the tail of git's advice."""
    following = follow(f"file://{tmp_path}/no-such-repository.git", listen=False)

    assert wait_until(lambda: following.git()["error"], 5), following.git()
    error = following.git()["error"]
    assert "no-such-repository.git" in error or "not appear to be a git repository" in error, error


def test_healthz_names_the_git_error_when_the_repository_cannot_be_fetched(tmp_path, follow):
    """When the repository cannot be fetched, /healthz's 503 body says that git is the reason."""
    following = follow(f"file://{tmp_path}/no-such-repository.git")

    assert wait_until(lambda: following.git()["error"], 5), following.git()
    code, why = following.healthz()
    assert code == 503
    assert "git" in why, why
