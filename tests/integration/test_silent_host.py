"""A Host that accepts the connection and never answers holds no fleet command past its deadline.

The silent Host is a Unix socket that accepts libvirt's client and says nothing, as a
libvirtd that is stopped (SIGSTOP) or hung does; the other Host is libvirt's test driver.
Each command runs as a new ``kvmops`` process, so that a call left stuck on the silent
Host is also shown not to keep the process from exiting.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import factories
from tests.integration.conftest import node_uri

TIMEOUT = 1
SLACK = 10  # the process's start and the test driver's answer, on a busy machine


@pytest.fixture
def silent_socket(tmp_path: Path):
    """Return the path of a Unix socket that accepts every connection and never answers; closed afterwards."""
    path = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    accepted: list[socket.socket] = []
    closing = threading.Event()

    def accept() -> None:
        while not closing.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(connection)  # held open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        closing.set()
        server.close()
        for connection in accepted:
            connection.close()


@pytest.fixture
def fleet(tmp_path: Path, silent_socket: Path) -> Path:
    """Return a manifest directory: Host h1 (the test driver) with a VM pinned to it, Host h2 (the silent socket)."""
    (tmp_path / "h1").mkdir()
    manifests = tmp_path / "manifests"
    factories.write(manifests, "hosts.yaml", *[
        {"apiVersion": "kvmops/v1", "kind": "Host", "metadata": {"name": name}, "spec": {"uri": uri}}
        for name, uri in (("h1", node_uri(tmp_path / "h1")), ("h2", f"qemu+unix:///system?socket={silent_socket}"))
    ])
    vm = factories.vm("web", disks=[factories.disk("root", "default", "16MiB")])
    vm["spec"]["placement"] = {"host": "h1"}
    factories.write(manifests, "web.yaml", vm)
    return manifests


def kvmops(*argv: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reconciler", *argv], capture_output=True, text=True,
                          timeout=TIMEOUT * 2 + SLACK + 30)
    return done, time.monotonic() - started


def test_a_plan_reports_the_silent_host_unreachable_after_its_deadline_and_plans_the_other(fleet):
    done, seconds = kvmops("plan", str(fleet), "--host-timeout", str(TIMEOUT), "--no-color")

    assert seconds < TIMEOUT * 2 + SLACK, f"took {seconds:.1f} s"
    assert done.returncode == 1, done.stdout + done.stderr
    h2 = done.stdout.split("\nHost h2", 1)[1]
    assert f"did not answer within {TIMEOUT} s while being connected to" in " ".join(h2.split())
    h1 = done.stdout.split("\nHost h1", 1)[1].split("\nHost h2", 1)[0]
    assert "+ VirtualMachine web" in h1
    assert "Traceback" not in done.stderr


def test_doctor_fails_the_silent_host_after_its_deadline_and_checks_the_other(fleet):
    done, seconds = kvmops("doctor", str(fleet), "--host-timeout", str(TIMEOUT))

    assert seconds < TIMEOUT * 2 + SLACK, f"took {seconds:.1f} s"
    assert done.returncode == 1, done.stdout + done.stderr
    h1, h2 = done.stdout.split("\nHost h2", 1)
    assert "[ok  ] libvirtd" in h1 and "[ok  ] pool default" in h1, done.stdout
    # the Host's whole check and its connection each have the deadline: on a busy machine either may say so first
    assert re.search(rf"\[FAIL\] libvirtd: host \S+ did not answer within {TIMEOUT} s while being (checked|connected to)",
                     h2), done.stdout
    assert "Traceback" not in done.stderr


def test_validate_live_reports_the_silent_host_after_its_deadline_and_checks_the_other(fleet):
    done, seconds = kvmops("validate", str(fleet), "--live", "--host-timeout", str(TIMEOUT))

    assert seconds < TIMEOUT * 2 + SLACK, f"took {seconds:.1f} s"
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines if line.startswith("Host ")] == ["Host h1", "Host h2"]
    assert lines[0].endswith(": ok")
    assert f"UNREACHABLE: host h2 did not answer within {TIMEOUT} s while being connected to" in lines[1]
    assert lines[-1].endswith("; Hosts checked: h1; not checked: h2")
    assert "Traceback" not in done.stderr


def test_adopt_refuses_while_a_host_is_silent_and_returns_after_its_deadline(fleet):
    """adopt cannot check that the silent Host does not run the VM too: it fails closed, on time."""
    done, seconds = kvmops("adopt", "web", "--manifests", str(fleet), "--host", "h1", "--host-timeout", str(TIMEOUT))

    assert seconds < TIMEOUT * 2 + SLACK, f"took {seconds:.1f} s"
    assert done.returncode == 1, done.stdout + done.stderr
    assert "domain web is not adopted on Host h1: Host h2 does not answer (host h2 did not answer within" in done.stderr
    assert "Traceback" not in done.stderr
