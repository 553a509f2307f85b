"""Facts for rule conditions: the trigger event, signals, the vehicle, the wallet, the clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import tzinfo
from typing import Any

from agent.benefits import Wallet
from agent.cards import ArgValue, Text
from agent.clock import Now
from agent.local_time import local
from agent.rule_engine import MISSING
from agent.vehicle import VehicleState


def fact_lookup(
    vehicle: VehicleState,
    wallet: Wallet | None,
    attrs: Mapping[str, ArgValue],
    now: Now,
    zone: tzinfo,
) -> Callable[[str], Any]:
    """A lookup of the facts a rule condition may name (``event.code``, ``wallet.tier``...)."""

    def lookup(fact: str) -> Any:  # noqa: PLR0911 - one arm per fact family
        head, _, rest = fact.partition(".")
        if head == "event":
            value = attrs.get(rest, MISSING)
            return value.en if isinstance(value, Text) else value
        if head == "signal":
            return vehicle.signals.get(rest, MISSING)
        if head == "vehicle":
            if rest == "odometer_km":
                return None if vehicle.odometer_m is None else vehicle.odometer_m / 1000
            return getattr(vehicle, rest, MISSING)
        if head == "wallet":
            if wallet is None:
                return MISSING
            return len(wallet.coupons) if rest == "coupons" else getattr(wallet, rest)
        if head == "clock":
            return now.trusted
        moment = local(now.wall, zone)
        return moment.hour if rest == "hour" else moment.weekday()

    return lookup
