"""systemd ``Type=notify`` support: READY=1, STOPPING=1 and watchdog pings.

A datagram to ``$NOTIFY_SOCKET`` is all sd_notify is, so no libsystemd binding is needed.
Everything here is a no-op when the agent does not run under systemd.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["Notifier"]

logger = logging.getLogger("lattice_edge.systemd")


class Notifier:
    """Sends sd_notify messages when ``NOTIFY_SOCKET`` is set."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        address = environ.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading '@' and addressed with a NUL.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2_000_000 if watchdog else None

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return bool(self.address)

    def notify(self, message: str) -> None:
        """Send one sd_notify message (``READY=1``); failures are logged, never raised."""
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError as exc:
            logger.warning("cannot notify systemd (%s): %s", message, exc)

    def ready(self, status: str) -> None:
        """Tell systemd start-up is complete."""
        self.notify(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        """Tell systemd an orderly shutdown has begun."""
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Ping the watchdog."""
        self.notify("WATCHDOG=1")
