"""A connection to libvirtd that breaks in the middle of the work, on the real libvirtd.

The shared system libvirtd is never stopped: kvmops connects through a proxy of its socket
(:mod:`tests.e2e.libvirtproxy`) that cuts the connection at a chosen call, either before
libvirtd hears of it or after libvirtd carried it out but before the answer arrives, which
is what a libvirtd stopped in the middle of a start looks like to its client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests import factories
from tests.e2e.commands import kvmops, output
from tests.e2e.libvirtproxy import (
    DOMAIN_CREATE, DOMAIN_DEFINE_XML, DOMAIN_DEFINE_XML_FLAGS, STORAGE_VOL_CREATE_XML, CuttingProxy,
)
from tests.e2e.test_controller import run_controller, running  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxy(host) -> Iterator[CuttingProxy]:
    """Return a proxy of libvirtd's socket in the test's work directory."""
    cutting = CuttingProxy(host.workdir / "libvirt.sock")
    yield cutting
    cutting.close()


@pytest.fixture
def lab_proxy(lab, lab_host) -> Iterator[CuttingProxy]:
    """Return a proxy of the lab libvirtd's socket (a daemon no other worker's tests keep busy)."""
    cutting = CuttingProxy(lab_host.workdir / "libvirt.sock", target=str(lab.hosts[0].socket))
    yield cutting
    cutting.close()


def write_vm(host, suffix: str) -> str:
    """Declare a tiny TCG VM that boots nothing; return its name."""
    name = host.name(suffix)
    factories.write(host.manifests, f"{suffix}.yaml", factories.vm(name, virtType="qemu", shutdownTimeout=1))
    return name


def test_apply_says_what_was_done_and_what_was_not_when_the_connection_breaks_during_a_start(host, proxy):
    """libvirtd starts the VM but its answer is lost: apply reports the define done, the start failed on a lost connection, and that nothing could be checked."""
    name = write_vm(host, "web")
    proxy.arm(DOMAIN_CREATE, drop="reply")

    result = kvmops(host, "apply", host.manifests, "--connect", proxy.uri)

    text = output(result)
    assert proxy.cuts == [DOMAIN_CREATE], text
    assert result.returncode == 1, text
    assert f"done: define domain {name}" in result.stdout, text
    assert f"FAILED: start {name}" in result.stdout or f"FAILED: start domain {name}" in result.stdout, text
    assert "the connection to libvirtd was lost" in result.stdout, text
    assert "The connection to libvirtd was lost, so the result could not be checked" in result.stdout, text
    assert "refused" not in text
    assert "Traceback" not in text
    assert host.wait(lambda: running(host, name), 10), "libvirtd did start it: only the answer was lost"

    again = kvmops(host, "apply", host.manifests)
    assert again.returncode == 0, output(again)


def test_an_eof_during_a_definition_is_a_lost_connection_and_the_steps_after_it_did_not_run(host, proxy):
    """libvirtd never receives the definition: the error says the connection was lost (not that libvirt refused), and the start is listed as not run."""
    name = write_vm(host, "web")
    proxy.arm(DOMAIN_DEFINE_XML, DOMAIN_DEFINE_XML_FLAGS, drop="request")

    result = kvmops(host, "apply", host.manifests, "--connect", proxy.uri)

    text = output(result)
    assert proxy.cuts, text
    assert result.returncode == 1, text
    assert f"FAILED: define domain {name}" in result.stdout, text
    assert "the connection to libvirtd was lost (End of file while reading data" in result.stdout, text
    assert "not run: start" in result.stdout, text
    assert "refused" not in text
    assert host.domain(name) is None, "the definition never reached libvirtd"


@pytest.mark.parametrize("cut", ["define", "volume"])
def test_a_creation_whose_answer_was_lost_is_finished_by_the_next_apply(host, proxy, cut):
    """What a host lost in the middle of an apply leaves (libvirtd did the call, kvmops never heard): the definition
    announcing the disk as pending, or the disk created under that announcement. The next apply reads it as an
    interrupted creation (intent before effect), finishes it, and the plan is then empty."""
    name = host.name("web")
    factories.write(host.manifests, "pools/pool.yaml", factories.pool(host.pool, str(host.pool_path)))
    factories.write(host.manifests, "web.yaml", factories.vm(
        name, virtType="qemu", runStrategy="Halted",
        disks=[factories.disk("root", host.pool, "8MiB", deletionPolicy="Delete")]))
    proxy.arm(*({"define": (DOMAIN_DEFINE_XML, DOMAIN_DEFINE_XML_FLAGS), "volume": (STORAGE_VOL_CREATE_XML,)}[cut]),
              drop="reply")

    result = kvmops(host, "apply", host.manifests, "--connect", proxy.uri)

    assert proxy.cuts and result.returncode == 1, output(result)
    assert "the connection to libvirtd was lost" in result.stdout, output(result)
    assert 'pending="true"' in host.domain(name).XMLDesc(0)  # the announcement was made before the effect
    volume = f"{name}-root.qcow2"
    assert (host.pool_path / volume).exists() == (cut == "volume")

    again = kvmops(host, "apply", host.manifests)

    assert again.returncode == 0, output(again)
    assert 'pending="true"' not in host.domain(name).XMLDesc(0)
    assert (host.pool_path / volume).exists()
    assert kvmops(host, "plan", host.manifests, "--detailed-exitcode").returncode == 0


def test_a_call_libvirtd_never_answers_while_its_keepalives_flow_is_abandoned_at_the_step_timeout(lab_host, lab_proxy):
    """libvirtd defines the VM, but its answer never comes while every keepalive is answered (a libvirtd whose call
    hangs): the connection is kept, although the call outlasts the keepalive's silence three times over, and the step
    is abandoned at --step-timeout, saying so; the next apply converges.

    On the lab's libvirtd: the machine's, busy with every other worker's guests, once let a keepalive go unanswered
    for more than the 2 s this test allows, and kvmops rightly gave that connection up (2 of 6 full runs)."""
    host, proxy = lab_host, lab_proxy
    name = host.name("web")
    factories.write(host.manifests, "web.yaml", factories.vm(name, virtType="qemu", runStrategy="Halted"))
    proxy.arm(DOMAIN_DEFINE_XML, DOMAIN_DEFINE_XML_FLAGS, drop="hold")
    started = time.monotonic()

    result = kvmops(host, "apply", host.manifests, "--connect", proxy.uri, "--host-timeout", "2", "--step-timeout", "6")

    took = time.monotonic() - started
    text = output(result)
    print(f"apply returned after {took:.1f} s")
    assert proxy.cuts, text
    assert result.returncode == 1, text
    # The step's own time: the apply's whole-host looks before and after it wait behind whatever other
    # tests start and destroy on this libvirtd (66 s once, in a full suite), which is no part of the step.
    step_ms = int(re.search(rf"FAILED: define domain {name} \[(\d+) ms\]", result.stdout).group(1))
    assert 6000 <= step_ms < 6000 + 3000, text
    assert 6 <= took < 6 + 170, text
    assert f"define domain {name} on host {proxy.uri} did not finish within 6 s: libvirtd still answers keepalive " \
           "probes, but this call has not returned" in result.stdout, text
    assert "stopped answering" not in text and "connection to libvirtd was lost" not in text
    assert "Traceback" not in text
    assert host.domain(name) is not None, "libvirtd did define it: only the answer was held back"

    again = kvmops(host, "apply", host.manifests)
    assert again.returncode == 0, output(again)
    assert kvmops(host, "plan", host.manifests, "--detailed-exitcode").returncode == 0


def test_healthz_clears_once_a_vm_whose_start_lost_its_answer_turns_out_converged(host, proxy, run_controller):
    """The controller's start succeeds in libvirtd but the connection breaks before the answer: after it reconnects and finds nothing to do, /healthz is 200."""
    name = write_vm(host, "web")
    proxy.arm(DOMAIN_CREATE, drop="reply")
    host.uri = proxy.uri  # the controller talks to libvirtd through the proxy

    controller = run_controller("--resync-interval", "3")

    failed = controller.wait_for("step_failed", vm=name, timeout=30)
    assert "the connection to libvirtd was lost" in failed["error"]
    assert proxy.cuts == [DOMAIN_CREATE]
    assert host.wait(lambda: running(host, name), 10), controller.log_text()
    assert host.wait(lambda: controller.healthz() == 200, 30), controller.get("/healthz")
    assert controller.status()["vms"][name]["last_error"] is None
    assert controller.process.poll() is None
