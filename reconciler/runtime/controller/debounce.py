"""Turn a burst of manifest changes into one wake-up.

An editor's save, an atomic rename or a ``git pull`` of many files changes several files
within milliseconds; the controller should plan once, after they settle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Debouncer:
    """Call ``settled`` once a burst of changes has been quiet for ``quiet_period`` seconds.

    A change storm that never goes quiet still calls it at least every ``max_quiet_wait``
    seconds after the burst began.  ``settled`` runs on a timer thread.
    """

    def __init__(self, settled: Callable[[], None]) -> None:
        self._settled = settled
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._burst_started: float | None = None

    def changed(self, quiet_period: float, max_quiet_wait: float) -> None:
        """Note one change: (re)start the quiet period."""
        with self._lock:
            now = time.monotonic()
            if self._burst_started is None:
                self._burst_started = now
            if self._timer is not None:
                self._timer.cancel()
            delay = max(0.0, min(quiet_period, self._burst_started + max_quiet_wait - now))
            self._timer = threading.Timer(delay, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        """Drop a pending call (at shutdown)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self._burst_started = None
            self._timer = None
        self._settled()
