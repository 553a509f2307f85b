"""Every request the driver makes ends where the driver sees it (issue 11).

A booking or a redemption that gets no answer used to stay "pending" for ever (or was
deleted unsent from the outbox by an expiry nobody saw). Now: the card says what it
waits for; after the request timeout it says nobody answered and how to retry, with an
event; a request still unsent leaves the outbox in the same commit; a retry sends the
same request id; a late answer is still taken.
"""

from __future__ import annotations

from agent.booking import BookingStatus
from agent.cards import CardKind, ChangeType
from agent.events import EventType
from tests.agent.conftest import DAY, HOUR, Car
from tests.agent.test_core_benefits import charge, coupon, give
from tests.agent.test_core_booking import answer, book, maintenance_card, slots_at


def _timeout(car: Car) -> float:
    return car.agent.config.request_timeout_s


def test_a_slot_request_nobody_answers_ends_on_its_card_and_can_be_retried(car: Car) -> None:
    card = maintenance_card(car)
    request_id = book(car, card)
    pending = car.card("maintenance")
    assert pending is not None
    assert pending.pending
    assert pending.note is not None
    assert pending.note.en == "Waiting for the dealer…"
    out = car.tick(_timeout(car) - 1)
    assert out.withdrawn == []
    out = car.tick(2)
    # Nobody answered: said on the card, recorded, and the unsent request withdrawn.
    [change] = [c for c in out.changes if c.card.key == "maintenance"]
    assert change.type is ChangeType.UPDATED
    assert not change.card.pending
    assert change.card.note is not None
    assert "Couldn't reach the dealer" in change.card.note.en
    assert "经销商" in change.card.note.zh_cn
    [unanswered] = [e for e in out.events if e.type == EventType.BOOKING_UNANSWERED]
    assert unanswered.payload["request_id"] == request_id
    assert unanswered.payload["stage"] == "slots"
    assert out.withdrawn == [request_id]
    # Book again: the same request, the same idempotency key.
    out = car.tap(car.visible(CardKind.MAINTENANCE)[0], "book")
    [again] = [e for e in out.events if e.type == EventType.REQUEST_BOOKING_SLOTS]
    assert again.request_id == request_id
    retried = car.card("maintenance")
    assert retried is not None
    assert retried.pending
    # An answer is taken, even after a timeout.
    car.tick(_timeout(car) + 1)
    out = car.slots(request_id, *slots_at(car.wall + 3 * DAY))
    assert [(c.type, c.card.pending, c.card.note) for c in out.changes] == [
        (ChangeType.UPDATED, False, None)
    ]


def test_a_booking_request_nobody_answers_ends_too_and_a_late_confirmation_counts(
    car: Car,
) -> None:
    card = maintenance_card(car)
    slots_request = book(car, card)
    offered = slots_at(car.wall + 3 * DAY)
    car.slots(slots_request, *offered)
    out = car.keep(car.agent.request_booking(card.id, "s1", car.wall, car.mono))
    [request] = [e for e in out.events if e.type == EventType.REQUEST_BOOKING]
    assert request.request_id is not None
    out = car.tick(_timeout(car) + 1)
    [unanswered] = [e for e in out.events if e.type == EventType.BOOKING_UNANSWERED]
    assert unanswered.payload["stage"] == "booking"
    assert out.withdrawn == [request.request_id]
    answer(car, request.request_id, BookingStatus.CONFIRMED, offered[0])
    assert car.card("maintenance") is None
    assert car.card("booking:maintenance") is not None


def test_a_request_pending_across_a_restart_is_timed_again_from_the_restart(car: Car) -> None:
    card = maintenance_card(car)
    book(car, card)
    car.tick(_timeout(car) / 2)
    restarted = car.restarted()
    restarted.tick(_timeout(car) / 2 + 5)  # the first tick starts its clock
    assert restarted.events_of(EventType.BOOKING_UNANSWERED) == []
    out = restarted.tick(_timeout(car))
    assert [e.type for e in out.events if e.type == EventType.BOOKING_UNANSWERED] == [
        EventType.BOOKING_UNANSWERED
    ]


def test_a_redemption_nobody_answers_says_so_and_a_retry_keeps_its_id(car: Car) -> None:
    give(car, coupon())
    charge(car, on=True)
    [card] = car.visible(CardKind.BENEFIT)
    out = car.tap(card, "redeem")
    [request] = [e for e in out.events if e.type == EventType.REQUEST_REDEMPTION]
    out = car.tick(_timeout(car) + 1)
    [unanswered] = [e for e in out.events if e.type == EventType.REDEMPTION_UNANSWERED]
    assert unanswered.payload["request_id"] == request.request_id
    assert out.withdrawn == [request.request_id]
    [shown] = car.visible(CardKind.BENEFIT)
    assert not shown.pending
    assert shown.note is not None
    assert "partner" in shown.note.en
    out = car.tap(shown, "redeem")
    [again] = [e for e in out.events if e.type == EventType.REQUEST_REDEMPTION]
    assert again.request_id == request.request_id
    assert request.request_id is not None
    out = car.keep(
        car.agent.on_redemption_answer(
            request.request_id, accepted=True, wall=car.wall, monotonic=car.mono, code="CF-9"
        )
    )
    [confirmed] = car.visible(CardKind.BENEFIT)
    assert "CF-9" in confirmed.body.en


def test_a_confirmation_and_its_reminder_do_not_stack(car: Car) -> None:
    car.trust_clock()
    card = maintenance_card(car)
    request_id = book(car, card)
    tomorrow = slots_at(car.wall + 20 * HOUR)  # inside the reminder's day of lead
    car.slots(request_id, *tomorrow)
    out = car.keep(car.agent.request_booking(card.id, "s1", car.wall, car.mono))
    [booking] = [e for e in out.events if e.type == EventType.REQUEST_BOOKING]
    assert booking.request_id is not None
    answer(car, booking.request_id, BookingStatus.CONFIRMED, tomorrow[0])
    car.tick(60)
    car.tick(HOUR)
    booking_cards = [c for c in car.agent.cards.cards if c.kind is CardKind.BOOKING]
    assert [c.title.en for c in booking_cards] == ["Service booked"]
