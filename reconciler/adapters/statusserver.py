"""A small HTTP listener for ``/healthz``, ``/status`` and ``/metrics``.

Routes are callables returning ``(status, content_type, body)``; they are read-only
views of the controller, so GET (and HEAD) is all it answers, one request per
connection.  It listens on loopback unless told otherwise.

Its cost is bounded whatever clients do, because a health probe must still get an
answer while something else misbehaves: one thread (an asyncio loop) serves every
connection, so an idle connection costs a file descriptor, never a thread (with
``http.server``, 200 idle connections held 200 threads, forever); a request must arrive
whole within ``request_timeout`` seconds of connecting, or the connection is closed; at
most ``max_connections`` are open at once, and a new one beyond that closes the oldest
connection still waiting for its request (so idle sockets can never lock a probe out),
or is refused at once when every open connection is being answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus

from reconciler import errors, logconfig

Route = Callable[[], tuple[int, str, str]]

MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 10.0  # seconds from connecting to the end of the request's headers
WRITE_TIMEOUT = 10.0  # seconds a client gets to read the answer
MAX_REQUEST_BYTES = 16 * 1024

log = logconfig.get_logger("kvmops.http")


def parse_address(address: str) -> tuple[str, int]:
    """Return (host, port) of ``HOST:PORT`` (``[::1]:9474`` for IPv6)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise errors.KvmopsError(f"listen address {address!r} is not HOST:PORT (e.g. 127.0.0.1:9474)")
    return host.strip("[]"), int(port)


class StatusServer:
    """Serve ``routes`` over HTTP at ``address`` until :meth:`stop`."""

    def __init__(self, address: str, routes: Mapping[str, Route], *, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT, write_timeout: float = WRITE_TIMEOUT) -> None:
        host, port = parse_address(address)
        self._routes = dict(routes)
        self._max_connections = max_connections
        self._request_timeout = request_timeout
        self._write_timeout = write_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(128)
        except OSError as exc:
            self._socket.close()
            raise errors.KvmopsError(f"cannot listen on {address}: {exc.strerror}") from exc
        self._socket.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()  # set from stop(), through the loop
        # open connections, oldest first: the task serving each, and whether it is still waiting for its request
        self._open: dict[asyncio.Task, bool] = {}
        self._thread = threading.Thread(target=self._serve, name="kvmops-http", daemon=True)

    @property
    def address(self) -> str:
        """Return the address actually bound (useful with port 0)."""
        host, port = self._socket.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def open_connections(self) -> int:
        """Return how many client connections are open now."""
        return len(self._open)

    def start(self) -> None:
        """Begin serving in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every connection and the listening socket."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(5)
        with contextlib.suppress(OSError):
            self._socket.close()

    # -- the loop's thread ----------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        server = await asyncio.start_server(self._connection, sock=self._socket, limit=MAX_REQUEST_BYTES)
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._open):
                task.cancel()
            await asyncio.gather(*self._open, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._open) >= self._max_connections and not self._evict_oldest_idle():
            writer.close()  # every open connection is being answered: refuse, the client may retry
            return
        self._open[task] = True
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._request_timeout)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return  # idle, too slow, too large or gone: closed without an answer
            self._open[task] = False
            status, content_type, body, head_only = self._answer(head)
            payload = body.encode()
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = ""
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nServer: kvmops\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                + (b"" if head_only else payload)
            )
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(writer.drain(), self._write_timeout)
        except asyncio.CancelledError:
            pass  # evicted, or the server is stopping
        finally:
            self._open.pop(task, None)
            writer.close()

    def _evict_oldest_idle(self) -> bool:
        """Close the oldest connection still waiting for its request; return False if there is none."""
        for task, waiting in self._open.items():
            if waiting:
                self._open.pop(task)
                task.cancel()
                return True
        return False

    def _answer(self, head: bytes) -> tuple[int, str, str, bool]:
        """Return (status, content type, body, head only) for the request whose head is ``head``."""
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        text = "text/plain; charset=utf-8"
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, text, "bad request\n", False
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return 405, text, "only GET is answered here\n", False
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            return 404, text, "not found: try /healthz, /status or /metrics\n", method == "HEAD"
        try:
            status, content_type, body = route()
        except Exception as exc:  # a broken view must not take the listener down with it
            log.error("http_route_failed", path=target.split("?", 1)[0], error=f"{type(exc).__name__}: {exc}",
                      exc_info=exc)
            return 500, text, f"internal error: {type(exc).__name__}\n", method == "HEAD"
        return status, content_type, body, method == "HEAD"
