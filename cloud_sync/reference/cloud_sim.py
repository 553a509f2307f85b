"""``touchpoint cloud-sim``: a small member platform, for development, the demo and tests.

It consumes the cars' events and requests through MQTT 5 shared subscriptions (so
several instances share the load, as a real backend would behind a clustered broker),
drops duplicate events by id and counts them (in memory, or in an SQLite file that
several instances share), publishes each car's documents signed with a development
key when the car first comes online (service plan, DTC catalogue, wallet, a campaign),
answers booking and redemption requests (confirm, decline, or confirm after a delay, as
configured) and the cars' clock requests, and acknowledges every batch and request once
it has stored it (contract version 2: the car deletes only what is acknowledged).

It is a reference, not a product: one process, no database beyond the dedup table.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sqlite3
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ValidationError

from agent.fault_engine import default_catalogue
from agent.plan import default_plan
from cloud_sync.contract import (
    PREFIX,
    Ack,
    BookingReply,
    ClockReply,
    ClockRequest,
    DocumentKind,
    EventBatch,
    RedemptionReply,
    RequestName,
    SlotsReply,
    Status,
    Topics,
    WireEvent,
    parse_topic,
)
from cloud_sync.link import client_tls_context
from cloud_sync.reference.demo_content import demo_campaign, demo_history, demo_slots, demo_wallet
from cloud_sync.signing import SigningKey

_log = logging.getLogger(__name__)

BookingAnswer = Literal["confirm", "decline", "delay"]
#: How long the broker keeps an instance's session (and queues its messages) while away.
SESSION_EXPIRY_S: Final = 7 * 86_400
#: The shared-subscription group instances join by default. It need not be secret: the
#: reference broker refuses a car's subscription to it (SUBACK 0x87), and the cloud's
#: listener lets no car certificate in. (Under Mosquitto's acl_file a car that joined
#: the group had the broker drop a share of every car's events.)
GROUP: Final = "touchpoint-cloud"
#: End-to-end latencies kept for the percentiles (a uniform sample of all of them).
LATENCY_SAMPLES: Final = 10_000


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the broker is and how to log in (TLS files, or plain on loopback)."""

    host: str
    port: int
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None  # for a plain listener (benchmarks), the identity claimed

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context (pinned CA, client certificate), or None for plain."""
        if self.ca_file is None:
            return None
        return client_tls_context(self.ca_file, self.cert_file, self.key_file)


class Reservoir:
    """A bounded uniform sample of a stream of values (reservoir sampling), for percentiles.

    Args:
        size: Values kept at most.
        seed: For the sampling (``None``: different each run).
    """

    def __init__(self, size: int = LATENCY_SAMPLES, seed: int | None = None) -> None:
        self.size = size
        self.seen = 0
        self.values: list[float] = []
        self._rng = random.Random(seed)  # noqa: S311 - a sample, not a secret

    def add(self, value: float) -> None:
        """Offer a value: kept with probability ``size / seen``, replacing one at random."""
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.values[slot] = value

    def percentile(self, pct: float) -> float | None:
        """The ``pct`` th percentile of the sample (nearest rank), ``None`` if empty."""
        if not self.values:
            return None
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]

    def copy(self) -> Reservoir:
        """An independent copy."""
        other = Reservoir(self.size)
        other.seen, other.values = self.seen, list(self.values)
        return other


@dataclass(slots=True)
class CloudStats:
    """What the simulator has seen."""

    events: int = 0
    duplicates: int = 0
    batches: int = 0
    malformed: int = 0
    requests: int = 0
    #: Requests taken in for the first time (``requests`` counts repeats too).
    requests_new: int = 0
    answered: int = 0
    #: Acknowledgements sent (one per batch or request stored).
    acks: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_vehicle: Counter[str] = field(default_factory=Counter)
    online: set[str] = field(default_factory=set)
    #: Seconds from an event's time in the car to its arrival here (trusted times only).
    latency: Reservoir = field(default_factory=Reservoir)

    @property
    def latency_p50_s(self) -> float | None:
        """The median end-to-end latency, seconds."""
        return self.latency.percentile(50)

    @property
    def latency_p99_s(self) -> float | None:
        """The 99th percentile of the end-to-end latency, seconds."""
        return self.latency.percentile(99)


class Dedup:
    """Event ids seen: in memory, or in an SQLite file shared by several instances."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:" if path is None else path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY) WITHOUT ROWID")

    def first_time(self, ids: list[str]) -> list[bool]:
        """For each id, whether it was new (and now recorded)."""
        with self._lock, self._db:
            return [
                self._db.execute("INSERT OR IGNORE INTO seen (id) VALUES (?)", (i,)).rowcount == 1
                for i in ids
            ]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


class CloudSim:
    """The reference cloud.

    Args:
        endpoint: The broker.
        key: The development signing key documents are signed with.
        instance: Distinguishes instances sharing the load (the MQTT client id).
        booking: How booking requests are answered.
        booking_delay_s: With ``delay``: how long before confirming.
        dedup: The de-duplication table (shared by instances, or private).
        documents: Which documents to publish to each car that comes online.
        on_event: Called with each new (not duplicate) event, on the MQTT thread.
        group: The shared-subscription group (see GROUP).
        clock_skew_s: Added to the time the clock replies give (tests of a wrong cloud).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        key: SigningKey,
        *,
        instance: str = "1",
        booking: BookingAnswer = "confirm",
        booking_delay_s: float = 5.0,
        dedup: Dedup | None = None,
        documents: bool = True,
        on_event: Callable[[str, WireEvent], None] | None = None,
        group: str = GROUP,
        clock_skew_s: float = 0.0,
    ) -> None:
        self.endpoint = endpoint
        self.clock_skew_s = clock_skew_s
        #: Whether stored batches are acknowledged (tests of a cloud that never says so).
        self.acknowledge = True
        #: Whether requests are answered at all (tests of a silent partner).
        self.answering = True
        #: The rules stopped on every car (:meth:`stop_rules`).
        self.stopped_rules: list[str] = []
        #: Seconds every answer waits before it goes out (tests of a slow partner).
        self.reply_delay_s = 0.0
        #: Called with each answer as it is published, on the thread publishing it.
        self.on_reply: Callable[[SlotsReply | BookingReply | RedemptionReply], None] | None = None
        self.key = key
        self.booking: BookingAnswer = booking
        self.booking_delay_s = booking_delay_s
        self.stats = CloudStats()
        self._dedup = dedup or Dedup()
        self._owns_dedup = dedup is None
        self._documents = documents
        self._on_event = on_event
        self._group = group
        self._published: set[str] = set()
        self._versions: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self._connected = threading.Event()
        self._closed = threading.Event()
        # A stable id with a persistent session: while an instance is away (a restart,
        # the broker's), the broker keeps its share of the group's messages.
        self._client_id = f"cloud-sim-{instance}"
        self.client = self._new_client()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5,
        )
        context = self.endpoint.tls_context()
        if context is not None:
            client.tls_set_context(context)
        elif self.endpoint.username:
            client.username_pw_set(self.endpoint.username)
        return client

    # -- life cycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; returns once the broker accepted.

        Raises:
            TimeoutError: Not connected within ``timeout``.
        """
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect(self.endpoint.host, self.endpoint.port, keepalive=30,
                            clean_start=False, properties=properties)  # fmt: skip
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise TimeoutError(f"cloud-sim: no connection to {self.endpoint.host}:"
                               f"{self.endpoint.port} within {timeout:.0f} s")  # fmt: skip

    def stop(self, *, keep_session: bool = False, timeout: float = 5.0) -> None:
        """Disconnect and stop the network thread.

        Without ``keep_session`` the session ends with the connection: an instance that
        is gone for good leaves the shared group, or the broker would keep queueing its
        share of the events for it (and the cars would wait for acknowledgements that
        never come). That holds even when the connection was down at the time.
        """
        for timer in self._timers:
            timer.cancel()
        properties = None
        if not keep_session:
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
        if self.client.is_connected():
            self._closed.clear()
            self.client.disconnect(properties=properties)
            # loop_stop ends the network thread at once, with whatever it had not yet
            # written: behind a queue of acknowledgements, the DISCONNECT was lost.
            self._closed.wait(timeout)
        else:
            self.client.disconnect()  # no more reconnecting
        self.client.loop_stop()
        if not keep_session:
            # The goodbye may not have reached the broker (the connection was down, or
            # dropped as it went, which paho reports as a clean disconnect), so make sure.
            self._end_session(timeout)
        if self._owns_dedup:
            self._dedup.close()

    def _end_session(self, timeout: float) -> None:
        """End this instance's session from a new connection.

        A clean start discards the session the broker kept, and an expiry of 0 lets the
        new one end with its connection.
        """
        closer = self._new_client()
        connected, closed = threading.Event(), threading.Event()
        closer.on_connect = lambda *_args: connected.set()
        closer.on_disconnect = lambda *_args: closed.set()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        try:
            closer.connect(self.endpoint.host, self.endpoint.port, keepalive=10,
                           clean_start=True, properties=properties)  # fmt: skip
        except OSError as err:
            _log.warning(
                "cloud-sim: could not end session %s (%s): the broker keeps its share "
                "of the group's messages until it expires", self._client_id, err,
            )  # fmt: skip
            return
        closer.loop_start()
        try:
            if connected.wait(timeout):
                closer.disconnect()
                closed.wait(timeout)
            else:
                _log.warning("cloud-sim: no connection to end session %s", self._client_id)
        finally:
            closer.loop_stop()

    # -- publishing documents --------------------------------------------------------------

    def publish_document(
        self,
        vehicle_id: str,
        kind: DocumentKind,
        body: Mapping[str, Any],
        version: int | None = None,
    ) -> int:
        """Sign and publish a document to one car (retained, except cards); its version."""
        with self._lock:
            key = (vehicle_id, kind.value)
            self._versions[key] = version if version is not None else self._versions[key] + 1
            version = self._versions[key]
        body = dict(body)
        if kind is not DocumentKind.CARD:
            body["version"] = version  # the body's own version agrees with the signed one
        document = self.key.sign(
            kind, body, version=version, vehicle_id=vehicle_id, issued_at=time.time()
        )
        topics = Topics(vehicle_id)
        topic = topics.cards if kind is DocumentKind.CARD else topics.config(kind)
        self.client.publish(
            topic, document.model_dump_json(), qos=1, retain=kind is not DocumentKind.CARD
        )
        return version

    def stop_rules(self, rule_ids: Sequence[str], vehicle_ids: Iterable[str] | None = None) -> int:
        """The kill switch: stop ``rule_ids`` on the cars (default: every car seen online).

        Each car's stop document is replaced whole (retained): an id left out of a later
        call has its stop lifted. New cars get it with their defaults. Returns how many
        cars it was published to.
        """
        with self._lock:
            self.stopped_rules = list(rule_ids)
            targets = list(vehicle_ids) if vehicle_ids is not None else sorted(self._published)
        for vehicle_id in targets:
            self.publish_document(vehicle_id, DocumentKind.RULE_STOPS,
                                  {"stopped": list(rule_ids)})  # fmt: skip
        return len(targets)

    def publish_defaults(self, vehicle_id: str) -> None:
        """A new car's documents: plan, history, catalogue, wallet and a campaign."""
        documents: list[tuple[DocumentKind, BaseModel]] = [
            (DocumentKind.SERVICE_PLAN, default_plan()),
            (DocumentKind.SERVICE_HISTORY, demo_history()),
            (DocumentKind.DTC_CATALOGUE, default_catalogue()),
            (DocumentKind.WALLET, demo_wallet()),
            (DocumentKind.RULES, demo_campaign()),
        ]
        for kind, document in documents:
            self.publish_document(vehicle_id, kind, document.model_dump(mode="json", by_alias=True))
        if self.stopped_rules:
            self.publish_document(vehicle_id, DocumentKind.RULE_STOPS,
                                  {"stopped": list(self.stopped_rules)})  # fmt: skip

    # -- receiving -------------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            _log.error("cloud-sim: the broker refused the connection: %s", reason)
            return
        client.subscribe(f"$share/{self._group}/{PREFIX}/+/events", qos=1)
        client.subscribe(f"$share/{self._group}/{PREFIX}/+/req/+", qos=1)
        client.subscribe(f"$share/{self._group}/{PREFIX}/+/clock", qos=0)
        client.subscribe(f"{PREFIX}/+/status", qos=1)
        self._connected.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        _reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._closed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        parsed = parse_topic(msg.topic)
        if parsed is None:
            return
        vehicle_id, rest = parsed
        try:
            if rest == "events":
                self._events(vehicle_id, bytes(msg.payload))
            elif rest == "status":
                self._status(vehicle_id, bytes(msg.payload))
            elif rest.startswith("req/"):
                self._request(vehicle_id, rest.removeprefix("req/"), msg)
            elif rest == "clock":
                self._clock(vehicle_id, msg)
        except ValidationError as err:
            with self._lock:
                self.stats.malformed += 1
            _log.warning("cloud-sim: malformed message on %s: %s", msg.topic, err)

    def _events(self, vehicle_id: str, payload: bytes) -> None:
        arrived = time.time()
        batch = EventBatch.model_validate_json(payload)
        if batch.vehicle_id != vehicle_id:
            with self._lock:
                self.stats.malformed += 1
            _log.warning("cloud-sim: a batch for %s on %s's topic", batch.vehicle_id, vehicle_id)
            return
        fresh = self._dedup.first_time([e.id for e in batch.events])
        with self._lock:
            self.stats.batches += 1
            for event, new in zip(batch.events, fresh, strict=True):
                if not new:
                    self.stats.duplicates += 1
                    continue
                self.stats.events += 1
                self.stats.by_type[event.type] += 1
                self.stats.by_vehicle[vehicle_id] += 1
                # A car whose clock was never set says so: its time measures nothing.
                if event.time_trusted:
                    self.stats.latency.add(arrived - event.time)
        if self._on_event is not None:
            for event, new in zip(batch.events, fresh, strict=True):
                if new:
                    self._on_event(vehicle_id, event)
        # Stored (and handed on): only now may the car forget them. A duplicate is
        # acknowledged too: the car sent it again because an ack was lost.
        self._ack(vehicle_id, batch.batch_id)

    def _ack(self, vehicle_id: str, batch_id: str) -> None:
        if not self.acknowledge:
            return
        ack = Ack(batches=[batch_id], sent_at=time.time())
        self.client.publish(f"{PREFIX}/{vehicle_id}/ack", ack.model_dump_json(), qos=1)
        with self._lock:
            self.stats.acks += 1

    def _clock(self, vehicle_id: str, msg: mqtt.MQTTMessage) -> None:
        request = ClockRequest.model_validate_json(msg.payload)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        correlation = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        if correlation is not None:
            properties.CorrelationData = correlation
        reply = ClockReply(request_id=request.request_id, sent_at=time.time() + self.clock_skew_s)
        self.client.publish(f"{PREFIX}/{vehicle_id}/clock/reply", reply.model_dump_json(),
                            qos=0, properties=properties)  # fmt: skip

    def _status(self, vehicle_id: str, payload: bytes) -> None:
        if not payload:
            return  # a retained status being cleared
        status = Status.model_validate_json(payload)
        with self._lock:
            if status.state == "online":
                self.stats.online.add(vehicle_id)
            else:
                self.stats.online.discard(vehicle_id)
            first = status.state == "online" and vehicle_id not in self._published
            if first:
                self._published.add(vehicle_id)
        if first and self._documents:
            self.publish_defaults(vehicle_id)

    def _request(self, vehicle_id: str, name: str, msg: mqtt.MQTTMessage) -> None:
        event = WireEvent.model_validate_json(msg.payload)
        new = self._dedup.first_time([event.id])[0]
        with self._lock:
            self.stats.requests += 1
            if new:
                self.stats.requests_new += 1
                self.stats.by_type[event.type] += 1
                self.stats.by_vehicle[vehicle_id] += 1
        if new and self._on_event is not None:
            self._on_event(vehicle_id, event)
        self._ack(vehicle_id, event.id)
        properties = getattr(msg, "properties", None)
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        request_id = event.request_id or event.id
        if response_topic is None:
            _log.warning("cloud-sim: %s without a response topic", msg.topic)
            return
        # Answer duplicates too: the car ignores a repeated answer, and the first may
        # have been lost with the connection.
        reply = self._answer(RequestName(name), request_id, event.payload)
        if reply is None or not self.answering:
            return
        delay = self.booking_delay_s if name == "booking" and self.booking == "delay" else 0.0
        delay += self.reply_delay_s
        if delay > 0:
            timer = threading.Timer(delay, self._reply, (response_topic, correlation, reply))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        else:
            self._reply(response_topic, correlation, reply)

    def _answer(
        self, name: RequestName, request_id: str, payload: Mapping[str, Any]
    ) -> SlotsReply | BookingReply | RedemptionReply | None:
        now = time.time()
        if name is RequestName.BOOKING_SLOTS:
            return SlotsReply(request_id=request_id, slots=demo_slots(now), sent_at=now)
        if name is RequestName.BOOKING:
            if self.booking == "decline":
                return BookingReply(request_id=request_id, status="declined",
                                    reason="the workshop is fully booked", sent_at=now)  # fmt: skip
            slot = next((s for s in demo_slots(now) if s.id == payload.get("slot_id")),
                        None)  # fmt: skip
            return BookingReply(request_id=request_id, status="confirmed",
                                booking_id=f"BK-{request_id[-8:]}", slot=slot,
                                sent_at=now)  # fmt: skip
        code = f"CF-{request_id[-6:].upper()}"  # the partner's voucher for this redemption
        return RedemptionReply(request_id=request_id, accepted=True, code=code, sent_at=now)

    def _reply(
        self,
        topic: str,
        correlation: bytes | None,
        reply: SlotsReply | BookingReply | RedemptionReply,
    ) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation is not None:
            properties.CorrelationData = correlation
        self.client.publish(topic, reply.model_dump_json(by_alias=True), qos=1,
                            properties=properties)  # fmt: skip
        with self._lock:
            self.stats.answered += 1
        if self.on_reply is not None:
            self.on_reply(reply)

    def snapshot(self) -> CloudStats:
        """A copy of the statistics."""
        with self._lock:
            return dataclasses.replace(
                self.stats,
                by_type=Counter(self.stats.by_type),
                by_vehicle=Counter(self.stats.by_vehicle),
                online=set(self.stats.online),
                latency=self.stats.latency.copy(),
            )
