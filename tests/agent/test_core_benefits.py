"""The agent core, in process: scenes unlock the wallet's coupons; redeeming asks the cloud."""

from __future__ import annotations

import pytest

from agent.benefits import Coupon, Wallet, coupon_for_scene
from agent.cards import CardKind, CardState, ChangeType, CloseReason, Text
from agent.consent import Category
from tests.agent.conftest import DAY, IS_CHARGING, T0, Car, added


def coupon(
    coupon_id: str = "coffee-1",
    scenes: tuple[str, ...] = ("charging_started",),
    **fields: object,
) -> Coupon:
    return Coupon.model_validate(
        {
            "id": coupon_id,
            "title": {"zh-CN": "充电送咖啡", "en": "Coffee while you charge"},
            "body": {"zh-CN": "附近咖啡店免费一杯。", "en": "A free coffee nearby."},
            "scenes": scenes,
            **fields,
        }
    )


def give(car: Car, *coupons: Coupon, **fields: object) -> None:
    wallet = Wallet.model_validate({"version": 1, "coupons": coupons, **fields})
    car.keep(car.agent.set_wallet(wallet, car.wall, car.mono))


def charge(car: Car, *, on: bool) -> None:
    car.send((IS_CHARGING, on))


def test_a_charging_session_surfaces_the_coupon_once(car: Car) -> None:
    give(car, coupon())
    charge(car, on=True)
    [card] = car.visible(CardKind.BENEFIT)
    assert card.key == "benefit:coffee-1"
    assert card.title.en == "Coffee while you charge"
    assert card.args["coupon_id"] == "coffee-1"
    assert card.category is Category.MARKETING
    [offered] = car.events_of("benefit.offered")
    assert offered.payload == {"coupon_id": "coffee-1", "scene": "charging_started"}
    # The same session: repeated updates, the wallet refreshed, a tick.
    charge(car, on=True)
    give(car, coupon())
    car.tick(60)
    assert len(car.events_of("benefit.offered")) == 1
    assert len(car.events_of("card.created")) == 1


def test_the_benefit_card_is_never_shown_while_moving(car: Car) -> None:
    give(car, coupon())
    car.drive(10.0)
    out = car.send((IS_CHARGING, True))
    assert added([out]) == []
    assert car.visible() == []
    card = car.card("benefit:coffee-1")
    assert card is not None
    assert card.state is CardState.QUEUED
    assert [c.id for c in added([car.park()])] == [card.id]


def test_no_coupon_for_the_scene_no_card(car: Car) -> None:
    give(car, coupon(scenes=("birthday",)), coupon("used", quota=0))
    charge(car, on=True)
    assert car.visible(CardKind.BENEFIT) == []
    assert car.events_of("benefit.offered") == []


def test_a_coupon_with_a_validity_window_needs_a_trusted_clock(car: Car) -> None:
    give(car, coupon(valid_from=T0 - DAY, valid_until=T0 + DAY))
    charge(car, on=True)
    assert car.events_of("benefit.offered") == []
    charge(car, on=False)
    car.trust_clock()
    charge(car, on=True)
    assert len(car.events_of("benefit.offered")) == 1


def test_an_expired_coupon_is_not_offered(car: Car) -> None:
    car.trust_clock()
    give(car, coupon(valid_until=T0 - 1))
    charge(car, on=True)
    assert car.events_of("benefit.offered") == []


def test_the_next_session_may_offer_again_once_the_card_is_gone(car: Car) -> None:
    give(car, coupon(quota=3))
    charge(car, on=True)
    [card] = car.visible(CardKind.BENEFIT)
    charge(car, on=False)
    charge(car, on=True)  # a second session while the first card is open: not twice
    assert len(car.events_of("benefit.offered")) == 1
    car.dismiss(card)
    charge(car, on=False)
    car.tick(car.agent.config.policy.cooldowns[CardKind.BENEFIT])
    charge(car, on=True)
    assert len(car.events_of("benefit.offered")) == 2
    assert car.visible(CardKind.BENEFIT)


def test_redeem_pending_then_confirmed_leaves_the_driver_the_confirmation(car: Car) -> None:
    give(car, coupon())
    charge(car, on=True)
    [card] = car.visible(CardKind.BENEFIT)
    out = car.tap(card, "redeem")
    [request] = [e for e in out.events if e.type == "request.redemption"]
    assert request.request_id is not None
    assert request.category is Category.SERVICE_REQUESTS
    assert request.payload["coupon_id"] == "coffee-1"
    assert request.expires is None  # its flow ends it, visibly, not an expiry in the outbox
    [change] = out.changes
    assert change.type is ChangeType.UPDATED
    assert change.card.pending
    # A second tap while pending asks nothing more.
    out = car.tap(car.visible(CardKind.BENEFIT)[0], "redeem")
    assert [e for e in out.events if e.type == "request.redemption"] == []
    out = car.keep(
        car.agent.on_redemption_answer(
            request.request_id, accepted=True, wall=car.wall, monotonic=car.mono, code="CF-1234"
        )
    )
    # The card stays: it is what the driver shows at the café.
    [change] = out.changes
    assert (change.type, change.card.id) == (ChangeType.UPDATED, card.id)
    confirmed = change.card
    assert not confirmed.pending
    assert confirmed.title.en == "Redeemed"
    assert "CF-1234" in confirmed.body.en
    assert "CF-1234" in confirmed.body.zh_cn
    assert [a.key for a in confirmed.actions] == ["ok"]
    assert [e.type for e in out.events if e.type.startswith("redemption.")] == [
        "redemption.confirmed"
    ]
    done = car.tap(confirmed, "ok")
    assert [(c.type, c.reason) for c in done.changes] == [
        (ChangeType.REMOVED, CloseReason.DISMISSED)
    ]
    # The same answer again is ignored.
    again = car.keep(
        car.agent.on_redemption_answer(
            request.request_id, accepted=True, wall=car.wall, monotonic=car.mono
        )
    )
    assert again.events == []
    assert again.changes == []


@pytest.mark.parametrize("message", [None, Text("券已用完。", "This coupon is used up.")])
def test_redeem_declined_shows_the_message(car: Car, message: Text | None) -> None:
    give(car, coupon())
    charge(car, on=True)
    [card] = car.visible(CardKind.BENEFIT)
    out = car.tap(card, "redeem")
    [request] = [e for e in out.events if e.type == "request.redemption"]
    assert request.request_id is not None
    out = car.keep(
        car.agent.on_redemption_answer(
            request.request_id, accepted=False, wall=car.wall, monotonic=car.mono, message=message
        )
    )
    [change] = out.changes
    assert change.type is ChangeType.UPDATED
    assert change.card.id == card.id
    assert not change.card.pending
    if message is not None:
        assert change.card.body == message
    else:
        assert change.card.body != card.body
    assert car.events_of("redemption.declined")


def test_a_milestone_is_a_scene(car: Car) -> None:
    give(car, coupon("wash", scenes=("odometer_milestone",)))
    car.odometer_km(9_990)
    assert car.events_of("benefit.offered") == []
    car.odometer_km(10_001)
    [offered] = car.events_of("benefit.offered")
    assert offered.payload["scene"] == "odometer_milestone"


def test_the_birthday_is_a_scene_with_a_trusted_clock(car: Car) -> None:
    give(car, coupon("cake", scenes=("birthday",)), birthday="05-28")
    car.tick(60)
    assert car.events_of("benefit.offered") == []
    car.trust_clock()
    assert len(car.events_of("benefit.offered")) == 1
    car.tick(3600)
    assert len(car.events_of("benefit.offered")) == 1


def test_coupon_for_scene_prefers_the_one_expiring_first() -> None:
    wallet = Wallet(
        version=1,
        coupons=(
            coupon("later", valid_until=T0 + 9 * DAY),
            coupon("open"),
            coupon("sooner", valid_until=T0 + 2 * DAY),
        ),
    )
    got = coupon_for_scene(wallet, "charging_started", T0, trusted=True)
    assert got is not None
    assert got.id == "sooner"
    got = coupon_for_scene(wallet, "charging_started", T0, trusted=False)
    assert got is not None
    assert got.id == "open"
    assert (
        coupon_for_scene(
            wallet, "charging_started", T0, trusted=True, offered=["sooner", "later", "open"]
        )
        is None
    )
    assert coupon_for_scene(None, "charging_started", T0, trusted=True) is None
