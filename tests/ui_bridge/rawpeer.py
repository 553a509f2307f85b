"""A D-Bus peer that writes method calls and never reads what comes back.

dbus-fast (like every client library) reads its socket as it goes; a misbehaving or
stuck HMI does not. This peer speaks the wire protocol itself: EXTERNAL
authentication, ``Hello``, then as many calls as it is told, and it reads nothing after
the authentication, so its replies pile up wherever the bus keeps them.

Run as a program (``python rawpeer.py ADDRESS KIND COUNT LINGER_S``), it floods the
agent with ``COUNT`` calls of ``KIND`` (see :data:`FLOODS`) and keeps the connection,
unread, for ``LINGER_S`` seconds: the bus policy test runs it as a member of ``hmi``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Final

from dbus_fast import Message, Variant

from ui_bridge.names import BUS_NAME, MANAGER_INTERFACE, OBJECT_MANAGER, ROOT_PATH


def agent_call(path: str, interface: str, member: str, signature: str = "",
               body: list[object] | None = None) -> Callable[[int], Message]:  # fmt: skip
    """The ``i``-th call of a flood: the same call each time."""
    return lambda _: Message(destination=BUS_NAME, path=path, interface=interface,
                             member=member, signature=signature, body=body or [])  # fmt: skip


def set_locale(i: int) -> Message:
    """``Set Locale``, alternately ``zh-CN`` and ``en`` (an even count ends on ``en``)."""
    locale = Variant("s", "zh-CN" if i % 2 == 0 else "en")
    return Message(destination=BUS_NAME, path=ROOT_PATH,
                   interface="org.freedesktop.DBus.Properties", member="Set",
                   signature="ssv", body=[MANAGER_INTERFACE, "Locale", locale])  # fmt: skip


#: Floods by name: large answers, or a signal per card and one for the locale each.
FLOODS: Final[dict[str, Callable[[int], Message]]] = {
    "Introspect": agent_call(ROOT_PATH, "org.freedesktop.DBus.Introspectable", "Introspect"),
    "GetManagedObjects": agent_call(ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects"),
    "Set Locale": set_locale,
}


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


async def _flood(address: str, kind: str, count: int, linger_s: float) -> None:
    peer = RawPeer(address)
    await peer.connect()
    make = FLOODS[kind]
    sent = await peer.send(make(i) for i in range(count))
    print(f"sent {sent}", flush=True)
    await asyncio.sleep(linger_s)
    peer.close()


if __name__ == "__main__":
    where, what, how_many, linger = sys.argv[1:5]
    asyncio.run(_flood(where, what, int(how_many), float(linger)))
