"""``kvmops run`` for a fleet: keep every Host converged, or (``--host NAME``) be one Host's agent.

:class:`~.mode_switch.SwitchingController` runs it while the manifests declare
``kind: Host``, and the single-host :class:`~.loop.Controller` otherwise.

Decisions are central, work is per host. Every pass reads the manifests, observes every
connected Host side by side and plans the whole fleet (placement needs every host's VMs),
then hands each changed resource to the worker pool of the host it runs on. Work is keyed
``HOST:Kind/name`` in one :class:`~reconciler.runtime.workqueue.WorkQueue`, so each host's
resources have their own keys, backoff and in-flight marks, and each host its own pool of
``workers`` threads: a guest taking a minute to shut down, or a host whose calls hang,
holds up neither the next pass nor any other host. The order of
:func:`reconciler.runtime.fleet_reconcile.apply` holds across passes: a migration waits
for its destination's pools, networks and images (``requires``), and a removal waits for
every migration in flight. While a VM migrates, its keys on both hosts are in flight, so
no other work starts for it on either side.

Each Host has its own connection (:class:`HostLink`): lifecycle events wake a pass for
that VM; a connection that breaks (or a host whose observation fails) is reconnected on
a thread of its own with exponential backoff (0.5 s, 1, 2 ... up to
``reconnect_max_delay``), and once back a full pass resyncs the fleet. Meanwhile the host
is unreachable in every plan: its VMs are Unknown, nothing is pruned or placed because of
it, and the other hosts go on converging.

Wake-ups, signals, the git follower, ``/healthz`` and the graceful stop are those of the
single-host controller (docs/controller.md). As an agent the controller makes the same
decisions but changes only its own Host, and runs only the migrations that leave it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from reconciler import errors, logconfig
from reconciler.adapters import hypervisor as hv
from reconciler.adapters import systemd, watcher
from reconciler.adapters.statusserver import StatusServer
from reconciler.core import actual as actual_state
from reconciler.core import fleet, model, planner, redaction
from reconciler.core import plan as plans
from reconciler.runtime import deadlines, execute, fleet_reconcile, gitsource, metrics, observe, reconcile, workqueue
from reconciler.runtime.controller.debounce import Debouncer
from reconciler.runtime.controller.git_follower import GitFollower
from reconciler.runtime.controller.hostlock_keeper import HostLockKeeper
from reconciler.runtime.controller.lifecycle import TARGETED, ControllerLifecycle, not_ready
from reconciler.runtime.controller.settings import ControllerSettings
from reconciler.runtime.controller.status import InternalErrors, StatusRoutes, now
from reconciler.runtime.controller.subjects import SubjectLedger
from reconciler.runtime.controller.timers import LoopTimers, next_resync
from reconciler.runtime.controller.transitions import TransitionWatch, in_transition

log = logconfig.get_logger("kvmops.fleet_controller")

FIRST_RECONNECT_DELAY = 0.5
FULL = workqueue.EVERYTHING


def host_key(host: str, key: str) -> str:
    """Return the work-queue key of resource ``key`` (``Kind/name``) on ``host``; a key naming its host is kept."""
    return key if ":" in key.split("/", 1)[0] else f"{host}:{key}"


def subject_of(key: str) -> str:
    """Return what a ``HOST:Kind/name`` key works on: a VM whatever its host (it may move), else the key itself."""
    resource = key.split(":", 1)[1] if ":" in key.split("/", 1)[0] else key
    return resource if resource.startswith("VirtualMachine/") else key


@dataclass
class HostLink:
    """One Host's connection, its reconnection clock, why it is down, its worker pool and host lock."""

    name: str
    uri: str
    executor: ThreadPoolExecutor
    keeper: HostLockKeeper
    hypervisor: hv.Hypervisor | None = None
    error: str = "not connected yet"
    next_attempt: float = 0.0
    delay: float = FIRST_RECONNECT_DELAY
    closed: bool = False  # the connection broke: reconnect when next_attempt comes
    connecting: bool = False
    connect_began: float = 0.0  # when the attempt in progress (connecting) began
    tried: threading.Event = field(default_factory=threading.Event)  # set after the first attempt
    retired: bool = False  # the Host left the manifests, or its URI changed

    @property
    def connected(self) -> bool:
        return self.hypervisor is not None and not self.closed


class FleetController(ControllerLifecycle, InternalErrors, StatusRoutes):
    """Converge every Host of the fleet (or only ``host``'s share) until stopped, or until the Hosts are gone."""

    _log = log

    def __init__(self, settings: ControllerSettings, *, host: str | None = None,
                 notifier: systemd.Notifier | None = None,
                 reload: Callable[[], ControllerSettings] | None = None,
                 source: gitsource.GitSource | None = None) -> None:
        self.settings = settings
        self.agent = host
        self.metrics = metrics.Metrics()
        self._notifier = notifier or systemd.Notifier()
        self._reload_settings = reload
        self._queue = workqueue.WorkQueue()
        self._reasons: dict[str, set[str]] = {}
        self._reasons_lock = threading.Lock()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._reload_requested = threading.Event()
        self._links: dict[str, HostLink] = {}
        self._links_lock = threading.Lock()
        self._futures: set[Future] = set()
        self._running: dict[str, Future] = {}  # executions in flight, by key
        self._migrations: dict[str, Future] = {}  # migrations in flight, by key on their source
        # A VM is one subject whatever host its key names (a pool or network is one per host): one
        # execution at a time per subject, and none on a plan from a look older than its last one's end.
        self._subjects = SubjectLedger(self._queue, self._wake, subject_of=subject_of)
        # VMs being created: name -> (host, when that work ended, or None while it runs). Placement counts
        # them on that host until a look at the hosts taken after it ended.
        self._arriving_lock = threading.Lock()
        self._arriving: dict[str, tuple[str, float | None]] = {}
        # The last look at each Host: its connection then, the observation, and when that look began.
        self._observations: dict[str, tuple[hv.Hypervisor, model.Observation, float]] = {}
        self._status_lock = threading.Lock()
        self._internal_errors: dict[str, dict] = {}
        self._errors: dict[str, str] = {}  # HOST:VirtualMachine/name -> last failed execution's error
        self._status: dict = {"fleet": settings.planner.scope, "agent": host, "passes": 0, "hosts": {}}
        self._last_pass: dict = {}
        self._health: tuple[bool, str] = (False, "first pass not finished")
        self._ready = False
        self._interesting: frozenset[str] | None = None
        self._transitions = TransitionWatch()  # HOST:VirtualMachine/name last seen between two power states
        self._debouncer = Debouncer(lambda: self._wake(FULL, "manifests"))
        self._watcher: watcher.ManifestWatcher | None = None
        self._server: StatusServer | None = None
        self._directory_revision: str | None = None
        self._loop_backoff = 0.0
        if source is None and settings.git:
            source = gitsource.GitSource(settings.git, settings.state_dir)
        self._source = source
        self._git_follower = GitFollower(
            source, self._stop, wake=lambda: self._wake(FULL, "git"), survive=self._survive,
            recovered=self._recovered, metrics=self.metrics,
        ) if source is not None else None
        self.switch_to: str | None = None  # "single" once the manifests declare no Host: run() returns to switch
        self.passes = 0

    def status_document(self) -> dict:
        """Return what ``/status`` serves: the fleet, per Host its connection and VMs."""
        with self._status_lock:
            document = dict(self._status)
            document["last_pass"] = dict(self._last_pass)
            document["internal_errors"] = {where: dict(entry) for where, entry in self._internal_errors.items()}
        document["git"] = self._source.status() if self._source is not None else None
        document["manifests"] = self.settings.path or None
        return redaction.redact_value(document)

    def health(self) -> tuple[bool, str]:
        """Return (healthy, why): the first reason, in the order of the single-host controller's, that applies."""
        source = self._source
        if source is not None and source.last_error and source.applied is None:
            return False, f"git: {source.last_error}"
        with self._status_lock:
            internal = sorted(self._internal_errors.items())
        if internal:
            where, entry = internal[0]
            return False, f"{where}: {entry['error']} ({entry['count']} time(s) since {entry['since']}; retrying)"
        healthy, why = self._health
        if healthy:
            with self._status_lock:
                failing = sorted(self._errors)
            if failing:
                return False, f"failing: {', '.join(failing)}"
            if source is not None and source.rejected is not None:
                return False, (f"git commit {source.rejected.commit[:12]} does not validate; "
                               f"{source.applied or 'nothing'} stays applied")
        return healthy, why

    # -- the loop -----------------------------------------------------------------------

    def _log_start(self) -> None:
        log.info("fleet_controller_started", manifests=self.settings.path or None, agent=self.agent,
                 resync_interval=self.settings.resync_interval,
                 git=self.settings.git.shown() if self.settings.git else None)

    def _watch_directory(self) -> None:
        self._watcher = watcher.ManifestWatcher(self.settings.path, lambda _path: self._debouncer.changed(
            self.settings.quiet_period, self.settings.max_quiet_wait))
        self._watcher.start()

    def _turn(self, timers: LoopTimers) -> None:
        """Run one turn: watchdog, reload, reconnections due, then one pass over the ready keys."""
        current = time.monotonic()
        self._tend(timers, current)
        self._reconnect_due()
        for key in self._transitions.take_due():
            self._wake(key, "transition")
        timeout = max(0.0, min(timers.next_resync - current, self._next_reconnect_in(),
                               self._transitions.next_in(), 1.0))
        if self._notifier.watchdog_interval:
            timeout = min(timeout, max(0.0, timers.next_watchdog - current))
        keys = self._queue.take(timeout=timeout)
        if self._stop.is_set():
            for key in keys:
                self._queue.done(key)
            return
        if self._reload_requested.is_set():  # a SIGHUP's pass must see the new settings
            self._reload_requested.clear()
            self._reload()
        if time.monotonic() >= timers.next_resync:
            timers.next_resync = next_resync(self.settings.resync_interval)
            self._wake(FULL, "resync")
        if keys:
            self._pass(keys)

    # -- connections, one per Host -------------------------------------------------------

    def _sync_links(self, desired: model.DesiredState) -> None:
        """Follow the Hosts the manifests declare: new ones are connected, removed ones closed.

        A pass waits up to ``host_timeout`` for the first answer of Hosts never tried, so
        that the first plan sees the fleet rather than a fleet of unreachable hosts.
        """
        fresh: list[HostLink] = []
        with self._links_lock:
            for name, spec in desired.hosts.items():
                link = self._links.get(name)
                if link is None or link.uri != spec.uri:
                    if link is not None:
                        self._retire(link)
                    link = HostLink(name, spec.uri, ThreadPoolExecutor(
                        max_workers=self.settings.workers, thread_name_prefix=f"kvmops-{name}"),
                        HostLockKeeper(self.settings.state_dir, spec.uri, self._cancel))
                    self._links[name] = link
                    fresh.append(link)
            for name in [n for n in self._links if n not in desired.hosts and desired.hosts_complete]:
                self._retire(self._links.pop(name))  # (a Host whose manifest broke keeps its connection meanwhile)
        self._reconnect_due()
        deadline = time.monotonic() + self.settings.host_timeout
        for link in fresh:
            link.tried.wait(max(0.0, deadline - time.monotonic()))

    def _retire(self, link: HostLink) -> None:
        link.retired = True
        link.executor.shutdown(wait=False)  # its executions in flight finish; nothing new starts there
        if link.hypervisor is not None:
            # closing waits for the Host's answer: one that stopped answering must not hold up a stop
            deadlines.close_within(link.hypervisor.close, self.settings.host_timeout)

    def _next_reconnect_in(self) -> float:
        with self._links_lock:
            waiting = [link.next_attempt for link in self._links.values() if not link.connected and not link.connecting]
        return max(0.0, min(waiting) - time.monotonic()) if waiting else 60.0

    def _reconnect_due(self) -> None:
        """Start a connection attempt, on a thread of its own, for every Host down whose backoff has passed."""
        with self._links_lock:
            due = [link for link in self._links.values()
                   if not link.connected and not link.connecting and time.monotonic() >= link.next_attempt]
            for link in due:
                link.connecting = True
                link.connect_began = time.monotonic()
        for link in due:
            threading.Thread(target=self._connect, args=(link,), name=f"kvmops-connect-{link.name}", daemon=True).start()

    def _connect(self, link: HostLink) -> None:
        """Open ``link``'s connection (a host that hangs holds up only this thread); wake a full pass once it is up."""
        try:
            keepalive = hv.KeepAlive.within(self.settings.host_timeout)  # silent for that long: unreachable
            hypervisor = hv.Hypervisor.open(link.uri, keepalive=keepalive)
            hypervisor.watch_close(lambda reason, link=link: self._on_closed(link, reason))
            hypervisor.watch_lifecycle(lambda vm, _event, link=link: self._on_domain_event(link, vm))
        except Exception as exc:  # noqa: BLE001 - whatever a host does, it is that host's error, and we retry
            message = str(exc) if isinstance(exc, errors.KvmopsError) else f"{type(exc).__name__}: {exc}"
            with self._links_lock:
                if link.error != message:
                    log.error("host_unreachable", host=link.name, error=message, retry_in=link.delay)
                link.error = message
                link.next_attempt = time.monotonic() + link.delay
                link.delay = min(link.delay * 2, self.settings.reconnect_max_delay)
                link.connecting = False
            self.metrics.set("kvmops_connected", 0)
            link.tried.set()
            return
        with self._links_lock:
            if link.retired:
                hypervisor.close()
                link.connecting = False
                link.tried.set()
                return
            previous = link.hypervisor
            was_down = link.error != "not connected yet"
            link.hypervisor, link.closed, link.error, link.delay = hypervisor, False, "", FIRST_RECONNECT_DELAY
            link.connecting = False
        if previous is not None:
            with contextlib.suppress(Exception):
                previous.close()
        log.info("host_connected", host=link.name, reconnected=was_down)
        link.tried.set()
        self._wake(FULL, "reconnect" if was_down else "start")

    def _on_closed(self, link: HostLink, reason: str) -> None:
        self._lost(link, f"connection closed: {reason}")

    def _lost(self, link: HostLink, why: str) -> None:
        """Mark ``link`` down (its connection broke, or its observation failed): reconnect after its backoff."""
        with self._links_lock:
            if link.closed or link.hypervisor is None:
                return
            link.closed = True
            link.error = why
            link.next_attempt = time.monotonic() + link.delay
        self.metrics.set("kvmops_connected", 0)
        log.error("host_disconnected", host=link.name, reason=why, retrying=True)
        self._wake(FULL, "libvirt")  # /status shows its VMs Unknown, and the others are planned without it

    def _on_domain_event(self, link: HostLink, name: str) -> None:
        try:
            interesting = self._interesting
            if interesting is not None and name not in interesting:
                return  # neither declared nor ours: nothing a pass would do about it
            self._wake(host_key(link.name, f"VirtualMachine/{name}"), "libvirt")
        except Exception as exc:  # on libvirt's event thread: an escaping exception would only reach stderr
            self._survive("events", exc)
        else:
            self._recovered("events")

    def _connections(self) -> fleet_reconcile.FleetConnections:
        timeout = self.settings.host_timeout
        with self._links_lock:
            return fleet_reconcile.FleetConnections(
                hypervisors={n: l.hypervisor for n, l in self._links.items() if l.connected and l.hypervisor},
                unreachable={n: self._why_down(l, timeout) for n, l in self._links.items() if not l.connected},
                uris={n: l.uri for n, l in self._links.items()},
                timeout=timeout,
            )

    @staticmethod
    def _why_down(link: HostLink, timeout: float) -> str:
        """Return why ``link``'s Host is unreachable: a connection attempt hanging past ``timeout`` says so."""
        if link.connecting and time.monotonic() - link.connect_began >= timeout:
            return str(deadlines.timed_out(link.name, timeout, "being connected to"))
        return link.error

    # -- one pass -----------------------------------------------------------------------

    def _pass(self, keys: list[str]) -> None:
        """Plan the fleet and dispatch the work of ``keys``; an unexpected exception fails this pass only."""
        reconcile_id = uuid.uuid4().hex[:12]
        reasons = {key: self._take_reason(key) for key in keys}
        started = time.monotonic()
        dispatched: set[str] = set()
        with structlog.contextvars.bound_contextvars(reconcile_id=reconcile_id):
            try:
                self._reconcile(keys, reasons, reconcile_id, started, dispatched)
            except Exception as exc:
                message = self._survive("pass", exc, reconcile_id=reconcile_id)
                self.metrics.inc("kvmops_reconcile_passes_total", result="error")
                self._failed(started, message, reconcile_id)
                for key in keys:
                    if key in dispatched:
                        continue  # its execution is running and will say how it ends
                    with self._reasons_lock:
                        self._reasons.setdefault(key, set()).add(reasons[key])
                    self._queue.retry_later(key)
                    self._queue.done(key)
            else:
                self._recovered("pass")

    def _reconcile(self, keys: list[str], reasons: dict[str, str], reconcile_id: str, started: float,
                   dispatched: set[str]) -> None:
        path = self._manifest_path()
        if path is None:
            log.info("reconcile_waiting", reason="no good git revision fetched yet")
            self._release_all(keys)
            return
        try:
            with reconcile.gc_paused():
                desired = reconcile.load_desired(path, revision=self._revision(set(reasons.values())))
        except errors.ManifestError as exc:
            self.metrics.inc("kvmops_errors_total", kind="manifests")
            self.metrics.inc("kvmops_reconcile_passes_total", result="error")
            log.error("reconcile_failed", error=str(exc), kind="manifests")
            self._failed(started, str(exc), reconcile_id)
            self._release_all(keys)
            return
        if not desired.is_fleet and self.agent is None:
            self._release_all(keys)
            self.request_switch("single", "the manifests declare no Host any more")
            return
        if self.agent is not None and self.agent not in desired.hosts:
            log.error("agent_host_missing", host=self.agent)
            self._failed(started, f"no Host named {self.agent} in the manifests", reconcile_id)
            self._release_all(keys)
            return
        self._sync_links(desired)
        connections = self._connections()
        woken = self._woken_vms(keys, reasons, connections)
        with reconcile.gc_paused():
            observed, observed_at = self._look(connections, desired, woken)
        for name, seen in observed.items():
            if isinstance(seen, fleet.HostUnreachable) and name in connections.hypervisors:
                with self._links_lock:
                    link = self._links.get(name)
                if link is not None:
                    self._lost(link, seen.error)
        with self._arriving_lock:
            for vm in [vm for vm, (_h, ended) in self._arriving.items() if ended is not None and ended < observed_at]:
                del self._arriving[vm]
            arriving = {vm: host for vm, (host, _ended) in self._arriving.items()}
        planned = fleet_reconcile.plan_from(desired, observed, settings=self.settings.planner, only_host=self.agent,
                                            arriving=arriving)
        self._interesting = self._names(desired, observed)
        self._watch_transitions(observed, woken)
        self._dispatch(planned, connections, set(keys), FULL in keys, reasons, reconcile_id, dispatched, observed_at,
                       targeted=woken is not None)
        for key in keys:
            if key not in dispatched:
                self._queue.forget(key)
                self._queue.done(key)
        self.passes += 1
        duration = time.monotonic() - started
        self.metrics.inc("kvmops_reconcile_passes_total", result="problems" if planned.plan.problems else "ok")
        self.metrics.observe("kvmops_reconcile_duration_seconds", duration)
        self._record(planned, reasons, reconcile_id, duration, "host" if woken is None else "vms")

    def _watch_transitions(self, observed: dict[str, object], woken: dict[str, list[str]] | None) -> None:
        """Look again soon at the VMs this pass saw in transition on a Host it looked at (:mod:`.transitions`).

        A whole look at a Host looked at every VM there; a targeted one at its ``woken`` VMs
        only; a Host taken as last seen, or unreachable, was not looked at. A VM watched on a
        Host the manifests no longer declare is forgotten by a whole look.
        """
        watched = self._transitions.watched()
        moving: set[str] = set()
        settled: set[str] = set()
        if woken is None:
            settled = {key for key in watched if key.split(":", 1)[0] not in observed}
        for host, seen in observed.items():
            if not isinstance(seen, model.ActualState) or (woken is not None and host not in woken):
                continue
            among = self._interesting if woken is None else woken[host]
            here = {host_key(host, f"VirtualMachine/{name}") for name in in_transition(seen, among)}
            looked_at = ({key for key in watched if key.startswith(f"{host}:")} if woken is None
                         else {host_key(host, f"VirtualMachine/{name}") for name in woken[host]})
            moving |= here
            settled |= looked_at - here
        self._transitions.seen(moving, settled)

    def _woken_vms(self, keys: list[str], reasons: dict[str, str],
                   connections: fleet_reconcile.FleetConnections) -> dict[str, list[str]] | None:
        """Return, per Host, the VMs of a pass woken only by their own libvirt events; None: look at every Host whole.

        As in the single-host controller (docs/controller.md): such a pass refreshes those VMs
        in the last look at their Host, and takes the other Hosts as last seen. Anything else
        (a manifest change, the resync, a reconnection, a retry, a Host never looked at, or
        one whose connection changed) looks at every Host whole.
        """
        woken: dict[str, list[str]] = {}
        for key in keys:
            host, _, resource = key.partition(":")
            if not resource.startswith("VirtualMachine/") or reasons.get(key) not in TARGETED:
                return None
            woken.setdefault(host, []).append(resource.partition("/")[2])
        for host, hypervisor in connections.hypervisors.items():
            last = self._observations.get(host)
            if last is None or last[0] is not hypervisor:
                return None
        return woken

    def _look(self, connections: fleet_reconcile.FleetConnections, desired: model.DesiredState,
              woken: dict[str, list[str]] | None) -> tuple[dict[str, object], float]:
        """Return what every Host shows (or why it cannot be seen), and when the oldest of those looks began.

        Hosts are looked at side by side. With ``woken``, a Host refreshes only its woken VMs
        in its last look, and a Host without any is taken as last seen.
        """
        def look(name: str, hypervisor: hv.Hypervisor, previous: model.Observation | None) -> tuple[model.Observation, float]:
            began = time.monotonic()
            if woken is None or previous is None:
                return observe.collect(hypervisor), began
            names = woken[name]
            named = [planner.vm_volumes(desired.vms[vm], desired.images) for vm in names if vm in desired.vms]
            return observe.refresh(hypervisor, previous, names, volumes=set().union(*named)), began

        began = time.monotonic()
        observed: dict[str, object] = {name: fleet.HostUnreachable(name, error)
                                       for name, error in connections.unreachable.items()}
        calls = {}
        for name, hypervisor in sorted(connections.hypervisors.items()):
            if woken is not None and name not in woken:
                _hypervisor, observation, when = self._observations[name]  # taken as last seen
                observed[name] = actual_state.interpret(observation)
                began = min(began, when)
                continue
            previous = self._observations[name][1] if woken is not None else None
            calls[name] = lambda name=name, hypervisor=hypervisor, previous=previous: look(name, hypervisor, previous)
        # A Host that falls silent is unreachable once its keepalive gives up (about host_timeout); one that answers
        # but whose look never returns, after look_timeout, its thread abandoned, and no second look at it starts
        # meanwhile. A busy Host's slow look is waited for: it is alive.
        answers = deadlines.call_each(calls, timeout=deadlines.look_timeout(self.settings.host_timeout),
                                      what="being observed",
                                      workers=fleet_reconcile.DEFAULT_HOST_WORKERS)
        for name, answer in answers.items():
            if isinstance(answer, errors.KvmopsError):
                self._observations.pop(name, None)
                if isinstance(answer, errors.HostTimedOut):  # its look still runs: reconnecting must not close under it
                    connections.hypervisors[name].abandon()
                log.info("host_unreachable", host=name, error=str(answer))
                observed[name] = fleet.HostUnreachable(name, str(answer))
                continue
            observation, when = answer
            self._observations[name] = (connections.hypervisors[name], observation, when)
            observed[name] = actual_state.interpret(observation)
            began = min(began, when)
        for name in [n for n in self._observations if n not in connections.hypervisors]:
            del self._observations[name]
        return dict(sorted(observed.items())), began

    def _release_all(self, keys: list[str]) -> None:
        for key in keys:
            self._queue.done(key)

    def _names(self, desired: model.DesiredState, observed) -> frozenset[str]:
        """Return the domain names whose events matter: declared, or marked by this fleet on some host."""
        scope = self.settings.planner.scope
        ours = {name for seen in observed.values() if isinstance(seen, model.ActualState)
                for name, domain in seen.domains.items() if domain.owned and planner.scope_of(domain) == scope}
        return frozenset(desired.vms) | frozenset(ours)

    # -- dispatch: central decisions, per-host execution -----------------------------------

    def _dispatch(self, planned: fleet_reconcile.FleetPlanResult, connections: fleet_reconcile.FleetConnections,
                  keys: set[str], full: bool, reasons: dict[str, str], reconcile_id: str, dispatched: set[str],
                  observed_at: float, *, targeted: bool = False) -> None:
        """Start the changed resources this pass is for on their hosts' pools, in apply's order across hosts.

        A host's own changes in the executor's phases; then the migrations, each on its source's
        pool once the destination's resources it ``requires`` ran; then the removals, once every
        migration in flight has ended. A key is claimed before its work is submitted; a resource
        whose key is in flight is marked dirty and looked at again when that work ends. A resource
        whose last execution ended after the hosts were observed is not run on this plan (it
        saw that work half done): its key is queued again, for a pass that sees the outcome. A
        targeted pass (it refreshed a few VMs, not every Host) neither removes nor moves
        anything: the next full pass does.
        """
        fallback = reasons.get(FULL, "retry")
        hypervisors = dict(connections.hypervisors)
        with self._links_lock:
            links = {name: link for name, link in self._links.items() if name in hypervisors}
        host_plans = {h.host: h.plan for h in planned.plan.hosts if h.plan is not None and h.host in links}
        work: dict[str, Future] = {}

        def claim(key: str) -> bool:
            if not (key in keys or (full and self._queue.claim(key))):
                return False
            # A targeted pass took the Hosts it did not refresh as last seen: its look is as old as the oldest of
            # them, so one that refuses a key as stale would refuse it again. Handed back as a resync, the key's
            # next pass looks at every Host whole.
            if self._subjects.start(key, observed_at, "resync" if targeted else reasons.get(key, fallback)):
                return True
            dispatched.add(key)  # handed on (to the work holding its VM, or to a pass that sees it): not ours to release
            return False

        def needed(key: str) -> Future | None:
            return work.get(key) or self._running.get(key)

        def submit(host: str, plan: plans.Plan, resource: plans.ResourcePlan, key: str,
                   needs: list[tuple[str, Future]], destination: str | None = None) -> Future | None:
            reason = reasons.get(key, fallback)
            single = dataclasses.replace(plan, resources=(resource,))
            if resource.kind == "VirtualMachine" and plans.Action.CREATE in resource.actions:
                with self._arriving_lock:  # before it can end, so that its end is recorded
                    self._arriving[resource.name] = (host, None)
            try:
                future = links[host].executor.submit(self._execute, host, single, resource, key, reason, reconcile_id,
                                                     needs, hypervisors, destination)
            except RuntimeError:  # the host left the manifests meanwhile: its pool takes nothing new
                self._end(key)
                return None
            except BaseException:
                self._end(key)  # nothing will run for it: free its key and its subject
                raise
            dispatched.add(key)
            work[key] = self._running[key] = future
            self._futures.add(future)
            future.add_done_callback(lambda done, key=key: self._finished(key, done))
            return future

        for host, plan in sorted(host_plans.items()):
            for resource in (r for phase in execute.phases(plan) for r in phase):
                if fleet_reconcile.is_migration(resource) or fleet_reconcile.is_removal(resource):
                    continue
                key = host_key(host, resource.key)
                if claim(key):
                    needs = [(k, f) for k in (host_key(host, r) for r in resource.requires) if (f := needed(k))]
                    submit(host, plan, resource, key, needs)
        for migration in planned.plan.migrations:
            step = next(s for s in migration.steps if isinstance(s, plans.MigrateDomain))
            if targeted or (self.agent is not None and step.source != self.agent) or step.source not in host_plans:
                continue
            key = host_key(step.source, migration.key)
            if not claim(key):
                continue
            needs = [(k, f) for k in migration.requires if (f := needed(k))]
            future = submit(step.source, host_plans[step.source], migration, key, needs, step.destination)
            if future is not None:
                self._migrations[key] = future
        for host, plan in sorted(host_plans.items()):
            for resource in (r for phase in execute.phases(plan) for r in phase):
                if targeted or not fleet_reconcile.is_removal(resource) or fleet_reconcile.is_migration(resource):
                    continue
                key = host_key(host, resource.key)
                if claim(key):
                    needs = [(k, f) for k in (host_key(host, r) for r in resource.requires) if (f := needed(k))]
                    needs += [(k, f) for k, f in list(self._migrations.items()) if not f.done()]
                    submit(host, plan, resource, key, needs)

    def _finished(self, key: str, future: Future) -> None:
        self._futures.discard(future)
        if self._running.get(key) is future:
            del self._running[key]
        if self._migrations.get(key) is future:
            del self._migrations[key]

    def _execute(self, host: str, single: plans.Plan, resource: plans.ResourcePlan, key: str, reason: str,
                 reconcile_id: str, needs: list[tuple[str, Future]], hypervisors: dict[str, hv.Hypervisor],
                 destination: str | None) -> bool:
        """Run one resource on ``host`` once what it needs has run; return whether it converged.

        Holds the host lock of ``host`` (and of a migration's destination, locks taken in URI order).
        """
        subject = {execute.SUBJECTS.get(resource.kind, "resource"): resource.name}
        with structlog.contextvars.bound_contextvars(reconcile_id=reconcile_id, host=host, **subject):
            blocked = not_ready(needs)
            if blocked:
                ok, error = False, f"skipped: {', '.join(blocked)} is not ready"
                log.warning("resource_skipped", reason=error)
            elif self._cancel.is_set():
                ok, error = False, "cancelled"
            else:
                def run() -> execute.ApplyReport:
                    with self._held(host, destination):
                        return execute.execute(single, hypervisors[host], workers=1, cancel=self._cancel,
                                               hosts=hypervisors)
                ok, error = self._attempt(run)
            try:
                self._tally(resource, key, reason, ok, error)
                if resource.kind == "VirtualMachine":
                    with self._status_lock:
                        if ok:
                            self._errors.pop(key, None)
                        else:
                            self._errors[key] = error or "failed"
            finally:
                self._end(key)  # whatever happened above, the key must not stay in flight forever
        return ok

    def _end(self, key: str) -> None:
        """End the execution of ``key``: its subject is free, and the keys that waited for it are woken."""
        subject = subject_of(key)
        name = subject.partition("/")[2]
        with self._arriving_lock:  # its steps are over: a look begun from now on sees the VM where it arrived
            if subject.startswith("VirtualMachine/") and name in self._arriving:
                self._arriving[name] = (self._arriving[name][0], time.monotonic())
        self._subjects.end(key)

    @contextlib.contextmanager
    def _held(self, host: str, destination: str | None):
        """Hold the host lock of ``host`` (and of a migration's ``destination``), in URI order as a fleet apply does."""
        names = {host} | ({destination} if destination else set())
        with self._links_lock:
            keepers = sorted((self._links[n].uri, self._links[n].keeper) for n in names if n in self._links)
        with contextlib.ExitStack() as stack:
            for _uri, keeper in keepers:
                stack.enter_context(keeper.held())
            yield

    # -- what it records and serves --------------------------------------------------------

    def _failed(self, started: float, message: str, reconcile_id: str) -> None:
        with self._status_lock:
            self._last_pass = {"reconcile_id": reconcile_id, "finished_at": now(),
                               "duration_ms": round((time.monotonic() - started) * 1000), "error": message}
        self._health = (False, message)
        with contextlib.suppress(Exception):  # the notifier may be what failed
            self._notifier.status(f"error: {message}"[:200])

    def _record(self, planned: fleet_reconcile.FleetPlanResult, reasons: dict[str, str], reconcile_id: str,
                duration: float, scope: str) -> None:
        plan, observed = planned.plan, planned.observed
        in_flight = self._queue.in_flight()
        with self._status_lock:
            for key in [k for k in self._errors if k.split(":", 1)[0] in {h.host for h in plan.hosts}]:
                host, resource_key = key.split(":", 1)
                section = next(h for h in plan.hosts if h.host == host)
                if section.plan is not None and not any(r.key == resource_key and r.changed for r in section.plan.resources):
                    del self._errors[key]  # nothing left to do for it: whatever failed was resolved
            errors_now = dict(self._errors)
        hosts = {}
        for section in plan.hosts:
            actual = observed.get(section.host)
            domains = actual.domains if isinstance(actual, model.ActualState) else {}
            vms = []
            for vm in section.vms:
                domain = domains.get(vm)
                pending = [] if section.plan is None else [
                    a.value for r in section.plan.changes if r.name == vm and r.kind == "VirtualMachine" for a in r.actions]
                vms.append({"name": vm, "state": domain.power.value if domain is not None else
                            ("Unknown" if section.unreachable else "absent"), "pending": pending,
                            "last_error": errors_now.get(host_key(section.host, f"VirtualMachine/{vm}"))})
            hosts[section.host] = {
                "uri": section.uri, "connected": section.unreachable is None, "error": section.unreachable,
                "schedulable": section.schedulable,
                "prune_suspended": (f"host unreachable: {section.unreachable}" if section.plan is None
                                    else section.plan.prune_suspended),
                "in_flight": sorted(k.split(":", 1)[1] for k in in_flight if k.startswith(f"{section.host}:")),
                "vms": vms, "problems": [str(p) for p in (section.plan.problems if section.plan else ())],
            }
        converged = (not plan.has_changes and not plan.unreachable and not plan.problems and not in_flight
                     and not self._transitions.watched()
                     and not any(h.plan is not None and h.plan.problems for h in plan.hosts))
        trigger = sorted(set(reasons.values()))
        changes = sum(len(h.plan.changes) for h in plan.hosts if h.plan is not None)
        with self._status_lock:
            self._status = {
                "fleet": plan.fleet, "agent": self.agent, "passes": self.passes, "converged": converged,
                "summary": plan.summary(), "problems": [str(p) for p in plan.problems], "hosts": hosts,
                "migrations": [m.name for m in plan.migrations],
            }
            self._last_pass = {"reconcile_id": reconcile_id, "finished_at": now(), "duration_ms": round(duration * 1000),
                               "trigger": trigger, "changes": changes, "problems": len(plan.problems), "observed": scope}
        down = list(plan.unreachable)
        problems = len(plan.problems) + sum(len(h.plan.problems) for h in plan.hosts if h.plan is not None)
        if down:
            self._health = (False, f"host {down[0].host} unreachable: {down[0].unreachable}")
        elif problems:
            self._health = (False, f"{problems} problem(s) in the fleet; pruning suspended")
        else:
            self._health = (True, "ok")
        self.metrics.set("kvmops_connected", 0 if down else 1)
        self.metrics.set("kvmops_manifest_problems", len(plan.problems))
        log.info("reconcile_finished", duration_ms=round(duration * 1000), trigger=",".join(trigger), changes=changes,
                 problems=problems, in_flight=len(in_flight), unreachable=[h.host for h in down] or None, observed=scope)
        summary = plan.summary() + (f"; {problems} problem(s), pruning suspended" if problems else "")
        if not self._ready:
            self._ready = True
            self._notifier.ready(summary[:200])
        else:
            self._notifier.status(summary[:200])

    def _close_connections(self) -> None:
        with self._links_lock:
            for link in self._links.values():
                self._retire(link)
            self._links.clear()


def is_fleet(path: str) -> bool:
    """Return whether the manifests at ``path`` declare Hosts (so ``kvmops run`` drives a fleet)."""
    with contextlib.suppress(errors.KvmopsError):
        return reconcile.load_desired(path).is_fleet
    return False
