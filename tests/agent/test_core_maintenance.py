"""The agent core, in process: the maintenance card's life as the driver sees it."""

from __future__ import annotations

from typing import Any

import pytest

from agent.benefits import Wallet
from agent.cards import CardKind, CardState, ChangeType, CloseReason, Display, Urgency
from agent.maintenance import ItemState
from agent.plan import DAY, default_plan
from tests.agent.conftest import T0, Car, added, all_consent, make_agent, serviced_at

PLAN = default_plan()


def reminders(car: Car) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in car.events_of("maintenance.reminder")]


def test_the_card_appears_once_at_the_right_odometer_with_the_right_items(car: Car) -> None:
    car.drive()
    car.odometer_km(8_999)
    assert reminders(car) == []
    out = car.odometer_km(9_000)  # tyre rotation: 10,000 km interval, 1,000 km lead
    [payload] = reminders(car)
    assert payload["state"] == "DUE_SOON"
    assert [i["id"] for i in payload["items"]] == ["tyre_rotation"]
    assert payload["odometer_km"] == 9_000
    assert payload["escalated"] is False
    card = car.card("maintenance")
    assert card is not None
    assert card.args["item_ids"] == ("tyre_rotation",)
    assert card.title.en == "Service due soon"
    assert "Tyre rotation" in card.body.en
    assert "轮胎换位" in card.body.zh_cn
    assert [a.key for a in card.actions] == ["book", "snooze", "dismiss"]
    # Not while driving: created, queued, not on screen.
    assert card.state is CardState.QUEUED
    assert added([out]) == []
    assert car.visible() == []
    out = car.park()
    [shown] = added([out])
    assert shown.id == card.id
    assert car.events_of("card.displayed")[-1].payload["card_id"] == card.id
    # Driving on and parking again: no second reminder, no second card.
    for km in (9_100, 9_200, 9_300):
        car.drive()
        car.odometer_km(km)
        car.park()
    assert len(reminders(car)) == 1
    assert len(car.events_of("card.created")) == 1
    assert [c.id for c in car.visible(CardKind.MAINTENANCE)] == [card.id]


def test_the_card_is_withdrawn_while_driving_and_back_when_parked(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    assert card.display is Display.PARKED_ONLY
    out = car.drive(5.0)
    [change] = out.changes
    assert change.type is ChangeType.REMOVED
    assert change.reason is CloseReason.WITHDRAWN_FOR_DRIVING
    assert car.visible() == []
    stored = car.card("maintenance")
    assert stored is not None
    assert stored.state is CardState.WITHDRAWN
    assert car.events_of("card.withdrawn")[-1].payload["card_id"] == card.id
    # Standing in Drive at a red light is still driving.
    assert added([car.send(("Vehicle.Speed", 0.0))]) == []
    out = car.park()
    assert [c.id for c in added([out])] == [card.id]


def test_snooze_brings_the_card_back_after_the_snooze_distance(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    out = car.tap(card, "snooze")
    assert [(c.type, c.card.id, c.reason) for c in out.changes] == [
        (ChangeType.REMOVED, card.id, CloseReason.SNOOZED)  # an HMI can tell it from a dismissal
    ]
    assert car.visible() == []
    car.drive()
    car.odometer_km(9_000 + PLAN.snooze_km - 1)
    car.park()
    assert car.visible() == []
    car.drive()
    car.odometer_km(9_000 + PLAN.snooze_km)
    assert car.visible() == []  # due back, but driving
    out = car.park()
    assert [c.id for c in added([out])] == [card.id]
    assert len(reminders(car)) == 1


def test_snooze_brings_the_card_back_after_the_snooze_time(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    car.tap(card, "snooze")
    assert added([car.tick(PLAN.snooze_days * DAY - 60)]) == []
    out = car.tick(60)
    assert [c.id for c in added([out])] == [card.id]


def test_dismiss_then_resurface_after_the_interval(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    out = car.dismiss(card)
    assert [(c.type, c.reason) for c in out.changes] == [
        (ChangeType.REMOVED, CloseReason.DISMISSED)
    ]
    assert car.card("maintenance") is None
    assert car.events_of("card.dismissed")[-1].payload["card_id"] == card.id
    car.tick(PLAN.resurface_days[0] * DAY - 60)
    assert car.visible() == []
    out = car.tick(60)
    [back] = added([out])
    assert back.kind is CardKind.MAINTENANCE
    assert back.id != card.id
    assert reminders(car)[-1]["resurfaced"] is True
    assert len(reminders(car)) == 2


def test_dismissing_with_the_dismiss_action_works_the_same(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    car.tap(card, "dismiss")
    assert car.card("maintenance") is None
    assert car.agent.maintenance.dismissed_at is not None
    car.odometer_km(9_000 + PLAN.resurface_km[0] - 1)
    assert len(reminders(car)) == 1


def test_overdue_escalates_in_place(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    out = car.odometer_km(10_000)
    [change] = out.changes
    assert change.type is ChangeType.UPDATED
    assert change.card.id == card.id
    assert change.card.title.en == "Service due now"
    assert reminders(car)[-1]["escalated"] is True
    out = car.odometer_km(10_500)
    [change] = out.changes
    assert change.type is ChangeType.UPDATED
    assert change.card.id == card.id
    assert change.card.title.en == "Service overdue"
    assert change.card.urgency is Urgency.CRITICAL
    assert car.agent.maintenance.notified is ItemState.OVERDUE
    assert len(car.events_of("card.created")) == 1
    assert len(car.events_of("card.updated")) == 2
    # Still parked-only, however urgent.
    car.drive()
    assert car.visible() == []


def test_an_item_joining_updates_the_card_in_place(car: Car) -> None:
    car.odometer_km(13_400)  # tyre rotation due (since 10,000), oil not yet due soon
    [card] = car.visible(CardKind.MAINTENANCE)
    assert card.args["item_ids"] == ("tyre_rotation",)
    out = car.odometer_km(13_500)  # engine oil: 15,000 km, lead 1,500 km
    [change] = out.changes
    assert change.type is ChangeType.UPDATED
    assert change.card.id == card.id
    item_ids = change.card.args["item_ids"]
    assert isinstance(item_ids, tuple)
    assert set(item_ids) == {"tyre_rotation", "engine_oil"}


def test_condition_inputs_bring_the_card(car: Car) -> None:
    car.odometer_km(1_000)
    assert car.visible() == []
    car.send(("Vehicle.Powertrain.CombustionEngine.EngineOil.RelativeLifeRemaining", 12))
    [card] = car.visible(CardKind.MAINTENANCE)
    assert card.args["item_ids"] == ("engine_oil",)
    car.send(("Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.IsPressureLow", True))
    card = car.visible(CardKind.MAINTENANCE)[0]
    assert card.title.en == "Service due now"
    assert card.args["item_ids"] == ("tyre_check", "engine_oil")


def test_time_based_items_wait_for_a_trusted_clock() -> None:
    car = Car(make_agent())
    all_consent(car)
    car.history(serviced_at(0, T0 - 340 * DAY))  # oil and cabin filter: 365 days
    car.park()
    car.odometer_km(100)
    car.tick(DAY)
    assert reminders(car) == []
    car.trust_clock()
    [payload] = reminders(car)
    assert {i["id"] for i in payload["items"]} == {"engine_oil", "cabin_filter"}
    assert {i["reason"] for i in payload["items"]} == {"time"}


def test_a_can_service_reset_records_the_due_items_and_closes_the_card(car: Car) -> None:
    car.send(("Vehicle.Service.ResetCounter", 4))
    car.odometer_km(10_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    out = car.send(("Vehicle.Service.ResetCounter", 5))
    assert [(c.type, c.card.id) for c in out.changes] == [(ChangeType.REMOVED, card.id)]
    [reset] = car.events_of("service.reset")
    assert reset.payload["items"] == ["tyre_rotation"]
    assert reset.payload["odometer_km"] == 10_000
    assert car.agent.maintenance.records[-1].source == "can_reset"
    assert car.agent.maintenance.notified is ItemState.OK
    car.odometer_km(13_000)  # tyre rotation counts from the reset now
    assert len(reminders(car)) == 1
    car.odometer_km(13_500)  # engine oil (never reset) comes due soon: a new episode
    assert reminders(car)[-1]["state"] == "DUE_SOON"
    assert [i["id"] for i in reminders(car)[-1]["items"]] == ["engine_oil"]


def test_a_cloud_history_update_closes_the_card(car: Car) -> None:
    car.odometer_km(9_500)
    [card] = car.visible(CardKind.MAINTENANCE)
    out = car.history(serviced_at(9_400, None))
    assert [(c.type, c.card.id, c.reason) for c in out.changes] == [
        (ChangeType.REMOVED, card.id, CloseReason.CLOSED_BY_AGENT)
    ]
    assert car.agent.maintenance.notified is ItemState.OK


def test_resurfacing_is_held_by_the_daily_cap(car: Car) -> None:
    cap = car.agent.config.policy.daily_caps[CardKind.MAINTENANCE]
    km = 10_600.0  # tyre rotation overdue: resurfaces every 100 km after a dismissal
    car.odometer_km(km)
    shown = []
    for _ in range(cap + 2):
        visible = car.visible(CardKind.MAINTENANCE)
        if visible:
            shown.append(visible[0].id)
            car.dismiss(visible[0])
        km += PLAN.resurface_km[2]
        car.odometer_km(km)
    assert len(shown) == cap
    assert len(set(shown)) == cap
    queued = car.card("maintenance")
    assert queued is not None
    assert queued.state is CardState.QUEUED  # waiting for the rolling day to pass
    car.tick(DAY - 60)
    assert car.visible(CardKind.MAINTENANCE) == []
    car.tick(60)
    assert [c.id for c in car.visible(CardKind.MAINTENANCE)] == [queued.id]


@pytest.mark.parametrize("km", [9_000, 10_000])
def test_the_reminder_event_tells_the_dealer(car: Car, km: int) -> None:
    car.keep(car.agent.set_wallet(Wallet(version=1, dealer_id="D-42"), car.wall, car.mono))
    car.odometer_km(km)
    assert reminders(car)[-1]["dealer_id"] == "D-42"


def test_a_screen_timeout_is_not_the_drivers_answer(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    out = car.keep(car.agent.on_dismiss(card.id, car.wall, car.mono, CloseReason.EXPIRED))
    assert [(c.type, c.reason) for c in out.changes] == [(ChangeType.REMOVED, CloseReason.EXPIRED)]
    assert car.events_of("card.expired")[-1].payload["card_id"] == card.id
    assert car.events_of("card.dismissed") == []
    with pytest.raises(ValueError, match="dismissed or expired"):
        car.agent.on_dismiss(card.id, car.wall, car.mono, CloseReason.SUPERSEDED)
    # Not straight back (a flicker loop), but after the same wait as a dismissal.
    car.tick(PLAN.resurface_days[0] * DAY - 60)
    assert car.visible() == []
    car.tick(60)
    [back] = car.visible(CardKind.MAINTENANCE)
    assert back.id != card.id


def test_history_that_services_part_of_a_visit_brings_the_rest_back_at_once(car: Car) -> None:
    """A card shown before the cloud's history arrived closed when it came, and never
    came back though an item was still due (issue 11)."""
    car.odometer_km(14_990)  # tyre rotation overdue (10,000 km), engine oil due soon
    [card] = car.visible(CardKind.MAINTENANCE)
    before = set(card.args["item_ids"])  # type: ignore[arg-type]
    assert {"tyre_rotation", "engine_oil"} <= before
    car.history(serviced_at(0, T0 - 100 * DAY), serviced_at(14_900, T0, ("tyre_rotation",)))
    [again] = car.visible(CardKind.MAINTENANCE)
    assert "engine_oil" in again.args["item_ids"]  # type: ignore[operator]
    assert "tyre_rotation" not in again.args["item_ids"]  # type: ignore[operator]


def test_a_reminder_coming_on_screen_says_the_odometer_of_now(car: Car) -> None:
    car.odometer_km(9_000)
    [card] = car.visible(CardKind.MAINTENANCE)
    assert "9000 km" in card.body.en.replace(",", "")
    car.drive()
    car.odometer_km(9_041)
    car.park()
    [shown] = car.visible(CardKind.MAINTENANCE)
    assert shown.id == card.id
    assert "9041 km" in shown.body.en.replace(",", "")


def test_a_corrected_odometer_is_said_and_what_is_due_follows_the_real_one(car: Car) -> None:
    # A garbage odometer slipped in (an older version kept it): everything came due.
    car.odometer_km(5_000)
    car.odometer_km(1_677_721.5)
    assert car.visible(CardKind.MAINTENANCE)
    # The signal layer's recovery puts the real odometer back.
    car.odometer_km(5_010)

    [corrected] = car.events_of("odometer.corrected")
    assert corrected.payload == {"from_km": 1_677_721.5, "to_km": 5_010.0}
    # Nothing is due at 5,010 km of the default plan: the card the garbage caused goes.
    assert car.visible(CardKind.MAINTENANCE) == []
    car.odometer_km(9_000)  # and the tyre rotation comes due where it should
    assert [i["id"] for i in reminders(car)[-1]["items"]] == ["tyre_rotation"]


def test_after_a_correction_what_is_really_due_gets_a_card_of_its_own(car: Car) -> None:
    car.odometer_km(5_000)
    car.odometer_km(1_677_721.5)
    [wrong] = car.visible(CardKind.MAINTENANCE)
    car.odometer_km(9_100)  # corrected: only the tyre rotation is due soon

    [card] = car.visible(CardKind.MAINTENANCE)
    assert card.id != wrong.id
    assert card.args["item_ids"] == ("tyre_rotation",)
    assert reminders(car)[-1]["state"] == "DUE_SOON"
