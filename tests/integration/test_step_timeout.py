"""No call of a one-shot command waits for ever: keepalives on its connections, and a deadline on each step.

A libvirtd that falls silent is given up by the connection's keepalive (about
``--host-timeout`` seconds: :class:`~reconciler.adapters.hypervisor.KeepAlive`); a libvirtd that
answers but whose call never returns (a hung storage mount, a stuck QEMU) has the step
abandoned after ``--step-timeout`` seconds. Here on libvirt's test driver, whose define is
made slow for one VM (the real define, run late); on real daemons stopped with SIGSTOP:
tests/e2e/test_fleet_timeout.py; a reply held back by a proxy: tests/e2e/test_connection_lost.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import libvirt
import pytest

from reconciler import cli, errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import plan as plans
from reconciler.runtime import command_settings, execute
from tests import factories
from tests.integration.conftest import pin_connection

# --- the keepalive a one-shot command's connections get -------------------------------------------------


@pytest.mark.parametrize("seconds", [1, 2, 3, 7, 10, 11, 30, 3600])
def test_a_keepalive_gives_a_silent_libvirtd_up_after_about_the_host_timeout(seconds):
    keepalive = hv.KeepAlive.within(seconds)

    assert keepalive.count >= 1  # 0 would close an idle connection: another meaning altogether
    assert keepalive.interval >= 1
    assert max(2, seconds) <= keepalive.silence <= max(2, seconds) + keepalive.interval
    assert keepalive.count >= 3 or seconds < 5  # one lost probe is not the end


def test_the_default_keepalive_is_the_default_host_timeouts():
    assert hv.DEFAULT_KEEPALIVE.silence == 10


def test_in_process_drivers_have_no_socket_to_watch(uri):
    assert hv.in_process(uri) and hv.in_process("test:///default") and hv.in_process("qemu:///embed?root=/tmp/x")
    assert not hv.in_process("qemu:///system")
    assert not hv.in_process("test+unix:///default")  # the test driver, in a daemon
    assert not hv.in_process("qemu+ssh://kvm1/system")
    with hv.Hypervisor.open(uri) as hypervisor:
        assert hypervisor.keepalive is None  # nothing to probe, and no event loop started for it


def test_a_connection_given_up_by_its_keepalive_is_lost_and_says_why():
    libvirt.virResetLastError()
    given_up = libvirt.libvirtError("internal error: connection closed due to keepalive timeout")

    error = hv.translate(given_up, "cannot define domain web")

    assert isinstance(error, errors.ConnectionLost) and error.retryable
    assert str(error).startswith("cannot define domain web: libvirtd stopped answering (no reply to keepalive probes")
    assert "may or may not have taken effect" in str(error)


# --- the step deadline ----------------------------------------------------------------------------------


def test_the_step_timeout_is_the_flag_else_the_configuration_files_else_an_hour_and_zero_is_none(tmp_path: Path):
    config = tmp_path / "kvmops.yaml"
    config.write_text("stepTimeout: 120\n", encoding="utf-8")

    assert command_settings.step_timeout(None, None) == 3600.0
    assert command_settings.step_timeout(str(config), None) == 120.0
    assert command_settings.step_timeout(str(config), 30.0) == 30.0
    assert command_settings.step_timeout(str(config), 0.0) is None
    config.write_text("stepTimeout: 0\n", encoding="utf-8")
    assert command_settings.step_timeout(str(config), None) is None


def test_a_negative_step_timeout_is_refused_in_one_line(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as usage:
        cli.main(["apply", str(tmp_path), "--step-timeout", "-1"])
    assert usage.value.code == 1 and "between 0 (no limit) and 604800 seconds" in capsys.readouterr().err

    config = tmp_path / "kvmops.yaml"
    config.write_text("stepTimeout: -5\n", encoding="utf-8")
    status = cli.main(["apply", str(tmp_path), "--connect", "test:///default", "--config", str(config)])
    err = capsys.readouterr().err
    assert status == 1 and "stepTimeout" in err and "Traceback" not in err


def test_a_stop_gets_the_step_timeout_on_top_of_its_wait_for_the_guest():
    stop = plans.StopDomain("web", timeout=60.0)
    define = plans.DefineDomain("web", "", "<domain/>", create=True)

    assert execute.step_deadline(stop, 30.0) == 90.0
    assert execute.step_deadline(define, 30.0) == 30.0
    assert execute.step_deadline(stop, None) is None


class SlowDefinition:
    """Holds the definition of one domain back until released (then libvirt defines it, late), as a libvirtd whose
    call does not return would; every other definition goes through at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.name = name
        self.release = threading.Event()
        self.landed = threading.Event()
        real = hv.Hypervisor.define_domain

        def define_domain(hypervisor: hv.Hypervisor, xml: str, domain: str) -> None:
            if domain == self.name and not self.landed.is_set():
                assert self.release.wait(30), "the held definition was never released"
                real(hypervisor, xml, domain)
                self.landed.set()
                return
            real(hypervisor, xml, domain)

        monkeypatch.setattr(hv.Hypervisor, "define_domain", define_domain)


def test_a_step_that_does_not_return_is_abandoned_at_its_deadline_and_the_other_vms_converge(
        hypervisor: hv.Hypervisor, manifest_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    factories.write(manifest_dir, "vms.yaml", factories.vm("stuck", runStrategy="Halted"),
                    factories.vm("fine-1", runStrategy="Halted"), factories.vm("fine-2", runStrategy="Halted"))
    pin_connection(monkeypatch, hypervisor)
    slow = SlowDefinition(monkeypatch, "stuck")
    started = time.monotonic()

    status = cli.main(["apply", str(manifest_dir), "--connect", hypervisor.uri, "--step-timeout", "0.5"])

    took = time.monotonic() - started
    out = capsys.readouterr().out
    assert status == cli.EXIT_ERROR
    assert took < 10
    assert f"FAILED: define domain stuck on host {hypervisor.uri}" not in out  # the step is the step, the host is said once
    assert f"define domain stuck on host {hypervisor.uri} did not finish within 0.5 s" in out
    assert "--step-timeout" in out and "may still take effect" in out
    assert {"fine-1", "fine-2"} <= {record.name for record in hypervisor.list_domains()}
    assert "✓ VirtualMachine fine-1: converged" in out and "✓ VirtualMachine fine-2: converged" in out
    assert "stuck" not in {record.name for record in hypervisor.list_domains()}

    slow.release.set()  # the abandoned call ends after all: libvirt defines the VM, with its volumes still to come
    assert slow.landed.wait(10)
    assert "stuck" in {record.name for record in hypervisor.list_domains()}

    assert cli.main(["apply", str(manifest_dir), "--connect", hypervisor.uri]) == cli.EXIT_OK
    capsys.readouterr()
    assert cli.main(["plan", str(manifest_dir), "--connect", hypervisor.uri, "--detailed-exitcode"]) == cli.EXIT_OK


def test_an_abandoned_definition_that_lands_after_the_next_plan_was_made_is_refused_not_overwritten(
        hypervisor: hv.Hypervisor, manifest_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The worst timing: the abandoned call takes effect between the next pass's look and its own definition. The
    executor's last-moment check refuses to overwrite the domain that appeared; the pass after that converges."""
    factories.write(manifest_dir, "vms.yaml", factories.vm("stuck", runStrategy="Halted"))
    slow = SlowDefinition(monkeypatch, "stuck")
    from reconciler.runtime import reconcile

    settings = command_settings.planning(str(manifest_dir), no_prune=True, allow_empty=False, virt_type="auto",
                                         shutdown_timeout=1.0, scope=None, config=None, allow_mass_prune=False)
    first = reconcile.apply(str(manifest_dir), hypervisor, settings=settings, step_timeout=0.3)
    assert [o.status for o in first.report.outcomes] == ["failed"]
    assert first.report.outcomes[0].retryable

    planned = reconcile.make_plan(str(manifest_dir), hypervisor, settings=settings)  # looks: "stuck" is absent
    slow.release.set()
    assert slow.landed.wait(10)  # ... and now it is there
    second = reconcile.apply(str(manifest_dir), hypervisor, settings=settings, planned=planned, step_timeout=5)

    assert [o.status for o in second.report.outcomes] == ["failed"]
    assert "appeared after the plan was made; kvmops will not overwrite it" in second.report.outcomes[0].error
    third = reconcile.apply(str(manifest_dir), hypervisor, settings=settings, step_timeout=5)
    assert third.converged


# --- a connection whose call was given up ----------------------------------------------------------


def test_an_abandoned_connection_is_left_open_for_the_call_still_running_on_it():
    """Closing a connection while a call given up on it still runs may free what that call uses next: a test whose
    abandoned look ran on into its connection's close crashed the whole process (SIGSEGV in getCapabilities)."""
    hypervisor = hv.Hypervisor.open("test:///default")
    hypervisor.abandon()
    hypervisor.close()

    assert hypervisor.list_domains()  # still open: the call that was given up may go on with it
    hypervisor.abandoned = False
    hypervisor.close()
    with pytest.raises(errors.KvmopsError):
        hypervisor.list_domains()
