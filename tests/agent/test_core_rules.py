"""The agent core, in process: rules pushed by the cloud change cards with no code change."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from agent.benefits import Wallet
from agent.cards import CardKind
from agent.consent import Category
from agent.context import AgentConfig
from agent.rule_model import RuleSetDocument, RuleStops, in_rollout
from tests.agent.conftest import (
    DAY,
    HOUR,
    STATE_OF_CHARGE,
    T0,
    Car,
    added,
    all_consent,
    make_agent,
    serviced_at,
)


def low_battery_rule(**fields: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": "ops.low_battery",
        "version": 3,
        "trigger": {
            "signal": {"path": STATE_OF_CHARGE, "op": "<", "value": 20},
            "min_interval_s": 2 * HOUR,
        },
        "conditions": {"fact": "vehicle.charging", "op": "==", "value": False},
        "card": {
            "key": "ops:low_battery",
            "kind": "campaign",
            "title": {"zh-CN": "电量低：{value}%", "en": "Battery low: {value}%"},
            "body": {"zh-CN": "附近有充电站。", "en": "Chargers nearby."},
            "actions": [{"key": "dismiss", "label": {"zh-CN": "忽略", "en": "Dismiss"}}],
        },
        "caps": {"per_day": 2},
    }
    rule.update(fields)
    return rule


def push(car: Car, *rules: dict[str, Any], version: int = 10) -> None:
    document = RuleSetDocument.model_validate({"version": version, "rules": list(rules)})
    car.keep(car.agent.set_rules(document, car.wall, car.mono))


def soc(car: Car, value: float) -> None:
    car.send((STATE_OF_CHARGE, value))


def fired(car: Car) -> list[str]:
    return [
        e.type
        for e in car.events
        if e.type in ("card.created", "card.updated") and e.payload["rule"] == "ops.low_battery@3"
    ]


def test_a_new_signal_trigger_works_without_a_code_change(car: Car) -> None:
    soc(car, 40.0)
    push(car, low_battery_rule())
    [activated] = car.events_of("rules.activated")
    assert activated.payload == {"version": 10, "rules": 1}
    soc(car, 30.0)
    assert car.visible(CardKind.CAMPAIGN) == []
    soc(car, 19.0)
    [card] = car.visible(CardKind.CAMPAIGN)
    assert card.title.en == "Battery low: 19%"
    assert card.rule == "ops.low_battery@3"
    assert card.category is Category.MARKETING
    soc(car, 15.0)  # still low: no new edge
    assert fired(car) == ["card.created"]
    # Up and down again within the minimum interval: nothing.
    soc(car, 25.0)
    car.advance(HOUR)
    soc(car, 18.0)
    assert fired(car) == ["card.created"]
    # After the interval the next edge fires (the open card is updated in place).
    soc(car, 25.0)
    car.advance(HOUR)
    soc(car, 17.0)
    assert fired(car) == ["card.created", "card.updated"]
    [again] = car.visible(CardKind.CAMPAIGN)
    assert again.id == card.id
    assert again.title.en == "Battery low: 17%"
    # The daily cap of 2: a third edge the same day does nothing.
    soc(car, 25.0)
    car.advance(2 * HOUR)
    soc(car, 16.0)
    assert fired(car) == ["card.created", "card.updated"]


def test_conditions_of_a_pushed_rule_hold_it_back(car: Car) -> None:
    push(car, low_battery_rule())
    car.send(("Vehicle.Powertrain.TractionBattery.Charging.IsCharging", True))
    soc(car, 12.0)
    assert fired(car) == []


def test_a_windowed_rule_needs_a_trusted_clock(car: Car) -> None:
    push(car, low_battery_rule(valid_from=T0 - DAY, valid_until=T0 + DAY))
    soc(car, 10.0)
    assert fired(car) == []  # the clock is not trusted: the window cannot be checked
    car.trust_clock()
    soc(car, 30.0)
    soc(car, 10.0)
    assert fired(car) == ["card.created"]


def test_a_windowed_rule_does_not_fire_outside_its_window(car: Car) -> None:
    car.trust_clock()
    push(car, low_battery_rule(valid_from=T0 + HOUR, valid_until=T0 + DAY))
    soc(car, 10.0)
    assert fired(car) == []
    soc(car, 30.0)
    car.tick(HOUR)
    soc(car, 10.0)
    assert fired(car) == ["card.created"]


def test_rollback_restores_the_previous_rule_set(car: Car) -> None:
    push(car, low_battery_rule(), version=10)
    push(car, low_battery_rule(enabled=False), version=11)
    soc(car, 10.0)
    assert fired(car) == []
    assert car.agent.rules.rollback()
    assert car.agent.rules.cloud_version == 10
    soc(car, 30.0)
    soc(car, 10.0)
    assert fired(car) == ["card.created"]


def test_a_cloud_rule_overrides_a_builtin_card(car: Car) -> None:
    push(
        car,
        {
            "id": "builtin.fault.info",
            "version": 2,
            "trigger": {"event": "fault_detected"},
            "conditions": {"fact": "event.severity", "op": "==", "value": "info"},
            "card": {
                "key": "fault:{code}",
                "kind": "fault",
                "urgency": "low",
                "title": {"zh-CN": "提示：{title}", "en": "Note: {title}"},
                "body": {"zh-CN": "{advice}", "en": "{advice}"},
            },
            "closes_on": ["fault_cleared"],
        },
    )
    car.dtcs("P0455")
    card = car.card("fault:P0455")  # this rule keys its cards by the code
    assert card is not None
    assert card.title.en == "Note: Fuel vapour system leak"
    assert card.rule == "builtin.fault.info@2"
    assert card.actions == ()
    car.dtcs()
    assert car.card("fault:P0455") is None


def test_a_time_of_day_campaign(car: Car) -> None:
    push(
        car,
        low_battery_rule(
            id="ops.morning",
            trigger={"time_of_day": "12:30"},
            conditions=None,
            caps={"total": 1},
        ),
    )
    car.tick(HOUR)
    assert car.visible(CardKind.CAMPAIGN) == []  # the clock is not trusted
    car.trust_clock()
    [card] = car.visible(CardKind.CAMPAIGN)
    car.dismiss(card)
    car.tick(DAY)
    assert car.visible(CardKind.CAMPAIGN) == []  # total cap


def test_a_campaign_card_respects_quiet_hours(car: Car) -> None:
    push(car, low_battery_rule())
    car.tick(10.5 * HOUR)  # 22:30 local
    soc(car, 10.0)
    card = car.card("ops:low_battery")
    assert card is not None
    assert car.visible() == []
    assert added([car.tick(8.5 * HOUR)]) == [car.visible()[0]]  # 07:00


def test_a_time_of_day_rule_uses_up_its_day_even_across_a_restart(car: Car) -> None:
    push(
        car,
        low_battery_rule(
            id="ops.noon",
            trigger={"time_of_day": "12:30"},
            conditions={"fact": "vehicle.parked", "op": "==", "value": True},
        ),
    )
    car.trust_clock()
    car.drive()
    car.tick(HOUR)  # 13:00: its time came while driving, so no card today
    assert car.card("ops:low_battery") is None
    restarted = car.restarted()
    restarted.trust_clock()
    restarted.park()
    restarted.tick(60)
    assert restarted.card("ops:low_battery") is None  # not a second time the same day
    restarted.tick(DAY)
    assert restarted.card("ops:low_battery") is not None


def scene_rule(event: str, title: str) -> dict[str, Any]:
    return low_battery_rule(
        id=f"ops.{event}", trigger={"event": event}, conditions=None,
        card={"key": f"ops:{event}", "kind": "campaign",
              "title": {"zh-CN": title, "en": title}, "body": {"zh-CN": "-", "en": "-"}},
    )  # fmt: skip


def test_the_scene_events_a_rule_can_name_are_raised_once_per_occurrence() -> None:
    """birthday, first_drive and odometer_milestone were accepted as triggers but only
    ever looked for a coupon: a campaign on them never fired."""
    car = Car(make_agent())  # the rules arrive before the car's first drive cycle
    all_consent(car)
    car.history(serviced_at(0, T0 - 100 * DAY))
    push(car, scene_rule("birthday", "Happy birthday"), scene_rule("first_drive", "Welcome"),
         scene_rule("odometer_milestone", "{milestone_km} km"))  # fmt: skip
    wallet = {"version": 1, "coupons": [], "birthday": "05-28"}
    car.keep(car.agent.set_wallet(Wallet.model_validate(wallet), car.wall, car.mono))
    car.trust_clock()
    car.tick(3600)
    car.drive(5.0)
    car.park()
    car.odometer_km(9_990)
    car.odometer_km(10_001)
    car.tick(3600)
    rules = [str(e.payload["rule"]) for e in car.events_of("card.created")]
    ours = sorted(r for r in rules if r.startswith("ops."))
    assert ours == ["ops.birthday@3", "ops.first_drive@3", "ops.odometer_milestone@3"]
    card = car.card("ops:odometer_milestone")
    assert card is not None
    assert card.title.en == "10,000 km"


def test_a_card_says_what_made_its_rule_fire_and_keeps_it_across_a_restart(car: Car) -> None:
    soc(car, 40.0)
    push(car, low_battery_rule())
    soc(car, 19.0)
    [created] = [e for e in car.events_of("card.created") if e.payload["key"] == "ops:low_battery"]
    why = {
        "trigger": f"signal {STATE_OF_CHARGE} < 20",
        "value": 19.0,
        "facts": {"vehicle.charging": False},
    }
    assert created.payload["why"] == why
    card = car.card("ops:low_battery")
    assert card is not None
    assert dict(card.why) == why
    restarted = car.restarted()
    again = restarted.card("ops:low_battery")
    assert again is not None
    assert dict(again.why) == why


def test_a_staged_rollout_picks_a_stable_share_of_the_fleet() -> None:
    fleet = [f"car-{n:05d}" for n in range(4000)]
    ten = {v for v in fleet if in_rollout("ops.low_battery", v, 10)}
    twenty = {v for v in fleet if in_rollout("ops.low_battery", v, 20)}
    assert 0.08 < len(ten) / len(fleet) < 0.12
    assert 0.17 < len(twenty) / len(fleet) < 0.23
    assert ten <= twenty  # the cars a share took stay in as it grows
    other = {v for v in fleet if in_rollout("ops.other", v, 10)}
    assert other != ten  # each rule picks its own cars
    assert not any(in_rollout("ops.low_battery", v, 0) for v in fleet)
    assert all(in_rollout("ops.low_battery", v, 100) for v in fleet)
    # The rule as specified: the first 8 bytes of sha256("rule:vehicle"), mod 10,000.
    digest = hashlib.sha256(b"ops.low_battery:car-00000").digest()
    assert in_rollout("ops.low_battery", "car-00000", 10) == (
        int.from_bytes(digest[:8], "big") % 10_000 < 1000
    )


@pytest.mark.parametrize("picked", [True, False])
def test_a_car_outside_the_rollout_never_gets_the_card(picked: bool) -> None:
    vehicle = next(
        v for v in (f"car-{n}" for n in range(1000))
        if in_rollout("ops.low_battery", v, 10) is picked
    )  # fmt: skip
    car = Car(make_agent(AgentConfig(vehicle_id=vehicle)))
    all_consent(car)
    car.history(serviced_at(0, T0 - 100 * DAY))
    car.park()
    soc(car, 40.0)
    push(car, low_battery_rule(targeting={"rollout_percent": 10}))
    soc(car, 19.0)
    assert bool(car.visible(CardKind.CAMPAIGN)) is picked


def test_the_kill_switch_closes_the_cards_and_outlives_new_rule_sets_until_lifted(
    car: Car,
) -> None:
    def crossing() -> None:
        soc(car, 40.0)
        soc(car, 19.0)

    push(car, low_battery_rule(caps={}))
    crossing()
    assert car.visible(CardKind.CAMPAIGN)
    stop = RuleStops(version=1, stopped=["ops.low_battery"])
    car.keep(car.agent.set_rule_stops(stop, car.wall, car.mono))
    assert car.visible(CardKind.CAMPAIGN) == []  # withdrawn within the one message
    [stopped] = car.events_of("rules.stopped")
    assert stopped.payload["newly"] == ["ops.low_battery"]
    assert stopped.payload["cards_closed"] == 1
    push(car, low_battery_rule(version=4, caps={}), version=11)  # a later rule set
    car.advance(3 * HOUR)
    crossing()
    assert car.visible(CardKind.CAMPAIGN) == []
    restarted = car.restarted()
    assert restarted.agent.rules.stopped == {"ops.low_battery"}  # kept across a restart
    lifted = RuleStops(version=2, stopped=[])
    restarted.keep(restarted.agent.set_rule_stops(lifted, restarted.wall, restarted.mono))
    restarted.park()  # a new process knows the gear only from the next frames
    restarted.send((STATE_OF_CHARGE, 40.0))
    restarted.send((STATE_OF_CHARGE, 19.0))
    assert restarted.visible(CardKind.CAMPAIGN)
