"""Agent-core fixtures: a car around an in-process :class:`~agent.core.Agent`.

The core reads no clock: :class:`Car` keeps the wall and monotonic readings it passes in,
starting at local noon (UTC+8, outside the default quiet hours), and keeps every output
so tests can look at the whole event stream.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import pytest

from agent import state_codec
from agent.booking import Slot
from agent.cards import ArgValue, Card, CardKind, ChangeType
from agent.clock import Now, TimeSource
from agent.consent import Category
from agent.context import AgentConfig
from agent.core import Agent, AgentState, Output
from agent.events import Event
from agent.fault_engine import default_catalogue
from agent.ids import IdFactory
from agent.plan import DAY, ServiceHistory, ServicePlan, ServiceRecord, default_plan
from agent.rule_model import EVENT_ATTRIBUTES, RuleSetDocument, builtin_rules
from agent.signals import IGNITION, IS_CHARGING, SELECTED_GEAR, STATE_OF_CHARGE
from can_signals.catalogue import DTC_LIST, GEAR_DRIVE, GEAR_PARK, ODOMETER, SPEED
from can_signals.update import SignalUpdate, SignalValue

#: 2026-05-28 12:00 local time (UTC+8): outside the default quiet hours (22:00-07:00).
T0: Final = 1_779_940_800.0
HOUR: Final = 3600.0

__all__ = [
    "DAY",
    "DTC_LIST",
    "HOUR",
    "IGNITION",
    "IS_CHARGING",
    "ODOMETER",
    "SPEED",
    "STATE_OF_CHARGE",
    "T0",
    "Car",
    "make_agent",
    "upd",
]


def upd(path: str, value: SignalValue | None) -> SignalUpdate:
    """A signal update as the signal layer hands it over."""
    return SignalUpdate(path, value, None, 0.0, "can0")


def make_agent(
    config: AgentConfig | None = None,
    *,
    state: AgentState | None = None,
    plan: ServicePlan | None = None,
    rules: RuleSetDocument | None = None,
    seed: int = 1,
    boot_id: str = "boot-1",
) -> Agent:
    """An agent with the shipped plan, catalogue and rules (deterministic ids)."""
    return Agent(
        config or AgentConfig(),
        boot_id=boot_id,
        ids=IdFactory(random.Random(seed).getrandbits),
        plan=plan or default_plan(),
        catalogue=default_catalogue(),
        builtin_rules=rules or builtin_rules(),
        state=state,
    )


@dataclass
class Car:
    """An agent, the clock readings fed to it, and everything it produced."""

    agent: Agent
    wall: float = T0
    mono: float = 1000.0
    outputs: list[Output] = field(default_factory=list)
    #: The state sections as the daemon would have stored them (only dirty ones written).
    stored: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stored = state_codec.encode(self.agent)

    # -- time ---------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let time pass (both clocks)."""
        self.wall += seconds
        self.mono += seconds

    def _keep(self, out: Output) -> Output:
        self.outputs.append(out)
        if out.dirty:
            self.stored.update(state_codec.encode(self.agent, out.dirty))
        return out

    # -- inputs -------------------------------------------------------------------------

    def send(self, *pairs: tuple[str, SignalValue | None]) -> Output:
        """Signal updates, all at the current time."""
        return self._keep(
            self.agent.on_signals([upd(p, v) for p, v in pairs], self.wall, self.mono)
        )

    def tick(self, seconds: float = 0.0) -> Output:
        """Let time pass, then tick."""
        self.advance(seconds)
        return self._keep(self.agent.on_tick(self.wall, self.mono))

    def park(self) -> Output:
        """Stop, lever in Park, ignition on."""
        return self.send((IGNITION, "ON"), (SPEED, 0.0), (SELECTED_GEAR, GEAR_PARK))

    def drive(self, speed: float = 60.0) -> Output:
        """Ignition on, lever in Drive, moving."""
        return self.send((IGNITION, "ON"), (SELECTED_GEAR, GEAR_DRIVE), (SPEED, speed))

    def odometer_km(self, km: float) -> Output:
        """A new odometer reading."""
        return self.send((ODOMETER, round(km * 1000)))

    def dtcs(self, *codes: str) -> Output:
        """A new DTCList."""
        return self.send((DTC_LIST, tuple(codes)))

    def trust_clock(self) -> Output:
        """The cloud tells the time: the car's wall clock becomes trusted."""
        return self._keep(self.agent.on_time(TimeSource.CLOUD, self.wall, self.wall, self.mono))

    def consent(
        self, *categories: Category, granted: bool = True, valid_for: float | None = None
    ) -> None:
        """Grant (or withdraw) consent for categories."""
        for category in categories:
            self._keep(
                self.agent.set_consent(
                    category,
                    granted=granted,
                    valid_for=valid_for,
                    wall=self.wall,
                    monotonic=self.mono,
                )
            )

    def history(self, *records: ServiceRecord) -> Output:
        """The cloud's service history."""
        return self._keep(
            self.agent.set_history(ServiceHistory(records=records), self.wall, self.mono)
        )

    def tap(self, card: Card, key: str) -> Output:
        """The driver taps an action of a visible card."""
        return self._keep(self.agent.on_action(card.id, key, {}, self.wall, self.mono))

    def dismiss(self, card: Card) -> Output:
        """The driver swipes a card away."""
        return self._keep(self.agent.on_dismiss(card.id, self.wall, self.mono))

    def slots(self, request_id: str, *slots: Slot) -> Output:
        """The cloud offers slots."""
        return self._keep(self.agent.on_slots(request_id, slots, self.wall, self.mono))

    def keep(self, out: Output) -> Output:
        """Record an output of a call made directly on the agent."""
        return self._keep(out)

    # -- looking ------------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        """Every event produced so far."""
        return [e for out in self.outputs for e in out.events]

    def events_of(self, kind: str) -> list[Event]:
        """Every event of a type, in order."""
        return [e for e in self.events if e.type == kind]

    def visible(self, kind: CardKind | None = None) -> list[Card]:
        """The cards on screen now (of a kind)."""
        return [c for c in self.agent.cards.visible if kind is None or c.kind is kind]

    def card(self, key: str) -> Card | None:
        """The open card with ``key``."""
        return self.agent.cards.by_key(key)

    def restarted(self, seed: int = 2) -> Car:
        """A new process reading what the daemon would have stored."""
        agent = make_agent(
            self.agent.config,
            state=state_codec.decode(self.stored),
            seed=seed,
            boot_id=f"boot-{seed}",
        )
        return Car(agent, wall=self.wall + 1, mono=5.0)


def added(outs: Iterable[Output]) -> list[Card]:
    """Cards that appeared on screen in these outputs."""
    return [c.card for out in outs for c in out.changes if c.type is ChangeType.ADDED]


def all_consent(car: Car) -> None:
    """Grant every consentable category but location."""
    car.consent(Category.VEHICLE_HEALTH, Category.USAGE_ANALYTICS, Category.MARKETING)


def serviced_at(
    km: float, when: float | None, items: tuple[str, ...] | None = None
) -> ServiceRecord:
    """A cloud service record of every plan item (or ``items``)."""
    ids = items or tuple(i.id for i in default_plan().items)
    return ServiceRecord(items=ids, odometer_km=km, time=when)


@pytest.fixture
def car() -> Car:
    """A parked car with every consent but location, serviced at 0 km 100 days ago."""
    car = Car(make_agent())
    all_consent(car)
    car.history(serviced_at(0, T0 - 100 * DAY))
    car.park()
    return car


@pytest.fixture
def no_touchpoint_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``TOUCHPOINT_*`` variable of the machine running the tests reaches the settings."""
    for name in list(os.environ):
        if name.startswith("TOUCHPOINT_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def events_carry_only_declared_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every agent event raised in these tests carries only the attributes rule authors
    are told of (``EVENT_ATTRIBUTES``: what ``touchpoint rules check`` checks
    placeholders and ``event.*`` facts against)."""
    raise_event = Agent.agent_event

    def checked(self: Agent, name: str, attrs: Mapping[str, ArgValue], now: Now) -> None:
        undeclared = sorted(set(attrs) - EVENT_ATTRIBUTES[name])
        assert not undeclared, f"agent event {name} carries undeclared attributes {undeclared}"
        raise_event(self, name, attrs, now)

    monkeypatch.setattr(Agent, "agent_event", checked)
