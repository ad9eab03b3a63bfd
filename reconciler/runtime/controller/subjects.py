"""What each execution in flight works on, and when each subject's last execution ended.

Both controllers plan from a look at libvirt, then hand each changed resource to a worker
while the next pass is already being planned. A plan is only as fresh as its look: a pass
that looked while a VM's work was half done (its volume created but the domain not yet
defined, the domain defined but not started) plans that work again, and if the work ends
before the pass hands out its keys, that plan would run on a world it never saw; the
executor's last-moment checks then refuse it ("appeared after the plan was made"), or
worse, carry it out. So a key's work starts only on a plan whose look began after its
subject's last execution ended; otherwise its key is queued again, for a pass that sees
the outcome.

A *subject* is what a key works on. On one host it is the key itself; in a fleet, a VM is
one subject whatever host its key names (it may move), so two hosts never work on it at
once: a key whose subject is held waits for the holder's execution to end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from reconciler.runtime import workqueue


class SubjectLedger:
    """Decide whether a claimed key's work may run on this pass's plan, and record when work ends.

    ``wake(key, reason)`` queues a key again; ``subject_of(key)`` names what a key works on
    (the key itself unless told otherwise); ``clock`` is the clock the passes' looks are
    timed with (``time.monotonic``).
    """

    def __init__(self, queue: workqueue.WorkQueue, wake: Callable[[str, str], None], *,
                 subject_of: Callable[[str], str] = lambda key: key,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._queue = queue
        self._wake = wake
        self._subject_of = subject_of
        self._clock = clock
        self._lock = threading.Lock()
        self._holders: dict[str, str] = {}  # subject -> the key whose execution holds it
        self._ended: dict[str, float] = {}  # subject -> when its last execution ended
        self._waiters: dict[str, set[str]] = {}  # key -> keys queued again when its execution ends

    def start(self, key: str, looked_at: float, reason: str) -> bool:
        """Return whether the work of ``key`` (in flight in the queue) may run on a plan from a look begun at ``looked_at``.

        When it may not, the key is released and handed on, never dropped: to the execution
        holding its subject, which queues it again as it ends; or, when its subject's last
        execution ended after that look, straight back to the queue (woken for ``reason``),
        for a pass that sees the outcome.
        """
        subject = self._subject_of(key)
        with self._lock:
            holder = self._holders.get(subject)
            if holder is None and self._ended.get(subject, float("-inf")) < looked_at:
                self._holders[subject] = key
                return True
            if holder is not None:
                self._waiters.setdefault(holder, set()).add(key)
        self._queue.done(key)
        if holder is None:
            self._wake(key, reason)
        return False

    def end(self, key: str) -> None:
        """End the execution of ``key`` (whether or not it ran): its subject is free, and keys that waited are queued."""
        subject = self._subject_of(key)
        with self._lock:
            self._ended[subject] = self._clock()  # before done(): a pass claiming the key next must know
            if self._holders.get(subject) == key:
                del self._holders[subject]
            waiting = self._waiters.pop(key, set())
        self._queue.done(key)
        for waiter in sorted(waiting):
            self._wake(waiter, "retry")
