"""Cards: what the driver sees, in both locales, with the driving restrictions built in.

Enums are numbered for the D-Bus API (0 = unknown, as the D-Bus API design guidelines
ask), and close reasons follow the freedesktop Notifications specification (1 expired,
2 dismissed by the user, 3 closed by the agent) with touchpoint's own after them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from types import MappingProxyType
from typing import Final

from agent.consent import Category
from agent.events import JsonValue

LOCALES: Final = ("zh-CN", "en")
DEFAULT_LOCALE: Final = "zh-CN"
#: NHTSA's visual-manual guidelines and Android Automotive's UX restrictions: a card a
#: moving driver may see has a short title and at most one action.
MOVING_TITLE_MAX: Final = 40
MOVING_ACTIONS_MAX: Final = 1
#: The actions a card may offer; the HMI reports taps by these keys.
ACTION_KEYS: Final = frozenset({"book", "snooze", "dismiss", "redeem", "ok"})


class CardKind(IntEnum):
    """What a card is about."""

    UNKNOWN = 0
    MAINTENANCE = 1
    FAULT = 2
    BENEFIT = 3
    BOOKING = 4
    CAMPAIGN = 5


class Urgency(IntEnum):
    """How urgent a card is (the freedesktop urgency levels)."""

    UNKNOWN = 0
    LOW = 1
    NORMAL = 2
    CRITICAL = 3


class Display(IntEnum):
    """When a card may be shown."""

    UNKNOWN = 0
    PARKED_ONLY = 1
    WHILE_MOVING = 2


class CardState(IntEnum):
    """Where a card is in its life."""

    UNKNOWN = 0
    QUEUED = 1  # waiting for the policy to allow it (parked, caps, quiet hours, room)
    VISIBLE = 2
    WITHDRAWN = 3  # taken off the screen because the car is moving; comes back parked
    SNOOZED = 4
    CLOSED = 5


class CloseReason(IntEnum):
    """Why a card left the screen: for good, or (5, 8) until it comes back."""

    UNKNOWN = 0
    EXPIRED = 1
    DISMISSED = 2
    CLOSED_BY_AGENT = 3
    UNDEFINED = 4
    WITHDRAWN_FOR_DRIVING = 5  # used for removal from view; the card itself survives
    SUPERSEDED = 6
    COMPLETED = 7  # its action was carried out (a booking confirmed, a coupon redeemed)
    SNOOZED = 8  # taken off the screen by the driver until later; the card survives


@dataclass(frozen=True, slots=True)
class Text:
    """A text in every supported locale."""

    zh_cn: str
    en: str

    def get(self, locale: str) -> str:
        """The text in ``locale``, falling back to Chinese then English."""
        if locale.lower().startswith("en"):
            return self.en or self.zh_cn
        return self.zh_cn or self.en

    def to_json(self) -> dict[str, str]:
        """``{"zh-CN": ..., "en": ...}``."""
        return {"zh-CN": self.zh_cn, "en": self.en}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Text:
        """Read ``{"zh-CN": ..., "en": ...}``."""
        return cls(str(data.get("zh-CN", "")), str(data.get("en", "")))


#: A template argument: plain values, localised texts, and lists of either.
ArgValue = str | int | float | bool | Text | tuple[str | Text, ...]


@dataclass(frozen=True, slots=True)
class Action:
    """A button: the key the HMI sends back and its label."""

    key: str
    label: Text


@dataclass(frozen=True, slots=True)
class Card:
    """One card.

    Attributes:
        id: Unique for this card's life (a UUIDv7).
        key: Identity across updates: the same situation keeps its key (``maintenance``,
            ``fault:P0301``), so a new version replaces the card in place.
        kind: What it is about.
        urgency: How urgent.
        display: When it may be shown.
        priority: Higher first among cards of the same urgency.
        title: The title in both locales.
        body: The body in both locales.
        template: The template id, for HMIs that localise themselves.
        args: The template's arguments.
        actions: The buttons.
        created: When it was posted (seconds since the epoch).
        expires: When it closes by itself, if ever.
        category: The consent category of the events about it.
        rule: The rule (``id@version``) that made it, if any.
        state: Where it is in its life.
        pending: An action is waiting for the cloud's answer ("pending" on screen).
        shown: The HMI reported that the driver saw it.
        posted_at: When it first appeared on screen (counts against the daily caps).
        snooze_until: A snoozed card comes back at this time...
        snooze_until_odometer: ...or at this odometer (metres), whichever is first.
        close_reason: Why it closed, once closed.
        time_trusted: Whether its times (created, expires, snooze) came from a trusted
            clock; if not, they move with the correction once the clock is trusted.
        note: A short status line under the body, in both locales: what a request of
            the card's is waiting for, or that it got no answer and how to retry.
        why: What made its rule fire (see :class:`agent.rule_engine.CardSpec`).
    """

    id: str
    key: str
    kind: CardKind
    urgency: Urgency
    display: Display
    title: Text
    body: Text
    template: str
    created: float
    category: Category
    priority: int = 0
    args: Mapping[str, ArgValue] = field(default_factory=lambda: MappingProxyType({}))
    actions: tuple[Action, ...] = ()
    expires: float | None = None
    rule: str | None = None
    state: CardState = CardState.QUEUED
    pending: bool = False
    shown: bool = False
    posted_at: float | None = None
    snooze_until: float | None = None
    snooze_until_odometer: int | None = None
    close_reason: CloseReason = CloseReason.UNKNOWN
    time_trusted: bool = True
    note: Text | None = None
    why: Mapping[str, JsonValue] = field(default_factory=lambda: MappingProxyType({}))

    def rebased(self, correction: float) -> Card:
        """The card with its estimated times moved by ``correction`` seconds, now trusted."""
        if self.time_trusted:
            return self

        def moved(value: float | None) -> float | None:
            return None if value is None else value + correction

        return replace(
            self,
            created=self.created + correction,
            expires=moved(self.expires),
            posted_at=moved(self.posted_at),
            snooze_until=moved(self.snooze_until),
            time_trusted=True,
        )

    @property
    def allowed_while_moving(self) -> bool:
        """Whether the driving restrictions let a moving driver see this card."""
        return self.display is Display.WHILE_MOVING

    @property
    def open(self) -> bool:
        """Whether the card is still alive (not closed)."""
        return self.state is not CardState.CLOSED

    def action(self, key: str) -> Action | None:
        """The action with ``key``, if the card has one."""
        return next((a for a in self.actions if a.key == key), None)


def restrict_for_moving(
    title: Text, actions: tuple[Action, ...]
) -> tuple[Text, tuple[Action, ...]]:
    """Cut a card meant for a moving driver down to what the guidelines allow."""
    return (
        Text(_shorten(title.zh_cn), _shorten(title.en)),
        actions[:MOVING_ACTIONS_MAX],
    )


def _shorten(text: str) -> str:
    return text if len(text) <= MOVING_TITLE_MAX else text[: MOVING_TITLE_MAX - 1] + "…"


class ChangeType(Enum):
    """How the set of visible cards changed."""

    ADDED = "added"  # became visible
    UPDATED = "updated"  # visible, and its content or state changed
    REMOVED = "removed"  # left the screen (closed, withdrawn, snoozed, displaced)


@dataclass(frozen=True, slots=True)
class CardChange:
    """One change for the HMI bridge and the event log."""

    type: ChangeType
    card: Card
    reason: CloseReason = CloseReason.UNKNOWN


_PLACEHOLDER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(template: str, args: Mapping[str, ArgValue], locale: str) -> str:
    """Fill ``{name}`` placeholders; lists are joined the way the locale writes them.

    Only plain names are substituted (no attribute access or format specs, unlike
    ``str.format``), since templates come from the cloud. An unknown name stays as is.
    """

    def fill(match: re.Match[str]) -> str:
        value = args.get(match.group(1))
        if value is None:
            return match.group(0)
        if isinstance(value, Text):
            return value.get(locale)
        if isinstance(value, tuple):
            parts = [v.get(locale) if isinstance(v, Text) else v for v in value]
            return ("、" if locale.startswith("zh") else ", ").join(parts)
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:g}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    return _PLACEHOLDER.sub(fill, template)
