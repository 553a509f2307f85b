"""Realistic cloud rule sets of any size, for the agent-core benchmark.

What an operator's campaign list looks like: most rules are triggered by a handful of
common signals (speed, state of charge, fuel, odometer, gear, engine speed, ignition,
charging, tyre pressure), a fifth by agent events (parked, charging started, a drive
cycle, an odometer milestone...), a few by a time of day. Each has a condition tree of
two to four branches over facts (parked, member tier, points, coupons, hour, weekday,
other signals), targeting (car models, markets, sometimes tiers), caps, a minimum
interval, and for half of them a validity window around the drive.

The generator is seeded, so every run and every rule count measures the same kind of
rules; a set of ``n`` rules is the first ``n`` of one long list, so the sets nest and
the growth from 10 to 500 rules is the cost of more rules, not of other rules.
Every set is validated by :class:`~agent.rule_model.RuleSetDocument`, as the cloud's
are.
"""

from __future__ import annotations

import random
from typing import Any, Final

from agent.rule_model import RuleSetDocument
from agent.signals import FUEL_LEVEL, IGNITION, IS_CHARGING, SELECTED_GEAR, STATE_OF_CHARGE
from can_signals.catalogue import GEAR_PARK, ODOMETER, SPEED

ENGINE_SPEED: Final = "Vehicle.Powertrain.CombustionEngine.Speed"
CURRENT_GEAR: Final = "Vehicle.Powertrain.Transmission.CurrentGear"
TYRE_FL: Final = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"
#: The car the benchmark's agent is (AgentConfig's defaults).
MODEL: Final = "touchpoint-ref"
MARKET: Final = "CN"
SEED: Final = 20_240_506

#: Signal triggers: (weight, path, op, value choices). The weights make speed the most
#: watched signal, as campaigns about driving style and trips are the most common.
_SIGNAL_TRIGGERS: Final[tuple[tuple[int, str, str, tuple[Any, ...]], ...]] = (
    (30, SPEED, ">", (60.0, 80.0, 100.0, 110.0, 120.0, 130.0)),
    (6, SPEED, "<", (5.0, 10.0, 20.0)),
    (12, STATE_OF_CHARGE, "<", (15.0, 20.0, 25.0, 30.0, 40.0)),
    (5, STATE_OF_CHARGE, ">=", (60.0, 70.0, 80.0, 90.0)),
    (10, FUEL_LEVEL, "<", (15, 20, 25, 30, 50)),
    (10, ODOMETER, ">=", tuple(range(14_990_000, 15_040_000, 5_000))),
    (8, CURRENT_GEAR, ">=", (3, 4, 5, 6)),
    (7, ENGINE_SPEED, ">", (2_000.0, 2_500.0, 3_000.0, 3_500.0)),
    (5, IS_CHARGING, "==", (True,)),
    (5, IGNITION, "==", ("OFF", "ACC", "LOCK")),
    (5, SELECTED_GEAR, "==", (GEAR_PARK,)),
    (5, TYRE_FL, "<", (200.0, 210.0, 220.0)),
)
_EVENTS: Final = (
    "parked",
    "driving_started",
    "drive_cycle_started",
    "drive_cycle_ended",
    "charging_started",
    "charging_stopped",
    "odometer_milestone",
    "maintenance_reminder",
    "fault_detected",
)


def _leaf(rng: random.Random) -> dict[str, Any]:
    """One comparison of a fact the agent knows during a drive."""
    choice = rng.randrange(12)
    leaves: tuple[dict[str, Any], ...] = (
        {"fact": "vehicle.parked", "op": "==", "value": True},
        {"fact": "vehicle.charging", "op": "==", "value": rng.random() < 0.5},
        {"fact": "wallet.tier", "op": "in", "value": rng.sample(["silver", "gold", "platinum"], 2)},
        {"fact": "wallet.points", "op": ">=", "value": rng.choice([100, 500, 1_000, 5_000])},
        {"fact": "wallet.coupons", "op": ">=", "value": 1},
        {"fact": "time.hour", "op": "in", "value": sorted(rng.sample(range(7, 22), 6))},
        {"fact": "time.weekday", "op": "not_in", "value": [5, 6]},
        {"fact": "clock.trusted", "op": "==", "value": True},
        {"fact": f"signal.{STATE_OF_CHARGE}", "op": "<", "value": rng.choice([30, 50, 70])},
        {"fact": f"signal.{FUEL_LEVEL}", "op": ">", "value": rng.choice([10, 20, 40])},
        {"fact": "vehicle.odometer_km", "op": ">", "value": rng.choice([5_000, 10_000, 14_000])},
        {"fact": f"signal.{SPEED}", "op": "<", "value": rng.choice([5, 30, 60])},
    )
    return leaves[choice]


def _conditions(rng: random.Random) -> dict[str, Any]:
    """``all`` of two to four branches: comparisons, an ``any`` of two or three, a ``not``."""
    branches: list[dict[str, Any]] = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.random()
        if kind < 0.6:
            branches.append(_leaf(rng))
        elif kind < 0.85:
            branches.append({"any": [_leaf(rng) for _ in range(rng.randint(2, 3))]})
        else:
            branches.append({"not": _leaf(rng)})
    return {"all": branches}


def _trigger(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.75:
        weights = [t[0] for t in _SIGNAL_TRIGGERS]
        _, path, op, values = rng.choices(_SIGNAL_TRIGGERS, weights)[0]
        return {
            "signal": {"path": path, "op": op, "value": rng.choice(values)},
            "min_interval_s": rng.choice([60.0, 300.0, 600.0, 3_600.0]),
        }
    if roll < 0.95:
        return {"event": rng.choice(_EVENTS)}
    return {"time_of_day": f"{rng.randrange(8, 21):02d}:{rng.choice([0, 15, 30, 45]):02d}"}


def _targeting(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.1:
        return {"models": ["another-model"]}  # not this car: skipped after the edge check
    targeting: dict[str, Any] = {"models": [MODEL, f"{MODEL}-lr"], "markets": [MARKET, "HK"]}
    if roll > 0.8:
        targeting["tiers"] = ["gold", "platinum"]
    return targeting


def _rule(rng: random.Random, index: int, around: float) -> dict[str, Any]:
    kind = rng.choice(["campaign", "benefit"])
    rule: dict[str, Any] = {
        "id": f"campaign.c{index:04d}",
        "version": rng.randint(1, 5),
        "description": f"benchmark campaign {index}",
        "targeting": _targeting(rng),
        "trigger": _trigger(rng),
        "conditions": _conditions(rng),
        "card": {
            "key": "campaign:{rule_id}",
            "kind": kind,
            "priority": rng.randint(10, 60),
            "title": {"zh-CN": f"会员活动 {index}", "en": f"Member offer {index}"},
            "body": {
                "zh-CN": "您的专属权益已到账，停车后可查看详情。",
                "en": "A member benefit is waiting for you: open it once parked.",
            },
            "actions": [
                {"key": "ok", "label": {"zh-CN": "查看", "en": "View"}},
                {"key": "dismiss", "label": {"zh-CN": "忽略", "en": "Dismiss"}},
            ],
            "ttl_s": rng.choice([3_600.0, 86_400.0, 7 * 86_400.0]),
        },
        "caps": {"per_day": rng.randint(1, 3), "total": rng.randint(5, 50)},
        "closes_on": rng.sample(["drive_cycle_ended", "charging_stopped"], rng.randint(0, 1)),
    }
    if rng.random() < 0.5:
        rule["valid_from"] = around - 30 * 86_400.0
        rule["valid_until"] = around + 30 * 86_400.0
    return rule


def cloud_rules(count: int, around: float, version: int = 1) -> RuleSetDocument:
    """``count`` validated campaign rules, valid around the UNIX time ``around``."""
    rng = random.Random(SEED)
    rules = [_rule(rng, i, around) for i in range(count)]
    return RuleSetDocument.model_validate({"schema_version": 1, "version": version, "rules": rules})
