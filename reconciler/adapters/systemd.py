"""Talk to systemd (or anything playing its part) through ``$NOTIFY_SOCKET``.

The ``sd_notify`` protocol is one datagram per message on a Unix socket whose path is in
``NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace).  Without the variable
every call is a no-op, so the controller runs the same under systemd, in a container or
in a terminal.  Twenty lines of socket code do not justify a dependency.
"""

from __future__ import annotations

import os
import socket

from reconciler.core import redaction


class Notifier:
    """Send ``READY=1``, ``STATUS=...`` and ``WATCHDOG=1`` to the service manager."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        pid_matches = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval = (
            int(watchdog_usec) / 1e6 / 2 if watchdog_usec.isdigit() and int(watchdog_usec) > 0 and pid_matches else None
        )

    @property
    def enabled(self) -> bool:
        """Return whether a service manager is listening."""
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message; return whether it was sent."""
        if not self._address:
            return False
        # STATUS= is shown to every user by `systemctl status`: no credential in it, whatever error it quotes
        message = redaction.redact_text("\n".join(field.replace("\n", " ") for field in fields)).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell the service manager start-up is complete."""
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """Update the one-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        """Tell the service manager the process is alive."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Tell the service manager the process is shutting down."""
        return self.notify("STOPPING=1", "STATUS=stopping")
