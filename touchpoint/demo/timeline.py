"""The demo's timeline: one readable line per thing that happens, from every component.

Each line has the time since the start, the odometer, the vehicle's state as the agent
sees it (PARKED, DRIVING, CHARGING, OFF), who speaks (SIM, SIGNAL, CARD, HMI, CLOUD)
and what happened. The timeline is also a card sink, a signal tap and an event tap of
the daemon, and collects what the closing summary and the story's checks need.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final, TextIO

from agent.cards import CardChange, CardKind, ChangeType
from agent.events import Event, EventType
from agent.signals import IGNITION, IS_CHARGING, SELECTED_GEAR
from agent.vehicle import VehicleState
from can_signals.catalogue import DTC_LIST, GEAR_DRIVE, GEAR_PARK, ODOMETER, SPEED
from can_signals.update import SignalUpdate
from cloud_sync.contract import WireEvent

_WATCHED: Final = {
    IGNITION: "ignition",
    SELECTED_GEAR: "gear",
    IS_CHARGING: "charging",
    DTC_LIST: "faults",
}
_GEARS: Final = {GEAR_PARK: "P", GEAR_DRIVE: "D", 0: "N", -1: "R"}
#: Events the cloud takes in within this many seconds share a line.
CLOUD_LINE_S: Final = 0.25


def vehicle_label(vehicle: VehicleState | None) -> str:
    """A one-word state of the car for the timeline."""
    if vehicle is None or not vehicle.signals:
        return "-"  # nothing heard from the car yet
    if vehicle.charging:
        return "CHARGING"
    if vehicle.driving:
        return "DRIVING"
    return "PARKED" if vehicle.in_drive_cycle else "OFF"


class Timeline:
    """Prints the timeline and keeps the facts the summary needs.

    Args:
        out: Where the lines go.
        vehicle: The agent's view of the car now (read on the event loop).
        verbose: Also print every kilometre of the odometer.
    """

    def __init__(
        self,
        out: TextIO,
        vehicle: Callable[[], VehicleState | None] = lambda: None,
        *,
        verbose: bool = False,
    ) -> None:
        self._out = out
        #: The agent's view of the car (set once the daemon exists).
        self.vehicle = vehicle
        self._verbose = verbose
        self._start = time.monotonic()
        self._values: dict[str, object] = {}
        self._last_km = -1
        self.odometer_km = 0.0
        self.speed_kmh = 0.0
        self.changes: list[CardChange] = []
        self.car_events: dict[str, str] = {}  # id -> type, every event the car committed
        #: The driver's taps (action keys) and the slots booked, as the car recorded them.
        self.actions: list[str] = []
        self.booked_slots: list[str] = []
        self.cloud_events: dict[str, str] = {}  # id -> type, every event the cloud took in
        self._arrived: list[str] = []

    # -- writing ------------------------------------------------------------------------

    def line(self, text: str, *, state: str | None = None) -> None:
        """One line of the timeline."""
        elapsed = time.monotonic() - self._start
        label = state if state is not None else vehicle_label(self.vehicle())
        self._out.write(f"[{elapsed:6.1f}s] {self.odometer_km:10,.1f} km  {label:8}  {text}\n")
        self._out.flush()

    @property
    def moving(self) -> bool:
        """Whether the last decoded speed was above zero."""
        return self.speed_kmh > 0

    # -- daemon taps --------------------------------------------------------------------

    def on_signals(self, updates: Sequence[SignalUpdate]) -> None:
        """A signal tap: the odometer, the speed and the watched signals' changes."""
        for update in updates:
            if update.path == SPEED and isinstance(update.value, int | float):
                self.speed_kmh = float(update.value)
            if update.path == ODOMETER and isinstance(update.value, int):
                self.odometer_km = update.value / 1000
                if self._verbose and int(self.odometer_km) != self._last_km:
                    self._last_km = int(self.odometer_km)
                    self.line(f"SIGNAL   odometer {self.odometer_km:,.1f} km")
            name = _WATCHED.get(update.path)
            if name is None or self._values.get(name) == update.value:
                continue
            self._values[name] = update.value
            value = update.value
            if name == "gear" and isinstance(value, int):
                value = _GEARS.get(value, value)
            if name == "faults" and isinstance(value, tuple):
                value = ", ".join(value) or "none"
            self.line(f"SIGNAL   {name}: {value}")

    def on_events(self, events: Sequence[Event]) -> None:
        """An event tap: what the car committed to its outbox."""
        for event in events:
            self.car_events[event.id] = event.type
            if event.type == EventType.CARD_ACTION:
                self.actions.append(str(event.payload.get("action")))
            elif event.type == EventType.REQUEST_BOOKING:
                self.booked_slots.append(str(event.payload.get("slot_id")))

    async def apply(self, changes: Sequence[CardChange]) -> None:
        """A card sink: every card shown, changed or taken away."""
        for change in changes:
            self.changes.append(change)
            card = change.card
            kind = card.kind.name.lower()
            if change.type is ChangeType.ADDED:
                self.line(f"CARD     shown [{kind}]: {card.title.en} — {card.body.en}")
            elif change.type is ChangeType.REMOVED:
                self.line(f"CARD     removed ({change.reason.name.lower()}): {card.title.en}")
            else:
                pending = " (pending)" if card.pending else ""
                self.line(f"CARD     updated [{kind}]: {card.title.en}{pending}")

    def on_cloud_event(self, vehicle_id: str, event: WireEvent) -> None:
        """The cloud took in an event for the first time (handed over to the event loop)."""
        self.cloud_events[event.id] = event.type
        if event.type.startswith("request."):
            self.line(f"CLOUD    request from {vehicle_id}: {event.type}")
            return
        # Events arrive in batches: one line per batch, not per event.
        if not self._arrived:
            asyncio.get_running_loop().call_later(CLOUD_LINE_S, self._cloud_line)
        self._arrived.append(event.type)

    def _cloud_line(self) -> None:
        arrived, self._arrived = Counter(self._arrived), []
        kinds = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(arrived.items()))
        count = arrived.total()
        self.line(f"CLOUD    received {count} event{'s' if count > 1 else ''}: {kinds}")

    # -- what happened ------------------------------------------------------------------

    def cards_shown(self) -> Counter[CardKind]:
        """Cards shown at least once, by kind."""
        first = {c.card.id: c.card.kind for c in self.changes if c.type is ChangeType.ADDED}
        return Counter(first.values())

    def car_types(self) -> Counter[str]:
        """The car's events by type."""
        return Counter(self.car_events.values())

    def cloud_ids(self) -> set[str]:
        """The ids of the events the cloud took in."""
        return set(self.cloud_events)
