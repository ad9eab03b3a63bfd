"""VMs a pass found between two power states, looked at again until they settle.

libvirt does not always say when a transition ends. A domain being started when libvirtd
restarts is shown "paused (starting up)" by the restarted daemon, which then kills it
while it reconnects to its guests, and no lifecycle event tells anyone (measured on
libvirt 9.0: shut off with reason "daemon" 0.2 s after the daemon answered, no event).
A controller that waited for an event would leave that VM off until the next resync.

So each VM a pass sees in transition is woken again after a delay, doubled each time a
look finds it still in transition (a guest taking its time to shut down is not polled
every half second), and forgotten once a look finds it settled.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Container, Iterable

from reconciler.core import model


def in_transition(actual: model.ActualState, among: Container[str]) -> set[str]:
    """Return the names of the domains ``actual`` shows between two power states, of those ``among``."""
    return {name for name, domain in actual.domains.items()
            if domain.power is model.PowerState.TRANSITIONAL and name in among}


class TransitionWatch:
    """When to look again at each key whose VM was last seen in transition; thread-safe."""

    def __init__(self, *, first: float = 0.5, longest: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._first = first
        self._longest = longest
        self._clock = clock
        self._lock = threading.Lock()
        self._looks: dict[str, int] = {}  # key -> looks in a row that found it in transition
        self._due: dict[str, float] = {}

    def seen(self, in_transition: Iterable[str], settled: Iterable[str]) -> None:
        """Record a pass's look: ``in_transition`` keys are looked at again later, ``settled`` ones forgotten."""
        now = self._clock()
        with self._lock:
            for key in settled:
                self._looks.pop(key, None)
                self._due.pop(key, None)
            for key in in_transition:
                looks = self._looks.get(key, 0)
                self._looks[key] = looks + 1
                self._due[key] = now + min(self._longest, self._first * 2**looks)

    def take_due(self) -> list[str]:
        """Return (and stop waiting for) the keys whose time to be looked at again has come."""
        now = self._clock()
        with self._lock:
            due = sorted(key for key, when in self._due.items() if when <= now)
            for key in due:
                del self._due[key]
        return due

    def next_in(self) -> float:
        """Return the seconds until the next key is due (infinity when none waits)."""
        with self._lock:
            if not self._due:
                return math.inf
            return max(0.0, min(self._due.values()) - self._clock())

    def watched(self) -> set[str]:
        """Return the keys last seen in transition: waiting to be looked at again, or handed out for it."""
        with self._lock:
            return set(self._looks)
