"""The MQTT contract, version 2: topics, and a pydantic model for every payload.

Everything for one vehicle lives under ``tp/v2/{vehicle_id}/`` (the provisioned device
identity, never the VIN), so a broker ACL can confine a car to its own prefix:

========================  ====  =====================================================
topic                     dir   payload
========================  ====  =====================================================
``events``                up    :class:`EventBatch` (QoS 1), with a ``batch_id``
``status``                up    :class:`Status`, retained; the last will says offline
``req/{name}``            up    :class:`WireEvent` of type ``request.{name}``; MQTT 5
                                response topic ``res/{name}``, correlation data the
                                request id, message expiry from the request's expiry
``clock``                 up    :class:`ClockRequest`: what time is it?
``ack``                   down  :class:`Ack`: the batches (and requests, by event id)
                                the cloud has stored; only then does the car delete
                                them
``res/{name}``            down  :class:`SlotsReply`, :class:`BookingReply`,
                                :class:`RedemptionReply`
``clock/reply``           down  :class:`ClockReply`: the cloud's time
``config/{kind}``         down  :class:`SignedDocument`, retained (one per kind)
``cards``                 down  :class:`SignedDocument` of kind ``card``
========================  ====  =====================================================

Every payload is UTF-8 JSON with ``schema_version``; unknown fields are refused (a
new field is a new schema version). Every message from the cloud carries the cloud's
time (``sent_at``; a signed document's ``issued_at``). ``docs/asyncapi.yaml``
describes the same, and a test checks the two agree.

Version 2 (from 1): the car deletes what it sent only once the cloud's ``ack`` says it
is stored (a broker's PUBACK says only that the broker has it); the clock exchange;
``sent_at`` on every reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.documents import (
    CloudCard,
    ConsentText,
    DtcCatalogue,
    LocalisedText,
    RuleSetDocument,
    RuleStops,
    ServiceHistory,
    ServicePlan,
    Wallet,
)
from agent.events import MAX_EPOCH_S, TYPE_MAX_LENGTH, TYPE_PATTERN

PREFIX: Final = "tp/v2"
SCHEMA_VERSION: Final = 2
#: A vehicle id: what a topic level and a certificate's common name can both carry.
VEHICLE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: The largest payload the car accepts from the cloud, and sends in one batch.
MAX_DOWNLINK_BYTES: Final = 256 * 1024
MAX_BATCH_EVENTS: Final = 1000

#: Identities that are not vehicles: a car certificate named so would get their rights
#: (the cloud's consumers, and the administrator of the broker's access control).
RESERVED_IDS: Final = frozenset({"cloud", "broker-admin"})
VehicleId = Annotated[str, Field(pattern=VEHICLE_ID.pattern)]
EventId = Annotated[str, Field(min_length=1, max_length=64)]
BatchId = Annotated[str, Field(min_length=1, max_length=64)]
#: The most batches one :class:`Ack` names.
MAX_ACK_BATCHES: Final = 256
#: Times on the wire: seconds since the epoch, finite, from 1970 to 2200 (1e300 is no time).
EpochSeconds = Annotated[float, Field(ge=0, le=MAX_EPOCH_S, allow_inf_nan=False)]


class RequestName(StrEnum):
    """The requests a car makes (``request.{name}`` events)."""

    BOOKING_SLOTS = "booking_slots"
    BOOKING = "booking"
    REDEMPTION = "redemption"


class DocumentKind(StrEnum):
    """What a signed document carries."""

    SERVICE_PLAN = "service_plan"
    SERVICE_HISTORY = "service_history"
    DTC_CATALOGUE = "dtc_catalogue"
    WALLET = "wallet"
    RULES = "rules"
    RULE_STOPS = "rule_stops"
    CONSENT_TEXT = "consent_text"
    CARD = "card"


#: The kinds published retained under ``config/``; ``card`` travels on ``cards``.
CONFIG_KINDS: Final = tuple(k for k in DocumentKind if k is not DocumentKind.CARD)


class Topics:
    """The topics of one vehicle."""

    def __init__(self, vehicle_id: str) -> None:
        if not VEHICLE_ID.match(vehicle_id) or vehicle_id in RESERVED_IDS:
            raise ValueError(f"not a valid vehicle id for a topic: {vehicle_id!r}")
        self.vehicle_id = vehicle_id
        self.root = f"{PREFIX}/{vehicle_id}"
        self.events = f"{self.root}/events"
        self.status = f"{self.root}/status"
        self.cards = f"{self.root}/cards"
        self.config_filter = f"{self.root}/config/+"
        self.response_filter = f"{self.root}/res/+"
        self.ack = f"{self.root}/ack"
        self.clock = f"{self.root}/clock"
        self.clock_reply = f"{self.root}/clock/reply"

    def request(self, name: RequestName) -> str:
        """Where a request goes."""
        return f"{self.root}/req/{name.value}"

    def response(self, name: RequestName) -> str:
        """Where its answer comes back (the request's MQTT 5 response topic)."""
        return f"{self.root}/res/{name.value}"

    def config(self, kind: DocumentKind) -> str:
        """Where the retained document of ``kind`` is."""
        return f"{self.root}/config/{kind.value}"


def parse_topic(topic: str) -> tuple[str, str] | None:
    """``(vehicle_id, rest)`` of a topic under the prefix, or ``None``."""
    head = f"{PREFIX}/"
    if not topic.startswith(head):
        return None
    vehicle_id, _, rest = topic[len(head) :].partition("/")
    if not rest or not VEHICLE_ID.match(vehicle_id):
        return None
    return vehicle_id, rest


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[2] = 2


# -- up ----------------------------------------------------------------------------------


class WireEvent(BaseModel):
    """One event as recorded in the car (see the event catalogue in the README).

    ``id`` is a UUIDv7 and the de-duplication key: delivery is at least once.
    ``time`` is seconds since the epoch by the car's clock, ``time_trusted`` whether
    that clock was set from GNSS or the cloud; ``boot_id`` and ``seq`` order events
    whose clock was not trusted.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: EventId
    type: Annotated[str, Field(pattern=TYPE_PATTERN, max_length=TYPE_MAX_LENGTH)]
    category: Annotated[str, Field(max_length=32)]
    time: EpochSeconds
    time_trusted: bool
    boot_id: Annotated[str, Field(max_length=64)]
    seq: Annotated[int, Field(ge=0)]
    payload: dict[str, Any]
    request_id: Annotated[str, Field(max_length=64)] | None = None


class EventBatch(_Message):
    """Events up, in the car's sending order (priority, then age).

    ``batch_id`` names this send: the cloud acknowledges it (:class:`Ack`) once the
    events are stored. A batch sent again after a timeout has a new ``batch_id`` and the
    same event ids.
    """

    vehicle_id: VehicleId
    batch_id: BatchId
    sent_at: EpochSeconds
    events: Annotated[list[WireEvent], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


class ClockRequest(_Message):
    """The car asks the cloud for the time (on connecting, then now and then).

    The car measures the round trip on its monotonic clock and takes the answer only if
    the round trip was short: the cloud's time is then known to within half of it.
    """

    request_id: Annotated[str, Field(min_length=1, max_length=64)]


class Status(_Message):
    """The car's connection, retained; the broker publishes ``offline`` as its last will."""

    vehicle_id: VehicleId
    state: Literal["online", "offline"]
    at: EpochSeconds
    software: Annotated[str, Field(max_length=64)] = ""
    #: Events waiting in the outbox when it came online.
    backlog: Annotated[int, Field(ge=0)] | None = None


# -- down: replies ---------------------------------------------------------------------


class WireSlot(BaseModel):
    """An appointment a dealer offers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=64)]
    start: EpochSeconds
    dealer: LocalisedText | None = None


class _Reply(_Message):
    #: The cloud's time when it sent this (seconds since the epoch).
    sent_at: EpochSeconds


class SlotsReply(_Reply):
    """The answer to ``request.booking_slots``."""

    request_id: Annotated[str, Field(max_length=64)]
    slots: Annotated[list[WireSlot], Field(max_length=50)]


class BookingReply(_Reply):
    """The answer to ``request.booking``."""

    request_id: Annotated[str, Field(max_length=64)]
    status: Literal["confirmed", "declined", "cancelled"]
    booking_id: Annotated[str, Field(max_length=64)] | None = None
    reason: Annotated[str, Field(max_length=200)] | None = None
    slot: WireSlot | None = None


class RedemptionReply(_Reply):
    """The answer to ``request.redemption``."""

    request_id: Annotated[str, Field(max_length=64)]
    accepted: bool
    message: LocalisedText | None = None
    #: What the driver shows at the partner (a voucher code), if the partner needs one.
    code: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class Ack(_Reply):
    """The cloud has stored these: the car may delete them.

    ``batches`` are :class:`EventBatch` ``batch_id`` s and, for requests (sent one by
    one on ``req/{name}``), the request event's ``id``. The cloud sends it after its own
    commit, never on receipt alone; an ack for something the car does not know (sent
    again meanwhile, or before a restart) is ignored.
    """

    batches: Annotated[list[BatchId], Field(min_length=1, max_length=MAX_ACK_BATCHES)]


class ClockReply(_Reply):
    """The cloud's answer to a :class:`ClockRequest`: its time is ``sent_at``."""

    request_id: Annotated[str, Field(min_length=1, max_length=64)]


REPLIES: Final[dict[RequestName, type[SlotsReply | BookingReply | RedemptionReply]]] = {
    RequestName.BOOKING_SLOTS: SlotsReply,
    RequestName.BOOKING: BookingReply,
    RequestName.REDEMPTION: RedemptionReply,
}


# -- down: signed documents --------------------------------------------------------------


class SignedDocument(_Message):
    """A document from the cloud, signed with Ed25519.

    ``signed`` is the JSON text of a :class:`DocumentHeader` plus ``body``, kept as
    text so the signature covers the exact bytes (no canonical JSON to agree on):
    ``signature`` is the base64 of the Ed25519 signature of ``signed`` encoded as
    UTF-8, by the key ``key_id`` names.
    """

    key_id: Annotated[str, Field(min_length=1, max_length=64)]
    signed: Annotated[str, Field(min_length=2, max_length=MAX_DOWNLINK_BYTES)]
    signature: Annotated[str, Field(min_length=1, max_length=200)]


class DocumentHeader(BaseModel):
    """What a signed document says about itself (the fields of ``signed`` besides body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DocumentKind
    #: The vehicle it is for, or ``*`` for every vehicle subscribed.
    vehicle_id: Annotated[str, Field(pattern=rf"^(\*|{VEHICLE_ID.pattern[1:-1]})$")]
    #: Must increase for each kind: an older or equal version is a replay.
    version: Annotated[int, Field(ge=1)]
    issued_at: EpochSeconds
    body: dict[str, Any]


# -- the registry the AsyncAPI document is generated from ---------------------------------


@dataclass(frozen=True, slots=True)
class Channel:
    """One channel of the contract.

    Attributes:
        id: Its name in the AsyncAPI document.
        address: The topic, with ``{vehicle_id}`` (and ``{name}``/``{kind}``) parameters.
        direction: ``up`` (the car publishes) or ``down`` (the car subscribes).
        messages: The payload models it carries.
        qos: The MQTT QoS used.
        retain: Whether its messages are retained.
        description: What it is for.
    """

    id: str
    address: str
    direction: Literal["up", "down"]
    messages: tuple[type[BaseModel], ...]
    qos: int
    retain: bool
    description: str


CHANNELS: Final = (
    Channel("events", f"{PREFIX}/{{vehicle_id}}/events", "up", (EventBatch,), 1, False,
            "Events recorded in the car, batched, in priority then age order. Delivery is "
            "at least once: drop duplicates by event id."),
    Channel("status", f"{PREFIX}/{{vehicle_id}}/status", "up", (Status,), 1, True,
            "Online when the car connects; the broker publishes offline (the last will) "
            "when it goes without a clean disconnect."),
    Channel("requests", f"{PREFIX}/{{vehicle_id}}/req/{{name}}", "up", (WireEvent,), 1, False,
            "A request the driver made (booking slots, a booking, a redemption), as its "
            "request.{name} event. MQTT 5 properties: response topic res/{name}, "
            "correlation data the request id, message expiry from the request's expiry."),
    Channel("clock", f"{PREFIX}/{{vehicle_id}}/clock", "up", (ClockRequest,), 0, False,
            "The car asks the time, on connecting and every so often. MQTT 5 properties: "
            "response topic clock/reply, correlation data the request id."),
    Channel("ack", f"{PREFIX}/{{vehicle_id}}/ack", "down", (Ack,), 1, False,
            "What the cloud has stored, after its own commit: the car deletes those events "
            "then, not on the broker's PUBACK. Unacknowledged batches are sent again (same "
            "event ids) after the car's ack timeout."),
    Channel("clock_reply", f"{PREFIX}/{{vehicle_id}}/clock/reply", "down", (ClockReply,), 0,
            False,
            "The cloud's time, in answer to a clock request (its correlation data)."),
    Channel("replies", f"{PREFIX}/{{vehicle_id}}/res/{{name}}", "down",
            (SlotsReply, BookingReply, RedemptionReply), 1, False,
            "The cloud's answer to a request, with the request's correlation data. A "
            "repeated answer is ignored."),
    Channel("config", f"{PREFIX}/{{vehicle_id}}/config/{{kind}}", "down", (SignedDocument,),
            1, True,
            "A signed configuration document, retained: the newest of each kind is "
            "delivered on every (re)connection."),
    Channel("cards", f"{PREFIX}/{{vehicle_id}}/cards", "down", (SignedDocument,), 1, False,
            "A signed card document (CloudCard) the cloud posts to one car."),
)  # fmt: skip

#: What ``body`` of a signed document is, by kind (a test checks each has a model).
DOCUMENT_BODIES: Final[dict[DocumentKind, type[BaseModel]]] = {
    DocumentKind.SERVICE_PLAN: ServicePlan,
    DocumentKind.SERVICE_HISTORY: ServiceHistory,
    DocumentKind.DTC_CATALOGUE: DtcCatalogue,
    DocumentKind.WALLET: Wallet,
    DocumentKind.RULES: RuleSetDocument,
    DocumentKind.RULE_STOPS: RuleStops,
    DocumentKind.CONSENT_TEXT: ConsentText,
    DocumentKind.CARD: CloudCard,
}


# -- who may do what: the broker's access control is generated from the channels ------------


def channel_filter(channel: Channel, vehicle_id: str) -> str:
    """The topic filter of ``channel`` for one vehicle (``+`` for ``{vehicle_id}``, too).

    The other parameters (``{name}``, ``{kind}``) become ``+``: a right to the channel is a
    right to every topic of it.
    """
    return re.sub(r"\{(?!vehicle_id\})[a-z_]+\}", "+", channel.address).replace(
        "{vehicle_id}", vehicle_id
    )


@dataclass(frozen=True, slots=True)
class Rights:
    """What one identity may publish, and subscribe to (and so receive), as topic filters."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def vehicle_rights(vehicle_id: str) -> Rights:
    """A car's rights: its uplink channels to publish, its downlink ones to read.

    Under its own prefix only; it may write nothing it reads, so it cannot forge the
    cloud's messages, not even to itself.
    """
    Topics(vehicle_id)  # refuses what is no vehicle id
    return Rights(
        publish=tuple(channel_filter(c, vehicle_id) for c in CHANNELS if c.direction == "up"),
        subscribe=tuple(channel_filter(c, vehicle_id) for c in CHANNELS if c.direction == "down"),
    )


def cloud_rights() -> Rights:
    """The cloud's rights: every car's downlink to publish, every car's uplink to read."""
    return Rights(
        publish=tuple(channel_filter(c, "+") for c in CHANNELS if c.direction == "down"),
        subscribe=tuple(channel_filter(c, "+") for c in CHANNELS if c.direction == "up"),
    )
