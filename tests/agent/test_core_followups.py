"""The agent core where two features meet: booking and escalation, snooze and escalation,
a retried booking, and a cloud rule replacing an older version of itself."""

from __future__ import annotations

from agent.booking import BookingStatus, Slot
from agent.cards import CardKind, CardState, Text, Urgency
from agent.rule_model import RuleSetDocument
from tests.agent.conftest import DAY, HOUR, Car

SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
SLOT = Slot("s1", 0.0, Text("北京朝阳店", "Beijing Chaoyang"))


def _booked(car: Car, *, in_days: float = 3) -> float:
    """Book the maintenance card's visit (tyre rotation, due soon at 9,000 km)."""
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    out = car.tap(card, "book")
    [request] = [e for e in out.events if e.type == "request.booking_slots"]
    assert request.request_id is not None
    start = car.wall + in_days * DAY
    car.slots(request.request_id, Slot(SLOT.id, start, SLOT.dealer))
    out = car.keep(car.agent.request_booking(card.id, SLOT.id, car.wall, car.mono))
    [booking] = [e for e in out.events if e.type == "request.booking"]
    assert booking.request_id is not None
    car.keep(
        car.agent.on_booking_answer(
            booking.request_id,
            BookingStatus.CONFIRMED,
            car.wall,
            car.mono,
            slot=Slot(SLOT.id, start, SLOT.dealer),
        )
    )
    assert car.card("maintenance") is None  # the booking completed the reminder
    return start


def test_escalation_stands_down_while_the_visit_is_booked(car: Car) -> None:
    _booked(car)
    reminders = len(car.events_of("maintenance.reminder"))
    car.odometer_km(10_000)  # due now
    car.odometer_km(10_600)  # overdue
    assert len(car.events_of("maintenance.reminder")) == reminders
    assert car.card("maintenance") is None


def test_a_missed_appointment_brings_the_reminder_back(car: Car) -> None:
    start = _booked(car, in_days=2)
    reminders = len(car.events_of("maintenance.reminder"))
    car.tick(start - car.wall + 2 * HOUR)  # the appointment passed...
    assert car.card("maintenance") is None  # ...the booking still covers it for a day
    car.tick(DAY)
    assert len(car.events_of("maintenance.reminder")) == reminders + 1
    [event] = car.events_of("maintenance.reminder")[-1:]
    assert event.payload["resurfaced"] is True
    card = car.card("maintenance")
    assert card is not None
    assert card.state is CardState.VISIBLE


def test_escalation_wakes_a_snoozed_reminder(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    car.tap(card, "snooze")
    assert car.visible(CardKind.MAINTENANCE) == []
    car.odometer_km(9_100)  # still due soon: stays snoozed
    assert car.visible(CardKind.MAINTENANCE) == []
    car.odometer_km(10_600)  # overdue: more urgent than what was snoozed
    [woken] = car.visible(CardKind.MAINTENANCE)
    assert woken.id == card.id
    assert woken.urgency is Urgency.CRITICAL


def test_booking_again_from_the_not_confirmed_card_books_the_original_visit(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    out = car.tap(card, "book")
    [slots] = [e for e in out.events if e.type == "request.booking_slots"]
    assert slots.request_id is not None
    car.slots(slots.request_id, Slot("s1", car.wall + 3 * DAY, SLOT.dealer))
    out = car.keep(car.agent.request_booking(card.id, "s1", car.wall, car.mono))
    [first] = [e for e in out.events if e.type == "request.booking"]
    assert first.request_id is not None
    car.keep(
        car.agent.on_booking_answer(first.request_id, BookingStatus.DECLINED, car.wall, car.mono)
    )
    declined = car.card("booking:maintenance")
    assert declined is not None
    assert declined.title.en == "Booking not confirmed"

    out = car.tap(declined, "book")  # try another slot, from the message
    [retry] = [e for e in out.events if e.type == "request.booking_slots"]
    assert retry.payload["card_key"] == "maintenance"
    assert retry.payload["items"] == ["tyre_rotation"]
    assert retry.request_id is not None
    car.slots(retry.request_id, Slot("s2", car.wall + 4 * DAY, SLOT.dealer))
    assert car.agent.booking_slots(declined.id) == (Slot("s2", car.wall + 4 * DAY, SLOT.dealer),)
    out = car.keep(car.agent.request_booking(declined.id, "s2", car.wall, car.mono))
    [second] = [e for e in out.events if e.type == "request.booking"]
    assert second.request_id is not None
    car.keep(
        car.agent.on_booking_answer(second.request_id, BookingStatus.CONFIRMED, car.wall, car.mono)
    )

    assert car.card("maintenance") is None  # the visit is booked
    assert car.agent.flows.booked("maintenance")
    confirmed = car.card("booking:maintenance")
    assert confirmed is not None
    assert confirmed.title.en == "Service booked"
    assert car.card("booking:booking:maintenance") is None


def _rules(version: int, per_day: int) -> RuleSetDocument:
    return RuleSetDocument.model_validate(
        {
            "version": version,
            "rules": [
                {
                    "id": "soc.low",
                    "version": version,
                    "trigger": {"signal": {"path": SOC, "op": "<", "value": 20}},
                    "card": {
                        "kind": "campaign",
                        "title": {"zh-CN": "电量低", "en": "Battery low"},
                        "body": {"zh-CN": "附近有充电站", "en": "Chargers nearby"},
                    },
                    "caps": {"per_day": per_day},
                }
            ],
        }
    )


def test_a_new_version_of_a_rule_starts_with_fresh_caps(car: Car) -> None:
    soc = SOC
    car.park()
    car.keep(car.agent.set_rules(_rules(1, per_day=1), car.wall, car.mono))

    def fired(ref: str) -> int:
        kinds = ("card.created", "card.updated", "card.suppressed")
        return sum(1 for e in car.events if e.type in kinds and e.payload["rule"] == ref)

    car.send((soc, 15.0))  # fires: 1 of 1 today
    car.send((soc, 50.0))
    car.send((soc, 15.0))  # capped
    assert fired("soc.low@1") == 1
    car.keep(car.agent.set_rules(_rules(2, per_day=1), car.wall, car.mono))
    car.send((soc, 50.0))
    car.send((soc, 15.0))  # the new version has its own cap (it updates the open card)
    assert fired("soc.low@2") == 1
    car.send((soc, 50.0))
    car.send((soc, 15.0))  # and it is capped in turn
    assert fired("soc.low@2") == 1
