"""The D-Bus API on a private dbus-daemon, with a real touchpoint daemon serving it.

A client bus (dbus-fast, as an HMI would use it) watches the signals and calls the
methods; a second part uses ``gdbus``, a client nobody here wrote.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from agent.cards import CloseReason
from agent.consent import Category
from agent.rule_model import RuleSetDocument
from tests.ui_bridge.conftest import (
    DRIVE,
    DUE_SOON,
    PARK,
    feed,
    serving,
)
from touchpoint.daemon import Daemon
from ui_bridge.introspection import DIRECTORY, files
from ui_bridge.names import (
    BUS_NAME,
    CARD_INTERFACE,
    CONSENT_INTERFACE,
    MANAGER_INTERFACE,
    OBJECT_MANAGER,
    ROOT_PATH,
    card_path,
)
from ui_bridge.reference.private_bus import session_config, start_dbus_daemon, stop_dbus_daemon

PROPERTIES = "org.freedesktop.DBus.Properties"
PRIVATE = {"Title", "Body", "TemplateArgs"}


class Client:
    """An HMI-like client: records the agent's signals, makes calls."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.signals: list[Message] = []
        bus.add_message_handler(self._on_message)

    def _on_message(self, message: Message) -> None:
        if message.message_type is MessageType.SIGNAL and message.member != "NameAcquired":
            self.signals.append(message)

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None) -> Any:  # fmt: skip
        reply = await self.bus.call(Message(destination=BUS_NAME, path=path, interface=interface,
                                            member=member, signature=signature,
                                            body=body or []))  # fmt: skip
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise DBusError(reply.error_name or "", reply.body[0] if reply.body else "")
        return reply.body

    async def wait(self, predicate: Callable[[Message], bool], within: float = 5.0) -> Message:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for message in self.signals:
                if predicate(message):
                    return message
            await asyncio.sleep(0.01)
        members = [(m.path, m.member) for m in self.signals]
        raise AssertionError(f"no such signal within {within} s; got {members}")


@asynccontextmanager
async def client(address: str) -> AsyncIterator[Client]:
    bus = await MessageBus(bus_address=address).connect()
    match = f"type='signal',sender='{BUS_NAME}'"
    reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member="AddMatch",
                                   signature="s", body=[match]))  # fmt: skip
    assert reply is not None
    try:
        yield Client(bus)
    finally:
        bus.disconnect()


def _added(message: Message) -> bool:
    return message.member == "InterfacesAdded"


async def _card_on_screen(daemon: Daemon, hmi: Client) -> tuple[str, Message]:
    await feed(daemon, *PARK, *DUE_SOON)
    added = await hmi.wait(_added)
    [card] = daemon.agent.cards.visible
    return card_path(card.id), added


def _events(store: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(store) as connection:
        rows = connection.execute("SELECT type, payload FROM outbox ORDER BY rowid").fetchall()
    return [{"type": t, **json.loads(p)} for t, p in rows]


def test_a_card_appears_with_its_public_properties_only(tmp_path: Path, bus_address: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address) as daemon, client(bus_address) as hmi:
            path, added = await _card_on_screen(daemon, hmi)
            assert added.path == ROOT_PATH  # from the object manager, as the spec says
            assert added.interface == OBJECT_MANAGER
            object_path, interfaces = added.body
            assert object_path == path
            properties = interfaces[CARD_INTERFACE]
            assert PRIVATE.isdisjoint(properties), "a private property went into a broadcast"
            assert properties["Kind"].value == 1  # maintenance
            assert properties["State"].value == 2  # visible
            assert [a for a, _ in properties["Actions"].value] == ["book", "snooze", "dismiss"]
            # The private ones are there for the asking.
            [values] = await hmi.call(path, PROPERTIES, "GetAll", "s", [CARD_INTERFACE])
            assert values["Title"].value == "Service due soon"
            assert "Tyre rotation" in values["Body"].value
            assert values["TemplateArgs"].value["state"].value == "DUE_SOON"
            # And GetManagedObjects lists the card.
            [objects] = await hmi.call(ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects")
            assert path in objects
            # dbus-fast's own InterfacesAdded (from the card's path, with every property)
            # is silenced: no signal at all carries the title.
            assert not [m for m in hmi.signals if m.path == path and _added(m)]

    asyncio.run(scenario())


def test_an_update_arrives_as_properties_changed_on_the_same_object(
    tmp_path: Path, bus_address: str
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address) as daemon, client(bus_address) as hmi:
            path, _ = await _card_on_screen(daemon, hmi)
            await feed(daemon, ("Vehicle.TraveledDistance", 10_000_000))  # due now
            changed = await hmi.wait(lambda m: m.member == "PropertiesChanged" and m.path == path)
            interface, values, invalidated = changed.body
            assert interface == CARD_INTERFACE
            assert values["Priority"].value == 70  # public: sent by value
            assert PRIVATE.isdisjoint(values)
            assert {"Title", "Body", "TemplateArgs"} <= set(invalidated)
            [title] = await hmi.call(path, PROPERTIES, "Get", "ss", [CARD_INTERFACE, "Title"])
            assert title.value == "Service due now"
            assert not [m for m in hmi.signals if m.member == "InterfacesRemoved"]

    asyncio.run(scenario())


def test_book_reaches_the_booking_flow_and_dismiss_removes_with_its_reason(
    tmp_path: Path, bus_address: str
) -> None:
    store = tmp_path / "t.db"

    async def scenario() -> None:
        async with serving(store, bus_address) as daemon, client(bus_address) as hmi:
            path, _ = await _card_on_screen(daemon, hmi)
            [why] = await hmi.call(path, CARD_INTERFACE, "Explain")
            assert {k: v.value for k, v in why.items()} == {
                "Rule": "builtin.maintenance.due_soon@1",
                "Trigger": "event maintenance_reminder",
                "Facts": {"event.state": '"DUE_SOON"'},
            }
            await hmi.call(path, CARD_INTERFACE, "InvokeAction", "sa{sv}", ["book", {}])
            pending = await hmi.wait(lambda m: m.member == "PropertiesChanged" and m.path == path)
            assert pending.body[1]["Pending"].value is True
            with pytest.raises(DBusError) as not_yet:
                await hmi.call(ROOT_PATH, MANAGER_INTERFACE, "GetBookingSlots", "o", [path])
            assert not_yet.value.type == "org.touchpoint.Agent1.Error.NotReady"
            await hmi.call(path, CARD_INTERFACE, "ReportShown")
            await hmi.call(path, CARD_INTERFACE, "Dismiss", "u", [2])
            closed = await hmi.wait(lambda m: m.member == "CardClosed")
            assert closed.path == ROOT_PATH
            assert closed.body == [path, CloseReason.DISMISSED]
            removed = await hmi.wait(lambda m: m.member == "InterfacesRemoved")
            assert removed.body == [path, [CARD_INTERFACE]]

    asyncio.run(scenario())
    types = [e["type"] for e in _events(store)]
    assert "request.booking_slots" in types
    assert types.index("card.action") < types.index("request.booking_slots")
    assert "card.shown" in types
    assert "card.dismissed" in types


def test_expiry_removes_the_card_with_reason_expired(tmp_path: Path, bus_address: str) -> None:
    skip = [0.0]  # how far both clocks have been moved on
    rules = RuleSetDocument.model_validate({"version": 1, "rules": [{
        "id": "campaign.short", "version": 1,
        "trigger": {"signal": {"path": "Vehicle.Speed", "op": "==", "value": 0}},
        "card": {"kind": "campaign", "ttl_s": 60,
                 "title": {"zh-CN": "短", "en": "Short"}, "body": {"zh-CN": "短", "en": "Short"}},
    }]})  # fmt: skip

    async def scenario() -> None:
        async with (
            serving(
                tmp_path / "t.db",
                bus_address,
                wall=lambda: time.time() + skip[0],
                monotonic=lambda: time.monotonic() + skip[0],
            ) as daemon,
            client(bus_address) as hmi,
        ):
            await daemon.apply(lambda a, w, m: a.set_rules(rules, w, m))
            await feed(daemon, *PARK)
            added = await hmi.wait(_added)
            skip[0] += 120  # the card's minute is up
            await daemon.apply(lambda a, w, m: a.on_tick(w, m))
            closed = await hmi.wait(lambda m: m.member == "CardClosed")
            assert closed.body == [added.body[0], CloseReason.EXPIRED]
            # A screen that times a card out says so: reason 1, recorded as expired.
            hmi.signals.clear()
            path, _ = await _card_on_screen(daemon, hmi)
            await hmi.call(path, CARD_INTERFACE, "Dismiss", "u", [1])
            closed = await hmi.wait(lambda m: m.member == "CardClosed")
            assert closed.body == [path, CloseReason.EXPIRED]

    asyncio.run(scenario())
    expired = [e for e in _events(tmp_path / "t.db") if e["type"] == "card.expired"]
    assert len(expired) == 2
    assert not [e for e in _events(tmp_path / "t.db") if e["type"] == "card.dismissed"]


def test_driving_restricted_follows_the_vehicle(tmp_path: Path, bus_address: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address) as daemon, client(bus_address) as hmi:
            path, _ = await _card_on_screen(daemon, hmi)
            [value] = await hmi.call(ROOT_PATH, PROPERTIES, "Get", "ss",
                                     [MANAGER_INTERFACE, "DrivingRestricted"])  # fmt: skip
            assert value.value is False
            await feed(daemon, *DRIVE)
            await hmi.wait(
                lambda m: m.member == "PropertiesChanged" and m.path == ROOT_PATH
                and m.body[1].get("DrivingRestricted") == Variant("b", True)
            )  # fmt: skip
            closed = await hmi.wait(lambda m: m.member == "CardClosed")
            assert closed.body == [path, CloseReason.WITHDRAWN_FOR_DRIVING]

    asyncio.run(scenario())


def test_the_locale_is_settable_and_the_texts_follow(tmp_path: Path, bus_address: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address) as daemon, client(bus_address) as hmi:
            path, _ = await _card_on_screen(daemon, hmi)
            await hmi.call(ROOT_PATH, PROPERTIES, "Set", "ssv",
                           [MANAGER_INTERFACE, "Locale", Variant("s", "zh-CN")])  # fmt: skip
            changed = await hmi.wait(lambda m: m.member == "PropertiesChanged" and m.path == path)
            assert "Title" in changed.body[2]
            [title] = await hmi.call(path, PROPERTIES, "Get", "ss", [CARD_INTERFACE, "Title"])
            assert title.value == "保养即将到期"
            with pytest.raises(DBusError) as refused:
                await hmi.call(ROOT_PATH, PROPERTIES, "Set", "ssv",
                               [MANAGER_INTERFACE, "Locale", Variant("s", "fr")])  # fmt: skip
            assert refused.value.type == "org.freedesktop.DBus.Error.InvalidArgs"

    asyncio.run(scenario())


def test_bad_calls_get_errors_and_the_service_goes_on(tmp_path: Path, bus_address: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address) as daemon, client(bus_address) as hmi:
            path, _ = await _card_on_screen(daemon, hmi)
            attempts: list[tuple[str, str, str, str, list[Any], str | None]] = [
                (path, CARD_INTERFACE, "InvokeAction", "sa{sv}", ["fly", {}],
                 "org.touchpoint.Agent1.Error.UnknownAction"),
                (path, CARD_INTERFACE, "InvokeAction", "sa{sv}", ["x" * 100_000, {}],
                 "org.freedesktop.DBus.Error.InvalidArgs"),
                (path, CARD_INTERFACE, "Dismiss", "u", [99],
                 "org.freedesktop.DBus.Error.InvalidArgs"),
                (path, CARD_INTERFACE, "Dismiss", "s", ["now"], None),  # wrong type
                (card_path("0" * 32), CARD_INTERFACE, "ReportShown", "", [], None),  # no such card
                (ROOT_PATH, MANAGER_INTERFACE, "GetBookingSlots", "o", ["/not/a/card"],
                 "org.touchpoint.Agent1.Error.UnknownCard"),
                (ROOT_PATH, CONSENT_INTERFACE, "SetConsent", "sbx", ["gossip", True, 0],
                 "org.freedesktop.DBus.Error.InvalidArgs"),
            ]  # fmt: skip
            for target, interface, member, signature, body, expected in attempts:
                with pytest.raises(DBusError) as error:
                    await hmi.call(target, interface, member, signature, body)
                if expected is not None:
                    assert error.value.type == expected, (member, body[:1])
            # Still serving, and the card is still there.
            [values] = await hmi.call(path, PROPERTIES, "GetAll", "s", [CARD_INTERFACE])
            assert values["State"].value == 2
            assert daemon.agent.cards.visible

    asyncio.run(scenario())


def test_a_client_that_disappears_mid_call_does_no_harm(tmp_path: Path, bus_address: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address) as daemon, client(bus_address) as hmi:
            path, _ = await _card_on_screen(daemon, hmi)
            # InvokeAction answers once the dismissal is durable; its caller is gone by
            # then (it leaves as soon as the call is on the wire).
            gone = await MessageBus(bus_address=bus_address).connect()
            await gone.send(Message(destination=BUS_NAME, path=path, interface=CARD_INTERFACE,
                                    member="InvokeAction", signature="sa{sv}",
                                    body=["dismiss", {}]))  # fmt: skip
            gone.disconnect()
            removed = await hmi.wait(lambda m: m.member == "InterfacesRemoved")
            assert removed.body[0] == path
            assert not daemon.agent.cards.visible
            # And the agent serves the next caller as before.
            [objects] = await hmi.call(ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects")
            assert path not in objects

    asyncio.run(scenario())


def test_a_standard_client_lists_the_cards_and_invokes_an_action(
    tmp_path: Path, bus_address: str
) -> None:
    async def gdbus(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "gdbus", "call", "--address", bus_address, "--dest", BUS_NAME, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        return out.decode()

    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address) as daemon, client(bus_address) as hmi:
            path, _ = await _card_on_screen(daemon, hmi)
            listing = await gdbus("--object-path", ROOT_PATH, "--method",
                                  f"{OBJECT_MANAGER}.GetManagedObjects")  # fmt: skip
            assert path in listing
            assert "Service due soon" in listing  # a method reply may carry private values
            await gdbus("--object-path", path, "--method", f"{CARD_INTERFACE}.InvokeAction",
                        "snooze", "{}")  # fmt: skip
            await hmi.wait(lambda m: m.member == "CardClosed")
            assert daemon.agent.cards.visible == ()

    asyncio.run(scenario())


def test_the_published_introspection_matches_the_service(tmp_path: Path, bus_address: str) -> None:
    for name, text in files().items():
        assert (DIRECTORY / name).read_text(encoding="utf-8") == text, (
            f"ui_bridge/interfaces/{name} is stale: run python -m ui_bridge.introspection"
        )

    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address) as daemon, client(bus_address) as hmi:
            path, _ = await _card_on_screen(daemon, hmi)
            for object_path, interface in ((path, CARD_INTERFACE), (ROOT_PATH, MANAGER_INTERFACE),
                                           (ROOT_PATH, CONSENT_INTERFACE)):  # fmt: skip
                [xml] = await hmi.call(object_path, "org.freedesktop.DBus.Introspectable",
                                       "Introspect")  # fmt: skip
                published = (DIRECTORY / f"{interface}.xml").read_text(encoding="utf-8")
                assert _members(published, interface) == _members(xml, interface)

    asyncio.run(scenario())


def _members(xml: str, interface: str) -> set[tuple[str, str, str]]:
    import xml.etree.ElementTree as ET  # noqa: PLC0415 - test helper

    root = ET.fromstring(xml.split("\n", 2)[2] if xml.startswith("<!DOCTYPE") else xml)
    node = next(i for i in root.iter("interface") if i.get("name") == interface)
    members: set[tuple[str, str, str]] = set()
    for child in node:
        args = ",".join(f"{a.get('direction', '')}:{a.get('type')}" for a in child.iter("arg"))
        members.add((child.tag, child.get("name", ""), args or child.get("type", "")))
    return members


def test_the_bridge_reconnects_when_the_bus_restarts(tmp_path: Path) -> None:
    # A fixed socket path, so the restarted bus is at the same address.
    config = tmp_path / "bus.conf"
    config.write_text(session_config(f"unix:path={tmp_path}/socket"))

    async def scenario() -> None:
        bus, address = start_dbus_daemon(config)
        try:
            async with serving(tmp_path / "t.db", address) as daemon:
                bridge = daemon.bridge
                assert bridge is not None
                stop_dbus_daemon(bus)
                bus, _ = start_dbus_daemon(config)
                deadline = time.monotonic() + 15
                while bridge.reconnects < 1 or not bridge.connected:
                    assert time.monotonic() < deadline, "the bridge did not come back"
                    await asyncio.sleep(0.05)
                async with client(address) as hmi:
                    await feed(daemon, *PARK, *DUE_SOON)
                    await hmi.wait(_added)
        finally:
            stop_dbus_daemon(bus)

    asyncio.run(scenario())


def test_consent_is_read_by_method_and_announced_without_values(
    tmp_path: Path, bus_address: str
) -> None:
    store = tmp_path / "t.db"

    async def scenario() -> None:
        async with serving(store, bus_address) as daemon, client(bus_address) as hmi:
            await hmi.call(ROOT_PATH, CONSENT_INTERFACE, "SetConsent", "sbx",
                           ["location", True, 3600])  # fmt: skip
            changed = await hmi.wait(lambda m: m.member == "CategoriesChanged")
            assert changed.body == []  # the driver's choices never travel in a broadcast
            [rows] = await hmi.call(ROOT_PATH, CONSENT_INTERFACE, "GetCategories")
            location = next(r for r in rows if r[0] == "location")
            assert location[2] is True
            assert location[4] - location[3] == 3600 * 1_000_000
            now = daemon.agent.clock.read(time.time(), time.monotonic())
            assert daemon.agent.consent.allows(Category.LOCATION, now.floor)
            # Shown on the car's clock estimate, even before the clock is trusted.
            assert abs(location[3] / 1e6 - time.time()) < 60

    asyncio.run(scenario())
    assert any(e["type"] == "consent.changed" for e in _events(store))
