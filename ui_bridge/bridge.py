"""The D-Bus bridge: the agent's cards as D-Bus objects, the HMI's calls as agent inputs.

It is a card sink of the daemon: told of visibility changes after they are durable, it
exports a card object when a card appears (``InterfacesAdded`` from the object
manager's path, public properties only), updates it in place (``PropertiesChanged``),
and removes it (``CardClosed`` with the reason, then ``InterfacesRemoved``). Method
calls from the HMI go through the daemon (``Daemon.apply``), so they are committed
before they return; the agent's refusals come back as D-Bus errors.

The connection is an :class:`~ui_bridge.bus.AgentBus`: the bridge emits
``InterfacesAdded``/``InterfacesRemoved`` itself, a full socket makes the writer wait
rather than drop the connection, and what one peer can make the daemon hold is bounded
(:mod:`ui_bridge.limits`: calls in flight, consent changes a minute), refusals counted.

If the bus goes away (a restart of the dbus-daemon), the bridge reconnects with a
back-off and exports everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from dbus_fast import DBusError, Message, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag

from agent.cards import (
    ACTION_KEYS,
    LOCALES,
    MOVING_ACTIONS_MAX,
    MOVING_TITLE_MAX,
    Card,
    CardChange,
    ChangeType,
    CloseReason,
)
from agent.consent import CONSENTABLE, MAX_VALIDITY_S, PURPOSES, Category
from agent.errors import ActionError, StoreError
from agent.ports import CardBoard
from touchpoint.errors import TouchpointError
from touchpoint.tasks import Supervisor, beat, idle
from touchpoint.version import package_version
from ui_bridge.bus import LIMITS_EXCEEDED, AgentBus, caller
from ui_bridge.card_object import CardObject
from ui_bridge.errors import BridgeError
from ui_bridge.limits import PeerLimits
from ui_bridge.manager import ConsentInterface, ManagerInterface
from ui_bridge.names import (
    API_VERSION,
    BUS_NAME,
    ERROR_FAILED,
    ERROR_INVALID_ARGS,
    ERROR_NOT_READY,
    ERROR_NOT_SAVED,
    ERROR_PREFIX,
    ERROR_UNKNOWN_CARD,
    OBJECT_MANAGER,
    ROOT_PATH,
    bus_arguments,
    card_id_from_path,
    card_path,
    micros,
)

_log = logging.getLogger(__name__)

RECONNECT_MIN_S: Final = 0.5
RECONNECT_MAX_S: Final = 10.0
#: How often the log says that calls are taken but not saved yet (seconds).
NOT_SAVED_LOG_S: Final = 60.0


class DbusBridge:
    """Serves the agent on D-Bus as ``org.touchpoint.Agent1``.

    Args:
        host: The agent's cards and inputs.
        address: ``"system"``, ``"session"``, or a D-Bus address (``unix:path=...``).
        locale: The initial display language.
        monotonic: The clock of the per-peer consent rate.
    """

    def __init__(
        self,
        host: CardBoard,
        address: str = "system",
        locale: str = "zh-CN",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._address = address
        self.locale = locale if locale in LOCALES else LOCALES[0]
        self.version = f"{API_VERSION} (touchpoint {package_version()})"
        self._bus: AgentBus | None = None
        #: What one peer may make the daemon hold (kept across reconnections).
        self.limits = PeerLimits(clock=monotonic)
        self._objects: dict[str, CardObject] = {}
        self._manager = ManagerInterface(self)
        self._consent = ConsentInterface(self)
        self._restricted: bool | None = None
        self._waiting = 0
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self.reconnects = 0
        #: Calls answered "not saved yet" (the store refused commits), and when that was
        #: last logged: once a minute, not once per tap.
        self.not_saved = 0
        self._not_saved_logged = -math.inf
        self._clock = monotonic
        #: Runs the connection watch (restarted if it crashes).
        self.supervisor = Supervisor()

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, take the bus name, export the manager and the visible cards.

        If the bus cannot be reached or the name is taken, the failure is logged and the
        bridge keeps trying in the background: the agent serves on regardless.
        """
        try:
            await self._connect()
        except BridgeError as err:
            _log.error("D-Bus: %s; retrying in the background", err)
        self._watch = self.supervisor.start("dbus watch", self._watch_connection)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    @property
    def connected(self) -> bool:
        """Whether the bridge serves on the bus now."""
        return self._bus is not None

    async def _connect(self) -> None:
        try:
            bus = await AgentBus(self.limits, **bus_arguments(self._address)).connect()
        except (OSError, DBusError, ValueError) as err:
            raise BridgeError(f"cannot connect to the {self._address} bus: {err}") from err
        bus.export(ROOT_PATH, self._manager)
        bus.export(ROOT_PATH, self._consent)
        try:
            reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except DBusError as err:
            bus.disconnect()
            raise BridgeError(f"not allowed to own {BUS_NAME}: {err.text}") from err
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise BridgeError(f"{BUS_NAME} is owned by another process ({reply.name})")
        self._bus = bus
        self._objects.clear()
        for card in self._host.shown:
            self._add(card)
        self._restricted = self.driving_restricted()
        self._waiting = self._host.waiting
        _log.info("serving %s on the %s bus", BUS_NAME, self._address)

    async def _watch_connection(self) -> None:
        delay = RECONNECT_MIN_S
        while not self._stopping:
            beat()
            bus = self._bus
            if bus is not None:
                with idle():
                    cause = await _disconnected(bus)
                if self.stopping:
                    return
                _log.warning("the D-Bus connection was lost (%s); reconnecting", cause)
                self._bus = None
                bus.disconnect()  # closes the socket if the peer's end went first
            try:
                await self._connect()
            except BridgeError as err:
                _log.warning("D-Bus reconnect failed (%s); retrying in %.1f s", err, delay)
                with idle():
                    await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            self.reconnects += 1
            delay = RECONNECT_MIN_S

    def stats(self) -> dict[str, int]:
        """The bridge's counters (the health file's ``dbus``)."""
        counters = self.limits.counters
        bus = self._bus
        return {
            "reconnects": self.reconnects,
            "calls_in_flight": self.limits.calls_in_flight,
            "peak_calls_in_flight": counters.peak_calls_in_flight,
            "calls_refused": counters.calls_refused,
            "consent_changes_refused": counters.consent_changes_refused,
            "socket_full_waits": bus.socket_full if bus is not None else 0,
            "messages_queued": bus.queued if bus is not None else 0,
            "peak_messages_queued": bus.peak_queued if bus is not None else 0,
        }

    async def stop(self) -> None:
        """Release the name and disconnect."""
        self._stopping = True
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    # -- the card sink ------------------------------------------------------------------

    async def apply(self, changes: Sequence[CardChange]) -> None:
        """Show durable card changes on the bus (and the driving restriction)."""
        if self._bus is None:
            return  # reconnecting: the cards are exported again once connected
        # An HMI must never see a parked-only card while told the car is moving: a
        # restriction is announced after the cards it withdraws are gone, its end
        # before the cards it lets back are added.
        restricted = self.driving_restricted()
        if not restricted:
            self._announce_restriction(restricted)
        for change in changes:
            if change.type is ChangeType.ADDED:
                self._add(change.card)
            elif change.type is ChangeType.UPDATED:
                self._update(change.card)
            else:
                self._remove(change.card, change.reason)
        if restricted:
            self._announce_restriction(restricted)
        waiting = self._host.waiting
        if waiting != self._waiting:
            self._waiting = waiting
            self._manager.announce_waiting(waiting)

    def _announce_restriction(self, restricted: bool) -> None:  # noqa: FBT001
        if restricted != self._restricted:
            self._restricted = restricted
            self._manager.announce_restriction(restricted)

    def _add(self, card: Card) -> None:
        bus = self._bus
        path = card_path(card.id)
        if bus is None or path in self._objects:
            return
        obj = CardObject(card, self)
        bus.export(path, obj)
        self._objects[path] = obj
        self._signal(
            OBJECT_MANAGER,
            "InterfacesAdded",
            "oa{sa{sv}}",
            [path, {obj.name: obj.public_properties()}],
        )

    def _update(self, card: Card) -> None:
        obj = self._objects.get(card_path(card.id))
        if obj is None:
            self._add(card)
            return
        was_pending = obj.card.pending
        obj.update(card)
        if was_pending and not card.pending and self._slots_known(card):
            self._manager.SlotsAvailable(card_path(card.id))

    def _remove(self, card: Card, reason: CloseReason) -> None:
        path = card_path(card.id)
        obj = self._objects.pop(path, None)
        bus = self._bus
        if obj is None or bus is None:
            return
        self._manager.CardClosed(path, int(reason))
        bus.unexport(path, obj)
        self._signal(OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, [obj.name]])

    def _signal(self, interface: str, member: str, signature: str, body: list[Any]) -> None:
        if self._bus is not None:
            self._bus.send(Message.new_signal(ROOT_PATH, interface, member, signature, body))

    # -- backends of the interfaces -----------------------------------------------------

    @property
    def time_zone(self) -> str:
        """The car's time zone (the Manager's ``TimeZone``)."""
        return self._host.time_zone

    @property
    def waiting(self) -> int:
        """Cards held back by the limit (the Manager's ``Waiting``)."""
        return self._host.waiting

    def driving_restricted(self) -> bool:
        """Whether the driver-distraction restrictions apply, as far as committed."""
        return self._host.driving

    def set_locale(self, locale: str) -> None:
        """Switch the display language; every card's texts change with it."""
        if locale == self.locale:
            return
        self.locale = locale
        for obj in self._objects.values():
            obj.update()
        self._manager.announce_locale(locale)

    def capabilities(self) -> dict[str, Variant]:
        """What this agent can do, for the HMI to adapt to."""
        return {
            "ApiVersion": Variant("u", API_VERSION),
            "Locales": Variant("as", list(LOCALES)),
            "MaxVisible": Variant("u", self._host.max_visible),
            "MovingTitleMax": Variant("u", MOVING_TITLE_MAX),
            "MovingActionsMax": Variant("u", MOVING_ACTIONS_MAX),
            "Actions": Variant("as", sorted(ACTION_KEYS)),
            "CloseReasons": Variant("a{us}", {int(r): r.name.lower() for r in CloseReason if r}),
        }

    async def invoke_action(self, card_id: str, key: str, options: Mapping[str, Any]) -> None:
        """The HMI's ``InvokeAction``."""
        plain = {k: v.value if isinstance(v, Variant) else v for k, v in options.items()}
        await self._run(self._host.invoke_action(card_id, key, plain))

    async def dismiss(self, card_id: str, reason: CloseReason) -> None:
        """The HMI's ``Dismiss``."""
        _log.debug("dismiss %s (%s)", card_id, reason.name)
        await self._run(self._host.dismiss(card_id, reason))

    async def report_shown(self, card_id: str) -> None:
        """The HMI's ``ReportShown``."""
        await self._run(self._host.report_shown(card_id))

    async def booking_slots(self, path: str) -> list[tuple[str, int, dict[str, Variant]]]:
        """``GetBookingSlots``: the slots, or NotReady at once (``SlotsAvailable`` follows).

        It never holds the call open waiting for the cloud: an HMI that calls D-Bus
        synchronously would freeze meanwhile.
        """
        card_id = self._card_id(path)
        try:
            slots = self._host.booking_slots(card_id)
        except ActionError as err:
            raise DBusError(f"{ERROR_PREFIX}.{err.code}", str(err)) from err
        if slots is None:
            raise DBusError(ERROR_NOT_READY, "the dealer's slots have not arrived yet")
        return [
            (s.id, round(s.start * 1_000_000),
             {"Dealer": Variant("s", s.dealer.get(self.locale))} if s.dealer else {})
            for s in slots
        ]  # fmt: skip

    async def request_booking(self, path: str, slot_id: str) -> None:
        """``RequestBooking``."""
        card_id = self._card_id(path)
        await self._run(self._host.request_booking(card_id, slot_id))

    def consents(self) -> list[tuple[str, str, bool, int, int]]:
        """The Consent interface's ``Categories``."""
        grants = self._host.consents()
        rows = []
        for category in CONSENTABLE:
            grant = grants.get(category)
            granted = grant is not None and grant.granted
            rows.append((
                category.value, PURPOSES[category], granted,
                micros(grant.granted_at) if grant else 0,
                micros(grant.expires_at) if grant else 0,
            ))  # fmt: skip
        return rows

    async def set_consent(self, category: str, *, granted: bool, valid_for_s: int) -> None:
        """``SetConsent``."""
        try:
            chosen = Category(category)
        except ValueError as err:
            known = ", ".join(c.value for c in CONSENTABLE)
            raise DBusError(ERROR_INVALID_ARGS, f"unknown category {category!r} ({known})") from err
        if not 0 <= valid_for_s <= MAX_VALIDITY_S:
            raise DBusError(
                ERROR_INVALID_ARGS,
                f"valid_for_s must be 0 (without end) to {MAX_VALIDITY_S} (10 years)",
            )
        wait = self.limits.admit_consent_change(caller())
        if wait is not None:
            raise DBusError(
                LIMITS_EXCEEDED,
                f"too many consent changes (at most {self.limits.consent_per_minute} a minute "
                f"per connection): try again in {wait:.0f} s",
            )
        valid_for = float(valid_for_s) if valid_for_s else None
        try:
            await self._run(self._host.set_consent(chosen, granted=granted, valid_for=valid_for))
        except ValueError as err:
            raise DBusError(ERROR_INVALID_ARGS, str(err)) from err
        self._consent.announce()

    async def wipe(self, *, owner_change: bool) -> None:
        """``DeleteMyData`` / ``ResetForNewOwner``."""
        await self._host.wipe(owner_change=owner_change)
        self._consent.announce()

    # -- helpers ------------------------------------------------------------------------

    def _card_id(self, path: str) -> str:
        card_id = card_id_from_path(path)
        if card_id is None:
            raise DBusError(ERROR_UNKNOWN_CARD, f"not a card object path: {path}")
        return card_id

    def _slots_known(self, card: Card) -> bool:
        try:
            return self._host.booking_slots(card.id) is not None
        except ActionError:
            return False

    async def _run(self, call: Awaitable[None]) -> None:
        try:
            await call
        except ActionError as err:
            raise DBusError(f"{ERROR_PREFIX}.{err.code}", str(err)) from err
        except DBusError:
            raise
        except StoreError as err:
            # The agent took the call; its store refuses commits (a full disk) and will
            # have it once it takes them again. An expected state, not a bug: no trace.
            self.not_saved += 1
            now = self._clock()
            if now - self._not_saved_logged >= NOT_SAVED_LOG_S:
                self._not_saved_logged = now
                _log.warning("D-Bus calls taken but not saved yet (%d so far): %s",
                             self.not_saved, err)  # fmt: skip
            raise DBusError(ERROR_NOT_SAVED, str(err)) from err
        except TouchpointError as err:
            _log.exception("a D-Bus call failed")
            raise DBusError(ERROR_FAILED, str(err)) from err


async def _disconnected(bus: MessageBus) -> str:
    """Wait for ``bus`` to go; say why (dbus-fast raises the reader's error, e.g. EOF)."""
    try:
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    except Exception as err:  # noqa: BLE001 - any reader error means the same: it is gone
        return f"{type(err).__name__}: {err}".rstrip(": ")
    return "disconnected"
