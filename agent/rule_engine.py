"""The rule engine: triggers, conditions and caps turn agent events and signals into cards.

Rules are indexed by what triggers them (an agent event name, a signal path, a time of
day), so an update only costs the rules that listen to it. Conditions are evaluated by
walking the validated tree: comparisons of facts, nothing else. A missing fact or a
comparison of mismatched types is simply false.

The effective rule set is the built-in rules overlaid with the cloud's: a cloud rule
with the id of a built-in one replaces it. A new cloud set is activated atomically;
the previous one is kept for :meth:`RuleEngine.rollback`.

Pure: time and facts are arguments.
"""

from __future__ import annotations

import math
import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, Final

from agent.cards import ArgValue, CardKind, Display, Text, Urgency, render
from agent.events import JsonValue
from agent.local_time import DEFAULT_ZONE, local, local_day
from agent.rule_model import (
    AllOf,
    AnyOf,
    CardTemplate,
    Comparison,
    Condition,
    EventTrigger,
    NotOf,
    Rule,
    RuleSetDocument,
    SignalTrigger,
    TimeTrigger,
    comparisons,
    in_rollout,
)

DAY: Final = 86_400.0
MISSING: Final = object()

FactLookup = Callable[[str], Any]

_KINDS: Final = {
    "maintenance": CardKind.MAINTENANCE,
    "fault": CardKind.FAULT,
    "benefit": CardKind.BENEFIT,
    "booking": CardKind.BOOKING,
    "campaign": CardKind.CAMPAIGN,
}
_URGENCIES: Final = {"low": Urgency.LOW, "normal": Urgency.NORMAL, "critical": Urgency.CRITICAL}
_DISPLAYS: Final = {"parked_only": Display.PARKED_ONLY, "while_moving": Display.WHILE_MOVING}
_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Targets:
    """What this car is, for targeting."""

    model: str
    market: str
    #: The vehicle's id, for staged rollouts ("": in no rollout short of 100 %).
    vehicle_id: str = ""


@dataclass(frozen=True, slots=True)
class CardSpec:
    """A card a rule (or the cloud) asks for, rendered in both locales (the agent gives it an id).

    Attributes:
        template: The template id HMIs that localise themselves go by (the rule's id).
        rule: ``id@version`` of what made it, for the card and its events.
        why: What made the rule fire: ``trigger`` (an agent event, a signal crossing
            with its ``value``, a time of day) and ``facts`` (each fact the rule's
            conditions read, with its value then).
    """

    template: str
    rule: str
    key: str
    kind: CardKind
    urgency: Urgency
    display: Display
    priority: int
    title: Text
    body: Text
    args: Mapping[str, ArgValue]
    actions: tuple[tuple[str, Text], ...]
    ttl: float | None
    why: Mapping[str, JsonValue] = field(default_factory=dict)


def card_spec(
    template_id: str,
    ref: str,
    card: CardTemplate,
    args: Mapping[str, ArgValue],
    why: Mapping[str, JsonValue] | None = None,
) -> CardSpec:
    """The card ``card`` describes, its placeholders filled from ``args``."""
    return CardSpec(
        template=template_id,
        rule=ref,
        key=render(card.key, args, "en"),
        kind=_KINDS[card.kind],
        urgency=_URGENCIES[card.urgency],
        display=_DISPLAYS[card.display],
        priority=card.priority,
        title=Text(render(card.title.zh_cn, args, "zh-CN"), render(card.title.en, args, "en")),
        body=Text(render(card.body.zh_cn, args, "zh-CN"), render(card.body.en, args, "en")),
        args=args,
        actions=tuple((a.key, a.label.text()) for a in card.actions),
        ttl=card.ttl_s,
        why=why or {},
    )


@dataclass(slots=True)
class _RuleState:
    fired: list[float] = field(default_factory=list)  # fire times in the last day
    total: int = 0
    last_fired: float | None = None
    edge: bool = False  # last truth of a signal trigger
    last_day: int | None = None  # local day a time trigger last fired
    version: int | None = None  # the rule version these counters belong to


@dataclass(slots=True)
class _SignalRule:
    """A signal-triggered rule, compiled: the comparison ready to run on every update."""

    rule: Rule
    state: _RuleState
    op: str
    threshold: Any
    compare: Callable[[Any, Any], bool] | None  # set when the threshold is a number
    min_interval: float


_OPERATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}  # fmt: skip


class RuleEngine:
    """Evaluates rules against agent events, signals and the time of day.

    :attr:`dirty` turns true whenever the engine's persistent state changes (an edge
    flips, a rule fires, a time-of-day rule's day is used up); the agent persists the
    state then, and only then, and clears the flag.
    """

    def __init__(
        self,
        builtin: RuleSetDocument,
        targets: Targets,
        cloud: RuleSetDocument | None = None,
        state: Mapping[str, Mapping[str, Any]] | None = None,
        zone: tzinfo = DEFAULT_ZONE,
    ) -> None:
        self._builtin = builtin
        self._targets = targets
        self._cloud = cloud
        self._previous: RuleSetDocument | None = None
        self._zone = zone
        self.dirty = False
        #: Times a triggered rule did not fire, by (rule ref, why): for replays.
        self.skipped: Counter[tuple[str, str]] = Counter()
        #: Rule ids the cloud stopped (:class:`~agent.rule_model.RuleStops`).
        self.stopped: frozenset[str] = frozenset()
        self._state: dict[str, _RuleState] = defaultdict(_RuleState)
        for rule_id, raw in (state or {}).items():
            self._state[rule_id] = _RuleState(
                fired=[float(t) for t in raw.get("fired", [])],
                total=int(raw.get("total", 0)),
                last_fired=raw.get("last_fired"),
                edge=bool(raw.get("edge", False)),
                last_day=raw.get("last_day"),
                version=raw.get("version"),
            )
        self._index()

    @property
    def cloud_version(self) -> int | None:
        """The version of the active cloud rule set, if any."""
        return self._cloud.version if self._cloud else None

    @property
    def cloud_document(self) -> RuleSetDocument | None:
        """The active cloud rule set, if any."""
        return self._cloud

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The effective rules."""
        return tuple(self._rules.values())

    def activate(self, document: RuleSetDocument) -> None:
        """Make a (validated) cloud rule set the active one; the current one is kept."""
        self._previous, self._cloud = self._cloud, document
        self._index()

    def rollback(self) -> bool:
        """Go back to the previous cloud rule set; ``False`` if there is none."""
        if self._previous is None:
            return False
        self._cloud, self._previous = self._previous, None
        self._index()
        return True

    def _index(self) -> None:
        rules: dict[str, Rule] = {r.id: r for r in self._builtin.rules}
        if self._cloud is not None:
            rules.update({r.id: r for r in self._cloud.rules})
        self._rules = rules
        self._by_event: dict[str, list[Rule]] = defaultdict(list)
        self._by_signal: dict[str, list[_SignalRule]] = defaultdict(list)
        self._timed: list[Rule] = []
        self._closers: dict[str, list[Rule]] = defaultdict(list)
        for rule in rules.values():
            if not rule.enabled:
                continue
            trigger = rule.trigger
            if isinstance(trigger, EventTrigger):
                self._by_event[trigger.event].append(rule)
            elif isinstance(trigger, SignalTrigger):
                condition = trigger.signal
                threshold = condition.value
                numeric = _is_number(threshold)
                self._by_signal[condition.path].append(
                    _SignalRule(
                        rule, self._state_of(rule), condition.op, threshold,
                        _OPERATORS[condition.op] if numeric else None, trigger.min_interval_s,
                    )
                )  # fmt: skip
            elif isinstance(trigger, TimeTrigger):
                self._timed.append(rule)
            for event in rule.closes_on:
                self._closers[event].append(rule)

    def watches(self, path: str) -> bool:
        """Whether any rule is triggered by ``path``."""
        return path in self._by_signal

    def on_event(
        self,
        name: str,
        attrs: Mapping[str, ArgValue],
        facts: FactLookup,
        now: float,
        *,
        trusted: bool,
        tier: str | None,
    ) -> list[CardSpec]:
        """Cards asked for by rules triggered by the agent event ``name``."""
        return [
            self._fire(rule, attrs, now, f"event {name}", facts)
            for rule in self._by_event.get(name, ())
            if self._eligible(rule, facts, now, trusted=trusted, tier=tier)
        ]

    def on_signal(
        self,
        path: str,
        value: Any,
        facts: FactLookup,
        now: float,
        *,
        trusted: bool,
        tier: str | None,
    ) -> list[CardSpec]:
        """Cards asked for by rules whose signal condition on ``path`` just became true.

        Only a rule whose condition flips does any work beyond one comparison: this is
        run on every update of a watched signal.
        """
        entries = self._by_signal.get(path)
        if not entries:
            return []
        number = _is_number(value)
        specs = []
        for entry in entries:
            fast = entry.compare
            if number and fast is not None:
                truth = fast(value, entry.threshold)
            else:
                truth = compare(value, entry.op, entry.threshold)
            state = entry.state
            if truth == state.edge:
                continue
            state.edge = truth
            self.dirty = True
            if not truth:
                continue
            if state.last_fired is not None and now - state.last_fired < entry.min_interval:
                continue
            if self._eligible(entry.rule, facts, now, trusted=trusted, tier=tier):
                trigger = f"signal {path} {entry.op} {entry.threshold!r}"
                attrs = {"path": path, "value": _arg(value)}
                specs.append(self._fire(entry.rule, attrs, now, trigger, facts))
        return specs

    def on_tick(
        self, facts: FactLookup, now: float, *, trusted: bool, tier: str | None
    ) -> list[CardSpec]:
        """Cards asked for by time-of-day rules (a trusted clock is needed)."""
        if not trusted:
            return []
        specs = []
        moment = local(now, self._zone)
        day, minute = local_day(now, self._zone), moment.hour * 60 + moment.minute
        for rule in self._timed:
            trigger = rule.trigger
            assert isinstance(trigger, TimeTrigger)
            hours, minutes = (int(p) for p in trigger.time_of_day.split(":"))
            state = self._state_of(rule)
            if minute < hours * 60 + minutes or state.last_day == day:
                continue
            state.last_day = day
            self.dirty = True
            if self._eligible(rule, facts, now, trusted=trusted, tier=tier):
                specs.append(self._fire(rule, {}, now, f"time {trigger.time_of_day}", facts))
        return specs

    def render_again(self, rule_id: str, args: Mapping[str, ArgValue]) -> tuple[Text, Text] | None:
        """A card's title and body from its rule's templates with ``args``.

        ``None`` when the rule is no longer in effect (the card keeps its texts).
        """
        rule = self._rules.get(rule_id)
        if rule is None:
            return None
        spec = card_spec(rule.id, rule.ref, rule.card, {"rule_id": rule.id, **args})
        return spec.title, spec.body

    def closing_keys(self, name: str, attrs: Mapping[str, ArgValue]) -> list[str]:
        """Card keys that the agent event ``name`` closes."""
        return [_render_key(rule, attrs) for rule in self._closers.get(name, ())]

    def _eligible(
        self, rule: Rule, facts: FactLookup, now: float, *, trusted: bool, tier: str | None
    ) -> bool:
        reason: str | None = None
        if rule.id in self.stopped:
            reason = "stopped by the cloud"
        elif not _in_window(rule, now, trusted=trusted):
            reason = "outside its window"
        elif not self._targeted(rule, tier):
            reason = "not targeted"
        elif not self._within_caps(rule, now):
            reason = "its caps"
        elif rule.conditions is not None and not evaluate(rule.conditions, facts):
            reason = "conditions false"
        if reason is not None:
            self.skipped[(rule.ref, reason)] += 1
        return reason is None

    def _targeted(self, rule: Rule, tier: str | None) -> bool:
        targeting = rule.targeting
        rollout = targeting.rollout_percent
        return (
            (targeting.models is None or self._targets.model in targeting.models)
            and (targeting.markets is None or self._targets.market in targeting.markets)
            and (targeting.tiers is None or tier in targeting.tiers)
            and (
                rollout is None
                or rollout >= 100
                or (bool(self._targets.vehicle_id)
                    and in_rollout(rule.id, self._targets.vehicle_id, rollout))
            )
        )  # fmt: skip

    def _within_caps(self, rule: Rule, now: float) -> bool:
        state = self._state_of(rule)
        state.fired = [t for t in state.fired if now - t < DAY]
        if rule.caps.per_day is not None and len(state.fired) >= rule.caps.per_day:
            return False
        return rule.caps.total is None or state.total < rule.caps.total

    def _fire(
        self,
        rule: Rule,
        attrs: Mapping[str, ArgValue],
        now: float,
        trigger: str,
        facts: FactLookup,
    ) -> CardSpec:
        state = self._state_of(rule)
        state.fired.append(now)
        state.total += 1
        state.last_fired = now
        self.dirty = True
        why: dict[str, JsonValue] = {"trigger": trigger}
        if "value" in attrs:
            why["value"] = _json(attrs["value"])
        if rule.conditions is not None:
            why["facts"] = {name: _json(facts(name)) for name in _facts_read(rule.conditions)}
        return card_spec(rule.id, rule.ref, rule.card, {"rule_id": rule.id, **attrs}, why)

    def forget_counters(self) -> None:
        """Drop every rule's counters and edges (a wipe of the driver's data)."""
        self._state.clear()
        self._index()  # the compiled rules hold their state objects
        self.dirty = True

    def _state_of(self, rule: Rule) -> _RuleState:
        """The rule's counters; a new version of a rule starts with fresh ones."""
        state = self._state[rule.id]
        if state.version != rule.version:
            if state.version is not None:
                state = self._state[rule.id] = _RuleState()
            state.version = rule.version
        return state

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The per-rule counters and edges, for the store."""
        return {
            rule_id: {
                "fired": s.fired,
                "total": s.total,
                "last_fired": s.last_fired,
                "edge": s.edge,
                "last_day": s.last_day,
                "version": s.version,
            }
            for rule_id, s in self._state.items()
            if s.total or s.edge or s.last_day is not None
        }


def _in_window(rule: Rule, now: float, *, trusted: bool) -> bool:
    if rule.valid_from is None and rule.valid_until is None:
        return True
    if not trusted:
        return False  # a campaign window cannot be checked against a wrong clock
    if rule.valid_from is not None and now < rule.valid_from:
        return False
    return rule.valid_until is None or now < rule.valid_until


def _render_key(rule: Rule, args: Mapping[str, ArgValue]) -> str:
    return render(rule.card.key, {"rule_id": rule.id, **args}, "en")


def _arg(value: Any) -> ArgValue:
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple):
        return tuple(str(v) for v in value)
    return str(value)


def _facts_read(condition: Condition) -> list[str]:
    """The facts a condition tree compares, in order, each once."""
    return list(dict.fromkeys(c.fact for _, c in comparisons(condition)))


def _json(value: Any) -> JsonValue:
    """A fact's value as JSON (a missing fact is null, a text its English)."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, Text):
        return value.en
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def evaluate(condition: Condition, facts: FactLookup) -> bool:
    """Evaluate a condition tree against facts."""
    if isinstance(condition, Comparison):
        return compare(facts(condition.fact), condition.op, condition.value)
    if isinstance(condition, AllOf):
        return all(evaluate(c, facts) for c in condition.all)
    if isinstance(condition, AnyOf):
        return any(evaluate(c, facts) for c in condition.any)
    assert isinstance(condition, NotOf)
    return not evaluate(condition.not_, facts)


def compare(actual: Any, op: str, expected: Any) -> bool:  # noqa: PLR0911 - one arm per operator
    """``actual op expected`` as a rule means it: a mismatch of types is false."""
    if op == "exists":
        return actual is not MISSING and actual is not None
    if actual is MISSING or actual is None:
        return False
    if op == "==":
        return bool(actual == expected)
    if op == "!=":
        return bool(actual != expected)
    if op == "in":
        return actual in expected
    if op == "not_in":
        return actual not in expected
    if op == "contains":
        if isinstance(actual, str):  # `3 in "abc"` raises: a mismatch is simply false
            return isinstance(expected, str) and expected in actual
        return isinstance(actual, tuple | list) and expected in actual
    if _is_number(actual) and _is_number(expected):
        return _ORDER[op](actual, expected)
    if isinstance(actual, str) and isinstance(expected, str):
        return _ORDER[op](actual, expected)
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
