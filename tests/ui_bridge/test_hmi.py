"""The reference HMI and its client, against a real agent on a private dbus-daemon.

The HMI runs headless (Textual's ``run_test``) and is driven by keys through the pilot;
what it does must reach the agent (its cards and its committed events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from textual.pilot import Pilot
from textual.widgets import Static

from agent.booking import Slot
from agent.cards import CardState, Text
from tests.ui_bridge.conftest import DRIVE, DUE_SOON, PARK, feed, serving
from touchpoint.daemon import Daemon
from ui_bridge.names import CARD_INTERFACE, ERROR_UNKNOWN_ACTION, OBJECT_MANAGER, ROOT_PATH
from ui_bridge.reference.hmi_app import ActionButton, CardPanel, HmiApp, SlotPicker
from ui_bridge.reference.hmi_client import HmiClient, HmiError, HmiState
from ui_bridge.reference.private_bus import private_bus, session_config

DEADLINE_S = 10.0
SIZE = (110, 32)


def _outbox(db: Path) -> list[tuple[str, dict[str, Any]]]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT type, payload FROM outbox ORDER BY rowid").fetchall()
    return [(str(kind), json.loads(payload)) for kind, payload in rows]


async def committed(daemon: Daemon) -> list[tuple[str, dict[str, Any]]]:
    """The events the daemon has committed so far: (type, payload)."""
    return await asyncio.to_thread(_outbox, daemon.settings.store.path)


async def events(daemon: Daemon) -> list[str]:
    """The types of the events the daemon has committed so far."""
    return [kind for kind, _ in await committed(daemon)]


async def actions(daemon: Daemon) -> list[tuple[str, str]]:
    """(card id, action) of the committed ``card.action`` events."""
    rows = await committed(daemon)
    return [(p["card_id"], p["action"]) for kind, p in rows if kind == "card.action"]


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str) -> None:
    """Let the app run until ``condition()`` holds, or fail after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def until_event(pilot: Pilot[None], daemon: Daemon, kind: str) -> None:
    """Let the app run until the daemon has committed an event of ``kind``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while kind not in await events(daemon):
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for the event {kind}")
        await pilot.pause(0.05)


def titles(app: HmiApp) -> list[str]:
    """The card titles on the HMI's screen, top to bottom."""
    return [panel.title_text for panel in app.query(CardPanel)]


def selected_title(app: HmiApp) -> str | None:
    """The title of the selected card."""
    card = app.selected()
    return None if card is None else card.title


def buttons(app: HmiApp) -> list[str]:
    """The labels of the action buttons on the HMI's screen."""
    return [str(button.label) for button in app.query(ActionButton)]


def header(app: HmiApp) -> str:
    """The header line as shown."""
    return str(app.query_one("#header", Static).content)


def status(app: HmiApp) -> str:
    """The status line as shown."""
    return str(app.query_one("#status", Static).content)


def test_the_hmi_shows_the_card_reports_it_and_a_snooze_key_reaches_the_agent(
    bus_address: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "store.db", bus_address) as daemon:
            app = HmiApp(bus_address)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.client.state.running, "the agent")
                await feed(daemon, *PARK, *DUE_SOON)
                await until(pilot, lambda: titles(app) == ["Service due soon"], "the card")
                await until(pilot, lambda: "Parked" in header(app), "the header")
                (card,) = daemon.agent.cards.visible
                panel = app.query_one(CardPanel)
                assert panel.card.body.startswith("Coming up: Tyre rotation")
                assert [a.key for a in panel.card.actions] == ["book", "snooze", "dismiss"]
                await until(pilot, lambda: app.focused is panel, "the card to be selected")

                # The card was on screen: one impression, recorded by the agent.
                await until_event(pilot, daemon, "card.shown")
                assert daemon.agent.cards.visible[0].shown
                assert app.reported == {card.id}

                # 2 is the second action, "Remind me later" (snooze).
                await pilot.press("2")
                await until(pilot, lambda: not titles(app), "the card to go")
                snoozed = daemon.agent.cards.get(card.id)
                assert snoozed is not None
                assert snoozed.state is CardState.SNOOZED
                assert await actions(daemon) == [(card.id, "snooze")]
                types = await events(daemon)
                assert "card.snoozed" in types
                assert types.count("card.shown") == 1
                assert "No cards" in str(app.query_one("#empty", Static).content)

    asyncio.run(scenario())


def test_locale_dismiss_and_driving_from_the_keyboard(bus_address: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "store.db", bus_address) as daemon:
            app = HmiApp(bus_address)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.client.state.running, "the agent")
                await feed(daemon, *PARK, *DUE_SOON)
                await until(pilot, lambda: titles(app) == ["Service due soon"], "the card")

                # l: the agent's locale changes, the private title is read again.
                await pilot.press("l")
                await until(pilot, lambda: titles(app) == ["保养即将到期"], "the Chinese title")
                assert daemon.bridge is not None
                assert daemon.bridge.locale == "zh-CN"
                await until(pilot, lambda: "已停车" in header(app), "the Chinese header")
                chinese = ["1 预约保养", "2 稍后提醒", "3 忽略"]
                await until(pilot, lambda: buttons(app) == chinese, "the Chinese buttons")
                await pilot.press("l")
                await until(pilot, lambda: titles(app) == ["Service due soon"], "English again")

                # Driving withdraws the parked-only card; the header says why.
                await feed(daemon, *DRIVE)
                await until(pilot, lambda: not titles(app), "the withdrawal")
                await until(pilot, lambda: "Driving — only critical" in header(app), "the header")
                assert header(app).startswith("Driving — only critical safety cards")
                assert app.query_one("#header").has_class("restricted")

                # Parked again, it comes back; d dismisses it for good.
                await feed(daemon, *PARK)
                await until(pilot, lambda: titles(app) == ["Service due soon"], "its return")
                await until(pilot, lambda: "Parked" in header(app), "the header")
                (card,) = daemon.agent.cards.visible
                await pilot.press("d")
                await until(pilot, lambda: not titles(app), "the dismissal")
                closed = daemon.agent.cards.get(card.id)
                assert closed is None or closed.state is CardState.CLOSED
                assert "card.dismissed" in await events(daemon)
                assert "dismissed" in status(app)

    asyncio.run(scenario())


FAULTS = (
    ("Vehicle.Diagnostics.DTCList", ("P0301", "P0524")),
    ("Vehicle.Diagnostics.DTCCount", 2),
)
OIL = "Oil pressure too low: stop safely"


def test_cards_are_ordered_by_urgency_and_selected_with_arrows_and_tab(
    bus_address: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "store.db", bus_address) as daemon:
            app = HmiApp(bus_address)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.client.state.running, "the agent")
                await feed(daemon, *PARK, *DUE_SOON, *FAULTS)
                order = [OIL, "Cylinder misfire", "Service due soon"]
                await until(pilot, lambda: titles(app) == order, "three cards, critical first")
                panels = list(app.query(CardPanel))
                oil, misfire, _ = (panel.card for panel in panels)
                assert panels[0].has_class("critical")
                assert panels[1].has_class("normal")
                await until(pilot, lambda: len(app.reported) == 3, "three impressions")

                # The selection stays on the card it was on as others arrive; up goes to
                # the top and stops there.
                await until(pilot, lambda: app.focused in panels, "a card selected")
                await pilot.press("up", "up", "up")
                assert app.focused is panels[0]
                await pilot.press("down")
                assert app.focused is panels[1]
                await pilot.press("tab")
                assert app.focused is panels[2]
                await pilot.press("up")
                assert app.focused is panels[1]
                # The misfire card's second action is "dismiss".
                await pilot.press("2")
                await until(pilot, lambda: titles(app) == [OIL, "Service due soon"], "it to go")
                assert await actions(daemon) == [(misfire.id, "dismiss")]
                # The selection moves to the card that took its place.
                await until(pilot, lambda: selected_title(app) == "Service due soon", "selection")
                assert "card.dismissed" in await events(daemon)

                # Driving: only the critical safety card stays, and OK closes it.
                await feed(daemon, *DRIVE)
                await until(pilot, lambda: titles(app) == [OIL], "the restriction")
                await until(pilot, lambda: app.focused is app.query_one(CardPanel), "selection")
                await pilot.press("1")
                await until(pilot, lambda: not titles(app), "the OK")
                assert (oil.id, "ok") in await actions(daemon)

    asyncio.run(scenario())


def test_b_books_a_slot_the_cloud_offers(bus_address: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "store.db", bus_address) as daemon:
            app = HmiApp(bus_address)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.client.state.running, "the agent")
                await feed(daemon, *PARK, *DUE_SOON)
                await until(pilot, lambda: bool(titles(app)), "the card")
                (card,) = daemon.agent.cards.visible

                await pilot.press("b")  # invokes "book": the agent asks the cloud
                await until(pilot, lambda: "pending" in titles(app)[0], "the pending marker")
                booking = daemon.agent.flows.booking_for(card.key)
                assert booking is not None
                offered = [Slot("slot-1", 1_900_000_000.0, Text("某经销商", "Some Dealer"))]
                await daemon.apply(lambda a, w, m: a.on_slots(booking.slots_request, offered, w, m))

                # SlotsAvailable: the picker opens; 1 picks the first slot.
                await until(pilot, lambda: isinstance(app.screen, SlotPicker), "the slots")
                await pilot.press("1")
                await until(pilot, lambda: "booking requested" in status(app), "the request")
                requested = daemon.agent.flows.booking_for(card.key)
                assert requested is not None
                assert requested.slot is not None
                assert requested.slot.id == "slot-1"
                assert "request.booking" in await events(daemon)

                # Booking the same visit twice: the agent's refusal, readable.
                await pilot.press("b")
                await until(pilot, lambda: isinstance(app.screen, SlotPicker), "the slots again")
                await pilot.press("1")
                await until(pilot, lambda: "Error" in status(app), "the refusal")
                assert status(app).startswith("org.touchpoint.Agent1.Error.")

    asyncio.run(scenario())


def test_the_hmi_says_when_the_agent_is_not_running_and_follows_it_when_it_starts(
    bus_address: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        app = HmiApp(bus_address, locale="en")
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "agent not running" in header(app), "the warning")
            async with serving(tmp_path / "store.db", bus_address, locale="zh-CN") as daemon:
                await until(pilot, lambda: app.client.state.running, "the agent")
                await feed(daemon, *PARK, *DUE_SOON)
                # The HMI asked for English, and the agent (started in Chinese) obliged.
                await until(pilot, lambda: titles(app) == ["Service due soon"], "the card")
            await until(pilot, lambda: "agent not running" in header(app), "the warning again")
            assert not titles(app)
            await pilot.press("d")
            assert "no card selected" in status(app)

    asyncio.run(scenario())


# -- the client library on its own -------------------------------------------------------


def test_private_properties_travel_only_in_method_replies(bus_address: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        spy = await MessageBus(bus_address=bus_address).connect()
        seen: list[Message] = []
        spy.add_message_handler(
            lambda m: seen.append(m) if m.message_type is MessageType.SIGNAL else None
        )
        for rule in (
            f"type='signal',path='{ROOT_PATH}',interface='{OBJECT_MANAGER}'",
            f"type='signal',member='PropertiesChanged',path_namespace='{ROOT_PATH}'",
        ):
            await spy.call(
                Message(
                    destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                    body=[rule],
                )
            )  # fmt: skip
        client = HmiClient(bus_address)
        try:
            async with serving(tmp_path / "store.db", bus_address) as daemon:
                client.start()
                async with asyncio.timeout(DEADLINE_S):
                    await client.wait_until(lambda s: s.running)
                await feed(daemon, *PARK, *DUE_SOON)
                async with asyncio.timeout(DEADLINE_S):
                    await client.wait_until(lambda s: bool(s.cards))
                (view,) = client.state.cards.values()
                assert view.private_loaded
                assert view.title == "Service due soon"
                assert view.template_args["item_ids"] == ["tyre_rotation"]

                added = [m for m in seen if m.member == "InterfacesAdded"]
                assert added, "the spy saw the card appear"
                public = added[-1].body[1][CARD_INTERFACE]
                assert {"Title", "Body", "TemplateArgs"}.isdisjoint(public)
                assert public["Urgency"].value == 2

                await client.set_locale("zh-CN")
                async with asyncio.timeout(DEADLINE_S):
                    await client.wait_until(lambda s: _title(s) == "保养即将到期")
                changed = [
                    m for m in seen
                    if m.member == "PropertiesChanged" and m.body[0] == CARD_INTERFACE
                ]  # fmt: skip
                assert changed
                assert "Title" not in changed[-1].body[1]
                assert "Title" in changed[-1].body[2], "the title is announced as invalidated"

                with pytest.raises(HmiError) as refused:
                    await client.invoke_action(view.path, "redeem")
                assert refused.value.name == ERROR_UNKNOWN_ACTION
                assert str(refused.value).startswith(ERROR_UNKNOWN_ACTION)
            async with asyncio.timeout(DEADLINE_S):
                await client.wait_until(lambda s: not s.running and not s.cards)
        finally:
            await client.close()
            spy.disconnect()
            await spy.wait_for_disconnect()  # type: ignore[no-untyped-call]

    asyncio.run(scenario())


def _title(state: HmiState) -> str | None:
    return next((card.title for card in state.cards.values()), None)


def test_the_client_follows_the_agent_across_a_restart_of_the_bus(tmp_path: Path) -> None:
    async def scenario(socket: Path) -> None:
        # A fixed socket, so the bus can come back at the same address.
        config = session_config(f"unix:path={socket}")
        address = f"unix:path={socket}"
        client = HmiClient(address)
        with contextlib.ExitStack() as buses:
            first = buses.enter_context(contextlib.ExitStack())
            first.enter_context(private_bus(config))
            try:
                async with serving(tmp_path / "store.db", address) as daemon:
                    client.start()
                    await feed(daemon, *PARK, *DUE_SOON)
                    async with asyncio.timeout(DEADLINE_S):
                        await client.wait_until(lambda s: bool(s.cards))
                    first.close()  # the dbus-daemon goes away...
                    async with asyncio.timeout(DEADLINE_S):
                        await client.wait_until(lambda s: not s.running and not s.cards)
                    buses.enter_context(private_bus(config))  # ...and comes back
                    async with asyncio.timeout(DEADLINE_S):
                        await client.wait_until(lambda s: s.running and bool(s.cards))
                    (view,) = client.state.cards.values()
                    assert view.title == "Service due soon"
            finally:
                await client.close()

    with tempfile.TemporaryDirectory(prefix="tp-hmi-") as directory:
        asyncio.run(scenario(Path(directory) / "bus"))
