"""Coupon redemptions: Redeem on a benefit card, the cloud's answer, and the card after.

The car never spends value by itself: Redeem is a request to the cloud with an
idempotency key, and until the cloud answers the card shows "pending". Accepted, the
card becomes the driver's confirmation to show at the partner (the voucher code in its
body, a private property: read by a method call, never in a D-Bus broadcast); refused,
it says why. No answer within ``request_timeout_s``: the card says the partner could not
be reached, the request leaves the outbox if it is still there, and Redeem again retries
with the same request id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from agent import request_notes as notes
from agent.booking import Redemption
from agent.cards import Action, Card, Text
from agent.clock import Now
from agent.consent import Category
from agent.context import CoreContext
from agent.events import EventDraft, EventType, JsonValue, Priority
from agent.sections import Section


def send_request(
    ctx: CoreContext, kind: EventType, request_id: str, now: Now, **payload: JsonValue
) -> None:
    """Record a request for the cloud (never evicted; no expiry: its flow ends it)."""
    ctx.record(
        EventDraft(kind, Category.SERVICE_REQUESTS, payload, Priority.HIGH, request_id=request_id),
        now,
    )


class Redemptions:
    """Redemptions awaiting an answer; part of the agent core (pure)."""

    def __init__(self, ctx: CoreContext, redemptions: Sequence[Redemption]) -> None:
        self._ctx = ctx
        self._waiting: dict[str, Redemption] = {r.request_id: r for r in redemptions}

    def state(self) -> tuple[Redemption, ...]:
        """What to persist."""
        return tuple(self._waiting.values())

    def redeem(self, card: Card, now: Now) -> Redemption | None:
        """Redeem was tapped: ask the cloud (once per card until it answers, or retry)."""
        if card.pending:
            return None
        earlier = next(
            (r for r in self._waiting.values() if r.card_key == card.key and r.unanswered), None
        )
        if earlier is not None:
            redemption = replace(earlier, asked=now.monotonic, unanswered=False)  # a retry
        else:
            request_id = self._ctx.new_id(now)
            coupon_id = str(card.args.get("coupon_id", ""))
            redemption = Redemption(request_id, coupon_id, card.key, asked=now.monotonic)
        self._waiting[redemption.request_id] = redemption
        send_request(
            self._ctx, EventType.REQUEST_REDEMPTION, redemption.request_id, now,
            coupon_id=redemption.coupon_id, card_key=card.key,
        )  # fmt: skip
        self._ctx.update_card(replace(card, pending=True, note=notes.WAITING_FOR_PARTNER), now)
        self._ctx.mark_dirty(Section.FLOWS)
        return redemption

    def tick(self, now: Now) -> None:
        """Redemptions that waited too long: the card says so."""
        timeout = self._ctx.config.request_timeout_s
        for redemption in list(self._waiting.values()):
            if redemption.unanswered:
                continue
            if redemption.asked is None:  # restored after a restart: timed from now
                self._waiting[redemption.request_id] = replace(redemption, asked=now.monotonic)
                continue
            waited = now.monotonic - redemption.asked
            if waited < timeout:
                continue
            self._waiting[redemption.request_id] = replace(redemption, unanswered=True)
            self._ctx.mark_dirty(Section.FLOWS)
            self._ctx.withdraw_request(redemption.request_id)
            self._ctx.record(
                EventDraft(
                    EventType.REDEMPTION_UNANSWERED,
                    Category.SERVICE_REQUESTS,
                    {"request_id": redemption.request_id, "coupon_id": redemption.coupon_id,
                     "waited_s": round(waited, 1)},
                    Priority.HIGH,
                ),
                now,
            )  # fmt: skip
            card = self._ctx.card_by_key(redemption.card_key)
            if card is not None:
                note = notes.PARTNER_UNREACHABLE
                self._ctx.update_card(replace(card, pending=False, note=note), now)

    def on_answer(
        self,
        request_id: str,
        *,
        accepted: bool,
        now: Now,
        message: Text | None = None,
        code: str | None = None,
    ) -> bool:
        """The cloud redeemed or refused; ``False`` if nobody asked (or already answered)."""
        redemption = self._waiting.pop(request_id, None)
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
                self._confirmation(card, now, message, code)
            else:
                body = message or notes.REDEMPTION_REFUSED
                self._ctx.update_card(replace(card, pending=False, body=body, note=None), now)
        self._ctx.agent_event(f"redemption_{outcome}", {"coupon_id": redemption.coupon_id}, now)
        return True

    def _confirmation(self, card: Card, now: Now, message: Text | None, code: str | None) -> None:
        """The coupon card becomes what the driver shows at the partner."""
        if code:
            body = Text(
                notes.REDEEMED_BODY.zh_cn.replace("{code}", code),
                notes.REDEEMED_BODY.en.replace("{code}", code),
            )
        else:
            body = message or notes.REDEEMED_NO_CODE
        confirmed = replace(
            card,
            title=notes.REDEEMED_TITLE,
            body=body,
            pending=False,
            note=None,
            actions=(Action("ok", notes.OK_LABEL),),
        )
        self._ctx.update_card(confirmed, now)
