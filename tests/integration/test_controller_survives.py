"""The controller keeps going, and tells the truth about its health, whatever a pass meets.

In-process on the shared ``test:///default`` host, with the fixtures of
:mod:`tests.integration.test_controller_inprocess`.  Failures come through real paths: a
manifest that makes the YAML layer raise, another kvmops finishing a VM's steps while the
controller waits for the host lock, and (where no real trigger exists) a service-manager
notifier that breaks, which the controller is given like any other notifier.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import structlog

from reconciler.adapters import systemd
from reconciler.core import planner
from reconciler.runtime import configuration, hostlock, reconcile
from reconciler.runtime.controller import Controller
from tests import factories
from tests.integration.conftest import SHARED_URI
from tests.integration.test_controller_inprocess import (  # noqa: F401 (fixtures)
    RunningController, converged, get, host, manifests, start_controller, vm_name, wait_until, write_manifest,
)

TIMESTAMP_MEMORY = """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  memory: !!timestamp 1GiB
"""


class BreakableNotifier(systemd.Notifier):
    """A notifier (no service manager behind it) whose messages raise while ``broken`` is set."""

    def __init__(self) -> None:
        super().__init__({})
        self.broken = threading.Event()

    def notify(self, *fields: str) -> bool:
        if self.broken.is_set():
            raise RuntimeError("the notification socket broke")
        return super().notify(*fields)


def test_a_manifest_that_makes_the_yaml_layer_raise_does_not_stop_the_controller(start_controller, manifests, vm_name):
    """`memory: !!timestamp 1GiB` dropped into the watched directory leaves run() going, /healthz at 503, then 200 once removed."""
    good, bad = vm_name("web"), vm_name("bad")
    write_manifest(manifests, "web.yaml", factories.vm(good))
    running = start_controller()
    assert wait_until(lambda: converged(running, good), 5)
    assert wait_until(lambda: get(running.url("/healthz"))[0] == 200, 2)

    (manifests / "bad.yaml").write_text(TIMESTAMP_MEMORY.format(name=bad), encoding="utf-8")

    assert wait_until(lambda: get(running.url("/healthz"))[0] == 503, 5), "the broken manifest never showed"
    assert wait_until(lambda: running.controller.status_document()["passes"] >= 1, 1)
    running.thread.join(1.5)  # time for a few retries, each of which used to end run()
    assert running.thread.is_alive(), f"run() returned {running.exit_status}"
    assert running.running(good)

    (manifests / "bad.yaml").unlink()

    assert wait_until(lambda: get(running.url("/healthz"))[0] == 200, 35), get(running.url("/healthz"))
    running.host.destroy_domain(good)
    assert wait_until(lambda: running.running(good), 5), "the controller no longer repairs drift"
    assert running.stop() < 5
    assert running.exit_status == [0]


def test_an_unexpected_exception_in_a_pass_is_logged_counted_shown_and_retried(start_controller, manifests, vm_name):
    """A pass that raises is one internal_error event with its reconcile_id, a metric, /status and /healthz; the next clean pass clears it."""
    name = vm_name("web")
    write_manifest(manifests, "web.yaml", factories.vm(name))
    notifier = BreakableNotifier()
    notifier.broken.set()

    with structlog.testing.capture_logs() as events:
        running = start_controller(notifier=notifier)
        assert wait_until(lambda: running.controller.status_document()["internal_errors"].get("pass"), 5)

        status, _content_type, body = get(running.url("/healthz"))
        assert status == 503
        assert "internal error: RuntimeError: the notification socket broke" in body
        document = running.controller.status_document()
        failure = document["internal_errors"]["pass"]
        assert failure["reconcile_id"] == document["last_pass"]["reconcile_id"]
        assert document["last_pass"]["error"] == "internal error: RuntimeError: the notification socket broke"
        assert running.metric("kvmops_errors_total", kind="internal") >= 1
        assert 'kvmops_errors_total{kind="internal"}' in get(running.url("/metrics"))[2]
        assert wait_until(lambda: running.running(name), 5), "work planned before the failure still runs"

        notifier.broken.clear()

        assert wait_until(lambda: get(running.url("/healthz"))[0] == 200, 10), get(running.url("/healthz"))
        assert running.controller.status_document()["internal_errors"] == {}
        assert running.thread.is_alive()

    crashes = [e for e in events if e["event"] == "internal_error"]
    assert crashes, "no internal_error event"
    assert all(e["where"] == "pass" and e.get("reconcile_id") for e in crashes), crashes
    assert "exc_info" in crashes[0], "the first occurrence carries its traceback"
    assert all("exc_info" not in e for e in crashes[1:]), "repeats of the same error are one line each"
    assert any(e["event"] == "internal_error_cleared" for e in events)


def test_a_vm_whose_plan_is_empty_is_not_failing_even_when_its_last_execution_failed(
    start_controller, manifests, vm_name, tmp_path: Path, host
):
    """Another kvmops creates the VM while the controller waits for the host lock; its own attempt fails, and /healthz still clears."""
    name = vm_name("web")
    running = start_controller()
    assert wait_until(lambda: get(running.url("/healthz"))[0] == 200, 5)

    with hostlock.hold(tmp_path / "state", SHARED_URI):  # as `kvmops apply` does
        write_manifest(manifests, "web.yaml", factories.vm(name))
        assert wait_until(lambda: running.controller.status_document()["vms"].get(name, {}).get("pending_actions"), 5)
        result = reconcile.apply(str(manifests), host, settings=planner.Settings(prune=False))
        assert result.converged, "the other kvmops converged the VM"

    # The controller's own define now finds the domain there and fails; its next pass has nothing to do.
    assert wait_until(lambda: running.metric("kvmops_errors_total", kind="execution") >= 1, 5)
    assert wait_until(lambda: get(running.url("/healthz"))[0] == 200, 10), get(running.url("/healthz"))
    entry = running.controller.status_document()["vms"][name]
    assert entry["last_error"] is None
    assert entry["pending_actions"] == []
    assert running.running(name)


def test_a_configuration_file_that_makes_the_yaml_layer_raise_on_sighup_does_not_stop_the_controller(
    manifests, vm_name, host, tmp_path: Path
):
    """SIGHUP re-reads a configuration file holding `resyncInterval: !!timestamp 1GiB`: the controller reports it, keeps its settings and goes on repairing drift."""
    name = vm_name("web")
    write_manifest(manifests, "web.yaml", factories.vm(name))
    config = tmp_path / "config.yaml"
    config.write_text(f"manifests: {manifests}\nconnect: {SHARED_URI}\n", encoding="utf-8")
    flags = {"path": None, "connect": None, "listen": "127.0.0.1:0", "state_dir": str(tmp_path / "state"), "no_prune": True}
    settings = configuration.controller_settings(flags, configuration.read(str(config)))
    controller = Controller(dataclasses.replace(settings, quiet_period=0.05), notifier=systemd.Notifier({}),
                            reload=lambda: configuration.controller_settings(flags, configuration.read(str(config))))
    running = RunningController(controller, manifests, host)
    running.thread = threading.Thread(target=lambda: running.exit_status.append(controller.run()), daemon=True)
    running.thread.start()
    try:
        assert wait_until(lambda: converged(running, name), 5)
        config.write_text("resyncInterval: !!timestamp 1GiB\n", encoding="utf-8")

        with structlog.testing.capture_logs() as events:
            controller.request_reload()
            assert wait_until(lambda: any(e["event"] in ("internal_error", "reload_failed") for e in events), 5)
            running.thread.join(1)

            assert running.thread.is_alive(), f"run() returned {running.exit_status}"
            assert controller.settings.resync_interval == settings.resync_interval, "the previous settings stay"
            host.destroy_domain(name)
            assert wait_until(lambda: running.running(name), 5), "the controller no longer repairs drift"
            assert wait_until(lambda: get(running.url("/healthz"))[0] == 200, 5), get(running.url("/healthz"))
    finally:
        running.stop()
    assert running.exit_status == [0]
