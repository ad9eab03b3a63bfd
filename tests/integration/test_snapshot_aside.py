"""``kvmops plan --state FLEET.json`` interprets the snapshot in a forked child while it reads the manifests.

The child is an optimisation only: what it hands back equals what this process would
have interpreted, a plan made with it equals one made without it (``--state -`` reads
stdin, where no child runs), and a child that fails or is not waited for leaves the
command saying what it would have said alone, and no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import factories
from tests.integration.conftest import REPOSITORY, single_threaded
from tests.integration.test_fleet_cli import fleet, run, web  # noqa: F401  (fleet: the fixture)


def kvmops(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run kvmops in a process of its own (one thread: the child may be forked)."""
    return subprocess.run([sys.executable, "-m", "reconciler", *argv], input=stdin, capture_output=True, text=True,
                          timeout=120, cwd=REPOSITORY, env={**os.environ, "NO_COLOR": "1"})


@pytest.fixture
def exported(fleet, capsys, tmp_path) -> Path:  # noqa: F811
    """Return a fleet snapshot of the converged fleet; the manifests then declare one VM more."""
    run(capsys, "apply", str(fleet.manifests))
    path = tmp_path / "fleet.json"
    status, _out, err = run(capsys, "state", "export", "--manifests", str(fleet.manifests), "-o", str(path))
    assert status == 0, err
    factories.write(fleet.manifests, "more.yaml", web("web-5", hostSelector={"room": "lab"}, spreadBy="rack"))
    return path


def test_what_the_child_hands_back_equals_what_this_process_interprets(exported):
    done = single_threaded(f"""
        from reconciler.runtime import fleet_reconcile, snapshot_aside, snapshots
        aside = snapshot_aside.start({str(exported)!r})
        assert aside is not None, "no child was started"
        handed = aside.take()
        aside.discard()
        here = fleet_reconcile.interpret_snapshot(snapshots.read_fleet({str(exported)!r}))
        assert handed == here, "the child's interpretation differs"
        assert sorted(handed.observed) == ["h1", "h2", "h3"] and sum(len(a.domains) for a in handed.observed.values()) == 4
        print("same")
    """)
    assert done.stdout.strip() == "same", done.stderr


def test_a_plan_made_with_the_child_equals_one_made_without(fleet, exported):  # noqa: F811
    with_child = kvmops("plan", str(fleet.manifests), "--state", str(exported), "-o", "json")
    alone = kvmops("plan", str(fleet.manifests), "--state", "-", "-o", "json", stdin=exported.read_text())

    assert (with_child.returncode, alone.returncode) == (0, 0), with_child.stderr + alone.stderr
    planned = json.loads(with_child.stdout)
    assert planned == json.loads(alone.stdout)
    assert [vm for host in planned["hosts"] for vm in host["vms"] if vm == "web-5"] == ["web-5"]


@pytest.mark.parametrize(("content", "said"), [
    pytest.param("{not json", "not valid JSON", id="broken-json"),
    pytest.param(json.dumps({"kvmops_snapshot": 1}), "a snapshot of one host, but the manifests declare Hosts",
                 id="one-hosts-snapshot"),
])
def test_a_snapshot_the_child_cannot_read_is_reported_as_without_it(fleet, tmp_path, content, said):  # noqa: F811
    path = tmp_path / "state.json"
    path.write_text(content, encoding="utf-8")

    with_child = kvmops("plan", str(fleet.manifests), "--state", str(path))
    alone = kvmops("plan", str(fleet.manifests), "--state", "-", stdin=content)

    assert with_child.returncode == 1 and said in with_child.stderr, with_child.stderr
    assert "Traceback" not in with_child.stderr
    assert with_child.stderr.replace(str(path), "-") == alone.stderr


def test_a_child_nobody_takes_from_is_killed_and_reaped(exported):
    done = single_threaded(f"""
        import os
        from reconciler.runtime import snapshot_aside
        aside = snapshot_aside.start({str(exported)!r})
        pid = aside._pid
        aside.discard()
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("gone")
        else:
            print("still there")
    """)
    assert done.stdout.strip() == "gone", done.stderr


def test_a_child_killed_before_it_handed_over_leaves_the_snapshot_to_be_read_here(exported):
    done = single_threaded(f"""
        import os, signal
        from reconciler.runtime import snapshot_aside
        aside = snapshot_aside.start({str(exported)!r})
        os.kill(aside._pid, signal.SIGKILL)
        print("none" if aside.take() is None else "handed over")
        aside.discard()
    """)
    assert done.stdout.strip() == "none", done.stderr


def test_no_child_is_forked_while_other_threads_run_or_for_what_cannot_be_read_twice(exported):
    done = single_threaded(f"""
        import os, threading
        from reconciler.runtime import snapshot_aside
        assert snapshot_aside.start("-") is None, "forked for stdin"
        read_end, _write_end = os.pipe()
        assert snapshot_aside.start(f"/dev/fd/{{read_end}}") is None, "forked for a pipe"
        waiting = threading.Event()
        thread = threading.Thread(target=waiting.wait)
        thread.start()
        started = snapshot_aside.start({str(exported)!r})
        waiting.set()
        print("not forked" if started is None else "forked")
    """)
    assert done.stdout.strip() == "not forked", done.stderr
