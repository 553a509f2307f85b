"""The frame encoder: model states to CAN frames, each message at its DBC cycle time.

The encoder quantises every physical value to the signal's raw integer itself
(``round((value - offset) / scale)``, clamped to the DBC range) and encodes the raw
values with cantools, so what goes on the wire is exactly known: tests compare the
decoded values against :attr:`EncodedFrame.raw`. One cantools message per CAN ID is
looked up once and kept.

The reference car's ECUs (:mod:`can_signals.simulator.ecus`) are the default; other
message functions and cycle times encode another car's DBC. A message longer than 8
bytes (or declared CAN FD) goes out as a CAN FD frame with the bit-rate switch set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import can
from cantools.database.can import Database, Message, Signal

from can_signals.layout import is_fd_message
from can_signals.simulator.ecus import CHECKSUMS, MESSAGES, MessageFunction
from can_signals.simulator.errors import SimulatorError
from can_signals.simulator.model import VehicleState


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One frame the simulated car sends.

    Attributes:
        name: The DBC message name.
        raw: The raw (unscaled) value of every signal, as encoded.
        message: The CAN frame (timestamp on the scenario clock, in UNIX seconds).
    """

    name: str
    raw: Mapping[str, int]
    message: can.Message


@dataclass(slots=True)
class _Scheduled:
    message: Message
    cycle_ms: int
    values: MessageFunction
    signals: Mapping[str, tuple[Signal, tuple[int, int]]]
    checksum: str | None
    sent: int = 0


class FrameEncoder:
    """Builds the frames that are due at each tick of the scenario clock.

    The encoder counts the frames of each message (rolling counters, the cycling DTC
    slot), so a fresh encoder is needed for every run.

    Args:
        database: The DBC, loaded with cantools (the reference DBC by default).
        channel: The channel name frames carry (it becomes the bus name of a replay).
        messages: The function giving each message's signals (default: the reference
            car's ECUs).
        checksums: The checksum signal of each message protected by the reference
            car's checksum (default: the reference car's).
        cycle_ms: Cycle times for messages whose DBC gives none.

    Raises:
        SimulatorError: If a message of ``messages`` is missing from the database, has no
            cycle time, or its function does not give exactly the message's signals.
    """

    def __init__(
        self,
        database: Database,
        channel: str = "can0",
        *,
        messages: Mapping[str, MessageFunction] = MESSAGES,
        checksums: Mapping[str, str] = CHECKSUMS,
        cycle_ms: Mapping[str, int] | None = None,
    ) -> None:
        self._channel = channel
        self._schedule: list[_Scheduled] = []
        for name, values in messages.items():
            try:
                message = database.get_message_by_name(name)
            except KeyError as err:
                raise SimulatorError(f"the DBC has no message {name}") from err
            cycle = (cycle_ms or {}).get(name) or message.cycle_time
            if not cycle:
                raise SimulatorError(f"message {name} has no GenMsgCycleTime")
            # Checked once here, so that encoding can skip cantools' per-frame checks.
            given = set(values(VehicleState(), 0))
            if given != {s.name for s in message.signals}:
                raise SimulatorError(f"the simulator's {name} does not match the DBC's signals")
            signals = {s.name: (s, _raw_limits(s)) for s in message.signals}
            self._schedule.append(_Scheduled(message, cycle, values, signals, checksums.get(name)))
        self._schedule.sort(key=lambda s: s.message.frame_id)

    @property
    def tick_ms(self) -> int:
        """The largest step that lands on every message's send times."""
        return math.gcd(*(s.cycle_ms for s in self._schedule))

    def frames_at(self, clock_ms: int, utc_start_s: int, state: VehicleState) -> list[EncodedFrame]:
        """Encode the messages due at ``clock_ms`` (every message is sent at 0 ms)."""
        timestamp = (utc_start_s * 1000 + clock_ms) / 1000
        return [
            self._encode(scheduled, state, timestamp)
            for scheduled in self._schedule
            if clock_ms % scheduled.cycle_ms == 0
        ]

    def _encode(self, scheduled: _Scheduled, state: VehicleState, timestamp: float) -> EncodedFrame:
        message = scheduled.message
        physical = scheduled.values(state, scheduled.sent)
        scheduled.sent += 1
        signals = scheduled.signals
        raw = {name: _quantise(*signals[name], value) for name, value in physical.items()}
        # Every value is clamped to its signal's range above: cantools' strict checks
        # would only repeat that, at a third of the cost of a frame.
        data = message.encode(raw, scaling=False, strict=False)
        if scheduled.checksum is not None:
            raw[scheduled.checksum] = _checksum(message.frame_id, data)
            data = message.encode(raw, scaling=False, strict=False)
        fd = is_fd_message(message)
        frame = can.Message(
            timestamp=timestamp,
            arbitration_id=message.frame_id,
            is_extended_id=message.is_extended_frame,
            is_fd=fd,
            bitrate_switch=fd,
            data=data,
            channel=self._channel,
            is_rx=False,
        )
        return EncodedFrame(message.name, MappingProxyType(raw), frame)


def _quantise(signal: Signal, limits: tuple[int, int], value: float | int | str) -> int:
    if isinstance(value, str):
        return signal.conversion.choice_to_number(value)
    raw = round((value - signal.offset) / signal.scale)
    low, high = limits
    return min(high, max(low, raw))


def _raw_limits(signal: Signal) -> tuple[int, int]:
    """The raw range allowed by both the bit length and the DBC's physical range."""
    if signal.is_signed:
        low, high = -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    else:
        low, high = 0, (1 << signal.length) - 1
    scale, offset = signal.scale, signal.offset
    if signal.minimum is not None:
        low = max(low, round((signal.minimum - offset) / scale))
    if signal.maximum is not None:
        high = min(high, round((signal.maximum - offset) / scale))
    return low, high


def _checksum(frame_id: int, data: bytes) -> int:
    """Sum of the CAN ID's two bytes, the length and all bytes but the last, modulo 256."""
    return ((frame_id >> 8) + (frame_id & 0xFF) + len(data) + sum(data[:-1])) & 0xFF
