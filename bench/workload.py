"""The frames the signal benchmarks run on: the real RAV4 2016 recording and its mapping.

Besides the recording as it is, this builds a worst case: the recording's mapped frames
with every mapped signal changed from the previous frame of its ID, so that every frame
is decoded, converted and checked. The changes are the smallest possible (the lowest bit
of the raw value flips; the odometer counts up one step per frame), so the values stay
plausible and the guards accept them: a worst case for cost, not a rejection test.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import can

from bench.report import DataMissingError, realdata_dir
from can_signals.binding import Binding, bind, frame_key, signal_bits
from can_signals.catalogue import ODOMETER
from can_signals.dbc import load_dbcs
from can_signals.mapping import load_mapping

#: The bus the virtual-bus runs use; the RAV4 DBC applies to every bus, so any name works.
BUS: Final = "can0"

_REPO_ROOT: Final = Path(__file__).resolve().parents[1]
_MAPPING: Final = _REPO_ROOT / "docs" / "cars" / "rav4_2016" / "mapping.yaml"


@dataclass(frozen=True, slots=True)
class Workload:
    """The RAV4 recording, split the ways the benchmarks need it.

    Attributes:
        log: The candump log (for replays, which read the file themselves).
        binding: The RAV4 mapping bound to the RAV4 DBC.
        recording: Every frame of the log, in order.
        mapped: The frames whose IDs the mapping maps, with their real payloads.
        unmapped: The other frames.
        changing: ``mapped`` with every mapped signal changing on every frame.
    """

    log: Path
    binding: Binding
    recording: tuple[can.Message, ...]
    mapped: tuple[can.Message, ...]
    unmapped: tuple[can.Message, ...]
    changing: tuple[can.Message, ...]


def load_binding() -> tuple[Path, Binding]:
    """The recording's path and the RAV4 mapping bound to its DBC, without reading the log.

    Raises:
        DataMissingError: If the shared recording or the mapping is not there.
    """
    data = realdata_dir() / "rav4_2016"
    log = data / "drive_seg40.log"
    dbc = data / "toyota_new_mc_pt.dbc"
    for path in (log, dbc, _MAPPING):
        if not path.is_file():
            raise DataMissingError(f"missing {path} (see shared/realdata/README.md)")
    return log, bind(load_mapping(_MAPPING), load_dbcs([(None, dbc)]))


def load_workload() -> Workload:
    """Load the recording, the DBC and the mapping.

    Raises:
        DataMissingError: If the shared recording or the mapping is not there.
    """
    log, binding = load_binding()
    reader = can.LogReader(log)
    try:
        recording = tuple(reader)
    finally:
        reader.stop()
    keys = binding.layouts_for_bus(BUS).keys()
    mapped = tuple(m for m in recording if _key(m) in keys)
    unmapped = tuple(m for m in recording if _key(m) not in keys)
    changing = tuple(changing_payloads(binding, mapped, len(mapped)))
    return Workload(log, binding, recording, mapped, unmapped, changing)


@dataclass(frozen=True, slots=True)
class _Field:
    """A mapped signal's bits in ``int.from_bytes(data, "little")``, lowest bit first."""

    positions: tuple[int, ...]
    counts_up: bool  # an odometer: moving it back would be rejected, so it only moves on


def _fields(binding: Binding) -> dict[int, tuple[_Field, ...]]:
    fields: dict[int, tuple[_Field, ...]] = {}
    for key, layout in binding.layouts_for_bus(BUS).items():
        found = []
        for signal_binding in layout.bindings:
            bits = list(signal_bits(signal_binding.signal))
            if signal_binding.signal.byte_order == "big_endian":
                bits.reverse()  # signal_bits walks a Motorola signal from its top bit down
            found.append(_Field(tuple(bits), signal_binding.entry.path == ODOMETER))
        fields[key] = tuple(found)
    return fields


def changing_payloads(
    binding: Binding, frames: Sequence[can.Message], count: int
) -> Iterator[can.Message]:
    """``count`` frames cycled from ``frames``, every mapped signal changing on every frame.

    The cycle runs forwards then backwards, so the values stay continuous when it
    repeats (a speed jumping back to the recording's start would be rejected). A frame
    shorter than its mapped bits (the recording drops trailing zero bytes) is padded so
    that every mapped signal is present and can change.
    """
    fields = _fields(binding)
    cycle = [*frames, *reversed(frames)]
    last: dict[tuple[int, int], int] = {}
    for i in range(count):
        msg = cycle[i % len(cycle)]
        key = _key(msg)
        layout = fields[key]
        needed = max(max(f.positions) for f in layout) // 8 + 1
        length = max(len(msg.data), needed)
        word = int.from_bytes(bytes(msg.data).ljust(length, b"\0"), "little")
        for index, field in enumerate(layout):
            raw = _read(word, field.positions)
            previous = last.get((key, index))
            if field.counts_up:
                raw = raw if previous is None else previous + 1
            elif raw == previous:
                raw ^= 1  # the smallest change there is
            last[(key, index)] = raw
            word = _write(word, field.positions, raw)
        yield can.Message(
            timestamp=msg.timestamp,
            arbitration_id=msg.arbitration_id,
            is_extended_id=msg.is_extended_id,
            data=word.to_bytes(length, "little"),
            channel=msg.channel,
        )


def _key(msg: can.Message) -> int:
    return frame_key(msg.arbitration_id, extended=msg.is_extended_id)


def _read(word: int, positions: Sequence[int]) -> int:
    return sum(((word >> bit) & 1) << i for i, bit in enumerate(positions))


def _write(word: int, positions: Sequence[int], raw: int) -> int:
    for i, bit in enumerate(positions):
        word = word | (1 << bit) if (raw >> i) & 1 else word & ~(1 << bit)
    return word
