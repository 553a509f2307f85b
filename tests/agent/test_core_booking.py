"""The agent core, in process: booking a service from the maintenance card."""

from __future__ import annotations

import pytest

from agent.booking import BookingStatus, Slot
from agent.cards import Card, CardKind, ChangeType, CloseReason, Text
from agent.consent import Category
from agent.errors import ActionError
from tests.agent.conftest import DAY, HOUR, Car, added

SLOTS = (
    Slot("s1", 0.0, Text("北京朝阳店", "Beijing Chaoyang")),
    Slot("s2", 0.0),
)


def slots_at(start: float) -> tuple[Slot, ...]:
    return tuple(Slot(s.id, start + i * HOUR, s.dealer) for i, s in enumerate(SLOTS))


def maintenance_card(car: Car) -> Card:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    return card


def book(car: Car, card: Card) -> str:
    out = car.tap(card, "book")
    [request] = [e for e in out.events if e.type == "request.booking_slots"]
    assert request.request_id is not None
    return request.request_id


def answer(car: Car, request_id: str, status: BookingStatus, slot: Slot | None = None) -> None:
    car.keep(
        car.agent.on_booking_answer(
            request_id, status, car.wall, car.mono, booking_id="BK-1", reason=None, slot=slot
        )
    )


def test_the_whole_booking_flow(car: Car) -> None:
    card = maintenance_card(car)
    out = car.tap(card, "book")
    [request] = [e for e in out.events if e.type == "request.booking_slots"]
    assert request.request_id is not None
    assert request.category is Category.SERVICE_REQUESTS
    assert request.payload["items"] == ["tyre_rotation"]
    assert request.payload["card_key"] == "maintenance"
    assert request.payload["odometer_km"] == 9_000
    assert [(c.type, c.card.pending) for c in out.changes] == [(ChangeType.UPDATED, True)]
    assert car.agent.booking_slots(card.id) is None  # the cloud has not answered
    # A second tap reuses the flow: no second request.
    again = car.tap(car.visible(CardKind.MAINTENANCE)[0], "book")
    assert [e for e in again.events if e.type.startswith("request.")] == []

    offered = slots_at(car.wall + 3 * DAY)
    out = car.slots(request.request_id, *offered)
    assert [(c.type, c.card.pending) for c in out.changes] == [(ChangeType.UPDATED, False)]
    assert car.agent.booking_slots(card.id) == offered
    # An answer to a request nobody made is ignored.
    assert car.slots("not-a-request", *offered).changes == []

    out = car.keep(car.agent.request_booking(card.id, "s1", car.wall, car.mono))
    [booking] = [e for e in out.events if e.type == "request.booking"]
    assert booking.request_id is not None
    assert booking.request_id != request.request_id
    assert booking.payload["slot_id"] == "s1"
    assert booking.expires is None  # its flow ends it, visibly

    answer(car, booking.request_id, BookingStatus.CONFIRMED, offered[0])
    assert car.card("maintenance") is None
    [closed] = [c for c in car.outputs[-1].changes if c.type is ChangeType.REMOVED]
    assert closed.card.id == card.id
    assert closed.reason is CloseReason.COMPLETED
    confirmed = car.card("booking:maintenance")
    assert confirmed is not None
    assert confirmed.kind is CardKind.BOOKING
    assert "Beijing Chaoyang" in confirmed.body.en
    assert [c.id for c in added(car.outputs[-1:])] == [confirmed.id]
    assert car.events_of("booking.confirmed")
    assert car.agent.maintenance.booked_until == offered[0].start + DAY
    assert car.agent.flows.booked("maintenance")

    # A duplicate answer (a resend after a reconnect) changes nothing.
    count = len(car.events)
    answer(car, booking.request_id, BookingStatus.CONFIRMED, offered[0])
    assert len(car.events) == count
    assert car.outputs[-1].changes == []


def test_no_reminder_resurfaces_while_booked(car: Car) -> None:
    card = maintenance_card(car)
    request_id = book(car, card)
    offered = slots_at(car.wall + 2 * DAY)
    car.slots(request_id, *offered)
    out = car.keep(car.agent.request_booking(card.id, "s2", car.wall, car.mono))
    [booking] = [e for e in out.events if e.type == "request.booking"]
    assert booking.request_id is not None
    answer(car, booking.request_id, BookingStatus.CONFIRMED)
    car.tick(DAY)
    car.odometer_km(9_500)  # another item would join: not while booked
    assert car.card("maintenance") is None
    assert len(car.events_of("maintenance.reminder")) == 1


def test_a_declined_booking_shows_the_message_and_allows_another_slot(car: Car) -> None:
    card = maintenance_card(car)
    request_id = book(car, card)
    car.slots(request_id, *slots_at(car.wall + DAY))
    out = car.keep(car.agent.request_booking(card.id, "s1", car.wall, car.mono))
    [first] = [e for e in out.events if e.type == "request.booking"]
    assert first.request_id is not None
    answer(car, first.request_id, BookingStatus.DECLINED)
    declined = car.card("booking:maintenance")
    assert declined is not None
    assert declined.title.en == "Booking not confirmed"
    still = car.card("maintenance")
    assert still is not None
    assert not still.pending
    out = car.keep(car.agent.request_booking(card.id, "s2", car.wall, car.mono))
    [second] = [e for e in out.events if e.type == "request.booking"]
    assert second.request_id not in (None, first.request_id)


def test_bad_taps_are_errors(car: Car) -> None:
    card = maintenance_card(car)
    with pytest.raises(ActionError) as err:
        car.agent.on_action(card.id, "redeem", {}, car.wall, car.mono)
    assert err.value.code == "UnknownAction"
    with pytest.raises(ActionError) as err:
        car.agent.on_action("no-such-card", "book", {}, car.wall, car.mono)
    assert err.value.code == "UnknownCard"
    with pytest.raises(ActionError) as err:
        car.agent.booking_slots(card.id)
    assert err.value.code == "NoBooking"
    request_id = book(car, card)
    with pytest.raises(ActionError) as err:
        car.agent.request_booking(card.id, "s1", car.wall, car.mono)
    assert err.value.code == "NoSuchSlot"  # nothing offered yet
    car.slots(request_id, *slots_at(car.wall + DAY))
    with pytest.raises(ActionError) as err:
        car.agent.request_booking(card.id, "s9", car.wall, car.mono)
    assert err.value.code == "NoSuchSlot"
    car.keep(car.agent.request_booking(card.id, "s1", car.wall, car.mono))
    with pytest.raises(ActionError) as err:
        car.agent.request_booking(card.id, "s2", car.wall, car.mono)
    assert err.value.code == "AlreadyRequested"  # not "no slots offered": they were
    car.drive()
    with pytest.raises(ActionError) as err:
        car.agent.on_action(card.id, "snooze", {}, car.wall, car.mono)
    assert err.value.code == "NotVisible"


def test_the_reminder_the_day_before_needs_a_trusted_clock(car: Car) -> None:
    card = maintenance_card(car)
    request_id = book(car, card)
    start = car.wall + 3 * DAY
    car.slots(request_id, *slots_at(start))
    out = car.keep(car.agent.request_booking(card.id, "s1", car.wall, car.mono))
    [booking] = [e for e in out.events if e.type == "request.booking"]
    assert booking.request_id is not None
    answer(car, booking.request_id, BookingStatus.CONFIRMED)
    car.tick(start - DAY - car.wall - 60)

    def title() -> str | None:
        booking_card = car.card("booking:maintenance")
        return None if booking_card is None else booking_card.title.en

    assert title() == "Service booked"
    car.tick(60)
    assert title() == "Service booked"  # the clock is not trusted
    car.trust_clock()
    # The reminder takes the confirmation's place: one booking card, never two.
    reminder = car.card("booking:maintenance")
    assert reminder is not None
    assert reminder.title.en == "Service appointment tomorrow"
    assert "Beijing Chaoyang" in reminder.body.en
    car.tick(HOUR)
    assert len(car.events_of("card.created")) == 2  # maintenance, confirmed
    assert len(car.events_of("card.updated")) >= 1  # the confirmation became the reminder
    # The day after the visit, the booking is history.
    car.tick(2 * DAY)
    assert car.agent.flows.booking_for("maintenance") is None


def test_a_fault_card_can_be_booked_with_its_code(car: Car) -> None:
    car.dtcs("P0301")
    [card] = car.visible(CardKind.FAULT)
    out = car.tap(card, "book")
    [request] = [e for e in out.events if e.type == "request.booking_slots"]
    assert request.payload["items"] == ["P0301"]
