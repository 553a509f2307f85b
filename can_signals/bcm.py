"""Filtering in the kernel by content: SocketCAN's broadcast manager (``CAN_BCM``).

Kernel ID filters keep unmapped frames out of Python; the broadcast manager goes
further. Per mapped CAN ID one ``RX_SETUP`` asks the kernel to pass a frame only when
the bits of the mapped signals (their start bit, length and byte order, from the DBC)
or its length changed, at most once per the routes' ``interval_ms`` (the throttle,
``ival2``), and to say when the frame stops arriving (``RX_TIMEOUT`` after ``ival1``,
the routes' staleness). A frame whose mapped bits did not change, or that comes inside
the interval, never wakes user space.

Only frames whose every route reports changes (``on_change``) and shares one interval
go this way: a route that wants every frame, or two intervals on one frame, keep the
raw socket (as do CAN FD frames), and so does every frame on an interface without
``CAN_BCM`` or a kernel without the module.

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from can_signals.bus_input import BusInput
from can_signals.kernel_protocols import kernel_has
from can_signals.layout import CLASSIC_MAX_BYTES, is_fd_message
from can_signals.routes import Plan

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
_RECV: Final = re.compile(r"# recv (\d+) \((\d+)\)")


def bcm_eligible(plan: Plan) -> bool:
    """Whether the kernel may filter ``plan``'s frames by content without changing updates."""
    if plan.length > CLASSIC_MAX_BYTES:
        return False
    intervals = set()
    for route in plan.routes:
        if not route.on_change or route.combo is not None or route.kind == "part":
            return False
        if is_fd_message(route.binding.message):
            return False
        intervals.add(route.interval_ms)
    return len(intervals) == 1


def bcm_available() -> bool:
    """Whether this Python and kernel have the broadcast manager."""
    return kernel_has("CAN_BCM", "every mapped frame goes to the raw socket")


def _timeval(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, round((seconds - whole) * 1_000_000)


def content_mask(plan: Plan) -> bytes:
    """The 8 mask bytes over the bits every route of ``plan`` reads."""
    mask = 0
    for route in plan.routes:
        mask |= route.mask
    return mask.to_bytes(CLASSIC_MAX_BYTES, "little")


class KernelFilter:
    """One ``CAN_BCM`` socket on an interface, feeding a bus's processor input.

    Args:
        channel: The SocketCAN interface.
        bus_input: The processor's input of the bus.
        keys: The frame keys (see :func:`can_signals.layout.frame_key`) it filters.

    Raises:
        OSError: If the socket cannot be opened, connected or set up.
    """

    def __init__(self, channel: str, bus_input: BusInput, keys: list[int]) -> None:
        self._input = bus_input
        self._plans: dict[int, Plan] = {key: bus_input.table[key] for key in keys}
        self._timeouts: dict[int, float] = {}
        sock = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_BCM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.connect((channel,))
            sock.setblocking(False)
            self._sock = sock
            for key, plan in self._plans.items():
                self._setup(key, plan)
        except OSError:
            sock.close()
            raise
        for key, plan in self._plans.items():
            if plan.routes[0].interval_ms:
                plan.throttle_in_kernel()
            plan.rearm = self._rearm_for(key, plan)
        self._inode = os.fstat(sock.fileno()).st_ino
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def keys(self) -> list[int]:
        """The frame keys filtered here."""
        return list(self._plans)

    def _setup(self, key: int, plan: Plan) -> None:
        """(Re)set the kernel's operation for one frame; it forgets the last frame seen."""
        stale = [route.stale_after for route in plan.routes if route.stale_after]
        timeout = min(stale) if stale else 0.0
        throttle = plan.routes[0].interval_ms / 1000 if plan.routes else 0.0
        flags = socket.CAN_BCM_RX_CHECK_DLC | socket.CAN_BCM_RX_ANNOUNCE_RESUME
        if timeout or throttle:
            flags |= socket.CAN_BCM_SETTIMER
        if timeout:
            flags |= socket.CAN_BCM_STARTTIMER
            self._timeouts[key] = timeout
        head = _HEAD.pack(
            socket.CAN_BCM_RX_SETUP, flags, 0, *_timeval(timeout), *_timeval(throttle), key, 1
        )
        frame = _FRAME.pack(key, plan.length, content_mask(plan))
        self._sock.send(head + frame)

    def _rearm_for(self, key: int, plan: Plan) -> Callable[[], None]:
        def rearm() -> None:
            try:
                self._setup(key, plan)
            except OSError as err:  # an interface going away: the raw socket reports it
                _log.debug("CAN_BCM: cannot reset %X: %s", key, err)

        return rearm

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the socket on ``loop``."""
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._readable)

    def close(self) -> None:
        """Stop reading and close the socket (the kernel drops its operations)."""
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        for plan in self._plans.values():
            plan.rearm = None
            plan.kernel_alive = False
        self._sock.close()

    def _readable(self) -> None:
        sock, plans, bus_input = self._sock, self._plans, self._input
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
            plan = plans.get(can_id)
            if plan is None:
                continue
            if opcode == socket.CAN_BCM_RX_TIMEOUT:
                self._timed_out(can_id, plan)
            elif opcode == socket.CAN_BCM_RX_CHANGED and nframes:
                _id, length, data = _FRAME.unpack_from(message, _HEAD.size)
                plan.kernel_alive = True
                bus_input.feed(plan, _stamp(ancillary), data[:length])

    def _timed_out(self, key: int, plan: Plan) -> None:
        # The kernel saw no frame for the timeout: the last one came about that long ago.
        # (Not "the latest of the two": while alive, the silence watch has moved it on.)
        processor = self._input.processor
        now = time.time()
        with processor.lock:
            plan.kernel_alive = False
            plan.last_seen = now - self._timeouts.get(key, 0.0) - _PAST
        processor.check_stale(now)

    def held_back(self) -> int:
        """Frames of this socket's IDs the kernel did not pass on (0 if unknown)."""
        try:
            text = (_PROC / str(self._inode)).read_text(encoding="ascii")
        except OSError:
            return 0
        return sum(int(total) - int(passed) for passed, total in _RECV.findall(text))


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
            seconds, nanos = _TIMESPEC.unpack_from(data)
            return float(seconds) + float(nanos) / 1e9
    return time.time()


def bcm_keys(table: Mapping[int, Plan]) -> list[int]:
    """The frame keys of a bus's table the broadcast manager can filter."""
    return [key for key, plan in table.items() if bcm_eligible(plan)]
