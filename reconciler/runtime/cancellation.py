"""Stopping an apply politely: SIGINT or SIGTERM lets the steps in progress finish and starts no new one."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def on_signals(cancel: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``cancel`` inside the block (only the main thread can set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame) -> None:
        if not cancel.is_set():
            print(f"\n{signal.Signals(signum).name}: finishing the steps in progress, starting no new ones",
                  file=sys.stderr, flush=True)
        cancel.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
