"""A Unix socket in front of the real libvirtd's, which can cut a connection at a chosen RPC.

The system libvirtd is shared and must never be stopped, yet kvmops has to be tested
against a connection that breaks in the middle of its work.  Clients connect through
``qemu+unix:///system?socket=PATH``; every byte goes to ``/run/libvirt/libvirt-sock`` and
back unchanged, so libvirtd does the real work.  Armed with a procedure number
(``remote_protocol.x``: 9 is ``domain create``, 11 ``domain define``, 93 ``storage vol
create``), the proxy cuts the client's connection the first time the client calls it, in
one of two ways:

* ``"request"``: the call never reaches libvirtd (nothing happened), the client reads EOF;
* ``"reply"``: libvirtd carries the call out, its reply is dropped (it happened, and the
  client cannot know), the client reads EOF.

Or it holds that call's reply back for good (``"hold"``): libvirtd carries the call out, and
everything else goes on flowing both ways (keepalive probes and their answers, other
calls), which is what a libvirtd that answers but whose call never returns looks like.

Connections opened afterwards are forwarded normally, as a restarted libvirtd would take them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path

REMOTE_PROGRAM = 0x20008086
DOMAIN_CREATE = 9
DOMAIN_DEFINE_XML = 11
DOMAIN_DEFINE_XML_FLAGS = 350
STORAGE_VOL_CREATE_XML = 93
LIBVIRTD_SOCKET = "/run/libvirt/libvirt-sock"


class CuttingProxy:
    """Forward ``path`` to libvirtd's socket; cut one connection at the first call to an armed procedure."""

    def __init__(self, path: Path, target: str = LIBVIRTD_SOCKET) -> None:
        self.path = path
        self._target = target
        self._armed: tuple[frozenset[int], str] | None = None
        self._lock = threading.Lock()
        self.cuts: list[int] = []  # procedures at which a connection was cut
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="libvirt-proxy", daemon=True).start()

    @property
    def uri(self) -> str:
        """Return the libvirt URI that connects through this proxy."""
        return f"qemu+unix:///system?socket={self.path}"

    def arm(self, *procedures: int, drop: str) -> None:
        """Cut the next connection that calls one of ``procedures``, dropping its ``"request"`` or its ``"reply"``,
        or (``"hold"``) keep that connection but never deliver the reply to that call."""
        assert drop in ("request", "reply", "hold")
        with self._lock:
            self._armed = (frozenset(procedures), drop)

    def close(self) -> None:
        """Stop accepting and close every forwarded connection."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self._target)
            self._sockets += [client, upstream]
            cut: list[tuple[int, str]] = []  # the procedure whose reply is dropped (and how), once its request went
            threading.Thread(target=self._requests, args=(client, upstream, cut), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, cut), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, cut: list[tuple[int, str]]) -> None:
        """Copy the client's messages to libvirtd one whole message at a time, watching for an armed call."""
        try:
            while True:
                header = _read_exactly(client, 4)
                if header is None:
                    break
                (length,) = struct.unpack(">I", header)
                body = _read_exactly(client, length - 4)
                if body is None:
                    break
                program, _version, procedure = struct.unpack(">III", body[:12])
                with self._lock:
                    armed = self._armed
                    hit = armed is not None and program == REMOTE_PROGRAM and procedure in armed[0]
                    if hit:
                        self._armed = None
                        self.cuts.append(procedure)
                if hit and armed[1] == "request":
                    break  # libvirtd never hears of it
                if hit:
                    cut.append((procedure, armed[1]))  # libvirtd carries it out; its reply never arrives
                upstream.sendall(header + body)
        except OSError:
            pass
        _hang_up(client, upstream)

    def _replies(self, upstream: socket.socket, client: socket.socket, cut: list[tuple[int, str]]) -> None:
        """Copy libvirtd's messages to the client, except the reply to a call cut in "reply" or "hold" mode."""
        try:
            while True:
                header = _read_exactly(upstream, 4)
                if header is None:
                    break
                (length,) = struct.unpack(">I", header)
                body = _read_exactly(upstream, length - 4)
                if body is None:
                    break
                program, _version, procedure = struct.unpack(">III", body[:12])
                if cut and program == REMOTE_PROGRAM and procedure == cut[0][0]:
                    if cut.pop()[1] == "hold":
                        continue  # carried out; the client waits for ever, while all else flows
                    break  # the call was carried out; the client never learns it
                client.sendall(header + body)
        except OSError:
            pass
        _hang_up(client, upstream)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _hang_up(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
