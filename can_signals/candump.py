"""Replaying candump logs without a python-can message per line.

python-can's ``CanutilsLogReader`` spends about 3.7 µs on every line (splitting, a
``bytearray`` built byte by byte, a ``can.Message`` with its checks), which on a real
bus recording is three quarters of the whole replay. Most lines are frames the mapping
does not read, so this player reads the CAN ID first and hands an unmapped frame to its
bus as a timestamp only; a mapped data frame becomes its key, timestamp and bytes.

The fast path takes the lines written the way candump and python-can write them,
``(1637353675.975229) vcan0 243#00000080A2004000``, with ``##F`` CAN FD frames, 29-bit
IDs and a trailing ``R``/``T``. Every other line (remote and error frames, comments,
garbage) goes to python-can's own reader, one line at a time, so the result is what
python-can makes of it: the same frames, the same errors. Tests hold the two readers
together on every log in the shared data and on a log of edge cases.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import can

#: python-can's error-frame flag in a candump ID (with CAN_ERR_BUSERROR, an error frame).
_ERROR_FLAG: Final = 0x2000_0000
_ID_MASK: Final = 0x1FFF_FFFF
_EXTENDED: Final = 0x8000_0000
_RX_MARKS: Final = frozenset({"R", "T", "r", "t"})
_DIGITS: Final = frozenset("0123456789")
#: Every 1024 lines the stop flag is looked at (at full speed).
_STOP_MASK: Final = 1023
#: At most this many distinct ID spellings are remembered (a damaged log has many).
_MAX_KEYS: Final = 4096


class ReplayInput(Protocol):
    """Where a replay puts one bus's frames (:class:`can_signals.bus_input.BusInput`)."""

    @property
    def table(self) -> Mapping[int, Any]:
        """The frame keys that are mapped, with what :meth:`feed` takes for each."""

    def skip(self, timestamp: float) -> bool:
        """A frame of an unmapped key; ``True`` if that may have produced updates."""

    def feed(self, plan: Any, timestamp: float, data: bytes) -> None:
        """A data frame of a mapped key, ``plan`` being its :attr:`table` entry."""

    def __call__(self, msg: can.Message) -> None:
        """Any frame, as python-can reads it."""


class CandumpPlayer:
    """Plays the lines of a candump log into the inputs of their buses.

    Args:
        input_for: The input of a bus, by the channel python-can would give the frame
            (``None`` for error frames, which python-can reads without a channel).
        after_frame: Called after each frame that may have produced updates.
        pace: Called before each frame with its timestamp; returns ``True`` to stop
            (``None``: play as fast as possible).
        stopped: Whether to stop, looked at every 1024 lines.
        bad_line: Called with the line number and the error of a line python-can's
            reader refuses.
    """

    def __init__(
        self,
        input_for: Callable[[str | int | None], ReplayInput],
        after_frame: Callable[[], None],
        pace: Callable[[float], bool] | None,
        stopped: Callable[[], bool],
        bad_line: Callable[[int, Exception], None],
    ) -> None:
        self._input_for = input_for
        self._after_frame = after_frame
        self._pace = pace
        self._stopped = stopped
        self._bad_line = bad_line
        self._inputs: dict[str, ReplayInput] = {}
        self._keys: dict[str, int] = {}
        self.frames = 0

    def play(self, lines: Iterable[str]) -> None:  # noqa: PLR0912, PLR0915 - one flat hot loop
        """Play every line, until the end or a stop."""
        inputs, keys = self._inputs, self._keys
        after_frame, pace, slow, stopped = self._after_frame, self._pace, self._slow, self._stopped
        rx_marks, digits = _RX_MARKS, _DIGITS
        frames = number = 0
        try:
            for line in lines:
                number += 1
                if not number & _STOP_MASK and stopped():
                    return
                parts = line.split()
                if len(parts) == 3:
                    stamp, channel, frame = parts
                elif len(parts) == 4 and parts[3] in rx_marks and line.rstrip()[-2] == " ":
                    stamp, channel, frame = parts[0], parts[1], parts[2]
                else:
                    if parts:  # python-can skips empty lines
                        frames += slow(line, number)
                    continue
                id_text, hash_sign, payload = frame.partition("#")
                key = keys.get(id_text)
                if key is None:
                    key = self._key(id_text)
                if key < 0 or not hash_sign:
                    frames += slow(line, number)
                    continue
                if payload and payload[0] in "#rR":
                    # CAN FD ("##" and the flags digit) is read here, a remote frame there.
                    if (
                        payload[0] != "#"
                        or payload[1:2] not in digits
                        or payload[2:3] in ("r", "R")
                    ):
                        frames += slow(line, number)
                        continue
                    payload = payload[2:]
                try:
                    timestamp = float(stamp[1:-1])
                    data = bytes.fromhex(payload)
                except ValueError:
                    frames += slow(line, number)
                    continue
                bus = inputs.get(channel) or self._add(channel)
                if bus is None:  # a channel python-can refuses
                    frames += slow(line, number)
                    continue
                if pace is not None and pace(timestamp):
                    return
                frames += 1
                plan = bus.table.get(key)
                if plan is None:
                    if bus.skip(timestamp):
                        after_frame()
                else:
                    bus.feed(plan, timestamp, data)
                    after_frame()
        finally:
            self.frames += frames

    def _key(self, id_text: str) -> int:
        """The frame key of a candump ID as python-can reads it; -1 for the slow path.

        Error frames (the error flag set) and IDs that are no hexadecimal number go to
        python-can's reader. Keys are cached: a log has few distinct IDs.
        """
        try:
            can_id = int(id_text, 16)
        except ValueError:
            can_id = -1
        if can_id < 0 or can_id & _ERROR_FLAG:
            key = -1
        else:
            key = can_id & _ID_MASK | _EXTENDED if len(id_text) > 3 else can_id & _ID_MASK
        if len(self._keys) < _MAX_KEYS:
            self._keys[id_text] = key
        return key

    def _add(self, channel: str) -> ReplayInput | None:
        """The input of a new channel, cached; ``None`` if python-can refuses the channel.

        python-can makes a number of a channel of digits, and fails on digits that are
        no number (``²``).
        """
        try:
            key: str | int = int(channel) if channel.isdigit() else channel
        except ValueError:
            return None
        bus = self._inputs[channel] = self._input_for(key)
        return bus

    def _slow(self, line: str, number: int) -> int:
        """A line python-can's reader reads; returns the frames it held (0 or 1)."""
        try:
            messages = list(can.CanutilsLogReader(io.StringIO(line)))
        except (ValueError, IndexError, KeyError, TypeError, OverflowError, AttributeError) as err:
            self._bad_line(number, err)
            return 0
        for msg in messages:
            if self._pace is not None and self._pace(msg.timestamp):
                return 0
            channel = msg.channel
            self._input_for(channel if isinstance(channel, str | int) else None)(msg)
            self._after_frame()
        return len(messages)
