"""The host lock, held by the controller while any of its executions runs."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from reconciler import logconfig
from reconciler.runtime import hostlock

log = logconfig.get_logger("kvmops.controller")


class HostLockKeeper:
    """Hold the host lock while any execution runs; release it when the last one ends.

    Waiting for the lock (a ``kvmops apply`` holds it) ends when ``cancel`` is set, so a
    SIGTERM is never stuck behind someone else's apply.
    """

    def __init__(self, state_dir: Path, uri: str, cancel: threading.Event) -> None:
        self._state_dir, self._uri, self._cancel = state_dir, uri, cancel
        self._acquiring = threading.Lock()  # one thread waits for the flock; the others queue here
        self._count_lock = threading.Lock()
        self._holders = 0
        self._context: contextlib.AbstractContextManager | None = None

    @contextlib.contextmanager
    def held(self):
        with self._acquiring:
            with self._count_lock:
                shared = self._holders > 0
                if shared:
                    self._holders += 1
            if not shared:
                context = hostlock.hold(
                    self._state_dir, self._uri, wait=float("inf"), cancel=self._cancel,
                    on_wait=lambda holder: log.warning("host_lock_waiting", holder=holder or "unknown"),
                )
                context.__enter__()
                with self._count_lock:
                    self._context = context
                    self._holders += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._holders -= 1
                context = self._context if self._holders == 0 else None
                if context is not None:
                    self._context = None
            if context is not None:
                context.__exit__(None, None, None)
