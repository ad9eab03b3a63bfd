"""Who may read the HTTP listener: a bearer token for /status and /metrics, loopback unless told otherwise.

Real sockets against the real server and the real ``kvmops run`` command line; the token
lives in a file, as an operator would write it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import errors, logconfig
from reconciler.adapters.statusserver import StatusServer, is_loopback
from reconciler.runtime import configuration

TOKEN = "s3cr3t-token-of-the-listener"
REPOSITORY = Path(__file__).resolve().parents[2]


def full_health() -> tuple[int, str, str]:
    return 503, "text/plain; charset=utf-8", "git branch tip deadbeef was rejected\n"


def public_health() -> tuple[int, str, str]:
    return 503, "text/plain; charset=utf-8", "unavailable\n"


def status() -> tuple[int, str, str]:
    return 200, "application/json", json.dumps({"vms": {"web": {}}})


def metrics() -> tuple[int, str, str]:
    return 200, "text/plain; version=0.0.4", "kvmops_connected 1\n"


def request(address: str, path: str, token: str | None = None, scheme: str = "Bearer") -> tuple[int, dict, str]:
    """Return (status, headers, body) of GET ``path``, with ``Authorization: <scheme> <token>`` when a token is given."""
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://{address}{path}", headers=headers), timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "listen-token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def guarded(token_file) -> Iterator[StatusServer]:
    server = StatusServer("127.0.0.1:0", {"/healthz": full_health, "/status": status, "/metrics": metrics},
                          public={"/healthz": public_health}, token_file=str(token_file))
    server.start()
    yield server
    server.stop()


# -- the token --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/status", "/metrics"])
def test_status_and_metrics_without_a_token_answer_401_with_a_bearer_challenge(guarded, path):
    """No Authorization header: 401, WWW-Authenticate names the Bearer scheme, and the body holds none of the view."""
    code, headers, body = request(guarded.address, path)

    assert code == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="kvmops"'
    assert "Authorization: Bearer" in body
    assert "web" not in body and "kvmops_connected" not in body


@pytest.mark.parametrize("presented", ["wrong", TOKEN + "x", TOKEN[:-1], "", f"{TOKEN} {TOKEN}"])
def test_a_wrong_token_is_refused_like_no_token(guarded, presented):
    """A token that differs by one byte, is a prefix, is longer, or empty gets the same 401."""
    code, headers, _body = request(guarded.address, "/status", presented)

    assert code == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="kvmops"'


def test_the_token_under_another_scheme_is_refused(guarded):
    """Basic (or any scheme but Bearer) carrying the right token does not open the door."""
    assert request(guarded.address, "/status", TOKEN, scheme="Basic")[0] == 401


@pytest.mark.parametrize("path", ["/status", "/metrics"])
def test_the_right_token_reads_status_and_metrics(guarded, path):
    """Authorization: Bearer with the file's token (its trailing newline ignored) gets the view itself."""
    code, _headers, body = request(guarded.address, path, TOKEN)

    assert code == 200
    assert "web" in body or "kvmops_connected 1" in body


def test_the_bearer_scheme_name_is_case_insensitive(guarded):
    """RFC 7235: the scheme is matched without regard to case."""
    assert request(guarded.address, "/status", TOKEN, scheme="bearer")[0] == 200


def test_healthz_answers_anyone_but_tells_only_token_holders_why(guarded):
    """A probe without the token gets the status code and 'unavailable'; with it, the reason."""
    assert request(guarded.address, "/healthz")[::2] == (503, "unavailable\n")
    assert request(guarded.address, "/healthz", "wrong")[::2] == (503, "unavailable\n")
    assert request(guarded.address, "/healthz", TOKEN)[::2] == (503, "git branch tip deadbeef was rejected\n")


def test_a_rotated_token_works_without_a_restart_and_the_old_one_stops(guarded, token_file):
    """The file is read for each request: the new token opens, the old one no longer does."""
    token_file.write_text("the-next-token\n", encoding="utf-8")

    assert request(guarded.address, "/status", "the-next-token")[0] == 200
    assert request(guarded.address, "/status", TOKEN)[0] == 401


def test_a_token_file_that_disappears_shuts_everyone_out_and_is_logged_once_without_the_token(guarded, token_file, tmp_path):
    """Fail closed: 503 for everyone, /healthz still answers its bare word, one log line naming the file."""
    log = tmp_path / "listener.log"
    with log.open("w", encoding="utf-8") as sink:
        logconfig.configure(format="json", level="info", stream=sink)
        try:
            request(guarded.address, "/status", TOKEN)  # a token that worked is presented again and again
            token_file.unlink()

            assert request(guarded.address, "/status", TOKEN)[0] == 503
            assert request(guarded.address, "/metrics", TOKEN)[0] == 503
            assert request(guarded.address, "/healthz", TOKEN)[::2] == (503, "unavailable\n")
        finally:
            logconfig.configure(format="console", level="warning")

    logged = log.read_text(encoding="utf-8")
    assert logged.count("http_token_unreadable") == 1
    assert str(token_file) in logged
    assert TOKEN not in logged


@pytest.mark.parametrize(("content", "message"), [
    ("", "the listener's token file is empty"),
    ("  \n", "the listener's token file is empty"),
    ("two words\n", "one word of printable ASCII"),
])
def test_an_unusable_token_file_stops_the_start_with_one_line(tmp_path, content, message):
    """An empty or malformed token file is refused when the listener starts, naming the file."""
    path = tmp_path / "token"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(errors.KvmopsError, match=message) as raised:
        StatusServer("127.0.0.1:0", {"/status": status}, token_file=str(path))
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_missing_token_file_stops_the_start(tmp_path):
    with pytest.raises(errors.KvmopsError, match="cannot read the listener's token file"):
        StatusServer("127.0.0.1:0", {"/status": status}, token_file=str(tmp_path / "absent"))


def test_without_a_token_file_every_route_answers_anyone_on_loopback():
    """No token configured (loopback only): today's behaviour, the full views for everyone."""
    server = StatusServer("127.0.0.1:0", {"/healthz": full_health, "/status": status}, public={"/healthz": public_health})
    server.start()
    try:
        assert request(server.address, "/status")[0] == 200
        assert request(server.address, "/healthz")[::2] == (503, "git branch tip deadbeef was rejected\n")
    finally:
        server.stop()


# -- loopback ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("10.0.0.1", False), ("localhost", False),
])
def test_only_loopback_ip_addresses_count_as_loopback(host, loopback):
    """The check is made on the address actually bound, so a host name never reaches it."""
    assert is_loopback(host) is loopback


def test_listening_on_all_addresses_without_a_token_is_refused_in_one_line():
    """0.0.0.0 without a token file and without insecure: a KvmopsError telling both ways out; nothing stays bound."""
    with pytest.raises(errors.KvmopsError) as raised:
        StatusServer("0.0.0.0:0", {"/status": status})

    message = str(raised.value)
    assert message.startswith("refusing to listen on 0.0.0.0:0")
    assert "listen.tokenFile" in message and "listen.insecure: true" in message
    assert "\n" not in message


def test_listening_on_all_addresses_is_allowed_with_a_token_or_when_told_insecure(token_file):
    for options in ({"token_file": str(token_file)}, {"insecure": True}):
        server = StatusServer("0.0.0.0:0", {"/status": status}, **options)
        try:
            server.start()
            port = server.address.rpartition(":")[2]
            assert request(f"127.0.0.1:{port}", "/status", TOKEN)[0] == 200
        finally:
            server.stop()


def test_a_host_name_is_judged_by_the_address_it_binds():
    """'localhost' binds a loopback address and is accepted without a token."""
    server = StatusServer("localhost:0", {"/status": status})
    server.stop()


# -- configuration and the command line ---------------------------------------------------------


NO_FLAGS = {
    "path": "/srv/manifests", "connect": None, "state_dir": None, "allow_empty": None, "no_prune": None,
    "virt_type": None, "shutdown_timeout": None, "resync_interval": None, "quiet_period": None, "parallel": None,
    "termination_grace": None, "listen": None, "listen_token_file": None, "listen_insecure": None,
}


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kvmops.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_the_listen_mapping_gives_address_token_file_and_insecure(tmp_path):
    path = write_config(tmp_path, """\
        listen:
          address: 0.0.0.0:9474
          tokenFile: /etc/kvmops/listen-token
        """)

    settings = configuration.controller_settings(NO_FLAGS, configuration.read(path))

    assert (settings.listen, settings.listen_token_file, settings.listen_insecure) == (
        "0.0.0.0:9474", "/etc/kvmops/listen-token", False)


def test_the_short_listen_form_is_still_the_address_and_flags_override_the_file(tmp_path):
    path = write_config(tmp_path, "listen: 127.0.0.1:9474\n")
    config = configuration.read(path)

    assert configuration.controller_settings(NO_FLAGS, config).listen == "127.0.0.1:9474"
    flags = {**NO_FLAGS, "listen": "0.0.0.0:1", "listen_token_file": "/t", "listen_insecure": True}
    settings = configuration.controller_settings(flags, config)
    assert (settings.listen, settings.listen_token_file, settings.listen_insecure) == ("0.0.0.0:1", "/t", True)


def test_a_misspelt_listen_field_names_the_line_and_the_right_fields(tmp_path):
    path = write_config(tmp_path, """\
        listen:
          address: 0.0.0.0:9474
          tokenfile: /etc/kvmops/listen-token
        """)

    with pytest.raises(errors.ManifestError) as raised:
        configuration.read(path)
    assert f"{path}:1: listen: write HOST:PORT" in str(raised.value)
    assert "'tokenFile'" in str(raised.value)


def test_kvmops_run_refuses_to_listen_on_all_addresses_without_a_token_and_exits_one(tmp_path):
    """The shipped command: one line on stderr naming the way out, exit status 1, no traceback."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    finished = subprocess.run(
        [sys.executable, "-m", "reconciler", "--log-format", "json", "run", str(manifests), "--connect", "test:///default",
         "--listen", f"0.0.0.0:{port}", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, cwd=REPOSITORY,
    )

    assert finished.returncode == 1, finished.stderr
    errors_shown = [line for line in finished.stderr.splitlines() if "refusing to listen" in line]
    assert len(errors_shown) == 1, finished.stderr
    assert "listen.tokenFile" in errors_shown[0]
    assert "Traceback" not in finished.stderr
