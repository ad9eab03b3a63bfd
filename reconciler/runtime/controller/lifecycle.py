"""What both controllers do alike: the main loop, and stop, switch, reload, wake-ups and shutdown.

:class:`ControllerLifecycle` is a part of :class:`~reconciler.runtime.controller.Controller`
and of :class:`~reconciler.runtime.controller.fleet_loop.FleetController`, as
:mod:`.status` is. It needs the attributes both set up alike (``settings``, ``_stop``,
``_cancel``, ``_queue``, ``_reasons``, ``_reasons_lock``, ``_futures``, ``_source``,
``_server``, ``_watcher``, ``_debouncer``, ``_git_follower``, ``_notifier``,
``_reload_settings``, ``_reload_requested``, ``_directory_revision``, ``switch_to``,
``_loop_backoff``, ``metrics``), the routes of :mod:`.status`, ``_turn()`` (one turn of
its loop), ``_log`` (the controller's logger), and the hooks ``_log_start()``,
``_watch_directory()`` and ``_close_connections()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from reconciler import errors
from reconciler.adapters import git as gitcli
from reconciler.adapters import hypervisor as hv
from reconciler.adapters.statusserver import StatusServer
from reconciler.core import plan as plans
from reconciler.runtime import execute, gitsource, workqueue
from reconciler.runtime.controller.timers import LoopTimers, next_resync


# Why a key woken by one of these was drift: someone changed the host behind kvmops' back.
DRIFT = ("libvirt", "transition", "reconnect", "resync")
# A pass woken for VMs by one of these alone looks at those VMs only, not at the whole host.
TARGETED = ("libvirt", "transition")


class ControllerLifecycle:
    """The main loop, stopping, switching mode, reloading, waking keys and shutting down, for both controllers."""

    # -- control from outside (signal handlers, the mode switch, tests) -----------------

    def request_stop(self) -> None:
        """Start no new pass or step, finish the steps in progress and return from :meth:`run`."""
        self._stop.set()
        self._cancel.set()
        self._queue.close()

    def request_switch(self, mode: str, reason: str) -> None:
        """Start no new pass, let the steps in progress finish, and return from :meth:`run` with ``switch_to`` set."""
        if self.switch_to is None:
            self._log.info("controller_switching", to=mode, reason=reason, in_flight=len(self._futures))
        self.switch_to = mode
        self._stop.set()
        self._queue.close()

    def request_reload(self) -> None:
        """Re-read the configuration before the next pass (SIGHUP), then plan everything."""
        self._reload_requested.set()
        self._wake(workqueue.EVERYTHING, "reload")

    @property
    def source(self) -> gitsource.GitSource | None:
        """Return the git source followed, to hand over to the next controller when the mode switches."""
        return self._source

    @property
    def listen_address(self) -> str | None:
        """Return the address the HTTP listener is bound to, if any."""
        return self._server.address if self._server is not None else None

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Run until :meth:`request_stop` (or a switch of mode); return the exit status (0 after a clean stop)."""
        hv.start_event_loop()
        if self.settings.listen:
            self._server = StatusServer(
                self.settings.listen,
                {"/healthz": self._healthz, "/status": self._status_route, "/metrics": self._metrics_route},
                public={"/healthz": self._healthz_public},
                token_file=self.settings.listen_token_file, insecure=self.settings.listen_insecure,
            )
            self._server.start()
            self._log.info("listener_started", address=self._server.address)
        self._log_start()
        if self._git_follower is not None:
            self._git_follower.start()
        else:
            self._watch_directory()
        if self._source is None or self._source.applied is not None:
            self._wake(workqueue.EVERYTHING, "start")
        timers = LoopTimers(next_resync=next_resync(self.settings.resync_interval), next_watchdog=time.monotonic())
        try:
            while not self._stop.is_set():
                try:
                    self._turn(timers)
                except Exception as exc:  # nothing a pass meets may end the controller: back off and go on
                    self._loop_backoff = min(max(self._loop_backoff * 2, 0.5), 30.0)
                    self._survive("loop", exc, retry_in=self._loop_backoff)
                    self._stop.wait(self._loop_backoff)
                else:
                    self._loop_backoff = 0.0
                    self._recovered("loop")
        finally:
            self._shutdown()
        return 0

    def _tend(self, timers: LoopTimers, now: float) -> None:
        """At the start of each turn: tell systemd's watchdog the loop lives, when due; reload if asked (SIGHUP)."""
        if self._notifier.watchdog_interval and now >= timers.next_watchdog:
            self._notifier.watchdog()
            timers.next_watchdog = now + self._notifier.watchdog_interval
        if self._reload_requested.is_set():
            self._reload_requested.clear()
            self._reload()

    def _log_start(self) -> None:
        """Log the controller's start: what it drives, from which manifests."""
        raise NotImplementedError

    def _watch_directory(self) -> None:
        """Start watching the manifest directory (no git source is followed)."""
        raise NotImplementedError

    # -- one resource's execution --------------------------------------------------------

    def _attempt(self, run: Callable[[], execute.ApplyReport]) -> tuple[bool, str | None]:
        """Run one resource's execution (``run``); return whether it converged and, if not, why. Never raises."""
        try:
            report = run()
        except errors.KvmopsError as exc:
            return False, str(exc)
        except Exception as exc:  # a worker must never die silently
            self.metrics.inc("kvmops_errors_total", kind="internal")
            self._log.exception("execution_crashed")
            return False, f"internal error: {type(exc).__name__}: {exc}"
        outcome = report.outcomes[0] if report.outcomes else None
        ok = outcome is not None and outcome.status == "converged"
        return ok, None if ok else (outcome.error if outcome else "cancelled")

    def _tally(self, resource: plans.ResourcePlan, key: str, reason: str, ok: bool, error: str | None) -> None:
        """Count an execution of ``key`` woken for ``reason``: forgotten when it converged, else retried later."""
        for action in resource.actions:
            self.metrics.inc("kvmops_actions_total", action=action.value, result="ok" if ok else "error")
        if ok:
            self._queue.forget(key)
            if reason in DRIFT:
                self.metrics.inc("kvmops_drift_repairs_total")
                self._log.info("drift_repaired", actions=[a.value for a in resource.actions], trigger=reason)
        elif not self._cancel.is_set():
            self.metrics.inc("kvmops_errors_total", kind="execution")
            delay = self._queue.retry_later(key)
            self._log.warning("retry_scheduled", error=error, delay_s=round(delay, 2), failures=self._queue.failures(key))

    # -- keys and manifests -------------------------------------------------------------

    def _wake(self, key: str, source: str) -> None:
        with self._reasons_lock:
            self._reasons.setdefault(key, set()).add(source)
        self.metrics.inc("kvmops_wakeups_total", source=source)
        self._queue.add(key)

    def _take_reason(self, key: str) -> str:
        """Return why ``key`` was woken: drift (libvirt, transition, reconnect, resync) wins over a manifest change."""
        with self._reasons_lock:
            sources = self._reasons.pop(key, {"retry"})
        return next((source for source in DRIFT if source in sources), sorted(sources)[0])

    def _manifest_path(self) -> str | None:
        if self._source is not None:
            return str(self._source.manifests) if self._source.manifests else None
        return self.settings.path

    def _revision(self, reasons: set[str]) -> str:
        """Return the manifests' git revision; a directory's is asked of git only when the files may have changed."""
        if self._source is not None:
            return self._source.applied or ""
        if self._directory_revision is None or reasons - {"libvirt", "retry"}:
            self._directory_revision = gitcli.describe(self.settings.path)
        return self._directory_revision

    # -- reload and shutdown ------------------------------------------------------------

    def _reload(self) -> None:
        if self._reload_settings is None:
            self._log.info("reload_ignored", reason="no configuration file")
            return
        try:
            settings = self._reload_settings()
        except errors.KvmopsError as exc:
            self._log.error("reload_failed", error=str(exc), kept="previous configuration")
            return
        kept = [name for name in ("uri", "listen", "listen_token_file", "listen_insecure", "workers", "state_dir")
                if getattr(settings, name) != getattr(self.settings, name)]
        if kept:
            self._log.warning("reload_needs_restart", settings=kept)
            settings = dataclasses.replace(settings, **{name: getattr(self.settings, name) for name in kept})
        self.settings = settings
        self._log.info("configuration_reloaded", manifests=settings.path or None, resync_interval=settings.resync_interval)

    def _shutdown(self) -> None:
        switching = self.switch_to is not None and not self._cancel.is_set()
        if not switching:
            self._notifier.stopping()
            self._cancel.set()
        self._log.info("controller_stopping", in_flight=len(self._futures), switching_to=self.switch_to)
        self._queue.close()
        self._debouncer.cancel()
        unfinished = finish_in_flight(self._futures, self._cancel, self.settings.termination_grace)
        if self._watcher is not None:
            self._watcher.stop()
        if self._server is not None:
            self._server.stop()
        self._close_connections()
        if self._git_follower is not None:
            self._git_follower.join(timeout=self.settings.termination_grace)
        self._log.info("controller_stopped", unfinished=unfinished)

    def _close_connections(self) -> None:
        """Close what the controller holds open to libvirt (its workers are done or abandoned)."""
        raise NotImplementedError


def not_ready(needs: list[tuple[str, Future]]) -> list[str]:
    """Return the keys among ``needs`` (key, its execution) that did not converge: a resource needing them is skipped."""
    blocked = []
    for key, needed in needs:
        try:
            if needed.result() is False:
                blocked.append(key)
        except Exception:  # noqa: BLE001 - its own worker logged it; here it only means "not ready"
            blocked.append(key)
    return blocked


def finish_in_flight(futures: set[Future], cancel: threading.Event, grace: float) -> int:
    """Wait for ``futures``; return how many are still running.

    While ``cancel`` is set (a stop), wait at most ``grace`` seconds; otherwise (a switch of
    mode) wait until they end, or until ``cancel`` is set and then ``grace`` more seconds.
    """
    deadline = time.monotonic() + grace if cancel.is_set() else None
    for future in list(futures):
        while not future.done():
            if deadline is None and cancel.is_set():
                deadline = time.monotonic() + grace  # a SIGTERM during a switch
            remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if remaining <= 0:
                break
            with contextlib.suppress(Exception):
                future.result(timeout=remaining)
    return sum(1 for f in futures if not f.done())
