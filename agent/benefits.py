"""Member benefits: the wallet the cloud sends, and which coupon a scene unlocks.

"Scene as rights": a situation (charging started, a service completed, an odometer
milestone, a birthday, the first drive after delivery) can surface a coupon the wallet
holds for it. The car only shows what the cloud's ledger granted: it never creates or
spends value. Redeeming is a request to the cloud with an idempotency key; the card
shows "pending" until the cloud answers.

Pure: time is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.plan import LocalisedText

Scene = Literal[
    "charging_started", "service_completed", "odometer_milestone", "birthday", "first_drive"
]
SCENES: Final = (
    "charging_started",
    "service_completed",
    "odometer_milestone",
    "birthday",
    "first_drive",
)


class Coupon(BaseModel):
    """A benefit the member holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    title: LocalisedText
    body: LocalisedText
    scenes: Annotated[tuple[Scene, ...], Field(min_length=1)]
    #: How many uses are left (the cloud's ledger decides; the car only reads it).
    quota: Annotated[int, Field(ge=0)] = 1
    valid_from: float | None = None
    valid_until: float | None = None

    def usable(self, now: float, *, trusted: bool) -> bool:
        """Whether the coupon can be offered at ``now``.

        A coupon with a validity window needs a trusted clock: a wrong clock must not
        offer an expired coupon or one not yet valid.
        """
        if self.quota <= 0:
            return False
        if self.valid_from is None and self.valid_until is None:
            return True
        if not trusted:
            return False
        if self.valid_from is not None and now < self.valid_from:
            return False
        return self.valid_until is None or now < self.valid_until


class Wallet(BaseModel):
    """The member wallet, as the cloud sends it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    version: Annotated[int, Field(ge=0)]
    tier: Annotated[str, Field(max_length=32)] | None = None
    points: Annotated[int, Field(ge=0)] = 0
    coupons: Annotated[tuple[Coupon, ...], Field(max_length=200)] = ()
    #: ``MM-DD``: the birthday scene (the year is not needed, so not kept).
    birthday: Annotated[
        str | None, Field(pattern=r"^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")
    ] = None
    #: The owner's dealer, to whom maintenance reminders are routed.
    dealer_id: Annotated[str | None, Field(max_length=64)] = None
    dealer_name: LocalisedText | None = None


def coupon_for_scene(
    wallet: Wallet | None, scene: str, now: float, *, trusted: bool, offered: Iterable[str] = ()
) -> Coupon | None:
    """The coupon to offer for ``scene``: usable, not offered yet, the one expiring first."""
    if wallet is None:
        return None
    skip = set(offered)
    candidates = [
        c
        for c in wallet.coupons
        if scene in c.scenes and c.id not in skip and c.usable(now, trusted=trusted)
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda c: (c.valid_until is None, c.valid_until or 0.0, c.id))
