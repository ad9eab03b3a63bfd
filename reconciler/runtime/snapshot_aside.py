"""A fleet snapshot read and interpreted in a second process while this one reads the manifests.

``kvmops plan --state FLEET.json`` (what a pull request's job runs) spends its time in
two independent halves: reading and validating the manifests, and interpreting every
domain XML the snapshot holds (two per running VM). A child forked before the manifests
are read (:mod:`reconciler.runtime.side_process`) does the second half meanwhile, on the
other core. Measured with 50 Hosts of 200 VMs on 2 cores: the manifests take 2.8 s, the
child 2.2 s to interpret and 0.45 s to pickle, the parent 0.3 s to unpickle; the plan
took 7.1 s in one process and 4.4 s with the child.

The child runs the same :func:`~reconciler.runtime.fleet_reconcile.interpret_snapshot`
on the same file. No child is started for a snapshot that is no regular file (stdin, a
pipe), which could not be read again should this process have to: when the child hands
nothing back (the file is no fleet snapshot or is broken, the child was killed), the
caller reads the snapshot itself, so any error is reported exactly as without the child.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from reconciler.runtime import fleet_reconcile, side_process


_EXPECT = (fleet_reconcile.InterpretedFleetSnapshot,)  # the child's one value


def start(path: str) -> side_process.SideProcess | None:
    """Fork a child interpreting the fleet snapshot at ``path``; None when that is not safe or not possible.

    Its one value is a :class:`~reconciler.runtime.fleet_reconcile.InterpretedFleetSnapshot`.
    """
    work = _work(path)
    return side_process.SideProcess.start(work, _EXPECT) if work is not None else None


def started(path: str | None) -> contextlib.AbstractContextManager[side_process.SideProcess | None]:
    """Yield a child interpreting the fleet snapshot at ``path`` (None: none was started); it is reaped on leaving."""
    return side_process.started(_work(path) if path else None, _EXPECT)


def _work(path: str) -> Callable[[], tuple[fleet_reconcile.InterpretedFleetSnapshot]] | None:
    """Return the child's work for the snapshot at ``path``; None when no child may read it."""
    # Only a regular file can be read twice: a pipe (stdin, a shell's <(...)) that the child drained would leave
    # nothing for this process to read should it have to (a single host's snapshot, a child that failed).
    if not os.path.isfile(path):
        return None
    return lambda: (_interpret(path),)


def _interpret(path: str) -> fleet_reconcile.InterpretedFleetSnapshot:
    from reconciler.runtime import snapshots

    return fleet_reconcile.interpret_snapshot(snapshots.read_fleet(path))
