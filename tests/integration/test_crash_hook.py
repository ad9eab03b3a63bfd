"""The ``KVMOPS_TEST_CRASH_AT`` hook the crash tests rely on: a kill -9 at an exact step boundary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).parents[2]


def _apply_examples(tmp_path: Path, crash_at: str | None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KVMOPS_STATE_DIR": str(tmp_path)}
    environment.pop("KVMOPS_TEST_CRASH_AT", None)
    if crash_at is not None:
        environment["KVMOPS_TEST_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", "manifests", "--connect", "test:///default", "--parallel", "1"],
        cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=120,
    )


def test_the_crash_hook_kills_the_process_right_before_the_chosen_mutating_call(tmp_path):
    """With KVMOPS_TEST_CRASH_AT=3 the process dies by SIGKILL and names the call it did not make."""
    result = _apply_examples(tmp_path, "3")
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "KVMOPS_TEST_CRASH_AT=3: SIGKILL before mutating call 3: " in result.stderr


def test_the_crash_hook_does_nothing_past_the_last_mutating_call_or_when_unset(tmp_path):
    """A count beyond the run's mutating calls, or no setting at all, lets the run finish normally."""
    assert _apply_examples(tmp_path, "100000").returncode == 0
    assert _apply_examples(tmp_path, None).returncode == 0
    assert _apply_examples(tmp_path, "no").returncode == 0
