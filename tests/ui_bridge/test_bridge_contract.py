"""The bridge against a fake host: the adapter alone, on a private dbus-daemon.

The bridge sees the agent only through :class:`agent.ports.CardBoard`: what it exports is
the board's committed view, what the HMI asks becomes the board's calls, and the board's
refusals come back as the D-Bus errors they name. No daemon, no store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from dbus_fast import DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

from agent.booking import Slot
from agent.cards import Action, Card, CardKind, CardState, CloseReason, Display, Text, Urgency
from agent.consent import Category, Grant
from agent.errors import ActionError
from agent.ports import CardBoard
from ui_bridge.bridge import DbusBridge
from ui_bridge.names import BUS_NAME, CARD_INTERFACE, OBJECT_MANAGER, ROOT_PATH, card_path


def _card(card_id: str, title: str) -> Card:
    return Card(
        id=card_id,
        key=f"k-{card_id}",
        kind=CardKind.MAINTENANCE,
        urgency=Urgency.NORMAL,
        display=Display.PARKED_ONLY,
        title=Text(title, title),
        body=Text("body", "body"),
        template="t",
        created=0.0,
        category=Category.VEHICLE_HEALTH,
        actions=(Action("book", Text("预约", "Book")),),
        state=CardState.VISIBLE,
    )


class FakeBoard(CardBoard):
    """A board whose committed view and answers the test sets."""

    def __init__(self, shown: Sequence[Card]) -> None:
        self._shown = list(shown)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.refuse: ActionError | None = None

    @property
    def shown(self) -> Sequence[Card]:
        return self._shown

    @property
    def driving(self) -> bool:
        return False

    @property
    def max_visible(self) -> int:
        return 2

    @property
    def time_zone(self) -> str:
        return "Europe/Berlin"

    @property
    def waiting(self) -> int:
        return 0

    def booking_slots(self, card_id: str) -> tuple[Slot, ...] | None:
        return None

    def consents(self) -> Mapping[Category, Grant]:
        return {}

    async def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.refuse is not None:
            raise self.refuse

    async def invoke_action(self, card_id: str, key: str, options: Mapping[str, object]) -> None:
        await self._call("invoke_action", card_id, key, dict(options))

    async def dismiss(self, card_id: str, reason: CloseReason) -> None:
        await self._call("dismiss", card_id, reason)

    async def report_shown(self, card_id: str) -> None:
        await self._call("report_shown", card_id)

    async def request_booking(self, card_id: str, slot_id: str) -> None:
        await self._call("request_booking", card_id, slot_id)

    async def set_consent(
        self, category: Category, *, granted: bool, valid_for: float | None
    ) -> None:
        await self._call("set_consent", category, granted, valid_for)

    async def wipe(self, *, owner_change: bool) -> None:
        await self._call("wipe", owner_change)


async def _call(
    bus: MessageBus,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
) -> Any:
    message = Message(
        destination=BUS_NAME,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=body or [],
    )
    reply = await bus.call(message)
    assert reply is not None
    if reply.message_type is MessageType.ERROR:
        raise DBusError(reply.error_name or "", reply.body[0] if reply.body else "")
    return reply.body


def test_the_bridge_exports_the_boards_committed_view_and_relays_the_calls(
    bus_address: str,
) -> None:
    async def scenario() -> None:
        board = FakeBoard([_card("c1", "One")])
        bridge = DbusBridge(board, bus_address, "en")
        await bridge.start()
        hmi = await MessageBus(bus_address=bus_address).connect()
        try:
            for _ in range(100):
                if bridge.connected:
                    break
                await asyncio.sleep(0.02)
            [objects] = await _call(hmi, ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects")
            assert set(objects) == {card_path("c1")}
            assert objects[card_path("c1")][CARD_INTERFACE]["Kind"].value == CardKind.MAINTENANCE
            manager = "org.touchpoint.Agent1.Manager"
            [caps] = await _call(hmi, ROOT_PATH, manager, "GetCapabilities")
            assert caps["MaxVisible"].value == 2
            [zone] = await _call(hmi, ROOT_PATH, "org.freedesktop.DBus.Properties", "Get", "ss",
                                 [manager, "TimeZone"])  # fmt: skip
            assert zone.value == "Europe/Berlin"
            await _call(hmi, card_path("c1"), CARD_INTERFACE, "InvokeAction", "sa{sv}",
                        ["book", {}])  # fmt: skip
            assert board.calls == [("invoke_action", ("c1", "book", {}))]
            board.refuse = ActionError("NotVisible", "card c1 is not on screen")
            with pytest.raises(DBusError) as refused:
                await _call(hmi, card_path("c1"), CARD_INTERFACE, "Dismiss", "u", [2])
            assert refused.value.type == "org.touchpoint.Agent1.Error.NotVisible"
            # A card the board's view has not committed is not on the bus.
            board._shown.append(replace(_card("c2", "Two")))
            [objects] = await _call(hmi, ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects")
            assert set(objects) == {card_path("c1")}
        finally:
            hmi.disconnect()
            await bridge.stop()

    asyncio.run(scenario())
