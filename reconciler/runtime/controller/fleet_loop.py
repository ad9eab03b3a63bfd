"""``kvmops run`` for a fleet: keep every Host converged, or (``--host NAME``) be one Host's agent.

Chosen by :func:`reconciler.cli.cmd_run` when the manifests declare ``kind: Host`` at
start; without any Host the single-host :class:`~.loop.Controller` runs, unchanged.

Each Host has its own libvirt connection (:class:`HostLink`), its own event stream
(lifecycle events and the connection's close wake a pass) and its own reconnection with
exponential backoff: a Host that is down is retried on its own clock while the others
go on converging. Every pass is a whole fleet pass through
:mod:`reconciler.runtime.fleet_reconcile` (observe every connected Host, plan the fleet,
apply), woken by a manifest change (after a quiet period), a libvirt event, a
reconnection, or the periodic resync.

As an agent (``--host NAME``) the controller makes the same decisions (it observes
every Host it can reach and plans the whole fleet, so placement sees where every VM is)
but changes only its own Host, and runs only the migrations that leave it: the agent of
the source moves a VM, never the destination's.

``/status`` groups the VMs per Host, with each Host's connection state; ``/healthz`` is
200 while the last pass converged its hosts.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler import errors, logconfig
from reconciler.adapters import hypervisor as hv
from reconciler.adapters import systemd, watcher
from reconciler.adapters.statusserver import StatusServer
from reconciler.core import redaction
from reconciler.runtime import fleet_reconcile, hostlock, metrics, reconcile
from reconciler.runtime.controller.debounce import Debouncer
from reconciler.runtime.controller.settings import ControllerSettings
from reconciler.runtime.controller.status import now
from reconciler.runtime.controller.timers import next_resync

log = logconfig.get_logger("kvmops.fleet_controller")

FIRST_RECONNECT_DELAY = 0.5


@dataclass
class HostLink:
    """One Host's connection, its reconnection clock and why it is down."""

    name: str
    uri: str
    hypervisor: hv.Hypervisor | None = None
    error: str = "not connected yet"
    next_attempt: float = 0.0
    delay: float = FIRST_RECONNECT_DELAY
    closed: bool = False  # the connection reported its close: reconnect at the next turn

    @property
    def connected(self) -> bool:
        return self.hypervisor is not None and not self.closed


class FleetController:
    """Converge every Host of the fleet at ``settings.path`` (or only ``host``'s share) until stopped."""

    def __init__(self, settings: ControllerSettings, *, host: str | None = None,
                 notifier: systemd.Notifier | None = None) -> None:
        self.settings = settings
        self.agent = host
        self.metrics = metrics.Metrics()
        self._notifier = notifier or systemd.Notifier()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._wakeup = threading.Event()
        self._links: dict[str, HostLink] = {}
        self._links_lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._status: dict = {"fleet": settings.planner.scope, "agent": host, "passes": 0, "hosts": {}}
        self._healthy = False
        self._health_reason = "no pass yet"
        self._debouncer = Debouncer(lambda: self._wake("manifests"))
        self._watcher: watcher.ManifestWatcher | None = None
        self._server: StatusServer | None = None
        self.passes = 0

    # -- control from outside ---------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the steps in progress and return from :meth:`run`."""
        self._stop.set()
        self._cancel.set()
        self._wakeup.set()

    def request_reload(self) -> None:
        """Plan again now (SIGHUP); the manifests are re-read by every pass anyway."""
        self._wake("reload")

    @property
    def listen_address(self) -> str | None:
        """Return the address the HTTP listener is bound to, if any."""
        return self._server.address if self._server is not None else None

    def status_document(self) -> dict:
        """Return what ``/status`` serves: the fleet, per Host its connection and VMs."""
        with self._status_lock:
            return redaction.redact_value(dict(self._status))

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Run until :meth:`request_stop`; return the exit status (0 after a clean stop)."""
        hv.start_event_loop()
        if self.settings.listen:
            self._server = StatusServer(self.settings.listen, {
                "/healthz": lambda: ((200 if self._healthy else 503), "text/plain; charset=utf-8",
                                     redaction.redact_text(self._health_reason) + "\n"),
                "/status": lambda: (200, "application/json", json.dumps(self.status_document(), indent=2) + "\n"),
                "/metrics": lambda: (200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()),
            })
            self._server.start()
        log.info("fleet_controller_started", manifests=self.settings.path, agent=self.agent,
                 resync_interval=self.settings.resync_interval)
        self._notifier.ready("converging the fleet")
        self._watcher = watcher.ManifestWatcher(self.settings.path, lambda _path: self._debouncer.changed(
            self.settings.quiet_period, self.settings.max_quiet_wait))
        self._watcher.start()
        resync_at = next_resync(self.settings.resync_interval)
        self._wakeup.set()
        try:
            while not self._stop.is_set():
                self._reconnect_due()
                timeout = max(0.0, min(resync_at - time.monotonic(), self._next_reconnect_in(), 1.0))
                if self._notifier.watchdog_interval:
                    self._notifier.watchdog()
                    timeout = min(timeout, self._notifier.watchdog_interval)
                if not self._wakeup.wait(timeout):
                    if time.monotonic() < resync_at:
                        continue
                if self._stop.is_set():
                    break
                if time.monotonic() >= resync_at:
                    resync_at = next_resync(self.settings.resync_interval)
                self._wakeup.clear()
                try:
                    self._pass()
                except Exception as exc:  # nothing a pass meets may end the controller
                    log.error("fleet_pass_failed", error=f"{type(exc).__name__}: {exc}")
                    self._healthy, self._health_reason = False, f"pass failed: {exc}"
                    self._stop.wait(1.0)
        finally:
            self._shutdown()
        return 0

    def _wake(self, source: str) -> None:
        self.metrics.inc("kvmops_wakeups_total", source=source)
        self._wakeup.set()

    # -- connections, one per Host -------------------------------------------------------

    def _sync_links(self, desired) -> None:
        """Follow the Hosts the manifests declare: new ones are connected, removed ones closed."""
        with self._links_lock:
            for name, spec in desired.hosts.items():
                link = self._links.get(name)
                if link is None or link.uri != spec.uri:
                    if link is not None and link.hypervisor is not None:
                        link.hypervisor.close()
                    self._links[name] = HostLink(name, spec.uri)
            for name in [n for n in self._links if n not in desired.hosts]:
                link = self._links.pop(name)
                if link.hypervisor is not None:
                    link.hypervisor.close()
        self._reconnect_due()

    def _next_reconnect_in(self) -> float:
        with self._links_lock:
            waiting = [link.next_attempt for link in self._links.values() if not link.connected]
        return max(0.0, min(waiting) - time.monotonic()) if waiting else 60.0

    def _reconnect_due(self) -> None:
        with self._links_lock:
            due = [link for link in self._links.values() if not link.connected and time.monotonic() >= link.next_attempt]
        if len(due) == 1:
            self._connect(due[0])
        elif due:  # a host that hangs on connect (ssh) must not hold up the others
            with ThreadPoolExecutor(max_workers=min(len(due), fleet_reconcile.DEFAULT_HOST_WORKERS),
                                    thread_name_prefix="kvmops-connect") as pool:
                list(pool.map(self._connect, due))

    def _connect(self, link: HostLink) -> None:
        try:
            hypervisor = hv.Hypervisor.open(link.uri)
            hypervisor.keep_alive()
            hypervisor.watch_close(lambda reason, link=link: self._on_closed(link, reason))
            hypervisor.watch_lifecycle(lambda vm, _event, link=link: self._wake("libvirt"))
        except errors.KvmopsError as exc:
            if link.error != str(exc):
                log.error("host_unreachable", host=link.name, error=str(exc), retry_in=link.delay)
            link.error = str(exc)
            link.next_attempt = time.monotonic() + link.delay
            link.delay = min(link.delay * 2, self.settings.reconnect_max_delay)
            return
        if link.hypervisor is not None:
            link.hypervisor.close()
        was_down = link.error != "not connected yet"
        link.hypervisor, link.closed, link.error, link.delay = hypervisor, False, "", FIRST_RECONNECT_DELAY
        log.info("host_connected", host=link.name, reconnected=was_down)
        self._wake("reconnect")

    def _on_closed(self, link: HostLink, reason: str) -> None:
        link.closed = True
        link.error = f"connection closed: {reason}"
        link.next_attempt = time.monotonic() + link.delay
        log.error("host_disconnected", host=link.name, reason=reason)
        self._wake("disconnect")

    def _connections(self) -> fleet_reconcile.FleetConnections:
        with self._links_lock:
            return fleet_reconcile.FleetConnections(
                hypervisors={n: l.hypervisor for n, l in self._links.items() if l.connected and l.hypervisor},
                unreachable={n: l.error for n, l in self._links.items() if not l.connected},
                uris={n: l.uri for n, l in self._links.items()},
            )

    # -- passes -----------------------------------------------------------------------

    def _pass(self) -> None:
        started = time.monotonic()
        desired = reconcile.load_desired(self.settings.path)
        if not desired.hosts:
            self._healthy, self._health_reason = False, "the manifests no longer declare any Host; restart kvmops run"
            log.error("fleet_without_hosts", manifests=self.settings.path)
            return
        if self.agent is not None and self.agent not in desired.hosts:
            self._healthy, self._health_reason = False, f"no Host named {self.agent} in the manifests"
            log.error("agent_host_missing", host=self.agent)
            return
        self._sync_links(desired)
        connections = self._connections()
        planned = fleet_reconcile.make_plan(desired, connections, settings=self.settings.planner, only_host=self.agent)
        result = None
        if planned.plan.has_changes:
            mine = {h.host for h in planned.plan.hosts if h.plan is not None and h.host in connections.hypervisors}
            with self._locks(connections, mine):
                result = fleet_reconcile.apply(planned, connections, workers=self.settings.workers,
                                               cancel=self._cancel, migrations_from=self.agent)
        self.passes += 1
        self._record(planned, result, started)

    @contextlib.contextmanager
    def _locks(self, connections: fleet_reconcile.FleetConnections, hosts: set[str]):
        with contextlib.ExitStack() as stack:
            for uri in sorted(connections.hypervisors[h].uri for h in hosts):
                if not uri.startswith("test:"):
                    stack.enter_context(hostlock.hold(self.settings.state_dir, uri, wait=self.settings.termination_grace))
            yield

    def _record(self, planned: fleet_reconcile.FleetPlanResult, result, started: float) -> None:
        after = result.after if result is not None and result.after is not None else planned.plan
        observed = planned.observed
        hosts = {}
        for host in after.hosts:
            actual = observed.get(host.host)
            domains = getattr(actual, "domains", {})
            vms = []
            for vm in host.vms:
                domain = domains.get(vm)
                pending = [] if host.plan is None else [
                    a.value for r in host.plan.changes if r.name == vm for a in r.actions]
                vms.append({"name": vm, "state": domain.power.value if domain is not None else
                            ("Unknown" if host.unreachable else "absent"), "pending": pending})
            hosts[host.host] = {"uri": host.uri, "connected": host.unreachable is None, "error": host.unreachable,
                                "schedulable": host.schedulable, "vms": vms,
                                "problems": [str(p) for p in (host.plan.problems if host.plan else ())]}
        converged = (result.converged if result is not None else
                     not planned.plan.has_changes and not planned.plan.unreachable and not planned.plan.problems)
        with self._status_lock:
            self._status = {
                "fleet": after.fleet, "agent": self.agent, "passes": self.passes, "last_pass": now(),
                "last_pass_seconds": round(time.monotonic() - started, 3), "converged": converged,
                "summary": after.summary(), "problems": [str(p) for p in after.problems], "hosts": hosts,
                "migrations": [m.name for m in after.migrations],
            }
        self._healthy = converged
        self._health_reason = "converged" if converged else after.summary()
        log.info("fleet_pass_done", converged=converged, summary=after.summary(),
                 duration_ms=round((time.monotonic() - started) * 1000))

    def _shutdown(self) -> None:
        self._debouncer.cancel()
        if self._watcher is not None:
            self._watcher.stop()
        if self._server is not None:
            self._server.stop()
        with self._links_lock:
            for link in self._links.values():
                if link.hypervisor is not None:
                    link.hypervisor.close()
            self._links.clear()
        log.info("fleet_controller_stopped")


def is_fleet(path: str) -> bool:
    """Return whether the manifests at ``path`` declare Hosts (so ``kvmops run`` drives a fleet)."""
    with contextlib.suppress(errors.KvmopsError):
        return bool(reconcile.load_desired(path).hosts)
    return False
