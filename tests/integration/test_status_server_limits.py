"""The HTTP listener's cost is bounded whatever clients do, and /healthz still answers.

Real loopback sockets against the real server; thread counts are the process's own.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from reconciler.adapters.statusserver import StatusServer


def healthz() -> tuple[int, str, str]:
    return 200, "text/plain; charset=utf-8", "ok\n"


def broken() -> tuple[int, str, str]:
    raise RuntimeError("the view broke")


@pytest.fixture
def server() -> Iterator[StatusServer]:
    listener = StatusServer("127.0.0.1:0", {"/healthz": healthz, "/broken": broken},
                            max_connections=32, request_timeout=1.0)
    listener.start()
    yield listener
    listener.stop()


def connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


def answer(address: str, path: str = "/healthz") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """Return whether the server closes ``connection`` (EOF or reset) within ``within`` seconds."""
    connection.settimeout(within)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_two_hundred_idle_connections_cost_no_thread_and_healthz_still_answers(server):
    """200 connections that never send a request leave the thread count where it was, and /healthz answers 200 at once."""
    threads_before = threading.active_count()
    idle = [connect(server.address) for _ in range(200)]
    try:
        time.sleep(0.2)
        assert threading.active_count() <= threads_before + 1, threading.enumerate()
        assert server.open_connections <= 32

        began = time.monotonic()
        assert answer(server.address) == (200, "ok\n")
        assert time.monotonic() - began < 1.0
    finally:
        for connection in idle:
            connection.close()


def test_a_connection_that_never_finishes_its_request_is_closed_after_the_timeout(server):
    """An idle socket, and one sending its headers a byte at a time, are both closed once the request timeout passes."""
    idle = connect(server.address)
    slow = connect(server.address)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the blank line that ends the headers never comes
    try:
        assert closed_by_server(idle, 3), "the idle connection is still open"
        assert closed_by_server(slow, 3), "the slow connection is still open"
    finally:
        idle.close()
        slow.close()


def test_a_view_that_raises_gives_500_and_the_server_goes_on(server):
    """A route raising an exception answers 500 with one line; the next request is served as usual."""
    status, body = answer(server.address, "/broken")
    assert status == 500
    assert body == "internal error: RuntimeError\n"
    assert answer(server.address) == (200, "ok\n")
