"""The controller behind ``kvmops run``: keep a host converged, without anyone asking.

Wake-ups only say *something may have changed*; each pass re-reads the manifests and
libvirt and plans from scratch, with the same planner and executor as ``kvmops apply``.
A pass woken only by some VMs' own events looks again at those VMs alone, in the last
pass's observation of the host (:func:`reconciler.runtime.observe.refresh`): listing a
busy host's domains waits behind every start and destroy on it.
They come from:

* the manifest directory (watchdog), after a short quiet period so that an editor's
  save, an atomic rename or a ``git pull`` of many files gives one pass;
* libvirt's domain lifecycle events, so that a ``virsh destroy``, a guest crash or an
  undefine by hand is repaired within a second;
* a periodic full resync, with jitter, as the safety net;
* reconnection to libvirtd, which may restart under us.

Work is keyed by resource (:mod:`reconciler.runtime.workqueue`): one VM is never worked
on twice at once, a failing VM backs off on its own, and slow work on one VM (a guest
taking a minute to shut down) never holds up the others, because executions run on a
thread pool while the main loop keeps planning.

Threads: the main loop (planning, timers, signals), libvirt's event loop, watchdog's
observer, the executor pool and the optional HTTP listener.  Only the main loop plans;
executor threads only run steps.

The controller's parts: :mod:`.settings` (what it is told), :mod:`.hostlock_keeper`,
:mod:`.git_follower`, :mod:`.debounce` and :mod:`.timers` (when it wakes), :mod:`.subjects`
(whether work may run on a pass's plan), and :mod:`.status` (what it records and serves);
this module is the main loop and its passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

from reconciler import errors, logconfig
from reconciler.adapters import hypervisor as hv
from reconciler.adapters import systemd, watcher
from reconciler.adapters.statusserver import StatusServer
from reconciler.core import plan as plans
from reconciler.core import actual as actual_state
from reconciler.core import model, planner, redaction
from reconciler.runtime import execute, gitsource, metrics, observe, reconcile, workqueue
from reconciler.runtime.controller.debounce import Debouncer
from reconciler.runtime.controller.git_follower import GitFollower
from reconciler.runtime.controller.hostlock_keeper import HostLockKeeper
from reconciler.runtime.controller.lifecycle import (  # noqa: F401  (finish_in_flight, not_ready: re-exported)
    TARGETED, ControllerLifecycle, finish_in_flight, not_ready)
from reconciler.runtime.controller.settings import ControllerSettings
from reconciler.runtime.controller.status import ControllerStatus, now
from reconciler.runtime.controller.subjects import SubjectLedger
from reconciler.runtime.controller.timers import LoopTimers, next_resync
from reconciler.runtime.controller.transitions import TransitionWatch, in_transition

log = logconfig.get_logger("kvmops.controller")


class Controller(ControllerLifecycle, ControllerStatus):
    """Converge ``settings.uri`` on the manifests at ``settings.path`` until stopped."""

    _log = log

    def __init__(
        self,
        settings: ControllerSettings,
        *,
        notifier: systemd.Notifier | None = None,
        reload: Callable[[], ControllerSettings] | None = None,
        source: gitsource.GitSource | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics.Metrics()
        self._notifier = notifier or systemd.Notifier()
        self._reload_settings = reload
        self._queue = workqueue.WorkQueue()
        self._reasons: dict[str, set[str]] = {}
        self._reasons_lock = threading.Lock()
        # No work runs on a plan from a look begun before that resource's last execution ended.
        self._subjects = SubjectLedger(self._queue, self._wake)
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._reload_requested = threading.Event()
        self._hypervisor: hv.Hypervisor | None = None
        self._connected = False
        self._disconnect_reason: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="kvmops-worker")
        self._futures: set[Future] = set()
        self._lock_keeper = HostLockKeeper(settings.state_dir, settings.uri, self._cancel)
        self._watcher: watcher.ManifestWatcher | None = None
        self._debouncer = Debouncer(self._manifests_settled)
        self._server: StatusServer | None = None
        self._status_lock = threading.Lock()
        self._vm_status: dict[str, dict] = {}
        self._problems: list[model.Problem] = []
        self._foreign: tuple[str, ...] = ()
        self._prune_suspended: str | None = None
        self._last_pass: dict = {}
        self._last_pass_ok = False
        self._passes = 0
        self._ready = False
        self._interesting: frozenset[str] | None = None  # domain names a pass cares about; None: all
        # What the last pass saw of the host: a pass woken only by domains' events refreshes those domains in it.
        self._observation: model.Observation | None = None
        self._transitions = TransitionWatch()  # VMs last seen between two power states: looked at again
        if source is None and settings.git:
            source = gitsource.GitSource(settings.git, settings.state_dir)
        self._source = source  # handed over by the fleet controller when the mode switches, already fetched
        self.switch_to: str | None = None  # "fleet" once the manifests declare Hosts: run() returns to switch
        self._git_follower = GitFollower(
            self._source, self._stop, wake=lambda: self._wake(workqueue.EVERYTHING, "git"),
            survive=self._survive, recovered=self._recovered, metrics=self.metrics,
        ) if self._source is not None else None
        self._directory_revision: str | None = None
        # Unexpected exceptions, by where they happened (pass, loop, git, events): shown on /status and /healthz
        # until that part runs cleanly again.  None of them stops the controller.
        self._internal_errors: dict[str, dict] = {}
        self._loop_backoff = 0.0

    # -- the loop -----------------------------------------------------------------------

    def _log_start(self) -> None:
        log.info("controller_started", manifests=self.settings.path or None, uri=redaction.redact_url(self.settings.uri),
                 resync_interval=self.settings.resync_interval,
                 git=self.settings.git.shown() if self.settings.git else None)

    def _watch_directory(self) -> None:
        pass  # each turn makes sure of the watcher (_ensure_watcher): the directory may come and go

    def _turn(self, timers: LoopTimers) -> None:
        """Run one turn of the main loop: timers, reload, connection, then one pass over the ready keys."""
        now = time.monotonic()
        self._tend(timers, now)
        self._announce_waiting()
        if not self._connected:
            if now < timers.next_connect:
                self._stop.wait(min(timers.next_connect - now, 1.0))
                return
            if self._connect():
                timers.reconnect_delay = 0.5
            else:
                timers.next_connect = now + timers.reconnect_delay
                timers.reconnect_delay = min(timers.reconnect_delay * 2, self.settings.reconnect_max_delay)
                return
        self._ensure_watcher()
        for key in self._transitions.take_due():
            self._wake(key, "transition")
        timeout = max(0.0, min(timers.next_resync - now, self._transitions.next_in(), 1.0))
        if self._notifier.watchdog_interval:
            timeout = min(timeout, max(0.0, timers.next_watchdog - now))
        keys = self._queue.take(timeout=timeout)
        if self._stop.is_set():
            return
        if self._reload_requested.is_set():  # a SIGHUP's pass must see the new settings
            self._reload_requested.clear()
            self._reload()
        if time.monotonic() >= timers.next_resync:
            timers.next_resync = self._next_resync()
            self._wake(workqueue.EVERYTHING, "resync")
        if keys:
            self._pass(keys)

    def _announce_waiting(self) -> None:
        """Tell systemd we are up even while nothing can be done yet, and say why in STATUS."""
        if self._ready:
            return
        waiting = None
        if self._source is not None and self._source.applied is None and (self._source.last_error or self._source.rejected):
            waiting = f"waiting for a good git commit: {self._source.last_error or 'the fetched commit does not validate'}"
        elif not self._connected and self._disconnect_reason:
            waiting = f"waiting for libvirtd: {self._disconnect_reason}"
        if waiting:
            self._ready = True
            self._notifier.ready(waiting[:200])

    def _next_resync(self) -> float:
        return next_resync(self.settings.resync_interval)

    # -- libvirt connection -------------------------------------------------------------

    def _connect(self) -> bool:
        try:
            hypervisor = hv.Hypervisor.open(self.settings.uri)
            hypervisor.keep_alive()
            hypervisor.watch_close(self._on_connection_closed)
            hypervisor.watch_lifecycle(self._on_domain_event)
        except errors.HypervisorError as exc:
            if self._disconnect_reason != str(exc):
                log.error("libvirt_unreachable", error=str(exc), retrying=True)
                self._disconnect_reason = str(exc)
            self.metrics.set("kvmops_connected", 0)
            return False
        previous, self._hypervisor = self._hypervisor, hypervisor
        self._observation = None  # what the old connection saw may have changed while nobody listened
        if previous is not None:
            previous.close()
        self._connected = True
        self.metrics.set("kvmops_connected", 1)
        if self._disconnect_reason is not None:
            log.info("libvirt_reconnected", uri=self.settings.uri)
            self._wake(workqueue.EVERYTHING, "reconnect")
        self._disconnect_reason = None
        return True

    def _on_connection_closed(self, reason: str) -> None:
        if self._connected:
            self._connected = False
            self._disconnect_reason = reason
            self.metrics.set("kvmops_connected", 0)
            log.error("libvirt_disconnected", reason=reason, retrying=True)

    def _on_domain_event(self, name: str, lifecycle: str) -> None:
        try:
            interesting = self._interesting
            if interesting is not None and name not in interesting:
                return  # neither declared nor ours: nothing a pass would do about it
            log.debug("domain_event_received", vm=name, lifecycle=lifecycle)
            self._wake(f"VirtualMachine/{name}", "libvirt")
        except Exception as exc:  # on libvirt's event thread: an escaping exception would only reach stderr
            self._survive("events", exc)
        else:
            self._recovered("events")

    # -- manifest sources ---------------------------------------------------------------

    def _ensure_watcher(self) -> None:
        if self._source is not None:
            return  # the git source decides when the manifests change
        directory = Path(self.settings.path)
        directory = directory if directory.is_dir() else directory.parent
        if self._watcher is not None and (self._watcher.directory != directory or not directory.exists()):
            self._watcher.stop()
            self._watcher = None
        if self._watcher is None and directory.is_dir():
            self._watcher = watcher.ManifestWatcher(self.settings.path, self._on_manifest_change)
            self._watcher.start()

    def _on_manifest_change(self, path: str) -> None:
        self._debouncer.changed(self.settings.quiet_period, self.settings.max_quiet_wait)

    def _manifests_settled(self) -> None:
        self._wake(workqueue.EVERYTHING, "manifests")

    # -- one pass -----------------------------------------------------------------------

    def _pass(self, keys: list[str]) -> None:
        """Reconcile ``keys``; an unexpected exception fails this pass only, and its keys back off."""
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
                self._last_pass = {"reconcile_id": reconcile_id, "finished_at": now(),
                                   "duration_ms": round((time.monotonic() - started) * 1000), "error": message}
                self._last_pass_ok = False
                for key in keys:
                    if key in dispatched:
                        continue  # its execution is running and will say how it ends
                    with self._reasons_lock:
                        self._reasons.setdefault(key, set()).add(reasons[key])
                    self._queue.retry_later(key)
                    self._queue.done(key)
                with contextlib.suppress(Exception):  # the notifier may be what failed
                    self._notifier.status(f"error: {message}"[:200])
            else:
                self._recovered("pass")

    def _reconcile(self, keys: list[str], reasons: dict[str, str], reconcile_id: str, started: float,
                   dispatched: set[str]) -> None:
        """Read, observe, plan and dispatch one pass; add the keys handed to executions to ``dispatched``."""
        full = workqueue.EVERYTHING in keys
        woken = self._woken_vms(keys, reasons)
        path = self._manifest_path()
        if path is None:
            log.info("reconcile_waiting", reason="no good git revision fetched yet")
            for key in keys:
                self._queue.done(key)
            return
        try:
            with reconcile.gc_paused():
                desired = reconcile.load_desired(path, revision=self._revision(set(reasons.values())))
                if desired.is_fleet:
                    self._fleet_declared(keys, started, desired)
                    return
                observing = time.monotonic()
                if woken is None:
                    observation = observe.collect(self._hypervisor)
                else:
                    named = (planner.vm_volumes(desired.vms[name], desired.images) for name in woken if name in desired.vms)
                    observation = observe.refresh(self._hypervisor, self._observation, woken, volumes=set().union(*named))
                observed_in = time.monotonic() - observing
                actual = actual_state.interpret(observation)
        except errors.ManifestError as exc:
            self._pass_failed(keys, started, "manifests", str(exc))
            return
        except errors.HypervisorError as exc:
            if isinstance(exc, errors.ConnectionLost):
                self._on_connection_closed(str(exc))
            self._pass_failed(keys, started, "libvirt", str(exc))
            for key in keys:
                with self._reasons_lock:
                    self._reasons.setdefault(key, set()).add(reasons[key])
                self._queue.retry_later(key)  # back off: an error that persists must not spin
            return
        if planner.host_is_local(self.settings.uri):
            desired = reconcile.with_host_file_paths(desired, actual)
        with reconcile.gc_paused():
            plan = planner.plan_changes(desired, actual, settings=reconcile.timed(self.settings.planner))
        self._observation = observation
        self._record(desired, actual, plan)
        self._watch_transitions(actual, woken)
        # A targeted pass never prunes: it has not looked at the whole host.  The next full pass does.
        self._dispatch(plan, set(keys), full, reasons, reconcile_id, dispatched, observing,
                       declared=frozenset(desired.vms) if woken is not None else None)
        for key in keys:
            if key not in dispatched:
                self._queue.forget(key)
                self._queue.done(key)
        duration = time.monotonic() - started
        self._passes += 1
        self.metrics.inc("kvmops_reconcile_passes_total", result="ok" if not plan.problems else "problems")
        self.metrics.observe("kvmops_reconcile_duration_seconds", duration)
        scope = "host" if woken is None else "vms"
        self._last_pass = {
            "reconcile_id": reconcile_id, "finished_at": now(), "duration_ms": round(duration * 1000),
            "trigger": sorted(set(reasons.values())), "changes": len(plan.changes), "problems": len(plan.problems),
            "observed": scope, "observe_ms": round(observed_in * 1000),
        }
        self._last_pass_ok = not plan.problems
        log.info("reconcile_finished", duration_ms=round(duration * 1000), trigger=",".join(sorted(set(reasons.values()))),
                 changes=len(plan.changes), problems=len(plan.problems), in_flight=len(self._queue.in_flight()),
                 observed=scope, observe_ms=round(observed_in * 1000))
        if not self._ready:
            self._ready = True
            self._notifier.ready(self._summary())
        else:
            self._notifier.status(self._summary())

    def _fleet_declared(self, keys: list[str], started: float, desired: model.DesiredState) -> None:
        """The manifests now declare Hosts: switch to the fleet controller, or refuse when told to drive one URI."""
        if self.settings.uri_given:
            self._pass_failed(keys, started, "manifests", (
                "the manifests declare Hosts, each reached at its own spec.uri, but this controller "
                f"drives {redaction.redact_url(self.settings.uri)} (--connect): nothing is planned; restart kvmops run "
                "without --connect, or with --host NAME as one Host's agent"))
            return
        for key in keys:
            self._queue.done(key)
        self.request_switch("fleet", "the manifests declare Hosts")

    def _watch_transitions(self, actual: model.ActualState, woken: list[str] | None) -> None:
        """Look again soon at the VMs this pass saw in transition (:mod:`.transitions`); forget those now settled.

        A pass that looked at the whole host (``woken`` None) looked at every VM it cares
        about; a targeted one only at the ``woken`` VMs.
        """
        moving = {f"VirtualMachine/{name}" for name in in_transition(actual, self._interesting if woken is None else woken)}
        looked_at = self._transitions.watched() if woken is None else {f"VirtualMachine/{name}" for name in woken}
        self._transitions.seen(moving, looked_at - moving)

    def _woken_vms(self, keys: list[str], reasons: dict[str, str]) -> list[str] | None:
        """Return the VMs of a pass woken only by their own libvirt events, or None when it must observe the whole host.

        Such a pass refreshes those VMs in the last pass's observation instead of listing
        every domain, which waits behind every start and destroy on a busy host; so does a
        pass looking again at VMs last seen in transition.  Anything else (a manifest
        change, the resync, a reconnection, a retry after a failure, any other resource)
        looks at the whole host, as does the first pass.
        """
        if self._observation is None:
            return None
        if any(not key.startswith("VirtualMachine/") or reasons.get(key) not in TARGETED for key in keys):
            return None
        return [key.partition("/")[2] for key in keys]

    def _pass_failed(self, keys: list[str], started: float, kind: str, message: str) -> None:
        self.metrics.inc("kvmops_reconcile_passes_total", result="error")
        self.metrics.inc("kvmops_errors_total", kind=kind)
        log.error("reconcile_failed", error=message, kind=kind)
        self._last_pass = {"finished_at": now(), "duration_ms": round((time.monotonic() - started) * 1000), "error": message}
        self._last_pass_ok = False
        for key in keys:
            self._queue.done(key)
        self._notifier.status(f"error: {message}"[:200])

    def _dispatch(self, plan: plans.Plan, keys: set[str], full: bool, reasons: dict[str, str], reconcile_id: str,
                  dispatched: set[str], looked_at: float, *, declared: frozenset[str] | None = None) -> None:
        """Start executing the changed resources this pass is for; add their keys to ``dispatched`` as they go.

        A key is added once its execution is submitted, so that a pass failing halfway leaves
        that key to its execution, and the others to the pass's backoff.  A resource whose
        last execution ended after the look at libvirt began (at ``looked_at``) is not run on
        this plan, which saw that work half done: its key is queued again (and added to
        ``dispatched``, being handed on), for a pass that sees the outcome.  With ``declared``
        (a targeted pass), a VM not among those names is not pruned.
        """
        fallback = reasons.get(workqueue.EVERYTHING, "retry")
        work: dict[str, Future] = {}
        for resource in (r for phase in execute.phases(plan) for r in phase):
            if declared is not None and resource.kind == "VirtualMachine" and resource.name not in declared:
                claimed = False
            elif resource.key in keys:
                claimed = True
            elif full:
                claimed = self._queue.claim(resource.key)
            else:
                claimed = False
            if not claimed:
                continue
            reason = reasons.get(resource.key, fallback)
            if not self._subjects.start(resource.key, looked_at, reason):
                dispatched.add(resource.key)
                continue
            single = dataclasses.replace(plan, resources=(resource,))
            # Submitted in the executor's phases, so what is required starts first; whatever needs it waits for it.
            needs = [(key, work[key]) for key in resource.requires if key in work]
            try:
                future = self._executor.submit(self._execute, single, resource, reason, reconcile_id, needs)
            except BaseException:
                self._subjects.end(resource.key)  # release the claim: nothing will run for it
                raise
            dispatched.add(resource.key)
            work[resource.key] = future
            self._futures.add(future)
            future.add_done_callback(self._futures.discard)

    def _execute(self, single: plans.Plan, resource: plans.ResourcePlan, reason: str, reconcile_id: str,
                 needs: list[tuple[str, Future]]) -> bool:
        """Run one resource of a pass once what it requires has run; return whether it converged.

        A resource whose requirement did not converge is skipped, as the executor skips it
        (a network is not removed while a VM that failed to go away may still use it).
        """
        subject = {execute.SUBJECTS.get(resource.kind, "resource"): resource.name}
        with structlog.contextvars.bound_contextvars(reconcile_id=reconcile_id, **subject):
            blocked = not_ready(needs)
            if blocked:
                ok, error = False, f"skipped: {', '.join(blocked)} is not ready"
                log.warning("resource_skipped", reason=error)
            else:
                def run() -> execute.ApplyReport:
                    with self._lock_keeper.held():
                        return execute.execute(single, self._hypervisor, workers=1, cancel=self._cancel)
                ok, error = self._attempt(run)
            try:
                self._tally(resource, resource.key, reason, ok, error)
                self._note_execution(resource, ok, error)
            finally:
                self._subjects.end(resource.key)  # whatever happened above, the key must not stay in flight forever
        return ok

    def _close_connections(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._hypervisor is not None:
            self._hypervisor.close()
