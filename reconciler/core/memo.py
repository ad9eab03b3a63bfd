"""A bounded memo of a pure function's results, kept for as long as passes use them.

A reconcile pass reads the same unchanged manifests and domain XML that the last pass
read, so parsing and validating them again is wasted.  A memo cleared whenever it filled
up thrashed as soon as a pass read more entries than it held (a 10,000-VM host reads
20,000 domain XMLs): every entry was dropped before the next pass asked for it, and the
pass grew much faster than the host.

:class:`Memo` keeps two generations: new entries go to the young one; an entry found in
the old one moves to the young one; when the young one is full it becomes the old one.
Every entry a pass uses therefore survives into the next pass as long as one pass uses
at most ``capacity`` entries, and the memo never holds more than twice ``capacity``.
Safe to share between threads: a race can only lose an entry, never return a wrong one.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")

CAPACITY = 32768  # entries one pass may use and still find in the next: 16,000 running domains (persistent and live XML), or documents


_EVERY_MEMO: weakref.WeakSet[Memo] = weakref.WeakSet()


def forget_all() -> None:
    """Forget what every memo holds (before a one-shot command's process exits).

    Freeing a 10,000-VM fleet's memos explicitly takes a tenth of a second; left for the
    interpreter's exit, where its last garbage collections walk them, it took 0.8 s.
    """
    for memo in list(_EVERY_MEMO):
        memo.clear()


class Memo(Generic[Value]):
    """Values by key, the entries used since the last generation change kept."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._young: dict[Hashable, Value] = {}
        self._old: dict[Hashable, Value] = {}
        _EVERY_MEMO.add(self)

    def get(self, key: Hashable) -> Value | None:
        """Return the value remembered for ``key``, or None."""
        found = self._young.get(key)
        if found is None:
            found = self._old.pop(key, None)
            if found is not None:
                self.put(key, found)
        return found

    def put(self, key: Hashable, value: Value) -> None:
        """Remember ``value`` for ``key``; the oldest generation goes when the young one is full."""
        if len(self._young) >= self.capacity:
            self._old, self._young = self._young, {}
        self._young[key] = value

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def clear(self) -> None:
        """Forget everything."""
        self._young, self._old = {}, {}
