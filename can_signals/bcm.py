"""Filtering in the kernel by content: SocketCAN's broadcast manager (``CAN_BCM``).

Kernel ID filters keep unmapped frames out of Python; the broadcast manager goes
further. Per mapped CAN ID and per distinct ``interval_ms`` of its routes, one
``RX_SETUP`` asks the kernel to pass a frame only when the bits of those routes' signals
(their start bit, length and byte order, from the DBC) or its length changed, at most
once per that interval (the throttle, ``ival2``), and one of them says when the frame
stops arriving (``RX_TIMEOUT`` after ``ival1``, the routes' staleness). A frame whose
mapped bits did not change, or that comes inside the interval, never wakes user space.
Routes that want a value every interval whether it changed or not (no ``on_change``,
KUKSA's default) get an operation of their own that filters by ID only
(``RX_FILTER_ID``), throttled to their interval: one frame per interval wakes user space.

A socket holds one operation per CAN ID, so a frame whose routes have two intervals
(ENGINE_RPM in the RAV4 mapping: the engine speed every 500 ms, whether it runs at every
change) gets one operation on each of two sockets; what one passes reaches only the
routes of its own interval, so a change the other holds back stays held.

A route that wants every frame (no ``on_change`` and no interval), an input of a
combined value (``combine``) or a CAN FD frame keep the frame on the raw socket, and so
does every frame on an interface without ``CAN_BCM`` or a kernel without the module.

The kernel's throttle differs from KUKSA's interval rule: KUKSA takes the first
changed frame after the interval, the broadcast manager sends the first change at once
and then, at the end of each interval, the latest change seen during it (stamped with
the last frame's time). Both give at most one update per interval.

:meth:`KernelFilter.held_back` counts the frames the kernel kept from user space, from
``/proc/net/can-bcm/<socket inode>`` (per operation: frames received, frames passed);
0 means the broadcast manager is not at work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from can_signals.bus_input import BusInput
from can_signals.kernel_protocols import kernel_has
from can_signals.layout import CLASSIC_MAX_BYTES, is_fd_message
from can_signals.routes import Plan, Route

_log = logging.getLogger(__name__)

# struct bcm_msg_head (native alignment: 4 bytes of padding before the timevals).
_HEAD: Final = struct.Struct("@IIIllllII")
# struct can_frame: can_id, len, pad, res, len8_dlc, data[8].
_FRAME: Final = struct.Struct("@IB3x8s")
_SO_TIMESTAMPNS: Final = 35
_TIMESPEC: Final = struct.Struct("@ll")
#: Messages read per wake-up at most, so one busy socket cannot starve the loop.
_BATCH: Final = 256
_PROC: Final = Path("/proc/net/can-bcm")
#: A timeout is reported once its time has passed: the last frame was a hair longer ago.
_PAST: Final = 1e-3
_RECV: Final = re.compile(r"rx_op: ([0-9A-Fa-f]+) .*?# recv (\d+) \((\d+)\)")


def bcm_eligible(plan: Plan) -> bool:
    """Whether the kernel may filter ``plan``'s frames by content without changing updates."""
    if plan.length > CLASSIC_MAX_BYTES:
        return False
    return all(
        (route.on_change or route.interval_ms > 0)
        and route.combo is None
        and route.kind != "part"
        and not is_fd_message(route.binding.message)
        for route in plan.routes
    )


def bcm_available() -> bool:
    """Whether this Python and kernel have the broadcast manager."""
    return kernel_has("CAN_BCM", "every mapped frame goes to the raw socket")


def _timeval(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, round((seconds - whole) * 1_000_000)


def content_mask(routes: Iterable[Route]) -> bytes:
    """The 8 mask bytes over the bits ``routes`` read."""
    mask = 0
    for route in routes:
        mask |= route.mask
    return mask.to_bytes(CLASSIC_MAX_BYTES, "little")


@dataclass(frozen=True, slots=True)
class _Operation:
    """One ``RX_SETUP``: a frame's routes of one interval (and on_change), on one socket."""

    key: int
    plan: Plan
    routes: tuple[Route, ...]
    #: The kernel's throttle (``ival2``), in seconds: the routes' interval.
    throttle: float
    #: The kernel's RX timeout (``ival1``), in seconds; 0: none (another operation of
    #: the frame has it: they all see the same frames).
    timeout: float
    #: Pass frames whatever their content (``RX_FILTER_ID``): routes without on_change.
    every_frame: bool


def throttle_groups(plan: Plan) -> list[tuple[Route, ...]]:
    """``plan``'s routes by ``interval_ms`` and ``on_change``: one kernel operation each.

    Shortest interval first; of one interval, the routes reporting changes first.
    """
    groups: dict[tuple[int, bool], list[Route]] = {}
    for route in plan.routes:
        groups.setdefault((route.interval_ms, not route.on_change), []).append(route)
    return [tuple(groups[key]) for key in sorted(groups)]


class KernelFilter:
    """``CAN_BCM`` sockets on an interface, feeding a bus's processor input.

    As many sockets as the most operations one frame needs (one for most mappings, two
    for a frame read at two intervals, or at one with and without ``on_change``).

    Args:
        channel: The SocketCAN interface.
        bus_input: The processor's input of the bus.
        keys: The frame keys (see :func:`can_signals.layout.frame_key`) it filters.

    Raises:
        OSError: If a socket cannot be opened, connected or set up.
    """

    def __init__(self, channel: str, bus_input: BusInput, keys: list[int]) -> None:
        self._input = bus_input
        self._plans: dict[int, Plan] = {key: bus_input.table[key] for key in keys}
        self._sockets: list[socket.socket] = []
        #: Per socket, its operations by frame key.
        self._operations: list[dict[int, _Operation]] = []
        try:
            for key, plan in self._plans.items():
                stale = [route.stale_after for route in plan.routes if route.stale_after]
                timeout = min(stale) if stale else 0.0
                for index, routes in enumerate(throttle_groups(plan)):
                    if index == len(self._sockets):
                        self._sockets.append(_open(channel))
                        self._operations.append({})
                    throttle = routes[0].interval_ms / 1000
                    operation = _Operation(
                        key, plan, routes, throttle, timeout if not index else 0.0,
                        every_frame=not routes[0].on_change,
                    )  # fmt: skip
                    self._operations[index][key] = operation
                    self._setup(index, operation)
        except OSError:
            for sock in self._sockets:
                sock.close()
            raise
        for key, plan in self._plans.items():
            if any(route.interval_ms for route in plan.routes):
                plan.throttle_in_kernel()
            plan.rearm = self._rearm_for(key)
        self._inodes = [os.fstat(sock.fileno()).st_ino for sock in self._sockets]
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def keys(self) -> list[int]:
        """The frame keys filtered here."""
        return list(self._plans)

    @property
    def operations(self) -> int:
        """The kernel operations set up (one per frame and interval)."""
        return sum(len(operations) for operations in self._operations)

    def _setup(self, index: int, operation: _Operation) -> None:
        """(Re)set one kernel operation; it forgets the last frame seen and its throttle."""
        flags = socket.CAN_BCM_RX_CHECK_DLC | socket.CAN_BCM_RX_ANNOUNCE_RESUME
        if operation.timeout or operation.throttle:
            flags |= socket.CAN_BCM_SETTIMER
        if operation.timeout:
            flags |= socket.CAN_BCM_STARTTIMER
        if operation.every_frame:
            flags |= socket.CAN_BCM_RX_FILTER_ID
        head = _HEAD.pack(
            socket.CAN_BCM_RX_SETUP, flags, 0, *_timeval(operation.timeout),
            *_timeval(operation.throttle), operation.key, 0 if operation.every_frame else 1,
        )  # fmt: skip
        if operation.every_frame:
            self._sockets[index].send(head)
            return
        frame = _FRAME.pack(operation.key, operation.plan.length, content_mask(operation.routes))
        self._sockets[index].send(head + frame)

    def _rearm_for(self, key: int) -> Callable[[Route], None]:
        def rearm(route: Route) -> None:
            # Only the operation of the route's interval: the others keep their throttle.
            for index, operations in enumerate(self._operations):
                operation = operations.get(key)
                if operation is None or route not in operation.routes:
                    continue
                try:
                    self._setup(index, operation)
                except OSError as err:  # an interface going away: the raw socket reports it
                    _log.debug("CAN_BCM: cannot reset %X: %s", key, err)

        return rearm

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the sockets on ``loop``."""
        self._loop = loop
        for index, sock in enumerate(self._sockets):
            loop.add_reader(sock.fileno(), self._readable, index)

    def close(self) -> None:
        """Stop reading and close the sockets (the kernel drops their operations)."""
        if self._loop is not None:
            for sock in self._sockets:
                self._loop.remove_reader(sock.fileno())
            self._loop = None
        for plan in self._plans.values():
            plan.rearm = None
            plan.kernel_alive = False
        for sock in self._sockets:
            sock.close()

    def _readable(self, index: int) -> None:
        sock, operations, bus_input = self._sockets[index], self._operations[index], self._input
        for _ in range(_BATCH):
            try:
                message, ancillary, _flags, _address = sock.recvmsg(128, 64)
            except BlockingIOError:
                return
            except OSError as err:
                # The raw socket of the same interface reports it and reopens the bus.
                _log.debug("CAN_BCM receive failed: %s", err)
                return
            opcode, _f, _c, _s1, _u1, _s2, _u2, can_id, nframes = _HEAD.unpack_from(message)
            operation = operations.get(can_id)
            if operation is None:
                continue
            if opcode == socket.CAN_BCM_RX_TIMEOUT:
                self._timed_out(operation)
            elif opcode == socket.CAN_BCM_RX_CHANGED and nframes:
                _id, length, data = _FRAME.unpack_from(message, _HEAD.size)
                operation.plan.kernel_alive = True
                bus_input.feed_routes(
                    operation.plan, operation.routes, _stamp(ancillary), data[:length]
                )

    def _timed_out(self, operation: _Operation) -> None:
        # The kernel saw no frame for the timeout: the last one came about that long ago.
        # (Not "the latest of the two": while alive, the silence watch has moved it on.)
        processor = self._input.processor
        now = time.time()
        with processor.lock:
            operation.plan.kernel_alive = False
            operation.plan.last_seen = now - operation.timeout - _PAST
        processor.check_stale(now)

    def held_back(self) -> int:
        """Frames of these IDs the kernel did not pass on (0 if unknown).

        Per frame: the frames its operations received (each sees every one) less the
        messages they passed on together.
        """
        received: dict[int, int] = {}
        passed: dict[int, int] = {}
        for inode in self._inodes:
            try:
                text = (_PROC / str(inode)).read_text(encoding="ascii")
            except OSError:
                continue
            for ident, sent, total in _RECV.findall(text):
                key = int(ident, 16)
                received[key] = max(received.get(key, 0), int(total))
                passed[key] = passed.get(key, 0) + int(sent)
        return sum(max(total - passed[key], 0) for key, total in received.items())


def _open(channel: str) -> socket.socket:
    sock = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_BCM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        sock.connect((channel,))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
            seconds, nanos = _TIMESPEC.unpack_from(data)
            return float(seconds) + float(nanos) / 1e9
    return time.time()


def bcm_keys(table: Mapping[int, Plan]) -> list[int]:
    """The frame keys of a bus's table the broadcast manager can filter."""
    return [key for key, plan in table.items() if bcm_eligible(plan)]
