"""Cloud sync in the daemon: the outbox up, documents, answers and the time down.

Up (store-and-forward): the SQLite outbox is the queue. Events leave it in priority
then age order, batched up to a count and a byte limit, with at most ``window``
messages on their way. A row is deleted only when the cloud's ``ack`` names its batch
(the cloud has stored it); the broker's PUBACK is flow control and reason codes: a
failure code releases the rows for a retry, and after ``max_attempts`` they go to the
dead-letter table with the broker's reason. A batch the broker took but the cloud has
not acknowledged within ``ack_timeout_s`` is sent again, same event ids. On a
disconnect, everything on its way goes back to pending (a restart does the same when
the store opens): delivery is at least once, and every event carries its id for the
cloud to drop duplicates. Consent is checked again at send time: an event whose
category the driver has withdrawn since it was recorded is deleted, not sent.

The time: on connecting and every hour, the car asks the cloud for the time
(:mod:`cloud_sync.clock_exchange`) and gives the agent what it measures.

Down: replies to requests go to the agent's flows; signed documents pass the
:class:`~cloud_sync.downlink.DownlinkGate` and take effect through
:meth:`agent.core.Agent.apply_document`, or are refused with a ``downlink.rejected``
event. Messages are handled one at a time, in arrival order, each committed before
the next is looked at (so a version check always sees the version in effect).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from agent.booking import BookingStatus, Slot
from agent.errors import StoreError
from agent.events import Event, OutboxRow
from agent.ports import CloudHost
from cloud_sync.clock_exchange import ClockExchange
from cloud_sync.contract import (
    REPLIES,
    SCHEMA_VERSION,
    Ack,
    BookingReply,
    ClockReply,
    ClockRequest,
    RedemptionReply,
    RequestName,
    SlotsReply,
    Status,
    Topics,
    WireSlot,
    parse_topic,
)
from cloud_sync.downlink import Accepted, DownlinkGate, Ignored, short_reason
from cloud_sync.inflight import InFlight, Sent
from cloud_sync.link import Incoming, MqttLink, Outgoing
from cloud_sync.settings import CloudSettings
from cloud_sync.signing import Verifier
from touchpoint.ratelimit import RateLimitedLog
from touchpoint.tasks import LoopRecord, Supervisor, beat, idle
from touchpoint.version import package_version

_log = logging.getLogger(__name__)
_rejections = RateLimitedLog(_log, interval=10.0)

REQUEST_PREFIX: Final = "request."
#: The PUBACK reason "no matching subscribers" (see ``CloudSync._unheard``).
NO_MATCHING_SUBSCRIBERS: Final = 0x10
QUIET_MIN_S: Final = 0.5
QUIET_MAX_S: Final = 30.0
#: After the store refused to hand out events (a full disk), the next try is this late.
STORE_RETRY_S: Final = 2.0
#: The supervised loops, by name and method.
_LOOPS: Final = (
    ("cloud send", "_send_loop"),
    ("cloud receive", "_receive_loop"),
    ("cloud timers", "_timers"),
)


@dataclass(slots=True)
class SyncStats:
    """What cloud sync has done since the daemon started."""

    connections: int = 0
    messages_sent: int = 0
    events_sent: int = 0
    events_acknowledged: int = 0
    events_refused: int = 0
    events_dead_lettered: int = 0
    events_withheld: int = 0
    events_unheard: int = 0
    replies: int = 0
    #: Events the cloud did not acknowledge in time (sent again).
    events_unacknowledged: int = 0
    #: Times the cloud's clock was taken.
    clock_readings: int = 0
    documents_applied: int = 0
    documents_rejected: int = 0
    #: Store calls that failed (a full disk) and were retried.
    store_failures: int = 0
    last_refusal: str | None = None


class CloudSync:
    """The daemon's link to the cloud.

    Args:
        host: The daemon.
        settings: ``[cloud]``.
        vehicle_id: This car's id (``[vehicle] id``).
    """

    def __init__(
        self,
        host: CloudHost,
        settings: CloudSettings,
        vehicle_id: str,
        *,
        on_crash: Callable[[LoopRecord, BaseException], None] | None = None,
    ) -> None:
        self._host = host
        #: Runs the send, receive and timer loops and the link: a crash is restarted.
        self.supervisor = Supervisor(on_crash)
        #: Outbox changes the store refused (a full disk), retried by the timer loop.
        self._retries: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._settings = settings
        self.topics = Topics(vehicle_id)
        self._gate = DownlinkGate(vehicle_id, Verifier(settings.signing_keys))
        self.stats = SyncStats()
        self._inflight = InFlight()
        self._clock = ClockExchange()
        self._tokens = 0
        self._connected = False
        self._wake = asyncio.Event()
        self._inbox: asyncio.Queue[Incoming] = asyncio.Queue()
        self._chores: set[asyncio.Task[None]] = set()
        self._software = package_version()
        self._backlog = 0
        self._quiet_s = 0.0
        self._resume_at = 0.0
        self._acked: list[str] = []
        self._acking = False
        self.link = MqttLink(
            settings,
            vehicle_id,
            subscriptions=(
                self.topics.config_filter,
                self.topics.cards,
                self.topics.response_filter,
                self.topics.ack,
                self.topics.clock_reply,
            ),
            will=(self.topics.status, self._status("offline")),
            online=(self.topics.status, lambda: self._status("online", self._backlog)),
            listener=self,
            time_bounds=host.time_bounds,
        )

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the connection and it is up."""
        return self._connected

    async def start(self) -> None:
        """Connect in the background and start sending (an unreachable broker is normal)."""
        self._backlog = await self._host.outbox.backlog()
        self.link.start(self.supervisor)
        for name, loop in _LOOPS:
            self.supervisor.start(name, getattr(self, loop))

    async def stop(self) -> None:
        """Say offline, disconnect, and put what was in flight back to pending."""
        await self.supervisor.stop([name for name, _ in _LOOPS])
        if self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)
        await self.link.stop(self._status("offline"))
        await self.supervisor.stop()
        await self._release_all("the daemon stopped")

    # -- the daemon's event tap: told after each commit that recorded events ------------

    def events_committed(self, events: Sequence[Event]) -> None:  # noqa: ARG002
        """Events are durable in the outbox: there is something to send."""
        self._wake.set()

    # -- the link's listener (on the event loop) ----------------------------------------

    def on_connected(self, session_present: bool) -> None:  # noqa: FBT001
        """The broker accepted us: start sending."""
        self._connected = True
        self.stats.connections += 1
        _log.info("connected to the cloud broker (session %s)",
                  "resumed" if session_present else "new")  # fmt: skip
        self._ask_time()
        self._wake.set()

    def on_disconnected(self, reason: str) -> None:
        """In-flight events go back to pending: they will be sent again."""
        self._connected = False
        _log.info("disconnected from the cloud broker: %s", reason)
        self._spawn(self._release_all(reason))

    def on_published(self, token: int, reason: ReasonCode | None) -> None:
        """A PUBACK: the message waits for the cloud's ack, or is retried or dead-lettered."""
        if reason is None or (not reason.is_failure and reason.value != NO_MATCHING_SUBSCRIBERS):
            if self._inflight.published(token) is not None:
                self._quiet_s = 0.0
            return
        entry = self._inflight.refused(token)
        if entry is None:
            return  # sent on a connection that has since gone; released already
        self._spawn(self._settle(entry, reason))

    def on_received(self, message: Incoming) -> None:
        """A downlink message: handled in order by the receive loop."""
        self._inbox.put_nowait(message)

    # -- up ------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            beat()
            with idle():
                await self._wake.wait()
                self._wake.clear()
                pause = self._resume_at - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
            try:
                while self._connected and len(self._inflight) < self._settings.window:
                    beat()
                    if not await self._send_next():
                        break
            except StoreError as err:
                # A full disk, say: nothing was taken; try again shortly, never give up.
                self.stats.store_failures += 1
                _rejections.warning("store", "cannot take events to send: %s; retrying", err)
                with idle():
                    await asyncio.sleep(STORE_RETRY_S)
                self._wake.set()

    async def _send_next(self) -> bool:
        settings = self._settings
        taken = await self._host.outbox.take(settings.batch_events, settings.batch_bytes)
        send, withheld, self._backlog = taken.rows, taken.withheld, taken.backlog
        now = time.time()
        if withheld:
            self.stats.events_withheld += withheld
            _log.info("%d events withheld: their consent was withdrawn", withheld)
        if not send:
            return False
        messages = self._messages(send, now)
        for index, (message, entry) in enumerate(messages):
            self._tokens += 1
            if not self.link.publish(dataclasses.replace(message, token=self._tokens)):
                # The connection went meanwhile: what was taken and not sent goes back
                # (what was sent, the disconnect puts back).
                unsent = [i for _, e in messages[index:] for i in e.ids]
                await self._release(unsent, None, count=False)
                return False
            self._inflight.add(self._tokens, entry)
            self.stats.messages_sent += 1
            self.stats.events_sent += len(entry.ids)
        return True

    def _messages(self, rows: Sequence[OutboxRow], now: float) -> list[tuple[Outgoing, Sent]]:
        """Rows to messages, in order: a batch of events, or one request each."""
        out: list[tuple[Outgoing, Sent]] = []
        batch: list[OutboxRow] = []
        sent = time.monotonic()

        def flush() -> None:
            if batch:
                batch_id = str(uuid.uuid4())
                text = _batch_json(self.topics.vehicle_id, batch_id, now, batch)
                entry = Sent(batch_id, {r.id: r.attempts + 1 for r in batch}, sent)
                out.append((Outgoing(0, self.topics.events, text.encode()), entry))
                batch.clear()

        for row in rows:
            if not row.type.startswith(REQUEST_PREFIX):
                batch.append(row)
                continue
            flush()
            out.append((self._request(row, now), Sent(row.id, {row.id: row.attempts + 1}, sent)))
        flush()
        return out

    def _request(self, row: OutboxRow, now: float) -> Outgoing:
        try:
            name = RequestName(row.type.removeprefix(REQUEST_PREFIX))
        except ValueError:
            name = RequestName.BOOKING  # unknown requests: sent, not stuck (logged)
            _log.error("no request topic for %s; sending it on %s", row.type, name.value)
        remaining = (row.expires - now) if row.expires else self._settings.request_expiry_s
        return Outgoing(
            0, self.topics.request(name), _event_json(row).encode(),
            response_topic=self.topics.response(name),
            correlation=(row.request_id or row.id).encode(),
            expiry_s=max(1, int(remaining)),
        )  # fmt: skip

    async def _settle(self, entry: Sent, reason: ReasonCode) -> None:
        if reason.value == NO_MATCHING_SUBSCRIBERS:
            await self._unheard(entry)
        else:
            why = f"the broker refused it: {reason}"
            self.stats.events_refused += len(entry.ids)
            self.stats.last_refusal = why
            _rejections.warning("refused", "%d events refused by the broker: %s",
                                len(entry.ids), reason)  # fmt: skip
            dead = [i for i in entry.ids if entry.attempts[i] >= self._settings.max_attempts]
            retry = [i for i in entry.ids if i not in dead]

            if dead:
                await self._outbox_call("dead-lettering", lambda: self._host.outbox.dead_letter(
                    dead, why))  # fmt: skip
            await self._release(retry, why, count=True)
            self.stats.events_dead_lettered += len(dead)
        self._wake.set()

    async def _acknowledge(self, ids: list[str]) -> None:
        """Delete acknowledged events; acks arriving meanwhile share one commit."""
        self._acked.extend(ids)
        if self._acking:
            return  # the running flush takes these too
        self._acking = True
        try:
            while self._acked:
                batch, self._acked = self._acked, []
                try:
                    self._backlog = await self._host.outbox.acknowledge(batch)
                except StoreError as err:
                    # Kept, and deleted by the timer loop's next try: left in flight they
                    # would only be sent again after a restart.
                    self._acked[:0] = batch
                    self.stats.store_failures += 1
                    _rejections.warning("store", "cannot delete %d acknowledged events: %s; "
                                        "retrying", len(batch), err)  # fmt: skip
                    return
                self.stats.events_acknowledged += len(batch)
        finally:
            self._acking = False

    async def _unheard(self, entry: Sent) -> None:
        """The broker took the message but nobody subscribes: the cloud is not there.

        0x10 is a success code to MQTT, not to us: an event nobody received is not
        delivered. It goes back to pending (not an attempt), and sending pauses, longer
        each time, until the cloud's consumers are back.
        """
        await self._release(entry.ids, "no subscriber", count=False)
        self.stats.events_unheard += len(entry.ids)
        self._quiet_s = min(max(self._quiet_s * 2, QUIET_MIN_S), QUIET_MAX_S)
        self._resume_at = time.monotonic() + self._quiet_s
        _rejections.warning("unheard", "no cloud consumer subscribes to %s; holding events "
                            "for %.1f s", self.topics.events, self._quiet_s)  # fmt: skip

    async def _release_all(self, reason: str) -> None:
        ids = [i for entry in self._inflight.clear() for i in entry.ids]
        if ids:
            # Not the broker's refusal: this send does not count as an attempt.
            await self._release(ids, None, count=False)
            _log.info("%d events back to pending (%s)", len(ids), reason)

    async def _release(self, ids: Sequence[str], reason: str | None, *, count: bool) -> None:
        """Back to pending; retried until the store takes it (else in flight until restart)."""
        chosen = list(ids)
        await self._outbox_call(
            "releasing", lambda: self._host.outbox.release(chosen, reason, count=count)
        )

    async def _outbox_call(self, what: str, call: Callable[[], Awaitable[None]]) -> None:
        try:
            await call()
        except StoreError as err:
            self.stats.store_failures += 1
            _rejections.warning("store", "%s events failed: %s; retrying", what, err)
            self._retries.append((what, call))

    # -- down ----------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            beat()
            with idle():
                message = await self._inbox.get()
            try:
                await self._handle(message)
            except StoreError as err:
                # Taken by the agent; its record waits in order for the store (a full
                # disk) and is saved when the store takes commits again.
                self.stats.store_failures += 1
                _rejections.warning("store", "%s taken, not saved yet: %s", message.topic, err)
            except Exception:  # noqa: BLE001 - one bad message must not stop the others
                _log.exception("handling %s failed", message.topic)

    async def _handle(self, message: Incoming) -> None:
        parsed = parse_topic(message.topic)
        if parsed is None or parsed[0] != self.topics.vehicle_id:
            _log.debug("ignored a message on %s", message.topic)
            return
        rest = parsed[1]
        if rest.startswith("res/"):
            await self._reply(rest.removeprefix("res/"), message)
            return
        if rest == "ack":
            await self._acked_by_cloud(message)
            return
        if rest == "clock/reply":
            await self._clock_reply(message)
            return
        verdict = self._gate.check(message.topic, message.payload, self._host.document_versions())
        if isinstance(verdict, Ignored):
            _log.debug("downlink on %s ignored: %s", message.topic, verdict.why)
        elif isinstance(verdict, Accepted):
            await self._host.apply_document(verdict.kind.value, verdict.version, verdict.body)
            self.stats.documents_applied += 1
            _log.info("%s version %d is in effect", verdict.kind.value, verdict.version)
        else:
            await self._refuse(verdict.reason, message.topic, verdict.kind, verdict.version)

    async def _refuse(
        self, reason: str, topic: str, kind: Any = None, version: int | None = None
    ) -> None:
        self.stats.documents_rejected += 1
        _rejections.warning("downlink", "refused a message on %s: %s", topic, reason)
        kind_name = None if kind is None else str(getattr(kind, "value", kind))
        await self._host.reject_document(reason, kind=kind_name, version=version, topic=topic)

    async def _reply(self, name: str, message: Incoming) -> None:
        try:
            request = RequestName(name)
            reply = REPLIES[request].model_validate_json(message.payload)
        except (ValueError, ValidationError) as err:
            reason = short_reason(f"not a valid {name} reply: {err}")
            await self._refuse(reason, message.topic)
            return
        if message.correlation is not None and message.correlation != reply.request_id.encode():
            await self._refuse("the correlation data does not match the request id",
                               message.topic)  # fmt: skip
            return
        self.stats.replies += 1
        await _answer(self._host, reply)

    async def _acked_by_cloud(self, message: Incoming) -> None:
        try:
            ack = Ack.model_validate_json(message.payload)
        except ValidationError as err:
            await self._refuse(short_reason(f"not a valid ack: {err}"), message.topic)
            return
        ids: list[str] = []
        for key in ack.batches:
            entry = self._inflight.acknowledged(key)
            if entry is not None:
                ids.extend(entry.ids)
        if ids:
            await self._acknowledge(ids)
        self._wake.set()

    async def _clock_reply(self, message: Incoming) -> None:
        try:
            reply = ClockReply.model_validate_json(message.payload)
        except ValidationError as err:
            await self._refuse(short_reason(f"not a valid clock reply: {err}"), message.topic)
            return
        reading = self._clock.answer(reply.request_id, reply.sent_at, time.monotonic())
        if reading is None:
            _log.debug("a clock reply came too late or unasked for: not taken")
            return
        self.stats.clock_readings += 1
        await self._host.on_cloud_time(reading.wall, reading.monotonic)

    def _ask_time(self) -> None:
        request_id = self._clock.ask(time.monotonic())
        payload = ClockRequest(request_id=request_id).model_dump_json().encode()
        self.link.publish(
            Outgoing(-1, self.topics.clock, payload, response_topic=self.topics.clock_reply,
                     correlation=request_id.encode(), qos=0)
        )  # fmt: skip

    async def _timers(self) -> None:
        """The cloud's acks overdue, and the hourly clock request."""
        while True:
            beat()
            await asyncio.sleep(1.0)
            now = time.monotonic()
            retries, self._retries = self._retries, []
            for what, call in retries:
                await self._outbox_call(what, call)
            if retries:
                self._wake.set()  # what went back to pending is to be sent
            if self._acked and not self._acking:
                await self._acknowledge([])
            late = self._inflight.overdue(now, self._settings.ack_timeout_s)
            if late:
                ids = [i for entry in late for i in entry.ids]
                self.stats.events_unacknowledged += len(ids)
                _rejections.warning("unacked", "the cloud did not acknowledge %d events within "
                                    "%.0f s; sending them again", len(ids),
                                    self._settings.ack_timeout_s)  # fmt: skip
                await self._release(ids, "no ack from the cloud", count=False)
                self._wake.set()
            if self._connected and self._clock.due(now):
                self._ask_time()

    # -- helpers -------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        # Store work started from a callback; kept so it is not collected mid-way, and
        # awaited at stop.
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def _status(self, state: str, backlog: int | None = None) -> bytes:
        status = Status(vehicle_id=self.topics.vehicle_id, state=state,  # type: ignore[arg-type]
                        at=time.time(), software=self._software, backlog=backlog)  # fmt: skip
        return status.model_dump_json(exclude_none=True).encode()


def _slot(slot: WireSlot) -> Slot:
    return Slot(slot.id, slot.start, slot.dealer.text() if slot.dealer else None)


async def _answer(host: CloudHost, reply: SlotsReply | BookingReply | RedemptionReply) -> None:
    if isinstance(reply, SlotsReply):
        await host.on_slots(reply.request_id, [_slot(s) for s in reply.slots])
    elif isinstance(reply, BookingReply):
        await host.on_booking_answer(
            reply.request_id, BookingStatus(reply.status), booking_id=reply.booking_id,
            reason=reply.reason, slot=_slot(reply.slot) if reply.slot else None,
        )  # fmt: skip
    else:
        message = reply.message.text() if reply.message else None
        await host.on_redemption_answer(
            reply.request_id, accepted=reply.accepted, message=message, code=reply.code
        )


def _event_json(row: OutboxRow) -> str:
    """The event as JSON, its stored payload spliced in as it is (no re-encoding)."""
    head: dict[str, Any] = {
        "id": row.id, "type": row.type, "category": row.category, "time": row.time,
        "time_trusted": row.time_trusted, "boot_id": row.boot_id, "seq": row.seq,
    }  # fmt: skip
    if row.request_id is not None:
        head["request_id"] = row.request_id
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
    return f'{text[:-1]},"payload":{row.payload}}}'


def _batch_json(vehicle_id: str, batch_id: str, now: float, rows: Sequence[OutboxRow]) -> str:
    events = ",".join(_event_json(r) for r in rows)
    head = json.dumps(
        {"schema_version": SCHEMA_VERSION, "vehicle_id": vehicle_id, "batch_id": batch_id,
         "sent_at": now},
        separators=(",", ":"),
    )  # fmt: skip
    return f'{head[:-1]},"events":[{events}]}}'
