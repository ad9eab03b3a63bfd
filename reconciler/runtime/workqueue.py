"""A work queue of resource keys, in the manner of controller-runtime's.

Keys (``VirtualMachine/web``, ``StoragePool/vmstore``, or :data:`EVERYTHING` for a full
pass) are added by whatever notices something: the file watcher, libvirt's lifecycle
events, the resync timer, a failure asking for a retry.  The queue guarantees:

* duplicates collapse: a key waiting once is waiting, however often it is added;
* one key is never handed out twice at once: a key added while it is being worked on
  is marked dirty and handed out again once :meth:`WorkQueue.done` is called;
* failures back off per key (exponential, capped) without delaying any other key:
  :meth:`WorkQueue.retry_later` parks the key, :meth:`WorkQueue.forget` resets it;
* :meth:`WorkQueue.take` hands out every ready key at once, so one wake-up that touches
  fifty VMs costs one read of the manifests and libvirt, not fifty.
"""

from __future__ import annotations

import heapq
import threading
import time

EVERYTHING = "*"


class WorkQueue:
    """Thread-safe set of keys waiting to be reconciled, with per-key backoff."""

    def __init__(self, *, base_delay: float = 0.5, max_delay: float = 60.0, clock=time.monotonic) -> None:
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._clock = clock
        self._condition = threading.Condition()
        self._ready: dict[str, None] = {}  # insertion-ordered set
        self._delayed: list[tuple[float, int, str]] = []
        self._sequence = 0
        self._in_flight: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._closed = False

    def add(self, key: str) -> None:
        """Ask for ``key`` to be reconciled as soon as possible."""
        with self._condition:
            if self._closed:
                return
            if key in self._in_flight:
                self._dirty.add(key)
                return
            self._ready[key] = None
            self._condition.notify_all()

    def add_after(self, key: str, delay: float) -> None:
        """Ask for ``key`` to be reconciled in ``delay`` seconds (sooner if added again)."""
        with self._condition:
            if self._closed:
                return
            self._sequence += 1
            heapq.heappush(self._delayed, (self._clock() + delay, self._sequence, key))
            self._condition.notify_all()

    def retry_later(self, key: str) -> float:
        """Schedule ``key`` again after its next backoff delay; return that delay."""
        with self._condition:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay = min(self._max_delay, self._base_delay * (2**failures))
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """Reset ``key``'s backoff after a success."""
        with self._condition:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        """Return how many times in a row ``key`` has failed."""
        with self._condition:
            return self._failures.get(key, 0)

    def take(self, timeout: float | None = None) -> list[str]:
        """Return every ready key (marking them in flight); wait up to ``timeout`` for one.

        Returns an empty list on timeout or once the queue is closed.
        """
        deadline = None if timeout is None else self._clock() + timeout
        with self._condition:
            while True:
                if self._closed:
                    return []
                self._promote_due()
                keys = [k for k in self._ready if k not in self._in_flight]
                if keys:
                    for key in keys:
                        del self._ready[key]
                        self._in_flight.add(key)
                    return keys
                wait = None if deadline is None else deadline - self._clock()
                if self._delayed:
                    due = self._delayed[0][0] - self._clock()
                    wait = due if wait is None else min(wait, due)
                if wait is not None and wait <= 0:
                    if deadline is not None and self._clock() >= deadline:
                        return []
                    continue
                self._condition.wait(wait)

    def claim(self, key: str) -> bool:
        """Mark ``key`` in flight outside :meth:`take` (a full pass found work for it).

        Returns False, and marks the key dirty, when it is already in flight.
        """
        with self._condition:
            if key in self._in_flight:
                self._dirty.add(key)
                return False
            self._ready.pop(key, None)
            self._in_flight.add(key)
            return True

    def done(self, key: str) -> None:
        """Mark ``key`` finished; if it was added meanwhile, it becomes ready again."""
        with self._condition:
            self._in_flight.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._ready[key] = None
                self._condition.notify_all()

    def in_flight(self) -> set[str]:
        """Return the keys being worked on now."""
        with self._condition:
            return set(self._in_flight)

    def close(self) -> None:
        """Wake every waiter and refuse new keys."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _due, _sequence, key = heapq.heappop(self._delayed)
            if key in self._in_flight:
                self._dirty.add(key)
            else:
                self._ready[key] = None
