"""The agent's ports (:mod:`agent.ports`) implemented over a running agent.

Each input goes through :meth:`AgentRunner.apply`: it runs on the event loop and returns
once its output is durable. Queries read the core directly; the outbox is read and
changed in the store's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from agent.booking import BookingStatus, Slot
from agent.cards import Card, CloseReason, Text
from agent.clock import TimeSource
from agent.consent import Category, Grant
from agent.ports import CardBoard, CloudHost, OutboxPort, Taken, TimeBounds
from agent.store.store import Store
from touchpoint.runner import AgentRunner

Wipe = Callable[..., Coroutine[Any, Any, None]]


class HmiService(CardBoard):
    """The HMI bridge's view of the agent (:class:`agent.ports.CardBoard`).

    Args:
        runner: The agent's commit path.
        wipe: Deletes the driver's data (the daemon's; it empties the store too).
    """

    def __init__(self, runner: AgentRunner, wipe: Wipe, time_zone: str) -> None:
        self._runner = runner
        self._wipe = wipe
        self._time_zone = time_zone

    @property
    def shown(self) -> Sequence[Card]:
        """The cards on screen as committed."""
        return self._runner.shown

    @property
    def driving(self) -> bool:
        """Whether the car was driving as of the last commit shown."""
        return self._runner.driving

    @property
    def waiting(self) -> int:
        """Cards held back by the limit on cards at once, as committed."""
        return self._runner.waiting

    @property
    def max_visible(self) -> int:
        """Cards on screen at once, at most."""
        return self._runner.agent.config.policy.max_visible

    @property
    def time_zone(self) -> str:
        """The car's time zone (``[time] zone``)."""
        return self._time_zone

    def booking_slots(self, card_id: str) -> tuple[Slot, ...] | None:
        """The slots offered for a card's booking."""
        return self._runner.agent.booking_slots(card_id)

    def consents(self) -> Mapping[Category, Grant]:
        """The driver's consent per category, dated for a person to read.

        A grant made before the clock was trusted is dated internally by the clock's
        floor (docs/time.md); shown, it is moved onto the clock's current estimate.
        """
        runner = self._runner
        now = runner.agent.clock.read(runner.wall(), runner.monotonic())
        skew = now.wall - now.floor
        return {
            category: grant if grant.time_trusted else grant.shown_with(skew)
            for category, grant in runner.agent.consent.grants.items()
        }

    async def invoke_action(self, card_id: str, key: str, options: Mapping[str, object]) -> None:
        """The driver tapped an action."""
        await self._runner.apply(lambda a, w, m: a.on_action(card_id, key, options, w, m))

    async def dismiss(self, card_id: str, reason: CloseReason) -> None:
        """The driver dismissed a card."""
        await self._runner.apply(lambda a, w, m: a.on_dismiss(card_id, w, m, reason))

    async def report_shown(self, card_id: str) -> None:
        """The driver saw a card."""
        await self._runner.apply(lambda a, w, m: a.on_shown(card_id, w, m))

    async def request_booking(self, card_id: str, slot_id: str) -> None:
        """The driver picked a slot."""
        await self._runner.apply(lambda a, w, m: a.request_booking(card_id, slot_id, w, m))

    async def set_consent(
        self, category: Category, *, granted: bool, valid_for: float | None
    ) -> None:
        """The driver gave or withdrew consent."""
        await self._runner.apply(
            lambda a, w, m: a.set_consent(
                category, granted=granted, valid_for=valid_for, wall=w, monotonic=m
            )
        )

    async def wipe(self, *, owner_change: bool) -> None:
        """Delete the driver's data."""
        await self._wipe(owner_change=owner_change)


class StoreOutbox(OutboxPort):
    """The store's outbox, drained in the store's thread; consent is checked at send time."""

    def __init__(self, runner: AgentRunner) -> None:
        self._runner = runner

    async def take(self, max_events: int, max_bytes: int) -> Taken:
        """The next events to send (withdrawn categories' events are deleted unsent).

        Consent and expiries are judged on the agent's clock floor (docs/time.md): an
        untrusted system clock neither ends a consent nor expires an event early.
        """
        runner = self._runner
        floor = runner.agent.clock.read(runner.wall(), runner.monotonic()).floor
        consent = runner.agent.consent
        allowed = {c.value for c in Category if consent.allows(c, floor)}

        def take(store: Store) -> Taken:
            rows, withheld = store.take(max_events, max_bytes, allowed, floor)
            return Taken(rows, withheld, store.outbox_count)

        return await self._runner.in_store_thread(take)

    async def acknowledge(self, ids: Sequence[str]) -> int:
        """Delete acknowledged events; the backlog left."""

        def acknowledge(store: Store) -> int:
            store.acknowledge(ids)
            return store.outbox_count

        return await self._runner.in_store_thread(acknowledge)

    async def release(self, ids: Sequence[str], reason: str | None, *, count: bool) -> None:
        """Back to pending."""
        await self._runner.in_store_thread(lambda s: s.release(ids, reason, count=count))

    async def dead_letter(self, ids: Sequence[str], reason: str) -> None:
        """Move to the dead-letter table."""

        def dead_letter(store: Store) -> None:
            for event_id in ids:
                store.dead_letter(event_id, reason)

        await self._runner.in_store_thread(dead_letter)

    async def backlog(self) -> int:
        """Events in the outbox."""
        return await self._runner.in_store_thread(lambda s: s.outbox_count)


class CloudService(CloudHost):
    """Cloud sync's view of the agent (:class:`agent.ports.CloudHost`)."""

    def __init__(self, runner: AgentRunner) -> None:
        self._runner = runner
        self._outbox = StoreOutbox(runner)

    @property
    def outbox(self) -> OutboxPort:
        """The store's outbox."""
        return self._outbox

    def document_versions(self) -> Mapping[str, int]:
        """The version of each kind of document in effect."""
        return self._runner.agent.document_versions

    async def apply_document(self, kind: str, version: int, body: BaseModel) -> None:
        """A document takes effect."""
        await self._runner.apply(lambda a, w, m: a.apply_document(kind, version, body, w, m))

    async def reject_document(
        self, reason: str, *, kind: str | None, version: int | None, topic: str
    ) -> None:
        """Record a refused message."""
        await self._runner.apply(
            lambda a, w, m: a.reject_document(
                reason, kind=kind, version=version, topic=topic, wall=w, monotonic=m
            )
        )

    async def on_slots(self, request_id: str, slots: Sequence[Slot]) -> None:
        """Slots arrived."""
        await self._runner.apply(lambda a, w, m: a.on_slots(request_id, slots, w, m))

    async def on_booking_answer(
        self,
        request_id: str,
        status: BookingStatus,
        *,
        booking_id: str | None,
        reason: str | None,
        slot: Slot | None,
    ) -> None:
        """A booking was answered."""
        await self._runner.apply(
            lambda a, w, m: a.on_booking_answer(
                request_id, status, w, m, booking_id=booking_id, reason=reason, slot=slot
            )
        )

    def time_bounds(self) -> TimeBounds:
        """The agent's clock now: its floor, and the time if trusted."""
        runner = self._runner
        now = runner.agent.clock.read(runner.wall(), runner.monotonic())
        return TimeBounds(now.floor, now.wall if now.trusted else None)

    async def on_cloud_time(self, wall: float, monotonic: float) -> None:
        """The cloud's time, from the clock exchange."""
        await self._runner.apply(lambda a, w, _m: a.on_time(TimeSource.CLOUD, wall, w, monotonic))

    async def on_redemption_answer(
        self, request_id: str, *, accepted: bool, message: Text | None, code: str | None = None
    ) -> None:
        """A redemption was answered."""
        await self._runner.apply(
            lambda a, w, m: a.on_redemption_answer(
                request_id, accepted=accepted, wall=w, monotonic=m, message=message, code=code
            )
        )


__all__ = ["CloudService", "HmiService", "StoreOutbox"]
