"""The catalogue of every event type the car records, as data.

The cloud receives events (see :class:`agent.events.Event`) whose ``payload`` depends on
their ``type``. This module says, for every type, which consent category it belongs to,
its upload priority, what it means, and the fields of its payload, so the cloud can
validate and route what it receives. ``docs/asyncapi.yaml`` is generated from it, and
the tests drive the agent through real scenarios and check every event it records
against this catalogue: an event type added to the code without an entry here fails.

Every field is always present in a payload (``required``), possibly ``null`` where its
types say so: the agent writes absent knowledge as ``null`` rather than leaving a field
out, so the cloud never has to tell "unknown" from "not sent".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, cast, get_args

from agent.benefits import SCENES
from agent.cards import ACTION_KEYS, CardKind, CloseReason
from agent.consent import CONSENTABLE, Category
from agent.events import EventType, JsonValue, Priority
from agent.maintenance import ItemState

JsonType = Literal["string", "number", "integer", "boolean", "array", "object", "null"]
JSON_TYPES: Final = frozenset(get_args(JsonType))

#: An example card id (a UUIDv7) and request id, shared by the examples.
_CARD_ID: Final = "01972f4e-5a00-7c3e-9b1d-2f4a5b6c7d8e"
_REQUEST_ID: Final = "01972f4e-6e10-7a2b-8c3d-4e5f60718293"


@dataclass(frozen=True, slots=True)
class PayloadField:
    """One field of an event's payload.

    Attributes:
        name: Its key in the payload.
        types: The JSON types its value may have (``null`` among them if it may be null).
        description: What it holds.
        required: Whether every payload of the type has it.
        enum: For strings, the only values it takes (empty: any string).
        items: For arrays of scalars, the JSON type of the items.
        item_fields: For arrays of objects, the fields of each object.
        example: A value for the examples of the AsyncAPI document.
    """

    name: str
    types: tuple[JsonType, ...]
    description: str
    required: bool = True
    enum: tuple[str, ...] = ()
    items: JsonType | None = None
    item_fields: tuple[PayloadField, ...] = ()
    example: JsonValue = None

    def __post_init__(self) -> None:
        unknown = set(self.types) - JSON_TYPES
        if not self.types or unknown:
            raise ValueError(f"field {self.name}: bad JSON types {self.types!r}")
        if (self.items is not None or self.item_fields) and "array" not in self.types:
            raise ValueError(f"field {self.name}: items given for a field that is no array")


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event type.

    Attributes:
        type: Its name, ``area.what`` (the event's ``type``).
        categories: The consent category it is recorded under; card events carry the
            category of their card, so they list both that a card can have.
        priority: Its upload (and eviction) priority.
        description: What it means, in one line.
        fields: The fields of its payload.
    """

    type: str
    categories: tuple[Category, ...]
    priority: Priority
    description: str
    fields: tuple[PayloadField, ...] = ()

    def example_payload(self) -> dict[str, JsonValue]:
        """A payload made of the fields' examples."""
        return {f.name: f.example for f in self.fields}

    def problems(self, payload: Mapping[str, Any]) -> list[str]:
        """What is wrong with ``payload`` for this type (empty: nothing)."""
        return _object_problems(self.type, self.fields, payload)


def _parse_types(spec: str) -> tuple[JsonType, ...]:
    # PayloadField checks each name is a JSON type.
    return cast("tuple[JsonType, ...]", tuple(spec.split("|")))


def _f(
    name: str,
    types: str,
    description: str,
    example: JsonValue,
    *,
    enum: tuple[str, ...] = (),
    items: JsonType | None = None,
    item_fields: tuple[PayloadField, ...] = (),
) -> PayloadField:
    """A required field; ``types`` as ``"number|null"``."""
    return PayloadField(
        name,
        _parse_types(types),
        description,
        enum=enum,
        items=items,
        item_fields=item_fields,
        example=example,
    )


def _matches(value: object, json_type: JsonType) -> bool:
    # bool is an int in Python, but never a number in JSON.
    if isinstance(value, bool):
        return json_type == "boolean"
    return isinstance(value, _PYTHON_TYPES[json_type])


_PYTHON_TYPES: Final[Mapping[JsonType, type | tuple[type, ...]]] = MappingProxyType(
    {
        "null": type(None),
        "boolean": bool,
        "integer": int,
        "number": (int, float),
        "string": str,
        "array": (list, tuple),
        "object": Mapping,
    }
)


def _object_problems(
    where: str, fields: tuple[PayloadField, ...], payload: Mapping[str, Any]
) -> list[str]:
    declared = {f.name for f in fields}
    problems = [f"{where}: undeclared field {n!r}" for n in sorted(set(payload) - declared)]
    for f in fields:
        if f.name not in payload:
            if f.required:
                problems.append(f"{where}: missing field {f.name!r}")
            continue
        problems.extend(_value_problems(f"{where}.{f.name}", f, payload[f.name]))
    return problems


def _value_problems(where: str, f: PayloadField, value: object) -> list[str]:
    if not any(_matches(value, t) for t in f.types):
        return [f"{where}: {value!r} is not {' or '.join(f.types)}"]
    if f.enum and isinstance(value, str) and value not in f.enum:
        return [f"{where}: {value!r} is not one of {list(f.enum)}"]
    problems: list[str] = []
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if f.item_fields:
                if not isinstance(item, Mapping):
                    problems.append(f"{where}[{i}]: {item!r} is not an object")
                else:
                    problems.extend(_object_problems(f"{where}[{i}]", f.item_fields, item))
            elif f.items is not None and not _matches(item, f.items):
                problems.append(f"{where}[{i}]: {item!r} is not {f.items}")
    return problems


# -- shared fields -----------------------------------------------------------------------

_CARD_KINDS: Final = tuple(k.name for k in CardKind)
_CARD_FIELDS: Final = (
    _f("card_id", "string", "The card's id (a UUIDv7), the same through its life.", _CARD_ID),
    _f(
        "key",
        "string",
        "The card's key: what it is about (one open card per key), e.g. maintenance, "
        "fault:P0301, benefit:{coupon_id}, cloud:{card_id} (a card the cloud posted).",
        "maintenance",
    ),
    _f("kind", "string", "What the card is about.", "MAINTENANCE", enum=_CARD_KINDS),
    _f(
        "rule",
        "string|null",
        "The rule that made the card, id@version; a cloud card's is "
        "cloud.{card_id}@{document version} (null: none).",
        "builtin.maintenance.due_soon@1",
    ),
)
_CARD_CATEGORIES: Final = (Category.USAGE_ANALYTICS, Category.MARKETING)
#: How card events get their category (they carry their card's).
CARD_CATEGORY_NOTE: Final = (
    "Card events carry their card's category: marketing_benefits for benefit and campaign "
    "cards, usage_analytics for the others."
)
_ODOMETER: Final = _f(
    "odometer_km", "number|null", "The odometer in km, one decimal (null: not heard yet).", 9000.0
)
_DEALER: Final = _f(
    "dealer_id", "string|null", "The owner's dealer from the wallet (null: no wallet).", "D-42"
)
_CARD_KEY: Final = _f(
    "card_key",
    "string",
    "The key of the card the request was made from (for a booking, the card the visit is for).",
    "maintenance",
)
_BOOKING_ITEMS: Final = _f(
    "items",
    "array",
    "What the visit is for: service plan item ids, or a fault's code.",
    ["tyre_rotation"],
    items="string",
)
_REQUEST_ID_FIELD: Final = _f(
    "request_id", "string", "The id of the request this answers.", _REQUEST_ID
)
_COUPON: Final = _f("coupon_id", "string", "The wallet coupon's id.", "coffee-1")


def _card(
    name: str, description: str, *extra: PayloadField, priority: Priority = Priority.NORMAL
) -> EventSpec:
    return EventSpec(f"card.{name}", _CARD_CATEGORIES, priority, description, _CARD_FIELDS + extra)


def _reason(description: str, *values: str) -> PayloadField:
    return _f("reason", "string", description, values[0], enum=values)


def _answer(kind: str, outcome: str, description: str, subject: PayloadField) -> EventSpec:
    return EventSpec(
        f"{kind}.{outcome}",
        (Category.SERVICE_REQUESTS,),
        Priority.HIGH,
        description,
        (_REQUEST_ID_FIELD, subject),
    )


_REMINDER_ITEM: Final = (
    _f("id", "string", "The service plan item.", "tyre_rotation"),
    _f(
        "state",
        "string",
        "Its state.",
        "DUE_SOON",
        enum=tuple(s.name for s in ItemState if s > ItemState.OK),
    ),
    _f(
        "reason",
        "string",
        "What decided it (last_known: its inputs are unknown now, the last state holds).",
        "distance",
        enum=("distance", "time", "condition", "last_known"),
    ),
    _f("remaining_km", "number|null", "Distance to the due point (negative: past).", 1000.0),
    _f("remaining_days", "number|null", "Days to the due date (negative: past).", None),
    _f(
        "time_unknown",
        "boolean",
        "Its time interval could not be checked (clock or last service time untrusted).",
        False,
    ),
)

_TYPES: Final = (
    # -- cards: what the driver saw and did --------------------------------------------
    _card(
        "created",
        "A rule posted a new card (queued; shown when the policy allows).",
        _f(
            "why",
            "object",
            "What made the rule fire: `trigger` (`event NAME`, `signal PATH OP VALUE` with "
            "the signal's `value`, or `time HH:MM`) and, for a rule with conditions, "
            "`facts`: each fact they read, with its value then (null: missing). Empty for "
            "a card the cloud posted.",
            {
                "trigger": "signal Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed < 25",
                "value": 24.5,
                "facts": {"vehicle.parked": True},
            },
        ),
    ),
    _card("updated", "An open card was updated in place (an escalation, new details)."),
    _card(
        "suppressed",
        "A rule asked for a card its kind's cooldown refused.",
        _reason("Why it was refused.", "cooldown"),
    ),
    _card(
        "displayed",
        "The card went on screen.",
        _f("parked", "boolean", "Whether the car was parked then.", True),
        priority=Priority.LOW,
    ),
    _card(
        "shown",
        "The screen reported the driver saw the card (an impression).",
        priority=Priority.LOW,
    ),
    _card(
        "withdrawn",
        "The card left the screen because the car started moving; it comes back parked.",
        _reason("Why it left.", "driving"),
    ),
    _card(
        "action",
        "The driver tapped an action of the card.",
        _f(
            "action",
            "string",
            "The action's key.",
            "book",
            enum=tuple(sorted(ACTION_KEYS)),
        ),
    ),
    _card(
        "snoozed",
        "The driver snoozed the card: it comes back after days or km, whichever first.",
        _f("days", "number", "Days until it comes back.", 3.0),
        _f("km", "number", "Kilometres until it comes back.", 300.0),
    ),
    _card(
        "dismissed",
        "The driver dismissed the card (their answer).",
        _reason("How it closed.", CloseReason.DISMISSED.name),
    ),
    _card(
        "expired",
        "The card's own time ran out, or the screen timed it out (not the driver's answer).",
        _reason("How it closed.", CloseReason.EXPIRED.name),
    ),
    _card(
        "closed",
        "The agent closed the card: what it was about is resolved (a fault cleared, the "
        "service done, a booking confirmed, a coupon redeemed, a cloud card withdrawn).",
        _reason(
            "How it closed (COMPLETED: its action was carried out).",
            CloseReason.CLOSED_BY_AGENT.name,
            CloseReason.COMPLETED.name,
        ),
    ),
    # -- vehicle health -------------------------------------------------------------------
    EventSpec(
        "maintenance.reminder",
        (Category.VEHICLE_HEALTH,),
        Priority.HIGH,
        "Service is due soon, due or overdue: the agent reminded the driver (route it to "
        "the dealer advisor).",
        (
            _f(
                "state",
                "string",
                "The worst item's state.",
                "DUE_SOON",
                enum=tuple(s.name for s in ItemState if s > ItemState.OK),
            ),
            _ODOMETER,
            _f(
                "items",
                "array",
                "The items due soon or worse.",
                [
                    {
                        "id": "tyre_rotation",
                        "state": "DUE_SOON",
                        "reason": "distance",
                        "remaining_km": 1000.0,
                        "remaining_days": None,
                        "time_unknown": False,
                    }
                ],
                item_fields=_REMINDER_ITEM,
            ),
            _f("escalated", "boolean", "Whether it got more urgent than the last reminder.", False),
            _f("resurfaced", "boolean", "Whether it came back after a dismissal.", False),
            _DEALER,
            _f("booked", "boolean", "Whether a visit is booked already.", False),
        ),
    ),
    EventSpec(
        "fault.detected",
        (Category.VEHICLE_HEALTH,),
        Priority.HIGH,
        "A fault appeared (a DTC or a warning lamp), or its severity changed.",
        (
            _f("code", "string", "The DTC (P0301) or lamp (LAMP:OilPressure).", "P0301"),
            _f(
                "severity",
                "string",
                "The DTC catalogue's severity.",
                "service_soon",
                enum=("info", "service_soon", "stop_safely"),
            ),
            _ODOMETER,
        ),
    ),
    EventSpec(
        "fault.cleared",
        (Category.VEHICLE_HEALTH,),
        Priority.HIGH,
        "An announced fault is no longer active.",
        (_f("code", "string", "The DTC or lamp that cleared.", "P0301"),),
    ),
    EventSpec(
        "service.reset",
        (Category.VEHICLE_HEALTH,),
        Priority.HIGH,
        "The service counter was reset on the car (a workshop visit): these items count "
        "as serviced.",
        (
            _f(
                "items",
                "array",
                "The plan items recorded as serviced.",
                ["tyre_rotation"],
                items="string",
            ),
            _f("odometer_km", "number", "The odometer then, in km.", 10000.0),
        ),
    ),
    EventSpec(
        "store.recovered",
        (Category.SERVICE_REQUESTS,),
        Priority.HIGH,
        "The car's database was unreadable or empty at start-up: a broken one was moved "
        "aside and the agent started afresh (state since the last sync is lost); every "
        "consent starts withdrawn until the driver confirms it.",
        (
            _f(
                "problem",
                "string|null",
                "What was wrong with it.",
                "file is not a database",
            ),
            _f(
                "moved_to",
                "string|null",
                "Where the broken file was moved (null: the file was empty).",
                "/var/lib/touchpoint/touchpoint.db.corrupt-1779940800",
            ),
            _f(
                "consent",
                "string",
                "The consents after the recovery.",
                "withdrawn",
                enum=("withdrawn",),
            ),
        ),
    ),
    # -- marketing ------------------------------------------------------------------------
    EventSpec(
        "benefit.offered",
        (Category.MARKETING,),
        Priority.NORMAL,
        "A scene unlocked a wallet coupon, offered once per occurrence.",
        (
            _COUPON,
            _f("scene", "string", "The scene that unlocked it.", "charging_started", enum=SCENES),
        ),
    ),
    # -- usage analytics ------------------------------------------------------------------
    EventSpec(
        "drive.summary",
        (Category.USAGE_ANALYTICS,),
        Priority.LOW,
        "A drive cycle (ignition on to off) ended.",
        (
            _f(
                "distance_km",
                "number|null",
                "Distance driven, one decimal (null: odometer unknown).",
                12.4,
            ),
            _f(
                "duration_min",
                "number|null",
                "How long the cycle lasted, in minutes (null: the clock cannot tell, e.g. it "
                "began before a restart on an untrusted clock).",
                23.5,
            ),
        ),
    ),
    EventSpec(
        "charging.session",
        (Category.USAGE_ANALYTICS,),
        Priority.LOW,
        "A charging session ended.",
        (
            _f("soc_from", "number|null", "State of charge at the start, % (null: unknown).", 18),
            _f("soc_to", "number|null", "State of charge at the end, % (null: unknown).", 80),
            _f(
                "duration_min",
                "number|null",
                "How long it lasted, in minutes (null: the clock cannot tell).",
                42.0,
            ),
        ),
    ),
    EventSpec(
        "rules.activated",
        (Category.USAGE_ANALYTICS,),
        Priority.NORMAL,
        "A card rule set from the cloud became active.",
        (
            _f("version", "integer", "The rule set's version.", 10),
            _f("rules", "integer", "How many rules it holds.", 1),
        ),
    ),
    EventSpec(
        "rules.stopped",
        (Category.USAGE_ANALYTICS,),
        Priority.NORMAL,
        "The cloud's stop document (the kill switch) took effect: the rules it lists fire "
        "no more, whatever rule set is active, and their open cards closed.",
        (
            _f("version", "integer", "The stop document's version.", 3),
            _f(
                "stopped",
                "array",
                "Every rule id stopped now (a lifted stop is absent).",
                ["campaign.partner-chargers"],
                items="string",
            ),
            _f(
                "newly",
                "array",
                "The ids stopped by this document and not before.",
                ["campaign.partner-chargers"],
                items="string",
            ),
            _f("cards_closed", "integer", "Open cards of stopped rules it closed.", 1),
        ),
    ),
    # -- the driver's requests and instructions (no consent needed) ----------------------
    EventSpec(
        "request.booking_slots",
        (Category.SERVICE_REQUESTS,),
        Priority.HIGH,
        "The driver tapped Book: which appointments can the dealer offer? (Answer: SlotsReply.)",
        (_CARD_KEY, _BOOKING_ITEMS, _ODOMETER, _DEALER),
    ),
    EventSpec(
        "request.booking",
        (Category.SERVICE_REQUESTS,),
        Priority.HIGH,
        "The driver picked a slot: book it. (Answer: BookingReply.)",
        (
            _CARD_KEY,
            _f("slot_id", "string", "The slot picked, as the cloud offered it.", "s1"),
            _BOOKING_ITEMS,
            _ODOMETER,
            _DEALER,
        ),
    ),
    EventSpec(
        "request.redemption",
        (Category.SERVICE_REQUESTS,),
        Priority.HIGH,
        "The driver tapped Redeem on a benefit card. (Answer: RedemptionReply.)",
        (
            _COUPON,
            _f("card_key", "string", "The benefit card's key.", "benefit:coffee-1"),
        ),
    ),
    *(
        _answer("booking", outcome, f"The cloud's answer to a booking: {outcome}.", _CARD_KEY)
        for outcome in ("confirmed", "declined", "cancelled")
    ),
    *(
        _answer("redemption", outcome, f"The cloud's answer to a redemption: {outcome}.", _COUPON)
        for outcome in ("confirmed", "declined")
    ),
    EventSpec(
        "booking.unanswered",
        (Category.SERVICE_REQUESTS,),
        Priority.HIGH,
        "A booking request (for slots, or for a slot) got no answer within the request "
        "timeout: its card says the dealer could not be reached; tapping Book retries with "
        "the same request id, and a later answer is still taken. An unsent request is "
        "taken out of the outbox.",
        (
            _REQUEST_ID_FIELD,
            _CARD_KEY,
            _f("stage", "string", "Which request waited.", "slots", enum=("slots", "booking")),
            _f("waited_s", "number", "How long it waited, in seconds.", 120.0),
        ),
    ),
    EventSpec(
        "redemption.unanswered",
        (Category.SERVICE_REQUESTS,),
        Priority.HIGH,
        "A redemption got no answer within the request timeout: its card says the partner "
        "could not be reached; tapping Redeem retries with the same request id.",
        (
            _REQUEST_ID_FIELD,
            _COUPON,
            _f("waited_s", "number", "How long it waited, in seconds.", 120.0),
        ),
    ),
    EventSpec(
        "consent.changed",
        (Category.SERVICE_REQUESTS,),
        Priority.HIGH,
        "The driver granted or withdrew a consent (always sent: it is their instruction).",
        (
            _f(
                "category",
                "string",
                "The consent category.",
                Category.USAGE_ANALYTICS.value,
                enum=tuple(c.value for c in CONSENTABLE),
            ),
            _f("granted", "boolean", "Granted (true) or withdrawn (false).", True),
            _f(
                "valid_for_s",
                "number|null",
                "For how long it was granted, in seconds (null: without end).",
                None,
            ),
        ),
    ),
    EventSpec(
        "privacy.wiped",
        (Category.SERVICE_REQUESTS,),
        Priority.HIGH,
        "The driver's data was deleted in the car: delete the cloud's copy too.",
        (
            _f(
                "scope",
                "string",
                "my_data: the driver asked; owner_change: a new owner (consent reset too).",
                "my_data",
                enum=("my_data", "owner_change"),
            ),
        ),
    ),
    # -- what the car did with the cloud's documents --------------------------------------
    EventSpec(
        "downlink.applied",
        (Category.SERVICE_REQUESTS,),
        Priority.NORMAL,
        "A signed document from the cloud was verified and applied.",
        (
            _f("kind", "string", "The document's kind (DocumentKind).", "wallet"),
            _f("version", "integer", "Its version.", 3),
        ),
    ),
    EventSpec(
        "clock.trusted",
        (Category.VEHICLE_HEALTH,),
        Priority.LOW,
        "A trusted time source set the car's clock, or corrected it (docs/time.md).",
        (
            _f("source", "string", "Which source.", "cloud", enum=("cloud", "ntp", "gnss")),
            _f(
                "correction_s",
                "number",
                "How far the clock moved, in seconds (from the estimate it ran on before).",
                -3.2,
            ),
            _f("trusted_before", "boolean", "Whether the clock was trusted before.", False),
        ),
    ),
    EventSpec(
        "odometer.corrected",
        (Category.VEHICLE_HEALTH,),
        Priority.NORMAL,
        "The odometer went down: readings that agree with each other replaced a value "
        "that was wrong (kept by an older version, or a replaced instrument cluster). "
        "Distances driven before it are not recomputed.",
        (
            _f("from_km", "number", "The odometer before, in km, one decimal.", 1677721.5),
            _f("to_km", "number", "The odometer now, in km, one decimal.", 13500.0),
        ),
    ),
    EventSpec(
        "daemon.loop_crashed",
        (Category.VEHICLE_HEALTH,),
        Priority.NORMAL,
        "One of the daemon's long-lived loops (the cloud's send loop, the store's "
        "committer, the signal consumer, ...) crashed and is being restarted after a "
        "back-off; the head unit's own health, for the fleet's software team.",
        (
            _f("loop", "string", "Which loop.", "cloud send"),
            _f(
                "error",
                "string",
                "The error, its type first (at most 500 characters).",
                "OperationalError: database or disk is full",
            ),
            _f("crashes", "integer", "How many times it crashed since the daemon started.", 1),
        ),
    ),
    EventSpec(
        "downlink.rejected",
        (Category.SERVICE_REQUESTS,),
        Priority.NORMAL,
        "A message from the cloud was refused (bad signature, replayed version, invalid).",
        (
            _f(
                "kind",
                "string|null",
                "The document's kind (null: it could not be read).",
                "wallet",
            ),
            _f("version", "integer|null", "Its version (null: it could not be read).", 2),
            _f(
                "reason",
                "string",
                "Why it was refused.",
                "replay: version 2 is not newer than 3",
            ),
            _f(
                "topic",
                "string",
                "The topic it came on.",
                "tp/v2/car-0001/config/wallet",
            ),
        ),
    ),
)

#: Every event type, by name.
CATALOGUE: Final[Mapping[str, EventSpec]] = MappingProxyType({t.type: t for t in _TYPES})
if len(CATALOGUE) != len(_TYPES):  # pragma: no cover - a typo in the table above
    raise RuntimeError("an event type is listed twice")
# The code records agent.events.EventType members only: each must be documented here,
# and nothing documented here may be a type the code never records.
if set(CATALOGUE) != {str(t) for t in EventType}:  # pragma: no cover - caught on import
    raise RuntimeError(
        "the event catalogue and EventType differ: "
        f"{sorted(set(CATALOGUE) ^ {str(t) for t in EventType})}"
    )


def lookup(event_type: str) -> EventSpec | None:
    """The catalogue's entry for ``event_type``, if there is one."""
    return CATALOGUE.get(event_type)


def payload_schema(entry: EventSpec) -> dict[str, Any]:
    """The JSON Schema (draft 07) of an event type's payload."""
    return _object_schema(entry.fields)


def _object_schema(fields: tuple[PayloadField, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [f.name for f in fields if f.required],
        "properties": {f.name: _field_schema(f) for f in fields},
    }


def _field_schema(f: PayloadField) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": f.types[0] if len(f.types) == 1 else list(f.types),
        "description": f.description,
    }
    if f.enum:
        # A nullable enum must list null too, or null fails the enum.
        schema["enum"] = [*f.enum, *([None] if "null" in f.types else [])]
    if f.item_fields:
        schema["items"] = _object_schema(f.item_fields)
    elif f.items is not None:
        schema["items"] = {"type": f.items}
    return schema


__all__ = [
    "CARD_CATEGORY_NOTE",
    "CATALOGUE",
    "JSON_TYPES",
    "EventSpec",
    "JsonType",
    "PayloadField",
    "lookup",
    "payload_schema",
]
