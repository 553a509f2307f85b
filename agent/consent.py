"""Consent: per data category and purpose, with a validity the driver chooses.

No valid consent, nothing of that category leaves the car: events are checked when
they are queued (nothing without consent ever enters the outbox) and again when they
are sent (consent can be withdrawn while offline). Location is off by default.

Requests the driver makes with a tap (book a service, redeem a coupon) are not
analytics: they are carried out because the driver asked, so their category,
``service_requests``, needs no separate consent.

Pure: time is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Category(StrEnum):
    """What data an event carries, and so which consent it needs."""

    VEHICLE_HEALTH = "vehicle_health"
    USAGE_ANALYTICS = "usage_analytics"
    MARKETING = "marketing_benefits"
    LOCATION = "location"
    SERVICE_REQUESTS = "service_requests"


#: Why each category is collected: shown to the driver in the settings app.
PURPOSES: Final[Mapping[Category, str]] = MappingProxyType(
    {
        Category.VEHICLE_HEALTH: "maintenance and fault reminders, routed to your dealer",
        Category.USAGE_ANALYTICS: "which cards help drivers, to improve them",
        Category.MARKETING: "member benefits and offers that fit the moment",
        Category.LOCATION: "offers and services near where the car is",
        Category.SERVICE_REQUESTS: "carrying out the bookings and redemptions you ask for",
    }
)
#: Categories the driver can grant or refuse (service requests are always on).
CONSENTABLE: Final = (
    Category.VEHICLE_HEALTH,
    Category.USAGE_ANALYTICS,
    Category.MARKETING,
    Category.LOCATION,
)

#: The longest validity a driver can give (10 years); longer is "without end".
MAX_VALIDITY_S: Final = 10 * 365 * 86_400


@dataclass(frozen=True, slots=True)
class Grant:
    """A category's consent: given at ``granted_at`` until ``expires_at`` (``None``: no end)."""

    granted: bool
    granted_at: float | None = None
    expires_at: float | None = None
    #: Whether ``granted_at`` came from a trusted clock (else it moves once trusted).
    time_trusted: bool = True

    def shown_with(self, skew: float) -> Grant:
        """This grant's times moved by ``skew`` seconds (for display, not for decisions)."""
        return Grant(
            self.granted,
            None if self.granted_at is None else self.granted_at + skew,
            None if self.expires_at is None else self.expires_at + skew,
            self.time_trusted,
        )

    def valid_at(self, now: float) -> bool:
        """Whether consent holds at ``now``."""
        return self.granted and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class ConsentState:
    """The driver's consent per category."""

    grants: Mapping[Category, Grant] = field(default_factory=lambda: MappingProxyType({}))

    def allows(self, category: Category, now: float) -> bool:
        """Whether data of ``category`` may leave the car at ``now``."""
        if category is Category.SERVICE_REQUESTS:
            return True
        grant = self.grants.get(category)
        return grant is not None and grant.valid_at(now)

    def rebase(self, correction: float) -> ConsentState:
        """The clock became trusted: grants dated by the estimate move by ``correction``."""
        if all(g.time_trusted for g in self.grants.values()):
            return self
        grants = {
            c: g
            if g.time_trusted
            else Grant(
                g.granted,
                None if g.granted_at is None else g.granted_at + correction,
                None if g.expires_at is None else g.expires_at + correction,
            )
            for c, g in self.grants.items()
        }
        return replace(self, grants=MappingProxyType(grants))

    def set(
        self,
        category: Category,
        *,
        granted: bool,
        now: float,
        valid_for: float | None = None,
        trusted: bool = True,
    ) -> ConsentState:
        """Grant (for ``valid_for`` seconds, or without end) or withdraw a category.

        Raises:
            ValueError: For ``service_requests``, which is not the driver's to switch off
                (not tapping is how one refuses), or a validity that is not positive
                or longer than :data:`MAX_VALIDITY_S`.
        """
        if category not in CONSENTABLE:
            raise ValueError(f"{category} is not a consent category")
        if valid_for is not None and not 0 < valid_for <= MAX_VALIDITY_S:
            raise ValueError(
                f"a consent's validity must be positive and at most {MAX_VALIDITY_S} s"
            )
        grant = (
            Grant(True, now, None if valid_for is None else now + valid_for, trusted)
            if granted
            else Grant(False, now, None, trusted)
        )
        grants = dict(self.grants)
        grants[category] = grant
        return replace(self, grants=MappingProxyType(grants))

    def to_json(self) -> dict[str, dict[str, object]]:
        """A JSON-ready form (for the store and the settings app)."""
        return {
            c.value: {
                "granted": g.granted,
                "granted_at": g.granted_at,
                "expires_at": g.expires_at,
                "time_trusted": g.time_trusted,
            }
            for c, g in self.grants.items()
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, object]]) -> ConsentState:
        """Read the form :meth:`to_json` writes; unknown categories are ignored."""
        grants: dict[Category, Grant] = {}
        for name, raw in data.items():
            try:
                category = Category(name)
            except ValueError:
                continue
            grants[category] = Grant(
                bool(raw.get("granted")),
                _instant(raw.get("granted_at")),
                _instant(raw.get("expires_at")),
                raw.get("time_trusted", True) is not False,
            )
        return cls(MappingProxyType(grants))


def _instant(value: object) -> float | None:
    """A stored time, or ``None`` for one that is no finite number of seconds.

    An integer too large for a float (JSON allows any) would raise; NaN would make
    every comparison false. Either one, stored, would break every start.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None
