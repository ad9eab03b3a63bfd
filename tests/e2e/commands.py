"""Run the kvmops command against the e2e host, the way each e2e test does.

Every ``plan``/``apply``/``adopt`` runs in the test's own scope, so kvmops only ever
prunes what the test created on this shared libvirtd, and ``plan``/``apply`` do not
prune at all unless the test asks for it.
"""

from __future__ import annotations

import subprocess


def kvmops(host, *args: str, prune: bool = False, scope: str | None = None) -> subprocess.CompletedProcess:
    """Run ``kvmops`` against the host in the test's scope; ``plan``/``apply`` never prune unless ``prune``."""
    args = tuple(str(a) for a in args)
    if args[0] in ("plan", "apply", "adopt"):
        args += ("--scope", scope or host.prefix)
    if args[0] in ("plan", "apply") and not prune:
        args += ("--no-prune",)
    return host.kvmops(*args)


def output(result: subprocess.CompletedProcess) -> str:
    """Return everything a command printed, for assertions and their messages."""
    return f"--- exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def apply_ok(host) -> subprocess.CompletedProcess:
    """Apply the test's manifests and insist that it converged (exit 0)."""
    result = kvmops(host, "apply", host.manifests)
    assert result.returncode == 0, output(result)
    return result


def apply_converged(host) -> subprocess.CompletedProcess:
    """Apply and insist that it converged by its own check: exit 0, and the fresh observation and plan it makes
    after its steps found nothing left ("Converged: ..."), or there was nothing to do ("No changes.")."""
    result = apply_ok(host)
    assert "Converged: a fresh plan shows no changes." in result.stdout or "No changes." in result.stdout, output(result)
    return result


def plan_is_empty(host) -> subprocess.CompletedProcess:
    """Plan the test's manifests and insist that nothing would change (exit 0, "No changes")."""
    result = kvmops(host, "plan", host.manifests, "--detailed-exitcode")
    assert result.returncode == 0, output(result)
    assert "No changes." in result.stdout, output(result)
    return result
