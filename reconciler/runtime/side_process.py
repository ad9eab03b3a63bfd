"""Values computed in turn by a forked child while this process does other work.

A one-shot command of a large fleet spends its time in independent halves of pure
Python (reading and validating the manifests; interpreting domain XML), and Python runs
one thread at a time: a child forked before any thread starts runs one half on the other
core and hands its results back pickled, in an unlinked temporary file. It hands each
value over as soon as it has it, so this process may unpickle the first (the manifests'
desired state) while the child still computes the next (what its share of the Hosts shows).

The child is an optimisation only, never a second source of truth: it runs the very
function this process would run. When it cannot be started (other threads run in this
process, where forking is unsafe; no ``fork``) or ends before handing a whole value of
the expected type back (the function raised, the child was killed),
:meth:`SideProcess.take` returns None for that value and every later one, and the caller
computes them itself, so any error is reported exactly as without the child. A child
nobody takes from is killed and reaped.
"""

from __future__ import annotations

import contextlib
import copyreg
import os
import pickle
import signal
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from types import MappingProxyType
from typing import BinaryIO

from reconciler.runtime import reconcile

_OFFSET = struct.Struct("<Q")  # where a handed-over value ends in the hand-over file


def _mapping_proxy(items: dict) -> MappingProxyType:
    return MappingProxyType(items)


# The model keeps read-only mappings, which pickle cannot take by itself: sent as dicts, read back as proxies.
_DISPATCH = {**copyreg.dispatch_table, MappingProxyType: lambda proxy: (_mapping_proxy, (dict(proxy),))}


class SideProcess:
    """A forked child computing values in turn; :meth:`take` each, or None to compute it here instead."""

    def __init__(self, pid: int, handover: BinaryIO, handed: int, expect: tuple[type, ...]) -> None:
        self._pid = pid
        self._handover = handover
        self._handed = handed  # the pipe's read end: the child writes where each value ends once it is written whole
        self._expect = expect
        self._taken = 0  # values taken so far
        self._start = 0  # where the next value starts
        self._ended = False
        self._reaped = False

    @classmethod
    def start(cls, work: Callable[[], Iterable[object]], expect: tuple[type, ...]) -> SideProcess | None:
        """Fork a child computing the values ``work()`` yields, the i-th an ``expect[i]``.

        None when that is not safe or not possible.
        """
        if threading.active_count() != 1 or not hasattr(os, "fork"):
            return None
        try:
            # An unlinked file both share: the child writes each value whole, then says where it ends on a pipe; the
            # values go through the file because a pipe full of them would wait for a reader this process may not
            # be (it holds the GIL while it works), and there is nothing to remove afterwards.
            handover = tempfile.TemporaryFile()
        except OSError:
            return None
        try:
            handed, says = os.pipe()
        except OSError:
            handover.close()
            return None
        try:
            pid = os.fork()
        except OSError:
            handover.close()
            os.close(handed)
            os.close(says)
            return None
        if pid == 0:  # the child: never returns, never runs this process's exit handlers or flushes its buffers
            os.close(handed)
            _compute_and_hand_over(work, handover, says, len(expect))
        os.close(says)  # the child's end: the pipe reads as ended once the child has gone
        return cls(pid, handover, handed, expect)

    def take(self) -> object | None:
        """Wait for the child's next value; return it, or None when it ended without handing that value whole back."""
        if self._ended or self._taken >= len(self._expect):
            return None
        expect = self._expect[self._taken]
        self._taken += 1
        end = self._next_end()
        if end is None or end < self._start:
            self._ended = True
            return None
        try:
            # pread: the child still writes through the file offset both share
            data = os.pread(self._handover.fileno(), end - self._start, self._start)
            self._start = end
            with reconcile.gc_paused():  # millions of acyclic objects: collections would only walk them
                found = pickle.loads(data)
        except Exception:  # noqa: BLE001 - a truncated or garbled hand-over: compute it here instead
            self._ended = True
            return None
        if not isinstance(found, expect):
            self._ended = True
            return None
        return found

    def discard(self) -> None:
        """Stop the child if it still runs, reap it, and drop the hand-over file and pipe."""
        if self._reaped:
            return
        self._reaped = self._ended = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # reaped by someone else (SIGCHLD ignored)
            os.waitpid(self._pid, 0)
        self._handover.close()
        os.close(self._handed)

    def _next_end(self) -> int | None:
        """Wait until the child says where its next value ends; None when the pipe ends first."""
        said = b""
        while len(said) < _OFFSET.size:
            chunk = os.read(self._handed, _OFFSET.size - len(said))
            if not chunk:
                return None
            said += chunk
        return _OFFSET.unpack(said)[0]


@contextlib.contextmanager
def started(work: Callable[[], Iterable[object]] | None, expect: tuple[type, ...]) -> Iterator[SideProcess | None]:
    """Yield a child computing the values ``work()`` yields; it is reaped on leaving.

    None: no work, no child; or none could be started.
    """
    side = SideProcess.start(work, expect) if work is not None else None
    try:
        yield side
    finally:
        if side is not None:
            side.discard()


def _compute_and_hand_over(work: Callable[[], Iterable[object]], handover: BinaryIO, says: int, wanted: int) -> None:
    """In the child: write each of the first ``wanted`` values ``work()`` yields pickled to
    ``handover``, say on ``says`` where it ends, and exit (1 on any failure)."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child at once; the parent reports it
        with reconcile.gc_paused():
            values = iter(work())
            for _ in range(wanted):
                value = next(values)
                pickler = pickle.Pickler(handover, protocol=pickle.HIGHEST_PROTOCOL)
                pickler.dispatch_table = _DISPATCH
                pickler.dump(value)
                handover.flush()
                os.write(says, _OFFSET.pack(handover.tell()))
        status = 0
    except BaseException:  # noqa: BLE001 - whatever it was, the parent computes the rest itself and says it
        pass
    finally:
        os._exit(status)
