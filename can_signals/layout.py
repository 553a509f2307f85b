"""What a bound mapping is made of: signal bindings, and per CAN ID what to decode.

A :class:`SignalBinding` is one mapping entry on one signal of one DBC message. Per
mapped CAN ID, :func:`build_layout` makes a :class:`FrameLayout`: a cantools message cut
down to the signals the mapping needs (decoding work is proportional to what is mapped),
and the bit mask of those signals (to skip frames whose mapped bits did not change).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cantools.database.can import Message, Signal

from can_signals.catalogue import SignalSpec
from can_signals.convert import Converter
from can_signals.mapping import MappingEntry
from can_signals.not_available import not_available_values

#: Frame keys set this bit for 29-bit identifiers, so 0x123 standard and extended differ.
EXTENDED_FLAG: Final = 0x8000_0000
DEFAULT_STALE_MS: Final = 5000
#: ``part``: one input of a combined value (``combine``), which converts nothing itself.
RouteKind = Literal["value", "lamp", "dtc", "part"]
#: Classic CAN carries at most 8 data bytes; a longer message is CAN FD.
CLASSIC_MAX_BYTES: Final = 8


def frame_key(arbitration_id: int, *, extended: bool) -> int:
    """The lookup key of a CAN ID (extended IDs carry :data:`EXTENDED_FLAG`)."""
    return arbitration_id | EXTENDED_FLAG if extended else arbitration_id


@dataclass(frozen=True, slots=True)
class SignalBinding:
    """One mapping entry bound to one signal of one DBC message."""

    entry: MappingEntry
    spec: SignalSpec
    dbc_index: int
    message: Message
    signal: Signal
    convert: Converter
    reads: frozenset[str]
    kind: RouteKind
    #: ``(selector signal, value)``: only frames whose selector has this value (the
    #: ``multiplexer`` key); ``None`` for every frame.
    selector: tuple[str, float | int] | None = None
    #: For a ``part``: the combined value it feeds, and the name it has there (``x``
    #: for the entry's own ``signal``).
    combination: Combination | None = None
    part_name: str = "x"

    @property
    def key(self) -> int:
        """The frame key of the message carrying the signal."""
        return frame_key(self.message.frame_id, extended=self.message.is_extended_frame)

    @property
    def unavailable(self) -> frozenset[float | int]:
        """The decoded values that mean the signal has no value (see not_available)."""
        if self.kind == "dtc":
            return frozenset()  # a DTC slot's empty value is "no code", handled there
        return not_available_values(self.entry, self.signal, own=self.part_name == "x")

    @property
    def stale_seconds(self) -> float:
        """Seconds without the signal before it is reported stale (0: never)."""
        return stale_seconds(self.entry, self.message)


def stale_seconds(entry: MappingEntry, message: Message) -> float:
    """Seconds without a mapped signal of ``message`` before it is stale (0: never).

    ``stale_ms`` if the entry gives it, else ten cycle times and at least a second, or
    :data:`DEFAULT_STALE_MS` when the DBC gives no cycle time.
    """
    if entry.stale_ms is not None:
        return entry.stale_ms / 1000
    cycle = message.cycle_time
    if cycle:
        return max(10 * cycle, 1000) / 1000
    return DEFAULT_STALE_MS / 1000


@dataclass(frozen=True, eq=False)
class Combination:
    """A value computed from signals of several frames (a ``combine`` entry).

    One object per entry, shared by the bindings of its inputs (``part`` bindings), which
    tell it their readings; the processor keeps one state per bus for it.

    Attributes:
        entry: The mapping entry.
        spec: The VSS datatype and unit of the value.
        convert: The entry's converter: ``x`` is its ``signal``, the other inputs are
            found by their names in the readings it is given.
        names: Every input's name (``x`` first).
        within_ms: The largest time between the oldest and the newest reading used.
        stale_seconds: Seconds without a complete set of readings before it is stale.
    """

    entry: MappingEntry
    spec: SignalSpec
    convert: Converter
    names: tuple[str, ...]
    within_ms: int
    stale_seconds: float


def is_fd_message(message: Message) -> bool:
    """Whether a DBC message travels in CAN FD frames (declared so, or over 8 bytes)."""
    return bool(message.is_fd) or message.length > CLASSIC_MAX_BYTES


@dataclass(frozen=True, slots=True)
class FrameLayout:
    """What is needed to decode one CAN ID for a set of bindings."""

    key: int
    message: Message
    bindings: tuple[SignalBinding, ...]
    mask: int
    #: For a multiplexed message, its mapped signals outside the multiplexed branches:
    #: what is decoded when the multiplexer selects a branch the mapping does not read.
    unmultiplexed: Message | None = None


def build_layout(key: int, message: Message, bindings: Sequence[SignalBinding]) -> FrameLayout:
    """What to decode of ``message`` for ``bindings`` (all on it)."""
    wanted: dict[str, Signal] = {}
    for binding in bindings:
        for name in (binding.signal.name, *binding.reads):
            _add_with_multiplexers(message, name, wanted)
    signals = list(wanted.values())
    reduced = _cut_down(message, signals)
    unmultiplexed = None
    if reduced.is_multiplexed():
        plain = [s for s in signals if s.multiplexer_ids is None and not s.is_multiplexer]
        unmultiplexed = _cut_down(message, plain)
    return FrameLayout(key, reduced, tuple(bindings), _bits_mask(signals), unmultiplexed)


def route_mask(binding: SignalBinding) -> int:
    """The bits a binding's value depends on.

    Its signal, the signals its expression reads, and the multiplexers selecting them.
    """
    wanted: dict[str, Signal] = {}
    for name in (binding.signal.name, *binding.reads):
        _add_with_multiplexers(binding.message, name, wanted)
    return _bits_mask(wanted.values())


def _bits_mask(signals: Iterable[Signal]) -> int:
    mask = 0
    for signal in signals:
        for bit in signal_bits(signal):
            mask |= 1 << bit
    return mask


def _cut_down(message: Message, signals: list[Signal]) -> Message:
    return Message(
        frame_id=message.frame_id,
        name=message.name,
        length=message.length,
        signals=signals,
        is_extended_frame=message.is_extended_frame,
        is_fd=message.is_fd,
        strict=False,
        cycle_time=message.cycle_time,
    )


def _add_with_multiplexers(message: Message, name: str, wanted: dict[str, Signal]) -> None:
    while name and name not in wanted:
        signal = message.get_signal_by_name(name)
        wanted[name] = signal
        name = signal.multiplexer_signal or ""


def signal_bits(signal: Signal) -> Iterable[int]:
    """The positions of a signal's bits in ``int.from_bytes(data, "little")``.

    Byte ``i`` bit ``j`` (LSB 0) is position ``8 * i + j``, which is also how DBC numbers
    the start bit; big-endian (Motorola) signals run from their start bit (the MSB)
    down through the byte and on to the next byte's bit 7.
    """
    if signal.byte_order == "little_endian":
        return range(signal.start, signal.start + signal.length)
    bits = []
    bit = signal.start
    for _ in range(signal.length):
        bits.append(bit)
        bit = bit + 15 if bit % 8 == 0 else bit - 1
    return bits
