"""The rule checker: each kind of problem found where it is, and none in sound rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.rule_check import Capabilities, Finding, KnownSignal, check_rule_set
from agent.rule_model import EVENT_ATTRIBUTES, RuleSetDocument, builtin_rules

SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
CAR = Capabilities(
    signals={
        SOC: KnownSignal("number", 0.0, 100.0),
        "Vehicle.Speed": KnownSignal("number", -250.0, 250.0),
        "Vehicle.Powertrain.TractionBattery.Charging.IsCharging": KnownSignal("boolean"),
        "Vehicle.LowVoltageSystemState": KnownSignal("string", allowed=("OFF", "ACC", "ON")),
        "Vehicle.Diagnostics.DTCList": KnownSignal("list"),
    },
    source="the test car",
    daily_caps={"maintenance": 3, "benefit": 2, "campaign": 2},
    quiet_hours=(22, 7),
    now=1_800_000_000.0,
)


def rule(rule_id: str = "ops.low", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": rule_id,
        "version": 1,
        "trigger": {"signal": {"path": SOC, "op": "<", "value": 20}, "min_interval_s": 3600},
        "card": {
            "key": f"ops:{rule_id}",
            "kind": "campaign",
            "title": {"zh-CN": "电量 {value}%", "en": "Battery {value}%"},
            "body": {"zh-CN": "附近有充电站。", "en": "Chargers nearby."},
        },
    }
    return base | fields


def check(*rules: dict[str, Any], builtin: bool = False) -> list[Finding]:
    document = RuleSetDocument.model_validate({"version": 1, "rules": list(rules)})
    return check_rule_set(document, CAR, builtin_rules() if builtin else None)


def messages(found: list[Finding]) -> list[str]:
    return [f"{'.'.join(map(str, f.location))}: {f.message}" for f in found]


def test_sound_rules_and_the_built_in_ones_have_no_problems() -> None:
    assert check(rule()) == []
    assert check(*builtin_rules().model_dump(by_alias=True)["rules"], builtin=True) == []


def test_a_signal_the_car_does_not_have_is_found_in_the_trigger_and_the_conditions() -> None:
    found = messages(check(rule(
        trigger={"signal": {"path": "Vehicle.Cabin.Door.Row1.Open", "op": "==", "value": True}},
        conditions={"all": [{"fact": "signal.Vehicle.Body.Horn.IsActive", "op": "==",
                             "value": True}]},
        card=rule()["card"] | {"title": {"zh-CN": "门", "en": "Door"}},
    )))  # fmt: skip
    assert found == [
        (
            "rules.0.trigger.signal.path: Vehicle.Cabin.Door.Row1.Open is not in the test car: "
            "the rule never fires"
        ),
        (
            "rules.0.conditions.all.0.fact: Vehicle.Body.Horn.IsActive is not in the test car: "
            "this comparison is never true"
        ),
    ]


@pytest.mark.parametrize(
    ("op", "value", "why"),
    [
        (">", 150, "ranges over [0, 100]"),
        ("<", 0, "ranges over [0, 100]"),
        ("==", True, "is a number, compared with a boolean"),
        ("==", "low", "is a number, compared with a string"),
    ],
)
def test_a_comparison_that_can_never_hold_is_found(op: str, value: object, why: str) -> None:
    found = check(rule(conditions={"fact": f"signal.{SOC}", "op": op, "value": value}))
    assert messages(found) == [f"rules.0.conditions: {SOC} {why}: this comparison is never true"]


def test_enumerated_and_list_signals() -> None:
    state = "signal.Vehicle.LowVoltageSystemState"
    assert messages(check(rule(conditions={"fact": state, "op": "==", "value": "START"}))) == [
        (
            "rules.0.conditions: Vehicle.LowVoltageSystemState takes only OFF, ACC, ON: "
            "this comparison is never true"
        )
    ]
    assert check(rule(conditions={"fact": state, "op": "in", "value": ["ON", "START"]})) == []
    dtcs = "signal.Vehicle.Diagnostics.DTCList"
    assert check(rule(conditions={"fact": dtcs, "op": "contains", "value": "P0301"})) == []
    assert len(check(rule(conditions={"fact": dtcs, "op": "==", "value": "P0301"}))) == 1


def test_placeholders_the_trigger_does_not_fill_and_locales_that_differ() -> None:
    card = rule()["card"] | {
        "title": {"zh-CN": "{coupon_title}", "en": "{coupon_title}"},
        "body": {"zh-CN": "电量 {value}%", "en": "Battery low"},
    }
    found = messages(check(rule(card=card)))
    assert found == [
        "rules.0.card.body: the locales fill different placeholders: zh-CN ['value'], en []",
        "rules.0.card.title: {coupon_title} is not filled by signal " + SOC + ": the driver "
        "would see it as is (it fills: path, rule_id, value)",
    ]
    event = rule(trigger={"event": "fault_detected"}, conditions={
        "fact": "event.milestone_km", "op": ">", "value": 1})  # fmt: skip
    event["card"] = event["card"] | {"title": {"zh-CN": "{code}", "en": "{code}"}}
    assert messages(check(event)) == [
        (
            "rules.0.conditions.fact: event fault_detected has no attribute 'milestone_km' "
            "(it has: advice, code, codes, group, rule_id, severity, title): never true"
        )
    ]


def test_an_expired_window_and_a_time_trigger_in_the_quiet_hours() -> None:
    found = messages(check(rule(valid_until=CAR.now), rule(
        "ops.night", trigger={"time_of_day": "23:30"},
        card=rule()["card"] | {"key": "ops:night", "title": {"zh-CN": "晚安", "en": "Night"}},
    )))  # fmt: skip
    assert found == [
        "rules.0.valid_until: expired on 2027-01-15 08:00 UTC: the rule never fires",
        (
            "rules.1.trigger.time_of_day: fires at 23:30, inside the quiet hours (22:00-07:00): "
            "its card waits until 07:00"
        ),
    ]


def test_caps_that_can_never_be_reached() -> None:
    assert messages(check(rule(caps={"per_day": 3, "total": 2}))) == [
        "rules.0.caps.per_day: per_day 3 is never reached: total is 2",
        (
            "rules.0.caps.per_day: per_day 3 is never reached: the policy shows at most 2 "
            "campaign cards a day"
        ),
    ]
    slow = rule(trigger={"signal": {"path": SOC, "op": "<", "value": 20},
                         "min_interval_s": 43_200}, caps={"per_day": 2})  # fmt: skip
    assert check(slow) == []  # at 00:00 and 12:00, and again at 24:00
    slower = slow | {"trigger": slow["trigger"] | {"min_interval_s": 90_000}}
    assert messages(check(slower)) == [
        (
            "rules.0.caps.per_day: per_day 2 is never reached: min_interval_s 90000 lets it "
            "fire at most 1 time a day"
        )
    ]


def test_redeem_needs_a_benefit_trigger() -> None:
    card = rule()["card"] | {"actions": [{"key": "redeem", "label": {"zh-CN": "领", "en": "Go"}}]}
    assert messages(check(rule(card=card))) == [
        (
            "rules.0.card.actions: redeem needs a coupon: only a rule triggered by "
            "benefit_available can offer it"
        )
    ]


def test_two_rules_into_one_card_on_one_trigger_conflict_unless_they_exclude_each_other() -> None:
    key = {"key": "ops:battery"}
    first, second = rule("ops.a"), rule("ops.b")
    first["card"], second["card"] = first["card"] | key, second["card"] | key
    assert messages(check(first, second)) == [
        "rules.0.card.key: ops.a and ops.b both fire on signal " + SOC + " into the card "
        "'ops:battery': whichever comes second replaces the other"
    ]
    parked = {"fact": "vehicle.parked", "op": "==", "value": True}
    moving = {"fact": "vehicle.parked", "op": "==", "value": False}
    assert check(first | {"conditions": parked}, second | {"conditions": moving}) == []
    low = {"fact": "signal.Vehicle.Speed", "op": "<", "value": 5}
    high = {"all": [{"fact": "signal.Vehicle.Speed", "op": ">=", "value": 5}, parked]}
    assert check(first | {"conditions": low}, second | {"conditions": high}) == []
    touching = {"fact": "signal.Vehicle.Speed", "op": "<=", "value": 5}
    assert len(check(first | {"conditions": touching}, second | {"conditions": high})) == 1
    gold, silver = {"tiers": ["gold"]}, {"tiers": ["silver"]}
    assert check(first | {"targeting": gold}, second | {"targeting": silver}) == []
    either = {"any": [parked, moving]}  # not a requirement: may hold with either
    assert len(check(first | {"conditions": either}, second | {"conditions": moving})) == 1


def test_a_rule_the_kinds_daily_cap_shadows() -> None:
    rules = [rule(f"ops.{n}") for n in ("a", "b", "c")]
    for priority, each in zip((90, 60, 30), rules, strict=True):
        each["card"] = each["card"] | {"priority": priority}
    assert messages(check(*rules)) == [
        "rules.2: ops.c is shadowed: ops.a, ops.b fire on signal " + SOC + " with a higher "
        "priority, and the policy shows at most 2 campaign cards a day"
    ]


def test_conflicts_with_the_built_in_rules_it_does_not_replace() -> None:
    fault = rule("ops.fault", trigger={"event": "fault_detected"}, conditions=None)
    fault["card"] = fault["card"] | {"key": "fault:{group}", "kind": "fault",
                                     "title": {"zh-CN": "{code}", "en": "{code}"}}  # fmt: skip
    found = messages(check(fault, builtin=True))
    assert [m.split(" both")[0] for m in found] == [
        "rules.0.card.key: ops.fault and builtin.fault.stop_safely",
        "rules.0.card.key: ops.fault and builtin.fault.service_soon",
        "rules.0.card.key: ops.fault and builtin.fault.info",
    ]
    replacing = [fault | {"id": i, "conditions": {"fact": "event.severity", "op": "==",
                                                  "value": s}}
                 for i, s in (("builtin.fault.stop_safely", "stop_safely"),
                              ("builtin.fault.service_soon", "service_soon"),
                              ("builtin.fault.info", "info"))]  # fmt: skip
    assert check(*replacing, builtin=True) == []


def test_the_readmes_table_of_event_attributes_is_the_code_s(repo_root: Path) -> None:
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    table = text.split("<!-- event-attributes: begin")[1].split("<!-- event-attributes: end")[0]
    rows = {
        cells[0].strip("` "): {a.strip("` ") for a in cells[1].split(",")} - {"(none)"}
        for line in table.splitlines()[3:]
        if (cells := line.strip("|").split("|"))
    }
    assert rows == {event: set(attrs) for event, attrs in EVENT_ATTRIBUTES.items()}


def test_a_rule_rolled_out_to_no_car() -> None:
    assert messages(check(rule(targeting={"rollout_percent": 0}))) == [
        "rules.0.targeting.rollout_percent: rolled out to 0 % of the fleet: no car fires it"
    ]
    assert check(rule(targeting={"rollout_percent": 5})) == []
