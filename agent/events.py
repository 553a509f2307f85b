"""Events: the operators' raw material, and the cloud requests the driver's taps make.

Every decision and every card's life is an event with a unique id (UUIDv7), a per-boot
sequence number, the time and whether that time was trusted, and its consent category.
Decision code returns :class:`EventDraft` s; the agent stamps them into :class:`Event` s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Final, TypeAlias

from agent.consent import Category

#: What an event's payload holds: JSON's values (arrays as any sequence, objects as
#: any mapping with string keys).
JsonScalar: TypeAlias = str | int | float | bool | None
JsonValue: TypeAlias = JsonScalar | Sequence["JsonValue"] | Mapping[str, "JsonValue"]


class EventType(StrEnum):
    """Every type of event the car records; :mod:`agent.event_catalogue` describes each.

    The catalogue must hold exactly these (checked when it is imported), so a type used
    in the code is always one the MQTT contract documents.
    """

    CARD_CREATED = "card.created"
    CARD_UPDATED = "card.updated"
    CARD_SUPPRESSED = "card.suppressed"
    CARD_DISPLAYED = "card.displayed"
    CARD_SHOWN = "card.shown"
    CARD_WITHDRAWN = "card.withdrawn"
    CARD_ACTION = "card.action"
    CARD_SNOOZED = "card.snoozed"
    CARD_DISMISSED = "card.dismissed"
    CARD_EXPIRED = "card.expired"
    CARD_CLOSED = "card.closed"
    MAINTENANCE_REMINDER = "maintenance.reminder"
    FAULT_DETECTED = "fault.detected"
    FAULT_CLEARED = "fault.cleared"
    SERVICE_RESET = "service.reset"
    STORE_RECOVERED = "store.recovered"
    BENEFIT_OFFERED = "benefit.offered"
    DRIVE_SUMMARY = "drive.summary"
    CHARGING_SESSION = "charging.session"
    RULES_ACTIVATED = "rules.activated"
    RULES_STOPPED = "rules.stopped"
    REQUEST_BOOKING_SLOTS = "request.booking_slots"
    REQUEST_BOOKING = "request.booking"
    REQUEST_REDEMPTION = "request.redemption"
    BOOKING_CONFIRMED = "booking.confirmed"
    BOOKING_DECLINED = "booking.declined"
    BOOKING_CANCELLED = "booking.cancelled"
    REDEMPTION_CONFIRMED = "redemption.confirmed"
    REDEMPTION_DECLINED = "redemption.declined"
    BOOKING_UNANSWERED = "booking.unanswered"
    REDEMPTION_UNANSWERED = "redemption.unanswered"
    CONSENT_CHANGED = "consent.changed"
    PRIVACY_WIPED = "privacy.wiped"
    DOWNLINK_APPLIED = "downlink.applied"
    DOWNLINK_REJECTED = "downlink.rejected"
    CLOCK_TRUSTED = "clock.trusted"
    ODOMETER_CORRECTED = "odometer.corrected"
    LOOP_CRASHED = "daemon.loop_crashed"


class Priority(IntEnum):
    """Upload order and eviction order (lowest priority is evicted first)."""

    LOW = 10  # analytics: impressions, drive cycles
    NORMAL = 50  # card life, maintenance state
    HIGH = 80  # faults, requests the driver made


#: Event types whose rows are never evicted from a full outbox: the driver asked for them.
NEVER_EVICT_PREFIX: Final = "request."
#: What an event type looks like on the wire: dotted lower-case names.
TYPE_PATTERN: Final = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"
TYPE_MAX_LENGTH: Final = 64
#: Times are seconds since the epoch from 1970 to 2200: a larger one is no time, and
#: would overflow every date conversion.
MAX_EPOCH_S: Final = 7_258_118_400.0


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event as decision code describes it, before it gets its id and time."""

    type: EventType
    category: Category
    payload: Mapping[str, JsonValue] = field(default_factory=lambda: MappingProxyType({}))
    priority: Priority = Priority.NORMAL
    #: Seconds after which the event is worthless to the cloud (``None``: never).
    ttl: float | None = None
    #: For requests: the idempotency key the cloud's answer will carry back.
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A stamped event, ready for the outbox."""

    id: str
    type: str
    category: Category
    time: float
    time_trusted: bool
    boot_id: str
    seq: int
    priority: Priority
    expires: float | None
    payload: Mapping[str, JsonValue]
    request_id: str | None = None

    @property
    def evictable(self) -> bool:
        """Whether a full outbox may drop this event to make room."""
        return not self.type.startswith(NEVER_EVICT_PREFIX)

    def to_json(self) -> dict[str, JsonValue]:
        """The event as the cloud receives it (the MQTT contract's event object)."""
        data: dict[str, JsonValue] = {
            "id": self.id,
            "type": self.type,
            "category": self.category.value,
            "time": self.time,
            "time_trusted": self.time_trusted,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "payload": dict(self.payload),
        }
        if self.request_id is not None:
            data["request_id"] = self.request_id
        return data

    def payload_json(self) -> str:
        """The payload, serialised compactly for the store."""
        return json.dumps(
            self.payload, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=_plain
        )


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An event waiting in the outbox."""

    id: str
    type: str
    category: str
    priority: int
    time: float
    time_trusted: bool
    boot_id: str
    seq: int
    request_id: str | None
    payload: str
    size: int
    attempts: int
    expires: float | None = None

    def to_json(self) -> dict[str, object]:
        """The event as the cloud receives it."""
        data: dict[str, object] = {
            "id": self.id,
            "type": self.type,
            "category": self.category,
            "time": self.time,
            "time_trusted": self.time_trusted,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "payload": json.loads(self.payload),
        }
        if self.request_id is not None:
            data["request_id"] = self.request_id
        return data


def _plain(value: object) -> object:
    """Read-only mappings (the drafts' default payload is one) serialise as objects."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
