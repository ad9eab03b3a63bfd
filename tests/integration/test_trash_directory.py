"""A pool's trash directory on this machine: moving a volume's file in, purging it, bringing it back.

Real files in a temporary pool directory; the crash points are the adapter's own
(``KVMOPS_TEST_CRASH_AT``), hit in a child process that is really SIGKILLed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.adapters.trash import PoolTrash
from reconciler.core import trash

DELETED = 1796511600  # 2026-12-05 23:00:00 UTC
REPOSITORY = Path(__file__).resolve().parents[2]


def record(volume: str = "web-data.qcow2", **changes) -> trash.TrashEntry:
    fields = dict(pool="vmstore", volume=volume, entry=trash.entry_name(volume, DELETED), scope="default", vm="web",
                  vm_uuid="0d0d0d0d-0000-4000-8000-000000000001", deleted_at=DELETED, capacity=4096,
                  reason="pruned with VM web")
    fields.update(changes)
    return trash.TrashEntry(**fields)


@pytest.fixture
def pool(tmp_path) -> Path:
    directory = tmp_path / "pool"
    directory.mkdir()
    (directory / "web-data.qcow2").write_bytes(b"MARKER-" + os.urandom(16))
    return directory


def test_moving_a_volume_in_takes_its_file_out_of_the_pool_directory_with_a_record(pool):
    content = (pool / "web-data.qcow2").read_bytes()
    bin_ = PoolTrash("vmstore", str(pool))

    bin_.move_in(str(pool / "web-data.qcow2"), record())

    assert not (pool / "web-data.qcow2").exists()
    entry_dir = pool / ".kvmops-trash" / "20261205T230000Z-web-data.qcow2"
    assert (entry_dir / "web-data.qcow2").read_bytes() == content
    assert json.loads((entry_dir / "entry.json").read_text())["vm"] == "web"
    assert oct((pool / ".kvmops-trash").stat().st_mode & 0o777) == "0o700"
    assert oct((entry_dir / "entry.json").stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in pool.iterdir()) == [".kvmops-trash"]


def test_the_trash_lists_its_entries_with_whether_they_hold_their_volume(pool):
    bin_ = PoolTrash("vmstore", str(pool))
    bin_.move_in(str(pool / "web-data.qcow2"), record())
    (pool / ".kvmops-trash" / "notes.txt").write_text("someone else's")

    entries, unreadable = bin_.entries()

    assert entries == [record()]
    assert unreadable == []


def test_a_pool_without_a_trash_lists_nothing(pool):
    assert PoolTrash("vmstore", str(pool)).entries() == ([], [])


def test_an_unreadable_record_is_reported_not_believed(pool):
    broken = pool / ".kvmops-trash" / "20261205T230000Z-x"
    broken.mkdir(parents=True)
    (broken / "entry.json").write_text("{")

    entries, unreadable = PoolTrash("vmstore", str(pool)).entries()

    assert entries == []
    assert len(unreadable) == 1 and "20261205T230000Z-x" in unreadable[0] and "not JSON" in unreadable[0]


def test_restoring_puts_the_same_bytes_back_and_keeps_the_record_as_a_claim(pool):
    content = (pool / "web-data.qcow2").read_bytes()
    bin_ = PoolTrash("vmstore", str(pool))
    bin_.move_in(str(pool / "web-data.qcow2"), record())

    path = bin_.restore(record(), DELETED + 60)

    assert path == str(pool / "web-data.qcow2")
    assert (pool / "web-data.qcow2").read_bytes() == content
    [claim], _ = bin_.entries()
    assert claim.claim and claim.restored_at == DELETED + 60 and not claim.holds_volume


def test_restoring_refuses_to_overwrite_a_file_of_the_same_name(pool):
    bin_ = PoolTrash("vmstore", str(pool))
    bin_.move_in(str(pool / "web-data.qcow2"), record())
    (pool / "web-data.qcow2").write_bytes(b"a new volume someone made")

    with pytest.raises(errors.OperationRefused, match="already in pool vmstore's directory"):
        bin_.restore(record(), DELETED + 60)

    assert (pool / "web-data.qcow2").read_bytes() == b"a new volume someone made"
    [entry], _ = bin_.entries()
    assert entry.holds_volume and entry.restored_at is None


def test_purging_removes_the_entry_and_its_file(pool):
    bin_ = PoolTrash("vmstore", str(pool))
    bin_.move_in(str(pool / "web-data.qcow2"), record())

    assert bin_.purge(record().entry, expect_volume=True) is None

    assert list((pool / ".kvmops-trash").iterdir()) == []
    assert bin_.purge(record().entry, expect_volume=True) == "already gone"


def test_a_purge_planned_before_a_restore_leaves_the_claim_alone(pool):
    bin_ = PoolTrash("vmstore", str(pool))
    bin_.move_in(str(pool / "web-data.qcow2"), record())
    bin_.restore(record(), DELETED + 60)

    assert bin_.purge(record().entry, expect_volume=True) == "its volume was restored since the plan was made"
    [claim], _ = bin_.entries()
    assert claim.claim


def test_a_second_move_into_an_entry_holding_a_file_is_refused(pool):
    bin_ = PoolTrash("vmstore", str(pool))
    bin_.move_in(str(pool / "web-data.qcow2"), record())
    (pool / "web-data.qcow2").write_bytes(b"again")

    with pytest.raises(errors.OperationRefused, match="not this volume's interrupted move"):
        bin_.move_in(str(pool / "web-data.qcow2"), record())
    assert (pool / "web-data.qcow2").read_bytes() == b"again"


def test_only_a_file_at_the_top_of_the_pool_directory_is_moved(pool, tmp_path):
    elsewhere = tmp_path / "web-data.qcow2"
    elsewhere.write_bytes(b"x")

    with pytest.raises(errors.OperationRefused, match="not at the top of the pool's directory"):
        PoolTrash("vmstore", str(pool)).move_in(str(elsewhere), record())
    assert elsewhere.exists()


def test_a_trash_that_is_a_symlink_is_refused_and_nothing_moves_through_it(pool, tmp_path):
    """A symlink planted as .kvmops-trash must not lead a root process's renames elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (pool / ".kvmops-trash").symlink_to(elsewhere)

    with pytest.raises(errors.OperationRefused, match="is not a directory"):
        PoolTrash("vmstore", str(pool)).move_in(str(pool / "web-data.qcow2"), record())

    assert (pool / "web-data.qcow2").exists()
    assert list(elsewhere.iterdir()) == []


# -- kill -9 at every step --------------------------------------------------------------------


def run_until_killed(code: str, crash_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KVMOPS_TEST_CRASH_AT": str(crash_at)}, cwd=REPOSITORY)


MOVE = """
    import sys
    from reconciler.adapters.trash import PoolTrash
    from reconciler.core import trash
    from tests.integration.test_trash_directory import record
    PoolTrash("vmstore", sys.argv[1] if len(sys.argv) > 1 else {pool!r}).move_in({path!r}, record())
"""


@pytest.mark.parametrize("crash_at", [1, 2])
def test_a_move_killed_at_any_step_loses_nothing_and_the_next_move_finishes_it(pool, crash_at):
    """Killed before the record, or between record and rename: the file is still in the pool and a move again works."""
    content = (pool / "web-data.qcow2").read_bytes()

    killed = run_until_killed(MOVE.format(pool=str(pool), path=str(pool / "web-data.qcow2")), crash_at)

    assert killed.returncode == -9, killed.stderr
    assert (pool / "web-data.qcow2").read_bytes() == content
    bin_ = PoolTrash("vmstore", str(pool))
    entries, _ = bin_.entries()
    assert all(not e.holds_volume and not e.claim for e in entries)  # at most the record of the move cut short
    bin_.move_in(str(pool / "web-data.qcow2"), record())
    [entry], _ = bin_.entries()
    assert entry.holds_volume
    assert (pool / ".kvmops-trash" / entry.entry / "web-data.qcow2").read_bytes() == content


def test_a_purge_killed_after_its_decision_is_finished_by_the_next_purge(pool):
    """The rename to .purging is the decision; a kill right after it leaves an entry the next purge finishes."""
    bin_ = PoolTrash("vmstore", str(pool))
    bin_.move_in(str(pool / "web-data.qcow2"), record())
    code = f"""
        from reconciler.adapters import hypervisor
        from reconciler.adapters.trash import PoolTrash
        from tests.integration.test_trash_directory import record
        hypervisor.count_mutating_call = lambda name, args: None  # past the decision, die before anything else
        import os, signal
        real_rename = os.rename
        def rename_then_die(*args, **kwargs):
            real_rename(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename_then_die
        PoolTrash("vmstore", {str(pool)!r}).purge(record().entry, expect_volume=True)
    """

    assert run_until_killed(code, 0).returncode == -9

    [purging], _ = bin_.entries()
    assert purging.purging and purging.holds_volume
    assert bin_.purge(purging.directory, expect_volume=True) is None
    assert list((pool / ".kvmops-trash").iterdir()) == []


def test_what_a_purge_cut_short_after_its_record_leaves_is_still_listed_and_finished(pool):
    leftover = pool / ".kvmops-trash" / (record().entry + ".purging")
    leftover.mkdir(parents=True)

    [purging], unreadable = PoolTrash("vmstore", str(pool)).entries()

    assert unreadable == []
    assert purging.purging and not purging.holds_volume and purging.volume == ""
    assert PoolTrash("vmstore", str(pool)).purge(purging.directory, expect_volume=False) is None
    assert not leftover.exists()


@pytest.mark.parametrize("crash_at", [1, 2])
def test_a_restore_killed_at_any_step_leaves_the_volume_restorable_or_restored(pool, crash_at):
    content = (pool / "web-data.qcow2").read_bytes()
    bin_ = PoolTrash("vmstore", str(pool))
    bin_.move_in(str(pool / "web-data.qcow2"), record())
    code = f"""
        from reconciler.adapters.trash import PoolTrash
        from tests.integration.test_trash_directory import record
        PoolTrash("vmstore", {str(pool)!r}).restore(record(), 1796511660)
    """

    killed = run_until_killed(code, crash_at)

    assert killed.returncode == -9, killed.stderr
    [entry], _ = bin_.entries()
    assert entry.holds_volume  # the file is still in the trash: nothing lost, restore again
    bin_.restore(entry, DELETED + 120)
    assert (pool / "web-data.qcow2").read_bytes() == content


@pytest.mark.parametrize("paused_at", ["write_trash_record", "move_volume_to_trash"])
def test_a_listing_during_another_process_s_move_waits_and_sees_the_move_done(pool, tmp_path, paused_at):
    """Another pass (another scope's apply, on the same pool) moving a volume in, paused right before the record
    is written or right before the file moves: a listing meanwhile sees no entry half made (it would look like
    a move cut short, for this pass to remove), but waits and lists the entry whole."""
    ready, go = tmp_path / "paused", tmp_path / "go"
    code = f"""
        import pathlib, time
        from reconciler.adapters import hypervisor
        from reconciler.adapters.trash import PoolTrash
        from tests.integration.test_trash_directory import record
        def pause(name, args):
            if name == {paused_at!r}:
                pathlib.Path({str(ready)!r}).touch()
                while not pathlib.Path({str(go)!r}).exists():
                    time.sleep(0.01)
        hypervisor.count_mutating_call = pause
        PoolTrash("vmstore", {str(pool)!r}).move_in({str(pool / "web-data.qcow2")!r}, record())
    """
    mover = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPOSITORY)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and mover.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists(), "the move never reached its pause"
        with ThreadPoolExecutor(max_workers=1) as listing:
            listed = listing.submit(PoolTrash("vmstore", str(pool)).entries)
            time.sleep(0.5)
            assert not listed.done(), f"listed a move half done: {listed.result()}"
            go.touch()
            assert listed.result(timeout=30) == ([record()], [])
        assert mover.wait(timeout=30) == 0
    finally:
        go.touch()
        mover.wait(timeout=30)


# -- the command, where there is no trash ----------------------------------------------------------


@pytest.mark.parametrize("argv", [["trash", "list"], ["trash", "restore", "web-data.qcow2"]])
def test_trash_commands_on_a_host_without_files_say_why_in_one_line(argv, capsys):
    """The test driver keeps no files: list and restore exit 1 naming the reason, no traceback."""
    from reconciler import cli

    status = cli.main([*argv, "--connect", "test:///default"])

    _out, err = capsys.readouterr()
    assert status == 1
    assert err.strip().count("\n") == 0 and "no trash on test:///default: the test driver keeps no files" in err
    assert "Traceback" not in err


def test_the_trash_of_a_remote_host_is_not_available_and_says_why():
    from reconciler.adapters import hypervisor

    assert hypervisor.trash_unavailable("qemu:///system") == ""
    assert hypervisor.trash_unavailable("qemu+unix:///system?socket=/run/x") == ""
    assert "another machine (qemu+ssh://hv2/system)" in hypervisor.trash_unavailable("qemu+ssh://hv2/system")
    assert "test driver" in hypervisor.trash_unavailable("test:///default")
