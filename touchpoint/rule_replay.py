"""A rule set replayed over drives: the cards the real agent would post and show.

Which cards, when, and what held each one back.

The agent is the daemon's own (:class:`~agent.core.Agent`: its engines, rules and card
policy), fed the signal updates the real signal layer makes of a recording or of the
simulator's scenarios, on a clock that starts where the author says (a recording's
timestamps may count from the ECU's boot). There is no D-Bus and no cloud: nobody taps,
so a card stays until it expires, a rule closes it or a newer one replaces it. Every
consent is granted, so every card event is seen.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.benefits import Wallet
from agent.cards import CardState
from agent.clock import TimeSource
from agent.consent import CONSENTABLE
from agent.context import AgentConfig
from agent.core import Agent, Output
from agent.fault_engine import default_catalogue
from agent.ids import IdFactory
from agent.plan import ServiceHistory, default_plan
from agent.rule_model import RuleSetDocument, builtin_rules
from can_signals.update import SignalUpdate

#: Updates closer together than this are one input, as the daemon's group commit does.
BATCH_S: Final = 0.1
#: How often time passes for the agent without an update (its tick).
TICK_S: Final = 1.0
#: The replay's monotonic clock starts here (any value: only differences count).
MONO_BASE: Final = 1_000.0


@dataclass(slots=True)
class CardLife:
    """One card of one rule, from posted to closed (or the end of the drives)."""

    rule: str
    key: str
    kind: str
    posted: float
    posted_km: float | None
    posted_parked: bool
    updates: int = 0
    shown: float | None = None
    shown_km: float | None = None
    ended: float | None = None
    end: str = ""
    #: Seconds held back, by why (see :data:`agent.policy.HOLD_REASONS`).
    held_s: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class RuleSummary:
    """What one rule (id@version) did over the drives."""

    rule: str
    posted: int = 0
    updated: int = 0
    shown: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    held_s: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Replay:
    """The result: every card's life, per rule, and the drives' span."""

    start: float
    end: float
    cards: list[CardLife]
    rules: dict[str, RuleSummary]
    #: (start, end) of the stretches the car was driving.
    driving: list[tuple[float, float]]
    updates: int


def replay(
    updates: Sequence[SignalUpdate],
    *,
    start: float,
    rules: RuleSetDocument | None = None,
    wallet: Wallet | None = None,
    history: ServiceHistory | None = None,
    vehicle_id: str | None = None,
) -> Replay:
    """Run the agent over ``updates`` (in time order), the first one at ``start``.

    Without ``vehicle_id`` the car is in every staged rollout (the rules' shares are
    ignored); with one, it is in those that would pick that car.
    """
    if rules is not None and vehicle_id is None:
        rules = _everyone(rules)
    agent = Agent(
        AgentConfig(vehicle_id=vehicle_id or ""),
        boot_id="replay",
        ids=IdFactory(random.Random(0).getrandbits),  # noqa: S311 - ids, reproducible
        plan=default_plan(),
        catalogue=default_catalogue(),
        builtin_rules=builtin_rules(),
    )
    run = _Run(agent)
    origin = updates[0].timestamp if updates else 0.0
    wall = start
    mono = MONO_BASE
    run.feed(agent.on_time(TimeSource.CLOUD, start, wall, mono))
    for category in CONSENTABLE:
        run.feed(agent.set_consent(category, granted=True, valid_for=None, wall=wall,
                                   monotonic=mono))  # fmt: skip
    if history is not None:
        run.feed(agent.set_history(history, wall, mono))
    if wallet is not None:
        run.feed(agent.set_wallet(wallet, wall, mono))
    if rules is not None:
        run.feed(agent.set_rules(rules, wall, mono))
    next_tick = mono + TICK_S
    for batch in _batches(updates):
        at = MONO_BASE + (batch[0].timestamp - origin)
        while next_tick <= at:  # time passes between updates
            run.step(agent.on_tick(start + next_tick - MONO_BASE, next_tick), next_tick)
            next_tick += TICK_S
        wall, mono = start + at - MONO_BASE, at
        run.step(agent.on_signals(batch, wall, mono), mono)
    run.finish(mono)
    summaries = run.summaries
    for ref in (r.ref for r in rules.rules) if rules is not None else ():
        summaries.setdefault(ref, RuleSummary(ref))  # those that never fired too
    for (ref, reason), count in agent.rules.skipped.items():
        summaries.setdefault(ref, RuleSummary(ref)).skipped[reason] += count
    for life in run.cards.values():
        summary = summaries.setdefault(life.rule, RuleSummary(life.rule))
        for reason, seconds in life.held_s.items():
            summary.held_s[reason] = summary.held_s.get(reason, 0.0) + seconds
    end = start + mono - MONO_BASE
    return Replay(start, end, list(run.cards.values()), dict(sorted(summaries.items())),
                  run.driving, len(updates))  # fmt: skip


def _everyone(rules: RuleSetDocument) -> RuleSetDocument:
    """The rules with their staged rollouts opened to every car."""
    opened = [
        r.model_copy(update={"targeting": r.targeting.model_copy(update={"rollout_percent": None})})
        for r in rules.rules
    ]
    return rules.model_copy(update={"rules": opened})


class _Run:
    """Follows the agent's card events and its policy's reasons, step by step."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.cards: dict[str, CardLife] = {}
        self.summaries: dict[str, RuleSummary] = {}
        self.driving: list[tuple[float, float]] = []
        self._driving_since: float | None = None
        self._last = MONO_BASE

    def feed(self, out: Output) -> None:
        self._events(out)

    def step(self, out: Output, mono: float) -> None:
        """One input at ``mono``: the time since the last counts as held for what waited."""
        elapsed = mono - self._last
        held = self.agent.cards.held_back
        for card in self.agent.cards.cards:
            life = self.cards.get(card.id)
            reason = held.get(card.id)
            if life is not None and reason is not None and card.state is not CardState.VISIBLE:
                life.held_s[reason] = life.held_s.get(reason, 0.0) + elapsed
        self._last = mono
        self._events(out)
        driving = self.agent.vehicle.driving
        wall = self._wall(mono)
        if driving and self._driving_since is None:
            self._driving_since = wall
        elif not driving and self._driving_since is not None:
            self.driving.append((self._driving_since, wall))
            self._driving_since = None

    def finish(self, mono: float) -> None:
        self.step(Output(), mono)
        if self._driving_since is not None:
            self.driving.append((self._driving_since, self._wall(mono)))

    def _wall(self, mono: float) -> float:
        return self.agent.clock.read(0.0, mono).wall

    def _events(self, out: Output) -> None:
        for event in out.events:
            if not event.type.startswith("card."):
                continue
            payload = event.payload
            card_id, rule = str(payload.get("card_id", "")), str(payload.get("rule", ""))
            summary = self.summaries.setdefault(rule, RuleSummary(rule))
            life = self.cards.get(card_id)
            if event.type == "card.created":
                summary.posted += 1
                self.cards[card_id] = CardLife(
                    rule, str(payload.get("key", "")), str(payload.get("kind", "")).lower(),
                    event.time, self._km(), not self.agent.vehicle.driving,
                )  # fmt: skip
            elif event.type == "card.suppressed":
                summary.suppressed[str(payload.get("reason", ""))] += 1
            elif life is None:
                continue
            elif event.type == "card.updated":
                summary.updated += 1
                life.updates += 1
            elif event.type == "card.displayed" and life.shown is None:
                summary.shown += 1
                life.shown, life.shown_km = event.time, self._km()
            elif event.type in ("card.expired", "card.closed", "card.dismissed"):
                life.ended = event.time
                life.end = str(payload.get("reason", event.type.removeprefix("card.")))

    def _km(self) -> float | None:
        odometer = self.agent.vehicle.odometer_m
        return None if odometer is None else odometer / 1000


def _batches(updates: Iterable[SignalUpdate]) -> Iterator[list[SignalUpdate]]:
    batch: list[SignalUpdate] = []
    for update in updates:
        if batch and update.timestamp - batch[0].timestamp >= BATCH_S:
            yield batch
            batch = []
        batch.append(update)
    if batch:
        yield batch


# -- where the updates come from -------------------------------------------------------------


def updates_from_logs(
    logs: Sequence[Path], mapping: Path, dbcs: Sequence[tuple[str | None, str]], vss: Path | None
) -> list[SignalUpdate]:
    """The signal layer's updates of recorded logs (one after the other, in time order).

    Each log is played as the daemon's replay plays it (malformed lines skipped and
    logged, a corrupt binary log kept up to the damage).

    Raises:
        SourceError: A log that cannot be read at all.
    """
    from can_signals.binding import bind_files  # noqa: PLC0415 - cantools only here
    from can_signals.processor import FrameProcessor  # noqa: PLC0415
    from can_signals.sources import Replay  # noqa: PLC0415

    binding = bind_files(mapping, dbcs, vss)
    updates: list[SignalUpdate] = []
    offset = 0.0
    for log in logs:
        first = len(updates)
        replay = Replay(log, FrameProcessor(binding, updates.append), speed=0)
        replay.check()
        replay.play()
        # The next log continues where this one ended, whatever its own clock says.
        if first < len(updates):
            shift = offset - updates[first].timestamp
            updates[first:] = [_shifted(u, shift) for u in updates[first:]]
            offset = updates[-1].timestamp + 1.0
    return updates


def updates_from_scenarios(names: Sequence[str], start: float) -> list[SignalUpdate]:
    """The simulator's reference car through ``names``, one after the other, from ``start``.

    Each scenario continues where the last one ended (odometer and clock), and the
    simulated GNSS receiver tells the same time as the replay's clock.
    """
    from can_signals.binding import bind_files  # noqa: PLC0415
    from can_signals.processor import FrameProcessor  # noqa: PLC0415
    from can_signals.simulator import chained_timeline, reference_files  # noqa: PLC0415

    files = reference_files()
    binding = bind_files(files.mapping, [(None, str(files.dbc))])
    updates: list[SignalUpdate] = []
    listener = FrameProcessor(binding, updates.append).bus("can0")
    for _, tick in chained_timeline(names, utc_start_s=int(start)):
        for frame in tick.frames:
            listener(frame.message)
    return updates


def _shifted(update: SignalUpdate, seconds: float) -> SignalUpdate:
    return dataclasses.replace(update, timestamp=update.timestamp + seconds)
