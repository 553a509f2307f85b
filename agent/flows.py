"""Booking and redemption flows: the driver's taps, the cloud's answers, and the cards between.

A flow is started from a card (Book on a maintenance or fault card, Redeem on a benefit
card), sends its requests as outbox events (``request.*``, never evicted, each with an
idempotency key), and moves on when the cloud answers, however long that takes: the
flow's state is persisted with the rest of the agent's, so a request made offline is
answered after a reconnect or a restart. An answer nobody is waiting for (a duplicate,
an unknown id) is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from agent import maintenance as mnt
from agent.booking import Booking, BookingStatus, Redemption, Slot
from agent.cards import ArgValue, Card, CardKind, CloseReason, Text
from agent.clock import Now
from agent.consent import Category
from agent.context import CoreContext
from agent.events import EventDraft, EventType, JsonValue, Priority
from agent.local_time import local_text
from agent.sections import Section

#: A request the cloud has not answered is not worth sending after this long.
REQUEST_TTL = 7 * 86_400.0


class BookingInProgressError(ValueError):
    """A booking was already requested (or confirmed) for this card."""


class Flows:
    """Bookings and redemptions in progress; part of the agent core (pure)."""

    def __init__(
        self, ctx: CoreContext, bookings: Sequence[Booking], redemptions: Sequence[Redemption]
    ) -> None:
        self._ctx = ctx
        self._bookings: dict[str, Booking] = {b.card_key: b for b in bookings}
        self._redemptions: dict[str, Redemption] = {r.request_id: r for r in redemptions}

    def bookings_state(self) -> tuple[Booking, ...]:
        """The bookings to persist."""
        return tuple(self._bookings.values())

    def redemptions_state(self) -> tuple[Redemption, ...]:
        """The redemptions awaiting an answer, to persist."""
        return tuple(self._redemptions.values())

    def booking_for(self, card_key: str) -> Booking | None:
        """The booking flow started from the card with ``card_key``."""
        return self._bookings.get(card_key)

    def booked(self, card_key: str) -> bool:
        """Whether a booking from that card is confirmed."""
        booking = self._bookings.get(card_key)
        return booking is not None and booking.status is BookingStatus.CONFIRMED

    # -- booking ------------------------------------------------------------------------

    @staticmethod
    def origin_key(card: Card) -> str:
        """The key of the card a booking is for.

        Book on a "booking not confirmed" card tries again for the card the booking was
        first made from (the maintenance card), not for the booking card itself.
        """
        origin = card.args.get("card_key")
        if card.kind is CardKind.BOOKING and isinstance(origin, str) and origin:
            return origin
        return card.key

    def start_booking(self, card: Card, now: Now) -> Booking:
        """Book was tapped: ask the cloud for slots (once; a second tap reuses the flow)."""
        origin = self.origin_key(card)
        existing = self._bookings.get(origin)
        if existing is not None and existing.status in (
            BookingStatus.SLOTS_REQUESTED,
            BookingStatus.SLOTS_OFFERED,
            BookingStatus.REQUESTED,
        ):
            return existing
        # A retry keeps what the visit was for; a first booking takes it from the card.
        items = existing.items if existing is not None and existing.items else _items_of(card)
        request_id = self._new_id(now)
        booking = Booking(origin, items, BookingStatus.SLOTS_REQUESTED, request_id, via=card.key)
        self._bookings[origin] = booking
        self._request(
            EventType.REQUEST_BOOKING_SLOTS,
            request_id,
            now,
            card_key=origin,
            items=list(items),
            odometer_km=self._odometer_km(),
            dealer_id=self._dealer_id(),
        )
        self._set_pending(booking, now, pending=True)
        self._ctx.mark_dirty(Section.FLOWS)
        return booking

    def slots(self, card: Card) -> tuple[Slot, ...] | None:
        """The slots offered for a card's booking; ``None`` while the cloud has not answered."""
        booking = self._bookings.get(self.origin_key(card))
        if booking is None or booking.status is BookingStatus.SLOTS_REQUESTED:
            return None
        return booking.slots

    def on_slots(self, request_id: str, slots: Sequence[Slot], now: Now) -> bool:
        """The cloud offered slots; ``False`` if nobody asked."""
        booking = next((b for b in self._bookings.values() if b.slots_request == request_id), None)
        if booking is None or booking.status is not BookingStatus.SLOTS_REQUESTED:
            return False
        booking = booking.offered(tuple(slots))
        self._bookings[booking.card_key] = booking
        self._set_pending(booking, now, pending=False)
        self._ctx.mark_dirty(Section.FLOWS)
        return True

    def request_booking(self, card: Card, slot_id: str, now: Now) -> Booking:
        """The driver picked a slot: request the booking.

        Raises:
            ValueError: No slots were offered for this card, or not this one.
        """
        booking = self._bookings.get(self.origin_key(card))
        if booking is not None and booking.status in (
            BookingStatus.REQUESTED,
            BookingStatus.CONFIRMED,
        ):
            raise BookingInProgressError(f"a booking is already {booking.status.value}")
        if booking is None or booking.status not in (
            BookingStatus.SLOTS_OFFERED,
            BookingStatus.DECLINED,
        ):
            raise ValueError("no slots were offered for this card yet")
        slot = next((s for s in booking.slots if s.id == slot_id), None)
        if slot is None:
            raise ValueError(f"slot {slot_id!r} was not offered")
        request_id = self._new_id(now)
        booking = replace(booking.requested(request_id, slot), via=card.key)
        self._bookings[booking.card_key] = booking
        self._request(
            EventType.REQUEST_BOOKING,
            request_id,
            now,
            card_key=booking.card_key,
            slot_id=slot.id,
            items=list(booking.items),
            odometer_km=self._odometer_km(),
            dealer_id=self._dealer_id(),
        )
        self._set_pending(booking, now, pending=True)
        self._ctx.mark_dirty(Section.FLOWS)
        return booking

    def _set_pending(self, booking: Booking, now: Now, *, pending: bool) -> None:
        """Show (or clear) "pending" on the card the driver tapped, and on the origin card."""
        for key in dict.fromkeys((booking.via or booking.card_key, booking.card_key)):
            card = self._ctx.card_by_key(key)
            if card is not None and card.pending != pending:
                self._ctx.update_card(replace(card, pending=pending), now)

    def on_booking_answer(
        self,
        request_id: str,
        status: BookingStatus,
        now: Now,
        *,
        booking_id: str | None = None,
        reason: str | None = None,
        slot: Slot | None = None,
    ) -> bool:
        """The cloud confirmed, declined or cancelled a booking; ``False`` if unknown."""
        booking = next((b for b in self._bookings.values() if b.request_id == request_id), None)
        if booking is None or booking.status is status:
            return False
        booking = booking.answered(status, booking_id, reason, slot)
        self._bookings[booking.card_key] = booking
        self._ctx.mark_dirty(Section.FLOWS)
        self._ctx.record(
            EventDraft(
                EventType(f"booking.{status.value}"),
                Category.SERVICE_REQUESTS,
                {"request_id": request_id, "card_key": booking.card_key},
                Priority.HIGH,
            ),
            now,
        )
        card = self._ctx.card_by_key(booking.card_key)
        attrs = self._booking_attrs(booking)
        if status is BookingStatus.CONFIRMED:
            if booking.card_key == "maintenance" and booking.slot is not None:
                # Persisted with the answer: else a restart forgets the booking.
                self._ctx.set_maintenance(mnt.on_booked(self._ctx.maintenance, booking.slot.start))
                self._ctx.recheck_maintenance()
            if card is not None:
                self._ctx.close(card, CloseReason.COMPLETED, now)
            # The booking card (confirmed) replaces a "not confirmed" one in place.
            self._ctx.agent_event("booking_confirmed", attrs, now)
        else:
            self._set_pending(booking, now, pending=False)
            name = "booking_declined" if status is BookingStatus.DECLINED else "booking_cancelled"
            self._ctx.agent_event(name, attrs, now)
        return True

    def tick(self, now: Now) -> None:
        """Remind the driver the day before a confirmed appointment."""
        if not now.trusted:
            return
        lead = self._ctx.config.booking_reminder_s
        for booking in list(self._bookings.values()):
            slot = booking.slot
            if booking.status is not BookingStatus.CONFIRMED or slot is None:
                continue
            if now.wall >= slot.start + 86_400:
                # The visit is history, reminded or not (a reminded booking used to stay).
                del self._bookings[booking.card_key]
                self._ctx.mark_dirty(Section.FLOWS)
            elif not booking.reminded and slot.start - lead <= now.wall < slot.start:
                self._bookings[booking.card_key] = replace(booking, reminded=True)
                self._ctx.mark_dirty(Section.FLOWS)
                self._ctx.agent_event("booking_reminder", self._booking_attrs(booking), now)

    def _booking_attrs(self, booking: Booking) -> dict[str, ArgValue]:
        slot = booking.slot
        when = "" if slot is None else local_text(slot.start, self._ctx.config.policy.zone)
        dealer = slot.dealer if slot is not None and slot.dealer else Text("经销商", "your dealer")
        return {
            "card_key": booking.card_key,
            "slot_time": when,
            "dealer": dealer,
            "booking_id": booking.booking_id or "",
            "reason": booking.reason or "",
        }

    # -- redemption ---------------------------------------------------------------------

    def redeem(self, card: Card, now: Now) -> Redemption | None:
        """Redeem was tapped: ask the cloud (once per card until it answers)."""
        if card.pending:
            return None
        coupon_id = str(card.args.get("coupon_id", ""))
        request_id = self._new_id(now)
        redemption = Redemption(request_id, coupon_id, card.key)
        self._redemptions[request_id] = redemption
        self._request(
            EventType.REQUEST_REDEMPTION, request_id, now, coupon_id=coupon_id, card_key=card.key
        )
        self._ctx.update_card(replace(card, pending=True), now)
        self._ctx.mark_dirty(Section.FLOWS)
        return redemption

    def on_redemption_answer(
        self, request_id: str, *, accepted: bool, now: Now, message: Text | None = None
    ) -> bool:
        """The cloud redeemed or refused; ``False`` if nobody asked (or already answered)."""
        redemption = self._redemptions.pop(request_id, None)
        if redemption is None:
            return False
        self._ctx.mark_dirty(Section.FLOWS)
        outcome = "confirmed" if accepted else "declined"
        self._ctx.record(
            EventDraft(
                EventType(f"redemption.{outcome}"),
                Category.SERVICE_REQUESTS,
                {"request_id": request_id, "coupon_id": redemption.coupon_id},
                Priority.HIGH,
            ),
            now,
        )
        card = self._ctx.card_by_key(redemption.card_key)
        if card is not None:
            if accepted:
                self._ctx.close(card, CloseReason.COMPLETED, now)
            else:
                body = message or Text("暂时无法领取，请稍后再试。", "Could not redeem right now.")
                self._ctx.update_card(replace(card, pending=False, body=body), now)
        self._ctx.agent_event(f"redemption_{outcome}", {"coupon_id": redemption.coupon_id}, now)
        return True

    # -- helpers ------------------------------------------------------------------------

    def _request(self, kind: EventType, request_id: str, now: Now, **payload: JsonValue) -> None:
        self._ctx.record(
            EventDraft(
                kind,
                Category.SERVICE_REQUESTS,
                payload,
                Priority.HIGH,
                ttl=REQUEST_TTL,
                request_id=request_id,
            ),
            now,
        )

    def _new_id(self, now: Now) -> str:
        return self._ctx.new_id(now)

    def _odometer_km(self) -> float | None:
        odometer = self._ctx.vehicle.odometer_m
        return None if odometer is None else round(odometer / 1000, 1)

    def _dealer_id(self) -> str | None:
        wallet = self._ctx.wallet
        return wallet.dealer_id if wallet else None


def _items_of(card: Card) -> tuple[str, ...]:
    ids = card.args.get("item_ids")
    if isinstance(ids, tuple):
        return tuple(str(i) for i in ids)
    code = card.args.get("code")
    if card.kind is CardKind.FAULT and isinstance(code, str):
        return (code,)
    return ()
