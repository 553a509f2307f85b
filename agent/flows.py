"""Booking and redemption flows: the driver's taps, the cloud's answers, and the cards between.

A flow is started from a card (Book on a maintenance or fault card, Redeem on a benefit
card), sends its requests as outbox events (``request.*``, never evicted, each with an
idempotency key), and moves on when the cloud answers, however long that takes: the
flow's state is persisted with the rest of the agent's, so a request made offline is
answered after a reconnect or a restart. An answer nobody is waiting for (a duplicate,
an unknown id) is ignored.

Every request ends where the driver sees it: while it waits, its card shows "pending"
and says what for; with no answer within ``request_timeout_s`` (on the monotonic clock,
timed again from a restart), the card says the dealer or the partner could not be
reached and that tapping again retries, an ``*.unanswered`` event records it, and a
request still unsent is taken out of the outbox (it would otherwise act days later,
unasked). A retry sends the same request id (the idempotency key); an answer that comes
after the timeout is still taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from agent import maintenance as mnt
from agent import request_notes as notes
from agent.booking import Booking, BookingStatus, Redemption, Slot
from agent.cards import ArgValue, Card, CardKind, CloseReason, Text
from agent.clock import Now
from agent.consent import Category
from agent.context import CoreContext
from agent.events import EventDraft, EventType, JsonValue, Priority
from agent.local_time import local_text
from agent.redemptions import Redemptions, send_request
from agent.sections import Section


class BookingInProgressError(ValueError):
    """A booking was already requested (or confirmed) for this card."""


class Flows:
    """Bookings and redemptions in progress; part of the agent core (pure)."""

    def __init__(
        self, ctx: CoreContext, bookings: Sequence[Booking], redemptions: Sequence[Redemption]
    ) -> None:
        self._ctx = ctx
        self._bookings: dict[str, Booking] = {b.card_key: b for b in bookings}
        self.redemptions = Redemptions(ctx, redemptions)

    def bookings_state(self) -> tuple[Booking, ...]:
        """The bookings to persist."""
        return tuple(self._bookings.values())

    def redemptions_state(self) -> tuple[Redemption, ...]:
        """The redemptions awaiting an answer, to persist."""
        return self.redemptions.state()

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
        """Book was tapped: ask the cloud for slots (once; a second tap reuses the flow).

        After a request went unanswered, the tap retries it with the same request id.
        """
        origin = self.origin_key(card)
        existing = self._bookings.get(origin)
        if existing is not None and existing.waiting and existing.unanswered:
            return self._retry(replace(existing, via=card.key), now)
        if existing is not None and existing.status in (
            BookingStatus.SLOTS_REQUESTED,
            BookingStatus.SLOTS_OFFERED,
            BookingStatus.REQUESTED,
        ):
            return existing
        # A retry keeps what the visit was for; a first booking takes it from the card.
        items = existing.items if existing is not None and existing.items else _items_of(card)
        request_id = self._new_id(now)
        booking = Booking(
            origin,
            items,
            BookingStatus.SLOTS_REQUESTED,
            request_id,
            via=card.key,
            asked=now.monotonic,
        )
        self._bookings[origin] = booking
        self._send_slots_request(booking, now)
        self._set_pending(booking, now, pending=True)
        self._ctx.mark_dirty(Section.FLOWS)
        return booking

    def _send_slots_request(self, booking: Booking, now: Now) -> None:
        self._request(
            EventType.REQUEST_BOOKING_SLOTS,
            booking.slots_request,
            now,
            card_key=booking.card_key,
            items=list(booking.items),
            odometer_km=self._odometer_km(),
            dealer_id=self._dealer_id(),
        )

    def _send_booking_request(self, booking: Booking, now: Now) -> None:
        assert booking.request_id is not None
        assert booking.slot is not None
        self._request(
            EventType.REQUEST_BOOKING,
            booking.request_id,
            now,
            card_key=booking.card_key,
            slot_id=booking.slot.id,
            items=list(booking.items),
            odometer_km=self._odometer_km(),
            dealer_id=self._dealer_id(),
        )

    def _retry(self, booking: Booking, now: Now) -> Booking:
        """Send an unanswered request again, same request id (the cloud drops a double)."""
        booking = replace(booking, asked=now.monotonic, unanswered=False)
        self._bookings[booking.card_key] = booking
        if booking.status is BookingStatus.SLOTS_REQUESTED:
            self._send_slots_request(booking, now)
        else:
            self._send_booking_request(booking, now)
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
        booking = replace(booking.requested(request_id, slot, now.monotonic), via=card.key)
        self._bookings[booking.card_key] = booking
        self._send_booking_request(booking, now)
        self._set_pending(booking, now, pending=True)
        self._ctx.mark_dirty(Section.FLOWS)
        return booking

    def _set_pending(
        self, booking: Booking, now: Now, *, pending: bool, note: Text | None = None
    ) -> None:
        """Show (or clear) "pending" on the card the driver tapped, and on the origin card.

        While pending, the card says it waits for the dealer; ``note`` says something
        else when it is not pending (no answer came).
        """
        note = notes.WAITING_FOR_DEALER if pending else note
        for key in dict.fromkeys((booking.via or booking.card_key, booking.card_key)):
            card = self._ctx.card_by_key(key)
            if card is not None and (card.pending, card.note) != (pending, note):
                self._ctx.update_card(replace(card, pending=pending, note=note), now)

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
        """The cloud confirmed, declined or cancelled a booking; ``False`` if unknown.

        An answer after the card said nobody answered is taken all the same.
        """
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
            if self._reminder_due(booking, now):
                # Booked within the reminder's lead (an appointment tomorrow): the
                # confirmation already says when; a reminder on top would stack.
                self._bookings[booking.card_key] = replace(booking, reminded=True)
            # The booking card (confirmed) replaces a "not confirmed" one in place.
            self._ctx.agent_event("booking_confirmed", attrs, now)
        else:
            self._set_pending(booking, now, pending=False)
            name = "booking_declined" if status is BookingStatus.DECLINED else "booking_cancelled"
            self._ctx.agent_event(name, attrs, now)
        return True

    def tick(self, now: Now) -> None:
        """Requests that waited too long; the reminder the day before an appointment."""
        self._time_out_bookings(now)
        self.redemptions.tick(now)
        if not now.trusted:
            return
        for booking in list(self._bookings.values()):
            slot = booking.slot
            if booking.status is not BookingStatus.CONFIRMED or slot is None:
                continue
            if now.wall >= slot.start + 86_400:
                # The visit is history, reminded or not (a reminded booking used to stay).
                del self._bookings[booking.card_key]
                self._ctx.mark_dirty(Section.FLOWS)
            elif not booking.reminded and self._reminder_due(booking, now):
                self._bookings[booking.card_key] = replace(booking, reminded=True)
                self._ctx.mark_dirty(Section.FLOWS)
                self._ctx.agent_event("booking_reminder", self._booking_attrs(booking), now)

    def _reminder_due(self, booking: Booking, now: Now) -> bool:
        slot = booking.slot
        lead = self._ctx.config.booking_reminder_s
        return now.trusted and slot is not None and slot.start - lead <= now.wall < slot.start

    def _time_out_bookings(self, now: Now) -> None:
        timeout = self._ctx.config.request_timeout_s
        for booking in list(self._bookings.values()):
            if not booking.waiting or booking.unanswered:
                continue
            if booking.asked is None:  # restored after a restart: timed from now
                self._bookings[booking.card_key] = replace(booking, asked=now.monotonic)
                continue
            waited = now.monotonic - booking.asked
            if waited < timeout:
                continue
            request_id = booking.pending_request
            assert request_id is not None
            self._bookings[booking.card_key] = replace(booking, unanswered=True)
            self._ctx.mark_dirty(Section.FLOWS)
            self._ctx.withdraw_request(request_id)
            stage = "slots" if booking.status is BookingStatus.SLOTS_REQUESTED else "booking"
            self._ctx.record(
                EventDraft(
                    EventType.BOOKING_UNANSWERED,
                    Category.SERVICE_REQUESTS,
                    {"request_id": request_id, "card_key": booking.card_key, "stage": stage,
                     "waited_s": round(waited, 1)},
                    Priority.HIGH,
                ),
                now,
            )  # fmt: skip
            self._set_pending(booking, now, pending=False, note=notes.DEALER_UNREACHABLE)

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
        """Redeem was tapped (see :meth:`Redemptions.redeem`)."""
        return self.redemptions.redeem(card, now)

    def on_redemption_answer(
        self,
        request_id: str,
        *,
        accepted: bool,
        now: Now,
        message: Text | None = None,
        code: str | None = None,
    ) -> bool:
        """The cloud redeemed or refused (see :meth:`Redemptions.on_answer`)."""
        return self.redemptions.on_answer(
            request_id, accepted=accepted, now=now, message=message, code=code
        )

    # -- helpers ------------------------------------------------------------------------

    def _request(self, kind: EventType, request_id: str, now: Now, **payload: JsonValue) -> None:
        send_request(self._ctx, kind, request_id, now, **payload)

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
    codes = card.args.get("codes")
    if card.kind is CardKind.FAULT and isinstance(codes, tuple) and codes:
        return tuple(str(c) for c in codes)
    code = card.args.get("code")
    if card.kind is CardKind.FAULT and isinstance(code, str):
        return (code,)
    return ()
