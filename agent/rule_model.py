"""Rule documents: card rules as data, so the cloud can change them without a software update.

A rule has a trigger (a signal condition with rising-edge semantics and a minimum
interval, an agent event, or a local time of day), conditions (a tree of all / any /
not over comparisons of facts: no code is ever executed), targeting (car model, market,
member tier), a validity window, a card template in zh-CN and en, and caps.

The JSON schema of :class:`RuleSetDocument` is published as ``docs/rules.schema.json``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.cards import ACTION_KEYS, MOVING_ACTIONS_MAX, MOVING_TITLE_MAX
from agent.plan import LocalisedText

_BOOKING: Final = frozenset({"card_key", "slot_time", "dealer", "booking_id", "reason"})
_CYCLE: Final = frozenset({"cycle"})
_CHARGE: Final = frozenset({"soc"})
#: Agent events a rule can be triggered by (see :mod:`agent.core`), with the attributes
#: each one carries: a card template's ``{placeholders}`` and ``event.<attr>`` facts
#: can use these (and ``rule_id``). The agent's tests hold every raised event to this.
EVENT_ATTRIBUTES: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "maintenance_reminder": frozenset({"state", "items", "item_ids", "odometer_km"}),
    "maintenance_ok": frozenset(),
    "service_completed": frozenset({"items"}),
    "fault_detected": frozenset({"code", "group", "codes", "severity", "title", "advice"}),
    "fault_cleared": frozenset({"code", "group"}),
    "charging_started": _CHARGE,
    "charging_stopped": _CHARGE,
    "drive_cycle_started": _CYCLE,
    "drive_cycle_ended": _CYCLE,
    "parked": frozenset(),
    "driving_started": frozenset(),
    "odometer_milestone": frozenset({"milestone_km"}),
    "birthday": frozenset(),
    "first_drive": frozenset(),
    "benefit_available": frozenset(
        {"coupon_id", "coupon_title", "coupon_body", "scene", "milestone_km"}
    ),
    "booking_confirmed": _BOOKING,
    "booking_declined": _BOOKING,
    "booking_cancelled": _BOOKING,
    "booking_reminder": _BOOKING,
    "redemption_confirmed": frozenset({"coupon_id"}),
    "redemption_declined": frozenset({"coupon_id"}),
})  # fmt: skip
#: Agent events a rule can be triggered by.
AGENT_EVENTS: Final = frozenset(EVENT_ATTRIBUTES)
#: Attributes a signal trigger passes (and every trigger: ``rule_id``).
SIGNAL_ATTRIBUTES: Final = frozenset({"path", "value"})
#: Action keys the agent knows how to carry out.
_FACT: Final = re.compile(
    r"^(event\.[a-z_][a-z0-9_]*|signal\.Vehicle(\.[A-Za-z0-9_]+)+|"
    r"vehicle\.(parked|driving|charging|odometer_km|drive_cycle)|"
    r"wallet\.(tier|points|coupons)|clock\.trusted|time\.(hour|weekday))$"
)
MAX_CONDITION_NODES: Final = 64
MAX_CONDITION_DEPTH: Final = 8

Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Comparison(_Model):
    """``fact op value``: e.g. ``signal.Vehicle.Speed < 5`` or ``wallet.tier in [gold]``."""

    fact: Annotated[str, Field(max_length=200)]
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "contains", "exists"]
    value: Scalar | list[Scalar] | None = None

    @field_validator("fact")
    @classmethod
    def _known_fact(cls, fact: str) -> str:
        if not _FACT.match(fact):
            raise ValueError(
                f"unknown fact {fact!r}: use event.<attr>, signal.<VSS path>, vehicle.*, "
                "wallet.tier|points|coupons, clock.trusted or time.hour|weekday"
            )
        return fact

    @model_validator(mode="after")
    def _value_fits(self) -> Self:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"'{self.op}' needs a list value")
        if self.op not in ("in", "not_in", "exists") and isinstance(self.value, list):
            raise ValueError(f"'{self.op}' needs a single value")
        if self.op != "exists" and self.value is None:
            raise ValueError(f"'{self.op}' needs a value")
        return self


class AllOf(_Model):
    """Every condition holds."""

    all: Annotated[list[Condition], Field(min_length=1, max_length=32)]


class AnyOf(_Model):
    """At least one condition holds."""

    any: Annotated[list[Condition], Field(min_length=1, max_length=32)]


class NotOf(_Model):
    """The condition does not hold."""

    not_: Annotated[Condition, Field(alias="not")]


Condition = Annotated[Comparison | AllOf | AnyOf | NotOf, Field(union_mode="left_to_right")]


class SignalCondition(_Model):
    """A comparison on one signal, for a trigger."""

    path: Annotated[str, Field(pattern=r"^Vehicle(\.[A-Za-z0-9_]+)+$", max_length=200)]
    op: Literal["==", "!=", "<", "<=", ">", ">="]
    value: Scalar


class SignalTrigger(_Model):
    """Fires when the condition becomes true (rising edge), at most every ``min_interval_s``."""

    signal: SignalCondition
    min_interval_s: Annotated[float, Field(ge=0, le=365 * 86_400)] = 0.0


class EventTrigger(_Model):
    """Fires on an agent event."""

    event: str

    @field_validator("event")
    @classmethod
    def _known_event(cls, event: str) -> str:
        if event not in AGENT_EVENTS:
            raise ValueError(f"unknown agent event {event!r}: one of {sorted(AGENT_EVENTS)}")
        return event


class TimeTrigger(_Model):
    """Fires once a day at a local time (needs a trusted clock)."""

    time_of_day: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


Trigger = Annotated[SignalTrigger | EventTrigger | TimeTrigger, Field(union_mode="left_to_right")]


class ActionTemplate(_Model):
    """A button on the card."""

    key: str
    label: LocalisedText

    @field_validator("key")
    @classmethod
    def _known_key(cls, key: str) -> str:
        if key not in ACTION_KEYS:
            raise ValueError(f"unknown action {key!r}: one of {sorted(ACTION_KEYS)}")
        return key


class CardTemplate(_Model):
    """The card a rule makes; ``{name}`` placeholders are filled from the trigger event."""

    key: Annotated[str, Field(min_length=1, max_length=120)] = "rule:{rule_id}"
    kind: Literal["maintenance", "fault", "benefit", "booking", "campaign"]
    urgency: Literal["low", "normal", "critical"] = "normal"
    display: Literal["parked_only", "while_moving"] = "parked_only"
    priority: Annotated[int, Field(ge=0, le=100)] = 50
    title: LocalisedText
    body: LocalisedText
    actions: Annotated[list[ActionTemplate], Field(max_length=4)] = []
    ttl_s: Annotated[float | None, Field(gt=0, le=365 * 86_400)] = None

    @model_validator(mode="after")
    def _moving_rules(self) -> Self:
        if self.display == "while_moving":
            if self.kind != "fault" or self.urgency != "critical":
                raise ValueError("only critical fault cards may be shown while moving")
            if len(self.actions) > MOVING_ACTIONS_MAX:
                raise ValueError(
                    f"a card shown while moving has at most {MOVING_ACTIONS_MAX} action"
                )
            longest = max(len(_static(self.title.zh_cn)), len(_static(self.title.en)))
            if longest > MOVING_TITLE_MAX:
                raise ValueError(
                    f"a card shown while moving has a title of at most {MOVING_TITLE_MAX} "
                    "characters"
                )
        return self


def _static(template: str) -> str:
    """The template without its placeholders (their length is only known when filled)."""
    return re.sub(r"\{[A-Za-z_][A-Za-z0-9_]*\}", "", template)


class Targeting(_Model):
    """Which cars a rule applies to; an absent list means all.

    ``rollout_percent`` stages a rule over the fleet: a car takes part when the first 8
    bytes of ``sha256("{rule id}:{vehicle id}")``, as an unsigned big-endian integer,
    modulo 10,000 are below the percentage times 100 (see :func:`in_rollout`). The cars
    a share takes stay in as the share grows, whatever the rule's version.
    """

    models: Annotated[list[str], Field(max_length=100)] | None = None
    markets: Annotated[list[str], Field(max_length=100)] | None = None
    tiers: Annotated[list[str], Field(max_length=20)] | None = None
    rollout_percent: Annotated[float, Field(ge=0, le=100)] | None = None


def in_rollout(rule_id: str, vehicle_id: str, percent: float) -> bool:
    """Whether ``vehicle_id`` is in a ``percent`` rollout of the rule ``rule_id``."""
    digest = hashlib.sha256(f"{rule_id}:{vehicle_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < round(percent * 100)


class Caps(_Model):
    """How often a rule may make a card."""

    per_day: Annotated[int, Field(ge=1, le=100)] | None = None
    total: Annotated[int, Field(ge=1)] | None = None


class Rule(_Model):
    """One card rule."""

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    version: Annotated[int, Field(ge=0)]
    enabled: bool = True
    description: Annotated[str, Field(max_length=500)] = ""
    valid_from: float | None = None
    valid_until: float | None = None
    targeting: Targeting = Targeting()
    trigger: Trigger
    conditions: Condition | None = None
    card: CardTemplate
    caps: Caps = Caps()
    #: Agent events that close this rule's open card (same rendered key).
    closes_on: Annotated[list[str], Field(max_length=8)] = []

    @field_validator("closes_on")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - AGENT_EVENTS)
        if unknown:
            raise ValueError(f"unknown agent events: {unknown}")
        return events

    @model_validator(mode="after")
    def _sane(self) -> Self:
        if (
            self.valid_from is not None
            and self.valid_until is not None
            and self.valid_until <= self.valid_from
        ):
            raise ValueError("valid_until must be after valid_from")
        if self.conditions is not None:
            nodes, depth = _measure(self.conditions)
            if nodes > MAX_CONDITION_NODES or depth > MAX_CONDITION_DEPTH:
                raise ValueError(
                    f"conditions too large: {nodes} nodes, depth {depth} "
                    f"(limits {MAX_CONDITION_NODES}, {MAX_CONDITION_DEPTH})"
                )
        return self

    @property
    def ref(self) -> str:
        """``id@version``, as cards and events name the rule."""
        return f"{self.id}@{self.version}"


def comparisons(
    condition: Condition, at: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Comparison]]:
    """Every comparison of a condition tree, with its key path below ``at``."""
    if isinstance(condition, Comparison):
        yield at, condition
    elif isinstance(condition, AllOf):
        for index, child in enumerate(condition.all):
            yield from comparisons(child, (*at, "all", index))
    elif isinstance(condition, AnyOf):
        for index, child in enumerate(condition.any):
            yield from comparisons(child, (*at, "any", index))
    elif isinstance(condition, NotOf):
        yield from comparisons(condition.not_, (*at, "not"))


def _measure(condition: Any, depth: int = 1) -> tuple[int, int]:
    children: list[Any] = []
    if isinstance(condition, AllOf):
        children = condition.all
    elif isinstance(condition, AnyOf):
        children = condition.any
    elif isinstance(condition, NotOf):
        children = [condition.not_]
    nodes, deepest = 1, depth
    for child in children:
        n, d = _measure(child, depth + 1)
        nodes, deepest = nodes + n, max(deepest, d)
    return nodes, deepest


class RuleSetDocument(_Model):
    """A versioned set of rules, as the cloud pushes it (and as the built-in set ships)."""

    schema_version: Literal[1] = 1
    version: Annotated[int, Field(ge=0)]
    rules: Annotated[list[Rule], Field(max_length=500)]

    @model_validator(mode="after")
    def _unique_ids(self) -> Self:
        ids = [r.id for r in self.rules]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule ids: {duplicates}")
        return self


class RuleStops(_Model):
    """The cloud's kill switch: rules stopped on every car, whatever rule set is active.

    Each document is the whole list: a newer one without a rule lifts its stop. A rule
    set that arrives later does not bring a stopped rule back.
    """

    schema_version: Literal[1] = 1
    version: Annotated[int, Field(ge=0)]
    stopped: Annotated[
        list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]], Field(max_length=500)
    ] = []


def builtin_rules() -> RuleSetDocument:
    """The rules shipped with touchpoint (``agent/data/rules.json``)."""
    text = resources.files("agent.data").joinpath("rules.json").read_text("utf-8")
    return RuleSetDocument.model_validate_json(text)


AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()
Rule.model_rebuild()
