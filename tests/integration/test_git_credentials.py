"""Git credentials stay out of the clone's config and out of every git command line.

A real git serves a real repository over plain (dumb) HTTP from this process; a wrapper
named ``git`` first on PATH records the argv of every git command kvmops runs, then runs
the real git.  The server records the Authorization headers it receives, so the tests
also see that the credentials did reach the server.
"""

from __future__ import annotations

import base64
import functools
import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from reconciler.runtime import configuration
from reconciler.runtime.gitsource import GitSettings, GitSource

TOKEN = "s3cr3t-t0ken-value"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "kvmops tests", "GIT_AUTHOR_EMAIL": "tests@kvmops.invalid",
    "GIT_COMMITTER_NAME": "kvmops tests", "GIT_COMMITTER_EMAIL": "tests@kvmops.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, capture_output=True, env={**os.environ, **GIT_ENV}, check=True)


@pytest.fixture
def server(tmp_path: Path):
    """Return (base URL, Authorization headers received) of a dumb-HTTP server of repo.git."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "vm.yaml").write_text("apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata: {name: web}\nspec: {memory: 64MiB}\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "one VM")
    served = tmp_path / "served"
    served.mkdir()
    git(served, "clone", "-q", "--bare", str(work), "repo.git")
    git(served / "repo.git", "update-server-info")
    received: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            received.append(self.headers.get("Authorization", ""))
            if not self.headers.get("Authorization"):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="repo"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *_args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", received
    httpd.shutdown()


@pytest.fixture
def argv_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a `git` first on PATH that appends its argv to the returned file, then runs the real git."""
    real = shutil.which("git")
    assert real is not None
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    log = tmp_path / "argv.log"
    wrapper = wrappers / "git"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{os.environ['PATH']}")
    return log


def secrets_left(state_dir: Path) -> list[str]:
    """Return every file under ``state_dir`` holding the token."""
    return [str(p) for p in state_dir.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_a_token_in_the_url_reaches_the_server_but_neither_the_clone_s_config_nor_any_argv(server, argv_log, tmp_path):
    """Cloning and fetching https://user:TOKEN@… : the server gets the credentials; the state directory and git's argv never hold them."""
    address, received = server
    source = GitSource(GitSettings(url=f"http://kvmops:{TOKEN}@{address}/repo.git"), tmp_path / "state")
    assert source.poll() is not None
    source.poll()  # a fetch into the existing clone, too
    assert f"Basic {base64.b64encode(f'kvmops:{TOKEN}'.encode()).decode()}" in received
    assert secrets_left(tmp_path / "state") == []
    log = argv_log.read_text()
    assert "clone" in log and "fetch" in log and TOKEN not in log


def test_the_url_and_token_may_come_from_files_named_in_the_configuration(server, argv_log, tmp_path):
    """git.urlFile and git.tokenFile keep both off the command line; the token is sent, and stored nowhere."""
    address, received = server
    (tmp_path / "url").write_text(f"http://kvmops@{address}/repo.git\n")
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"git:\n  urlFile: {tmp_path / 'url'}\n  tokenFile: {tmp_path / 'token'}\nstateDir: {tmp_path / 'state'}\n")
    settings = configuration.controller_settings({}, configuration.read(str(config)))
    source = GitSource(settings.git, settings.state_dir)
    assert source.poll() is not None
    assert f"Basic {base64.b64encode(f'kvmops:{TOKEN}'.encode()).decode()}" in received
    assert secrets_left(tmp_path / "state") == [] and TOKEN not in argv_log.read_text()
