"""Call every Host under a deadline: a Host that does not answer in time is out of reach, not a wait.

libvirt calls cannot be cancelled. A call to a libvirtd that is stopped (SIGSTOP), hung,
or behind a network partition returns only when the connection's keepalive gives up
(:class:`~reconciler.adapters.hypervisor.KeepAlive`: a one-shot command's connections
give up after about ``--host-timeout`` of silence, the controller's after 20 s), and a
libvirtd that is silent before it has answered the connection's handshake holds ``open``
until it runs again. So :func:`call_each` runs each Host's call on a daemon thread of its
own and waits for it only until the deadline; past it the Host counts as unreachable
(:class:`~reconciler.errors.HostTimedOut`) and the thread is abandoned. An abandoned
thread ends when libvirt does, or never: it is a daemon, so it never holds up the exit of
the process, and what it returns late is handed to ``late`` (e.g. to close the connection
it opened) on that thread.

At most one call per Host is outstanding in a process: while one is, a new call to that
Host fails at once (a HostTimedOut saying for how long it has been waiting), so passes
that come back every few seconds never pile up threads on a stuck Host.

:func:`look_timeout` is how long a look at a Host whose connection is up may take: a
silent Host is left to its keepalive, so a busy one is not taken for a dead one.

:func:`call_within` is the same for one call that is not a Host's look: an apply's step,
which may take long (a copy, a migration) and which keepalives cannot bound when libvirtd
answers them but the call never returns (a hung storage mount, a stuck QEMU monitor).
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from reconciler import defaults, errors

T = TypeVar("T")

DEFAULT_HOST_TIMEOUT = defaults.DEFAULT_HOST_TIMEOUT
LOOK_TIMEOUT_FLOOR = 60.0


def look_timeout(host_timeout: float) -> float:
    """Return how long a look at a connected Host may take (its observation, its VMs' status) before it is unreachable.

    Longer than ``host_timeout`` on purpose. A Host that falls silent is caught by its
    connection's keepalive after about ``host_timeout`` (the look then fails at once); one
    that keeps answering is alive, only busy, and a busy host's look is slow: with 50
    guests being started and destroyed, 4 a second, a whole look took 8 s (median of 12)
    and up to 10.2 s on this 2-core machine, so the 10 s that fit a silent host made a
    busy one unreachable one pass in six, its connection dropped and its events lost with
    it. This bound is only for a libvirtd that answers keepalives but whose call never
    returns (a hung storage mount): a minute, or six times ``host_timeout``.
    """
    return max(LOOK_TIMEOUT_FLOOR, 6 * host_timeout)

_outstanding_lock = threading.Lock()
_outstanding: dict[str, tuple[float, str]] = {}  # Host -> (when its call began, what it does)


def outstanding() -> dict[str, float]:
    """Return the Hosts whose call has not returned yet, with how many seconds it has been waiting."""
    current = time.monotonic()
    with _outstanding_lock:
        return {host: current - began for host, (began, _what) in _outstanding.items()}


def timed_out(host: str, timeout: float, what: str) -> errors.HostTimedOut:
    """Return the error of Host ``host``, which did not answer within ``timeout`` seconds while ``what``."""
    return errors.HostTimedOut(
        f"host {host} did not answer within {timeout:g} s while {what} (its libvirtd may be stopped or hung, or the "
        "network to it cut): treated as unreachable until it answers, so nothing is pruned or placed because of it; "
        "check the host (virsh -c ITS-URI list), or give it more time with --host-timeout (hostTimeout: in the "
        "configuration file) if it is only slow"
    )


def _still_waiting(host: str, waited: float, what: str) -> errors.HostTimedOut:
    return errors.HostTimedOut(
        f"host {host} still has not answered a call begun {waited:.0f} s ago ({what}): treated as unreachable, and no "
        "new call is made until that one returns; check the host (virsh -c ITS-URI list)"
    )


class _Call(Generic[T]):
    """One Host's call on its daemon thread: its outcome, or that nobody waits for it any more."""

    def __init__(self, host: str, function: Callable[[], T], what: str, finished: queue.Queue,
                 late: Callable[[T], None] | None) -> None:
        self.host, self.function, self.what = host, function, what
        self.finished, self.late = finished, late
        self.lock = threading.Lock()
        self.done = False
        self.abandoned = False
        self.value: T | None = None
        self.error: BaseException | None = None
        self.began = 0.0

    def start(self) -> None:
        self.began = time.monotonic()
        threading.Thread(target=self._run, name=f"kvmops-call-{self.host}", daemon=True).start()

    def _run(self) -> None:
        value: T | None = None
        error: BaseException | None = None
        try:
            value = self.function()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who decides
            error = exc
        with self.lock:
            self.done = True
            abandoned = self.abandoned
            if not abandoned:
                self.value, self.error = value, error
        with _outstanding_lock:
            _outstanding.pop(self.host, None)
        if not abandoned:
            self.finished.put(self.host)
        elif self.late is not None and error is None:
            try:
                self.late(value)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - nobody waits for this thread any more: nothing to tell
                pass

    def abandon(self) -> bool:
        """Stop waiting for this call; return False when it finished after all (its outcome stands)."""
        with self.lock:
            if self.done:
                return False
            self.abandoned = True
            return True


def call_each(calls: Mapping[str, Callable[[], T]], *, timeout: float, what: str,
              workers: int = defaults.DEFAULT_HOST_WORKERS,
              late: Callable[[T], None] | None = None) -> dict[str, T | errors.KvmopsError]:
    """Call each Host's function (``calls``: Host -> function), ``workers`` at a time; return each one's answer.

    A Host's answer is what its function returned, the :class:`~reconciler.errors.KvmopsError`
    it raised, or a :class:`~reconciler.errors.HostTimedOut` when it did not return within
    ``timeout`` seconds of its start (``what`` says what it was doing) or an earlier call to
    that Host is still outstanding. Any other exception is raised here once every call is
    answered or abandoned. An abandoned call's late result is handed to ``late``.
    """
    finished: queue.Queue = queue.Queue()
    pending = sorted(calls)
    running: dict[str, _Call] = {}
    answers: dict[str, object] = {}
    crashed: BaseException | None = None
    while pending or running:
        while pending and len(running) < max(1, workers):
            host = pending.pop(0)
            with _outstanding_lock:
                earlier = _outstanding.get(host)
                if earlier is None:
                    _outstanding[host] = (time.monotonic(), what)
            if earlier is not None:
                answers[host] = _still_waiting(host, time.monotonic() - earlier[0], earlier[1])
                continue
            call = _Call(host, calls[host], what, finished, late)
            running[host] = call
            call.start()
        if not running:
            continue
        first_deadline = min(call.began for call in running.values()) + timeout
        try:
            ended = [finished.get(timeout=max(0.0, first_deadline - time.monotonic()))]
        except queue.Empty:
            ended = []
        while True:
            try:
                ended.append(finished.get_nowait())
            except queue.Empty:
                break
        current = time.monotonic()
        for host in [h for h, call in running.items() if current >= call.began + timeout and h not in ended]:
            if running[host].abandon():
                del running[host]
                answers[host] = timed_out(host, timeout, what)
            # else: it finished just now; its name is on its way through ``finished``
        for host in ended:
            call = running.pop(host)
            if call.error is None:
                answers[host] = call.value
            elif isinstance(call.error, errors.KvmopsError):
                answers[host] = call.error
            else:
                crashed = crashed or call.error
    if crashed is not None:
        raise crashed
    return {host: answers[host] for host in sorted(answers)}  # type: ignore[misc]


def call_within(function: Callable[[], T], timeout: float | None, expired: Callable[[], errors.KvmopsError],
                name: str = "kvmops-step") -> T:
    """Return ``function()``, or raise what it raised; raise ``expired()`` once ``timeout`` seconds have passed.

    The call runs on a daemon thread (named ``name``), in a copy of the caller's context
    (its log lines keep their bindings); past the deadline it is abandoned there, to end
    whenever libvirt lets it, without holding up the exit of the process. None: no
    deadline, and the call runs on the caller's thread.
    """
    if timeout is None:
        return function()
    finished = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            outcome["error"] = exc
        finally:
            finished.set()

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), name=name, daemon=True).start()
    if not finished.wait(timeout):
        raise expired()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def close_within(close: Callable[[], None], timeout: float) -> None:
    """Run ``close`` (a connection's) on a daemon thread, waiting for it at most ``timeout`` seconds.

    Closing a connection to a stuck libvirtd waits for libvirtd's answer: the caller goes on
    without it, and the thread ends whenever libvirt lets it.
    """
    def run() -> None:
        try:
            close()
        except Exception:  # noqa: BLE001 - a connection that cannot be closed is gone either way
            pass

    thread = threading.Thread(target=run, name="kvmops-close", daemon=True)
    thread.start()
    thread.join(timeout)
