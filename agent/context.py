"""The core's narrow face: what the flows and reactions may read and do.

:mod:`agent.flows` (bookings, redemptions) and :mod:`agent.reactions` (maintenance,
faults, scenes, summaries) are parts of the core that :class:`~agent.core.Agent` calls.
They get this context instead of the agent: they read the state they decide on and act
through a few calls (record an event, raise an agent event for the rules, change a card,
mark a section to persist), never by writing the agent's fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent import maintenance as mnt
from agent import vehicle as veh
from agent.benefits import Wallet
from agent.cards import ArgValue, Card, CloseReason
from agent.clock import Now, TimeSource
from agent.consent import Category
from agent.events import Event, EventDraft, EventType, JsonValue, Priority
from agent.fault_engine import DtcCatalogue
from agent.plan import DAY, ServicePlan
from agent.policy import PolicyConfig
from agent.sections import Section


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The core's settings."""

    model: str = "touchpoint-ref"
    market: str = "CN"
    #: The vehicle's id (staged rollouts pick cars by it).
    vehicle_id: str = ""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    #: Remind the driver this long before a booked appointment.
    booking_reminder_s: float = DAY
    #: A request the cloud has not answered in this long ends on its card as unanswered.
    request_timeout_s: float = 120.0
    #: Snooze for cards outside the maintenance plan's own snooze settings.
    snooze_s: float = 3 * DAY
    snooze_km: float = 300.0


class CoreContext(Protocol):
    """What a part of the core may read and do (:class:`~agent.core.Agent` provides it)."""

    @property
    def config(self) -> AgentConfig:
        """The core's settings."""

    @property
    def boot_id(self) -> str:
        """This run's id: monotonic readings compare only within one."""

    @property
    def vehicle(self) -> veh.VehicleState:
        """The vehicle's state."""

    @property
    def plan(self) -> ServicePlan:
        """The service plan in effect."""

    @property
    def catalogue(self) -> DtcCatalogue:
        """The DTC catalogue in effect."""

    @property
    def wallet(self) -> Wallet | None:
        """The member's wallet, once the cloud sent it."""

    @property
    def maintenance(self) -> mnt.MaintenanceState:
        """Where each plan item stands."""

    def set_maintenance(self, state: mnt.MaintenanceState) -> None:
        """Replace the maintenance state (persisted with this input)."""

    def recheck_maintenance(self) -> None:
        """Assess the plan afresh at the next tick or odometer reading."""

    def trust_time(self, wall: float, monotonic: float, source: TimeSource) -> None:
        """A trusted source says it is ``wall`` at ``monotonic``."""

    def booked(self, card_key: str) -> bool:
        """Whether a booking made from that card is confirmed."""

    def card_by_key(self, key: str) -> Card | None:
        """The open card with ``key``."""

    def open_cards(self) -> Sequence[Card]:
        """Every open card (on screen or waiting)."""

    def update_card(self, card: Card, now: Now) -> None:
        """Store a changed open card and tell the HMI if it is on screen."""

    def close(self, card: Card, reason: CloseReason, now: Now) -> None:
        """Close a card for good."""

    def record(self, draft: EventDraft, now: Now) -> Event | None:
        """Stamp an event for the outbox, unless its category lacks consent."""

    def note(
        self,
        kind: EventType,
        category: Category,
        now: Now,
        priority: Priority,
        /,
        **payload: JsonValue,
    ) -> None:
        """Record an event of ``kind`` with ``payload``."""

    def agent_event(self, name: str, attrs: Mapping[str, ArgValue], now: Now) -> None:
        """Run the rules for an agent event."""

    def mark_dirty(self, section: Section) -> None:
        """Persist ``section`` with this input."""

    def withdraw_request(self, request_id: str) -> None:
        """Take the request out of the outbox with this input, if it is still unsent."""

    def new_id(self, now: Now) -> str:
        """A new UUIDv7."""
