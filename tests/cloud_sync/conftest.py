"""A private Mosquitto per test session, running the shipped reference configuration.

The broker listens on free loopback ports only, with certificates from a development
PKI made for the session; it never touches a broker the machine may already run (on
1883 or anywhere else). :class:`Broker` starts, stops and restarts it on the same
ports and data directory, and makes connected MQTT 5 clients (:class:`MqttPeer`) for a
certificate common name.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync.reference.pki import CLOUD_USER, DevPki
from cloud_sync.reference.private_broker import (
    LOOPBACK,
    TIMEOUT,
    BrokerError,
    PrivateBroker,
    free_ports,
    mosquitto_binary,
)

__all__ = ["LOOPBACK", "BrokerError", "free_ports", "mosquitto_binary"]

_ids = itertools.count(1)


def new_vehicle_id(prefix: str = "car") -> str:
    """A vehicle id no other test uses: retained messages and sessions outlive tests."""
    return f"{prefix}-{next(_ids)}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Will:
    """A last will for :meth:`Broker.client`."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class ConnectAttempt:
    """How an attempt to connect ended (:meth:`Broker.attempt`)."""

    #: The CONNACK's reason code, if one came.
    connack: ReasonCode | None
    #: Why there was none, if not.
    error: str | None

    @property
    def accepted(self) -> bool:
        """Whether the broker answered with a successful CONNACK."""
        return self.connack is not None and not self.connack.is_failure


class MqttPeer:
    """A connected paho client (MQTT 5, network loop in its own thread), recorded.

    It records the messages it receives and the reason codes of its acknowledgements,
    so a test can wait for them. Use :meth:`Broker.client` to make one.
    """

    def __init__(self, client: mqtt.Client, name: str) -> None:
        self.client = client
        self.name = name
        self._lock = threading.Condition()
        self._messages: list[mqtt.MQTTMessage] = []
        self._acks: dict[int, list[ReasonCode]] = {}
        self._connacks: list[ReasonCode] = []
        self._disconnects: list[ReasonCode] = []
        #: Whether the broker resumed a session (the last CONNACK's flag).
        self.session_present = False
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe

    # -- callbacks (in paho's thread) ----------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._connacks.append(reason_code)
            self.session_present = flags.session_present
            self._lock.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._disconnects.append(reason_code)
            self._lock.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(msg)
            self._lock.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._acks[mid] = [reason_code]
            self._lock.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._acks[mid] = list(reason_codes)
            self._lock.notify_all()

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        with self._lock:
            if not self._lock.wait_for(ready, timeout):
                raise TimeoutError(f"{self.name}: no {what} within {timeout} s")

    def _ack(self, mid: int | None, timeout: float, what: str) -> list[ReasonCode]:
        assert mid is not None, f"{self.name}: paho gave no message id for the {what}"
        self._wait(lambda: mid in self._acks, timeout, what)
        with self._lock:
            return self._acks.pop(mid)

    def wait_connected(self, timeout: float = TIMEOUT) -> ReasonCode:
        """The reason code of the first CONNACK."""
        self._wait(lambda: bool(self._connacks or self._disconnects), timeout, "CONNACK")
        with self._lock:
            if not self._connacks:
                raise BrokerError(f"{self.name}: disconnected before a CONNACK")
            return self._connacks[0]

    def wait_for_messages(self, count: int, timeout: float = TIMEOUT) -> list[mqtt.MQTTMessage]:
        """The first ``count`` messages received, once there are that many."""
        self._wait(lambda: len(self._messages) >= count, timeout, f"{count} messages")
        return self.messages[:count]

    def wait_for_disconnect(self, timeout: float = TIMEOUT) -> ReasonCode | None:
        """The reason of the first disconnection, or ``None`` if none within ``timeout``."""
        with self._lock:
            self._lock.wait_for(lambda: bool(self._disconnects), timeout)
            return self._disconnects[0] if self._disconnects else None

    @property
    def connack(self) -> ReasonCode | None:
        """The first CONNACK's reason code, if one came."""
        with self._lock:
            return self._connacks[0] if self._connacks else None

    @property
    def disconnected(self) -> bool:
        """Whether the connection has ended at least once."""
        with self._lock:
            return bool(self._disconnects)

    @property
    def messages(self) -> list[mqtt.MQTTMessage]:
        """What has arrived so far, in order."""
        with self._lock:
            return list(self._messages)

    # -- acting ---------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = TIMEOUT,
    ) -> ReasonCode | None:
        """Publish and wait for the PUBACK's reason code; ``None`` for QoS 0 (none comes).

        Only QoS 0 and 1 are supported: touchpoint uses no other.
        """
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not used by touchpoint")
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"{self.name}: publish to {topic} failed: {info.rc.name}")
        if qos == 0:
            info.wait_for_publish(timeout)
            return None
        return self._ack(info.mid, timeout, f"PUBACK for {topic}")[0]

    def subscribe(
        self, topic_filter: str, *, qos: int = 1, timeout: float = TIMEOUT
    ) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK's reason codes."""
        rc, mid = self.client.subscribe(topic_filter, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"{self.name}: subscribe to {topic_filter} failed: {rc.name}")
        return self._ack(mid, timeout, f"SUBACK for {topic_filter}")

    def close(self, *, with_will: bool = False, timeout: float = TIMEOUT) -> None:
        """Disconnect and stop the network thread (idempotent).

        Args:
            with_will: Ask the broker to publish the last will anyway (MQTT 5 reason
                code 0x04), as if the connection had been lost, without breaking it.
            timeout: How long to wait for the disconnection.
        """
        if self.client.is_connected():
            reason = (
                ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
                if with_will
                else None
            )
            self.client.disconnect(reasoncode=reason)
            self.wait_for_disconnect(timeout)
        self.client.loop_stop()

    def __enter__(self) -> MqttPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Broker(PrivateBroker):
    """The private broker (:class:`cloud_sync.reference.private_broker.PrivateBroker`), plus test
    clients: connected MQTT 5 peers for a common name, single connection attempts, and
    the TLS alert a refused client gets."""

    def client(
        self,
        common_name: str | None,
        *,
        tls: bool = True,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry: int = 0,
        will: Will | None = None,
        port: int | None = None,
        timeout: float = TIMEOUT,
        certificate: tuple[Path, Path] | None = None,
    ) -> MqttPeer:
        """A connected MQTT 5 client presenting the certificate of ``common_name``.

        Args:
            common_name: The identity (vehicle id, or :data:`CLOUD_USER`); ``None``
                for none (only the plain listener lets such a client in).
            tls: ``False`` to use the plain listener (a broker made with ``plain``),
                claiming ``common_name`` as the MQTT username instead.
            client_id: The MQTT client id; the common name (plus a counter for the
                cloud, whose consumers must differ) by default.
            clean_start: MQTT 5 clean start.
            session_expiry: Session expiry interval in seconds (0: ends with the
                connection).
            will: A last will.
            port: The listener; :meth:`port_for` the identity by default.
            timeout: How long to wait for the CONNACK.
            certificate: A (cert, key) pair to present instead of ``common_name``'s
                (which is issued and registered on first use).

        Raises:
            BrokerError: If the broker does not accept the connection.
        """
        if client_id is None:
            named = common_name is not None and common_name != CLOUD_USER
            client_id = common_name if named else f"client-{next(_ids)}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if tls:
            client.tls_set_context(self.tls_context(common_name, certificate=certificate))
        else:
            if self.plain_port is None:
                raise BrokerError("this broker has no plain listener (make it with plain=True)")
            port = port or self.plain_port
            if common_name is not None:
                client.username_pw_set(common_name)
        # Tests restart the broker: come back quickly rather than after paho's 1-120 s.
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if session_expiry:
            properties.SessionExpiryInterval = session_expiry
        peer = MqttPeer(client, f"{common_name}/{client_id}")
        client.connect(
            self.host, port or self.port_for(common_name), keepalive=30,
            clean_start=clean_start, properties=properties,
        )  # fmt: skip
        client.loop_start()
        try:
            reason = peer.wait_connected(timeout)
        except BaseException:
            peer.close()
            raise
        if reason.is_failure:
            peer.close()
            raise BrokerError(f"{peer.name}: connection refused: {reason}")
        return peer

    def attempt(
        self,
        context: ssl.SSLContext | None,
        *,
        port: int | None = None,
        client_id: str = "probe",
        username: str | None = None,
        timeout: float = 3.0,
    ) -> ConnectAttempt:
        """Try to connect once, without retrying, and say how it ended.

        Args:
            context: The client's TLS context; ``None`` for plain TCP.
            port: The listener; the vehicles' by default.
            client_id: The MQTT client id.
            username: An MQTT username (only the plain listener believes one).
            timeout: How long to wait for the outcome.
        """
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)  # fmt: skip
        if context is not None:
            client.tls_set_context(context)
        if username is not None:
            client.username_pw_set(username)
        peer = MqttPeer(client, f"attempt/{client_id}")
        try:
            client.connect(self.host, port or self.port, keepalive=30)
        except OSError as exc:  # ssl.SSLError is one: a refusal during the handshake
            return ConnectAttempt(None, f"{type(exc).__name__}: {exc}")
        # The loop runs here rather than in a thread: paho's thread would reconnect.
        deadline = time.monotonic() + timeout
        error: str | None = None
        try:
            while time.monotonic() < deadline and not (peer.connack or peer.disconnected):
                rc = client.loop(timeout=0.05)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    error = rc.name
                    break
        finally:
            if client.is_connected():
                client.disconnect()
                client.loop(timeout=0.05)
            sock = client.socket()
            if sock is not None:
                sock.close()
        connack = peer.connack
        if connack is None and error is None:
            error = "disconnected" if peer.disconnected else "no answer"
        return ConnectAttempt(connack, error)

    def tls_refusal(
        self, context: ssl.SSLContext, *, port: int | None = None, timeout: float = TIMEOUT
    ) -> str | None:
        """The TLS alert the broker refuses ``context`` with; ``None`` if none comes.

        Done below paho, which reports every refusal as the same lost connection: the
        alert says which check failed (no certificate, unknown CA, expired, revoked).
        A client the broker accepts gets no alert, so this then waits all of
        ``timeout``: check acceptance with :meth:`attempt` instead.
        """
        with socket.create_connection((self.host, port or self.port), timeout=timeout) as raw:
            try:
                with context.wrap_socket(raw, server_hostname=self.host) as tls:
                    # With TLS 1.3 the client's handshake ends before the broker has
                    # judged its certificate, and the verdict follows. Nothing is sent
                    # meanwhile: data reaching a broker that has already closed would
                    # make it reset the connection, and the reset can discard the alert.
                    tls.recv(1)
            except ssl.SSLError as exc:
                return str(exc.reason or exc)
            except TimeoutError:
                return None
        return "closed without an alert"


@contextlib.contextmanager
def running_broker(directory: Path, pki: DevPki, *, plain: bool = False) -> Iterator[Broker]:
    """A started test :class:`Broker` for the block, stopped after it."""
    broker = Broker(directory, pki, plain=plain)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The session's broker, with a PKI of its own."""
    directory = tmp_path_factory.mktemp("mosquitto")
    pki = DevPki.create(directory / "pki")
    with running_broker(directory, pki) as broker:
        yield broker


@pytest.fixture
def broker(mosquitto: Broker) -> Broker:
    """The session's broker, started again if an earlier test left it stopped."""
    mosquitto.ensure_running()
    return mosquitto


@pytest.fixture
def peers(broker: Broker) -> Iterator[Callable[..., MqttPeer]]:
    """Make connected clients like :meth:`Broker.client`; all closed after the test."""
    made: list[MqttPeer] = []

    def make(common_name: str | None, **options: Any) -> MqttPeer:
        peer = broker.client(common_name, **options)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()
