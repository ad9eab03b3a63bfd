"""A small HTTP listener for ``/healthz``, ``/status`` and ``/metrics``.

Standard library only (``http.server``), in a daemon thread.  Routes are callables
returning ``(status, content_type, body)``; they are read-only views of the controller,
so GET is all it answers.  It listens on loopback unless told otherwise.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from reconciler import errors

Route = Callable[[], tuple[int, str, str]]


def parse_address(address: str) -> tuple[str, int]:
    """Return (host, port) of ``HOST:PORT`` (``[::1]:9474`` for IPv6)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise errors.KvmopsError(f"listen address {address!r} is not HOST:PORT (e.g. 127.0.0.1:9474)")
    return host.strip("[]"), int(port)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class StatusServer:
    """Serve ``routes`` over HTTP at ``address`` until :meth:`stop`."""

    def __init__(self, address: str, routes: Mapping[str, Route]) -> None:
        host, port = parse_address(address)

        class Handler(BaseHTTPRequestHandler):
            server_version = "kvmops"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, content_type, body = 404, "text/plain; charset=utf-8", "not found: try /healthz, /status or /metrics\n"
                else:
                    status, content_type, body = route()
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args) -> None:
                pass  # access logs would drown the controller's own

        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host, port), Handler)
        except OSError as exc:
            raise errors.KvmopsError(f"cannot listen on {address}: {exc.strerror}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="kvmops-http", daemon=True)

    @property
    def address(self) -> str:
        """Return the address actually bound (useful with port 0)."""
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        """Begin serving in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
