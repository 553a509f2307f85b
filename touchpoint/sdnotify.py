"""systemd's notification protocol, written to ``$NOTIFY_SOCKET`` directly (no library).

``READY=1`` when the daemon serves, ``STATUS=`` for ``systemctl status``, ``WATCHDOG=1``
while every loop makes progress, ``STOPPING=1`` on the way out. Without
``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

_log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the service manager, if there is one."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address: str | None = None
        self._socket: socket.socket | None = None
        if address:
            # A leading "@" names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never wait on the service manager: a full queue drops a notification
            # (the next one says the same), it does not stop the event loop.
            self._socket.setblocking(False)
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._socket is not None

    def notify(self, *fields: str) -> None:
        """Send ``KEY=value`` fields in one datagram; failures are logged, never raised."""
        if self._socket is None or self._address is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as err:
            if not self._failing:
                _log.warning("sd_notify failed: %s (said once until it works again)", err)
            self._failing = True
        else:
            self._failing = False

    def ready(self, status: str) -> None:
        """The daemon serves."""
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A one-line status."""
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        """Still alive and making progress."""
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutting down."""
        self.notify("STOPPING=1")

    def close(self) -> None:
        """Release the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd set for this process, in seconds, if any."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
