"""The broker's access control for cars: Mosquitto's dynamic-security plugin, generated.

Mosquitto 2.0's ``acl_file`` grants every SUBSCRIBE and judges reading per message, and
in a shared subscription it picks the member before it checks that member may read: a
car that joined the cloud's group (``$share/<group>/tp/v2/+/events``) made the cloud
lose a share of every car's events. The dynamic-security plugin (shipped with Debian's
``mosquitto``) judges SUBSCRIBE too, so the vehicles' listener uses it instead: a car
may subscribe to its own downlink filters and nothing else, and the broker answers
anything more with SUBACK 0x87 (not authorised).

The plugin has no ``%u`` in 2.0, so every car is a client of its own with a role of its
own, made from :func:`cloud_sync.contract.vehicle_rights` (the contract's channels are
the one list of topics). An identity the plugin does not know may connect (the
certificate says who it is) but may do nothing at all: registering a car is part of
provisioning it. :func:`write_document` makes the plugin's starting file;
:class:`Registrar` adds cars to a running broker through its ``$CONTROL`` topic, as
:data:`ADMIN_USER`.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync.contract import RESERVED_IDS, vehicle_rights
from cloud_sync.errors import SyncError

#: The identity (certificate CN) that may change the access control of a running broker.
ADMIN_USER: Final = "broker-admin"
assert ADMIN_USER in RESERVED_IDS  # no car may ever be named so
CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = f"{CONTROL_TOPIC}/response"
PLUGIN: Final = "mosquitto_dynamic_security.so"
#: Where distributions put the plugin (Debian: the multiarch directory).
_PLUGIN_PLACES: Final = (
    (Path("/usr/lib"), f"*/{PLUGIN}"),
    (Path("/usr/lib"), PLUGIN),
    (Path("/usr/lib/mosquitto"), PLUGIN),
    (Path("/usr/local/lib"), PLUGIN),
)
_ADMIN_ROLE: Final = "broker-admin"
#: How long to wait for the broker to answer a registration.
TIMEOUT: Final = 10.0
#: Commands per control message: the plugin answers each message in one response.
_BATCH: Final = 200


class DynsecError(SyncError):
    """The plugin is missing, or the broker refused or did not answer a registration."""


def plugin_path() -> Path:
    """The installed dynamic-security plugin.

    Raises:
        DynsecError: If it is not installed (Debian package: mosquitto).
    """
    for directory, pattern in _PLUGIN_PLACES:
        for found in sorted(directory.glob(pattern)):
            return found
    raise DynsecError(f"{PLUGIN} is not installed (Debian package: mosquitto)")


def role_name(vehicle_id: str) -> str:
    """The role that holds one car's rights."""
    return f"vehicle:{vehicle_id}"


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def vehicle_role(vehicle_id: str) -> dict[str, Any]:
    """One car's role: its uplink to publish, its downlink to subscribe to and receive.

    Everything not listed falls to the default, which denies (see :func:`document`).
    """
    rights = vehicle_rights(vehicle_id)
    acls = [_acl("publishClientSend", topic) for topic in rights.publish]
    for topic in rights.subscribe:
        acls += [_acl("subscribePattern", topic), _acl("publishClientReceive", topic)]
    return {"rolename": role_name(vehicle_id), "acls": acls}


def _admin_role() -> dict[str, Any]:
    return {
        "rolename": _ADMIN_ROLE,
        "acls": [
            _acl("publishClientSend", CONTROL_TOPIC),
            _acl("subscribePattern", RESPONSE_TOPIC),
            _acl("publishClientReceive", RESPONSE_TOPIC),
        ],
    }


def _client(username: str, role: str) -> dict[str, Any]:
    # No password: these identities log in with a certificate only
    # (use_identity_as_username skips password checks), never with a password.
    return {"username": username, "roles": [{"rolename": role}]}


def _check_vehicle(vehicle_id: str) -> None:
    vehicle_rights(vehicle_id)  # raises ValueError for a reserved or malformed id


def document(vehicles: Iterable[str] = ()) -> dict[str, Any]:
    """The plugin's configuration: the administrator and ``vehicles``, deny by default.

    Unsubscribing is always allowed (it cannot reveal or take anything); publishing,
    subscribing and receiving only where a role grants it.
    """
    ids = sorted(set(vehicles))
    for vehicle_id in ids:
        _check_vehicle(vehicle_id)
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [_client(ADMIN_USER, _ADMIN_ROLE)] + [_client(v, role_name(v)) for v in ids],
        "groups": [],
        "roles": [_admin_role()] + [vehicle_role(v) for v in ids],
    }


def write_document(path: Path, vehicles: Iterable[str] = ()) -> None:
    """Write the plugin's starting file (owner-only: the plugin rewrites it in place)."""
    text = json.dumps(document(vehicles), indent=2) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def registered(path: Path) -> set[str]:
    """The cars the plugin's file knows."""
    data = json.loads(path.read_text(encoding="utf-8"))
    names = {c["username"] for c in data.get("clients", [])}
    return names - RESERVED_IDS


def add_to_file(path: Path, vehicles: Iterable[str]) -> None:
    """Add cars to the file of a broker that is not running (it reads it at start).

    The file is written afresh from the contract for every car it knew and the new ones:
    anything else an operator put there (other roles, groups) is not kept.
    """
    write_document(path, registered(path) | set(vehicles))


def registration_commands(vehicle_id: str) -> list[dict[str, Any]]:
    """The control commands that register one car: its role, then the client."""
    _check_vehicle(vehicle_id)
    role = vehicle_role(vehicle_id)
    return [
        {"command": "createRole", "rolename": role["rolename"], "acls": role["acls"]},
        {"command": "createClient", "username": vehicle_id,
         "roles": [{"rolename": role["rolename"]}]},
    ]  # fmt: skip


#: Answers that mean the car was registered before: registering is idempotent.
_ALREADY: Final = ("Role already exists", "Client already exists")


class Registrar:
    """A connection to a running broker as :data:`ADMIN_USER`, to register cars.

    Args:
        host: The broker.
        port: The vehicles' listener (the plugin serves ``$CONTROL`` there).
        tls: A client context presenting the administrator's certificate.
    """

    def __init__(self, host: str, port: int, tls: ssl.SSLContext) -> None:
        self._lock = threading.Condition()
        self._responses: dict[bytes, list[dict[str, Any]]] = {}
        self._connected: ReasonCode | None = None
        self._subscribed = False
        #: False once the connection is gone: a registrar does not reconnect, since the
        #: administrator's client id is forced to its name and another administrator
        #: (fleet-sim, say) would otherwise be thrown out in turn, back and forth.
        self.alive = True
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=ADMIN_USER,
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.tls_set_context(tls)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise DynsecError(f"cannot reach the broker at {host}:{port}: {exc}") from exc
        self.client.loop_start()
        with self._lock:
            if not self._lock.wait_for(lambda: self._subscribed or self._failed, TIMEOUT):
                self.close()
                raise DynsecError(f"no administrator's session at {host}:{port}")
        if self._failed:
            reason = self._connected
            self.close()
            raise DynsecError(f"the broker refused the administrator: {reason}")

    @property
    def _failed(self) -> bool:
        return self._connected is not None and self._connected.is_failure

    def _on_connect(self, client: mqtt.Client, _u: object, _f: mqtt.ConnectFlags,
                    reason: ReasonCode, _p: Properties | None) -> None:  # fmt: skip
        with self._lock:
            self._connected = reason
            self._lock.notify_all()
        if not reason.is_failure:
            client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_disconnect(self, client: mqtt.Client, _u: object, _f: mqtt.DisconnectFlags,
                       _reason: ReasonCode, _p: Properties | None) -> None:  # fmt: skip
        with self._lock:
            self.alive = False
            self._lock.notify_all()
        client.loop_stop()  # from paho's own thread: ends its loop instead of reconnecting

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int,
                      reasons: list[ReasonCode], _p: Properties | None) -> None:  # fmt: skip
        with self._lock:
            if any(r.is_failure for r in reasons):
                self._connected = reasons[0]
            else:
                self._subscribed = True
            self._lock.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            answers = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            for answer in answers:
                key = str(answer.get("correlationData", "")).encode()
                self._responses.setdefault(key, []).append(answer)
            self._lock.notify_all()

    def known(self) -> set[str]:
        """The cars the broker knows (its clients but the reserved identities)."""
        [answer] = self._send([{"command": "listClients"}])
        return {str(name) for name in answer["data"]["clients"]} - RESERVED_IDS

    def register(self, vehicles: Sequence[str]) -> None:
        """Register cars (those registered before are left as they are).

        Each change makes Mosquitto 2.0's plugin rewrite its whole file, so registering
        many cars on a running broker costs time in the square of their number; a large
        fleet is better written into the file before the broker starts
        (:func:`add_to_file`).

        Raises:
            DynsecError: The broker refused a command or did not answer in time.
            ValueError: A name is no vehicle id, or a reserved one.
        """
        for vehicle_id in vehicles:
            _check_vehicle(vehicle_id)
        known = self.known() if len(vehicles) > 1 else set()
        commands = [c for v in vehicles if v not in known for c in registration_commands(v)]
        for start in range(0, len(commands), _BATCH):
            self._send(commands[start : start + _BATCH])

    def _send(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tag = uuid.uuid4().hex
        tagged = [c | {"correlationData": f"{tag}-{n}"} for n, c in enumerate(commands)]
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1,
                            properties=properties)  # fmt: skip
        keys = [c["correlationData"].encode() for c in tagged]
        with self._lock:
            done = self._lock.wait_for(
                lambda: all(k in self._responses for k in keys) or not self.alive, TIMEOUT
            )
            if not self.alive:
                raise DynsecError("the administrator's connection was lost")
            if not done:
                raise DynsecError("the broker did not answer the registration in time")
            answers = [self._responses.pop(k)[0] for k in keys]
        errors = [a["error"] for a in answers if a.get("error") and a["error"] not in _ALREADY]
        if errors:
            raise DynsecError(f"the broker refused a registration: {'; '.join(errors)}")
        return answers

    def close(self) -> None:
        """Disconnect (idempotent)."""
        self.client.disconnect()
        self.client.loop_stop()
