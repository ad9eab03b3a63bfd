"""One value computed by a forked child while this process does other work.

A one-shot command of a large fleet spends its time in independent halves of pure
Python (reading and validating the manifests; interpreting domain XML), and Python runs
one thread at a time: a child forked before any thread starts runs one half on the other
core and hands its result back pickled, in an unlinked temporary file.

The child is an optimisation only, never a second source of truth: it runs the very
function this process would run. When it cannot be started (other threads run in this
process, where forking is unsafe; no ``fork``) or ends any other way than handing a whole
value of the expected type back (the function raised, the child was killed),
:meth:`SideProcess.take` returns None and the caller runs the function itself, so any
error is reported exactly as without the child. A child nobody takes from is killed and
reaped.
"""

from __future__ import annotations

import contextlib
import copyreg
import os
import pickle
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import BinaryIO, Generic, TypeVar

from reconciler.runtime import reconcile

T = TypeVar("T")


def _mapping_proxy(items: dict) -> MappingProxyType:
    return MappingProxyType(items)


# The model keeps read-only mappings, which pickle cannot take by itself: sent as dicts, read back as proxies.
_DISPATCH = {**copyreg.dispatch_table, MappingProxyType: lambda proxy: (_mapping_proxy, (dict(proxy),))}


class SideProcess(Generic[T]):
    """A forked child computing one value; :meth:`take` it, or None to compute it here instead."""

    def __init__(self, pid: int, handover: BinaryIO, expect: type) -> None:
        self._pid = pid
        self._handover = handover
        self._expect = expect
        self._reaped = False

    @classmethod
    def start(cls, work: Callable[[], T], expect: type) -> SideProcess[T] | None:
        """Fork a child computing ``work()`` (an ``expect``); None when that is not safe or not possible."""
        if threading.active_count() != 1 or not hasattr(os, "fork"):
            return None
        try:
            # An unlinked file both share: the child writes it whole, then this process reads it; nothing to
            # remove afterwards, and no reader thread (a pipe's would wait for the GIL this process holds).
            handover = tempfile.TemporaryFile()
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            handover.close()
            return None
        if pid == 0:  # the child: never returns, never runs this process's exit handlers or flushes its buffers
            _compute_and_hand_over(work, handover)
        return cls(pid, handover, expect)

    def take(self) -> T | None:
        """Wait for the child; return what it computed, or None when it handed nothing whole back."""
        if self._reap(kill=False) != 0:
            return None
        try:
            self._handover.seek(0)
            data = self._handover.read()
            with reconcile.gc_paused():  # millions of acyclic objects: collections would only walk them
                found = pickle.loads(data)
        except Exception:  # noqa: BLE001 - a truncated or garbled hand-over: compute it here instead
            return None
        return found if isinstance(found, self._expect) else None

    def discard(self) -> None:
        """Stop the child if it still runs, reap it, and drop the hand-over file."""
        self._reap(kill=True)
        self._handover.close()

    def _reap(self, *, kill: bool) -> int | None:
        if self._reaped:
            return None
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        self._reaped = True
        try:
            _pid, status = os.waitpid(self._pid, 0)
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): how it ended is unknown
            return None
        return os.waitstatus_to_exitcode(status)


@contextlib.contextmanager
def started(work: Callable[[], T] | None, expect: type) -> Iterator[SideProcess[T] | None]:
    """Yield a child computing ``work()`` (None: no work, no child; or none could be started); reaped on leaving."""
    side = SideProcess.start(work, expect) if work is not None else None
    try:
        yield side
    finally:
        if side is not None:
            side.discard()


def _compute_and_hand_over(work: Callable[[], object], handover: BinaryIO) -> None:
    """In the child: compute ``work()``, write it pickled to ``handover``, and exit (1 on any failure)."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child at once; the parent reports it
        with reconcile.gc_paused():
            value = work()
            pickler = pickle.Pickler(handover, protocol=pickle.HIGHEST_PROTOCOL)
            pickler.dispatch_table = _DISPATCH
            pickler.dump(value)
        handover.flush()
        status = 0
    except BaseException:  # noqa: BLE001 - whatever it was, the parent computes it itself and says it
        pass
    finally:
        os._exit(status)
