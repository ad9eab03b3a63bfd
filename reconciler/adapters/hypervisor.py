"""The libvirt boundary: the only module that imports ``libvirt``.

:class:`Hypervisor` wraps one libvirt connection with small, idempotent operations named
after what they do (``start_domain``, ``create_volume``) and returns plain values, never
libvirt objects.  Every ``libvirtError`` is translated here, once, into the
:mod:`reconciler.errors` tree (httpx's ``map_exceptions`` is the model): connection
trouble is retryable, refusals are terminal, and each message names the object and what
libvirt said.

Ownership is re-checked here at the moment of every mutation of an existing domain
(:meth:`Hypervisor.ensure_owned`): a plan made a second ago is not proof that the domain
is still ours.

Every method that changes libvirt state is marked ``@_mutating``, which also carries the
crash hook the crash tests use (``KVMOPS_TEST_CRASH_AT``, see :func:`_mutating`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import posixpath
import re
import signal
import stat
import sys
import threading
import time
import uuid as uuids
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

import libvirt

from reconciler import defaults, errors
from reconciler.adapters import hostbridge
from reconciler.core import domxml, model, netxml, redaction, storagexml, trash
from reconciler.core.plan import MigrationMode

DEFAULT_URI = defaults.DEFAULT_URI
_QEMU_USER = "libvirt-qemu"  # Debian's; qemu.conf's user

# libvirt prints every error to stderr by default; kvmops reports them itself.
libvirt.registerErrorHandler(lambda _context, _error: None, None)

_CONNECTION_CODES = {
    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_OPERATION_TIMEOUT,
}  # fmt: skip
# A refused login is not a lost connection: the controller would retry it forever.
_AUTH_CODES = {libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_CANCELLED, libvirt.VIR_ERR_AUTH_UNAVAILABLE}
_AUTH_HINT = (
    "check the credentials for this URI (SSH key or agent, SASL user and password, TLS certificates), "
    "and that this user may use libvirtd (group libvirt, polkit rules)"
)
_RETRYABLE_CODES = {libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_RESOURCE_BUSY}
# A system call of libvirtd's that failed with EAGAIN: e.g. "failed to load cgroup BPF prog"
# when a signal reached libvirtd while the kernel verified the program. Trying again helps.
_TRANSIENT_WORDS = ("Resource temporarily unavailable",)
START_ATTEMPTS = 3
_NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_NETWORK,
}  # fmt: skip
_BRIDGE_EXISTS = re.compile(r"error creating bridge interface (\S+): File exists")
_UNSUPPORTED_CODES = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED}
_BROKEN_CONNECTION_WORDS = (
    "end of file while reading data", "client socket is closed", "cannot recv data", "cannot write data",
    "connection reset by peer", "broken pipe", "keepalive timeout",
)
_KEEPALIVE_WORDS = "keepalive timeout"  # libvirt 9.0: "internal error: connection closed due to keepalive timeout"

_POWER = {
    libvirt.VIR_DOMAIN_NOSTATE: model.PowerState.TRANSITIONAL,
    libvirt.VIR_DOMAIN_RUNNING: model.PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: model.PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: model.PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: model.PowerState.TRANSITIONAL,
    libvirt.VIR_DOMAIN_SHUTOFF: model.PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: model.PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: model.PowerState.PAUSED,
}
# Paused only because libvirt has not finished starting it: being started, not paused by anyone. A libvirtd
# restarted in the middle of a start shows this, then kills the domain without an event (libvirt 9.0).
_STARTING = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)
# Paused by libvirt at a live migration's switch-over: on a source whose job ended without killing or resuming it
# (its libvirtd restarted at the end of the job), the guest stopped there, never by a person.
_PAUSED_BY_MIGRATION = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
# The code of libvirt's refusal to move a guest live whose disks are on storage it does not know to be shared.
UNKNOWN_SHARED_STORAGE = libvirt.VIR_ERR_MIGRATE_UNSAFE
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: model.ShutoffReason.UNKNOWN,
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: model.ShutoffReason.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: model.ShutoffReason.DESTROYED,
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: model.ShutoffReason.CRASHED,
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: model.ShutoffReason.FAILED,
}


def power_state(state: int, reason: int) -> tuple[model.PowerState, model.ShutoffReason | None]:
    """Return the power state and, when shut off, why, for libvirt's ``state`` and ``reason``."""
    if (state, reason) == _STARTING:
        return model.PowerState.TRANSITIONAL, None
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return model.PowerState.SHUTOFF, _SHUTOFF_REASONS.get(reason, model.ShutoffReason.OTHER)
    return _POWER.get(state, model.PowerState.TRANSITIONAL), None


_LIFECYCLE_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by kvmops",
}
_event_loop_lock = threading.Lock()
_event_loop_thread: threading.Thread | None = None


# -- the crash hook for tests ------------------------------------------------------------

CRASH_AT_VARIABLE = "KVMOPS_TEST_CRASH_AT"
_Method = TypeVar("_Method", bound=Callable)
_mutating_calls = 0
_mutating_calls_lock = threading.Lock()


def _mutating(method: _Method) -> _Method:
    """Mark a :class:`Hypervisor` method that changes libvirt state, for the crash hook.

    The contract of ``KVMOPS_TEST_CRASH_AT`` (a test hook, read only from the
    environment, never from a manifest or a flag): when it holds an integer ``N >= 1``,
    the process counts the calls of the methods marked here (every call, including
    ones that turn out to be no-ops, such as starting a running domain), and right
    before the ``N``-th one it writes one line to stderr::

        KVMOPS_TEST_CRASH_AT=N: SIGKILL before mutating call N: create_volume(pool, name)

    and sends itself ``SIGKILL``: no ``finally``, no ``atexit``, exactly what a
    ``kill -9`` at that instant leaves behind.  Calls 1 to ``N - 1`` have completed.
    A run that makes fewer than ``N`` mutating calls finishes normally, so a test
    enumerates every step boundary by raising ``N`` until the process exits on its
    own.  The count is per process and shared by the executor's worker threads: run
    ``apply --parallel 1`` for a deterministic order.  Unset, empty or not a positive
    integer: no effect.
    """
    name = method.__name__

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        count_mutating_call(name, args)
        return method(self, *args, **kwargs)

    return guarded  # type: ignore[return-value]


def count_mutating_call(name: str, args: tuple) -> None:
    """Count one mutating operation for the crash hook (see :func:`_mutating`): also the trash's file operations."""
    global _mutating_calls
    setting = os.environ.get(CRASH_AT_VARIABLE, "")
    if not setting.isdigit() or int(setting) < 1:
        return
    with _mutating_calls_lock:
        _mutating_calls += 1
        if _mutating_calls != int(setting):
            return
        subject = ", ".join(str(a) for a in args if isinstance(a, str) and not a.lstrip().startswith("<"))
        sys.stderr.write(f"{CRASH_AT_VARIABLE}={setting}: SIGKILL before mutating call {setting}: {name}({subject})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def start_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread; once per process.

    Must happen before opening the connections that want events, keepalives or close
    notifications.
    """
    global _event_loop_thread
    with _event_loop_lock:
        if _event_loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _event_loop_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_loop_thread.start()


@dataclass(frozen=True)
class KeepAlive:
    """libvirt's keepalive on one connection: when libvirtd has said nothing for ``interval`` seconds, a probe.

    After ``count`` probes in a row go unanswered, libvirt gives the connection up: every
    call waiting on it fails at once (:class:`~reconciler.errors.ConnectionLost`, "libvirtd
    stopped answering"), and so does every later one. That is ``interval * (count + 1)``
    seconds of silence (measured on libvirt 9.0: 2 s and 3 probes gave up after 8.0 s,
    5 s and 3 after 20.0 s). A libvirtd busy with a long call still answers the probes
    (its event loop does, not the worker running the call): only a daemon that is stopped,
    hung, or cut off by the network falls silent.
    """

    interval: int
    count: int

    @classmethod
    def within(cls, seconds: float) -> KeepAlive:
        """Return the keepalive that gives a silent libvirtd up after about ``seconds`` (2 s at the least).

        Five probes or so fit in the silence, so that one lost probe is not the end.
        """
        interval = max(1, int(seconds // 5))
        return cls(interval, max(1, math.ceil(seconds / interval) - 1))

    @property
    def silence(self) -> int:
        """Return the seconds of silence after which the connection is given up."""
        return self.interval * (self.count + 1)


DEFAULT_KEEPALIVE = KeepAlive.within(defaults.DEFAULT_HOST_TIMEOUT)


def in_process(uri: str) -> bool:
    """Return whether the driver of ``uri`` runs inside this process (``test:///``, ``qemu:///embed``): no socket."""
    parsed = urlparse(uri)
    return parsed.scheme == "test" or parsed.path.rstrip("/") == "/embed"


def connection_broke(exc: libvirt.libvirtError) -> bool:
    """Return whether ``exc`` says the connection to libvirtd failed, rather than libvirtd refusing something.

    A libvirtd that goes away mid-call gives ``VIR_ERR_SYSTEM_ERROR`` "End of file while
    reading data" from the RPC layer; every later call on that connection gives
    ``VIR_ERR_INTERNAL_ERROR`` "client socket is closed", from the RPC layer too.
    """
    code, domain = exc.get_error_code(), exc.get_error_domain()
    if code in _CONNECTION_CODES:
        return True
    if domain in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE) and code in (
        libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR
    ):
        return True
    message = (exc.get_error_message() or str(exc)).lower()
    return any(words in message for words in _BROKEN_CONNECTION_WORDS)


def translate(exc: libvirt.libvirtError, what: str, *, connected: bool = True) -> errors.HypervisorError:
    """Return the kvmops error for libvirt's ``exc``, raised while doing ``what``.

    On an open connection (``connected``), a broken connection says so in words, whatever
    ``what`` was: the call may or may not have taken effect in libvirtd.
    """
    code = exc.get_error_code()
    detail = (exc.get_error_message() or str(exc)).strip()
    message = redaction.redact_text(f"{what}: {detail}")  # ``what`` may name a URI with a password
    if code in _AUTH_CODES:
        return errors.AuthenticationFailed(f"{message}; {_AUTH_HINT}", code=code)
    if connection_broke(exc):
        if _KEEPALIVE_WORDS in detail.lower():
            message = redaction.redact_text(
                f"{what}: libvirtd stopped answering (no reply to keepalive probes: it may be stopped or hung, or the "
                "network to it cut), so the connection to it was given up; the call may or may not have taken effect")
        elif connected:
            message = redaction.redact_text(f"{what}: the connection to libvirtd was lost ({detail})")
        return errors.ConnectionLost(message, code=code)
    if code in _RETRYABLE_CODES or detail.endswith(_TRANSIENT_WORDS):
        return errors.RetryableHypervisorError(message, code=code)
    if code in _NOT_FOUND_CODES:
        return errors.ObjectNotFound(message, code=code)
    if code in _UNSUPPORTED_CODES:
        return errors.OperationUnsupported(message, code=code)
    return errors.OperationRefused(message, code=code)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Translate any ``libvirtError`` raised inside the block; ``what`` prefixes its message."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise translate(exc, what) from exc


class Hypervisor:
    """One libvirt connection and the operations kvmops performs through it.

    Thread-safe: libvirt connections may be shared between threads, and the Python
    binding releases the GIL during calls.
    """

    def __init__(self, connection: libvirt.virConnect, uri: str) -> None:
        self._connection = connection
        self.uri = uri
        self._event_callbacks: list[int] = []
        self._close_callback = False
        self.keepalive: KeepAlive | None = None  # what keep_alive() set, if anything
        self.abandoned = False  # see abandon()

    @classmethod
    def open(cls, uri: str, *, read_only: bool = False, keepalive: KeepAlive | None = DEFAULT_KEEPALIVE) -> Hypervisor:
        """Connect to ``uri``; raise ``ConnectionLost`` with a hint when nobody answers.

        A connection through a socket gets ``keepalive`` (None: none), so that no call on it
        waits for ever on a libvirtd that stopped answering: libvirt's default event loop is
        started first (once per process), since keepalives need it. Opening itself is not
        covered: a libvirtd stopped before it answers the handshake holds ``open`` until it
        runs again, so callers that must not wait open under a deadline of their own.
        """
        watched = keepalive is not None and not in_process(uri)
        if watched:
            start_event_loop()
        try:
            connection = libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
        except libvirt.libvirtError as exc:
            error = translate(exc, f"cannot connect to {uri}", connected=False)
            if isinstance(error, errors.ConnectionLost) and uri.startswith("qemu"):
                hint = "is libvirtd running and may this user use it? (systemctl start libvirtd; or use --connect test:///default to try kvmops without a hypervisor)"
                raise errors.ConnectionLost(f"{error}; {hint}", code=error.code) from exc
            raise error from exc
        hypervisor = cls(connection, uri)
        if watched:
            try:
                hypervisor.keep_alive(keepalive.interval, keepalive.count)  # type: ignore[union-attr]
            except errors.KvmopsError:
                hypervisor.close()
                raise
        return hypervisor

    def abandon(self) -> None:
        """Leave this connection to the process's exit: a call on it was given up, and may still be running.

        Closing it then could free what that call is about to use (a call that returns late
        and makes its next one while the close runs crashed the process, in a test); so
        :meth:`close` does nothing from now on.
        """
        self.abandoned = True

    def close(self) -> None:
        """Stop watching events and close the connection; further calls fail. Does nothing once abandoned (:meth:`abandon`)."""
        if self.abandoned:
            return
        for callback_id in self._event_callbacks:
            with contextlib.suppress(libvirt.libvirtError):
                self._connection.domainEventDeregisterAny(callback_id)
        self._event_callbacks.clear()
        if self._close_callback:
            with contextlib.suppress(libvirt.libvirtError):
                self._connection.unregisterCloseCallback()
            self._close_callback = False
        with contextlib.suppress(libvirt.libvirtError):
            self._connection.close()

    # -- events (need start_event_loop() before open) -----------------------------------

    def watch_lifecycle(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(domain_name, event)`` on every domain lifecycle event.

        ``event`` is one of defined, undefined, started, suspended, resumed, stopped,
        shutdown, pmsuspended, crashed.  The callback runs on libvirt's event thread and
        must return quickly.
        """
        def on_event(_connection, domain, event, _detail, _opaque) -> None:
            callback(domain.name(), _LIFECYCLE_EVENTS.get(event, str(event)))

        with translated(f"cannot watch domain events on {self.uri}"):
            self._event_callbacks.append(self._connection.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None
            ))

    def watch_close(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` when the connection to libvirtd breaks."""
        def on_close(_connection, reason, _opaque) -> None:
            callback(_CLOSE_REASONS.get(reason, f"reason {reason}"))

        with translated(f"cannot watch the connection to {self.uri}"):
            self._connection.registerCloseCallback(on_close, None)
        self._close_callback = True

    def keep_alive(self, interval: int = 5, count: int = 3) -> None:
        """Probe libvirtd every ``interval`` seconds; declare it gone after ``count`` misses (see :class:`KeepAlive`).

        Needs :func:`start_event_loop` before the connection was opened. A driver without
        keepalives (in-process, or a libvirtd too old to answer them) is left as it is.
        """
        if in_process(self.uri):
            return  # nothing to probe
        try:
            with translated(f"cannot enable keepalive on {self.uri}"):
                supported = self._connection.setKeepAlive(interval, count) == 0
        except errors.OperationUnsupported:
            return
        if supported:
            self.keepalive = KeepAlive(interval, count)

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def hostname(self) -> str:
        """Return the hypervisor host's name."""
        with translated(f"cannot read the host name of {self.uri}"):
            return self._connection.getHostname()

    @property
    def alive(self) -> bool:
        """Return whether the connection still works."""
        try:
            return bool(self._connection.isAlive())
        except libvirt.libvirtError:
            return False

    # -- reading ------------------------------------------------------------------------

    def host_info(self) -> model.HostInfo:
        """Return the domain types the host offers and whether KVM can really run guests."""
        with translated(f"cannot read the capabilities of {self.uri}"):
            capabilities = self._connection.getCapabilities()
        types: list[str] = []
        for domain in ET.fromstring(capabilities).iterfind("guest/arch/domain"):
            kind = domain.get("type", "")
            if kind and kind not in types:
                types.append(kind)
        test_driver = self.uri.startswith("test:")
        reason = None
        if "kvm" in types and not test_driver and _is_local(self.uri):
            reason = local_kvm_problem()
        return model.HostInfo(uri=self.uri, virt_types=tuple(types), test_driver=test_driver, kvm_unusable_reason=reason,
                              trash_unavailable=trash_unavailable(self.uri))

    def list_domains(self, *, live: bool = False) -> list[model.DomainRecord]:
        """Return every domain with its inactive XML and power state.

        With ``live``, a running persistent domain's record also holds its live XML, read
        through the same handle (a second lookup by name per domain cost more than the read).
        """
        with translated(f"cannot list domains on {self.uri}"):
            domains = self._connection.listAllDomains(0)
        records = []
        for domain in domains:
            try:
                records.append(self._record(domain, live=live))
            except errors.ObjectNotFound:
                continue  # undefined between the listing and now: it is simply gone
        return records

    def _record(self, domain: libvirt.virDomain, *, live: bool = False) -> model.DomainRecord:
        name = domain.name()
        with translated(f"cannot read domain {name}"):
            persistent = bool(domain.isPersistent())
            xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0)
            state, reason = domain.state()
            autostart = bool(domain.autostart()) if persistent else False
            uuid = domain.UUIDString()
        power, shutoff_reason = power_state(state, reason)
        live_xml = None
        if live and persistent and power.active:
            with translated(f"cannot read domain {name}"):
                live_xml = domain.XMLDesc(0) if domain.isActive() else None
        return model.DomainRecord(name, uuid, xml, power, shutoff_reason, autostart, persistent, live_xml=live_xml,
                                  paused_by_migration=(state, reason) == _PAUSED_BY_MIGRATION)

    def domain_record(self, name: str) -> model.DomainRecord | None:
        """Return domain ``name`` as a whole-host observation records it (live XML too when it runs), or None.

        Touches that domain only (``lookupByName``): unlike :meth:`list_domains`, which
        waits for every domain's lock, it is not held up by other domains being started
        or destroyed.
        """
        try:
            with translated(f"cannot look up domain {name}"):
                domain = self._connection.lookupByName(name)
            record = self._record(domain, live=True)
        except errors.ObjectNotFound:
            return None  # none, or undefined while we looked
        return record

    def domain_xml(self, name: str) -> str:
        """Return the persistent configuration of domain ``name`` (its live one if transient)."""
        with translated(f"cannot read domain {name}"):
            domain = self._connection.lookupByName(name)
            return domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if domain.isPersistent() else 0)

    def live_xml(self, name: str) -> str | None:
        """Return the running configuration of domain ``name``, or None if it is not running."""
        with translated(f"cannot read domain {name}"):
            domain = self._connection.lookupByName(name)
            return domain.XMLDesc(0) if domain.isActive() else None

    def domain_power(self, name: str) -> tuple[model.PowerState, model.ShutoffReason | None]:
        """Return the power state of domain ``name`` now."""
        with translated(f"cannot read the state of domain {name}"):
            state, reason = self._connection.lookupByName(name).state()
        return power_state(state, reason)

    def list_pools(self) -> list[model.ObservedPool]:
        """Return every storage pool."""
        with translated(f"cannot list storage pools on {self.uri}"):
            pools = self._connection.listAllStoragePools(0)
        result = []
        for pool in pools:
            try:
                result.append(self._pool_record(pool))
            except errors.ObjectNotFound:
                continue  # undefined between the listing and now: it is simply gone
        return result

    def pool_record(self, name: str) -> model.ObservedPool | None:
        """Return storage pool ``name`` as :meth:`list_pools` would, or None when there is none."""
        try:
            with translated(f"cannot look up storage pool {name}"):
                pool = self._connection.storagePoolLookupByName(name)
            return self._pool_record(pool)
        except errors.ObjectNotFound:
            return None

    def _pool_record(self, pool: libvirt.virStoragePool) -> model.ObservedPool:
        with translated("cannot read a storage pool"):
            root = ET.fromstring(pool.XMLDesc(0))
            return model.ObservedPool(
                name=pool.name(), type=root.get("type", ""),
                path=(root.findtext("target/path") or "").rstrip("/") or None,
                active=bool(pool.isActive()), autostart=bool(pool.autostart()),
            )

    def list_networks(self) -> list[model.NetworkRecord]:
        """Return every libvirt network with its XML."""
        with translated(f"cannot list networks on {self.uri}"):
            networks = self._connection.listAllNetworks(0)
        records = []
        for network in networks:
            try:
                with translated("cannot read a network"):
                    records.append(model.NetworkRecord(
                        network.name(), _persistent_network_xml(network), bool(network.isActive()),
                        bool(network.autostart()),
                    ))
            except errors.ObjectNotFound:
                continue
        return records

    @_mutating
    def define_network(self, xml: str, name: str) -> None:
        """Define (or redefine) network ``name`` from ``xml``."""
        with translated(f"cannot define network {name}"):
            self._connection.networkDefineXML(xml)

    def network_exists(self, name: str) -> bool:
        """Return whether a network called ``name`` exists."""
        try:
            with translated(f"cannot look up network {name}"):
                self._connection.networkLookupByName(name)
        except errors.ObjectNotFound:
            return False
        return True

    def network_owned(self, name: str) -> bool:
        """Return whether network ``name`` carries kvmops' mark."""
        with translated(f"cannot read network {name}"):
            xml = _persistent_network_xml(self._connection.networkLookupByName(name))
        return netxml.parse(xml).owner is not None

    @_mutating
    def start_network(self, name: str) -> str | None:
        """Start network ``name``; return None when it started, else what happened instead or on the way.

        "already active" when there was nothing to do.  A libvirtd killed while it started
        the network leaves the network's bridge behind, and libvirt then refuses every
        start ("error creating bridge interface B: File exists").  Such a bridge is removed
        and the start tried again, only when it is provably that leftover (see
        :meth:`_stale_bridge_problem`); otherwise the refusal says what was found and what
        to do.  Returns then what was removed.
        """
        with translated(f"cannot start network {name}"):
            network = self._connection.networkLookupByName(name)
            if network.isActive():
                return "already active"
            try:
                network.create()
                return None
            except libvirt.libvirtError as exc:
                found = _BRIDGE_EXISTS.search(exc.get_error_message() or "")
                if found is None:
                    raise
                bridge = found.group(1)
                problem = self._stale_bridge_problem(network, bridge)
                if problem is not None:
                    raise errors.OperationRefused(
                        f"cannot start network {name}: its bridge {bridge} already exists on the host, {problem}. "
                        f"A libvirtd stopped while it started the network leaves its bridge behind: if nothing uses "
                        f"{bridge}, delete it (ip link delete {bridge}) and apply again",
                        code=exc.get_error_code(),
                    ) from exc
            try:
                hostbridge.delete(bridge)
            except errors.OperationRefused as exc:
                raise errors.OperationRefused(
                    f"cannot start network {name}: its bridge {bridge} was left behind by an interrupted start, and "
                    f"kvmops could not delete it ({exc}). Delete it as root (ip link delete {bridge}) and apply again"
                ) from exc
            network.create()
            return f"removed bridge {bridge}, left behind by an interrupted start of this network"

    def _stale_bridge_problem(self, network: libvirt.virNetwork, bridge: str) -> str | None:
        """Return why host bridge ``bridge`` may not be taken for the leftover of ``network``'s interrupted start, or None.

        It is that leftover when: libvirt runs on this machine (its bridges are ours to
        see); the network is kvmops' and names ``bridge``; the bridge carries the MAC
        address libvirt gave the network's bridge (libvirt creates it with that address);
        it is down (libvirt brings it up only after its addresses and firewall rules, right
        before it starts the network's dnsmasq); nothing is attached to it; and no running
        network of this libvirtd uses it.
        """
        if urlparse(self.uri).hostname:
            return f"and libvirt runs on another machine ({redaction.redact_text(self.uri)}), whose bridges kvmops cannot see"
        xml = _persistent_network_xml(network)
        definition = netxml.parse(xml)
        if definition.owner is None or definition.bridge != bridge:
            return "and the network is not kvmops' own network of that bridge"
        seen = hostbridge.find(bridge)
        if seen is None:
            return "but is not a bridge this machine shows"
        if (netxml.bridge_mac(xml) or "").lower() != seen.mac:
            return f"with MAC address {seen.mac}, not the network's: it was not made for this network"
        if seen.up:
            return "and is up (a dnsmasq of the network may still run)"
        if seen.ports:
            return f"with {', '.join(seen.ports)} attached"
        for other in self._connection.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE):
            if netxml.parse(other.XMLDesc(0)).bridge == bridge:
                return f"used by the running network {other.name()}"
        return None

    @_mutating
    def set_network_autostart(self, name: str, autostart: bool) -> None:
        """Set whether network ``name`` starts with libvirtd."""
        with translated(f"cannot set autostart of network {name}"):
            self._connection.networkLookupByName(name).setAutostart(int(autostart))

    @_mutating
    def update_dhcp_host(self, name: str, xml: str, *, add: bool) -> None:
        """Add or remove a static lease of running network ``name`` (its config is redefined separately)."""
        command = libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST if add else libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE
        with translated(f"cannot update the DHCP hosts of network {name}"):
            self._connection.networkLookupByName(name).update(
                command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, xml, libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
            )

    @_mutating
    def remove_network(self, name: str) -> None:
        """Stop (if running) and undefine network ``name``."""
        with translated(f"cannot remove network {name}"):
            network = self._connection.networkLookupByName(name)
            if network.isActive():
                network.destroy()
            network.undefine()

    def interface_addresses(self, name: str, source: str) -> list[tuple[str, str, int]]:
        """Return (mac, address, prefix) of domain ``name``'s interfaces, learnt from ``source``.

        ``source`` is ``lease`` (the libvirt network's DHCP server), ``agent`` (the QEMU
        guest agent) or ``arp`` (the host's ARP table).  A source that cannot answer (no
        agent running, not a libvirt network) gives an empty list, not an error.
        """
        flag = {
            "lease": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            "agent": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
            "arp": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
        }[source]
        try:
            with translated(f"cannot read the addresses of domain {name}"):
                interfaces = self._connection.lookupByName(name).interfaceAddresses(flag, 0) or {}
        except (errors.OperationRefused, errors.OperationUnsupported, errors.RetryableHypervisorError):
            return []
        found = []
        for interface in interfaces.values():
            for address in interface.get("addrs") or []:
                found.append(((interface.get("hwaddr") or "").lower(), address["addr"], int(address.get("prefix") or 0)))
        return found

    def dhcp_leases(self, network: str) -> list[tuple[str, str, int, float | None]]:
        """Return (mac, address, prefix, when the lease was granted or last renewed) of network ``network``.

        The grant time is the lease's expiry less its duration (the network's ``<lease>``
        for the host or range, else dnsmasq's default hour); None for a lease that never
        expires.  A network that does not exist or cannot answer gives an empty list.
        """
        try:
            with translated(f"cannot read the DHCP leases of network {network}"):
                handle = self._connection.networkLookupByName(network)
                leases = handle.DHCPLeases() or []
                durations = _lease_durations(handle.XMLDesc(0))
        except (errors.OperationRefused, errors.OperationUnsupported, errors.RetryableHypervisorError,
                errors.ObjectNotFound):
            return []
        found = []
        for lease in leases:
            mac = (lease.get("mac") or "").lower()
            expiry = int(lease.get("expirytime") or 0)
            duration = durations.get(mac, durations.get("", DEFAULT_LEASE_SECONDS))
            granted = float(expiry - duration) if expiry and duration else None
            found.append((mac, lease["ipaddr"], int(lease.get("prefix") or 0), granted))
        return found

    def current_memory(self, name: str) -> int | None:
        """Return the memory a running domain has now (KiB, after the balloon), or None when it is not running."""
        try:
            with translated(f"cannot read the memory of domain {name}"):
                domain = self._connection.lookupByName(name)
                return int(domain.info()[2]) if domain.isActive() else None
        except (errors.ObjectNotFound, errors.OperationUnsupported):
            return None

    def domain_started_at(self, name: str, uuid: str) -> float | None:
        """Return when the QEMU process of the running domain ``name`` started (epoch seconds), or None.

        libvirt does not say when a domain started, so this looks for the QEMU process
        (``-uuid UUID`` on its command line) in this machine's /proc, first at the pid
        libvirtd recorded (readable by root), else among all processes: only for a local
        ``qemu:`` URI; None wherever it cannot tell.
        """
        if not self.uri.startswith("qemu") or not _is_local(self.uri):
            return None
        wanted = ("-uuid", uuid)
        try:
            with open(f"/run/libvirt/qemu/{name}.pid", encoding="ascii") as handle:
                started = _process_start_time(wanted, [handle.read().strip()])
        except (OSError, ValueError):
            started = None
        return started if started is not None else _process_start_time(wanted)

    def version(self) -> tuple[str, str]:
        """Return (libvirt version, hypervisor version) as dotted strings."""
        def dotted(number: int) -> str:
            return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
        with translated(f"cannot read the version of {self.uri}"):
            return dotted(self._connection.getLibVersion()), dotted(self._connection.getVersion())

    def pool_free_bytes(self, name: str) -> int | None:
        """Return the free space of pool ``name`` in bytes, or None when it is not active."""
        with translated(f"cannot read pool {name}"):
            pool = self._connection.storagePoolLookupByName(name)
            if not pool.isActive():
                return None
            return pool.info()[3]

    def list_volumes(self, pool_name: str) -> list[model.ObservedVolume]:
        """Return the volumes of pool ``pool_name`` with their sizes ([] if it stopped meanwhile)."""
        try:
            with translated(f"cannot list the volumes of pool {pool_name}"):
                pool = self._connection.storagePoolLookupByName(pool_name)
                volumes = pool.listAllVolumes(0)
        except errors.ObjectNotFound:
            return []  # undefined between the listing and now
        except errors.OperationRefused as exc:
            if exc.code == libvirt.VIR_ERR_OPERATION_INVALID:  # stopped between the listing and now
                return []
            raise
        result = []
        for volume in volumes:
            try:
                with translated(f"cannot read a volume of pool {pool_name}"):
                    kind, capacity, allocation = volume.info()
                    if kind == libvirt.VIR_STORAGE_VOL_DIR and volume.name() == trash.TRASH_DIRECTORY:
                        continue  # kvmops' trash: libvirt lists the directory, never what is inside it
                    result.append(model.ObservedVolume(pool_name, volume.name(), capacity, allocation, volume.path()))
            except errors.ObjectNotFound:
                continue  # deleted while we looked
            except errors.OperationRefused as exc:
                if exc.code == libvirt.VIR_ERR_OPERATION_INVALID:
                    return []  # the pool stopped while we looked
                raise
        return result

    def volume_record(self, pool_name: str, name: str) -> model.ObservedVolume | None:
        """Return volume ``name`` of pool ``pool_name`` as :meth:`list_volumes` would, or None when libvirt knows none.

        One lookup: the pool is not refreshed or listed, so a file put in its directory
        behind libvirt's back shows only in a whole-host observation.
        """
        try:
            with translated(f"cannot look up volume {pool_name}/{name}"):
                volume = self._connection.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
                _kind, capacity, allocation = volume.info()
                return model.ObservedVolume(pool_name, name, capacity, allocation, volume.path())
        except errors.ObjectNotFound:
            return None
        except errors.OperationRefused as exc:
            if exc.code == libvirt.VIR_ERR_OPERATION_INVALID:  # the pool is not running
                return None
            raise

    def volume_at(self, path: str) -> model.ObservedVolume | None:
        """Return the pool volume whose file is ``path``, or None when no running pool has it."""
        try:
            with translated(f"cannot look up the volume at {path}"):
                volume = self._connection.storageVolLookupByPath(path)
                pool = volume.storagePoolLookupByVolume().name()
                _kind, capacity, allocation = volume.info()
                return model.ObservedVolume(pool, volume.name(), capacity, allocation, volume.path())
        except errors.ObjectNotFound:
            return None
        except errors.OperationRefused as exc:
            if exc.code == libvirt.VIR_ERR_OPERATION_INVALID:
                return None
            raise

    # -- ownership guard ----------------------------------------------------------------

    def ensure_owned(self, name: str, uuid: str | None = None, *, bound: bool = False) -> None:
        """Raise ``OwnershipError`` unless domain ``name`` carries kvmops' mark written for it (and has ``uuid``).

        A mark naming another domain (a clone's copy) never counts.  A mark written by an
        older kvmops, which names no domain, counts unless ``bound`` (undefining needs more
        proof than that).
        """
        with translated(f"cannot read domain {name}"):
            domain = self._connection.lookupByName(name)
            xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if domain.isPersistent() else 0)
            actual_uuid = domain.UUIDString()
        owner, binding = domxml.mark_binding(domxml.parse_tree(xml))
        if owner is None:
            raise errors.OwnershipError(f"domain {name} is not managed by kvmops (no kvmops metadata); refusing to change it")
        if binding is model.MarkBinding.COPIED:
            raise errors.OwnershipError(
                f"domain {name} carries a kvmops mark copied from another domain (written for {owner.written_for()}); "
                "it is foreign and kvmops refuses to change it"
            )
        if bound and binding is model.MarkBinding.UNBOUND:
            raise errors.OwnershipError(
                f"domain {name} carries a kvmops mark that names no domain (written by an older kvmops); refusing to "
                "remove it on the strength of that mark"
            )
        if uuid is not None and actual_uuid != uuid:
            raise errors.OwnershipError(
                f"domain {name} was replaced since the plan was made (UUID {actual_uuid}, planned {uuid}); plan again"
            )

    def volume_users(self, pool_name: str, name: str) -> list[tuple[str, bool, bool]]:
        """Return (domain, running, owner) for every domain whose disks use volume ``pool_name/name`` now.

        ``owner``: the domain's own kvmops mark (not a clone's copy) records the volume as
        created by kvmops.  Read from the persistent and, for running domains, the live
        XML, by pool and volume name or by the volume's file path.
        """
        with translated(f"cannot look up volume {pool_name}/{name}"):
            path = self._connection.storagePoolLookupByName(pool_name).storageVolLookupByName(name).path()
        local = _is_local(self.uri)

        def same_file(other: str) -> bool:
            if os.path.normpath(other) == os.path.normpath(path):
                return True
            return local and os.path.realpath(other) == os.path.realpath(path)  # through symlinks, on this host
        with translated(f"cannot list domains on {self.uri}"):
            domains = self._connection.listAllDomains(0)
        users = []
        for domain in domains:
            try:
                with translated("cannot read a domain"):
                    active = bool(domain.isActive())
                    xmls = [domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if domain.isPersistent() else 0)]
                    if active:
                        xmls.append(domain.XMLDesc(0))
                    domain_name = domain.name()
            except errors.ObjectNotFound:
                continue
            roots = [domxml.parse_tree(xml) for xml in xmls]
            used = any(
                (device.pool, device.volume) == (pool_name, name)
                or (device.path is not None and same_file(device.path))
                for root in roots for device in domxml.parse_storage(root)
            )
            if used:
                owner, binding = domxml.mark_binding(roots[0])
                record = owner.volume(pool_name, name) if owner is not None else None
                owns = binding is not model.MarkBinding.COPIED and record is not None and record.created
                users.append((domain_name, active, owns))
        return users

    def domain_exists(self, name: str) -> bool:
        """Return whether a domain called ``name`` exists."""
        try:
            with translated(f"cannot look up domain {name}"):
                self._connection.lookupByName(name)
        except errors.ObjectNotFound:
            return False
        return True

    # -- domains ------------------------------------------------------------------------

    @_mutating
    def define_domain(self, xml: str, name: str) -> None:
        """Define (or redefine) a domain's persistent configuration from ``xml``."""
        with translated(f"cannot define domain {name}"):
            self._connection.defineXML(xml)

    @_mutating
    def start_domain(self, name: str) -> bool:
        """Start domain ``name``; return False if it was already running.

        A file QEMU may not open (a CD-ROM kvmops tells libvirt not to chown) fails the
        start with a message saying what to do about it.
        """
        with translated(f"cannot start domain {name}"):
            domain = self._connection.lookupByName(name)
            if domain.isActive():
                return False
            try:
                for attempt in range(1, START_ATTEMPTS + 1):
                    try:
                        domain.create()
                        break
                    except libvirt.libvirtError as exc:
                        if domain.isActive():
                            break  # it started after all
                        # a start that failed left the domain off: starting again is safe
                        transient = type(translate(exc, "")) is errors.RetryableHypervisorError
                        if not transient or attempt == START_ATTEMPTS:
                            raise
                        time.sleep(0.2 * attempt)
            except libvirt.libvirtError as exc:
                error = translate(exc, f"cannot start domain {name}")
                unreadable = re.search(r"Could not open '([^']+)': Permission denied", str(error))
                if unreadable is None:
                    raise error from exc
                raise errors.OperationRefused(
                    f"cannot start domain {name}: QEMU (user {_QEMU_USER}) may not read {unreadable.group(1)}. "
                    "kvmops asks libvirt not to change the owner of media it did not create (libvirt would never give "
                    f"a CD-ROM back); make the file readable to QEMU (chmod o+r {unreadable.group(1)}, and o+x on its "
                    "directories) or copy it into a pool",
                    code=error.code,
                ) from exc
            return True

    @_mutating
    def shutdown_domain(self, name: str) -> bool:
        """Ask the guest to power off (ACPI); return False if it was not running."""
        with translated(f"cannot shut down domain {name}"):
            domain = self._connection.lookupByName(name)
            if not domain.isActive():
                return False
            try:
                domain.shutdown()
            except libvirt.libvirtError as exc:
                if not domain.isActive():  # it went down by itself meanwhile
                    return False
                raise exc
            return True

    @_mutating
    def resume_domain(self, name: str) -> bool:
        """Resume the paused domain ``name``; return False if it was not paused.

        A guest that arrived paused opens its disks for writing only now; a disk file QEMU may
        no longer open fails the resume with a message saying what to do about it.
        """
        with translated(f"cannot resume domain {name}"):
            domain = self._connection.lookupByName(name)
            if domain.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
                return False
            try:
                domain.resume()
            except libvirt.libvirtError as exc:
                unreadable = re.search(r"Could not open '([^']+)': Permission denied", str(exc))
                if unreadable is None:
                    raise
                raise errors.OperationRefused(
                    f"cannot resume domain {name}: QEMU (user {_QEMU_USER}) may no longer open {unreadable.group(1)}. "
                    "libvirt on the host the guest left gave the file back to its former owner as it let go of the "
                    "guest: its record of the file's users (trusted.libvirt.security.* attributes, qemu.conf "
                    "remember_owner) was lost, by a libvirtd killed in the middle of a move, or is off. The guest "
                    f"waits, paused, with all its memory: give the file back (chown {_QEMU_USER}: "
                    f"{unreadable.group(1)}), then apply again",
                    code=exc.get_error_code(),
                ) from exc
            return True

    @_mutating
    def destroy_domain(self, name: str) -> bool:
        """Power domain ``name`` off at once; return False if it was not running."""
        with translated(f"cannot destroy domain {name}"):
            domain = self._connection.lookupByName(name)
            if not domain.isActive():
                return False
            try:
                domain.destroy()
            except libvirt.libvirtError as exc:
                if not domain.isActive():
                    return False
                raise exc
            return True

    @_mutating
    def undefine_domain(self, name: str, *, keep_nvram: bool = False) -> None:
        """Remove the persistent definition of ``name`` (managed save and snapshot metadata too).

        The UEFI NVRAM file goes with it unless ``keep_nvram``.
        """
        with translated(f"cannot undefine domain {name}"):
            domain = self._connection.lookupByName(name)
            flags = (
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                | (libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM if keep_nvram else libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            )
            try:
                domain.undefineFlags(flags)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                    raise
                domain.undefine()  # drivers without those flags (the test driver) have nothing to keep

    @_mutating
    def set_owner(self, name: str, owner: model.Ownership) -> None:
        """Write kvmops' ownership mark into the persistent ``<metadata>`` of domain ``name``."""
        element = domxml.render_owner(owner)
        xml = ET.tostring(element, encoding="unicode").replace(f"{domxml.PREFIX}:", "").replace(
            f' xmlns:{domxml.PREFIX}="{domxml.NAMESPACE}"', ""
        )
        with translated(f"cannot write kvmops metadata into domain {name}"):
            self._connection.lookupByName(name).setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, domxml.PREFIX, domxml.NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
            )

    @_mutating
    def set_roster(self, name: str, roster: tuple[str, ...]) -> None:
        """Record the fleet's Host names in the persistent ``<metadata>`` of domain ``name``, beside (not in) the mark."""
        xml = ET.tostring(domxml.render_roster(roster), encoding="unicode").replace(
            f"{domxml.ROSTER_PREFIX}:", "").replace(f' xmlns:{domxml.ROSTER_PREFIX}="{domxml.ROSTER_NAMESPACE}"', "")
        with translated(f"cannot write kvmops' fleet roster into domain {name}"):
            self._connection.lookupByName(name).setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, domxml.ROSTER_PREFIX, domxml.ROSTER_NAMESPACE,
                libvirt.VIR_DOMAIN_AFFECT_CONFIG,
            )

    @_mutating
    def set_autostart(self, name: str, autostart: bool) -> None:
        """Set whether domain ``name`` starts with libvirtd."""
        with translated(f"cannot set autostart of domain {name}"):
            self._connection.lookupByName(name).setAutostart(int(autostart))

    @_mutating
    def set_memory_live(self, name: str, memory_kib: int) -> None:
        """Move the running guest's balloon to ``memory_kib``."""
        with translated(f"cannot change the memory of running domain {name}"):
            self._connection.lookupByName(name).setMemoryFlags(memory_kib, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    @_mutating
    def block_resize(self, name: str, target: str, capacity: int) -> None:
        """Grow disk ``target`` of running domain ``name`` to ``capacity`` bytes."""
        with translated(f"cannot grow disk {target} of domain {name}"):
            self._connection.lookupByName(name).blockResize(target, capacity, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    # -- storage ------------------------------------------------------------------------

    @_mutating
    def define_pool(self, xml: str, name: str) -> None:
        """Define storage pool ``name`` from ``xml``."""
        with translated(f"cannot define pool {name}"):
            self._connection.storagePoolDefineXML(xml, 0)

    @_mutating
    def build_pool(self, name: str) -> None:
        """Build pool ``name`` (for a dir pool: create its directory)."""
        with translated(f"cannot build pool {name}"):
            self._connection.storagePoolLookupByName(name).build(0)

    @_mutating
    def start_pool(self, name: str) -> bool:
        """Start pool ``name``; return False if it was already active."""
        with translated(f"cannot start pool {name}"):
            pool = self._connection.storagePoolLookupByName(name)
            if pool.isActive():
                return False
            pool.create(0)
            return True

    @_mutating
    def set_pool_autostart(self, name: str, autostart: bool) -> None:
        """Set whether pool ``name`` starts with libvirtd."""
        with translated(f"cannot set autostart of pool {name}"):
            self._connection.storagePoolLookupByName(name).setAutostart(int(autostart))

    def volumes_backed_by(self, pool_name: str, name: str) -> list[str]:
        """Return ``pool/volume`` of every volume, in any active pool, whose backing file is volume ``pool_name/name``.

        Overlays of shut-off domains show their backing chain only here, not in the
        domain's inactive XML.
        """
        with translated(f"cannot look up volume {pool_name}/{name}"):
            path = self._connection.storagePoolLookupByName(pool_name).storageVolLookupByName(name).path()
        found = []
        for pool in self.list_pools():
            if not pool.active:
                continue
            for volume in self.list_volumes(pool.name):
                try:
                    with translated(f"cannot read volume {pool.name}/{volume.name}"):
                        xml = self._connection.storagePoolLookupByName(pool.name).storageVolLookupByName(volume.name).XMLDesc(0)
                except errors.ObjectNotFound:
                    continue  # deleted while we looked
                backing = ET.fromstring(xml).findtext("backingStore/path")
                if backing and os.path.normpath(backing) == os.path.normpath(path):
                    found.append(f"{pool.name}/{volume.name}")
        return found

    def volume_exists(self, pool_name: str, name: str) -> bool:
        """Return whether volume ``name`` exists in pool ``pool_name``."""
        try:
            with translated(f"cannot look up volume {pool_name}/{name}"):
                self._connection.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
        except errors.ObjectNotFound as exc:
            if exc.code == libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            return False
        return True

    def volume_path(self, pool_name: str, name: str) -> str:
        """Return the file of volume ``pool_name/name``."""
        with translated(f"cannot look up volume {pool_name}/{name}"):
            return self._connection.storagePoolLookupByName(pool_name).storageVolLookupByName(name).path()

    def pool_directory(self, name: str) -> str | None:
        """Return the target directory of pool ``name`` (without a trailing slash), or None if it has none."""
        with translated(f"cannot read pool {name}"):
            root = ET.fromstring(self._connection.storagePoolLookupByName(name).XMLDesc(0))
        return (root.findtext("target/path") or "").rstrip("/") or None

    @_mutating
    def create_volume(self, pool_name: str, xml: str, name: str) -> None:
        """Create volume ``name`` in pool ``pool_name`` from ``xml``."""
        with translated(f"cannot create volume {pool_name}/{name}"):
            self._connection.storagePoolLookupByName(pool_name).createXML(xml, 0)

    @_mutating
    def clone_volume(self, pool_name: str, xml: str, name: str, source_pool: str, source: str) -> None:
        """Create volume ``name`` from ``xml`` as a full copy of ``source_pool/source``."""
        with translated(f"cannot copy {source_pool}/{source} to {pool_name}/{name}"):
            original = self._connection.storagePoolLookupByName(source_pool).storageVolLookupByName(source)
            self._connection.storagePoolLookupByName(pool_name).createXMLFrom(xml, original, 0)

    @_mutating
    def upload_volume(self, pool_name: str, name: str, chunks, length: int) -> None:
        """Write ``length`` bytes from the iterable ``chunks`` into volume ``pool_name/name``.

        The stream is aborted (and the error raised) if ``chunks`` raises, so a failed or
        corrupt source never completes an upload.
        """
        with translated(f"cannot upload into volume {pool_name}/{name}"):
            volume = self._connection.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
            stream = self._connection.newStream(0)
            volume.upload(stream, 0, length, 0)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        sent = stream.send(bytes(view))
                        view = view[sent:]
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
            stream.finish()

    @_mutating
    def refresh_pool(self, name: str) -> None:
        """Re-read pool ``name``'s directory (sizes, formats of volumes written by upload)."""
        with translated(f"cannot refresh pool {name}"):
            self._connection.storagePoolLookupByName(name).refresh(0)

    def volume_capacity(self, pool_name: str, name: str) -> int:
        """Return the capacity of volume ``pool_name/name`` in bytes."""
        with translated(f"cannot read volume {pool_name}/{name}"):
            return self._connection.storagePoolLookupByName(pool_name).storageVolLookupByName(name).info()[1]

    @_mutating
    def resize_volume(self, pool_name: str, name: str, capacity: int) -> None:
        """Grow volume ``pool_name/name`` to ``capacity`` bytes (never shrinks)."""
        with translated(f"cannot grow volume {pool_name}/{name}"):
            volume = self._connection.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
            volume.resize(capacity, 0)  # without VIR_STORAGE_VOL_RESIZE_SHRINK libvirt refuses to shrink

    @_mutating
    def delete_volume(self, pool_name: str, name: str) -> bool:
        """Delete volume ``pool_name/name``; return False if it was already gone."""
        try:
            with translated(f"cannot delete volume {pool_name}/{name}"):
                self._connection.storagePoolLookupByName(pool_name).storageVolLookupByName(name).delete(0)
        except errors.ObjectNotFound as exc:
            if exc.code == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False
            raise
        return True


    # -- moving domains between hosts ----------------------------------------------------

    def domain_name_by_uuid(self, uuid: str) -> str | None:
        """Return the name of the domain with ``uuid`` on this host, or None when there is none."""
        try:
            with translated(f"cannot look up the domain with UUID {uuid} on {self.uri}"):
                return self._connection.lookupByUUIDString(uuid).name()
        except errors.ObjectNotFound:
            return None

    def migrate(
        self,
        name: str,
        uuid: str,
        destination_uri: str,
        mode: MigrationMode,
        *,
        xml: str | None = None,
        progress: Callable[[int, int | None], None] | None = None,
        shared_storage_proven: bool = False,
        copy_disks: Sequence[str] = (),
        held_paused: bool = False,
    ) -> float:
        """Move domain ``name`` (``uuid``) to the libvirtd at ``destination_uri``; return libvirt's seconds.

        Peer to peer (``virDomainMigrateToURI3``): this host's libvirtd dials
        ``destination_uri`` itself, so that URI must make sense *from the source host*.
        The destination keeps the definition (``xml`` when given, else the source's) and
        the source forgets it, in the same libvirt job:

        * ``LIVE``: the running guest moves, its disks stay where they are (shared storage);
        * ``LIVE_COPY_STORAGE``: the running guest moves and QEMU copies its disks over NBD
          (``VIR_MIGRATE_NON_SHARED_DISK``); libvirt creates the destination volumes, with
          the source's size and format, in the destination pool with the same directory;
        * ``OFFLINE``: a shut-off domain's definition moves (``VIR_MIGRATE_OFFLINE``); its
          storage must already be visible on the destination (libvirt copies none).

        libvirt refuses a live migration whose disks are on a file system it does not know
        to be shared (NFS, GFS2, CephFS...) with "Migration without shared storage is
        unsafe"; ``shared_storage_proven`` (every writable disk is in a pool the caller
        just proved the destination sees, see :meth:`shares_pool_with`) lets it through
        (``VIR_MIGRATE_UNSAFE``).  The migration stream of a destination reached over a
        local socket (a lab on this machine) goes through 127.0.0.1; elsewhere libvirt asks
        the destination (its hostname, or qemu.conf's ``migration_host``).

        ``copy_disks`` restricts ``LIVE_COPY_STORAGE`` to those disk targets
        (``VIR_MIGRATE_PARAM_MIGRATE_DISKS``); the others must be on shared storage.

        ``held_paused`` (live modes): the destination keeps the guest paused once it has it
        (``VIR_MIGRATE_PAUSED``), for the caller to resume once this returns, that is once
        the source has let go of it. Without it, libvirt resumes the guest on the destination
        before it kills the source's QEMU, and a destination libvirtd that dies in between
        leaves it running on both: the source, not hearing the end, resumes its own copy.
        Only where libvirt knows every disk it does not copy to be on shared storage: there it
        leaves the disk files' owners alone as the source lets go. On storage it does not know
        (``shared_storage_proven``) the source hands each file back to root first, and the
        guest, which opens its disks for writing only when resumed, could not; so ``held_paused``
        moves refuse ``VIR_MIGRATE_UNSAFE``: libvirt's refusal (code
        :data:`UNKNOWN_SHARED_STORAGE`) tells the caller to move the guest unpaused.

        ``progress(processed_bytes, total_bytes)`` is called about every second from
        another thread while libvirt works.  Refuses unless the domain here still has
        ``uuid``.  libvirt errors become :mod:`reconciler.errors`: a destination libvirtd
        that cannot be reached is retryable, a refusal is terminal.
        """
        what = f"cannot migrate domain {name} to {destination_uri}"
        with translated(what):
            domain = self._connection.lookupByName(name)
            if domain.UUIDString() != uuid:
                raise errors.OwnershipError(
                    f"domain {name} was replaced since the plan was made (UUID {domain.UUIDString()}, planned {uuid}); "
                    "not migrating it. Plan again"
                )
        flags = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        if mode is MigrationMode.OFFLINE:
            flags |= libvirt.VIR_MIGRATE_OFFLINE
        else:
            flags |= libvirt.VIR_MIGRATE_LIVE
        if mode is MigrationMode.LIVE_COPY_STORAGE:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        if held_paused and mode is not MigrationMode.OFFLINE:
            flags |= libvirt.VIR_MIGRATE_PAUSED
        if mode is not MigrationMode.OFFLINE and shared_storage_proven and not held_paused:
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        params: dict = {}
        if mode is MigrationMode.LIVE_COPY_STORAGE and copy_disks:
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(copy_disks)
        if xml:
            params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = xml
            if mode is MigrationMode.OFFLINE:  # libvirt 9 ignores PERSIST_XML offline: the definition is DEST_XML
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = xml
        stream = migration_stream_uri(destination_uri)
        if stream and mode is not MigrationMode.OFFLINE:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = stream
        finished = threading.Event()
        watcher = None
        if progress is not None and mode is not MigrationMode.OFFLINE:
            watcher = threading.Thread(target=_report_job, args=(domain, finished, progress), daemon=True,
                                       name=f"kvmops-migrate-{name}")
            watcher.start()
        count_mutating_call("migrate", (name, destination_uri))
        started = time.monotonic()
        try:
            domain.migrateToURI3(destination_uri, params, flags)
        except libvirt.libvirtError as exc:
            raise self._migration_error(exc, what, destination_uri) from exc
        finally:
            finished.set()
            if watcher is not None:
                watcher.join(timeout=5)
        return time.monotonic() - started

    def _migration_error(self, exc: libvirt.libvirtError, what: str, destination_uri: str) -> errors.HypervisorError:
        """Translate a failed migration; the error may come from the source libvirtd's own link to the destination."""
        code = exc.get_error_code()
        detail = (exc.get_error_message() or str(exc)).strip()
        if code == libvirt.VIR_ERR_MIGRATE_UNSAFE:
            return errors.OperationRefused(redaction.redact_text(
                f"{what}: libvirt refuses: {detail}. libvirt does not recognise the file system of the domain's disks "
                "as shared; declare the pool shared: true only where both hosts see the same files (kvmops proves "
                "it before migrating), or move the VM with storage copy"), code=code)
        if code == libvirt.VIR_ERR_OPERATION_TIMEOUT or (connection_broke(exc) and self.alive):
            # our own connection works: the source libvirtd could not reach the destination (or lost it)
            return errors.RetryableHypervisorError(redaction.redact_text(
                f"{what}: the source libvirtd could not reach or lost the destination ({detail}); the URI must work "
                "from the source host, and the destination's libvirtd must be running"), code=code)
        return translate(exc, what)

    def shares_pool_with(self, pool: str, other: Hypervisor) -> bool:
        """Return whether ``other`` sees the very files of pool ``pool`` (shared storage), proven, not assumed.

        A probe volume created here must appear, at the same path, in ``other``'s pool of
        the same name; it is removed afterwards.  A pool ``other`` does not have is not shared.
        """
        probe = _new_probe_name()
        self._delete_abandoned_probes(pool)
        self.create_volume(pool, storagexml.render_volume(probe, 0, image_format="raw"), probe)
        try:
            with translated(f"cannot read volume {pool}/{probe}"):
                here = self._connection.storagePoolLookupByName(pool).storageVolLookupByName(probe).path()
            try:
                other.refresh_pool(pool)
                with translated(f"cannot look up volume {pool}/{probe} on {other.uri}"):
                    there = other._connection.storagePoolLookupByName(pool).storageVolLookupByName(probe).path()
            except errors.ObjectNotFound:
                return False
            except errors.OperationRefused as exc:
                if exc.code == libvirt.VIR_ERR_OPERATION_INVALID:  # the pool is not active there
                    return False
                raise
            return there == here
        finally:
            self.delete_volume(pool, probe)
            with contextlib.suppress(errors.KvmopsError):
                other.refresh_pool(pool)

    def _delete_abandoned_probes(self, pool: str) -> None:
        """Delete the probe volumes in ``pool`` that a killed kvmops left (see :func:`_abandoned_probe`)."""
        with contextlib.suppress(libvirt.libvirtError):
            _delete_abandoned_probe_volumes(self._connection.storagePoolLookupByName(pool))

    @contextlib.contextmanager
    def _directory_pool(self, directory: str, *, build: bool = False) -> Iterator[libvirt.virStoragePool]:
        """Yield a transient dir pool (kvmops' own) over ``directory``: how libvirt shows a host's files.

        ``build`` creates the directory when it is missing.  A transient pool of kvmops'
        over the same directory that a killed process left active is destroyed first.
        """
        # imported here: xml.sax.saxutils loads urllib.request, http.client and ssl, which every
        # other command would pay for at start-up
        from xml.sax.saxutils import escape

        name = f"{_PROBE_POOL_PREFIX}{uuids.uuid4().hex[:12]}"
        xml = f"<pool type='dir'><name>{name}</name><target><path>{escape(directory)}</path></target></pool>"
        with _directory_pools_lock:
            lock = _directory_pool_locks.setdefault((self.uri, directory.rstrip("/")), threading.Lock())
        with lock:  # one at a time per directory here: libvirt refuses two pools over one directory
            self._destroy_abandoned_directory_pools(directory)
            flags = libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD if build else 0
            with translated(f"cannot look into directory {directory} on {self.uri}"):
                pool = self._connection.storagePoolCreateXML(xml, flags)
            try:
                yield pool
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    pool.destroy()

    def _destroy_abandoned_directory_pools(self, directory: str) -> None:
        """Destroy transient pools of kvmops' over ``directory`` (a kill left them; libvirt refuses a second one).

        Called under this process's lock of the directory, so none of them is this process's own.
        """
        with contextlib.suppress(libvirt.libvirtError):
            for pool in self._connection.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_TRANSIENT):
                if not pool.name().startswith(_PROBE_POOL_PREFIX):
                    continue
                path = (ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or "").rstrip("/")
                if path == directory.rstrip("/"):
                    pool.destroy()

    def nvram_path(self, name: str) -> str | None:
        """Return the file holding domain ``name``'s UEFI variables (it may not exist yet), or None without UEFI.

        The definition names it, or libvirt chooses it at the first start (libvirt 9 with
        ``<os firmware='efi'>``): the running domain's XML names it then; a shut-off
        domain's is where libvirt puts it, ``/var/lib/libvirt/qemu/nvram/NAME_VARS.fd``.
        """
        with translated(f"cannot read domain {name}"):
            domain = self._connection.lookupByName(name)
            roots = [ET.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))]
            if domain.isActive():
                roots.append(ET.fromstring(domain.XMLDesc(0)))
        for root in roots:
            path = (root.findtext("os/nvram") or "").strip()
            if path:
                return path
        uefi = any(r.find("os") is not None and (r.find("os").get("firmware") == "efi"
                                                  or r.find("os/loader[@type='pflash']") is not None) for r in roots)
        return posixpath.join(DEFAULT_NVRAM_DIRECTORY, f"{name}_VARS.fd") if uefi else None

    @_mutating
    def send_file(self, path: str, destination: Hypervisor) -> int:
        """Copy this host's file ``path`` (a small one: an NVRAM) to the same path on ``destination``; return its bytes.

        Through transient dir pools over its directory on both hosts (the directory is
        created there if missing); a file already there is never overwritten, and the copy
        is removed again if anything fails.
        """
        directory, base = posixpath.dirname(path) or "/", posixpath.basename(path)
        with self._directory_pool(directory) as here:
            with translated(f"cannot read {path} on {self.uri}"):
                volume = here.storageVolLookupByName(base)
                size = volume.info()[1]
            with destination._directory_pool(directory, build=True) as there:
                with contextlib.suppress(libvirt.libvirtError):
                    there.storageVolLookupByName(base)
                    raise errors.OwnershipError(
                        f"{path} already exists on {destination.uri}; kvmops will not overwrite it with the copy")
                with translated(f"cannot create {path} on {destination.uri}"):
                    target = there.createXML(storagexml.render_volume(base, size, image_format="raw"), 0)
                try:
                    with translated(f"cannot copy {path} to {destination.uri}"):
                        download = self._connection.newStream(0)
                        upload = destination._connection.newStream(0)
                        volume.download(download, 0, size, 0)
                        target.upload(upload, 0, size, 0)
                        data = b""
                        while True:
                            chunk = download.recv(_COPY_CHUNK)
                            if not isinstance(chunk, bytes) or not chunk:
                                break
                            data += chunk
                        download.finish()
                        view = memoryview(data)
                        while view:
                            view = view[upload.send(bytes(view)):]
                        upload.finish()
                except BaseException:
                    with contextlib.suppress(libvirt.libvirtError):
                        target.delete(0)
                    raise
        return len(data)

    @_mutating
    def delete_file(self, path: str) -> bool:
        """Delete this host's file ``path`` (an NVRAM kvmops copied or left); return False if it was not there."""
        directory, base = posixpath.dirname(path) or "/", posixpath.basename(path)
        try:
            with self._directory_pool(directory) as pool:
                with translated(f"cannot delete {path} on {self.uri}"):
                    try:
                        volume = pool.storageVolLookupByName(base)
                    except libvirt.libvirtError as exc:
                        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                            return False
                        raise
                    volume.delete(0)
        except errors.ObjectNotFound:
            return False  # no such directory
        return True

    def has_file(self, path: str) -> bool:
        """Return whether this host has a file (or block device) at ``path``."""
        directory = posixpath.dirname(path) or "/"
        try:
            with self._directory_pool(directory) as pool:
                with translated(f"cannot list directory {directory} on {self.uri}"):
                    return any(volume.path() == path for volume in pool.listAllVolumes(0))
        except (errors.ObjectNotFound, errors.OperationRefused):
            return False  # no such directory there

    def shares_file_with(self, path: str, other: Hypervisor) -> bool:
        """Return whether ``other`` sees the very file ``path`` of this host (shared storage), proven, not assumed.

        A probe file created next to it here must appear in the same directory on ``other``;
        it is removed afterwards.  A path ``other`` lacks is not shared.
        """
        if not other.has_file(path):
            return False
        directory = posixpath.dirname(path) or "/"
        probe = _new_probe_name()
        with self._directory_pool(directory) as pool:
            with contextlib.suppress(libvirt.libvirtError):
                _delete_abandoned_probe_volumes(pool)
            with translated(f"cannot create a probe file in {directory} on {self.uri}"):
                volume = pool.createXML(storagexml.render_volume(probe, 0, image_format="raw"), 0)
            try:
                return other.has_file(posixpath.join(directory, probe))
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    volume.delete(0)

    @_mutating
    def send_volume(self, pool: str, name: str, destination: Hypervisor) -> int:
        """Copy volume ``pool/name`` to a new volume of the same name, size and format in ``destination``'s pool ``pool``.

        Streams the file through kvmops (sparse: holes are sent as holes); the copy is
        deleted again if anything fails, and a volume already there is never overwritten.
        Return the bytes of data sent.
        """
        with translated(f"cannot read volume {pool}/{name}"):
            volume = self._connection.storagePoolLookupByName(pool).storageVolLookupByName(name)
            root = ET.fromstring(volume.XMLDesc(0))
            capacity = volume.info()[1]
        image_format = root.find("target/format")
        fmt = image_format.get("type", "raw") if image_format is not None else "raw"
        if destination.volume_exists(pool, name):
            raise errors.OwnershipError(
                f"volume {pool}/{name} already exists on {destination.uri}; kvmops will not overwrite it with the copy"
            )
        destination.create_volume(pool, storagexml.render_volume(name, capacity, image_format=fmt), name)
        sent = 0
        try:
            with translated(f"cannot copy volume {pool}/{name} to {destination.uri}"):
                target = destination._connection.storagePoolLookupByName(pool).storageVolLookupByName(name)
                download = self._connection.newStream(0)
                upload = destination._connection.newStream(0)
                volume.download(download, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
                target.upload(upload, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
                try:
                    while True:
                        data = download.recvFlags(_COPY_CHUNK, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
                        if data == -3:  # a hole: libvirt says how long, the destination gets one too
                            upload.sendHole(download.recvHole(0), 0)
                            continue
                        if not isinstance(data, bytes) or not data:
                            break
                        view = memoryview(data)
                        while view:
                            view = view[upload.send(bytes(view)):]
                        sent += len(data)
                except BaseException:
                    for stream in (download, upload):
                        with contextlib.suppress(libvirt.libvirtError):
                            stream.abort()
                    raise
                download.finish()
                upload.finish()
        except BaseException:
            with contextlib.suppress(errors.KvmopsError):
                destination.delete_volume(pool, name)
            raise
        return sent


_COPY_CHUNK = 4 * 1024 * 1024
_PROBE_POOL_PREFIX = "kvmops-file-probe-"
_SHARED_PROBE_PREFIX = "kvmops-shared-probe-"
_ABANDONED_PROBE_SECONDS = 60
_own_probes: set[str] = set()  # probe volumes this process made: never swept as abandoned
_directory_pools_lock = threading.Lock()
_directory_pool_locks: dict[tuple[str, str], threading.Lock] = {}
DEFAULT_NVRAM_DIRECTORY = "/var/lib/libvirt/qemu/nvram"  # qemu.conf's nvram_dir for qemu:///system
_JOB_POLL_SECONDS = 1.0
_PROBE_NAME = re.compile(re.escape(_SHARED_PROBE_PREFIX) + r"([0-9a-f]{12})-([0-9]+)-([0-9]+)-[0-9a-f]{8}")


def _new_probe_name() -> str:
    """Return the name of a new probe file, which says which process made it (see :func:`_abandoned_probe`)."""
    name = f"{_SHARED_PROBE_PREFIX}{_process_namespace()}-{os.getpid()}-{_process_started(os.getpid())}-" \
           f"{uuids.uuid4().hex[:8]}"
    with _directory_pools_lock:
        _own_probes.add(name)
    return name


def _abandoned_probe(name: str, modified: str, now: float) -> bool:
    """Return whether probe file ``name`` (last modified at ``modified``, epoch seconds as libvirt gives them) was
    left by a kvmops that was killed while it probed, so that deleting it can mislead no one.

    A probe lives for the milliseconds of one check; in a shared pool another host's
    kvmops may be probing right now, and deleting its probe would make it call the pool
    unshared (and copy a volume onto itself).  So a probe is abandoned when its name says
    it was made by a process of this machine's PID namespace, in this boot, and that process
    is gone: then the next pass removes it at once.  A probe of another machine (or of a
    kvmops older than these names) is abandoned only after a minute.  This process's own
    probes never are.
    """
    if not name.startswith(_SHARED_PROBE_PREFIX):
        return False
    with _directory_pools_lock:
        if name in _own_probes:
            return False
    creator = _PROBE_NAME.fullmatch(name)
    if creator is not None and creator.group(1) == _process_namespace():
        return _process_started(int(creator.group(2))) != creator.group(3)
    with contextlib.suppress(ValueError):
        return bool(modified) and now - float(modified) > _ABANDONED_PROBE_SECONDS
    return False


def _delete_abandoned_probe_volumes(pool: libvirt.virStoragePool) -> None:
    """Delete the probe files in ``pool`` (a pool, or a transient pool over a directory) that are abandoned."""
    for volume in pool.listAllVolumes(0):
        if not volume.name().startswith(_SHARED_PROBE_PREFIX):
            continue
        modified = ET.fromstring(volume.XMLDesc(0)).findtext("target/timestamps/mtime") or ""
        if _abandoned_probe(volume.name(), modified, time.time()):
            volume.delete(0)


@functools.cache
def _process_namespace() -> str:
    """Return 12 hex digits naming this boot of this machine and this process's PID namespace (where a PID means
    one process)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return uuids.uuid4().hex[:12]  # no /proc: no other process can be told dead, only aged
    return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:12]


def _process_started(pid: int) -> str:
    """Return the start time of process ``pid`` in clock ticks since boot (field 22 of its stat), or "" when there is
    no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _report_job(domain: libvirt.virDomain, finished: threading.Event, progress: Callable[[int, int | None], None]) -> None:
    """Call ``progress`` with the migration job's processed and total bytes until ``finished``."""
    while not finished.wait(_JOB_POLL_SECONDS):
        try:
            stats = domain.jobStats(0)
        except libvirt.libvirtError:
            continue  # between phases, or already gone from here
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE or not stats.get("data_total"):
            continue  # no job, or one that has not started moving data yet
        with contextlib.suppress(Exception):
            progress(int(stats.get("data_processed", 0)), int(stats["data_total"]) if "data_total" in stats else None)


def migration_stream_uri(destination_uri: str) -> str | None:
    """Return the address of the migration stream for ``destination_uri``, or None to let libvirt choose.

    A destination reached over a local socket runs on this very machine (a lab host),
    where its hostname resolves nowhere: its stream is at 127.0.0.1.  libvirt refuses a
    loopback ``migration_host`` in qemu.conf, so it must be said here.
    """
    parsed = urlparse(destination_uri)
    if parsed.scheme.startswith("qemu") and not parsed.hostname and "socket=" in (parsed.query or ""):
        return "tcp://127.0.0.1"
    return None


def _persistent_network_xml(network: libvirt.virNetwork) -> str:
    """Return a network's persistent XML (a running one's live XML keeps its old metadata)."""
    try:
        return network.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        return network.XMLDesc(0)  # drivers without the flag (the test driver) have one XML


DEFAULT_LEASE_SECONDS = 3600  # dnsmasq's, when the network names none
_LEASE_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600}


def _lease_durations(network_xml: str) -> dict[str, int]:
    """Return lease durations in seconds by MAC ('' for the ranges) from a network's XML; 0 means forever."""
    durations: dict[str, int] = {}
    root = ET.fromstring(network_xml)
    for element in root.iterfind("./ip/dhcp/range/lease"):
        durations[""] = int(element.get("expiry", "0")) * _LEASE_UNITS.get(element.get("unit", "minutes"), 60)
    for host in root.iterfind("./ip/dhcp/host"):
        lease = host.find("lease")
        if lease is not None and host.get("mac"):
            durations[host.get("mac", "").lower()] = int(lease.get("expiry", "0")) * _LEASE_UNITS.get(lease.get("unit", "minutes"), 60)
    return durations


def _process_start_time(arguments: tuple[str, ...], pids: list[str] | None = None) -> float | None:
    """Return the start time (epoch seconds) of the local process (among ``pids``, or all) whose command line holds ``arguments`` in a row."""
    wanted = [a.encode() for a in arguments]
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime "))
        if pids is None:
            pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except (OSError, StopIteration, ValueError):
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                words = handle.read().split(b"\0")
            if not any(words[i:i + len(wanted)] == wanted for i in range(len(words))):
                continue
            ticks = int(_process_started(int(pid)))  # ("" when it is gone: a ValueError)
            return boot + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return None


def _is_local(uri: str) -> bool:
    return not urlparse(uri).hostname


def trash_unavailable(uri: str) -> str:
    """Return why kvmops cannot keep deleted volumes in a trash on the host of ``uri`` ("" when it can).

    The trash is a directory in each pool's directory, moved into with ``rename``: only
    where libvirt's files are this machine's files.
    """
    if uri.startswith("test:"):
        return "the test driver keeps no files, so it has no trash"
    if not _is_local(uri):
        return (f"libvirt runs on another machine ({redaction.redact_url(uri)}) whose files kvmops cannot move, so it "
                "has no trash there")
    return ""


def local_kvm_problem() -> str | None:
    """Return why this machine's KVM cannot run standard guests under libvirt, or None.

    Two cases are known: a paravirtual ``kvm_pvm`` module, which starts a domain but
    cannot run a standard guest kernel, and a ``/dev/kvm`` that QEMU's unprivileged user
    cannot open.
    """
    if os.path.isdir("/sys/module/kvm_pvm"):
        return "/dev/kvm is provided by kvm_pvm (paravirtual KVM), which cannot run standard guest kernels"
    try:
        mode = os.stat("/dev/kvm").st_mode
    except OSError:
        return "/dev/kvm does not exist (no KVM on this host)"
    if not mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH):
        return "/dev/kvm is only accessible to root, so QEMU (user libvirt-qemu) cannot use it: chgrp kvm /dev/kvm && chmod 660 /dev/kvm"
    return None
