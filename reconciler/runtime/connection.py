"""A one-shot command's connection to its one host: opened within a deadline, watched by keepalives.

Every command that reaches a single libvirt URI (``plan``, ``apply``, ``status``, ``wait``,
``doctor``, ``adopt``, ``import``, ``ssh``, ``state export``, ``trash``) opens it here, so
that none of them waits for ever on a libvirtd that is stopped, hung or cut off by the
network: connecting gets ``--host-timeout`` seconds (libvirt's handshake has no timeout of
its own: a stopped libvirtd holds ``open`` until it runs again), and the connection's
keepalives give a libvirtd that falls silent later up after about as long, which fails the
call waiting on it (:class:`~reconciler.adapters.hypervisor.KeepAlive`). A fleet's
connections are opened the same way by :func:`reconciler.runtime.fleet_reconcile.connect`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import redaction
from reconciler.runtime import deadlines


def open_within(uri: str, *, read_only: bool, timeout: float = deadlines.DEFAULT_HOST_TIMEOUT) -> hv.Hypervisor:
    """Return a connection to ``uri`` opened within ``timeout`` seconds, whose keepalives give up after about as long.

    A libvirtd that does not answer the handshake in time raises
    :class:`~reconciler.errors.HostTimedOut` naming the URI (the connection, should it open
    later, is closed). In-process drivers (``test:///``) open on the caller's thread: they
    cannot hang.
    """
    keepalive = hv.KeepAlive.within(timeout)
    if hv.in_process(uri):
        return hv.Hypervisor.open(uri, read_only=read_only, keepalive=keepalive)
    label = redaction.redact_url(uri)
    answer = deadlines.call_each(
        {label: lambda: hv.Hypervisor.open(uri, read_only=read_only, keepalive=keepalive)},
        timeout=timeout, what="being connected to", late=lambda hypervisor: hypervisor.close())[label]
    if isinstance(answer, errors.KvmopsError):
        raise answer
    return answer  # type: ignore[return-value]


@contextlib.contextmanager
def opened(uri: str, *, read_only: bool, timeout: float = deadlines.DEFAULT_HOST_TIMEOUT) -> Iterator[hv.Hypervisor]:
    """Yield :func:`open_within`'s connection; close it afterwards, waiting for that at most ``timeout`` seconds."""
    hypervisor = open_within(uri, read_only=read_only, timeout=timeout)
    try:
        yield hypervisor
    finally:
        deadlines.close_within(hypervisor.close, timeout)
