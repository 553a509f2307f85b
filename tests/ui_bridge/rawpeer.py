"""A D-Bus peer that writes method calls and never reads what comes back.

dbus-fast (like every client library) reads its socket as it goes; a misbehaving or
stuck HMI does not. This peer speaks the wire protocol itself: EXTERNAL
authentication, ``Hello``, then as many calls as it is told, and it reads nothing after
the authentication, so its replies pile up wherever the bus keeps them.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterable

from dbus_fast import Message


def socket_path(address: str) -> str:
    """The socket path of a ``unix:path=...`` address (as the private bus prints it)."""
    transport = address.split(";", maxsplit=1)[0]
    assert transport.startswith("unix:"), address
    options = dict(part.split("=", 1) for part in transport[len("unix:") :].split(","))
    return options["path"]


class RawPeer:
    """One connection to the bus that never reads its replies."""

    def __init__(self, address: str) -> None:
        self._path = socket_path(address)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.setblocking(False)
        self._serial = 0

    async def connect(self) -> None:
        """Authenticate and say ``Hello`` (whose reply is never read either)."""
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self._sock, self._path)
        uid = str(os.getuid()).encode().hex()
        await loop.sock_sendall(self._sock, b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
        line = b""
        while not line.endswith(b"\r\n"):
            chunk = await loop.sock_recv(self._sock, 1)  # one byte: read nothing beyond
            assert chunk, "the bus closed the connection during authentication"
            line += chunk
        assert line.startswith(b"OK "), line
        await loop.sock_sendall(self._sock, b"BEGIN\r\n")
        await self.send([Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                 interface="org.freedesktop.DBus", member="Hello")])  # fmt: skip

    async def send(self, messages: Iterable[Message]) -> int:
        """Write ``messages`` (numbered here); the number written."""
        loop = asyncio.get_running_loop()
        written = 0
        chunk = bytearray()
        for message in messages:
            self._serial += 1
            message.serial = self._serial
            chunk += message._marshall(False)
            written += 1
            if len(chunk) > 64 * 1024:
                await loop.sock_sendall(self._sock, bytes(chunk))
                chunk.clear()
        if chunk:
            await loop.sock_sendall(self._sock, bytes(chunk))
        return written

    def close(self) -> None:
        """Hang up (the bus drops whatever it still held for this peer)."""
        self._sock.close()
