"""The in-process agent the benchmarks drive, set up as a member's car in daily use.

The core reads no clock: the benchmarks pass each batch's wall time (the frames'
timestamps, which the simulator puts on a real calendar) and a monotonic reading that
advances with it, as the daemon does with its clocks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Final

from agent.benefits import Coupon, Wallet
from agent.clock import TimeSource
from agent.consent import Category
from agent.context import AgentConfig
from agent.core import Agent
from agent.events import Event
from agent.fault_engine import default_catalogue
from agent.ids import IdFactory
from agent.plan import DAY, LocalisedText, ServiceHistory, ServiceRecord, default_plan
from agent.rule_model import RuleSetDocument, builtin_rules
from bench.drive import recorded_drive
from bench.rulesets import cloud_rules
from can_signals.update import SignalUpdate

#: The monotonic clock's reading at the drive's first update (any value works).
MONOTONIC_START: Final = 1_000.0
#: The cloud rule count of the issue's target, and of the event mix the outbox stores.
TYPICAL_RULES: Final = 50


@dataclass(frozen=True, slots=True)
class Batch:
    """One call of ``Agent.on_signals``: the updates and the clock readings passed."""

    updates: Sequence[SignalUpdate]
    wall: float
    monotonic: float


def _wallet() -> Wallet:
    text = LocalisedText.model_validate({"zh-CN": "免费洗车一次", "en": "One free car wash"})
    coupon = Coupon(id="wash-2024-05", title=text, body=text, scenes=("charging_started",))
    return Wallet(version=3, tier="gold", points=2_400, coupons=(coupon,), dealer_id="d-021")


def bench_agent(rules: RuleSetDocument | None, start: float) -> Agent:
    """A member's car: consent to health, analytics and benefits, a trusted clock, a
    wallet, a service history (last service 200 days ago at 0 km), and ``rules`` active.
    """
    agent = Agent(
        AgentConfig(),
        boot_id="bench-boot",
        ids=IdFactory(random.Random(1).getrandbits),  # deterministic ids, as in the tests
        plan=default_plan(),
        catalogue=default_catalogue(),
        builtin_rules=builtin_rules(),
    )
    mono = MONOTONIC_START
    for category in (Category.VEHICLE_HEALTH, Category.USAGE_ANALYTICS, Category.MARKETING):
        agent.set_consent(category, granted=True, valid_for=None, wall=start, monotonic=mono)
    agent.on_time(TimeSource.CLOUD, start, start, mono)
    agent.set_wallet(_wallet(), start, mono)
    items = tuple(item.id for item in default_plan().items)
    record = ServiceRecord(items=items, odometer_km=0.0, time=start - 200 * DAY)
    agent.set_history(ServiceHistory(records=(record,)), start, mono)
    if rules is not None:
        agent.set_rules(rules, start, mono)
    return agent


def batched(updates: Sequence[SignalUpdate], size: int, start: float) -> list[Batch]:
    """Fixed-size batches (a loaded daemon, whose consumer falls behind)."""
    return [_batch(updates[i : i + size], start) for i in range(0, len(updates), size)]


def coalesced(updates: Sequence[SignalUpdate], window_s: float, start: float) -> list[Batch]:
    """The batches a daemon keeping up with a live bus gets: updates within ``window_s``.

    The pipeline's consumer gathers what arrives within a short window after a wake-up
    (``can_signals.pipeline.COALESCE_S``); at the car's own pace that is one or two
    updates, so the per-batch work is paid almost per update.
    """
    batches: list[Batch] = []
    first = 0
    for index in range(1, len(updates) + 1):
        if index == len(updates) or updates[index].timestamp - updates[first].timestamp > window_s:
            batches.append(_batch(updates[first:index], start))
            first = index
    return batches


def _batch(updates: Sequence[SignalUpdate], start: float) -> Batch:
    wall = updates[-1].timestamp
    return Batch(updates, wall, MONOTONIC_START + wall - start)


@cache
def drive_events() -> tuple[Event, ...]:
    """Every event the agent makes over the whole drive with the typical rule set.

    The outbox benchmarks store copies of these, so their rows have the sizes and the
    mix of types and priorities a real drive gives.
    """
    updates = recorded_drive().updates
    start = updates[0].timestamp
    agent = bench_agent(cloud_rules(TYPICAL_RULES, start), start)
    events: list[Event] = []
    for batch in batched(updates, 20, start):
        events += agent.on_signals(batch.updates, batch.wall, batch.monotonic).events
    return tuple(events)
