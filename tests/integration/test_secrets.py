"""A token in a git URL or an image URL shows on no output channel: logs, /status, /healthz, /metrics, plans, errors.

Each test runs kvmops as a separate process, as an operator would, on the test driver,
and greps everything it printed or served for the secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

SECRET = "tkn-9f8e7d6c5b4a"
KVMOPS = [sys.executable, "-m", "reconciler", "--log-format", "json"]
ROOT = Path(__file__).parents[2]


def environment(tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("KVMOPS_")}
    return {**keep, "KVMOPS_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        return error.read().decode()


def test_a_token_in_the_git_url_is_in_no_log_event_nor_on_any_endpoint(tmp_path):
    """`run --git https://user:TOKEN@host/repo.git?access_token=TOKEN`: logs, /status, /healthz, /metrics and sd_notify are clean."""
    url = f"https://deploy:{SECRET}@127.0.0.1:9/infra/vms.git?access_token={SECRET}"
    directory = tempfile.mkdtemp(prefix="kvn-")  # a short path: AF_UNIX names are limited to 108 bytes
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(f"{directory}/notify")
    notify.settimeout(0.1)
    process = subprocess.Popen(
        [*KVMOPS, "run", "--git", url, "--connect", "test:///default", "--listen", "127.0.0.1:0",
         "--interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**environment(tmp_path), "NOTIFY_SOCKET": f"{directory}/notify"},
    )
    lines: list[str] = []
    try:
        address = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            event = json.loads(line)
            if event["event"] == "listener_started":
                address = event["address"]
            if event["event"] == "git_fetch_failed":
                break
        assert address, "".join(lines)
        notifications: list[str] = []
        deadline = time.monotonic() + 10
        while not any("waiting for a good git commit" in n for n in notifications) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                notifications.append(notify.recv(4096).decode())
        served = {path: fetch(f"http://{address}{path}") for path in ("/status", "/healthz", "/metrics")}
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
        with contextlib.suppress(TimeoutError):
            while True:
                notifications.append(notify.recv(4096).decode())
        notify.close()
        shutil.rmtree(directory, ignore_errors=True)
    lines.append(err)
    logs = "".join(lines)
    served["sd_notify"] = "\n".join(notifications)
    assert any("waiting for a good git commit" in n for n in notifications), notifications

    assert process.returncode == 0, logs
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    started = next(e for e in events if e["event"] == "controller_started")
    assert started["git"] == "https://deploy:***@127.0.0.1:9/infra/vms.git?access_token=***"
    assert any(e["event"] == "git_fetch_failed" for e in events), logs
    assert json.loads(served["/status"])["git"]["url"] == started["git"]
    for channel, text in {"logs": logs, "stdout": out, **served}.items():
        assert SECRET not in text, f"the token shows in {channel}:\n{text}"


def test_a_token_in_an_image_url_is_in_no_plan_output_and_no_apply_error(tmp_path):
    """An Image whose URL carries a password and a signed query: plan (text, json, markdown) and a failing apply never print them."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "image.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": "base"},
        "spec": {"pool": "default-pool", "sha256": "0" * 64, "format": "raw",
                 "source": {"url": f"http://mirror:{SECRET}@127.0.0.1:9/base.raw?X-Amz-Signature={SECRET}"}},
    }), encoding="utf-8")
    outputs = []
    for arguments in (["plan"], ["plan", "--output", "json"], ["plan", "--output", "markdown"], ["apply"]):
        result = subprocess.run(
            [*KVMOPS, *arguments, str(manifests), "--connect", "test:///default"],
            capture_output=True, text=True, env=environment(tmp_path), cwd=tmp_path, timeout=60,
        )
        outputs.append((arguments, result))

    plan_text = outputs[0][1].stdout
    assert "http://mirror:***@127.0.0.1:9/base.raw?X-Amz-Signature=***" in plan_text, plan_text
    apply = outputs[-1][1]
    assert apply.returncode == 1
    assert "cannot download http://mirror:***@127.0.0.1:9/base.raw" in apply.stdout + apply.stderr, apply.stdout + apply.stderr
    for arguments, result in outputs:
        assert SECRET not in result.stdout + result.stderr, f"kvmops {' '.join(arguments)} shows the token:\n{result.stdout}{result.stderr}"


def test_a_problem_quoting_a_url_with_a_token_shows_it_masked(tmp_path):
    """validate (text and JSON) reports a refused Image URL without the password and the token it carries."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "image.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": "base"},
        "spec": {"pool": "default-pool", "sha256": "0" * 64,
                 "source": {"url": f"ftp://mirror:{SECRET}@127.0.0.1/base.raw?token={SECRET}"}},
    }), encoding="utf-8")
    for arguments in (["validate"], ["validate", "--output", "json"]):
        result = subprocess.run([*KVMOPS, *arguments, str(manifests)], capture_output=True, text=True,
                                env=environment(tmp_path), cwd=tmp_path, timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "ftp://mirror:***@127.0.0.1/base.raw?token=***" in result.stdout, result.stdout
        assert SECRET not in result.stdout + result.stderr


def test_the_host_lock_file_names_its_holder_without_the_token_of_its_command_line(tmp_path, monkeypatch):
    """The world-readable lock file, and the LockHeld error read from it, show `run --git` with its token masked."""
    from reconciler import errors
    from reconciler.runtime import hostlock

    monkeypatch.setattr(sys, "argv", ["/opt/kvmops/bin/kvmops", "run", "--git", f"https://ci:{SECRET}@git.example.com/vms.git"])
    uri = f"qemu+ssh://root:{SECRET}@hv1/system"
    with hostlock.hold(tmp_path, uri):
        content = hostlock.lock_path(tmp_path, uri).read_text()
        try:
            with hostlock.hold(tmp_path, uri):
                raise AssertionError("the lock was taken twice")
        except errors.LockHeld as held:
            refusal = str(held)

    assert "kvmops run --git https://ci:***@git.example.com/vms.git" in content, content
    assert SECRET not in content
    assert "https://ci:***@git.example.com/vms.git" in refusal and "root:***@hv1" in refusal, refusal
    assert SECRET not in refusal
