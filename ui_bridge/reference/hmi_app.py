"""``touchpoint hmi``: the reference HMI, a terminal UI that follows the cards over D-Bus.

It shows the cards as a car screen would (most urgent first, styled by urgency, in the
agent's locale, only what the driving restriction lets through), reports an impression
(``ReportShown``) once per card when the card is actually on screen, and sends the
driver's keys back to the agent. Keys:

    up/down, tab      select a card
    1..4              the selected card's actions, in order (``book`` opens the slots)
    b                 book from the selected card: ask for slots, pick one
    d                 dismiss the selected card (reason 2, dismissed by the driver)
    l                 switch the locale (zh-CN / en)
    q                 quit

Everything runs on Textual's event loop, dbus-fast's bus included; calls to the agent run
in workers, so the screen never waits for the agent.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable
from dataclasses import replace
from datetime import datetime, tzinfo
from typing import ClassVar, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from textual import on
from textual.app import App, ComposeResult, ScreenStackError
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.logging import TextualHandler
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, OptionList, Static
from textual.widgets.option_list import Option

from agent.cards import LOCALES, CloseReason, Urgency
from ui_bridge.names import ERROR_NO_BOOKING, ERROR_NOT_READY
from ui_bridge.reference.hmi_client import (
    BookingSlot,
    CardAction,
    CardView,
    HmiClient,
    HmiError,
    HmiState,
    Update,
    UpdateKind,
)

_log = logging.getLogger(__name__)

#: How long to wait for the dealer's slots after ``GetBookingSlots`` said NotReady.
SLOTS_WAIT_S: Final = 60.0
#: The screen's own words, (English, Chinese); the cards bring their own texts.
_WORDS: Final = {
    "parked": ("Parked", "已停车"),
    "driving": ("Driving — only critical safety cards", "行驶中 — 仅显示关键安全卡片"),
    # Both languages: with no agent, the HMI does not know which one the driver reads.
    "down": ("agent not running — retrying  ·  服务未运行",) * 2,
    "empty": ("No cards", "暂无卡片"),
    "pending": ("⏳ pending", "⏳ 处理中"),
    "waiting": ("{n} more waiting", "另有 {n} 张卡片等待显示"),
    "no_action": ("no action {n} here", "此卡片没有第 {n} 个操作"),
    "no_card": ("no card selected", "未选择卡片"),
    "done": ("{what}: done", "{what}：已完成"),
    "dismissed": ("{what}: dismissed", "{what}：已忽略"),
    "locale": ("language: {what}", "语言：{what}"),
    "no_booking": ("this card offers no booking", "此卡片不提供预约"),
    "slots_wait": ("waiting for the dealer's slots…", "正在等待经销商的可预约时段……"),
    "no_slots": ("the dealer offers no slots", "经销商暂无可预约时段"),
    "booking_cancelled": ("booking cancelled", "已取消预约"),
    "booking_requested": (
        "booking requested: waiting for the dealer",
        "已提交预约，等待经销商确认",
    ),
    "slots_late": ("the dealer's slots did not arrive", "未收到经销商的可预约时段"),
    "pick_slot": (
        "Pick a slot (1..9, enter), escape to cancel",
        "选择时段（1..9，回车），Esc 取消",
    ),
}
#: Why a card left the screen, as the driver reads it.
_CLOSED: Final = {
    CloseReason.EXPIRED: ("expired", "已过期"),
    CloseReason.DISMISSED: ("dismissed", "已忽略"),
    CloseReason.CLOSED_BY_AGENT: ("closed", "已关闭"),
    CloseReason.WITHDRAWN_FOR_DRIVING: ("hidden while driving", "行驶中暂时隐藏"),
    CloseReason.SUPERSEDED: ("replaced by a more important card", "被更重要的卡片替换"),
    CloseReason.COMPLETED: ("done", "已完成"),
    CloseReason.SNOOZED: ("snoozed", "稍后提醒"),
}
_URGENCY_CLASSES: Final = {
    Urgency.CRITICAL: "critical",
    Urgency.NORMAL: "normal",
    Urgency.LOW: "low",
    Urgency.UNKNOWN: "normal",
}


def _closed(reason: CloseReason | None, locale: str) -> str:
    english, chinese = _CLOSED.get(reason or CloseReason.UNKNOWN, ("closed", "已关闭"))
    return english if locale.startswith("en") else chinese


def _locale(state: HmiState, wish: str | None) -> str:
    return state.locale or wish or LOCALES[0]


def car_zone(name: str) -> tzinfo | None:
    """The car's time zone from its IANA name (``None``, this system's, if unknown)."""
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def word(key: str, locale: str) -> str:
    """One of the screen's own words in ``locale``."""
    english, chinese = _WORDS[key]
    return chinese if locale.lower().startswith("zh") else english


class ClientUpdated(Message):
    """The client's picture of the agent changed."""

    def __init__(self, update: Update) -> None:
        super().__init__()
        self.update = update


class ActionButton(Button, can_focus=False):
    """A card's action; selection stays on the card, so the button takes no focus."""

    def __init__(self, path: str, index: int, action: CardAction) -> None:
        super().__init__(f"{index + 1} {action.label}", compact=True)
        self.path = path
        self.key = action.key


class CardPanel(Vertical, can_focus=True):
    """One card: title (with the pending marker), body and action buttons."""

    def __init__(self, card: CardView, locale: str) -> None:
        super().__init__(classes="card")
        self.card = card
        self._locale = locale
        self.title_text = ""  # as shown, pending marker included

    def compose(self) -> ComposeResult:
        """Title, body, buttons."""
        yield Static(classes="title", markup=False)
        yield Static(classes="body", markup=False)
        yield Horizontal(classes="actions")

    async def on_mount(self) -> None:
        """Fill in the card."""
        await self.show(self.card, self._locale, new=True)

    async def show(self, card: CardView, locale: str, *, new: bool = False) -> None:
        """Show ``card`` (a newer version of this panel's card) in ``locale``."""
        old, self.card, self._locale = self.card, card, locale
        for urgency_class in set(_URGENCY_CLASSES.values()):
            self.set_class(urgency_class == _URGENCY_CLASSES[card.urgency], urgency_class)
        pending = f"  {word('pending', locale)}" if card.pending else ""
        self.title_text = f"{card.title}{pending}"
        self.query_one(".title", Static).update(self.title_text)
        body = f"{card.body}\n{card.note}" if card.note else card.body
        self.query_one(".body", Static).update(body)
        if new or old.actions != card.actions:
            box = self.query_one(".actions", Horizontal)
            await box.remove_children()
            await box.mount_all(ActionButton(card.path, i, a) for i, a in enumerate(card.actions))


class SlotPicker(ModalScreen[str | None]):
    """The dealer's slots: pick one (1..9, or arrows and enter), escape to cancel."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel"),
        *(Binding(str(n), f"pick({n - 1})", show=False) for n in range(1, 10)),
    ]

    def __init__(
        self, slots: list[BookingSlot], zone: tzinfo | None = None, locale: str = LOCALES[0]
    ) -> None:
        super().__init__()
        self._slots = slots
        self._locale = locale
        #: The car's time zone (the Manager's TimeZone): the cards' texts use it too.
        self._zone = zone

    def compose(self) -> ComposeResult:
        """The slots as a list."""
        options = []
        for n, slot in enumerate(self._slots, 1):
            when = datetime.fromtimestamp(slot.start, self._zone).strftime("%a %d %b %H:%M")
            dealer = f" — {slot.dealer}" if slot.dealer else ""
            options.append(Option(f"{n} {when}{dealer}", id=slot.id))
        with Vertical(id="slots"):
            yield Static(word("pick_slot", self._locale), markup=False)
            yield OptionList(*options)

    def action_pick(self, index: int) -> None:
        """Pick the slot numbered ``index + 1``."""
        if 0 <= index < len(self._slots):
            self.dismiss(self._slots[index].id)

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class HmiApp(App[None]):
    """The reference HMI.

    Args:
        address: ``"system"``, ``"session"`` or a D-Bus address.
        locale: The display language to set on the agent (``None``: keep the agent's).
    """

    TITLE = "touchpoint HMI"
    CSS = """
    #header { height: 1; background: $primary; color: $text; padding: 0 1; }
    #header.restricted { background: $warning; color: $text; }
    #header.down { background: $error; }
    #cards { height: 1fr; overflow-y: auto; }
    #empty { color: $text-muted; padding: 1 2; }
    .card { height: auto; border: round $secondary; padding: 0 1; margin: 0 1; }
    .card:focus { border: double $accent; }
    .card.critical { border: heavy $error; }
    .card.critical:focus { border: double $error; }
    .card.critical .title { color: $error; }
    .card.low { opacity: 70%; }
    .card .title { text-style: bold; }
    .card .actions { height: auto; }
    .card ActionButton { margin-right: 1; }
    #status { height: 1; color: $text-muted; padding: 0 1; }
    #status.error { color: $error; }
    #slots { width: 60; height: auto; border: round $accent; background: $surface; }
    SlotPicker { align: center middle; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "select(-1)", "Previous"),
        Binding("down", "select(1)", "Next"),
        *(Binding(str(n), f"invoke({n - 1})", "Actions 1-4", show=n == 1) for n in range(1, 5)),
        Binding("b", "book", "Book"),
        Binding("d", "dismiss_card", "Dismiss"),
        Binding("l", "toggle_locale", "Locale"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, address: str = "system", *, locale: str | None = None) -> None:
        super().__init__()
        self.client = HmiClient(address, locale=locale, listener=self._client_updated)
        self.reported: set[str] = set()  # ids of the cards reported shown
        self._panels: dict[str, CardPanel] = {}
        self._order: list[str] = []  # the paths on screen, top to bottom
        self._selected: str | None = None

    def compose(self) -> ComposeResult:
        """Header, cards, status line, key help."""
        yield Static(id="header", markup=False)
        yield Static(id="empty", markup=False)
        yield Vertical(id="cards")
        yield Static(id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        """Start following the agent."""
        self._show_header(self.client.state)
        self.client.start()

    async def on_unmount(self) -> None:
        """Disconnect."""
        await self.client.close()

    def _client_updated(self, update: Update) -> None:
        self.post_message(ClientUpdated(update))

    # -- the view -----------------------------------------------------------------------

    @property
    def locale(self) -> str:
        """The agent's display language (or this HMI's wish, before it is known)."""
        return _locale(self.client.state, self.client.locale)

    def word(self, key: str, **values: object) -> str:
        """One of the screen's own words in the current locale, filled in."""
        return word(key, self.locale).format(**values)

    @on(ClientUpdated)
    async def _refresh(self, message: ClientUpdated) -> None:
        update = message.update
        if self._shutting_down():
            return
        # One picture for the whole refresh: the client's state moves on while we await.
        state = replace(self.client.state, cards=dict(self.client.state.cards))
        try:
            if update.kind is UpdateKind.CLOSED and update.path in self._panels:
                title = self._panels[update.path].card.title
                self.status(f"{title}: {_closed(update.reason, self.locale)}")
            await self._show_cards(state)
            self._show_header(state)  # last: once it says something, the cards agree
        except (NoMatches, ScreenStackError):
            if not self._shutting_down():
                raise
            return  # it began shutting down meanwhile: the screen is gone
        self.call_after_refresh(self._report_impressions)

    def _shutting_down(self) -> bool:
        return not self.is_running

    def _show_header(self, state: HmiState) -> None:
        locale, header = _locale(state, self.client.locale), self.query_one("#header", Static)
        if not state.running:
            text = word("down", locale)
        else:
            driving = word("driving" if state.restricted else "parked", locale)
            text = f"{driving}  ·  {locale}  ·  API {state.version}"
            if state.waiting:
                text += "  ·  " + word("waiting", locale).format(n=state.waiting)
        header.update(text)
        header.set_class(state.running and state.restricted, "restricted")
        header.set_class(not state.running, "down")

    async def _show_cards(self, state: HmiState) -> None:
        cards, locale = state.ordered(), _locale(state, self.client.locale)
        focused = self.focused  # the driver's choice, before removals move the focus
        if isinstance(focused, CardPanel) and focused.card.path in self._panels:
            self._selected = focused.card.path
        box = self.query_one("#cards", Vertical)
        wanted = {card.path for card in cards}
        gone = [self._panels.pop(path) for path in list(self._panels) if path not in wanted]
        if gone:
            await box.remove_children(gone)
        for index, card in enumerate(cards):
            panel = self._panels.get(card.path)
            if panel is None:
                panel = self._panels[card.path] = CardPanel(card, locale)
                await box.mount(panel)
            else:
                await panel.show(card, locale)
            if box.children[index] is not panel:
                box.move_child(panel, before=index)
        empty = self.query_one("#empty", Static)
        empty.update(word("empty", locale) if state.running else "")
        empty.display = not cards
        self._keep_selection([card.path for card in cards])

    def _keep_selection(self, order: list[str]) -> None:
        previous, self._order = self._order, order
        if self.screen is not self.screen_stack[0]:
            return  # a dialog is open: leave its focus alone
        selected = self._selected
        if not order:
            selected = None
        elif selected is None or selected not in self._panels:
            # The selected card went: select the one that took its place.
            index = previous.index(selected) if selected in previous else 0
            selected = order[min(index, len(order) - 1)]
        self._selected = selected
        if selected is not None and self.focused is not self._panels[selected]:
            self._panels[selected].focus()

    def _report_impressions(self) -> None:
        if not self.is_running:
            return
        for path, panel in list(self._panels.items()):
            card = panel.card
            if card.id and card.id not in self.reported and panel.is_on_screen:
                self.reported.add(card.id)
                self.run_worker(self._report(path, card.id), group="impressions")

    async def _report(self, path: str, card_id: str) -> None:
        try:
            await self.client.report_shown(path)
        except HmiError as err:
            self.reported.discard(card_id)  # it may be shown again; try then
            _log.debug("ReportShown %s: %s", path, err)

    def status(self, text: str, *, error: bool = False) -> None:
        """Show ``text`` on the status line."""
        line = self.query_one("#status", Static)
        line.update(text)
        line.set_class(error, "error")

    # -- keys ---------------------------------------------------------------------------

    def selected(self) -> CardView | None:
        """The selected card, if any."""
        focused = self.focused
        return focused.card if isinstance(focused, CardPanel) else None

    def action_select(self, step: int) -> None:
        """Select the previous (-1) or next (1) card."""
        panels = [self._panels[path] for path in self._order if path in self._panels]
        if not panels:
            return
        current = self.focused
        index = panels.index(current) + step if isinstance(current, CardPanel) else 0
        panel = panels[max(0, min(index, len(panels) - 1))]
        panel.focus()
        panel.scroll_visible()
        self._selected = panel.card.path
        self.call_after_refresh(self._report_impressions)

    def action_invoke(self, index: int) -> None:
        """The selected card's action number ``index + 1``."""
        card = self.selected()
        if card is None or index >= len(card.actions):
            self.status(self.word("no_action", n=index + 1), error=True)
            return
        self._invoke(card, card.actions[index])

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        button = event.button
        panel = self._panels.get(button.path) if isinstance(button, ActionButton) else None
        if panel is not None and isinstance(button, ActionButton):
            panel.focus()
            for action in panel.card.actions:
                if action.key == button.key:
                    self._invoke(panel.card, action)

    def _invoke(self, card: CardView, action: CardAction) -> None:
        if action.key == "book":
            self.run_worker(self._book(card), group="booking", exclusive=True)
        else:
            done = self.word("done", what=action.label)
            self._send(self.client.invoke_action(card.path, action.key), done)

    def action_dismiss_card(self) -> None:
        """Dismiss the selected card (reason 2: the driver dismissed it)."""
        card = self.selected()
        if card is None:
            self.status(self.word("no_card"), error=True)
        else:
            self._send(self.client.dismiss(card.path), self.word("dismissed", what=card.title))

    def action_toggle_locale(self) -> None:
        """Switch the agent's display language between zh-CN and en."""
        locale = LOCALES[(LOCALES.index(self.locale) + 1) % len(LOCALES)]
        self._send(self.client.set_locale(locale), word("locale", locale).format(what=locale))

    def _send(self, call: Awaitable[None], done: str) -> None:
        """Run a call to the agent in a worker; its outcome goes to the status line."""

        async def send() -> None:
            try:
                await call
            except HmiError as err:
                self.status(str(err), error=True)
            else:
                self.status(done)

        self.run_worker(send(), group="calls")

    def action_book(self) -> None:
        """Book from the selected card: its slots, then the one the driver picks."""
        card = self.selected()
        if card is None or all(a.key != "book" for a in card.actions):
            self.status(self.word("no_booking"), error=True)
            return
        self.run_worker(self._book(card), group="booking", exclusive=True)

    async def _book(self, card: CardView) -> None:
        client = self.client
        waiter = client.expect_slots(card.path)  # before asking, so it cannot slip past
        try:
            try:
                slots = await client.booking_slots(card.path)
            except HmiError as err:
                if err.name == ERROR_NO_BOOKING:
                    await client.invoke_action(card.path, "book")
                elif err.name != ERROR_NOT_READY:
                    raise
                self.status(self.word("slots_wait"))
                async with asyncio.timeout(SLOTS_WAIT_S):
                    await waiter
                slots = await client.booking_slots(card.path)
            if not slots:
                self.status(self.word("no_slots"), error=True)
                return
            zone = car_zone(client.state.time_zone)
            slot_id = await self.push_screen_wait(SlotPicker(slots, zone, self.locale))
            if slot_id is None:
                self.status(self.word("booking_cancelled"))
                return
            await client.request_booking(card.path, slot_id)
            self.status(self.word("booking_requested"))
        except HmiError as err:
            self.status(str(err), error=True)
        except TimeoutError:
            self.status(self.word("slots_late"), error=True)
        finally:
            waiter.cancel()


def run_app(address: str, locale: str | None = None) -> None:
    """Run the HMI on the bus at ``address`` until the user quits."""
    # Records written straight to the terminal would tear the screen: while the app
    # runs, they go to Textual's log (``textual console``) instead.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            root.removeHandler(handler)
            textual_handler = TextualHandler()
            textual_handler.setFormatter(handler.formatter)
            root.addHandler(textual_handler)
    HmiApp(address, locale=locale).run()
