"""The fault assembler: one ``DTCList`` from DTC slots, warning lamps and diagnostic reads.

Cars broadcast faults in two ways touchpoint reads: a warning lamp signal per lamp, and
a DTC message carrying one two-byte code at a time (cycling through the active codes;
code 0 means none). Both, plus the result of an on-demand ISO-TP read, are folded into
``Vehicle.Diagnostics.DTCList`` (J2012 codes, then ``LAMP:<name>`` for lit lamps) and
``DTCCount``, published whenever the set changes. A broadcast code that is no longer
seen for its hold time is dropped, which is how a cleared fault disappears.

The first list is published only once it is whole: every slot has gone round once (a
code came back, or the ECU said "none"), or its hold time has passed since the first
fault frame. A list made of the first code of a rotation (or of a lamp frame that came
before the DTC frame) would tell the agent the other faults had cleared, and they would
"appear" again a moment later, after every start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from can_signals.catalogue import DTC_COUNT, DTC_LIST
from can_signals.update import SignalUpdate

Emit = Callable[[SignalUpdate], None]
#: A cycling code is held for this many rotations of the slot before it counts as gone.
ROTATIONS_HELD: Final = 2.5
ROTATION_DECAY: Final = 0.9


@dataclass(slots=True)
class _Slot:
    bus: str
    hold: float
    last_seen: Callable[[], float]
    seen: dict[str, float] = field(default_factory=dict)
    current: tuple[str, ...] = ()
    #: The longest recent gap between two sightings of one code: with N codes in turn
    #: on a slot sent every T seconds, about N x T. A code is held for a few of these.
    rotation: float = 0.0
    #: The time between two codes on the slot, and when the last one came: before a
    #: whole rotation has been seen, it is at least one step per code seen.
    step: float = 0.0
    last_change: float | None = None
    #: The slot has gone round once (a code seen again, or "none active").
    complete: bool = False

    def holds_for(self) -> float:
        """How long a code may go unseen before it counts as cleared."""
        rotation = max(self.rotation, (len(self.seen) + 1) * self.step)
        return max(self.hold, ROTATIONS_HELD * rotation)


class FaultAssembler:
    """Folds fault sources into ``DTCList`` and ``DTCCount`` updates."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._slots: dict[int, _Slot] = {}
        self._lamps: dict[str, bool] = {}
        self._reads: dict[str, tuple[str, ...]] = {}
        self._published: tuple[str, ...] | None = None
        self._first: float | None = None  # the first fault frame: the warm-up's start

    def add_slot(self, slot_id: int, bus: str, hold: float, last_seen: Callable[[], float]) -> None:
        """Register a broadcast DTC slot; ``last_seen`` gives its frame's latest timestamp."""
        self._slots[slot_id] = _Slot(bus, hold, last_seen)

    def slot(self, slot_id: int, codes: tuple[str, ...], timestamp: float, bus: str) -> None:
        """A DTC slot showed ``codes`` (empty: the ECU says no fault is active)."""
        slot = self._slots[slot_id]
        if not codes:
            slot.complete = True
            slot.seen.clear()
            slot.rotation = slot.step = 0.0
        if slot.last_change is not None:
            slot.step = max(slot.step * ROTATION_DECAY, timestamp - slot.last_change)
        slot.last_change = timestamp
        for code in codes:
            previous = slot.seen.get(code)
            if previous is not None:
                slot.complete = True
            if previous is not None and code not in slot.current:
                # Back after the other codes had their turn: one rotation. The estimate
                # decays, so it follows the list as it shrinks.
                slot.rotation = max(slot.rotation * ROTATION_DECAY, timestamp - previous)
            slot.seen[code] = timestamp
        slot.current = codes
        self._publish(timestamp, bus)

    def lamp(self, name: str, lit: bool | None, timestamp: float, bus: str) -> None:  # noqa: FBT001
        """A warning lamp changed (``None``: its signal went stale, so it is not shown)."""
        self._lamps[name] = bool(lit)
        self._publish(timestamp, bus)

    def read_result(self, source: str, codes: tuple[str, ...], timestamp: float) -> None:
        """Codes stored in an ECU, from an on-demand diagnostic read."""
        self._reads[source] = codes
        self._publish(timestamp, "diag")

    def expire(self, now: float) -> None:
        """Drop broadcast codes not seen for their hold time."""
        changed = ""
        for slot in self._slots.values():
            if not slot.hold:  # ``stale_ms: 0``: codes are held until the ECU sends 0
                continue
            frame_seen = slot.last_seen()
            for code, seen in list(slot.seen.items()):
                latest = max(seen, frame_seen) if code in slot.current else seen
                if now - latest > slot.holds_for():
                    del slot.seen[code]
                    changed = slot.bus
        if changed:
            self._publish(now, changed)
        elif self._published is None and self._first is not None and self._slots:
            self._publish(now, next(iter(self._slots.values())).bus)  # the warm-up may be over

    def _warming_up(self, timestamp: float) -> bool:
        if self._first is None:
            self._first = timestamp
        if self._published is not None:
            return False
        return not all(
            slot.complete or timestamp - self._first >= slot.holds_for()
            for slot in self._slots.values()
        )

    def _publish(self, timestamp: float, bus: str) -> None:
        if self._warming_up(timestamp):
            return
        codes: set[str] = set()
        for slot in self._slots.values():
            codes.update(slot.seen)
        for read in self._reads.values():
            codes.update(read)
        lamps = sorted(f"LAMP:{name}" for name, lit in self._lamps.items() if lit)
        listing = (*sorted(codes), *lamps)
        if listing == self._published:
            return
        self._published = listing
        self._emit(SignalUpdate(DTC_LIST, listing, None, timestamp, bus))
        self._emit(SignalUpdate(DTC_COUNT, len(listing), None, timestamp, bus))
