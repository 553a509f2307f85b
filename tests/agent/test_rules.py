"""Rule documents (validation, schema) and the rule engine (conditions, triggers, caps)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from agent.benefits import Wallet
from agent.cards import ArgValue, CardKind, Display, Text, Urgency
from agent.clock import Now
from agent.facts import fact_lookup
from agent.local_time import DEFAULT_ZONE
from agent.rule_engine import MISSING, RuleEngine, Targets, evaluate
from agent.rule_model import (
    MAX_CONDITION_DEPTH,
    AllOf,
    Comparison,
    Rule,
    RuleSetDocument,
    builtin_rules,
)
from agent.signals import STATE_OF_CHARGE
from agent.vehicle import VehicleState
from tests.agent.conftest import DAY, HOUR, T0

TARGETS = Targets("touchpoint-ref", "CN")


def rule_json(rule_id: str = "camp.one", **fields: Any) -> dict[str, Any]:
    """A valid campaign rule; ``fields`` replace its top-level entries."""
    base: dict[str, Any] = {
        "id": rule_id,
        "version": 1,
        "trigger": {"event": "parked"},
        "card": {
            "kind": "campaign",
            "title": {"zh-CN": "活动", "en": "Campaign {rule_id}"},
            "body": {"zh-CN": "内容", "en": "Body"},
            "actions": [{"key": "dismiss", "label": {"zh-CN": "忽略", "en": "Dismiss"}}],
        },
    }
    base.update(fields)
    return base


def document(*rules: dict[str, Any], version: int = 1) -> RuleSetDocument:
    return RuleSetDocument.model_validate({"version": version, "rules": list(rules)})


def card_json(**fields: Any) -> dict[str, Any]:
    card: dict[str, Any] = copy.deepcopy(rule_json()["card"])
    card.update(fields)
    return card


def facts_of(values: Mapping[str, Any]) -> Any:
    return lambda fact: values.get(fact, MISSING)


# -- validation ---------------------------------------------------------------------------


def test_the_builtin_rules_validate_and_have_unique_ids() -> None:
    rules = builtin_rules()
    assert len({r.id for r in rules.rules}) == len(rules.rules) > 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"conditions": {"fact": "engine.rpm", "op": ">", "value": 1}}, "unknown fact"),
        ({"conditions": {"fact": "signal.Speed", "op": ">", "value": 1}}, "unknown fact"),
        ({"conditions": {"fact": "wallet.member_id", "op": "exists"}}, "unknown fact"),
        ({"trigger": {"event": "sunrise"}}, "unknown agent event"),
        ({"closes_on": ["sunset"]}, "unknown agent events"),
        ({"trigger": {"time_of_day": "24:00"}}, "time_of_day"),
        ({"card": card_json(display="while_moving")}, "only critical fault cards"),
        (
            {"card": card_json(display="while_moving", kind="fault", urgency="normal")},
            "only critical fault cards",
        ),
        (
            {
                "card": card_json(
                    display="while_moving",
                    kind="fault",
                    urgency="critical",
                    title={"zh-CN": "短", "en": "x" * 41},
                )
            },
            "title of at most 40",
        ),
        (
            {
                "card": card_json(
                    display="while_moving",
                    kind="fault",
                    urgency="critical",
                    actions=[
                        {"key": "ok", "label": {"zh-CN": "好", "en": "OK"}},
                        {"key": "book", "label": {"zh-CN": "约", "en": "Book"}},
                    ],
                )
            },
            "at most 1 action",
        ),
        (
            {"card": card_json(actions=[{"key": "pay", "label": {"zh-CN": "付", "en": "Pay"}}])},
            "unknown action",
        ),
        ({"valid_from": T0, "valid_until": T0 - 1}, "valid_until must be after valid_from"),
        ({"valid_from": T0, "valid_until": T0}, "valid_until must be after valid_from"),
        ({"conditions": {"fact": "wallet.tier", "op": "in", "value": "gold"}}, "needs a list"),
        ({"conditions": {"fact": "wallet.tier", "op": "==", "value": ["gold"]}}, "single value"),
        ({"conditions": {"fact": "wallet.tier", "op": "=="}}, "needs a value"),
        ({"id": "Has Spaces"}, "pattern"),
        ({"caps": {"per_day": 0}}, "greater than or equal to 1"),
        ({"surprise": True}, "Extra inputs"),
    ],
)
def test_rejections(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        document(rule_json(**fields))


def test_a_placeholder_title_may_be_shown_while_moving() -> None:
    doc = document(
        rule_json(
            card=card_json(
                display="while_moving",
                kind="fault",
                urgency="critical",
                title={"zh-CN": "{title}", "en": "{title}"},
                actions=[{"key": "ok", "label": {"zh-CN": "好", "en": "OK"}}],
            )
        )
    )
    assert doc.rules[0].card.display == "while_moving"


def nested_not(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"fact": "vehicle.parked", "op": "==", "value": True}
    for _ in range(depth - 1):
        node = {"not": node}
    return node


def test_condition_depth_limit() -> None:
    document(rule_json(conditions=nested_not(MAX_CONDITION_DEPTH)))
    with pytest.raises(ValidationError, match="conditions too large"):
        document(rule_json(conditions=nested_not(MAX_CONDITION_DEPTH + 1)))


def test_condition_size_limit() -> None:
    leaf = {"fact": "vehicle.parked", "op": "==", "value": True}
    half = {"all": [leaf] * 31}
    document(rule_json(conditions={"any": [half, {"all": [leaf]}]}))  # 1 + 32 + 2 = 35 nodes
    with pytest.raises(ValidationError, match="conditions too large"):
        document(rule_json(conditions={"any": [half, half, half]}))  # 97 nodes
    with pytest.raises(ValidationError, match="at most 32"):
        document(rule_json(conditions={"all": [leaf] * 33}))


def test_duplicate_rule_ids_are_rejected() -> None:
    with pytest.raises(ValidationError, match=r"duplicate rule ids: \['camp.one'\]"):
        document(rule_json(), rule_json())


def test_the_json_schema_export() -> None:
    schema = RuleSetDocument.model_json_schema()
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"version", "rules"}
    defs = schema["$defs"]
    assert {"Rule", "AllOf", "AnyOf", "NotOf", "Comparison", "CardTemplate"} <= set(defs)
    assert "not" in defs["NotOf"]["properties"]  # the alias, as documents spell it
    assert defs["Rule"]["additionalProperties"] is False
    # The builtin document round-trips through its own JSON.
    again = RuleSetDocument.model_validate_json(builtin_rules().model_dump_json(by_alias=True))
    assert again == builtin_rules()


# -- conditions ---------------------------------------------------------------------------


def cond(raw: dict[str, Any]) -> Any:
    return Rule.model_validate(rule_json(conditions=raw)).conditions


def c(fact: str, op: str, *value: Any) -> dict[str, Any]:
    """A comparison; ``value`` left out for ``exists``."""
    return {"fact": fact, "op": op, **({"value": value[0]} if value else {})}


ODO, CODE, TIER = "vehicle.odometer_km", "event.code", "wallet.tier"
PARKED = c("vehicle.parked", "==", True)
RICH = c("wallet.points", ">", 10)


@pytest.mark.parametrize(
    ("raw", "values", "expected"),
    [
        (c(CODE, "==", "P0301"), {CODE: "P0301"}, True),
        (c(CODE, "!=", "P0301"), {CODE: "P0301"}, False),
        (c(ODO, ">=", 100), {ODO: 100.0}, True),
        (c(ODO, "<", 100), {ODO: 99.9}, True),
        (c(ODO, ">", 100), {}, False),  # missing
        (c(ODO, "!=", 100), {}, False),  # missing: false whatever the operator
        (c(ODO, "<", 100), {ODO: None}, False),
        (c(CODE, "<", 5), {CODE: "P0301"}, False),  # a type mismatch
        (c("vehicle.parked", ">", 0), {"vehicle.parked": True}, False),  # bools are no numbers
        (c(CODE, "<", "P1"), {CODE: "P0301"}, True),
        (c("signal.Vehicle.Speed", "<", 5), {"signal.Vehicle.Speed": float("nan")}, False),
        (c(TIER, "in", ["gold", "black"]), {TIER: "gold"}, True),
        (c(TIER, "in", ["gold"]), {TIER: "silver"}, False),
        (c(TIER, "not_in", ["gold"]), {TIER: "silver"}, True),
        (c(TIER, "not_in", ["gold"]), {}, False),
        (c("event.item_ids", "contains", "oil"), {"event.item_ids": ("oil", "x")}, True),
        (c("event.item_ids", "contains", "brake"), {"event.item_ids": ("oil",)}, False),
        (c(CODE, "contains", "03"), {CODE: "P0301"}, True),
        (c(CODE, "contains", 3), {CODE: "P0301"}, False),  # a mismatch, not a TypeError
        (c("event.km", "contains", 3), {"event.km": 300}, False),
        (c(CODE, "exists"), {CODE: "P0301"}, True),
        (c(CODE, "exists"), {}, False),
        (c(CODE, "exists"), {CODE: None}, False),
        ({"all": [PARKED, RICH]}, {"vehicle.parked": True, "wallet.points": 11}, True),
        ({"all": [PARKED, RICH]}, {"vehicle.parked": True, "wallet.points": 10}, False),
        ({"any": [PARKED, RICH]}, {"vehicle.parked": False, "wallet.points": 11}, True),
        ({"any": [PARKED, RICH]}, {}, False),
        ({"not": PARKED}, {"vehicle.parked": False}, True),
        ({"not": PARKED}, {}, True),  # missing is false, so its negation holds
        ({"not": {"not": PARKED}}, {"vehicle.parked": True}, True),
    ],
)
def test_condition_evaluation(raw: dict[str, Any], values: dict[str, Any], expected: bool) -> None:
    condition = cond(raw)
    assert condition is not None
    assert evaluate(condition, facts_of(values)) is expected


def test_a_comparison_parses_as_itself_not_as_a_group() -> None:
    parsed = cond({"all": [{"fact": "vehicle.parked", "op": "==", "value": True}]})
    assert isinstance(parsed, AllOf)
    assert isinstance(parsed.all[0], Comparison)


def test_facts() -> None:
    vehicle = VehicleState(
        signals=MappingProxyType({"Vehicle.Speed": 12.5}),
        odometer_m=12_345_600,
        parked=True,
        drive_cycle=7,
    )
    wallet = Wallet.model_validate({"version": 1, "tier": "gold", "points": 250})
    attrs: dict[str, ArgValue] = {"code": "P0301", "title": Text("失火", "Misfire")}
    look = fact_lookup(vehicle, wallet, attrs, Now(T0, True, 0.0), DEFAULT_ZONE)
    assert look("event.code") == "P0301"
    assert look("event.title") == "Misfire"
    assert look("event.nothing") is MISSING
    assert look("signal.Vehicle.Speed") == 12.5
    assert look("signal.Vehicle.Nothing") is MISSING
    assert look("vehicle.odometer_km") == pytest.approx(12_345.6)
    assert look("vehicle.parked") is True
    assert look("vehicle.driving") is False
    assert look("vehicle.drive_cycle") == 7
    assert look("wallet.tier") == "gold"
    assert look("wallet.points") == 250
    assert look("wallet.coupons") == 0
    assert look("clock.trusted") is True
    assert look("time.hour") == 12  # T0 is noon in UTC+8
    assert look("time.weekday") == 3  # 2026-05-28 is a Thursday (Monday = 0)
    assert fact_lookup(vehicle, None, {}, Now(T0, False, 0.0), UTC)("wallet.tier") is MISSING
    assert fact_lookup(vehicle, None, {}, Now(T0, False, 0.0), UTC)("time.hour") == 4
    # A zone with summer time: the hour follows the zone's rules, not a fixed offset.
    berlin = ZoneInfo("Europe/Berlin")
    assert fact_lookup(vehicle, None, {}, Now(T0, False, 0.0), berlin)("time.hour") == 6


# -- the engine -----------------------------------------------------------------------------


def soc_rule(**fields: Any) -> dict[str, Any]:
    return rule_json(
        "soc.low",
        trigger={
            "signal": {"path": STATE_OF_CHARGE, "op": "<", "value": 20},
            "min_interval_s": fields.pop("min_interval_s", 0),
        },
        **fields,
    )


def engine(*rules: dict[str, Any], cloud: RuleSetDocument | None = None) -> RuleEngine:
    return RuleEngine(document(*rules), TARGETS, cloud)


def signal(eng: RuleEngine, value: Any, now: float, *, trusted: bool = True) -> list[str]:
    return [
        s.template
        for s in eng.on_signal(
            STATE_OF_CHARGE, value, facts_of({}), now, trusted=trusted, tier=None
        )
    ]


def test_a_signal_trigger_fires_on_the_rising_edge_only() -> None:
    eng = engine(soc_rule())
    assert eng.watches(STATE_OF_CHARGE)
    assert not eng.watches("Vehicle.Speed")
    assert signal(eng, 50.0, T0) == []
    assert signal(eng, 19.0, T0 + 1) == ["soc.low"]
    assert signal(eng, 18.0, T0 + 2) == []
    assert signal(eng, 19.5, T0 + 3) == []
    assert signal(eng, None, T0 + 4) == []  # stale: the condition no longer holds
    assert signal(eng, 10.0, T0 + 5) == ["soc.low"]
    assert signal(eng, "low", T0 + 6) == []  # a type mismatch is false
    assert signal(eng, 10.0, T0 + 7) == ["soc.low"]


def test_a_signal_trigger_respects_its_minimum_interval() -> None:
    eng = engine(soc_rule(min_interval_s=HOUR))
    assert signal(eng, 10.0, T0) == ["soc.low"]
    assert signal(eng, 30.0, T0 + 10) == []
    assert signal(eng, 10.0, T0 + 20) == []  # a rising edge, too soon
    assert signal(eng, 30.0, T0 + HOUR) == []
    assert signal(eng, 10.0, T0 + HOUR) == ["soc.low"]


def test_the_card_spec_is_rendered_from_the_template() -> None:
    eng = engine(
        soc_rule(
            card=card_json(
                key="soc:{value}",
                title={"zh-CN": "电量 {value}%", "en": "Battery at {value}%"},
                priority=33,
                ttl_s=600,
            )
        )
    )
    [spec] = eng.on_signal(STATE_OF_CHARGE, 12.0, facts_of({}), T0, trusted=False, tier=None)
    assert spec.key == "soc:12"
    assert spec.title == Text("电量 12%", "Battery at 12%")
    assert spec.kind is CardKind.CAMPAIGN
    assert spec.urgency is Urgency.NORMAL
    assert spec.display is Display.PARKED_ONLY
    assert spec.priority == 33
    assert spec.ttl == 600
    assert spec.args["rule_id"] == "soc.low"
    assert spec.actions == (("dismiss", Text("忽略", "Dismiss")),)


def event(eng: RuleEngine, now: float, *, trusted: bool = True, tier: str | None = None,
          values: Mapping[str, Any] | None = None, name: str = "parked") -> list[str]:  # fmt: skip
    return [
        s.template
        for s in eng.on_event(name, {}, facts_of(values or {}), now, trusted=trusted, tier=tier)
    ]


def test_conditions_gate_the_trigger() -> None:
    eng = engine(rule_json(conditions={"fact": "wallet.points", "op": ">=", "value": 100}))
    assert event(eng, T0, values={"wallet.points": 99}) == []
    assert event(eng, T0, values={"wallet.points": 100}) == ["camp.one"]
    assert event(eng, T0, name="driving_started", values={"wallet.points": 100}) == []


def test_caps_per_day() -> None:
    eng = engine(rule_json(caps={"per_day": 2}))
    assert event(eng, T0) == ["camp.one"]
    assert event(eng, T0 + HOUR) == ["camp.one"]
    assert event(eng, T0 + 2 * HOUR) == []
    assert event(eng, T0 + DAY - 1) == []
    assert event(eng, T0 + DAY) == ["camp.one"]  # the first one left the rolling day
    assert event(eng, T0 + DAY + 1) == []


def test_caps_total() -> None:
    eng = engine(rule_json(caps={"total": 3}))
    fired = [event(eng, T0 + i * DAY) for i in range(5)]
    assert fired == [["camp.one"]] * 3 + [[], []]


def test_targeting() -> None:
    eng = RuleEngine(
        document(
            rule_json("any.car"),
            rule_json("my.model", targeting={"models": ["touchpoint-ref"]}),
            rule_json("other.model", targeting={"models": ["x1"]}),
            rule_json("my.market", targeting={"markets": ["CN", "HK"]}),
            rule_json("other.market", targeting={"markets": ["EU"]}),
            rule_json("gold", targeting={"tiers": ["gold"]}),
        ),
        TARGETS,
    )
    assert sorted(event(eng, T0)) == ["any.car", "my.market", "my.model"]
    assert sorted(event(eng, T0 + 1, tier="gold")) == ["any.car", "gold", "my.market", "my.model"]


def test_a_validity_window_needs_a_trusted_clock() -> None:
    eng = engine(rule_json(valid_from=T0, valid_until=T0 + DAY))
    assert event(eng, T0 + HOUR, trusted=False) == []
    assert event(eng, T0 - 1) == []
    assert event(eng, T0 + HOUR) == ["camp.one"]
    assert event(eng, T0 + DAY) == []


def test_disabled_rules_do_nothing() -> None:
    eng = engine(rule_json(enabled=False))
    assert event(eng, T0) == []


def test_a_time_of_day_rule_fires_once_per_local_day() -> None:
    eng = engine(rule_json(trigger={"time_of_day": "13:30"}))

    def tick(now: float, *, trusted: bool = True) -> list[str]:
        return [s.template for s in eng.on_tick(facts_of({}), now, trusted=trusted, tier=None)]

    assert tick(T0) == []  # 12:00 local
    assert tick(T0 + 1.5 * HOUR - 60) == []  # 13:29
    assert tick(T0 + 1.5 * HOUR, trusted=False) == []
    assert tick(T0 + 1.5 * HOUR) == ["camp.one"]  # 13:30
    assert tick(T0 + 3 * HOUR) == []
    assert tick(T0 + 11.9 * HOUR) == []  # 23:54, same local day
    assert tick(T0 + 12 * HOUR) == []  # 00:00 the next day, before 13:30
    assert tick(T0 + DAY + 1.5 * HOUR) == ["camp.one"]


def test_a_cloud_rule_overrides_a_builtin_by_id_and_rolls_back() -> None:
    builtin = document(rule_json("shared", card=card_json(title={"zh-CN": "旧", "en": "old"})))
    eng = RuleEngine(builtin, TARGETS)
    [spec] = eng.on_event("parked", {}, facts_of({}), T0, trusted=True, tier=None)
    assert spec.title.en == "old"
    assert not eng.rollback()
    cloud1 = document(
        rule_json("shared", card=card_json(title={"zh-CN": "新", "en": "new"})),
        rule_json("extra"),
        version=5,
    )
    eng.activate(cloud1)
    assert eng.cloud_version == 5
    assert {r.id for r in eng.rules} == {"shared", "extra"}
    titles = {
        s.template: s.title.en
        for s in eng.on_event("parked", {}, facts_of({}), T0, trusted=True, tier=None)
    }
    assert titles == {"shared": "new", "extra": "Campaign extra"}
    cloud2 = document(rule_json("extra", enabled=False), version=6)
    eng.activate(cloud2)
    titles = {
        s.template: s.title.en
        for s in eng.on_event("parked", {}, facts_of({}), T0, trusted=True, tier=None)
    }
    assert titles == {"shared": "old"}
    assert eng.rollback()
    assert eng.cloud_version == 5
    assert not eng.rollback()  # one step back only


def test_closing_keys_render_with_the_event() -> None:
    eng = RuleEngine(builtin_rules(), TARGETS)
    closing = eng.closing_keys("fault_cleared", {"code": "P0301", "group": "misfire"})
    assert closing == ["fault:misfire"] * 3
    assert set(eng.closing_keys("maintenance_ok", {})) == {"maintenance"}
    assert eng.closing_keys("parked", {}) == []


def test_the_engine_state_survives_a_restart() -> None:
    rules = (soc_rule(caps={"total": 2}), rule_json(trigger={"time_of_day": "12:00"}))
    eng = engine(*rules)
    assert signal(eng, 10.0, T0) == ["soc.low"]
    assert [s.template for s in eng.on_tick(facts_of({}), T0, trusted=True, tier=None)] == [
        "camp.one"
    ]
    again = RuleEngine(document(*rules), TARGETS, state=eng.snapshot())
    assert signal(again, 5.0, T0 + 1) == []  # still below: no new edge
    assert [s.template for s in again.on_tick(facts_of({}), T0 + 60, trusted=True, tier=None)] == []
    assert signal(again, 30.0, T0 + 2) == []
    assert signal(again, 10.0, T0 + 3) == ["soc.low"]
    assert signal(again, 30.0, T0 + 4) == []
    assert signal(again, 10.0, T0 + 5) == []  # total cap of 2 reached
