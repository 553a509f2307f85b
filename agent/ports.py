"""The agent's ports: all that its adapters (D-Bus bridge, cloud sync) may see and do.

The adapters depend on these protocols, never on :class:`~agent.core.Agent` or the
store: the application (``touchpoint``) implements them over the running agent, where
every input is committed before it answers, and an adapter's test can implement them
with a fake.

- :class:`CardBoard`: the cards on screen as committed, and the driver's inputs.
- :class:`OutboxPort`: the events waiting to go to the cloud.
- :class:`CloudInbox`: the cloud's documents and answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from agent.booking import BookingStatus, Slot
from agent.cards import Card, CloseReason, Text
from agent.consent import Category, Grant
from agent.events import OutboxRow


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """What the agent knows of the time now: its floor and, if trusted, the time."""

    floor: float
    trusted: float | None = None


class CardBoard(Protocol):
    """What the HMI bridge shows and what it asks of the agent.

    Inputs return once their outcome is durable. Refusals raise
    :class:`~agent.errors.ActionError` (its ``code`` names the D-Bus error); any other
    :class:`~touchpoint.errors.TouchpointError` means the agent could not record it.
    """

    @property
    def shown(self) -> Sequence[Card]:
        """The cards on screen as of the last commit the bridge was told of."""

    @property
    def driving(self) -> bool:
        """Whether the car was driving as of that commit (the restrictions apply)."""

    @property
    def max_visible(self) -> int:
        """Cards on screen at once, at most."""

    @property
    def waiting(self) -> int:
        """Cards that could be on screen but for the limit, as of that commit."""

    @property
    def time_zone(self) -> str:
        """The car's time zone, an IANA name: every HMI renders times in it."""

    def booking_slots(self, card_id: str) -> tuple[Slot, ...] | None:
        """The slots offered for a card's booking; ``None`` until the cloud answers."""

    def consents(self) -> Mapping[Category, Grant]:
        """The driver's consent per category."""

    async def invoke_action(self, card_id: str, key: str, options: Mapping[str, object]) -> None:
        """The driver tapped an action."""

    async def dismiss(self, card_id: str, reason: CloseReason) -> None:
        """The driver dismissed a card, or the screen timed it out (``EXPIRED``)."""

    async def report_shown(self, card_id: str) -> None:
        """The driver saw a card."""

    async def request_booking(self, card_id: str, slot_id: str) -> None:
        """The driver picked a slot."""

    async def set_consent(
        self, category: Category, *, granted: bool, valid_for: float | None
    ) -> None:
        """The driver gave or withdrew consent, for ``valid_for`` seconds (``None``: no end)."""

    async def wipe(self, *, owner_change: bool) -> None:
        """Delete the driver's data (``owner_change``: everything personal)."""


@dataclass(frozen=True, slots=True)
class Taken:
    """What :meth:`OutboxPort.take` handed out.

    Attributes:
        rows: The events to send now, in order, marked in flight.
        withheld: Events deleted unsent because their consent was withdrawn.
        backlog: Events left in the outbox (pending or in flight).
    """

    rows: list[OutboxRow]
    withheld: int
    backlog: int


class OutboxPort(Protocol):
    """The outbox as cloud sync drains it (at-least-once: rows stay until acknowledged)."""

    async def take(self, max_events: int, max_bytes: int) -> Taken:
        """The next events to send, in priority then age order, within both limits."""

    async def acknowledge(self, ids: Sequence[str]) -> int:
        """The cloud has these events: delete them. Returns the backlog left."""

    async def release(self, ids: Sequence[str], reason: str | None, *, count: bool) -> None:
        """Send these again later (``count``: this send counts as an attempt)."""

    async def dead_letter(self, ids: Sequence[str], reason: str) -> None:
        """Give up on these events, keeping them with ``reason`` for the record."""

    async def backlog(self) -> int:
        """Events in the outbox (pending or in flight)."""


class CloudInbox(Protocol):
    """The cloud's documents and answers, as inputs to the agent."""

    def document_versions(self) -> Mapping[str, int]:
        """The version of each kind of document in effect."""

    async def apply_document(self, kind: str, version: int, body: BaseModel) -> None:
        """A document that passed the gate takes effect."""

    async def reject_document(
        self, reason: str, *, kind: str | None, version: int | None, topic: str
    ) -> None:
        """Record that a message from the cloud was refused."""

    async def on_slots(self, request_id: str, slots: Sequence[Slot]) -> None:
        """The cloud answered a slot request."""

    async def on_booking_answer(
        self,
        request_id: str,
        status: BookingStatus,
        *,
        booking_id: str | None,
        reason: str | None,
        slot: Slot | None,
    ) -> None:
        """The cloud confirmed, declined or cancelled a booking."""

    async def on_redemption_answer(
        self, request_id: str, *, accepted: bool, message: Text | None, code: str | None = None
    ) -> None:
        """The cloud redeemed a coupon (``code``: what to show at the partner), or refused."""

    async def on_cloud_time(self, wall: float, monotonic: float) -> None:
        """The cloud's time, measured: it was ``wall`` at ``monotonic``."""

    def time_bounds(self) -> TimeBounds:
        """What the agent knows of the time now (to judge the broker's certificate by)."""


class CloudHost(CloudInbox, Protocol):
    """What cloud sync needs: the outbox to drain and the inbox to feed."""

    @property
    def outbox(self) -> OutboxPort:
        """The outbox."""
