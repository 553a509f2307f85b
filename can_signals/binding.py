"""Binding a mapping to DBC files and the catalogue: every problem found, or a plan per frame.

``bind`` checks each mapping entry against the catalogue (unknown VSS path, type and
unit mismatches) and the DBC files (unknown signal, ambiguous signal, expression names)
and reports all problems at once. The result compiles, per bus, into one
:class:`FramePlan` per mapped CAN ID: a cantools message cut down to the signals the
mapping needs (cached, so decoding work is proportional to what is mapped), the bit
mask of those signals (to skip frames whose mapped bits did not change) and the routes
from each signal to its VSS path.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cantools.database.can import Message, Signal

from can_signals.catalogue import (
    CATALOGUE,
    DTC_COUNT,
    DTC_LIST,
    LAMP_PREFIX,
    SignalSpec,
)
from can_signals.convert import Converter, SetupError, build_converter, type_family
from can_signals.dbc import DbcSource
from can_signals.errors import MappingError, Problem
from can_signals.expression import compile_expression
from can_signals.mapping import MappingDocument, MappingEntry

_log = logging.getLogger(__name__)

#: Frame keys set this bit for 29-bit identifiers, so 0x123 standard and extended differ.
EXTENDED_FLAG: Final = 0x8000_0000
DEFAULT_STALE_MS: Final = 5000
RouteKind = Literal["value", "lamp", "dtc"]


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

    @property
    def key(self) -> int:
        """The frame key of the message carrying the signal."""
        return frame_key(self.message.frame_id, extended=self.message.is_extended_frame)

    @property
    def stale_seconds(self) -> float:
        """Seconds without the signal before it is reported stale (0: never)."""
        if self.entry.stale_ms is not None:
            return self.entry.stale_ms / 1000
        cycle = self.message.cycle_time
        if cycle:
            return max(10 * cycle, 1000) / 1000
        return DEFAULT_STALE_MS / 1000


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


class Binding:
    """A mapping checked against DBC files and the catalogue."""

    def __init__(
        self,
        document: MappingDocument,
        sources: Sequence[DbcSource],
        bindings: Sequence[SignalBinding],
        warnings: Sequence[Problem],
    ) -> None:
        self.document = document
        self.sources = tuple(sources)
        self.bindings = tuple(bindings)
        self.warnings = tuple(warnings)
        self._layouts: dict[frozenset[int], dict[int, FrameLayout]] = {}

    @property
    def derives_dtc_list(self) -> bool:
        """Whether DTC slots or lamps are mapped, so the fault assembler owns ``DTCList``."""
        return any(b.kind in ("dtc", "lamp") for b in self.bindings)

    def dbc_indexes_for_bus(self, bus: str) -> frozenset[int]:
        """The DBC files that describe ``bus``: those for every bus and those named for it."""
        return frozenset(i for i, s in enumerate(self.sources) if s.bus in (None, bus))

    def layouts_for_bus(self, bus: str) -> dict[int, FrameLayout]:
        """The frame layouts of one bus, by frame key (empty for a bus with no DBC)."""
        indexes = self.dbc_indexes_for_bus(bus)
        layouts = self._layouts.get(indexes)
        if layouts is None:
            layouts = self._build_layouts(indexes)
            self._layouts[indexes] = layouts
        return layouts

    def frame_ids_for_bus(self, bus: str) -> list[tuple[int, bool]]:
        """The mapped CAN IDs of a bus as ``(id, extended)``, for kernel filters."""
        return [
            (layout.message.frame_id, layout.message.is_extended_frame)
            for layout in self.layouts_for_bus(bus).values()
        ]

    def _build_layouts(self, indexes: frozenset[int]) -> dict[int, FrameLayout]:
        by_key: dict[int, list[SignalBinding]] = defaultdict(list)
        for binding in self.bindings:
            if binding.dbc_index in indexes:
                by_key[binding.key].append(binding)
        layouts: dict[int, FrameLayout] = {}
        for key, group in by_key.items():
            first = group[0].message
            kept = [b for b in group if b.message is first]
            if len(kept) != len(group):
                _log.warning(
                    "CAN ID 0x%X is defined by several DBC files on one bus; using %s from %s",
                    first.frame_id, first.name, self.sources[group[0].dbc_index].path,
                )  # fmt: skip
            layouts[key] = _layout(key, first, kept)
        return layouts


def _layout(key: int, message: Message, bindings: Sequence[SignalBinding]) -> FrameLayout:
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


def bind(
    document: MappingDocument, sources: Sequence[DbcSource], earlier: Sequence[Problem] = ()
) -> Binding:
    """Check a mapping against DBC files and the catalogue.

    Args:
        document: The mapping.
        sources: The DBC files.
        earlier: Problems already found in the mapping file (see
            :func:`can_signals.mapping.read_mapping`), reported together with these.

    Raises:
        MappingError: With every problem found, each with its file and line or key.
    """
    index = _SignalIndex(sources)
    problems: list[Problem] = list(earlier)
    warnings: list[Problem] = []
    bindings: list[SignalBinding] = []
    mapped_paths = {e.path for e in document.entries}
    derived = any(p == DTC_LIST or p.startswith(LAMP_PREFIX) for p in mapped_paths)
    for entry in document.entries:

        def report(message: str, entry: MappingEntry = entry) -> None:
            problems.append(Problem(document.file, entry.where, f"{entry.path}: {message}"))

        spec = CATALOGUE.get(entry.path)
        if spec is None:
            hint = _suggest(entry.path, CATALOGUE)
            report(f"unknown VSS path: not in touchpoint's signal catalogue{hint}")
            continue
        if entry.path == DTC_COUNT and derived:
            report(
                "duplicate target: DTCCount is derived from DTCList and the lamps; do not map it"
            )
            continue
        if entry.path == DTC_LIST and not (entry.transform and entry.transform.dtc):
            report("DTCList is fed one code per frame: use 'transform: {dtc: true}'")
            continue
        if entry.datatype is not None and type_family(entry.datatype) != type_family(spec.datatype):
            report(f"type mismatch: declared {entry.datatype!r}, the catalogue has {spec.datatype}")
            continue
        candidates = index.find(entry.signal, entry.message)
        if not candidates:
            where = f" in message {entry.message!r}" if entry.message else ""
            report(f"unknown DBC signal {entry.signal!r}{where}{index.suggest(entry.signal)}")
            continue
        if len({(i, m.name) for i, m, _ in candidates}) > 1:
            places = ", ".join(sorted({m.name for _, m, _ in candidates}))
            warnings.append(
                Problem(document.file, entry.where,
                        f"{entry.path}: signal {entry.signal!r} is in several messages ({places}); "
                        "all are mapped, add 'message' to pick one")
            )  # fmt: skip
        kind: RouteKind = (
            "dtc" if entry.path == DTC_LIST
            else "lamp" if entry.path.startswith(LAMP_PREFIX)
            else "value"
        )  # fmt: skip
        failures: set[str] = set()
        for dbc_index, message, signal in candidates:
            try:
                convert = build_converter(entry, spec, signal, message)
            except SetupError as err:
                failures.add(str(err))
                continue
            reads = _expression_reads(entry, message)
            bindings.append(
                SignalBinding(entry, spec, dbc_index, message, signal, convert, reads, kind)
            )
        for failure in sorted(failures):
            report(failure)
    for warning in warnings:
        _log.warning("%s", warning)
    if problems:
        raise MappingError(problems)
    return Binding(document, sources, bindings, warnings)


def _expression_reads(entry: MappingEntry, message: Message) -> frozenset[str]:
    if entry.transform is None or entry.transform.math is None:
        return frozenset()
    names = {"x", *(s.name for s in message.signals)}
    return frozenset(compile_expression(entry.transform.math, names).names - {"x"})


def _suggest(word: str, choices: Iterable[str]) -> str:
    import difflib  # noqa: PLC0415 - a mistake's suggestion; the daemon does not carry it

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _SignalIndex:
    """DBC signals by name, across every loaded file."""

    def __init__(self, sources: Sequence[DbcSource]) -> None:
        self._by_name: dict[str, list[tuple[int, Message, Signal]]] = defaultdict(list)
        for dbc_index, source in enumerate(sources):
            for message in source.database.messages:
                for signal in message.signals:
                    self._by_name[signal.name].append((dbc_index, message, signal))

    def find(self, name: str, message: str | None) -> list[tuple[int, Message, Signal]]:
        found = self._by_name.get(name, [])
        if message is not None:
            found = [c for c in found if c[1].name == message]
        return found

    def suggest(self, name: str) -> str:
        return _suggest(name, self._by_name)
