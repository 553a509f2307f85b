"""The event catalogue against what the agent really records.

Each scenario drives the agent (and, for the start-up events, the daemon) the way a car
and a driver would; every event recorded must have a catalogued type, the declared
category and priority, and a payload with every required field, no other field, and
values of the declared JSON types. Across all scenarios every catalogued type must
turn up, but for the few recorded outside the agent (listed with the reason).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest

from agent.benefits import Coupon, Wallet
from agent.booking import BookingStatus, Slot
from agent.cards import Card, CardKind, CloseReason
from agent.consent import Category
from agent.documents import CloudCard, ConsentText
from agent.event_catalogue import CATALOGUE, PayloadField, lookup, payload_schema
from agent.events import Event, Priority
from agent.rule_model import RuleSetDocument, RuleStops
from agent.settings import ConsentSettings, StoreSettings
from tests.agent.conftest import (
    DAY,
    HOUR,
    IGNITION,
    IS_CHARGING,
    STATE_OF_CHARGE,
    T0,
    Car,
    all_consent,
    make_agent,
    serviced_at,
)
from touchpoint.daemon import Daemon
from touchpoint.settings import DaemonSettings

#: Types no scenario here records, and why (none, today: keep it that way).
NOT_DRIVEN: Final[dict[str, str]] = {
    # Recorded by the daemon's supervisor, not by a decision of the agent.
    "daemon.loop_crashed": "tests/daemon/test_supervision.py",
}
_MARKETING_CARD_KINDS: Final = {CardKind.BENEFIT.name, CardKind.CAMPAIGN.name}


def _parked_car() -> Car:
    """The ``car`` fixture's car: every consent but location, serviced 100 days ago."""
    car = Car(make_agent())
    all_consent(car)
    car.history(serviced_at(0, T0 - 100 * DAY))
    car.park()
    return car


def _visible(car: Car, kind: CardKind) -> Card:
    [card] = car.visible(kind)
    return card


def _request_id(out_events: list[Event], event_type: str) -> str:
    [request] = [e for e in out_events if e.type == event_type]
    assert request.request_id is not None
    return request.request_id


def _give(car: Car, *coupons: Coupon, **fields: object) -> None:
    wallet = Wallet.model_validate({"version": 1, "coupons": coupons, **fields})
    car.keep(car.agent.set_wallet(wallet, car.wall, car.mono))


def _coupon(coupon_id: str, *scenes: str) -> Coupon:
    return Coupon.model_validate(
        {
            "id": coupon_id,
            "title": {"zh-CN": "充电送咖啡", "en": "Coffee while you charge"},
            "body": {"zh-CN": "附近咖啡店免费一杯。", "en": "A free coffee nearby."},
            "scenes": scenes or ("charging_started",),
            "quota": 3,
        }
    )


# -- scenarios: each returns every event the agent recorded --------------------------------


def maintenance_life() -> list[Event]:
    """A reminder seen, hidden while driving, snoozed, escalated, dismissed, timed out,
    then a workshop reset; a drive cycle ends; a wrong odometer is corrected."""
    car = _parked_car()
    car.send(("Vehicle.Service.ResetCounter", 4))
    car.odometer_km(9_000)
    card = _visible(car, CardKind.MAINTENANCE)
    car.keep(car.agent.on_shown(card.id, car.wall, car.mono))
    car.drive()
    car.park()
    car.tap(_visible(car, CardKind.MAINTENANCE), "snooze")
    car.odometer_km(10_600)  # overdue: the snoozed card wakes, updated in place
    car.dismiss(_visible(car, CardKind.MAINTENANCE))
    car.odometer_km(10_700)  # overdue resurfaces every 100 km
    resurfaced = _visible(car, CardKind.MAINTENANCE)
    car.keep(car.agent.on_dismiss(resurfaced.id, car.wall, car.mono, CloseReason.EXPIRED))
    car.odometer_km(10_800)
    assert car.card("maintenance") is not None
    car.send(("Vehicle.Service.ResetCounter", 5))  # the workshop reset closes it
    car.send((IGNITION, "OFF"))
    car.odometer_km(1_677_721.5)  # a wrong odometer slipped in, then readings correct it
    car.odometer_km(10_800)
    return car.events


def faults() -> list[Event]:
    """A fault appears, is dismissed, another comes and clears."""
    car = _parked_car()
    car.dtcs("P0301")
    car.dismiss(_visible(car, CardKind.FAULT))
    car.dtcs("P0301", "P0524")
    car.dtcs()
    return car.events


def benefits() -> list[Event]:
    """A coupon offered while charging and redeemed; another refused; a cooldown."""
    car = _parked_car()
    _give(car, _coupon("coffee-1"), _coupon("wash-1", "odometer_milestone"))
    car.odometer_km(9_990)
    car.send((STATE_OF_CHARGE, 18.0))
    car.send((IS_CHARGING, True))
    card = _visible(car, CardKind.BENEFIT)
    request_id = _request_id(car.tap(card, "redeem").events, "request.redemption")
    car.keep(
        car.agent.on_redemption_answer(request_id, accepted=True, wall=car.wall, monotonic=car.mono)
    )
    car.tap(_visible(car, CardKind.BENEFIT), "ok")  # shown at the café, then put away
    car.send((STATE_OF_CHARGE, 80.0))
    car.send((IS_CHARGING, False))
    car.tick(car.agent.config.policy.cooldowns[CardKind.BENEFIT])
    car.send((IS_CHARGING, True))  # a new session: offered again
    card = _visible(car, CardKind.BENEFIT)
    request_id = _request_id(car.tap(card, "redeem").events, "request.redemption")
    car.keep(
        car.agent.on_redemption_answer(
            request_id, accepted=False, wall=car.wall, monotonic=car.mono
        )
    )
    car.dismiss(_visible(car, CardKind.BENEFIT))
    car.odometer_km(10_001)  # a milestone scene within the cooldown: suppressed
    return car.events


def unanswered() -> list[Event]:
    """No answer in time: a slot request and a redemption say so on their cards."""
    car = _parked_car()
    car.odometer_km(9_000)
    car.tap(_visible(car, CardKind.MAINTENANCE), "book")
    car.tick(car.agent.config.request_timeout_s + 1)
    _give(car, _coupon("coffee-2"))
    car.send((IS_CHARGING, True))
    car.tap(_visible(car, CardKind.BENEFIT), "redeem")
    car.tick(car.agent.config.request_timeout_s + 1)
    return car.events


def booking() -> list[Event]:
    """Book from the maintenance card: declined, booked again, confirmed, cancelled."""
    car = _parked_car()
    car.odometer_km(9_000)
    card = _visible(car, CardKind.MAINTENANCE)
    slots_request = _request_id(car.tap(card, "book").events, "request.booking_slots")
    start = car.wall + 3 * DAY
    car.slots(slots_request, Slot("s1", start), Slot("s2", start + HOUR))
    out = car.keep(car.agent.request_booking(card.id, "s1", car.wall, car.mono))
    first = _request_id(out.events, "request.booking")
    car.keep(car.agent.on_booking_answer(first, BookingStatus.DECLINED, car.wall, car.mono))
    out = car.keep(car.agent.request_booking(card.id, "s2", car.wall, car.mono))
    second = _request_id(out.events, "request.booking")
    slot = Slot("s2", start + HOUR)
    car.keep(
        car.agent.on_booking_answer(
            second, BookingStatus.CONFIRMED, car.wall, car.mono, booking_id="BK-1", slot=slot
        )
    )
    car.keep(
        car.agent.on_booking_answer(
            second, BookingStatus.CANCELLED, car.wall, car.mono, reason="dealer closed"
        )
    )
    return car.events


def cloud_rules() -> list[Event]:
    """A campaign rule set activated; its card runs out of time on its own."""
    car = _parked_car()
    document = RuleSetDocument.model_validate(
        {
            "version": 10,
            "rules": [
                {
                    "id": "ops.low_battery",
                    "version": 3,
                    "trigger": {"signal": {"path": STATE_OF_CHARGE, "op": "<", "value": 20}},
                    "card": {
                        "key": "ops:low_battery",
                        "kind": "campaign",
                        "title": {"zh-CN": "电量低", "en": "Battery low"},
                        "body": {"zh-CN": "附近有充电站。", "en": "Chargers nearby."},
                        "ttl_s": 600,
                    },
                }
            ],
        }
    )
    car.keep(car.agent.set_rules(document, car.wall, car.mono))
    car.send((STATE_OF_CHARGE, 40.0))
    car.send((STATE_OF_CHARGE, 15.0))
    assert car.card("ops:low_battery") is not None
    car.tick(601)
    car.send((STATE_OF_CHARGE, 40.0))
    car.send((STATE_OF_CHARGE, 15.0))  # a new card, which the kill switch closes
    stops = RuleStops(version=1, stopped=["ops.low_battery"])
    car.keep(car.agent.set_rule_stops(stops, car.wall, car.mono))
    assert car.card("ops:low_battery") is None
    return car.events


def privacy() -> list[Event]:
    """The driver withdraws a consent, then the car changes owner."""
    car = _parked_car()
    car.consent(Category.USAGE_ANALYTICS, granted=False)
    car.consent(Category.LOCATION, valid_for=30 * DAY)
    car.keep(car.agent.wipe(owner_change=True, wall=car.wall, monotonic=car.mono))
    return car.events


def cloud_documents() -> list[Event]:
    """The cloud sets the clock, applies a consent text and a card, takes the card back,
    refuses one."""
    car = _parked_car()
    car.trust_clock()
    agent = car.agent
    consent = ConsentText.model_validate(
        {"version": 2, "purposes": {"location": {"zh-CN": "附近的服务", "en": "Services nearby"}}}
    )
    car.keep(agent.apply_document("consent_text", 2, consent, car.wall, car.mono))
    template = {
        "kind": "campaign",
        "title": {"zh-CN": "召回通知", "en": "Recall notice"},
        "body": {"zh-CN": "请联系经销商。", "en": "Please contact your dealer."},
    }
    card = CloudCard.model_validate({"card_id": "recall-1", "card": template})
    car.keep(agent.apply_document("card", 1, card, car.wall, car.mono))
    assert car.visible(CardKind.CAMPAIGN)
    withdraw = CloudCard(card_id="recall-1", withdraw=True)
    car.keep(agent.apply_document("card", 2, withdraw, car.wall, car.mono))
    car.keep(
        agent.reject_document(
            "not a signed document",
            kind=None,
            version=None,
            topic="tp/v2/car-0001/config/wallet",
            wall=car.wall,
            monotonic=car.mono,
        )
    )
    car.keep(
        agent.reject_document(
            "version 1 is older than the 2 in effect (a replay or a rollback)",
            kind="card",
            version=1,
            topic="tp/v2/car-0001/cards",
            wall=car.wall,
            monotonic=car.mono,
        )
    )
    return car.events


def store_recovered(tmp_path: Path) -> list[Event]:
    """The daemon finds its database corrupt at start-up (read back from the outbox)."""
    db = tmp_path / "touchpoint.db"
    db.write_bytes(b"this is not a database" * 1000)
    settings = DaemonSettings(
        store=StoreSettings(path=db),
        consent=ConsentSettings(defaults={Category.VEHICLE_HEALTH: True}),
    )

    async def run() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        await daemon.settle()
        await daemon.stop()

    asyncio.run(run())
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT id, type, category, priority, time, time_trusted, boot_id, seq, "
            "payload FROM outbox ORDER BY rowid"
        ).fetchall()
    return [
        Event(
            id=row[0],
            type=row[1],
            category=Category(row[2]),
            time=row[4],
            time_trusted=bool(row[5]),
            boot_id=row[6],
            seq=row[7],
            priority=Priority(row[3]),
            expires=None,
            payload=json.loads(row[8]),
        )
        for row in rows
    ]


SCENARIOS: Final[dict[str, Callable[[Path], list[Event]]]] = {
    "maintenance_life": lambda _: maintenance_life(),
    "faults": lambda _: faults(),
    "benefits": lambda _: benefits(),
    "booking": lambda _: booking(),
    "unanswered": lambda _: unanswered(),
    "cloud_rules": lambda _: cloud_rules(),
    "privacy": lambda _: privacy(),
    "cloud_documents": lambda _: cloud_documents(),
    "store_recovered": store_recovered,
}


def _problems(event: Event) -> list[str]:
    entry = lookup(event.type)
    if entry is None:
        return [f"{event.type}: not in the catalogue"]
    problems = entry.problems(event.payload)
    if event.category not in entry.categories:
        problems.append(f"{event.type}: category {event.category} not in {entry.categories}")
    if event.priority is not entry.priority:
        problems.append(f"{event.type}: priority {event.priority!r}, not {entry.priority!r}")
    if event.type.startswith("card."):
        marketing = event.payload.get("kind") in _MARKETING_CARD_KINDS
        if (event.category is Category.MARKETING) is not marketing:
            problems.append(f"{event.type}: {event.category} for a {event.payload.get('kind')}")
    # The wire form must be what the cloud gets: plain JSON, as the store keeps it.
    if json.loads(event.payload_json()) != json.loads(json.dumps(dict(event.payload))):
        problems.append(f"{event.type}: the payload does not survive JSON")
    return problems


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_recorded_event_matches_the_catalogue(name: str, tmp_path: Path) -> None:
    events = SCENARIOS[name](tmp_path)
    assert events
    problems = [p for e in events for p in _problems(e)]
    assert problems == []


def test_the_scenarios_exercise_every_catalogued_type(tmp_path: Path) -> None:
    seen: set[str] = set()
    for i, scenario in enumerate(SCENARIOS.values()):
        directory = tmp_path / str(i)
        directory.mkdir()
        seen |= {e.type for e in scenario(directory)}
    missing = set(CATALOGUE) - seen - set(NOT_DRIVEN)
    assert missing == set(), "catalogued but never recorded: drive them or drop them"
    assert not set(NOT_DRIVEN) & seen, "now driven: take them off NOT_DRIVEN"


def test_every_example_payload_fits_its_own_entry() -> None:
    for entry in CATALOGUE.values():
        assert entry.problems(entry.example_payload()) == [], entry.type


def test_the_checks_catch_what_is_wrong() -> None:
    entry = CATALOGUE["fault.detected"]
    assert entry.problems({"code": "P0301", "severity": "service_soon", "odometer_km": None}) == []
    problems = entry.problems({"code": 301, "severity": "bad", "extra": True})
    assert problems == [
        "fault.detected: undeclared field 'extra'",
        "fault.detected.code: 301 is not string",
        "fault.detected.severity: 'bad' is not one of ['info', 'service_soon', 'stop_safely']",
        "fault.detected: missing field 'odometer_km'",
    ]
    nested = CATALOGUE["maintenance.reminder"].example_payload()
    nested["items"] = [{"id": "x"}, "not an object"]
    nested["escalated"] = 1  # an int is no JSON boolean, nor a bool a number
    assert len(CATALOGUE["maintenance.reminder"].problems(nested)) == 7
    assert CATALOGUE["rules.activated"].problems({"version": True, "rules": 1.5}) == [
        "rules.activated.version: True is not integer",
        "rules.activated.rules: 1.5 is not integer",
    ]


def test_payload_schemas_are_closed_and_list_the_required_fields() -> None:
    for entry in CATALOGUE.values():
        schema: dict[str, Any] = payload_schema(entry)
        assert schema["additionalProperties"] is False
        assert schema["required"] == [f.name for f in entry.fields if f.required]
        assert set(schema["properties"]) == {f.name for f in entry.fields}
    consent = payload_schema(CATALOGUE["downlink.rejected"])["properties"]
    assert consent["kind"]["type"] == ["string", "null"]


def test_a_bad_field_declaration_is_refused() -> None:
    with pytest.raises(ValueError, match="bad JSON types"):
        PayloadField("x", ("text",), "no such JSON type")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no array"):
        PayloadField("x", ("string",), "items of a string", items="string")
