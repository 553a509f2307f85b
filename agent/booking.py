"""Bookings and redemptions: requests to the cloud that survive restarts and offline periods.

Every request carries an idempotency key (its request id, a UUIDv7) that the cloud's
answer carries back; a repeated answer is ignored, so a request sent twice after a
reconnect books once. The requests themselves travel as outbox events (``request.*``),
which are never evicted.

Pure data and transitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from agent.cards import Text


class BookingStatus(StrEnum):
    """Where a booking flow stands."""

    SLOTS_REQUESTED = "slots_requested"
    SLOTS_OFFERED = "slots_offered"
    REQUESTED = "requested"
    CONFIRMED = "confirmed"
    DECLINED = "declined"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Slot:
    """An appointment the dealer offers."""

    id: str
    start: float
    dealer: Text | None = None


@dataclass(frozen=True, slots=True)
class Booking:
    """One booking flow, started from a card.

    Attributes:
        card_key: The card it was started from (``maintenance``, ``fault:P0301``).
        items: What the visit is for (item ids or DTCs).
        status: Where it stands.
        slots_request: The id of the slot request.
        slots: The slots offered.
        request_id: The id (idempotency key) of the booking request, once made.
        slot: The slot asked for.
        booking_id: The cloud's booking reference, once confirmed (personal: never in a
            D-Bus broadcast).
        reason: Why it was declined or cancelled.
        reminded: The reminder before the appointment was given.
        via: The card the driver last tapped for it (a "not confirmed" card, to retry).
        asked: When the pending request (slots or booking) went out, on this run's
            monotonic clock (``None``: not yet timed in this run).
        unanswered: The pending request got no answer in time: the card says so and
            offers a retry (an answer that comes later is still taken).
    """

    card_key: str
    items: tuple[str, ...]
    status: BookingStatus
    slots_request: str
    slots: tuple[Slot, ...] = ()
    request_id: str | None = None
    slot: Slot | None = None
    booking_id: str | None = None
    reason: str | None = None
    reminded: bool = False
    via: str | None = None
    #: Run-local (the monotonic clock restarts): not persisted, not part of equality.
    asked: float | None = field(default=None, compare=False)
    unanswered: bool = False

    @property
    def waiting(self) -> bool:
        """Whether a request of this flow waits for the cloud's answer."""
        return self.status in (BookingStatus.SLOTS_REQUESTED, BookingStatus.REQUESTED)

    @property
    def pending_request(self) -> str | None:
        """The id of the request waiting for an answer, if one is."""
        if self.status is BookingStatus.SLOTS_REQUESTED:
            return self.slots_request
        if self.status is BookingStatus.REQUESTED:
            return self.request_id
        return None

    def offered(self, slots: tuple[Slot, ...]) -> Booking:
        """The cloud offered slots."""
        return replace(self, status=BookingStatus.SLOTS_OFFERED, slots=slots, unanswered=False)

    def requested(self, request_id: str, slot: Slot, asked: float) -> Booking:
        """The driver picked a slot."""
        return replace(
            self,
            status=BookingStatus.REQUESTED,
            request_id=request_id,
            slot=slot,
            asked=asked,
            unanswered=False,
        )

    def answered(
        self, status: BookingStatus, booking_id: str | None, reason: str | None, slot: Slot | None
    ) -> Booking:
        """The cloud confirmed, declined or cancelled."""
        return replace(
            self,
            status=status,
            booking_id=booking_id,
            reason=reason,
            slot=slot or self.slot,
            unanswered=False,
        )


@dataclass(frozen=True, slots=True)
class Redemption:
    """A coupon redemption the driver asked for."""

    request_id: str
    coupon_id: str
    card_key: str
    #: When it went out, on this run's monotonic clock (``None``: not yet timed); run-local.
    asked: float | None = field(default=None, compare=False)
    #: No answer in time: the card says so and offers a retry (same request id).
    unanswered: bool = False
