"""The MQTT connection: one paho-mqtt client at a time, on a thread this module owns.

Nothing else touches the paho client. The daemon's event loop hands messages over with
:meth:`MqttLink.publish` (a queue and a wake-up pipe) and hears back through a
:class:`LinkListener`, called on the event loop's thread: connected, disconnected, a
publish acknowledged (with the broker's reason code), a message received.

Each connection attempt uses a fresh client with ``clean_start = false`` and a session
expiry: the broker keeps the car's subscriptions and queues its downlink through a
coverage gap, while what the car had in flight is forgotten with the old client. The
outbox, not paho's memory, is the queue: the forwarder sends those events again.
Reconnects back off exponentially with jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import random
import select
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync.settings import CloudSettings

_log = logging.getLogger(__name__)

#: How long the thread sleeps at most between looks at the connection (paho's
#: keep-alive and retry timers run from ``loop_misc``).
_TICK_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish at QoS 1; ``token`` comes back in :meth:`LinkListener.on_published`."""

    token: int
    topic: str
    payload: bytes
    retain: bool = False
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


class MqttLink:
    """The car's MQTT 5 connection, on its own thread.

    Args:
        settings: Broker address, TLS files, keep-alive, session expiry, back-off.
        client_id: The MQTT client id (the vehicle id).
        subscriptions: Topic filters subscribed at QoS 1 on every connection.
        will: ``(topic, payload)`` the broker publishes retained if the car vanishes.
        online: ``(topic, payload maker)`` published retained on every connection.
        listener: Who hears of connections, acknowledgements and messages.
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
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._subscriptions = tuple(subscriptions)
        self._will = will
        self._online = online
        self._listener = listener
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outgoing: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mids: dict[int, int] = {}
        self._connected = False
        self._tls: ssl.SSLContext | None = None
        #: Connection attempts that failed, for ``touchpoint doctor`` and the tests.
        self.failures = 0
        self.last_error: str | None = None

    # -- the owner's side ------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (call from the owner's event loop).

        Raises:
            OSError: The TLS files cannot be read.
            ssl.SSLError: They are not a usable certificate, key and CA.
        """
        self._loop = asyncio.get_running_loop()
        self._tls = _tls_context(self._settings) if self._settings.tls else None
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def publish(self, message: Outgoing) -> None:
        """Queue a message (thread-safe; published once connected, in order)."""
        self._outgoing.put(message)
        self._poke()

    def stop(self, offline: bytes | None = None, timeout: float = 5.0) -> None:
        """Disconnect (first publishing ``offline`` on the status topic) and end the thread."""
        if offline is not None:
            self._outgoing.put(Outgoing(-1, self._will[0], offline, retain=True))
        self._stop.set()
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _log.warning("the MQTT thread did not stop within %.0f s", timeout)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _tell(self, method: str, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(getattr(self._listener, method), *args)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._settings.reconnect_min_s
        while not self._stop.is_set():
            client = self._new_client()
            try:
                self._connect(client)
            except (OSError, ssl.SSLError, ValueError) as err:
                self.failures += 1
                self.last_error = str(err) or type(err).__name__
                _log.warning("cannot reach the MQTT broker (%s); retrying", self.last_error)
            else:
                if self._serve(client):
                    delay = self._settings.reconnect_min_s  # it was up: start over
            self._connected = False
            self._mids.clear()
            _close(client)
            if self._stop.is_set():
                break
            # Full jitter: a fleet that lost the broker together does not return together.
            self._stop.wait(random.uniform(0, delay))  # noqa: S311 - not cryptographic
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

    def _serve(self, client: mqtt.Client) -> bool:
        """Run one connection until it ends; whether it was ever accepted."""
        accepted = False
        while not self._stop.is_set():
            sock = client.socket()
            if sock is None:
                break
            fd = sock.fileno()
            writers = [fd] if client.want_write() else []
            # TLS may hold decrypted bytes the kernel no longer shows as readable.
            buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            try:
                readable, writable, _ = select.select(
                    [fd, self._wake_r], writers, [], 0 if buffered else _TICK_S
                )
            except (OSError, ValueError):
                break
            if buffered:
                readable = [*readable, fd]
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._wake_r, 4096)
            if fd in readable and client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                break
            if fd in writable and client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                break
            if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                break
            accepted = accepted or self._connected
            if self._connected:
                self._drain(client)
        if self._stop.is_set() and self._connected:
            self._drain(client)  # the offline status, queued by stop()
            client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_write()
        if self._connected or accepted:
            self._tell("on_disconnected", "stopped" if self._stop.is_set() else "connection lost")
        return accepted

    def _drain(self, client: mqtt.Client) -> None:
        while True:
            try:
                message = self._outgoing.get_nowait()
            except queue.Empty:
                return
            properties = None
            if message.response_topic or message.correlation or message.expiry_s:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                if message.response_topic:
                    properties.ResponseTopic = message.response_topic
                if message.correlation:
                    properties.CorrelationData = message.correlation
                if message.expiry_s:
                    properties.MessageExpiryInterval = message.expiry_s
            info = client.publish(message.topic, message.payload, 1, message.retain, properties)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # Not sent (the connection is going): the owner releases everything in
                # flight when it hears of the disconnect.
                continue
            self._mids[info.mid] = message.token

    # -- paho's callbacks (on this thread) -----------------------------------------------

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
            client.disconnect()
            return
        self.last_error = None
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        client.publish(self._online[0], self._online[1](), qos=1, retain=True)
        self._connected = True
        self._tell("on_connected", flags.session_present)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._connected and not self._stop.is_set():
            _log.warning("the MQTT connection closed: %s", reason)
        self._connected = False

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
            self._tell("on_published", token, reason)

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
        self._tell(
            "on_received",
            Incoming(msg.topic, bytes(msg.payload), correlation),
        )


def _close(client: mqtt.Client) -> None:
    """Make sure the client's socket is closed, whatever state it was left in."""
    sock = client.socket()
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.close()


def client_tls_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """Mutual TLS with a pinned CA: only ``ca_file`` is trusted, TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def _tls_context(settings: CloudSettings) -> ssl.SSLContext:
    assert settings.ca_file is not None  # checked by the settings model
    return client_tls_context(settings.ca_file, settings.cert_file, settings.key_file)
