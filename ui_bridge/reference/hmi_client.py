"""A small async client of ``org.touchpoint.Agent1``, as an HMI uses it.

It keeps a picture of what the agent shows (:class:`HmiState`: the cards, the driving
restriction, the locale) and calls the agent back (actions, dismissals, impressions,
booking, the locale). The reference HMI (:mod:`ui_bridge.reference.hmi_app`) is built on it; an
integrator can read it as a worked example of the API.

How the picture is kept: match rules first, then the snapshot (``GetManagedObjects``
and the Manager's ``GetAll``), then every signal in the order it arrived. Signals that
arrived before the snapshot are replayed after it; replaying changes in order converges
on the agent's state, so nothing is missed between the two. ``InterfacesAdded`` and
``PropertiesChanged`` carry only public properties; the private ones (title, body,
template arguments) are read with ``GetAll``, a method call the bus policy restricts.

The client survives the agent and the bus going away: it shows ``running = False`` and
retries with a back-off; when the agent takes its name again, it reads everything anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from typing import Any, Final, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusFastError

from agent.cards import CardKind, CardState, CloseReason, Display, Urgency
from touchpoint.tasks import cancel_and_wait
from ui_bridge.errors import BridgeError
from ui_bridge.names import (
    BUS_NAME,
    CARD_INTERFACE,
    MANAGER_INTERFACE,
    OBJECT_MANAGER,
    PRIVATE,
    ROOT_PATH,
    bus_arguments,
)

_log = logging.getLogger(__name__)

PROPERTIES: Final = "org.freedesktop.DBus.Properties"
DBUS: Final = "org.freedesktop.DBus"
DBUS_PATH: Final = "/org/freedesktop/DBus"
#: Errors of this client itself (not from the agent).
ERROR_DISCONNECTED: Final = "org.touchpoint.Hmi.Error.NotConnected"
ERROR_TIMEOUT: Final = "org.touchpoint.Hmi.Error.Timeout"
CALL_TIMEOUT_S: Final = 15.0  # a call waits for its commit; a busy store can be slow
RECONNECT_MIN_S: Final = 0.2
RECONNECT_MAX_S: Final = 5.0

_MATCH_RULES: Final = (
    f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',arg0='{BUS_NAME}'",
    f"type='signal',sender='{BUS_NAME}',path='{ROOT_PATH}',interface='{OBJECT_MANAGER}'",
    f"type='signal',sender='{BUS_NAME}',path='{ROOT_PATH}',interface='{MANAGER_INTERFACE}'",
    (
        f"type='signal',sender='{BUS_NAME}',interface='{PROPERTIES}',member='PropertiesChanged',"
        f"path_namespace='{ROOT_PATH}'"
    ),
)

_E = TypeVar("_E", bound=IntEnum)


class HmiError(BridgeError):
    """A call failed; ``name`` is the D-Bus error name (``...Agent1.Error.NotVisible``...)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name
        self.text = text


@dataclass(frozen=True, slots=True)
class CardAction:
    """A button of a card: the key to send back and its label in the current locale."""

    key: str
    label: str


@dataclass(frozen=True, slots=True)
class BookingSlot:
    """An appointment offered for booking from a card."""

    id: str
    start: float  # seconds since the epoch
    dealer: str | None = None


def plain(value: object) -> object:
    """A D-Bus value with its variants unwrapped (recursively)."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _enum(kind: type[_E], value: object) -> _E:
    """An enum member, or its 0 (unknown) member for a value a newer agent may send."""
    try:
        return kind(value if isinstance(value, int) else 0)
    except ValueError:
        return kind(0)


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _seconds(value: object) -> float | None:
    return value / 1_000_000 if isinstance(value, int) and value > 0 else None


def _actions(value: object) -> tuple[CardAction, ...]:
    pairs = value if isinstance(value, list) else []
    return tuple(CardAction(str(pair[0]), str(pair[1])) for pair in pairs if len(pair) == 2)


#: D-Bus property -> (CardView field, conversion of the unwrapped value).
_FIELDS: Final[dict[str, tuple[str, Callable[[object], object]]]] = {
    "Id": ("id", _string),
    "Kind": ("kind", lambda v: _enum(CardKind, v)),
    "Urgency": ("urgency", lambda v: _enum(Urgency, v)),
    "DisplayPolicy": ("display", lambda v: _enum(Display, v)),
    "Priority": ("priority", lambda v: v if isinstance(v, int) else 0),
    "Title": ("title", _string),
    "Body": ("body", _string),
    "TemplateId": ("template_id", _string),
    "TemplateArgs": ("template_args", lambda v: dict(v) if isinstance(v, dict) else {}),
    "Actions": ("actions", _actions),
    "Created": ("created", _seconds),
    "Expires": ("expires", _seconds),
    "State": ("state", lambda v: _enum(CardState, v)),
    "Pending": ("pending", bool),
    "Note": ("note", _string),
}
#: Manager property -> HmiState attribute.
_MANAGER_FIELDS: Final = {
    "DrivingRestricted": "restricted",
    "Locale": "locale",
    "TimeZone": "time_zone",
    "Waiting": "waiting",
    "Version": "version",
}


@dataclass(frozen=True, slots=True)
class CardView:
    """A card as an HMI sees it on the bus (texts in the agent's current locale).

    Attributes:
        path: Its object path (what the Manager's methods take).
        private_loaded: Whether the private properties (title, body, template
            arguments) have been read; until then they are empty.
    """

    path: str
    id: str = ""
    kind: CardKind = CardKind.UNKNOWN
    urgency: Urgency = Urgency.UNKNOWN
    display: Display = Display.UNKNOWN
    priority: int = 0
    title: str = ""
    body: str = ""
    template_id: str = ""
    template_args: Mapping[str, object] = field(default_factory=dict)
    actions: tuple[CardAction, ...] = ()
    created: float | None = None
    expires: float | None = None
    state: CardState = CardState.UNKNOWN
    pending: bool = False
    note: str = ""
    private_loaded: bool = False

    def merged(self, properties: Mapping[str, Any]) -> CardView:
        """A copy with D-Bus ``properties`` (variants or plain values) applied."""
        changes: dict[str, Any] = {}
        for name, raw in properties.items():
            if name in _FIELDS:
                attribute, convert = _FIELDS[name]
                changes[attribute] = convert(plain(raw))
        loaded = self.private_loaded or properties.keys() >= PRIVATE
        return replace(self, private_loaded=loaded, **changes)


def screen_order(card: CardView) -> tuple[int, int, float, str]:
    """Sort key: most urgent first, then highest priority, then oldest."""
    return (-int(card.urgency), -card.priority, card.created or 0.0, card.path)


@dataclass(slots=True)
class HmiState:
    """What the agent shows now, as far as this client knows."""

    running: bool = False
    restricted: bool = False
    locale: str = ""
    version: str = ""
    #: The car's time zone (IANA): render every time in it, not in this system's.
    time_zone: str = ""
    #: Cards the agent holds back for the limit on cards at once (say more wait).
    waiting: int = 0
    cards: dict[str, CardView] = field(default_factory=dict)

    def ordered(self) -> list[CardView]:
        """The cards in screen order (see :func:`screen_order`)."""
        return sorted(self.cards.values(), key=screen_order)


class UpdateKind(Enum):
    """What an :class:`Update` is about."""

    CONNECTION = "connection"  # the agent appeared or went away
    MANAGER = "manager"  # the driving restriction or the locale
    CARDS = "cards"  # a card was added, changed or removed
    CLOSED = "closed"  # a card went away for good (with a reason)
    SLOTS = "slots"  # booking slots arrived for a card


@dataclass(frozen=True, slots=True)
class Update:
    """A change of :class:`HmiState`, or news the HMI may want to show."""

    kind: UpdateKind
    path: str | None = None
    reason: CloseReason | None = None


Listener = Callable[[Update], None]


def _method(path: str, interface: str, member: str, signature: str = "", *body: Any) -> Message:
    destination = BUS_NAME if path.startswith(ROOT_PATH) else DBUS
    return Message(destination=destination, path=path, interface=interface, member=member,
                   signature=signature, body=list(body))  # fmt: skip


async def _call(bus: MessageBus | None, message: Message) -> Message:
    if bus is None or not bus.connected:
        raise HmiError(ERROR_DISCONNECTED, "agent not running (no bus connection)")
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            reply = await bus.call(message)
    except TimeoutError as err:
        raise HmiError(ERROR_TIMEOUT, f"no answer to {message.member}") from err
    except (OSError, EOFError, DBusFastError) as err:
        raise HmiError(ERROR_DISCONNECTED, f"the bus connection was lost: {err}") from err
    if reply is None:
        raise HmiError(ERROR_DISCONNECTED, "the bus connection was closed")
    if reply.message_type is MessageType.ERROR:
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise HmiError(reply.error_name or "org.freedesktop.DBus.Error.Failed", text)
    return reply


class HmiClient:
    """Follows the agent's cards over D-Bus and calls the agent back.

    Args:
        address: ``"system"``, ``"session"``, or a D-Bus address (``unix:path=...``).
        locale: The display language this HMI wants; set on the agent whenever it
            (re)appears. ``None`` keeps the agent's.
        listener: Called (on the event loop) after every change of :attr:`state`.
    """

    def __init__(
        self,
        address: str = "system",
        *,
        locale: str | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.address = address
        self.locale = locale
        self.state = HmiState()
        self._listener = listener
        self._bus: MessageBus | None = None
        self._owner: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._slot_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._handlers: dict[tuple[str, str], Callable[[MessageBus, Message], Awaitable[None]]] = {
            (OBJECT_MANAGER, "InterfacesAdded"): self._interfaces_added,
            (OBJECT_MANAGER, "InterfacesRemoved"): self._interfaces_removed,
            (PROPERTIES, "PropertiesChanged"): self._properties_changed,
            (MANAGER_INTERFACE, "CardClosed"): self._card_closed,
            (MANAGER_INTERFACE, "SlotsAvailable"): self._slots_available,
        }

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start following the agent in the background (see :meth:`run`)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="hmi client")

    async def close(self) -> None:
        """Stop following and disconnect."""
        task, self._task = self._task, None
        await cancel_and_wait([task])

    async def run(self) -> None:
        """Connect, follow the agent, and reconnect after losing the bus, until cancelled."""
        delay = RECONNECT_MIN_S
        while True:
            try:
                bus = await self._open()
            except (OSError, EOFError, DBusFastError) as err:
                _log.debug("cannot reach the %s bus: %s", self.address, err)
                self._lost()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            delay = RECONNECT_MIN_S
            try:
                await self._follow(bus)
            finally:
                self._bus = None
                self._lost()
                bus.disconnect()
                with contextlib.suppress(OSError, EOFError, DBusFastError):
                    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            _log.info("the bus connection was lost; reconnecting")

    async def wait_until(self, predicate: Callable[[HmiState], bool]) -> None:
        """Wait until ``predicate(state)`` holds (bound it with ``asyncio.timeout``)."""
        while not predicate(self.state):
            await self._changed.wait()

    async def _open(self) -> MessageBus:
        return await MessageBus(**bus_arguments(self.address)).connect()

    async def _follow(self, bus: MessageBus) -> None:
        inbox: asyncio.Queue[Message | None] = asyncio.Queue()

        def keep(message: Message) -> None:
            if message.message_type is MessageType.SIGNAL:
                inbox.put_nowait(message)

        bus.add_message_handler(keep)
        self._bus = bus
        try:
            for rule in _MATCH_RULES:
                await _call(bus, _method(DBUS_PATH, DBUS, "AddMatch", "s", rule))
            try:
                reply = await _call(bus, _method(DBUS_PATH, DBUS, "GetNameOwner", "s", BUS_NAME))
                await self._sync(bus, str(reply.body[0]))
            except HmiError as err:
                _log.debug("the agent is not there yet: %s", err)
        except HmiError:
            return  # the bus went away while setting up
        watch = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        watch.add_done_callback(lambda _: inbox.put_nowait(None))
        try:
            while (message := await inbox.get()) is not None:
                try:
                    await self._handle(bus, message)
                except HmiError as err:  # a call made while handling it failed
                    _log.debug("while handling %s: %s", message.member, err)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, EOFError, DBusFastError):
                await watch

    async def _sync(self, bus: MessageBus, owner: str) -> None:
        """Read everything anew from the agent at ``owner``."""
        self._owner = owner
        objects = await _call(bus, _method(ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects"))
        manager = await _call(bus, _method(ROOT_PATH, PROPERTIES, "GetAll", "s", MANAGER_INTERFACE))
        cards: dict[str, CardView] = {}
        for path, interfaces in objects.body[0].items():
            if CARD_INTERFACE in interfaces:
                cards[path] = await self._complete(bus, CardView(path), interfaces[CARD_INTERFACE])
        self.state.cards = cards
        self._manager(manager.body[0])
        self.state.running = True
        if self.locale is not None and self.locale != self.state.locale:
            await self.set_locale(self.locale)
        self._notify(Update(UpdateKind.CONNECTION))

    async def _complete(
        self, bus: MessageBus, card: CardView, public: Mapping[str, Any]
    ) -> CardView:
        """``card`` with ``public`` applied, and its private properties read if missing."""
        card = card.merged(public)
        return card if card.private_loaded else await self._reread(bus, card)

    async def _reread(self, bus: MessageBus, card: CardView) -> CardView:
        try:
            reply = await _call(bus, _method(card.path, PROPERTIES, "GetAll", "s", CARD_INTERFACE))
        except HmiError as err:  # gone meanwhile: its InterfacesRemoved is on its way
            _log.debug("cannot read %s: %s", card.path, err)
            return card
        return card.merged(reply.body[0])

    def _manager(self, properties: Mapping[str, Any]) -> None:
        for name, attribute in _MANAGER_FIELDS.items():
            if name in properties:
                setattr(self.state, attribute, plain(properties[name]))

    def _lost(self) -> None:
        self._owner = None
        if self.state.running or self.state.cards:
            self.state.running = False
            self.state.cards = {}
            self._notify(Update(UpdateKind.CONNECTION))

    def _notify(self, update: Update) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if self._listener is not None:
            self._listener(update)

    # -- signals ------------------------------------------------------------------------

    async def _handle(self, bus: MessageBus, message: Message) -> None:
        if message.member == "NameOwnerChanged" and message.sender == DBUS:
            new_owner = str(message.body[2])
            if new_owner:
                await self._sync(bus, new_owner)
            else:
                self._lost()
            return
        if message.sender != self._owner or not self.state.running:
            return  # not from the agent we follow (or from before its snapshot)
        handler = self._handlers.get((message.interface or "", message.member or ""))
        if handler is not None:
            await handler(bus, message)

    async def _interfaces_added(self, bus: MessageBus, message: Message) -> None:
        path, interfaces = message.body
        if CARD_INTERFACE in interfaces:
            card = self.state.cards.get(path, CardView(path))
            self.state.cards[path] = await self._complete(bus, card, interfaces[CARD_INTERFACE])
            self._notify(Update(UpdateKind.CARDS, path))

    async def _interfaces_removed(self, _bus: MessageBus, message: Message) -> None:
        path, interfaces = message.body
        if CARD_INTERFACE in interfaces and path in self.state.cards:
            del self.state.cards[path]
            self._notify(Update(UpdateKind.CARDS, path))

    async def _card_closed(self, _bus: MessageBus, message: Message) -> None:
        path, reason = message.body
        self.state.cards.pop(path, None)
        self._notify(Update(UpdateKind.CLOSED, path, _enum(CloseReason, reason)))

    async def _slots_available(self, _bus: MessageBus, message: Message) -> None:
        path = message.body[0]
        for waiter in list(self._slot_waiters.pop(path, [])):
            if not waiter.done():
                waiter.set_result(None)
        self._notify(Update(UpdateKind.SLOTS, path))

    async def _properties_changed(self, bus: MessageBus, message: Message) -> None:
        path = message.path or ""
        interface, changed, invalidated = message.body
        if path == ROOT_PATH and interface == MANAGER_INTERFACE:
            self._manager(changed)
            self._notify(Update(UpdateKind.MANAGER))
            return
        card = self.state.cards.get(path)
        if interface != CARD_INTERFACE or card is None:
            return
        card = card.merged(changed)
        if invalidated:
            card = await self._reread(bus, card)
        if path in self.state.cards:  # not removed while we read it
            self.state.cards[path] = card
            self._notify(Update(UpdateKind.CARDS, path))

    # -- calls --------------------------------------------------------------------------

    async def invoke_action(
        self, path: str, key: str, options: Mapping[str, Variant] | None = None
    ) -> None:
        """Carry out one of a card's actions (``InvokeAction``)."""
        message = _method(path, CARD_INTERFACE, "InvokeAction", "sa{sv}", key, dict(options or {}))
        await _call(self._bus, message)

    async def dismiss(self, path: str, reason: CloseReason = CloseReason.DISMISSED) -> None:
        """Remove a card (``Dismiss``): the driver dismissed it, or the screen timed it out."""
        await _call(self._bus, _method(path, CARD_INTERFACE, "Dismiss", "u", int(reason)))

    async def report_shown(self, path: str) -> None:
        """Tell the agent the driver saw a card (``ReportShown``, an impression)."""
        await _call(self._bus, _method(path, CARD_INTERFACE, "ReportShown"))

    async def booking_slots(self, path: str) -> list[BookingSlot]:
        """The slots offered for booking from a card (``GetBookingSlots``).

        Raises:
            HmiError: ``...Error.NotReady`` while the cloud has not answered (wait for
                :meth:`expect_slots`), ``...Error.NoBooking`` before ``book`` was invoked.
        """
        message = _method(ROOT_PATH, MANAGER_INTERFACE, "GetBookingSlots", "o", path)
        reply = await _call(self._bus, message)
        return [
            BookingSlot(slot_id, start / 1_000_000, _string(plain(extras.get("Dealer"))) or None)
            for slot_id, start, extras in reply.body[0]
        ]

    def expect_slots(self, path: str) -> asyncio.Future[None]:
        """A future that completes when ``SlotsAvailable`` arrives for ``path``.

        Make it before asking for the slots, so the signal cannot slip past.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._slot_waiters.setdefault(path, [])
        waiters.append(waiter)
        waiter.add_done_callback(lambda done: waiters.remove(done) if done in waiters else None)
        return waiter

    async def request_booking(self, path: str, slot_id: str) -> None:
        """Book the visit a card is about in ``slot_id`` (``RequestBooking``)."""
        message = _method(ROOT_PATH, MANAGER_INTERFACE, "RequestBooking", "os", path, slot_id)
        await _call(self._bus, message)

    async def set_locale(self, locale: str) -> None:
        """Switch the agent's display language (and keep it across reconnections)."""
        self.locale = locale
        value = Variant("s", locale)
        await _call(
            self._bus,
            _method(ROOT_PATH, PROPERTIES, "Set", "ssv", MANAGER_INTERFACE, "Locale", value),
        )
