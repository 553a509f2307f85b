"""The invariant checker on made-up observations: each invariant catches its breach.

The soak and the kill loop only ever show the checker passing; these show that each
check can fail, and with what message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from agent.cards import CardKind, Display
from cloud_sync.contract import BookingReply
from tests.invariants import checker as inv
from tests.invariants.checker import InvariantChecker, Observation, Truth
from tests.invariants.views import (
    NO_SCREEN,
    CloudView,
    Recorded,
    ScreenCard,
    ScreenView,
    StoreView,
)

T0 = 1_800_000_000.0
BOOT = "boot-1"


def event(
    seq: int, kind: str, payload: Mapping[str, Any] | None = None, *, time: float = T0,
    trusted: bool = True, boot: str = BOOT,
) -> Recorded:  # fmt: skip
    return Recorded(f"id-{boot}-{seq}", kind, time, trusted, boot, seq, dict(payload or {}))


def truth(**changes: Any) -> Truth:
    base = Truth(
        real_now=T0 + 10, real_start=T0, moving=False, moving_for_s=0.0, parked_for_s=100.0,
        daemon_up_s=100.0, cloud_answering_s=100.0, odometer_min_km=1000.0,
        odometer_max_km=1010.0,
    )  # fmt: skip
    return replace(base, **changes)


def store(*events: Recorded, sections: Mapping[str, Any] | None = None) -> StoreView:
    return StoreView("ok", {e.id: e for e in events}, frozenset(), 0, dict(sections or {}))


def cloud(*events: Recorded, answers: Mapping[str, BookingReply] | None = None) -> CloudView:
    return CloudView({e.id: e for e in events}, {e.id: 1 for e in events}, dict(answers or {}))


def names(found: list[inv.Violation]) -> set[str]:
    return {v.invariant for v in found}


def test_a_quiet_consistent_world_breaks_nothing() -> None:
    checker = InvariantChecker()
    seen = Observation(truth(), store(event(1, "drive.summary")), cloud(), NO_SCREEN)
    assert checker.check(seen) == []
    assert checker.checked[inv.LOST] == 1


def test_an_event_gone_from_the_outbox_and_never_at_the_cloud_is_lost() -> None:
    checker = InvariantChecker()
    summary = event(1, "drive.summary", {"distance_km": 3.0})
    assert checker.check(Observation(truth(), store(summary), cloud(), NO_SCREEN)) == []
    found = checker.check(Observation(truth(), store(), cloud(), NO_SCREEN))
    assert names(found) == {inv.LOST}
    # At the cloud instead: delivered, nothing lost.
    again = InvariantChecker()
    again.check(Observation(truth(), store(summary), cloud(), NO_SCREEN))
    assert again.check(Observation(truth(), store(), cloud(summary), NO_SCREEN)) == []


def test_one_position_recorded_under_two_ids_is_a_duplicate() -> None:
    first = event(1, "card.created", {"card_id": "c1", "key": "maintenance"})
    twin = replace(first, id="another-id")
    found = InvariantChecker().check(Observation(truth(), store(first), cloud(twin), NO_SCREEN))
    assert inv.DUPLICATED in names(found)


def test_a_request_without_an_end_breaks_the_bound_once_the_cloud_answers() -> None:
    checker = InvariantChecker()
    request = event(1, "request.booking", {"request_id": "r1", "card_key": "maintenance"})
    assert checker.check(Observation(truth(), store(request), cloud(), NO_SCREEN)) == []
    later = truth(real_now=T0 + 200)
    found = checker.check(Observation(later, store(request), cloud(), NO_SCREEN))
    assert inv.REQUEST_ENDS in names(found)
    ended = InvariantChecker()
    ended.check(Observation(truth(), store(request), cloud(), NO_SCREEN))
    answer = event(2, "booking.confirmed", {"request_id": "r1", "card_key": "maintenance"})
    assert ended.check(Observation(later, store(request, answer), cloud(), NO_SCREEN)) == []


def test_a_card_still_pending_after_its_request_ended_is_caught() -> None:
    request = event(1, "request.booking", {"request_id": "r1", "card_key": "maintenance"})
    declined = event(2, "booking.declined", {"request_id": "r1", "card_key": "maintenance"})

    def seen(pending: bool, *, at: float) -> Observation:
        card = {"id": "c1", "key": "maintenance", "state": "VISIBLE", "pending": pending}
        shown = ScreenCard("c1", CardKind.MAINTENANCE, Display.PARKED_ONLY, pending)
        screen = ScreenView(running=True, restricted=False, waiting=0, cards=(shown,))
        return Observation(truth(real_now=at), store(request, declined,
                           sections={"cards": {"cards": [card]}}), cloud(), screen)  # fmt: skip

    shows_it = InvariantChecker()
    shows_it.check(Observation(truth(), store(request), cloud(), NO_SCREEN))
    assert shows_it.check(seen(False, at=T0 + 11)) == []  # the request ended at T0 + 11
    assert shows_it.check(seen(False, at=T0 + 20)) == []
    assert shows_it.checked[inv.REQUEST_SEEN] == 2  # the store's card and the screen's
    stuck = InvariantChecker()
    stuck.check(Observation(truth(), store(request), cloud(), NO_SCREEN))
    assert stuck.check(seen(True, at=T0 + 11)) == []  # within the grace
    found = stuck.check(seen(True, at=T0 + 20))
    assert [v.invariant for v in found] == [inv.REQUEST_SEEN, inv.REQUEST_SEEN]
    assert "in the store" in found[0].detail
    assert "on screen" in found[1].detail


def test_the_cloud_and_the_car_disagreeing_on_a_booking_is_caught() -> None:
    checker = InvariantChecker()
    request = event(1, "request.booking", {"request_id": "r1", "card_key": "maintenance"})
    declined = event(2, "booking.declined", {"request_id": "r1", "card_key": "maintenance"})
    reply = BookingReply(request_id="r1", status="confirmed", booking_id="B1", sent_at=T0)
    seen = Observation(truth(), store(request, declined), cloud(answers={"r1": reply}), NO_SCREEN)
    assert inv.BOOKING_VIEWS in names(checker.check(seen))


def test_a_parked_only_card_on_screen_while_moving_is_caught() -> None:
    card = ScreenCard("c1", CardKind.MAINTENANCE, Display.PARKED_ONLY, pending=False)
    screen = ScreenView(running=True, restricted=False, waiting=0, cards=(card,))
    moving = truth(moving=True, moving_for_s=30.0, parked_for_s=0.0)
    assert inv.PARKED_ONLY in names(
        InvariantChecker().check(Observation(moving, store(), cloud(), screen))
    )
    restricted = replace(screen, restricted=True)
    assert inv.PARKED_ONLY in names(
        InvariantChecker().check(Observation(truth(), store(), cloud(), restricted))
    )
    assert InvariantChecker().check(Observation(truth(), store(), cloud(), screen)) == []


def test_more_cards_than_the_limit_is_caught() -> None:
    cards = tuple(
        ScreenCard(f"c{i}", CardKind.FAULT, Display.WHILE_MOVING, False) for i in range(4)
    )
    screen = ScreenView(running=True, restricted=False, waiting=0, cards=cards)
    found = InvariantChecker().check(Observation(truth(), store(), cloud(), screen))
    assert names(found) == {inv.MAX_VISIBLE}


def test_a_due_item_with_no_card_while_parked_is_caught() -> None:
    sections = {"maintenance": {"last_states": {"engine_oil": "DUE"}, "dismissed_at": None}}
    found = InvariantChecker().check(
        Observation(truth(), store(sections=sections), cloud(), NO_SCREEN)
    )
    assert names(found) == {inv.DUE_CARD}
    with_card = dict(sections, cards={"cards": [{"id": "c1", "key": "maintenance",
                                                 "state": "QUEUED"}]})  # fmt: skip
    assert (
        InvariantChecker().check(
            Observation(truth(), store(sections=with_card), cloud(), NO_SCREEN)
        )
        == []
    )


def test_an_odometer_going_back_or_beyond_what_the_car_sent_is_caught() -> None:
    checker = InvariantChecker()

    def at(metres: int) -> Observation:
        return Observation(truth(), store(sections={"vehicle": {"odometer_m": metres}}), cloud(),
                           NO_SCREEN)  # fmt: skip

    assert checker.check(at(1_005_000)) == []
    assert names(checker.check(at(1_004_000))) == {inv.ODOMETER_MONOTONIC}
    assert names(checker.check(at(1_677_721_500))) == {inv.ODOMETER_PLAUSIBLE}


def test_a_negative_duration_and_a_trusted_time_from_2106_are_caught() -> None:
    negative = event(1, "drive.summary", {"duration_min": -1361237.1, "distance_km": 2.0})
    future = event(2, "clock.trusted", {}, time=4_294_967_295.0)
    found = InvariantChecker().check(
        Observation(truth(), store(negative, future), cloud(), NO_SCREEN)
    )
    assert names(found) == {inv.NON_NEGATIVE, inv.TRUSTED_TIME}
    untrusted = replace(future, time_trusted=False)
    assert (
        InvariantChecker().check(Observation(truth(), store(untrusted), cloud(), NO_SCREEN)) == []
    )


def test_a_dismissed_card_coming_back_is_caught() -> None:
    created = event(1, "card.created", {"card_id": "c1", "key": "fault:P0301"})
    dismissed = event(2, "card.dismissed", {"card_id": "c1", "key": "fault:P0301"})
    shown_again = event(3, "card.displayed", {"card_id": "c1", "key": "fault:P0301"})
    found = InvariantChecker().check(
        Observation(truth(), store(created, dismissed, shown_again), cloud(), NO_SCREEN)
    )
    assert names(found) == {inv.DISMISSED}
    card = ScreenCard("c1", CardKind.FAULT, Display.WHILE_MOVING, pending=False)
    screen = ScreenView(running=True, restricted=False, waiting=0, cards=(card,))
    on_bus = InvariantChecker().check(
        Observation(truth(dismissed_ids=frozenset({"c1"})), store(), cloud(), screen)
    )
    assert names(on_bus) == {inv.DISMISSED}


def test_a_store_that_fails_its_integrity_check_is_caught() -> None:
    broken = replace(store(), integrity="*** in database main ***")
    assert names(InvariantChecker().check(Observation(truth(), broken, cloud(), NO_SCREEN))) == {
        inv.INTEGRITY
    }


def test_a_new_request_after_an_ended_one_opens_its_card_again() -> None:
    """Book again after a request went unanswered: the slots request shows "pending"
    (and ends with no event when the slots come): not a card left pending."""
    key = {"card_key": "maintenance"}
    request = event(1, "request.booking", {"request_id": "r1"} | key)
    unanswered = event(2, "booking.unanswered", {"request_id": "r1"} | key)
    again = event(3, "request.booking_slots", {"request_id": "r2"} | key)
    card = {"id": "c1", "key": "maintenance", "state": "VISIBLE", "pending": True}
    shown = ScreenCard("c1", CardKind.MAINTENANCE, Display.PARKED_ONLY, pending=True)
    screen = ScreenView(running=True, restricted=False, waiting=0, cards=(shown,))
    checker = InvariantChecker()
    checker.check(Observation(truth(), store(request), cloud(), NO_SCREEN))
    checker.check(Observation(truth(real_now=T0 + 11), store(request, unanswered), cloud(),
                              NO_SCREEN))  # fmt: skip
    later = truth(real_now=T0 + 30)
    sections = {"cards": {"cards": [card]}}
    seen = Observation(later, store(request, unanswered, again, sections=sections), cloud(),
                       screen)  # fmt: skip
    assert checker.check(seen) == []
