"""The whole loop's invariants, checked against the store, the cloud and the screen.

One :class:`InvariantChecker` follows one run (a soak, a kill loop): it is given an
:class:`Observation` after every step and keeps what it needs across them (every event
ever committed, the odometer's history, the cards the driver dismissed, when each
request was first seen). :meth:`InvariantChecker.check` returns the violations it
finds, each under the name of the invariant it breaks, and counts how often each
invariant was checked (:attr:`InvariantChecker.checked`), so a run can show that its
checks were not vacuous.

The harness supplies the ground truth the store cannot (:class:`Truth`): whether the
car really moves, the odometer it really sent, how long the daemon and the cloud have
been up and answering, what the driver did, and the real time (the daemon's clock may
be faked).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from agent.cards import CardKind, Display
from tests.invariants.views import CloudView, Recorded, ScreenView, StoreView

#: The invariants, by the name violations and counts use.
INTEGRITY: Final = "store passes integrity_check"
LOST: Final = "no committed event lost"
DUPLICATED: Final = "no event duplicated after the cloud's de-duplication"
REQUEST_ENDS: Final = "every request reaches a terminal state within the bound"
REQUEST_SEEN: Final = "a request's outcome is visible on its card"
PARKED_ONLY: Final = "no parked-only card visible while moving"
MAX_VISIBLE: Final = "never more cards on screen than the limit"
DAILY_CAPS: Final = "daily caps per kind never exceeded"
DUE_CARD: Final = "a due plan item has its card visible or waiting while parked"
ODOMETER_MONOTONIC: Final = "the odometer never decreases"
ODOMETER_PLAUSIBLE: Final = "the odometer never takes an implausible value"
NON_NEGATIVE: Final = "no negative duration or distance"
TRUSTED_TIME: Final = "no trusted event time outside the real range"
BOOKING_VIEWS: Final = "the cloud's view of each booking equals the car's"
DISMISSED: Final = "no dismissed card returns"

INVARIANTS: Final = (
    INTEGRITY, LOST, DUPLICATED, REQUEST_ENDS, REQUEST_SEEN, PARKED_ONLY, MAX_VISIBLE,
    DAILY_CAPS, DUE_CARD, ODOMETER_MONOTONIC, ODOMETER_PLAUSIBLE, NON_NEGATIVE,
    TRUSTED_TIME, BOOKING_VIEWS, DISMISSED,
)  # fmt: skip

REQUESTS: Final = frozenset({"request.booking", "request.redemption"})
#: Events that end a request (their payload names it); "unanswered" is the timeout.
TERMINAL: Final = frozenset({
    "booking.confirmed", "booking.declined", "booking.cancelled", "booking.unanswered",
    "redemption.confirmed", "redemption.declined", "redemption.unanswered",
})  # fmt: skip
#: Request rows the car may take out of its outbox unsent: those its flow gave up on.
GAVE_UP: Final = frozenset({"booking.unanswered", "redemption.unanswered"})
CARD_EVENTS_AFTER_CLOSE: Final = frozenset({
    "card.created", "card.displayed", "card.updated", "card.withdrawn", "card.snoozed",
})  # fmt: skip
#: Payload keys that hold a duration or a distance (never negative).
MEASURES: Final = ("duration", "distance", "waited")


@dataclass(frozen=True, slots=True)
class Bounds:
    """The limits the invariants hold the daemon to."""

    #: Seconds a request may stay open while the cloud answers (issue: 60 s).
    answered_within_s: float = 60.0
    #: Seconds a request may stay open while the daemon runs, whatever the cloud
    #: does: the pending timeout plus the same margin.
    request_timeout_s: float = 120.0
    #: How long a parked-only card may stay on the bus after the car moved off.
    moving_grace_s: float = 10.0
    #: How long the car must stand (and the daemon run) before a due card must show.
    parked_settle_s: float = 20.0
    #: How far a trusted event time may be from the real time range of the run.
    time_slack_s: float = 300.0
    #: How far the odometer may read above what the car really sent (km).
    odometer_slack_km: float = 1.0
    max_visible: int = 3
    daily_caps: Mapping[CardKind, int] = field(
        default_factory=lambda: {CardKind.MAINTENANCE: 3, CardKind.BENEFIT: 2, CardKind.CAMPAIGN: 2}
    )


@dataclass(frozen=True, slots=True)
class Truth:
    """What really happened, as the harness knows it."""

    #: The real time now, and when the run began (the machine's clock, never faked).
    real_now: float
    real_start: float
    #: The car moves (speed above zero or a drive gear), and for how long (s).
    moving: bool
    moving_for_s: float
    parked_for_s: float
    #: The daemon has run (since its last start) this long; None while it is down.
    daemon_up_s: float | None
    #: The broker is up and the cloud answers requests: for this long; None if not.
    cloud_answering_s: float | None
    #: Odometer readings the car really sent (km): the lowest and highest so far.
    odometer_min_km: float | None
    odometer_max_km: float | None
    #: Card ids the driver dismissed over D-Bus (successful calls).
    dismissed_ids: frozenset[str] = frozenset()
    #: Card keys the driver snoozed or dismissed, and when (real time).
    closed_keys: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything seen after one step."""

    truth: Truth
    store: StoreView
    cloud: CloudView
    screen: ScreenView


@dataclass(frozen=True, slots=True)
class Violation:
    """One invariant broken, with what shows it."""

    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


@dataclass(slots=True)
class _Request:
    event: Recorded
    first_seen: float  # real time
    answering_since: float | None = None  # real time the cloud was first seen answering
    up_s: float = 0.0  # daemon uptime accumulated since first seen
    ended_at: float | None = None


@dataclass(slots=True)
class InvariantChecker:
    """Checks every invariant after each step; keeps what it needs between steps."""

    bounds: Bounds = field(default_factory=Bounds)
    #: Checks made, by invariant (a check per invariant per observation, when it applied).
    checked: Counter[str] = field(default_factory=Counter)
    #: Every event ever seen (outbox or cloud), by id.
    committed: dict[str, Recorded] = field(default_factory=dict)
    _boots: dict[str, int] = field(default_factory=dict)
    _requests: dict[str, _Request] = field(default_factory=dict)
    _odometer_km: float | None = None
    _odometer_events: int = 0
    _last_real: float | None = None
    _last_up: float | None = None
    _reported: set[tuple[str, str]] = field(default_factory=set)

    def check(self, seen: Observation) -> list[Violation]:
        """Every violation in this observation not reported before."""
        found: list[Violation] = []
        truth = seen.truth
        self._learn(seen)
        history = self._history()
        for name, problems in (
            (INTEGRITY, self._integrity(seen.store)),
            (LOST, self._lost(seen.store, seen.cloud, history)),
            (DUPLICATED, self._duplicated(seen.cloud, history)),
            (REQUEST_ENDS, self._requests_end(truth, history)),
            (REQUEST_SEEN, self._requests_seen(seen, history)),
            (PARKED_ONLY, self._parked_only(truth, seen.screen)),
            (MAX_VISIBLE, self._max_visible(seen.screen)),
            (DAILY_CAPS, self._daily_caps(history)),
            (DUE_CARD, self._due_card(seen)),
            (ODOMETER_MONOTONIC, self._odometer_monotonic(seen.store, history)),
            (ODOMETER_PLAUSIBLE, self._odometer_plausible(truth, seen.store)),
            (NON_NEGATIVE, self._non_negative(history)),
            (TRUSTED_TIME, self._trusted_time(truth, history)),
            (BOOKING_VIEWS, self._booking_views(truth, seen.cloud, history)),
            (DISMISSED, self._dismissed(seen, history)),
        ):
            for detail in problems:
                if (name, detail) not in self._reported:
                    self._reported.add((name, detail))
                    found.append(Violation(name, detail))
        self._last_real = truth.real_now
        self._last_up = truth.daemon_up_s
        return found

    # -- what is known -------------------------------------------------------------------

    def _learn(self, seen: Observation) -> None:
        new = [e for e in seen.store.outbox.values() if e.id not in self.committed]
        new += [e for e in seen.cloud.events.values() if e.id not in self.committed]
        # Boots in the order they were first seen; boots first seen together by the
        # time of their first events.
        fresh_boots: dict[str, float] = {}
        for event in new:
            self.committed.setdefault(event.id, event)
            if event.boot_id not in self._boots:
                fresh_boots[event.boot_id] = min(
                    fresh_boots.get(event.boot_id, math.inf), event.time - event.seq * 1e-6
                )
        for boot in sorted(fresh_boots, key=fresh_boots.__getitem__):
            self._boots[boot] = len(self._boots)
        truth = seen.truth
        elapsed = 0.0 if self._last_real is None else truth.real_now - self._last_real
        for event in new:
            rid = _request_id(event)
            if event.type in REQUESTS and rid is not None and rid not in self._requests:
                self._requests[rid] = _Request(event, truth.real_now)
        for request in self._requests.values():
            if request.ended_at is not None:
                continue
            if truth.daemon_up_s is not None and self._last_up is not None:
                request.up_s += min(elapsed, truth.daemon_up_s)
            if truth.cloud_answering_s is not None and truth.daemon_up_s is not None:
                since = truth.real_now - min(truth.cloud_answering_s, truth.daemon_up_s)
                if request.answering_since is None or since > request.answering_since:
                    request.answering_since = max(since, request.first_seen)
            else:
                request.answering_since = None

    def _history(self) -> list[Recorded]:
        """Every event in the car's order: boots as first seen, then seq."""
        return sorted(
            self.committed.values(), key=lambda e: (self._boots.get(e.boot_id, 1 << 30), e.seq)
        )

    # -- the invariants -----------------------------------------------------------------

    def _integrity(self, store: StoreView) -> Iterator[str]:
        self.checked[INTEGRITY] += 1
        if store.integrity != "ok":
            yield store.integrity

    def _lost(self, store: StoreView, cloud: CloudView, history: list[Recorded]) -> Iterator[str]:
        self.checked[LOST] += 1
        if store.evicted:
            yield f"{store.evicted} events evicted (the budget should hold them all)"
        gave_up = {_request_id(e) for e in history if e.type in GAVE_UP}
        for event in history:
            if event.id in store.outbox or event.id in cloud.events:
                continue
            if event.id in store.dead_letters:
                yield f"{event.type} {event.id} dead-lettered"
            elif event.type.startswith("request.") and _request_id(event) in gave_up:
                continue  # withdrawn unsent, with an event that says so
            else:
                yield f"{event.type} {event.id} ({_where(event)}): not in the outbox nor the cloud"

    def _duplicated(self, cloud: CloudView, history: list[Recorded]) -> Iterator[str]:
        self.checked[DUPLICATED] += 1
        for event_id, times in cloud.handed_on.items():
            if times > 1:
                yield f"{event_id} handed on {times} times"
        ids_by_order: dict[tuple[str, int], str] = {}
        for event in history:
            other = ids_by_order.setdefault(event.order, event.id)
            if other != event.id:
                yield f"{_where(event)} recorded twice: {other} and {event.id} ({event.type})"
        created: dict[str, str] = {}
        for event in history:
            if event.type == "card.created":
                card = str(event.payload.get("card_id"))
                other = created.setdefault(card, event.id)
                if other != event.id:
                    yield f"card {card} created twice ({other}, {event.id})"

    def _requests_end(self, truth: Truth, history: list[Recorded]) -> Iterator[str]:
        ended = {_request_id(e): e for e in history if e.type in TERMINAL}
        bounds = self.bounds
        for rid, request in self._requests.items():
            self.checked[REQUEST_ENDS] += 1
            if rid in ended:
                if request.ended_at is None:
                    request.ended_at = truth.real_now
                continue
            answering = (
                0.0 if request.answering_since is None else truth.real_now - request.answering_since
            )
            if answering > bounds.answered_within_s:
                yield (
                    f"{request.event.type} {rid}: open {answering:.0f} s while the cloud "
                    f"answered (bound {bounds.answered_within_s:.0f} s)"
                )
            elif request.up_s > bounds.request_timeout_s + bounds.answered_within_s:
                yield (
                    f"{request.event.type} {rid}: open for {request.up_s:.0f} s of the "
                    f"daemon's uptime (timeout {bounds.request_timeout_s:.0f} s)"
                )

    def _requests_seen(self, seen: Observation, history: list[Recorded]) -> Iterator[str]:
        """Once a card's requests all ended, it no longer says "pending", in the store
        or on screen: the driver sees the outcome (a declined or unanswered request's
        note on the card, or a confirmed one's card closed and its confirmation posted).

        Every ended request is checked at every observation after the grace, so a run
        shows how often the state was really looked at.
        """
        if (seen.truth.daemon_up_s or 0.0) < 5.0:
            return
        # A key is settled when its last event about a request is an end: any request
        # (the slots one too, which shows "pending" and ends with no event when the
        # slots arrive) made after it opens the key again.
        last_request: dict[str, int] = {}
        last_end: dict[str, tuple[int, float]] = {}
        for index, event in enumerate(history):
            key = event.payload.get("card_key")
            if not isinstance(key, str):
                continue
            if event.type.startswith("request."):
                last_request[key] = index
            elif event.type in TERMINAL:
                request = self._requests.get(_request_id(event) or "")
                if request is not None and request.ended_at is not None:
                    last_end[key] = (index, request.ended_at)
        settled = {
            key for key, (index, ended) in last_end.items()
            if index > last_request.get(key, -1) and seen.truth.real_now - ended > 5.0
        }  # fmt: skip
        stored = _stored_cards(seen.store)
        for key in sorted(settled):
            self.checked[REQUEST_SEEN] += 1
            if any(c.get("key") == key and c.get("pending") for c in stored.values()):
                yield f"card {key} still pending in the store after its requests ended"
        if not seen.screen.running:
            return
        for shown in seen.screen.cards:
            key = str(stored.get(shown.id, {}).get("key", ""))
            if key not in settled:
                continue  # no request ever made, one still open, or it just ended
            self.checked[REQUEST_SEEN] += 1
            if shown.pending:
                yield f"card {key} ({shown.id}) still pending on screen after its requests ended"

    def _parked_only(self, truth: Truth, screen: ScreenView) -> Iterator[str]:
        parked_only = [c for c in screen.cards if c.display is Display.PARKED_ONLY]
        if not parked_only:
            return
        self.checked[PARKED_ONLY] += 1
        if screen.restricted:
            yield f"{len(parked_only)} parked-only cards on the bus while restricted"
        elif truth.moving and truth.moving_for_s > self.bounds.moving_grace_s:
            yield (
                f"{len(parked_only)} parked-only cards on the bus "
                f"{truth.moving_for_s:.1f} s after the car moved off"
            )

    def _max_visible(self, screen: ScreenView) -> Iterator[str]:
        self.checked[MAX_VISIBLE] += 1
        if len(screen.cards) > self.bounds.max_visible:
            yield f"{len(screen.cards)} cards on screen (limit {self.bounds.max_visible})"

    def _daily_caps(self, history: list[Recorded]) -> Iterator[str]:
        """First appearances of each kind within any rolling day (trusted times only)."""
        first: dict[str, tuple[str, float]] = {}
        for event in history:
            if event.type == "card.displayed" and event.time_trusted:
                card = str(event.payload.get("card_id"))
                first.setdefault(card, (str(event.payload.get("kind", "")), event.time))
        for kind, cap in self.bounds.daily_caps.items():
            self.checked[DAILY_CAPS] += 1
            times = sorted(t for k, t in first.values() if k.upper() == kind.name)
            for index in range(len(times) - cap):
                if times[index + cap] - times[index] < 86_400:
                    yield f"{cap + 1} {kind.name} cards first shown within a day"
                    break

    def _due_card(self, seen: Observation) -> Iterator[str]:
        truth, bounds = seen.truth, self.bounds
        if (
            truth.moving
            or truth.parked_for_s < bounds.parked_settle_s
            or (truth.daemon_up_s or 0.0) < bounds.parked_settle_s
            # The agent holds parked-only cards while it cannot tell the car stands: a
            # daemon restarted beside a locked car, whose ECUs are silent, has seen no
            # gear or speed yet (unknown counts as moving; the screen is off anyway).
            or seen.screen.restricted
        ):
            return
        due = _due_items(seen.store)
        if not due:
            return
        self.checked[DUE_CARD] += 1
        if "maintenance" in truth.closed_keys:
            return  # the driver snoozed or dismissed it
        maintenance = seen.store.section("maintenance") or {}
        if maintenance.get("dismissed_at") is not None or maintenance.get("booked_until"):
            return  # dismissed in this state, or booked: the booking's card speaks for it
        flows = seen.store.section("flows") or {}
        if "maintenance" in json_keys(flows):
            return  # booked (or booking): the booking's own card speaks for it
        cards = seen.store.section("cards") or {}
        for card in cards.get("cards", []):
            if card.get("key") == "maintenance" and card.get("state") in ("QUEUED", "VISIBLE"):
                return
        yield f"due {sorted(due)} with no maintenance card visible or waiting"

    def _odometer_monotonic(self, store: StoreView, history: list[Recorded]) -> Iterator[str]:
        reading = _odometer(store)
        if reading is None:
            return
        self.checked[ODOMETER_MONOTONIC] += 1
        corrections = sum(1 for e in history if e.type == "odometer.corrected")
        previous, self._odometer_km = self._odometer_km, reading
        if corrections != self._odometer_events:
            self._odometer_events = corrections
            return  # a correction the daemon recorded may go either way
        if previous is not None and reading < previous - 0.05:
            yield f"odometer {previous:.1f} km -> {reading:.1f} km"

    def _odometer_plausible(self, truth: Truth, store: StoreView) -> Iterator[str]:
        reading = _odometer(store)
        if reading is None or truth.odometer_max_km is None or truth.odometer_min_km is None:
            return
        self.checked[ODOMETER_PLAUSIBLE] += 1
        slack = self.bounds.odometer_slack_km
        if not truth.odometer_min_km - slack <= reading <= truth.odometer_max_km + slack:
            yield (
                f"odometer {reading:.1f} km; the car sent {truth.odometer_min_km:.1f}"
                f"..{truth.odometer_max_km:.1f} km"
            )

    def _non_negative(self, history: list[Recorded]) -> Iterator[str]:
        for event in history:
            for key, value in _numbers(event.payload):
                if any(m in key for m in MEASURES):
                    self.checked[NON_NEGATIVE] += 1
                    if value < 0:
                        yield f"{event.type} {event.id}: {key} = {value}"

    def _trusted_time(self, truth: Truth, history: list[Recorded]) -> Iterator[str]:
        low = truth.real_start - self.bounds.time_slack_s
        high = truth.real_now + self.bounds.time_slack_s
        for event in history:
            if event.time_trusted:
                self.checked[TRUSTED_TIME] += 1
                if not low <= event.time <= high:
                    yield (
                        f"{event.type} {event.id} at {event.time:.0f}, trusted, outside "
                        f"{low:.0f}..{high:.0f} (real time)"
                    )

    def _booking_views(
        self, truth: Truth, cloud: CloudView, history: list[Recorded]
    ) -> Iterator[str]:
        car: dict[str, str] = {}
        for event in history:
            if event.type in TERMINAL and event.type not in GAVE_UP:
                rid = _request_id(event)
                if rid is not None:
                    car[rid] = event.type.split(".", 1)[1]
        for rid, answer in cloud.answers.items():
            request = self._requests.get(rid)
            if request is None:
                continue  # the car's request not seen yet
            self.checked[BOOKING_VIEWS] += 1
            if hasattr(answer, "status"):
                said = str(answer.status)
            else:
                said = "confirmed" if getattr(answer, "accepted", False) else "declined"
            mine = car.get(rid)
            if mine is not None and mine != said:
                yield f"{request.event.type} {rid}: the cloud says {said}, the car {mine}"
            elif mine is None and request.answering_since is not None:
                waited = truth.real_now - max(answer.sent_at, request.answering_since)
                if waited > self.bounds.answered_within_s:
                    yield (
                        f"{request.event.type} {rid}: the cloud said {said} "
                        f"{waited:.0f} s ago; the car has no answer"
                    )

    def _dismissed(self, seen: Observation, history: list[Recorded]) -> Iterator[str]:
        closed: dict[str, Recorded] = {}
        for event in history:
            card_id = str(event.payload.get("card_id", ""))
            if event.type == "card.dismissed":
                closed.setdefault(card_id, event)
            elif card_id in closed and event.type in CARD_EVENTS_AFTER_CLOSE:
                key = event.payload.get("key")
                yield f"card {card_id} ({key}): {event.type} after its dismissal"
        dismissed = set(closed) | set(seen.truth.dismissed_ids)
        self.checked[DISMISSED] += 1
        for card in seen.screen.cards:
            if card.id in dismissed:
                yield f"card {card.id} dismissed, back on the bus"
        for card_id, key in _open_cards(seen.store).items():
            if card_id in closed:
                yield f"card {card_id} ({key}) dismissed, open in the store"


# -- helpers --------------------------------------------------------------------------------


def _request_id(event: Recorded) -> str | None:
    rid = event.payload.get("request_id") or event.request_id
    return None if rid is None else str(rid)


def _where(event: Recorded) -> str:
    return f"boot {event.boot_id[:8]} seq {event.seq}"


def _stored_cards(store: StoreView) -> dict[str, dict[str, Any]]:
    """Open cards in the store's cards section, by id."""
    section = store.section("cards") or {}
    return {
        str(c["id"]): c for c in section.get("cards", []) if c.get("state") not in ("CLOSED", 5)
    }


def _open_cards(store: StoreView) -> dict[str, str]:
    """Open cards in the store's cards section: id -> key."""
    return {card_id: str(c["key"]) for card_id, c in _stored_cards(store).items()}


def _odometer(store: StoreView) -> float | None:
    vehicle = store.section("vehicle") or {}
    for key in ("odometer_km", "odometer"):
        value = vehicle.get(key)
        if isinstance(value, int | float):
            return float(value)
    metres = vehicle.get("odometer_m")
    return float(metres) / 1000 if isinstance(metres, int | float) else None


def _due_items(store: StoreView) -> set[str]:
    """Plan items the maintenance section says are due or overdue."""
    section = store.section("maintenance") or {}
    states = section.get("last_states") or {}
    if isinstance(states, Mapping):
        return {str(k) for k, v in states.items() if _state_name(v) in ("DUE", "OVERDUE")}
    return set()


def _state_name(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("state")
    return str(value).upper()


def json_keys(data: Any) -> set[str]:
    """The booking flows' card keys (the flows section's bookings)."""
    bookings = data.get("bookings", {}) if isinstance(data, Mapping) else {}
    if isinstance(bookings, Mapping):
        return {str(k) for k in bookings}
    return {str(b.get("card_key")) for b in bookings if isinstance(b, Mapping)}


def _numbers(data: Any, prefix: str = "") -> Iterable[tuple[str, float]]:
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _numbers(value, f"{prefix}{key}.")
    elif isinstance(data, list):
        for value in data:
            yield from _numbers(value, prefix)
    elif isinstance(data, int | float) and not isinstance(data, bool):
        yield prefix.rstrip("."), float(data)
