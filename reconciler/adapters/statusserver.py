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

Access.  With a token file, every route needs ``Authorization: Bearer TOKEN`` (compared in
constant time; the file is read again for each request, so a rotated token needs no
restart) and a request without it gets ``401`` with ``WWW-Authenticate: Bearer``; only the
``public`` routes answer anyone (the controller's ``/healthz`` there says only ``ok`` or
``unavailable``, the reason being for token holders).  Without a token file the listener
refuses to bind anything but a loopback address unless told ``insecure``: ``/status``
names every VM, manifest and error of the host.  The token is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
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

MAX_TOKEN_BYTES = 4096


def read_token(path: str) -> bytes:
    """Return the bearer token in file ``path`` (surrounding whitespace removed); refuse a missing or empty one."""
    try:
        with open(path, "rb") as file:
            token = file.read(MAX_TOKEN_BYTES + 1).strip()
    except OSError as exc:
        raise errors.KvmopsError(f"{path}: cannot read the listener's token file: {exc.strerror}") from exc
    if not token:
        raise errors.KvmopsError(f"{path}: the listener's token file is empty")
    if len(token) > MAX_TOKEN_BYTES:
        raise errors.KvmopsError(f"{path}: the listener's token file holds more than {MAX_TOKEN_BYTES} bytes")
    if any(byte < 0x21 or byte > 0x7E for byte in token):
        raise errors.KvmopsError(f"{path}: the listener's token must be one word of printable ASCII characters")
    return token


def is_loopback(host: str) -> bool:
    """Return whether the bound IP address ``host`` is reachable from this machine only."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def parse_address(address: str) -> tuple[str, int]:
    """Return (host, port) of ``HOST:PORT`` (``[::1]:9474`` for IPv6)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise errors.KvmopsError(f"listen address {address!r} is not HOST:PORT (e.g. 127.0.0.1:9474)")
    return host.strip("[]"), int(port)


class StatusServer:
    """Serve ``routes`` over HTTP at ``address`` until :meth:`stop`."""

    def __init__(self, address: str, routes: Mapping[str, Route], *, public: Mapping[str, Route] | None = None,
                 token_file: str = "", insecure: bool = False, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT, write_timeout: float = WRITE_TIMEOUT) -> None:
        """Bind ``address``; ``routes`` need the token in ``token_file`` when one is given, ``public`` never does.

        Raises :class:`~reconciler.errors.KvmopsError` when the address cannot be bound, the
        token file cannot be read, or the bound address is not loopback while there is no
        token and ``insecure`` is False.
        """
        host, port = parse_address(address)
        self._routes = dict(routes)
        self._public = dict(public or {})
        self._token_file = token_file
        self._token_error = ""  # the last token-file error logged, so a broken file is logged once, not per request
        if token_file:
            read_token(token_file)  # a missing or empty file stops the start, not the first request
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
        bound_host = self._socket.getsockname()[0]
        if not token_file and not insecure and not is_loopback(bound_host):
            self._socket.close()
            raise errors.KvmopsError(
                f"refusing to listen on {address}: it is reachable beyond this machine and /status and /metrics "
                "would answer anyone; set listen.tokenFile (--listen-token-file), or listen.insecure: true "
                "(--listen-insecure) to serve them without a token"
            )
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
            challenge = 'WWW-Authenticate: Bearer realm="kvmops"\r\n' if status == 401 else ""
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nServer: kvmops\r\nContent-Type: {content_type}\r\n{challenge}"
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
        path = target.split("?", 1)[0]
        if path not in self._routes and path not in self._public:
            return 404, text, "not found: try /healthz, /status or /metrics\n", method == "HEAD"
        authorized, refusal = self._authorized(head)
        route = self._routes.get(path) if authorized else None
        if route is None:
            route = self._public.get(path)
        if route is None:
            return refusal[0], text, refusal[1], method == "HEAD"
        try:
            status, content_type, body = route()
        except Exception as exc:  # a broken view must not take the listener down with it
            log.error("http_route_failed", path=target.split("?", 1)[0], error=f"{type(exc).__name__}: {exc}",
                      exc_info=exc)
            return 500, text, f"internal error: {type(exc).__name__}\n", method == "HEAD"
        return status, content_type, body, method == "HEAD"

    def _authorized(self, head: bytes) -> tuple[bool, tuple[int, str]]:
        """Return whether the request whose head is ``head`` may read every route, and else what to answer."""
        if not self._token_file:
            return True, (200, "")
        presented = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                scheme, _, credentials = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = credentials.strip()
        try:
            expected = read_token(self._token_file)
        except errors.KvmopsError as exc:
            if str(exc) != self._token_error:
                log.error("http_token_unreadable", error=str(exc))  # fail closed: nobody gets in
            self._token_error = str(exc)
            return False, (503, "the listener's token file cannot be read; see the controller's log\n")
        self._token_error = ""
        # Digests first, so the comparison is of equal lengths and compare_digest's constant time hides the length too.
        if presented and hmac.compare_digest(hashlib.sha256(presented).digest(), hashlib.sha256(expected).digest()):
            return True, (200, "")
        return False, (401, "a bearer token is required: send 'Authorization: Bearer TOKEN'\n")
