"""The MQTT connection: one paho-mqtt client at a time, driven from the event loop.

Nothing else touches the paho client. paho does no I/O of its own here: its socket is
watched by the event loop (``add_reader``, and ``add_writer`` while paho has bytes to
write), and a timer calls ``loop_misc`` for keep-alive and retries, the pattern aiomqtt
uses. Only the connection itself (a blocking TCP connect and TLS handshake inside
paho's ``connect``) runs in an executor thread. So there is no thread of our own, no
queue and no wake-up pipe, and no ``select()``, whose descriptor limit capped how many
links fleet-sim could hold in one process. Its owner hears back through a
:class:`LinkListener`, on the event loop: connected, disconnected, a publish
acknowledged (with the broker's reason code), a message received.

Each connection attempt uses a fresh client with ``clean_start = false`` and a session
expiry: the broker keeps the car's subscriptions and queues its downlink through a
coverage gap, while what the car had in flight is forgotten with the old client. The
outbox, not paho's memory, is the queue: the forwarder sends those events again.
Reconnects back off exponentially with jitter.

TLS before the time is known: OpenSSL would judge the broker's certificate by the system
clock, so a car whose clock is wrong (a flat RTC battery, a clock set to 2106) could never
connect to learn the time. The handshake is made without OpenSSL's time check, and the
certificate's validity is then checked against the agent's clock model
(:class:`TimeBounds`): with a trusted time, exactly; without one, only that it had not
expired by the clock's floor (the latest instant known to have passed, never earlier
than this build's release). Everything else of the certificate (chain to the pinned CA,
host name, the CRL) is OpenSSL's check as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.ports import TimeBounds
from cloud_sync.settings import CloudSettings
from touchpoint.tasks import Supervisor, beat, idle

_log = logging.getLogger(__name__)

#: How often paho's keep-alive and retry timers run (``loop_misc``).
_MISC_S: Final = 1.0
#: How long a stop waits for the DISCONNECT (after the offline status) to go out.
_STOP_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish at QoS 1; ``token`` comes back in :meth:`LinkListener.on_published`."""

    token: int
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1
    response_topic: str | None = None
    correlation: bytes | None = None
    expiry_s: int | None = None


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message received."""

    topic: str
    payload: bytes
    correlation: bytes | None


class LinkListener(Protocol):
    """What the link tells its owner, on the owner's event loop."""

    def on_connected(self, session_present: bool) -> None:  # noqa: FBT001 - paho's flag
        """The broker accepted the connection and the subscriptions were sent."""

    def on_disconnected(self, reason: str) -> None:
        """The connection is gone; nothing sent before will be acknowledged."""

    def on_published(self, token: int, reason: ReasonCode | None) -> None:
        """The broker acknowledged ``token`` (``None``: sent at QoS 0)."""

    def on_received(self, message: Incoming) -> None:
        """A message arrived on a subscription."""


#: OpenSSL's ``X509_V_FLAG_NO_CHECK_TIME``: the validity period is ours to check.
_NO_CHECK_TIME: Final = 0x200000
#: Clock slack allowed on a certificate's start with a trusted time, in seconds.
CERT_SLACK_S: Final = 300.0


def certificate_problem(certificate: dict[str, object], bounds: TimeBounds) -> str | None:
    """Why the peer's certificate is not valid at the time the agent knows, or ``None``."""
    try:
        not_before = ssl.cert_time_to_seconds(str(certificate["notBefore"]))
        not_after = ssl.cert_time_to_seconds(str(certificate["notAfter"]))
    except (KeyError, ValueError):
        return "the broker's certificate has no validity period"
    if not_after < bounds.floor:
        return "the broker's certificate expired (by the clock's floor)"
    if bounds.trusted is not None:
        if bounds.trusted > not_after:
            return "the broker's certificate expired"
        if bounds.trusted + CERT_SLACK_S < not_before:
            return "the broker's certificate is not valid yet"
    return None


class MqttLink:
    """The car's MQTT 5 connection, on the owner's event loop.

    Args:
        settings: Broker address, TLS files, keep-alive, session expiry, back-off.
        client_id: The MQTT client id (the vehicle id).
        subscriptions: Topic filters subscribed at QoS 1 on every connection.
        will: ``(topic, payload)`` the broker publishes retained if the car vanishes.
        online: ``(topic, payload maker)`` published retained on every connection.
        listener: Who hears of connections, acknowledgements and messages.
        time_bounds: What the agent knows of the time, to judge certificates by.
    """

    def __init__(
        self,
        settings: CloudSettings,
        client_id: str,
        *,
        subscriptions: Sequence[str],
        will: tuple[str, bytes],
        online: tuple[str, Callable[[], bytes]],
        listener: LinkListener,
        time_bounds: Callable[[], TimeBounds] | None = None,
    ) -> None:
        self._settings = settings
        self._time_bounds = time_bounds
        self._client_id = client_id
        self._subscriptions = tuple(subscriptions)
        self._will = will
        self._online = online
        self._listener = listener
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: mqtt.Client | None = None
        self._fd = -1
        self._gone: asyncio.Future[str] | None = None
        self._mids: dict[int, int] = {}
        self._connected = False
        self._stopping = False
        self._tls: ssl.SSLContext | None = None
        #: Connection attempts that failed, for ``touchpoint doctor`` and the tests.
        self.failures = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the connection and it is up."""
        return self._connected

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start connecting (call from the owner's event loop), supervised if given one.

        Raises:
            OSError: The TLS files cannot be read.
            ssl.SSLError: They are not a usable certificate, key and CA.
        """
        self._loop = asyncio.get_running_loop()
        self._tls = _tls_context(self._settings) if self._settings.tls else None
        if supervisor is None:
            self._task = self._loop.create_task(self._run(), name="mqtt link")
        else:
            self._task = supervisor.start("mqtt link", self._run)

    def publish(self, message: Outgoing) -> bool:
        """Publish now; ``False`` if there is no connection (the message is not sent).

        The owner hears of a lost connection (:meth:`LinkListener.on_disconnected`)
        before anything else it asks, so it never counts on a message this refused.
        """
        client = self._client
        if client is None or not self._connected:
            return False
        properties = None
        if message.response_topic or message.correlation or message.expiry_s:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if message.response_topic:
                properties.ResponseTopic = message.response_topic
            if message.correlation:
                properties.CorrelationData = message.correlation
            if message.expiry_s:
                properties.MessageExpiryInterval = message.expiry_s
        info = client.publish(
            message.topic, message.payload, message.qos, message.retain, properties
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self._mids[info.mid] = message.token
        return True

    async def stop(self, offline: bytes | None = None) -> None:
        """Disconnect (first publishing ``offline`` on the status topic) and stop."""
        self._stopping = True
        client, gone = self._client, self._gone
        if client is not None and self._connected:
            if offline is not None:
                client.publish(self._will[0], offline, 1, True)
            client.disconnect()
            if gone is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(gone), _STOP_S)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._settings.reconnect_min_s
        while True:
            client = self._new_client()
            accepted = False
            try:
                with idle():  # reaching the broker may take long; it is not being stuck
                    await loop.run_in_executor(None, self._connect, client)
            except (OSError, ssl.SSLError, ValueError) as err:
                self.failures += 1
                self.last_error = str(err) or type(err).__name__
                _log.warning("cannot reach the MQTT broker (%s); retrying", self.last_error)
            else:
                problem = self._certificate_problem(client)
                if problem is None:
                    accepted = await self._serve(client)
                else:
                    self.failures += 1
                    self.last_error = problem
                    _log.warning("not using the broker's connection: %s", problem)
            self._drop(client)
            if self._stopping:
                return
            if accepted:
                delay = self._settings.reconnect_min_s  # it was up: start over
            # Full jitter: a fleet that lost the broker together does not return together.
            with idle():
                await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - not cryptographic
            delay = min(delay * 2, self._settings.reconnect_max_s)

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        if self._tls is not None:
            client.tls_set_context(self._tls)
        else:
            # A plain listener (loopback, development) has no certificate to name the
            # car: it claims its identity as the user name, which the ACL goes by.
            client.username_pw_set(self._client_id)
        client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _connect(self, client: mqtt.Client) -> None:
        """The blocking part (TCP connect, TLS handshake, CONNECT sent): in a thread."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.session_expiry_s
        settings = self._settings
        client.connect(
            settings.host,
            settings.port,
            keepalive=settings.keepalive_s,
            clean_start=False,
            properties=properties,
        )

    def _certificate_problem(self, client: mqtt.Client) -> str | None:
        sock = client.socket()
        if not isinstance(sock, ssl.SSLSocket) or self._time_bounds is None:
            return None
        certificate = sock.getpeercert()
        if not certificate:
            return "the broker sent no certificate"
        return certificate_problem(dict(certificate), self._time_bounds())

    async def _serve(self, client: mqtt.Client) -> bool:
        """Run one connection until it ends; whether the broker ever accepted it."""
        loop = asyncio.get_running_loop()
        sock = client.socket()
        if sock is None:
            return False
        self._client, self._fd = client, sock.fileno()
        self._gone = gone = loop.create_future()
        client.on_socket_register_write = lambda *_: self._want_write(True)
        client.on_socket_unregister_write = lambda *_: self._want_write(False)
        # paho closes the socket itself on an error or after DISCONNECT: stop watching
        # its number first, before another socket can reuse it.
        client.on_socket_close = lambda *_: self._unwatch()
        loop.add_reader(self._fd, self._readable)
        self._want_write(client.want_write())
        misc = loop.create_task(self._misc(client), name="mqtt timers")
        accepted = False
        try:
            while not gone.done():
                beat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(gone), _MISC_S)
                accepted = accepted or self._connected
        finally:
            misc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await misc
        cause = gone.result()
        if self._connected or accepted:
            self._connected = False
            self._listener.on_disconnected(cause)
        return accepted

    async def _misc(self, client: mqtt.Client) -> None:
        while True:
            if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                self._end("the connection timed out")
                return
            await asyncio.sleep(_MISC_S)

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            while True:
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    self._end("connection lost")
                    return
                # TLS may hold decrypted bytes the kernel no longer shows as readable.
                sock = client.socket()
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0):
                    return
        except (OSError, ValueError) as err:
            self._end(f"connection lost: {err}")

    def _writable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            if client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                self._end("connection lost")
        except (OSError, ValueError) as err:
            self._end(f"connection lost: {err}")

    def _want_write(self, want: bool) -> None:  # noqa: FBT001
        loop, fd = self._loop, self._fd
        if loop is None or fd < 0:
            return
        if want:
            loop.add_writer(fd, self._writable)
        else:
            loop.remove_writer(fd)

    def _end(self, cause: str) -> None:
        gone = self._gone
        if gone is not None and not gone.done():
            gone.set_result("stopped" if self._stopping else cause)

    def _unwatch(self) -> None:
        loop, fd = self._loop, self._fd
        if loop is not None and fd >= 0:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        self._fd = -1
        self._end("connection closed")

    def _drop(self, client: mqtt.Client) -> None:
        """Forget a connection: stop watching its socket, close it."""
        self._unwatch()
        self._client, self._gone = None, None
        self._connected = False
        self._mids.clear()
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- paho's callbacks (on the event loop, from loop_read/loop_write/loop_misc) ---------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.failures += 1
            self.last_error = f"the broker refused the connection: {reason}"
            _log.warning("%s", self.last_error)
            self._end(self.last_error)
            return
        self.last_error = None
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        client.publish(self._online[0], self._online[1](), qos=1, retain=True)
        self._connected = True
        self._listener.on_connected(flags.session_present)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._connected and not self._stopping:
            _log.warning("the MQTT connection closed: %s", reason)
        self._end(f"disconnected: {reason}")

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        token = self._mids.pop(mid, None)
        if token is not None and token >= 0:
            self._listener.on_published(token, reason)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        for reason in reasons:
            if reason.is_failure:
                _log.error("the broker refused a subscription: %s", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        properties = getattr(msg, "properties", None)
        correlation = getattr(properties, "CorrelationData", None)
        self._listener.on_received(Incoming(msg.topic, bytes(msg.payload), correlation))


def client_tls_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """Mutual TLS with a pinned CA: only ``ca_file`` is trusted, TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The validity period is judged by the agent's clock model, not the system clock
    # (see the module's docstring): everything else is OpenSSL's to check.
    context.verify_flags |= _NO_CHECK_TIME
    context.load_verify_locations(cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def _tls_context(settings: CloudSettings) -> ssl.SSLContext:
    assert settings.ca_file is not None  # checked by the settings model
    return client_tls_context(settings.ca_file, settings.cert_file, settings.key_file)
