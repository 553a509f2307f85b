"""Replaying candump logs without a python-can message per line.

python-can's ``CanutilsLogReader`` spends about 3.7 µs on every line (splitting, a
``bytearray`` built byte by byte, a ``can.Message`` with its checks), which on a real
bus recording is three quarters of the whole replay. Most lines are frames the mapping
does not read, so this player reads the CAN ID first and never makes a message: an
unmapped frame is counted for its bus (and handed over as a timestamp when the
processor's next look for stale signals is due), a mapped data frame becomes its key,
timestamp and bytes.

A plain line, ``(1637353675.975229) vcan0 243#00000080A2004000`` (what candump writes
for a data frame; python-can adds `` R`` or `` T``), takes one pass: split, the
timestamp, the bytes, the frame's plan from a cache by channel and ID text. Every
other line goes the careful way: CAN FD ``##F`` lines and 29-bit IDs still without
python-can, remote and error frames, comments and garbage with python-can's own reader,
one line at a time, so that the result is what python-can makes of them: the same
frames, the same refused lines. Tests hold the two readers together on every log in the
shared data and on a log of edge cases.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any, Final, Protocol

import can

#: python-can's error-frame flag in a candump ID (with CAN_ERR_BUSERROR, an error frame).
_ERROR_FLAG: Final = 0x2000_0000
_ID_MASK: Final = 0x1FFF_FFFF
_EXTENDED: Final = 0x8000_0000
_RX_MARKS: Final = frozenset({"R", "T", "r", "t"})
_DIGITS: Final = frozenset("0123456789")
#: Lines per chunk; the stop flag is looked at between chunks.
_CHUNK: Final = 1024
#: At most this many distinct ID spellings per channel are remembered (a damaged log
#: has many).
_MAX_IDS: Final = 4096
#: What python-can parses of ``(1637353675.975229)``: the text between the first and
#: the last character, whatever they are.
_INSIDE: Final = slice(1, -1)


class ReplayInput(Protocol):
    """Where a replay puts one bus's frames (:class:`can_signals.bus_input.BusInput`)."""

    @property
    def table(self) -> Mapping[int, Any]:
        """The frame keys that are mapped, with what :meth:`feed` takes for each."""

    def skip(self, timestamp: float) -> bool:
        """A frame of an unmapped key; ``True`` if that may have produced updates."""

    def feed(self, plan: Any, timestamp: float, data: bytes) -> None:
        """A data frame of a mapped key, ``plan`` being its :attr:`table` entry."""

    @property
    def stale_check_at(self) -> float:
        """Before this frame time, :meth:`skip` would only count (see :meth:`count_skipped`)."""

    def count_skipped(self, count: int, latest: float) -> None:
        """Frames of unmapped keys before :attr:`stale_check_at`, counted together."""

    def __call__(self, msg: can.Message) -> None:
        """Any frame, as python-can reads it."""


class _Careful:
    """Marks an ID the fast path leaves to the careful one (an error frame, no number)."""


_CAREFUL: Final = _Careful()


def frame_key(id_text: str) -> int | None:
    """The frame key of a candump ID as python-can reads it; ``None`` for the careful way.

    Error frames (the error flag set) and IDs that are no hexadecimal number go to
    python-can's reader.
    """
    try:
        can_id = int(id_text, 16)
    except ValueError:
        return None
    if can_id < 0 or can_id & _ERROR_FLAG:
        return None
    return can_id & _ID_MASK | _EXTENDED if len(id_text) > 3 else can_id & _ID_MASK


class _Plans(dict[str, object]):
    """A channel's plans by ID text, as its input's table has them (``None``: unmapped)."""

    def __init__(self, table: Mapping[int, Any]) -> None:
        super().__init__()
        self._table = table

    def __missing__(self, id_text: str) -> object:
        key = frame_key(id_text)
        plan = _CAREFUL if key is None else self._table.get(key)
        if len(self) < _MAX_IDS:
            self[id_text] = plan
        return plan


class _Channel:
    """A channel of the log: its input, its plans, and unmapped frames not yet counted."""

    __slots__ = ("input", "pending", "plans")

    def __init__(self, replay_input: ReplayInput) -> None:
        self.input = replay_input
        self.plans = _Plans(replay_input.table)
        self.pending = 0


class _Channels(dict[str, _Channel]):
    """The log's channels by name, made on first sight.

    Raises:
        ValueError: For a name python-can refuses (digits that are no number, ``²``).
    """

    def __init__(
        self,
        input_for: Callable[[str | int | None], ReplayInput],
        on_new: Callable[[_Channel], None],
    ) -> None:
        super().__init__()
        self._input_for = input_for
        self._on_new = on_new

    def __missing__(self, name: str) -> _Channel:
        # python-can makes a number of a channel of digits (and fails on some).
        channel = self[name] = _Channel(self._input_for(int(name) if name.isdigit() else name))
        self._on_new(channel)
        return channel


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
        self._channels = _Channels(input_for, self._learn_threshold)
        # Until the processor's next look for stale signals (``_threshold``), a frame of
        # an unmapped key is only counted in its channel's ``pending``; ``_latest`` is
        # the last such frame's time.
        self._threshold = -math.inf
        self._latest = -math.inf
        self.frames = 0

    def play(self, lines: Iterable[str]) -> None:
        """Play every line, until the end or a stop."""
        feed = iter(lines)
        number = 0
        try:
            while chunk := list(islice(feed, _CHUNK)):
                self._flush()
                if self._stopped():
                    return
                if self._pace is None:
                    self._fast(chunk, number)
                elif not all(self._careful(line, n) for n, line in enumerate(chunk, number + 1)):
                    return
                number += len(chunk)
        finally:
            self._flush()

    def _fast(self, chunk: list[str], before: int) -> None:
        """Play a chunk at full speed; plain lines in one pass, the rest the careful way.

        Args:
            chunk: The lines.
            before: How many lines of the log came before them.
        """
        channels, fromhex, inside, careful = self._channels, bytes.fromhex, _INSIDE, _CAREFUL
        threshold, latest = self._threshold, self._latest
        for number, line in enumerate(chunk, before + 1):
            try:
                stamp, name, frame, *mark = line.split()
                id_text, payload = frame.split("#", 1)
                timestamp = float(stamp[inside])
                data = fromhex(payload)
                channel = channels[name]
                plan = channel.plans[id_text]
            except ValueError:
                plan = careful
            if plan is None and not mark and timestamp < threshold:
                # The common case: unmapped, and no look for stale signals due.
                channel.pending += 1
                latest = timestamp
                continue
            self._latest = latest
            if plan is careful or (mark and not _plain_mark(line, mark)):
                self._careful(line, number)
            elif plan is None:
                self._skip(channel, timestamp)
            else:
                self.frames += 1
                self._feed(channel, plan, timestamp, data)
            threshold, latest = self._threshold, self._latest
        self._latest = latest

    def _learn_threshold(self, channel: _Channel) -> None:
        """A new channel's input tells when the next look for stale signals is due."""
        if self._threshold == -math.inf:
            self._threshold = channel.input.stale_check_at

    def _skip(self, channel: _Channel, timestamp: float) -> None:
        """A frame of an unmapped key."""
        if timestamp < self._threshold:
            channel.pending += 1
            self._latest = timestamp
            return
        self._flush()
        self.frames += 1
        if channel.input.skip(timestamp):
            self._after_frame()
        self._threshold = channel.input.stale_check_at

    def _feed(self, channel: _Channel, plan: object, timestamp: float, data: bytes) -> None:
        """A data frame of a mapped key."""
        self._flush()
        channel.input.feed(plan, timestamp, data)
        self._after_frame()
        self._threshold = channel.input.stale_check_at

    def _careful(self, line: str, number: int) -> bool:
        """Play one line the careful way; ``False`` if the pace said stop."""
        parts = line.split()
        if len(parts) == 3 or (len(parts) == 4 and _plain_mark(line, parts[3:])):
            stamp, name, frame = parts[0], parts[1], parts[2]
        else:
            return self._slow(line, number) if parts else True  # python-can skips empty lines
        id_text, hash_sign, payload = frame.partition("#")
        if payload[:1] == "#":  # CAN FD: "##", then the flags digit
            payload = payload[2:] if payload[1:2] in _DIGITS else "?"
        try:
            channel = self._channels[name]
            timestamp = float(stamp[_INSIDE])
            data = bytes.fromhex(payload)
        except ValueError:
            return self._slow(line, number)
        plan = channel.plans[id_text]
        if plan is _CAREFUL or not hash_sign or payload[:1] in ("r", "R"):
            return self._slow(line, number)
        if self._pace is not None and self._pace(timestamp):
            return False
        if plan is None:
            self._skip(channel, timestamp)
        else:
            self.frames += 1
            self._feed(channel, plan, timestamp, data)
        return True

    def _flush(self) -> None:
        """Count the unmapped frames not yet counted, in the inputs of their channels."""
        for channel in self._channels.values():
            if channel.pending:
                channel.input.count_skipped(channel.pending, self._latest)
                self.frames += channel.pending
                channel.pending = 0

    def _slow(self, line: str, number: int) -> bool:
        """A line python-can's reader reads, frame by frame; ``False`` if the pace said stop."""
        try:
            messages = list(can.CanutilsLogReader(io.StringIO(line)))
        except (ValueError, IndexError, KeyError, TypeError, OverflowError, AttributeError) as err:
            self._bad_line(number, err)
            return True
        for msg in messages:
            if self._pace is not None and self._pace(msg.timestamp):
                return False
            self._flush()  # counts stay in the order the frames came
            channel = msg.channel
            self._input_for(channel if isinstance(channel, str | int) else None)(msg)
            self.frames += 1
            self._after_frame()
            # The input may have looked for stale signals, and so moved its next look.
            self._threshold = -math.inf
        return True


def _plain_mark(line: str, mark: list[str]) -> bool:
    """Whether a fourth column is the ``R``/``T`` python-can reads (after a space)."""
    return len(mark) == 1 and mark[0] in _RX_MARKS and line.rstrip()[-2] == " "
