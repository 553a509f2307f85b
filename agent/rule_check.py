"""What a rule set would do wrong on a car, found before any car sees it.

The schema (:mod:`agent.rule_model`) refuses what is malformed; this finds what is
well-formed and still wrong for the car and the policy it will run on: a signal the car
does not have, a comparison that can never hold, a placeholder the trigger does not
fill, a time trigger inside the quiet hours, a cap that can never be reached, two rules
that fire on the same trigger into the same card, a rule another one shadows.

Pure: the car's signals and the policy's limits are arguments
(:class:`Capabilities`); ``touchpoint rules check`` builds them from the car's DBC,
mapping and settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import combinations
from typing import Final, Literal

from agent.rule_engine import compare
from agent.rule_model import (
    EVENT_ATTRIBUTES,
    SIGNAL_ATTRIBUTES,
    AllOf,
    Comparison,
    Condition,
    EventTrigger,
    Rule,
    RuleSetDocument,
    Scalar,
    SignalTrigger,
    TimeTrigger,
    comparisons,
)

DAY: Final = 86_400.0
_PLACEHOLDER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

Location = tuple[str | int, ...]
SignalKind = Literal["number", "boolean", "string", "list"]


@dataclass(frozen=True, slots=True)
class KnownSignal:
    """A signal the car has: its kind and, where known, its range or allowed values."""

    kind: SignalKind
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The car and the policy a rule set is checked against.

    Attributes:
        signals: The VSS paths the car delivers, by path.
        source: What ``signals`` came from, for messages ("the car's mapping").
        daily_caps: Cards of a kind the policy shows per day (absent: no cap).
        quiet_hours: Local hours ``(start, end)`` in which only critical cards show.
        now: Seconds since the epoch, for validity windows.
    """

    signals: Mapping[str, KnownSignal]
    source: str = "the signal catalogue"
    daily_caps: Mapping[str, int] = field(default_factory=dict)
    quiet_hours: tuple[int, int] | None = None
    now: float | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where in the document (a key path from its root) and what."""

    location: Location
    message: str


def check_rule_set(
    document: RuleSetDocument,
    capabilities: Capabilities,
    builtin: RuleSetDocument | None = None,
) -> list[Finding]:
    """Every problem of ``document`` on the car, in document order.

    Args:
        document: The rule set, valid against the schema.
        capabilities: The car and the policy.
        builtin: The rules the document overlays (a rule with the same id replaces the
            built-in one); conflicts with those that stay are reported too.
    """
    findings: list[Finding] = []
    for index, rule in enumerate(document.rules):
        where: Location = ("rules", index)
        findings += (Finding((*where, *loc), text) for loc, text in _rule(rule, capabilities))
    ours = {rule.id: index for index, rule in enumerate(document.rules)}
    kept = [r for r in (builtin.rules if builtin else ()) if r.id not in ours]
    effective = [r for r in document.rules if r.enabled] + [r for r in kept if r.enabled]
    findings += _conflicts(effective, ours, capabilities)
    return findings


# -- one rule ------------------------------------------------------------------------------


def _rule(rule: Rule, caps: Capabilities) -> Iterator[tuple[Location, str]]:
    yield from _trigger(rule, caps)
    if rule.conditions is not None:
        for loc, comparison in comparisons(rule.conditions, ("conditions",)):
            yield from _comparison(loc, comparison, rule, caps)
    yield from _texts(rule)
    yield from _window(rule, caps)
    yield from _rollout(rule)
    yield from _caps(rule, caps)
    if any(a.key == "redeem" for a in rule.card.actions) and not _is_event(
        rule, "benefit_available"
    ):
        yield (
            ("card", "actions"),
            ("redeem needs a coupon: only a rule triggered by benefit_available can offer it"),
        )


def _trigger(rule: Rule, caps: Capabilities) -> Iterator[tuple[Location, str]]:
    trigger = rule.trigger
    if isinstance(trigger, SignalTrigger):
        condition = trigger.signal
        known = caps.signals.get(condition.path)
        where: Location = ("trigger", "signal", "path")
        if known is None:
            yield where, f"{condition.path} is not in {caps.source}: the rule never fires"
        else:
            never = _never(known, condition.op, condition.value)
            if never:
                yield ("trigger", "signal"), f"{condition.path} {never}: the rule never fires"
    elif isinstance(trigger, TimeTrigger) and caps.quiet_hours is not None:
        hour = int(trigger.time_of_day[:2])
        start, end = caps.quiet_hours
        quiet = start <= hour < end if start <= end else hour >= start or hour < end
        if quiet and rule.card.urgency != "critical":
            yield (
                ("trigger", "time_of_day"),
                (
                    f"fires at {trigger.time_of_day}, inside the quiet hours "
                    f"({start:02d}:00-{end:02d}:00): its card waits until {end:02d}:00"
                ),
            )


def _comparison(
    loc: Location, comparison: Comparison, rule: Rule, caps: Capabilities
) -> Iterator[tuple[Location, str]]:
    fact = comparison.fact
    if fact.startswith("signal."):
        path = fact.removeprefix("signal.")
        known = caps.signals.get(path)
        if known is None:
            yield (*loc, "fact"), f"{path} is not in {caps.source}: this comparison is never true"
        elif comparison.op != "exists":
            never = _never(known, comparison.op, comparison.value)
            if never:
                yield loc, f"{path} {never}: this comparison is never true"
    elif fact.startswith("event."):
        name = fact.removeprefix("event.")
        available = _attributes(rule)
        if available is not None and name not in available:
            yield (
                (*loc, "fact"),
                (
                    f"{_trigger_name(rule)} has no attribute {name!r} "
                    f"(it has: {', '.join(sorted(available)) or 'none'}): never true"
                ),
            )


def _never(known: KnownSignal, op: str, value: Scalar | list[Scalar] | None) -> str | None:
    """Why ``signal op value`` can never hold, or ``None`` if it can."""
    values = value if isinstance(value, list) else [value]
    kinds = {_kind_of(v) for v in values}
    why: str | None = None
    if op in ("!=", "not_in"):
        pass
    elif known.kind == "list" or op == "contains":
        if (known.kind in ("list", "string")) != (op == "contains"):
            why = f"is a {known.kind}: '{op}' never holds on it"
    elif kinds != {known.kind}:
        why = f"is a {known.kind}, compared with a {', '.join(sorted(k for k in kinds if k))}"
    elif known.allowed is not None and op in ("==", "in"):
        if not any(v in known.allowed for v in values):
            why = f"takes only {', '.join(known.allowed)}"
    elif known.kind == "number":
        lo = -math.inf if known.minimum is None else known.minimum
        hi = math.inf if known.maximum is None else known.maximum
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        if not any(_may_hold(op, n, lo, hi) for n in numbers):
            why = f"ranges over [{_num(lo)}, {_num(hi)}]"
    return why


def _may_hold(op: str, value: float, lo: float, hi: float) -> bool:
    if op in ("==", "in"):
        return lo <= value <= hi
    if op == "<":
        return lo < value
    if op == "<=":
        return lo <= value
    if op == ">":
        return hi > value
    if op == ">=":
        return hi >= value
    return True


def _kind_of(value: Scalar | None) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else ""


def _num(value: float) -> str:
    return f"{value:g}"


def _texts(rule: Rule) -> Iterator[tuple[Location, str]]:
    card = rule.card
    available = _attributes(rule)
    texts = {
        ("card", "title"): (card.title.zh_cn, card.title.en),
        ("card", "body"): (card.body.zh_cn, card.body.en),
    }
    for loc, (zh, en) in texts.items():
        zh_names, en_names = set(_PLACEHOLDER.findall(zh)), set(_PLACEHOLDER.findall(en))
        if zh_names != en_names:
            yield (
                loc,
                (
                    f"the locales fill different placeholders: zh-CN {sorted(zh_names)}, "
                    f"en {sorted(en_names)}"
                ),
            )
    if available is None:
        return
    templates = {**{loc: " ".join(pair) for loc, pair in texts.items()}, ("card", "key"): card.key}
    for loc, template in templates.items():
        for name in dict.fromkeys(_PLACEHOLDER.findall(template)):
            if name not in available:
                yield (
                    loc,
                    (
                        f"{{{name}}} is not filled by {_trigger_name(rule)}: the driver would see "
                        f"it as is (it fills: {', '.join(sorted(available))})"
                    ),
                )


def _rollout(rule: Rule) -> Iterator[tuple[Location, str]]:
    if rule.targeting.rollout_percent == 0:
        yield ("targeting", "rollout_percent"), "rolled out to 0 % of the fleet: no car fires it"


def _window(rule: Rule, caps: Capabilities) -> Iterator[tuple[Location, str]]:
    if caps.now is not None and rule.valid_until is not None and rule.valid_until <= caps.now:
        when = datetime.fromtimestamp(rule.valid_until, UTC).strftime("%Y-%m-%d %H:%M UTC")
        yield ("valid_until",), f"expired on {when}: the rule never fires"


def _caps(rule: Rule, caps: Capabilities) -> Iterator[tuple[Location, str]]:
    per_day = rule.caps.per_day
    if per_day is None:
        return
    where: Location = ("caps", "per_day")
    total = rule.caps.total
    if total is not None and per_day > total:
        yield where, f"per_day {per_day} is never reached: total is {total}"
    kind_cap = caps.daily_caps.get(rule.card.kind)
    if kind_cap is not None and per_day > kind_cap:
        yield (
            where,
            (
                f"per_day {per_day} is never reached: the policy shows at most {kind_cap} "
                f"{rule.card.kind} cards a day"
            ),
        )
    trigger = rule.trigger
    if isinstance(trigger, TimeTrigger) and per_day > 1:
        yield where, f"per_day {per_day} is never reached: a time trigger fires once a day"
    if isinstance(trigger, SignalTrigger) and trigger.min_interval_s > 0:
        most = math.floor(DAY / trigger.min_interval_s) + 1
        if per_day > most:
            yield (
                where,
                (
                    f"per_day {per_day} is never reached: min_interval_s "
                    f"{_num(trigger.min_interval_s)} lets it fire at most {most} "
                    f"time{'s' * (most != 1)} a day"
                ),
            )


# -- rules together ------------------------------------------------------------------------


def _conflicts(
    rules: Sequence[Rule], ours: Mapping[str, int], caps: Capabilities
) -> Iterator[Finding]:
    """Pairs that fire on one trigger into one card, and rules a kind's cap shadows."""
    by_trigger: dict[str, list[Rule]] = {}
    for rule in rules:
        by_trigger.setdefault(_trigger_name(rule), []).append(rule)
    for trigger, group in by_trigger.items():
        for first, second in combinations(group, 2):
            if first.id not in ours and second.id not in ours:
                continue  # the built-in rules among themselves are not the author's
            if first.card.key == second.card.key and not _exclusive(first, second):
                mine = first if first.id in ours else second
                other = second if mine is first else first
                yield Finding(("rules", ours[mine.id], "card", "key"), (
                    f"{mine.id} and {other.id} both fire on {trigger} into the card "
                    f"{mine.card.key!r}: whichever comes second replaces the other"
                ))  # fmt: skip
        yield from _shadowed(trigger, group, ours, caps)


def _shadowed(
    trigger: str, group: Sequence[Rule], ours: Mapping[str, int], caps: Capabilities
) -> Iterator[Finding]:
    by_kind: dict[str, list[Rule]] = {}
    for rule in group:
        by_kind.setdefault(rule.card.kind, []).append(rule)
    for kind, rules in by_kind.items():
        cap = caps.daily_caps.get(kind)
        if cap is None or len(rules) <= cap:
            continue
        ordered = sorted(rules, key=lambda r: -r.card.priority)
        for index, rule in enumerate(ordered[cap:], start=cap):
            ahead = [r for r in ordered[:index] if not _exclusive(r, rule)]
            if rule.id in ours and len(ahead) >= cap:
                yield Finding(("rules", ours[rule.id]), (
                    f"{rule.id} is shadowed: {', '.join(r.id for r in ahead)} fire on "
                    f"{trigger} with a higher priority, and the policy shows at most {cap} "
                    f"{kind} cards a day"
                ))  # fmt: skip


def _exclusive(first: Rule, second: Rule) -> bool:
    """Whether the two rules can never fire together (conditions, targeting, windows)."""
    if _disjoint_targets(first, second) or _disjoint_windows(first, second):
        return True
    mine, theirs = _required(first.conditions), _required(second.conditions)
    return any(_disjoint(a, b) for a in mine for b in theirs if a.fact == b.fact)


def _disjoint_targets(first: Rule, second: Rule) -> bool:
    for name in ("models", "markets", "tiers"):
        mine, theirs = getattr(first.targeting, name), getattr(second.targeting, name)
        if mine is not None and theirs is not None and not set(mine) & set(theirs):
            return True
    return False


def _disjoint_windows(first: Rule, second: Rule) -> bool:
    start = max(first.valid_from or -math.inf, second.valid_from or -math.inf)
    end = min(first.valid_until or math.inf, second.valid_until or math.inf)
    return start >= end


def _required(condition: Condition | None) -> list[Comparison]:
    """The comparisons that must all hold for ``condition`` to hold."""
    if isinstance(condition, Comparison):
        return [condition]
    if isinstance(condition, AllOf):
        return [c for child in condition.all for c in _required(child)]
    return []


def _disjoint(first: Comparison, second: Comparison) -> bool:
    """Whether no value satisfies both comparisons of one fact."""
    for fixed, other in ((_values(first), second), (_values(second), first)):
        if fixed is not None:
            return not any(compare(value, other.op, other.value) for value in fixed)
    low_a, high_a = _interval(first)
    low_b, high_b = _interval(second)
    return max(low_a, low_b) > min(high_a, high_b) or (
        max(low_a, low_b) == min(high_a, high_b) and not _closed_at(first, second)
    )


def _values(comparison: Comparison) -> frozenset[Scalar] | None:
    if comparison.op == "==" and not isinstance(comparison.value, list | None):
        return frozenset({comparison.value})
    if comparison.op == "in" and isinstance(comparison.value, list):
        return frozenset(comparison.value)
    return None


def _interval(comparison: Comparison) -> tuple[float, float]:
    value = comparison.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return -math.inf, math.inf
    number = float(value)
    return {
        "<": (-math.inf, number), "<=": (-math.inf, number),
        ">": (number, math.inf), ">=": (number, math.inf),
    }.get(comparison.op, (-math.inf, math.inf))  # fmt: skip


def _closed_at(first: Comparison, second: Comparison) -> bool:
    """Whether both intervals include the one point where they touch."""
    return first.op in ("<=", ">=") and second.op in ("<=", ">=")


# -- triggers ------------------------------------------------------------------------------


def _is_event(rule: Rule, name: str) -> bool:
    return isinstance(rule.trigger, EventTrigger) and rule.trigger.event == name


def _trigger_name(rule: Rule) -> str:
    trigger = rule.trigger
    if isinstance(trigger, EventTrigger):
        return f"event {trigger.event}"
    if isinstance(trigger, SignalTrigger):
        return f"signal {trigger.signal.path}"
    return f"time {trigger.time_of_day}"


def _attributes(rule: Rule) -> frozenset[str] | None:
    """What the rule's trigger fills in (with ``rule_id``)."""
    trigger = rule.trigger
    if isinstance(trigger, EventTrigger):
        return EVENT_ATTRIBUTES[trigger.event] | {"rule_id"}
    if isinstance(trigger, SignalTrigger):
        return SIGNAL_ATTRIBUTES | {"rule_id"}
    return frozenset({"rule_id"})
