"""A fleet snapshot read and interpreted in a second process while this one reads the manifests.

``kvmops plan --state FLEET.json`` (what a pull request's job runs) spends its time in
two independent halves: reading and validating the manifests, and interpreting every
domain XML the snapshot holds (two per running VM). A child forked before the manifests
are read does the second half meanwhile, on the other core, and hands the interpreted
Hosts back pickled, in an unlinked temporary file. Measured with 50 Hosts of 200 VMs on 2 cores: the
manifests take 2.8 s, the child 2.2 s to interpret and 0.45 s to pickle, the parent 0.3 s
to unpickle; the plan took 7.1 s in one process and 4.4 s with the child.

The child is an optimisation only, never a second source of truth: it runs the same
:func:`~reconciler.runtime.fleet_reconcile.interpret_snapshot` on the same file. When it
cannot be started (other threads run in this process, where forking is unsafe; the
snapshot is no regular file, such as stdin or a pipe, which could not be read again) or ends any other way than handing a whole result back (the file
is no fleet snapshot or is broken, the child was killed), :meth:`InterpretationAside.take`
returns None and the caller reads the snapshot itself, so any error is reported exactly
as without the child. A child nobody takes from is killed and reaped.
"""

from __future__ import annotations

import contextlib
import copyreg
import os
import pickle
import signal
import tempfile
import threading
from collections.abc import Iterator
from typing import BinaryIO
from types import MappingProxyType

from reconciler.runtime import fleet_reconcile, reconcile


def _mapping_proxy(items: dict) -> MappingProxyType:
    return MappingProxyType(items)


# The model keeps read-only mappings, which pickle cannot take by itself: sent as dicts, read back as proxies.
_DISPATCH = {**copyreg.dispatch_table, MappingProxyType: lambda proxy: (_mapping_proxy, (dict(proxy),))}


class InterpretationAside:
    """A forked child interpreting a fleet snapshot; :meth:`take` its result, or None to read it here instead."""

    def __init__(self, pid: int, handover: BinaryIO) -> None:
        self._pid = pid
        self._handover = handover
        self._reaped = False

    @classmethod
    def start(cls, path: str) -> InterpretationAside | None:
        """Fork a child interpreting the fleet snapshot at ``path``; None when that is not safe or not possible."""
        # Only a regular file can be read twice: a pipe (stdin, a shell's <(...)) that the child drained would leave
        # nothing for this process to read should it have to (a single host's snapshot, a child that failed).
        if threading.active_count() != 1 or not hasattr(os, "fork") or not os.path.isfile(path):
            return None
        try:
            # An unlinked file both share: the child writes it whole, then this process reads it; nothing to
            # remove afterwards, and no reader thread (a pipe's would wait for the GIL the manifests hold).
            handover = tempfile.TemporaryFile()
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            handover.close()
            return None
        if pid == 0:  # the child: never returns, never runs this process's exit handlers or flushes its buffers
            _interpret_and_hand_over(path, handover)
        return cls(pid, handover)

    def take(self) -> fleet_reconcile.InterpretedFleetSnapshot | None:
        """Wait for the child; return what it interpreted, or None when it handed nothing whole back."""
        if self._reap(kill=False) != 0:
            return None
        try:
            self._handover.seek(0)
            data = self._handover.read()
            with reconcile.gc_paused():  # millions of acyclic objects: collections would only walk them
                found = pickle.loads(data)
        except Exception:  # noqa: BLE001 - a truncated or garbled hand-over: read the snapshot here instead
            return None
        return found if isinstance(found, fleet_reconcile.InterpretedFleetSnapshot) else None

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
def started(path: str | None) -> Iterator[InterpretationAside | None]:
    """Yield a child interpreting the fleet snapshot at ``path`` (None: none was started); it is reaped on leaving."""
    aside = InterpretationAside.start(path) if path else None
    try:
        yield aside
    finally:
        if aside is not None:
            aside.discard()


def _interpret_and_hand_over(path: str, handover: BinaryIO) -> None:
    """In the child: interpret the snapshot, write it pickled to ``handover``, and exit (1 on any failure)."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child at once; the parent reports it
        from reconciler.runtime import snapshots

        with reconcile.gc_paused():
            interpreted = fleet_reconcile.interpret_snapshot(snapshots.read_fleet(path))
            pickler = pickle.Pickler(handover, protocol=pickle.HIGHEST_PROTOCOL)
            pickler.dispatch_table = _DISPATCH
            pickler.dump(interpreted)
        handover.flush()
        status = 0
    except BaseException:  # noqa: BLE001 - whatever it was, the parent reads the snapshot itself and says it
        pass
    finally:
        os._exit(status)
