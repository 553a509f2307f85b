"""Properties of the agent core under any sequence of signals, taps, answers and time.

After every input:
(a) no card a moving driver may not see is visible (or added, or updated) while driving;
(b) no kind's daily cap is exceeded over any rolling 24 hours;
(c) no event of a category without valid consent at its time reaches the outbox;
(d) at most ``max_visible`` cards are visible and open cards have unique keys;
(e) what the daemon would have stored (only the sections each output dirtied) holds the
    same state as the agent, and an agent restarted from it carries on.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import state_codec
from agent.benefits import Wallet
from agent.booking import BookingStatus, Slot
from agent.cards import CardKind, ChangeType
from agent.consent import CONSENTABLE, Category
from agent.core import Output
from agent.events import Event
from agent.fault_engine import DtcCatalogue, default_catalogue
from agent.policy import moving_allowed
from agent.rule_model import RuleSetDocument
from agent.signals import IGNITION, IS_CHARGING, OIL_LIFE, SELECTED_GEAR, STATE_OF_CHARGE
from can_signals.catalogue import DTC_LIST, GEAR_DRIVE, GEAR_PARK, ODOMETER, SPEED
from tests.agent.conftest import DAY, HOUR, T0, Car, make_agent, serviced_at

TYRE_LOW = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.IsPressureLow"
CODES = ["P0524", "P0301", "P0455", "LAMP:MalfunctionIndicator", "LAMP:OilPressure", "U0100"]

WALLET = Wallet.model_validate(
    {
        "version": 1,
        "tier": "gold",
        "coupons": [
            {
                "id": f"c{i}",
                "title": {"zh-CN": "券", "en": f"Coupon {i}"},
                "body": {"zh-CN": "券", "en": "Coupon"},
                "scenes": [scene],
                "quota": 3,
            }
            for i, scene in enumerate(["charging_started", "odometer_milestone", "first_drive"])
        ],
    }
)
RULES = RuleSetDocument.model_validate(
    {
        "version": 7,
        "rules": [
            {
                "id": "ops.soc",
                "version": 1,
                "trigger": {"signal": {"path": STATE_OF_CHARGE, "op": "<", "value": 20}},
                "card": {
                    "kind": "campaign",
                    "title": {"zh-CN": "电量低", "en": "Battery low"},
                    "body": {"zh-CN": "去充电", "en": "Charge"},
                    "actions": [{"key": "dismiss", "label": {"zh-CN": "忽略", "en": "No"}}],
                },
            },
            {
                "id": "ops.noon",
                "version": 1,
                "trigger": {"time_of_day": "12:30"},
                "conditions": {"fact": "vehicle.parked", "op": "==", "value": True},
                "card": {
                    "key": "noon",
                    "kind": "campaign",
                    "urgency": "low",
                    "title": {"zh-CN": "午间", "en": "Lunch offer"},
                    "body": {"zh-CN": "午间", "en": "Lunch"},
                    "ttl_s": 3600,
                },
            },
        ],
    }
)


def _catalogue(severity: str) -> DtcCatalogue:
    raw = default_catalogue().model_dump(mode="json", by_alias=True)
    for entry in raw["entries"]:
        if entry["match"] == "P0524":
            entry["severity"] = severity
    return DtcCatalogue.model_validate(raw)


CATALOGUES = {s: _catalogue(s) for s in ("info", "service_soon", "stop_safely")}

_signal = st.one_of(
    st.tuples(st.just(SPEED), st.sampled_from([0.0, 0.2, 15.0, 80.0, None])),
    st.tuples(st.just(SELECTED_GEAR), st.sampled_from([GEAR_PARK, GEAR_DRIVE, 0])),
    st.tuples(st.just(IGNITION), st.sampled_from(["OFF", "ACC", "ON"])),
    st.tuples(st.just(DTC_LIST), st.lists(st.sampled_from(CODES), unique=True).map(tuple)),
    st.tuples(st.just(IS_CHARGING), st.booleans()),
    st.tuples(st.just(STATE_OF_CHARGE), st.sampled_from([10.0, 50.0])),
    st.tuples(st.just(OIL_LIFE), st.sampled_from([80, 12, 3, 0])),
    st.tuples(st.just(TYRE_LOW), st.booleans()),
    st.tuples(st.just("Vehicle.Service.ResetCounter"), st.integers(0, 3)),
)
_TAP = st.tuples(st.just("tap"), st.integers(0, 5), st.integers(0, 3))
_PARK = st.just(("park",))
STEP = st.one_of(
    st.tuples(st.just("signal"), _signal),
    st.tuples(st.just("odometer"), st.sampled_from([0, 50, 300, 1000, 3000])),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 60.0, HOUR, 6 * HOUR, DAY, 3 * DAY])),
    _TAP,
    _TAP,  # taps and parking twice as likely: they lead to the flows
    _PARK,
    _PARK,
    st.tuples(st.just("dismiss"), st.integers(0, 5)),
    st.tuples(st.just("shown"), st.integers(0, 5)),
    st.tuples(
        st.just("consent"),
        st.sampled_from(CONSENTABLE),
        st.booleans(),
        st.sampled_from([None, HOUR, DAY]),
    ),
    # The cloud answers what is pending, and the driver picks the first slot offered.
    st.tuples(
        st.just("cloud"),
        st.sampled_from([BookingStatus.CONFIRMED, BookingStatus.DECLINED]),
        st.booleans(),
    ),
    # A duplicate (or stale) answer to a request already answered.
    st.tuples(st.just("again"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("trust"), st.just(0)),
    st.tuples(st.just("catalogue"), st.sampled_from(sorted(CATALOGUES))),
    st.tuples(st.just("wallet"), st.just(0)),
    st.tuples(st.just("rules"), st.just(0)),
    st.tuples(st.just("restart"), st.just(0)),
)


class ConsentModel:
    """The consent the driver gave, kept independently of the agent."""

    def __init__(self) -> None:
        self.grants: dict[Category, tuple[bool, float | None]] = {}

    def allows(self, category: Category, at: float) -> bool:
        if category is Category.SERVICE_REQUESTS:
            return True
        granted, until = self.grants.get(category, (False, None))
        return granted and (until is None or at < until)


def essence(sections: dict[str, str], now: float) -> dict[str, Any]:
    """The stored state with what may lag harmlessly taken out.

    Left out: the clock (persisted hourly on purpose), whether a card not on screen is
    queued, withdrawn or snoozed past its time (recomputed at the first refresh), and
    entries of rolling windows older than a day (pruned lazily).
    """
    data = {k: json.loads(v) for k, v in sections.items() if k != "clock"}
    cards = data.get("cards", {})
    for card in cards.get("cards", []):
        for name in ("state", "snooze_until", "snooze_until_odometer"):
            card.pop(name, None)
    cards["cards"] = sorted(cards.get("cards", []), key=lambda c: c["id"])
    cards["shown_log"] = [x for x in cards.get("shown_log", []) if now - x[1] < DAY]
    rules = data.get("rules", {})
    state = rules.get("state", {})
    for rule_state in state.values():
        rule_state["fired"] = [t for t in rule_state["fired"] if now - t < DAY]
    return data


class Run:
    """Feeds steps to a car and checks the properties after each."""

    def __init__(self) -> None:
        self.car = Car(make_agent())
        self.consent = ConsentModel()
        self.odometer = 8_900_000  # 100 km before the first item comes due soon
        self.first_shown: dict[str, float] = {}
        self.appearances: dict[CardKind, list[float]] = defaultdict(list)
        self.requests: dict[str, list[str]] = defaultdict(list)
        self.answered: dict[str, list[str]] = defaultdict(list)
        self.seen: set[str] = set()
        self.car.history(serviced_at(0, T0 - 300 * DAY))
        self.car.send((ODOMETER, self.odometer))

    def step(self, step: tuple[Any, ...]) -> None:
        car = self.car
        agent = car.agent
        kind = step[0]
        before = len(car.outputs)
        visible = list(agent.cards.visible)
        if kind == "signal":
            path, value = step[1]
            car.send((path, value))
        elif kind == "park":
            car.park()
        elif kind == "odometer":
            self.odometer += step[1] * 1000
            car.send((ODOMETER, self.odometer))
        elif kind == "tick":
            car.tick(step[1])
        elif kind == "tap" and visible:
            card = visible[step[1] % len(visible)]
            if card.actions:
                car.tap(card, card.actions[step[2] % len(card.actions)].key)
        elif kind == "dismiss" and visible:
            car.dismiss(visible[step[1] % len(visible)])
        elif kind == "shown" and visible:
            card = visible[step[1] % len(visible)]
            car.keep(agent.on_shown(card.id, car.wall, car.mono))
        elif kind == "consent":
            _, category, granted, valid_for = step
            car.consent(category, granted=granted, valid_for=valid_for)
            self.consent.grants[category] = (
                granted,
                None if valid_for is None or not granted else car.wall + valid_for,
            )
        elif kind == "cloud":
            self.cloud(step[1], accepted=step[2])
        elif kind == "again":
            for type_, ids in sorted(self.answered.items()):
                if not ids:
                    continue
                request_id = ids[step[1] % len(ids)]
                if type_ == "request.booking":
                    car.keep(
                        agent.on_booking_answer(
                            request_id, BookingStatus.CONFIRMED, car.wall, car.mono
                        )
                    )
                elif type_ == "request.booking_slots":
                    car.slots(request_id, Slot("z", car.wall + DAY))
                else:
                    car.keep(
                        agent.on_redemption_answer(
                            request_id, accepted=step[2], wall=car.wall, monotonic=car.mono
                        )
                    )
        elif kind == "trust":
            car.trust_clock()
        elif kind == "catalogue":
            car.keep(agent.set_catalogue(CATALOGUES[step[1]], car.wall, car.mono))
        elif kind == "wallet":
            car.keep(agent.set_wallet(WALLET, car.wall, car.mono))
        elif kind == "rules":
            car.keep(agent.set_rules(RULES, car.wall, car.mono))
        elif kind == "restart":
            self.restart()
            return
        for out in car.outputs[before:]:
            self.check_output(out)
        self.check_state()

    def note_request(self, event: Event) -> None:
        if event.request_id is not None and event.request_id not in self.seen:
            self.seen.add(event.request_id)
            self.requests[event.type].append(event.request_id)

    def cloud(self, status: BookingStatus, *, accepted: bool) -> None:
        car = self.car
        agent = car.agent
        start = car.wall + 2 * DAY
        for request_id in self.requests.pop("request.booking_slots", []):
            car.slots(request_id, Slot("a", start), Slot("b", start + HOUR))
            self.answered["request.booking_slots"].append(request_id)
        for booking in agent.flows.bookings_state():
            card = agent.cards.by_key(booking.card_key)
            if card is not None and booking.status is BookingStatus.SLOTS_OFFERED and booking.slots:
                out = car.keep(
                    agent.request_booking(card.id, booking.slots[0].id, car.wall, car.mono)
                )
                for event in out.events:
                    self.note_request(event)
        for request_id in self.requests.pop("request.booking", []):
            car.keep(agent.on_booking_answer(request_id, status, car.wall, car.mono))
            self.answered["request.booking"].append(request_id)
        for request_id in self.requests.pop("request.redemption", []):
            car.keep(
                agent.on_redemption_answer(
                    request_id, accepted=accepted, wall=car.wall, monotonic=car.mono
                )
            )
            self.answered["request.redemption"].append(request_id)

    def restart(self) -> None:
        car = self.car
        open_before = {c.id: c.key for c in car.agent.cards.cards}
        self.car = car.restarted(seed=len(car.outputs) + 2)
        self.car.outputs = car.outputs  # one history across boots
        assert {c.id: c.key for c in self.car.agent.cards.cards} == open_before
        self.car.odometer_km(self.odometer / 1000)  # the first input after the restart
        self.check_output(self.car.outputs[-1])
        self.check_state()
        # Nothing already open was posted a second time.
        created = [
            e.payload["key"] for e in self.car.outputs[-1].events if e.type == "card.created"
        ]
        assert not set(created) & set(open_before.values())

    def check_output(self, out: Output) -> None:
        agent = self.car.agent
        driving = agent.vehicle.driving
        for change in out.changes:
            if change.type is ChangeType.REMOVED:
                continue
            # Property (a): never shown or updated on a moving driver's screen unless allowed.
            assert not driving or moving_allowed(change.card), change
            if change.type is ChangeType.ADDED and change.card.id not in self.first_shown:
                self.first_shown[change.card.id] = self.car.wall
                self.appearances[change.card.kind].append(self.car.wall)
        for event in out.events:
            # Property (c): consent at the event's time.
            assert self.consent.allows(event.category, event.time), event
            self.note_request(event)
        # What the driver asked for is never held back for want of consent.
        assert Category.SERVICE_REQUESTS.value not in out.suppressed

    def check_state(self) -> None:
        car = self.car
        agent = car.agent
        manager = agent.cards
        # Property (a).
        if agent.vehicle.driving:
            assert all(moving_allowed(c) for c in manager.visible), manager.visible
        # Property (b).
        caps = agent.config.policy.daily_caps
        for kind, times in self.appearances.items():
            cap = caps.get(kind)
            if cap is not None:
                for t in times:
                    assert sum(1 for u in times if t - DAY < u <= t) <= cap, (kind, times)
        # Property (d).
        assert len(manager.visible) <= agent.config.policy.max_visible
        keys = [c.key for c in manager.cards]
        assert len(keys) == len(set(keys))
        # Property (e).
        assert essence(car.stored, car.wall) == essence(state_codec.encode(agent), car.wall)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(STEP, min_size=1, max_size=40))
def test_the_core_keeps_its_promises(steps: list[tuple[Any, ...]]) -> None:
    run = Run()
    run.car.park()
    for step in steps:
        run.step(step)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, min_size=1, max_size=40))
def test_the_core_keeps_its_promises_with_every_consent(steps: list[tuple[Any, ...]]) -> None:
    run = Run()
    for category in (Category.VEHICLE_HEALTH, Category.USAGE_ANALYTICS, Category.MARKETING):
        run.step(("consent", category, True, None))
    run.step(("wallet", 0))
    run.step(("rules", 0))
    for step in steps:
        run.step(step)
