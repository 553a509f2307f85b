"""The kill-loop harness: a car that keeps driving, a scripted driver, and an outbox audit.

Three parts, shared by :mod:`tests.daemon.test_kill_loop`:

- :func:`kill_loop_drive`, a scenario for the vehicle simulator: drive cycles (start,
  city traffic, park, stay parked and locked) with a ground truth the audit relies on
  (see the constants below: what the car really did, whatever the daemon saw of it).
- Two commands, run as ``python -m tests.daemon.killharness``: ``drive`` plays that
  scenario onto a python-can-remote bus at a speed factor until it is stopped, and
  ``run`` is ``touchpoint run`` plus a :class:`ScriptedDriver` that dismisses cards
  shortly after they appear (there is no HMI to tap them yet), and optionally a
  SIGKILL of itself right after a commit.
- :class:`Ledger`, which reads the store read-only after each kill and audits every
  committed event: integrity, nothing lost or changed, no logical duplicates, the state
  sections agreeing with the outbox, and no dismissed card coming back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Final
from unittest import mock

import can

from agent.cards import CardChange, CardState, ChangeType
from agent.errors import ActionError, StoreError
from agent.events import Event
from agent.store.store import CommitResult, Store
from can_signals.simulator import (
    BusSink,
    FrameEncoder,
    Gear,
    Ignition,
    Phase,
    Scenario,
    ScenarioRunner,
    SimulatorError,
    VehicleState,
    load_reference_database,
)
from can_signals.simulator.scenario import (
    ClearDtc,
    ParkingBrake,
    RaiseDtc,
    SelectGear,
    SetIgnition,
    city,
)
from touchpoint.daemon import Daemon
from touchpoint.logsetup import configure
from touchpoint.settings import ConfigError, load_settings

# -- the drive and its ground truth ------------------------------------------------------

#: Raised in the second drive cycle and never cleared: once announced, a fault of this
#: code must never be cleared nor announced again, and its card never come back.
PERSISTENT_CODE: Final = "P0420"
#: Raised (with the check-engine lamp) in every even drive cycle from the third on,
#: cleared in the next one: legitimate detections and clearances.
CYCLING_CODE: Final = "P0301"
MIL: Final = "MalfunctionIndicator"
#: The check-engine lamp is only ever lit while a P code is active, which explains it:
#: it must never be announced as a fault of its own.
EXPLAINED_LAMP: Final = f"LAMP:{MIL}"
#: The oil-life monitor's readings, by drive cycle: due soon, due, overdue. Nothing else
#: is due (6,000 km, no item due by distance for 3,000 km more) and nothing is serviced,
#: so once the first reminder is given the car is never "OK" again.
OIL_LIFE_BY_CYCLE: Final = {1: 14.0, 3: 4.0, 5: 0.0}
START_ODOMETER_KM: Final = 6_000.0
MAINTENANCE_KEY: Final = "maintenance"

DRIVE_MS: Final = 60_000
PARKED_MS: Final = 40_000
_STATE_RANK: Final = {"OK": 1, "DUE_SOON": 2, "DUE": 3, "OVERDUE": 4}


@dataclass(frozen=True, slots=True)
class OilMonitorDrops:
    """The oil-life monitor lowers its estimate (severe use: short trips, idling).

    It stands for weeks of driving between two drive cycles of the scenario; the
    estimate never rises again, as it would only after an oil change.
    """

    percent: float

    def __call__(self, state: VehicleState) -> VehicleState:
        """Apply the action."""
        return replace(state, oil_life_pct=min(state.oil_life_pct, self.percent))


def _cycle_actions(index: int) -> tuple[Any, ...]:
    actions: list[Any] = []
    if index == 1:
        actions.append(RaiseDtc(PERSISTENT_CODE))
    if index >= 2:
        lamp = frozenset({MIL})
        actions.append(
            RaiseDtc(CYCLING_CODE, lamp) if index % 2 == 0 else ClearDtc(CYCLING_CODE, lamp)
        )
    if index in OIL_LIFE_BY_CYCLE:
        actions.append(OilMonitorDrops(OIL_LIFE_BY_CYCLE[index]))
    return tuple(actions)


def kill_loop_drive(cycles: int, *, utc_start_s: int, seed: int = 2024) -> Scenario:
    """Drive cycles of about 112 s (scenario time) each: start, drive, park, stay locked.

    The faults and the oil-life drops happen at the start of a cycle's drive, so a
    fault raised in a cycle is active while the car is parked at its end (when its
    card can be shown and dismissed).
    """
    rng = random.Random(seed)
    phases: list[Phase] = []
    for index in range(cycles):
        phases += [
            Phase(f"cycle {index}: unlock", 2_000, (SetIgnition(Ignition.OFF),)),
            Phase("accessory", 1_000, (SetIgnition(Ignition.ACC),)),
            Phase("ignition on", 1_000, (SetIgnition(Ignition.ON),)),
            Phase("start", 1_000, (SetIgnition(Ignition.START),)),
            Phase(
                "ready: release the parking brake, select D",
                2_000,
                (SetIgnition(Ignition.ON), ParkingBrake(engaged=False), SelectGear(Gear.D)),
            ),
            Phase("drive", DRIVE_MS, _cycle_actions(index), city(rng, DRIVE_MS)),
            Phase("park", 3_000, (SelectGear(Gear.P), ParkingBrake(engaged=True))),
            Phase("ignition off", 2_000, (SetIgnition(Ignition.OFF),)),
            Phase("parked and locked", PARKED_MS, (SetIgnition(Ignition.LOCK),)),
        ]
    initial = VehicleState(
        utc_start_s=utc_start_s, odometer_km=START_ODOMETER_KM, soc_pct=70.0, oil_life_pct=40.0
    )
    return Scenario("kill_loop", "drive cycles for the kill loop", initial, tuple(phases))


# -- the scripted driver -------------------------------------------------------------------


class ScriptedDriver:
    """A card sink that dismisses cards shortly after they appear, as a driver would.

    Dismissing is an input like any other (``daemon.apply``); it is scheduled, never
    awaited here, because sinks are called from the daemon's commit loop.
    """

    def __init__(
        self, daemon: Daemon, rng: random.Random, *, probability: float, max_delay: float
    ) -> None:
        self._daemon = daemon
        self._rng = rng
        self._probability = probability
        self._max_delay = max_delay
        self._tasks: set[asyncio.Task[None]] = set()

    async def apply(self, changes: Sequence[CardChange]) -> None:
        """Decide, for each card that appeared, whether and when to dismiss it."""
        loop = asyncio.get_running_loop()
        for change in changes:
            if change.type is ChangeType.ADDED and self._rng.random() < self._probability:
                delay = self._rng.uniform(0, self._max_delay)
                loop.call_later(delay, self._tap, change.card.id)

    def _tap(self, card_id: str) -> None:
        task = asyncio.create_task(self._dismiss(card_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dismiss(self, card_id: str) -> None:
        # Gone from the screen meanwhile (withdrawn, closed): nothing to dismiss.
        with contextlib.suppress(ActionError):
            await self._daemon.apply(lambda a, w, m: a.on_dismiss(card_id, w, m))


def visible_card_ids(daemon: Daemon) -> list[str]:
    """The ids of the cards on screen."""
    return [c.id for c in daemon.agent.cards.cards if c.state is CardState.VISIBLE]


# -- the commands --------------------------------------------------------------------------


def _drive(args: argparse.Namespace) -> int:
    scenario = kill_loop_drive(args.cycles, utc_start_s=args.utc_start)
    encoder = FrameEncoder(load_reference_database())

    def progress(index: int, phase: Phase, state: VehicleState) -> None:
        print(f"phase {index} {phase.name} odometer {state.odometer_km:.1f}", file=sys.stderr)
        sys.stderr.flush()

    try:
        with can.Bus(interface="remote", channel=args.channel) as bus:
            runner = ScenarioRunner(
                scenario, encoder, [BusSink(bus)], speed=args.speed, on_phase=progress
            )

            def stop(signum: int, frame: FrameType | None) -> None:
                runner.stop()

            signal.signal(signal.SIGTERM, stop)
            print("driving", file=sys.stderr, flush=True)
            result = runner.run()
    except (can.CanError, OSError, SimulatorError) as err:
        print(f"drive failed: {err}", file=sys.stderr, flush=True)
        return 1
    print(f"drive ended: completed={result.completed}", file=sys.stderr, flush=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    """``touchpoint run`` (see :mod:`touchpoint.commands.run`) with a scripted driver attached.

    With ``--kill-after-commit P``, the process also SIGKILLs itself right after a
    commit that wrote events, with probability P: a kill from outside rarely lands
    between a commit and whatever the daemon does next, and that is where an output
    made only half durable would show.
    """
    configure("INFO")
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        print(f"cannot run with these settings: {err}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    daemon = Daemon(settings)
    daemon.sinks.append(
        ScriptedDriver(daemon, rng, probability=args.probability, max_delay=args.max_delay)
    )
    commit = Store.commit

    def commit_then_maybe_die(
        store: Store,
        events: Sequence[Event],
        sections: Mapping[str, str],
        now: float | None = None,
        withdrawn: Sequence[str] = (),
    ) -> CommitResult:
        result = commit(store, events, sections, now, withdrawn)
        if events and rng.random() < args.kill_after_commit:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    try:
        with mock.patch.object(Store, "commit", commit_then_maybe_die):
            asyncio.run(daemon.run())
    except StoreError as err:
        print(f"cannot open the store: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.daemon.killharness drive|run ...``."""
    parser = argparse.ArgumentParser(prog="killharness")
    commands = parser.add_subparsers(dest="command", required=True)
    drive = commands.add_parser("drive", help="play the kill-loop drive onto a remote bus")
    drive.add_argument("--channel", required=True, help="ws://127.0.0.1:PORT/")
    drive.add_argument("--speed", type=float, default=10.0)
    drive.add_argument("--cycles", type=int, default=40)
    drive.add_argument("--utc-start", type=int, required=True)
    run = commands.add_parser("run", help="the daemon with a scripted driver")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--probability", type=float, default=0.7)
    run.add_argument("--max-delay", type=float, default=0.3)
    run.add_argument("--kill-after-commit", type=float, default=0.0, metavar="P")
    args = parser.parse_args(argv)
    return _drive(args) if args.command == "drive" else _run(args)


# -- the audit -----------------------------------------------------------------------------

CLOSING_EVENTS: Final = frozenset({"card.dismissed", "card.closed", "card.expired"})
VISIBILITY_EVENTS: Final = frozenset({"card.displayed", "card.withdrawn", "card.snoozed"})

# What can go wrong, one line each (the report groups the findings by these).
INTEGRITY: Final = "integrity_check failed"
EVICTED: Final = "events were evicted"
LOST: Final = "a committed event was lost"
CHANGED: Final = "a committed event changed"
DUPLICATE_ID: Final = "an event id appears twice"
SEQ: Final = "a boot's seq numbers have holes or repeats"
INTERLEAVED: Final = "two boots' events interleave"
CONSENT: Final = "first-start consent was recorded again"
REAPPEARED: Final = "a closed card had events again"
UNKNOWN_CARD: Final = "a card event for a card never created"
CARD_TWICE: Final = "a card was created while one with its key was open"
DISMISSED_BACK: Final = "a card the driver dismissed came back with nothing new to say"
MAINTENANCE_CLOSED: Final = "the maintenance card was closed though nothing was serviced"
REMINDER_REPEATED: Final = "a maintenance reminder was repeated"
FAULT_TWICE: Final = "a fault was announced while announced"
FAULT_UNKNOWN: Final = "a fault was cleared that was not announced"
PERSISTENT: Final = f"{PERSISTENT_CODE}, active all along, was cleared or announced again"
LAMP: Final = f"{EXPLAINED_LAMP}, always explained by a P code, was announced"
STATE: Final = "the state sections disagree with the outbox"

Problem = tuple[str, str]


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One committed event, as read back from the outbox."""

    rowid: int
    id: str
    type: str
    boot_id: str
    seq: int
    payload: Mapping[str, Any]

    @property
    def where(self) -> str:
        """Row and boot, for messages."""
        return f"row {self.rowid}, boot {self.boot_id[:8]}"


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What a read-only look at the database found."""

    integrity: str
    events: tuple[OutboxEvent, ...]
    sections: Mapping[str, Any]
    evicted: int


def read_store(path: Path) -> StoreSnapshot:
    """Open the database read-only and read everything the audit needs."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        integrity = "; ".join(str(r[0]) for r in connection.execute("PRAGMA integrity_check"))
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        if "outbox" not in tables:  # killed before the schema was committed
            return StoreSnapshot(integrity, (), {}, 0)
        rows = connection.execute(
            "SELECT rowid, id, type, boot_id, seq, payload FROM outbox ORDER BY rowid"
        ).fetchall()
        sections = {
            str(name): json.loads(value)
            for name, value in connection.execute("SELECT section, value FROM state")
        }
        evicted = connection.execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()
    finally:
        connection.close()
    events = tuple(
        OutboxEvent(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), json.loads(r[5]))
        for r in rows
    )
    return StoreSnapshot(integrity, events, sections, int(evicted[0]) if evicted else 0)


@dataclass(slots=True)
class _Reminder:
    rowid: int
    rank: int
    items: frozenset[str]


@dataclass(slots=True)
class _Audit:
    """One pass over the committed events, in commit order."""

    problems: list[Problem] = field(default_factory=list)
    open_cards: dict[str, str] = field(default_factory=dict)  # card id -> key
    open_keys: dict[str, str] = field(default_factory=dict)  # key -> card id
    closed_cards: dict[str, OutboxEvent] = field(default_factory=dict)
    dismissed: dict[str, OutboxEvent] = field(default_factory=dict)  # key -> the dismissal
    #: Open card id -> its last event among created, displayed, withdrawn, snoozed.
    shown: dict[str, str] = field(default_factory=dict)
    open_faults: set[str] = field(default_factory=set)
    detections: Counter[str] = field(default_factory=Counter)
    last_legit_detection: dict[str, int] = field(default_factory=dict)
    reminder: _Reminder | None = None
    worst_rank: int = 0
    last_legit_reminder: int | None = None
    dismissed_maintenance_since_reminder: bool = False

    def event(self, event: OutboxEvent) -> None:
        kind = event.type
        if kind.startswith("card.") and kind != "card.suppressed":
            self._card(event)
        elif kind == "fault.detected":
            self._detected(event)
        elif kind == "fault.cleared":
            self._cleared(event)
        elif kind == "maintenance.reminder":
            self._reminder(event)
        elif kind == "service.reset":
            self.reminder, self.worst_rank = None, 0

    def _card(self, event: OutboxEvent) -> None:
        card_id, key = str(event.payload["card_id"]), str(event.payload["key"])
        if card_id in self.closed_cards:
            closed = self.closed_cards[card_id]
            self.problems.append(
                (REAPPEARED, f"{key} {card_id}: {event.type} ({event.where}) after {closed.type}")
            )
            return
        if event.type == "card.created":
            self._created(event, card_id, key)
            return
        if card_id not in self.open_cards:
            self.problems.append((UNKNOWN_CARD, f"{event.type} {key} {card_id} ({event.where})"))
            return
        if event.type in VISIBILITY_EVENTS:
            self.shown[card_id] = event.type
        if event.type in CLOSING_EVENTS:
            self.shown.pop(card_id, None)
            del self.open_cards[card_id]
            if self.open_keys.get(key) == card_id:
                del self.open_keys[key]
            self.closed_cards[card_id] = event
            if event.type == "card.dismissed":
                self.dismissed[key] = event
                if key == MAINTENANCE_KEY:
                    self.dismissed_maintenance_since_reminder = True
            elif key == MAINTENANCE_KEY:
                reason = event.payload.get("reason")
                self.problems.append((MAINTENANCE_CLOSED, f"{event.type} {reason} ({event.where})"))

    def _created(self, event: OutboxEvent, card_id: str, key: str) -> None:
        if card_id in self.open_cards or key in self.open_keys:
            self.problems.append((CARD_TWICE, f"{key} {card_id} ({event.where})"))
        dismissal = self.dismissed.pop(key, None)
        if dismissal is not None:
            cause = (
                self.last_legit_reminder
                if key == MAINTENANCE_KEY
                else self.last_legit_detection.get(key.removeprefix("fault:"))
            )
            if cause is None or cause < dismissal.rowid:
                self.problems.append(
                    (DISMISSED_BACK, f"{key}: dismissed ({dismissal.where}), new ({event.where})")
                )
        self.open_cards[card_id] = key
        self.shown[card_id] = event.type
        self.open_keys[key] = card_id

    def _detected(self, event: OutboxEvent) -> None:
        code = str(event.payload["code"])
        self.detections[code] += 1
        legit = True
        if code in self.open_faults:
            legit = False
            self.problems.append((FAULT_TWICE, f"{code} ({event.where})"))
        if code == EXPLAINED_LAMP:
            legit = False
            self.problems.append((LAMP, f"fault.detected ({event.where})"))
        if code == PERSISTENT_CODE and self.detections[code] > 1:
            legit = False
            self.problems.append((PERSISTENT, f"fault.detected again ({event.where})"))
        self.open_faults.add(code)
        if legit:
            self.last_legit_detection[code] = event.rowid

    def _cleared(self, event: OutboxEvent) -> None:
        code = str(event.payload["code"])
        if code not in self.open_faults:
            self.problems.append((FAULT_UNKNOWN, f"{code} ({event.where})"))
        if code == PERSISTENT_CODE:
            self.problems.append((PERSISTENT, f"fault.cleared ({event.where})"))
        self.open_faults.discard(code)

    def _reminder(self, event: OutboxEvent) -> None:
        rank = _STATE_RANK[str(event.payload["state"])]
        items = frozenset(str(i["id"]) for i in event.payload["items"])
        previous = self.reminder
        if (
            previous is None
            or rank > self.worst_rank
            or items - previous.items
            or (event.payload.get("resurfaced") and self.dismissed_maintenance_since_reminder)
        ):
            self.last_legit_reminder = event.rowid
        else:
            detail = (
                f"{event.payload['state']} {sorted(items)} ({event.where}), as at row "
                f"{previous.rowid}, without escalation, new items or a resurfacing"
            )
            self.problems.append((REMINDER_REPEATED, detail))
        self.reminder = _Reminder(event.rowid, rank, items)
        self.worst_rank = max(self.worst_rank, rank)
        self.dismissed_maintenance_since_reminder = False


def audit(events: Sequence[OutboxEvent], sections: Mapping[str, Any]) -> list[Problem]:
    """Every problem in a committed history (commit order) and the state committed with it."""
    problems: list[Problem] = []
    ids = Counter(e.id for e in events)
    problems += [(DUPLICATE_ID, f"{i} x{n}") for i, n in ids.items() if n > 1]
    by_boot: dict[str, list[OutboxEvent]] = {}
    for event in events:
        by_boot.setdefault(event.boot_id, []).append(event)
    boots = list(by_boot.values())  # in the order of their first events
    for number, rows in enumerate(boots):
        seqs = [e.seq for e in rows]
        if seqs != list(range(1, len(rows) + 1)):
            problems.append((SEQ, f"boot {rows[0].boot_id[:8]}: {seqs[:30]}"))
        if number + 1 < len(boots) and rows[-1].rowid > boots[number + 1][0].rowid:
            problems.append((INTERLEAVED, f"boot {rows[0].boot_id[:8]}"))
    consents = [e for e in events if e.type == "consent.changed"]
    if len(consents) > len({str(e.payload["category"]) for e in consents}):
        problems.append((CONSENT, f"{len(consents)} consent.changed events"))

    state = _Audit()
    for event in events:
        state.event(event)
    problems += state.problems

    if "faults" in sections:
        announced = set(sections["faults"].get("announced", {}))
        if announced != state.open_faults:
            problems.append(
                (STATE, f"faults: {sorted(announced)}, outbox: {sorted(state.open_faults)}")
            )
    if "cards" in sections:
        cards = sections["cards"]["cards"]
        stored = {str(c["id"]): str(c["key"]) for c in cards}
        if stored != state.open_cards:
            outbox = sorted(state.open_cards.values())
            problems.append((STATE, f"cards: {sorted(stored.values())}, outbox: {outbox}"))
        for card in cards:
            # On screen only after card.displayed; off it (withdrawn) only after
            # card.withdrawn. (A card pushed off by a more urgent one goes back to the
            # queue without an event, so "displayed" may also mean QUEUED.)
            last = state.shown.get(str(card["id"]))
            if (card["state"] == "VISIBLE") != (last == "card.displayed") and not (
                card["state"] == "QUEUED" and last == "card.displayed"
            ):
                problems.append((STATE, f"card {card['key']} is {card['state']}, last {last}"))
    return problems


@dataclass(slots=True)
class _Finding:
    first: str
    details: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Ledger:
    """The events committed so far, audited after every kill."""

    path: Path
    seen: dict[str, OutboxEvent] = field(default_factory=dict)
    #: Problem kind -> when it was first found and its distinct instances.
    findings: dict[str, _Finding] = field(default_factory=dict)
    _known: set[Problem] = field(default_factory=set)

    def check(self, label: str) -> StoreSnapshot:
        """Audit the database now (no daemon may be running)."""
        snapshot = read_store(self.path)
        found: list[Problem] = []
        if snapshot.integrity != "ok":
            found.append((INTEGRITY, snapshot.integrity))
        if snapshot.evicted:
            found.append((EVICTED, f"{snapshot.evicted} (the budget should hold them all)"))
        now = {e.id: e for e in snapshot.events}
        for event_id, before in self.seen.items():
            after = now.get(event_id)
            if after is None:
                found.append((LOST, f"{before.type} {event_id} ({before.where})"))
            elif after != before:
                found.append((CHANGED, f"{before} -> {after}"))
        found += audit(snapshot.events, snapshot.sections)
        for problem in found:
            if problem not in self._known:
                self._known.add(problem)
                self.findings.setdefault(problem[0], _Finding(label)).details.append(problem[1])
        self.seen = now
        return snapshot

    def counts(self) -> Counter[str]:
        """Events by type."""
        return Counter(e.type for e in self.seen.values())

    def report(self, examples: int = 3) -> str:
        """The kinds of problem found, in the order they were first found, with examples."""
        lines = []
        for kind, finding in self.findings.items():
            lines.append(f"- {kind}: {len(finding.details)}x, first after {finding.first}")
            lines += [f"    {detail}" for detail in finding.details[:examples]]
        return "\n".join(lines)


def iter_tail(path: Path, lines: int = 15) -> Iterator[str]:
    """The last lines of a log file (for failure messages)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    yield from text.splitlines()[-lines:]


if __name__ == "__main__":
    sys.exit(main())
