"""One actor per host at a time: an ``flock`` on a file under the state directory.

``kvmops apply`` and the controller both change libvirt; running them at once would
make each plan the other's drift.  Whoever acts holds the lock for the libvirt URI it
acts on; the file names the holder (pid, command, since when), so a second actor can
wait for it or say who it is waiting for.  The kernel drops the lock when the holder
dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from reconciler import errors
from reconciler.core import redaction


def default_state_dir() -> Path:
    """Return ``$KVMOPS_STATE_DIR``, else /var/lib/kvmops for root, else ~/.local/state/kvmops."""
    if os.environ.get("KVMOPS_STATE_DIR"):
        return Path(os.environ["KVMOPS_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/kvmops")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "kvmops"


def lock_path(state_dir: Path, uri: str) -> Path:
    """Return the lock file for libvirt ``uri`` under ``state_dir``."""
    return state_dir / f"lock-{hashlib.sha256(uri.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def hold(state_dir: Path, uri: str, *, wait: float = 0.0, on_wait=None, cancel=None) -> Iterator[None]:
    """Hold the host lock for ``uri`` inside the block.

    Waits up to ``wait`` seconds for another holder (calling ``on_wait(holder)`` once when
    it starts waiting), then raises :class:`~reconciler.errors.LockHeld` naming the holder.
    Setting the ``cancel`` event (a ``threading.Event``) ends the wait with ``LockHeld`` too.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(state_dir, uri)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        announced = False
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_holder(descriptor)
                if time.monotonic() >= deadline:
                    raise errors.LockHeld(
                        f"another kvmops is acting on {redaction.redact_url(uri)}: {holder or 'unknown holder'} (lock {path}); "
                        "wait for it to finish, or pass --lock-timeout SECONDS to wait"
                    ) from None
                if cancel is not None and cancel.is_set():
                    raise errors.LockHeld(f"stopped waiting for the host lock of {redaction.redact_url(uri)}, held by {holder or 'unknown'}") from None
                if not announced and on_wait is not None:
                    on_wait(holder)
                    announced = True
                if cancel is not None:
                    cancel.wait(0.1)
                else:
                    time.sleep(0.1)
        os.ftruncate(descriptor, 0)
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        command = redaction.redact_text(command)  # the file is world-readable; `run --git URL` may carry a token
        os.pwrite(descriptor, f"pid {os.getpid()} ({command}) since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _read_holder(descriptor: int) -> str:
    try:
        return os.pread(descriptor, 512, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def for_command(uri: str, *, state_dir: str | None, wait: float, on_wait=None) -> contextlib.AbstractContextManager:
    """Return the host lock a one-shot command holds while it changes ``uri`` (``--state-dir``, ``--lock-timeout``).

    The test driver's host lives inside this process, so nothing else can act on it: no lock.
    """
    if uri.startswith("test:"):
        return contextlib.nullcontext()
    return hold(Path(state_dir) if state_dir else default_state_dir(), uri, wait=wait, on_wait=on_wait)


@contextlib.contextmanager
def for_hosts(uris, *, state_dir: str | None, wait: float, on_wait=None) -> Iterator[None]:
    """Hold the host lock of every URI, taken in URI order so two fleet applies never deadlock."""
    with contextlib.ExitStack() as stack:
        for uri in sorted(uris):
            stack.enter_context(for_command(uri, state_dir=state_dir, wait=wait, on_wait=on_wait))
        yield
