"""What the invariant checker looks at: the store, the cloud and the screen, each as a view.

- :func:`read_store` opens the daemon's SQLite file read-only (while it runs, or after
  it was killed) and takes the outbox, the dead letters, the eviction count and the
  state sections.
- :class:`CloudLedger` records, on the reference cloud's MQTT thread, every event it
  received for the first time (after its de-duplication by id) and every answer it
  gave; :meth:`CloudLedger.view` is a consistent copy.
- :class:`ScreenView` is what a D-Bus client sees (the reference HMI's client state).

Read the store before the cloud: the cloud only grows, and an event the car deleted
was received before the car heard so; the other order could see it in neither.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.cards import CardKind, Display
from cloud_sync.contract import BookingReply, RedemptionReply, SlotsReply, WireEvent
from ui_bridge.reference.hmi_client import HmiState


@dataclass(frozen=True, slots=True)
class Recorded:
    """One event as the car recorded it (from the outbox) or the cloud received it."""

    id: str
    type: str
    time: float
    time_trusted: bool
    boot_id: str
    seq: int
    payload: Mapping[str, Any]
    request_id: str | None = None

    @classmethod
    def from_wire(cls, event: WireEvent) -> Recorded:
        """From the cloud's side."""
        return cls(event.id, event.type, event.time, event.time_trusted, event.boot_id,
                   event.seq, event.payload, event.request_id)  # fmt: skip

    @property
    def order(self) -> tuple[str, int]:
        """Boot and sequence number: the car's own order of its events."""
        return self.boot_id, self.seq


@dataclass(frozen=True, slots=True)
class StoreView:
    """A read-only look at the daemon's database."""

    integrity: str
    outbox: Mapping[str, Recorded]
    dead_letters: frozenset[str]
    evicted: int
    sections: Mapping[str, Any]

    def section(self, name: str) -> Any:
        """A state section (decoded), or None."""
        return self.sections.get(name)


EMPTY_STORE = StoreView("ok", {}, frozenset(), 0, {})


def read_store(path: Path, *, integrity: bool = True) -> StoreView:
    """Everything the checker needs from the database, read-only (empty if none yet)."""
    if not path.is_file():
        return EMPTY_STORE
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        connection.execute("PRAGMA busy_timeout = 5000")
        checked = (
            "; ".join(str(r[0]) for r in connection.execute("PRAGMA integrity_check"))
            if integrity
            else "ok"
        )
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        if not {"outbox", "state", "meta", "dead_letter"} <= tables:
            return StoreView(checked, {}, frozenset(), 0, {})  # killed before the schema
        rows = connection.execute(
            "SELECT id, type, time, time_trusted, boot_id, seq, payload, request_id FROM outbox"
        ).fetchall()
        dead = frozenset(str(r[0]) for r in connection.execute("SELECT id FROM dead_letter"))
        evicted = connection.execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()
        sections = {
            str(name): json.loads(value)
            for name, value in connection.execute("SELECT section, value FROM state")
        }
    finally:
        connection.close()
    outbox = {
        str(r[0]): Recorded(
            str(r[0]),
            str(r[1]),
            float(r[2]),
            bool(r[3]),
            str(r[4]),
            int(r[5]),
            json.loads(r[6]),
            r[7],
        )
        for r in rows
    }
    return StoreView(checked, outbox, dead, int(evicted[0]) if evicted else 0, sections)


Answer = SlotsReply | BookingReply | RedemptionReply


@dataclass(frozen=True, slots=True)
class CloudView:
    """What the cloud holds: first arrivals by id, and its answers by request id."""

    events: Mapping[str, Recorded]
    #: How often the cloud handed each id on as new (its de-duplication makes it 1).
    handed_on: Mapping[str, int]
    #: Its last answer to each booking or redemption request.
    answers: Mapping[str, Answer]


@dataclass(slots=True)
class CloudLedger:
    """Recorder for :class:`~cloud_sync.reference.cloud_sim.CloudSim` callbacks.

    Pass :meth:`on_event` as its ``on_event`` and :meth:`on_reply` as its ``on_reply``.
    """

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _events: dict[str, Recorded] = field(default_factory=dict)
    _handed_on: Counter[str] = field(default_factory=Counter)
    _answers: dict[str, Answer] = field(default_factory=dict)

    def on_event(self, _vehicle_id: str, event: WireEvent) -> None:
        """A new event reached the cloud (called on its MQTT thread)."""
        with self._lock:
            self._events.setdefault(event.id, Recorded.from_wire(event))
            self._handed_on[event.id] += 1

    def on_reply(self, reply: Answer) -> None:
        """The cloud answered a request."""
        if isinstance(reply, SlotsReply):
            return
        with self._lock:
            self._answers[reply.request_id] = reply

    def view(self) -> CloudView:
        """A copy, consistent in itself."""
        with self._lock:
            return CloudView(dict(self._events), dict(self._handed_on), dict(self._answers))


@dataclass(frozen=True, slots=True)
class ScreenCard:
    """A card on the bus, as far as the invariants care."""

    id: str
    kind: CardKind
    display: Display
    pending: bool


@dataclass(frozen=True, slots=True)
class ScreenView:
    """What a D-Bus client sees: the agent's presence, restriction and cards."""

    running: bool
    restricted: bool
    waiting: int
    cards: tuple[ScreenCard, ...]

    @classmethod
    def of(cls, state: HmiState) -> ScreenView:
        """From the reference HMI client's state."""
        cards = tuple(
            ScreenCard(c.id, c.kind, c.display, c.pending) for c in state.cards.values() if c.id
        )
        return cls(state.running, state.restricted, state.waiting, cards)


NO_SCREEN = ScreenView(running=False, restricted=False, waiting=0, cards=())
