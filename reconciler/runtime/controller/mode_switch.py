"""``kvmops run`` follows the repository: a fleet controller while it declares Hosts, a single-host one otherwise.

A repository that gains its first ``kind: Host`` manifest, or loses its last, changes what
``kvmops run`` must be. The running controller notices it in a pass (it reads the
manifests anyway), plans nothing more, lets the steps in progress finish and returns;
:class:`SwitchingController` logs ``controller_mode_switched`` and starts the other one on
the same settings (and the same git source, already fetched), which plans from scratch.
Signals reach whichever controller runs.

Two cases are refused rather than followed, both failing closed: a controller told to
drive one URI (``--connect``) does not start driving every Host (its passes fail, saying
so, until it is restarted), and an agent (``--host NAME``) stays an agent, waiting for
its Host to be declared again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from reconciler import errors, logconfig
from reconciler.adapters import systemd
from reconciler.runtime.controller.fleet_loop import FleetController, is_fleet
from reconciler.runtime.controller.loop import Controller
from reconciler.runtime.controller.settings import ControllerSettings

log = logconfig.get_logger("kvmops.controller")


class SwitchingController:
    """Run the controller the manifests call for, switching between passes when they change their mind."""

    def __init__(self, settings: ControllerSettings, *, host: str | None = None,
                 reload: Callable[[], ControllerSettings] | None = None,
                 notifier: systemd.Notifier | None = None) -> None:
        """Raise :class:`~reconciler.errors.KvmopsError` when the manifests contradict the flags already.

        A repository declaring Hosts cannot be driven at one URI (``--connect``), and ``--host``
        needs a repository declaring Hosts (known at start only for a directory).
        """
        if settings.path and is_fleet(settings.path) and settings.uri_given:
            raise errors.KvmopsError("--connect: the manifests declare Hosts, each reached at its own spec.uri; drop "
                                     "--connect (--host NAME runs as one Host's agent)")
        if host is not None and settings.path and not is_fleet(settings.path):
            raise errors.KvmopsError(f"--host {host}: the manifests declare no Host; --host makes kvmops run one "
                                     "Host's agent in a fleet")
        self.settings = settings
        self.host = host
        self._reload = reload
        self._notifier = notifier
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self.current: Controller | FleetController | None = None
        self.switches = 0

    def first_mode(self) -> str:
        """Return the mode to start in: a fleet when the manifests declare Hosts, or for an agent.

        With git the manifests are not known before the first fetch: the fleet controller starts
        (it needs no connection to read them) unless one URI was asked for.
        """
        if self.host is not None:
            return "fleet"
        if self.settings.git is not None:
            return "single" if self.settings.uri_given else "fleet"
        return "fleet" if is_fleet(self.settings.path) else "single"

    def request_stop(self) -> None:
        """Stop whichever controller runs (SIGTERM, SIGINT); no other starts."""
        with self._lock:
            self._stopped.set()
            current = self.current
        if current is not None:
            current.request_stop()

    def request_reload(self) -> None:
        """Pass SIGHUP to whichever controller runs."""
        with self._lock:
            current = self.current
        if current is not None:
            current.request_reload()

    @property
    def listen_address(self) -> str | None:
        """Return the address the running controller's HTTP listener is bound to, if any."""
        current = self.current
        return current.listen_address if current is not None else None

    def run(self) -> int:
        """Run controllers until a stop; return the exit status of the last one."""
        mode, source = self.first_mode(), None
        while True:
            runner = self._make(mode, source)
            with self._lock:
                if self._stopped.is_set():
                    return 0
                self.current = runner
            status = runner.run()
            if runner.switch_to is None or self._stopped.is_set():
                return status
            log.info("controller_mode_switched", previous=mode, mode=runner.switch_to,
                     reason="the manifests declare Hosts" if runner.switch_to == "fleet" else "the manifests declare no Host")
            mode, source, self.settings = runner.switch_to, runner.source, runner.settings  # a SIGHUP's settings stay
            self.switches += 1

    def _make(self, mode: str, source) -> Controller | FleetController:
        options = {"notifier": self._notifier} if self._notifier is not None else {}
        if mode == "fleet":
            return FleetController(self.settings, host=self.host, reload=self._reload, source=source, **options)
        return Controller(self.settings, reload=self._reload, source=source, **options)
