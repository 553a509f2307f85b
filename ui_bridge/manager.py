"""The Manager and Consent interfaces, on ``/org/touchpoint/Agent1``.

Manager: the driving restriction, the locale (settable by the HMI), the version and
capabilities, and booking (slots and requests). Consent: the categories for a settings
app, with their own bus policy, and the privacy wipes.
"""

# No "from __future__ import annotations": dbus-fast reads these annotations at class
# creation, and a postponed "None" would not read as an empty D-Bus signature.

from typing import Annotated, Protocol

from dbus_fast import DBusError, Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusInt64,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from agent.cards import LOCALES
from ui_bridge.names import CONSENT_INTERFACE, ERROR_INVALID_ARGS, MANAGER_INTERFACE, MAX_STRING

DBusSlots = Annotated[list[tuple[str, int, dict[str, Variant]]], DBusSignature("a(sxa{sv})")]
DBusPathReason = Annotated[tuple[str, int], DBusSignature("ou")]
DBusConsents = Annotated[list[tuple[str, str, bool, int, int]], DBusSignature("a(ssbxx)")]


class ManagerBackend(Protocol):
    """What the Manager interface asks of the bridge."""

    locale: str
    version: str

    @property
    def waiting(self) -> int:
        """Cards held back by the limit."""

    @property
    def time_zone(self) -> str:
        """The car's time zone, an IANA name."""

    def driving_restricted(self) -> bool:
        """Whether the driver-distraction restrictions apply now."""

    def set_locale(self, locale: str) -> None:
        """The HMI changed the display language."""

    def capabilities(self) -> dict[str, Variant]:
        """What this agent can do."""

    async def booking_slots(self, card_path: str) -> list[tuple[str, int, dict[str, Variant]]]:
        """Slots for booking from a card, or NotReady at once (``SlotsAvailable`` follows)."""

    async def request_booking(self, card_path: str, slot_id: str) -> None:
        """The driver picked a slot."""


class ConsentBackend(Protocol):
    """What the Consent interface asks of the bridge."""

    locale: str

    def consents(self) -> list[tuple[str, str, bool, int, int]]:
        """``(category, purpose, granted, granted_at µs, expires_at µs)`` for each category."""

    async def set_consent(self, category: str, *, granted: bool, valid_for_s: int) -> None:
        """The driver changed a consent."""

    async def wipe(self, *, owner_change: bool) -> None:
        """Delete the driver's data (or everything personal, for a new owner)."""


class ManagerInterface(ServiceInterface):
    """``org.touchpoint.Agent1.Manager``."""

    def __init__(self, backend: ManagerBackend) -> None:
        super().__init__(MANAGER_INTERFACE)
        self._backend = backend

    @dbus_property(access=PropertyAccess.READ)
    def DrivingRestricted(self) -> DBusBool:  # noqa: N802 - D-Bus names
        """True while the car is not parked: only critical fault cards are shown."""
        return self._backend.driving_restricted()

    @dbus_property(access=PropertyAccess.READWRITE)
    def Locale(self) -> DBusStr:  # noqa: N802
        """The display language of titles, bodies and labels: ``zh-CN`` or ``en``."""
        return self._backend.locale

    @Locale.setter  # type: ignore[no-redef]
    def Locale(self, value: DBusStr) -> None:  # noqa: N802
        if value not in LOCALES:
            raise DBusError(ERROR_INVALID_ARGS, f"locale must be one of {', '.join(LOCALES)}")
        self._backend.set_locale(value)

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:  # noqa: N802
        """The API version and the software version, e.g. ``1 (touchpoint 0.1.0)``."""
        return self._backend.version

    @dbus_property(access=PropertyAccess.READ)
    def Waiting(self) -> DBusUInt32:  # noqa: N802
        """Cards that would be on screen but for the limit on cards at once (MaxVisible).

        The most important cards are the ones shown; an HMI can say that more wait.
        """
        return self._backend.waiting

    @dbus_property(access=PropertyAccess.READ)
    def TimeZone(self) -> DBusStr:  # noqa: N802
        """The car's time zone, an IANA name (``Asia/Shanghai``): render every time in it.

        Times on the bus are UTC instants (microseconds since the epoch); an HMI that
        renders them in its own system zone could disagree with the cards' texts.
        """
        return self._backend.time_zone

    @dbus_method()
    def GetCapabilities(self) -> DBusDict:  # noqa: N802
        """Locales, limits of the driving restrictions, actions and close reasons."""
        return self._backend.capabilities()

    @dbus_method()
    async def GetBookingSlots(self, card: DBusObjectPath) -> DBusSlots:  # noqa: N802
        """``(slot id, start µs since the epoch, extras)`` for booking from ``card``."""
        return await self._backend.booking_slots(card)

    @dbus_method()
    async def RequestBooking(self, card: DBusObjectPath, slot_id: DBusStr) -> None:  # noqa: N802
        """Book the visit ``card`` is about in the slot ``slot_id``."""
        if len(slot_id) > MAX_STRING:
            raise DBusError(ERROR_INVALID_ARGS, "slot id too long")
        await self._backend.request_booking(card, slot_id)

    @dbus_signal()
    def CardClosed(self, card: DBusObjectPath, reason: DBusUInt32) -> DBusPathReason:  # noqa: N802
        """A card leaves the screen, and why (numbered like freedesktop notifications).

        For good, except 5 (withdrawn while driving) and 8 (snoozed): such a card comes
        back later as a new ``InterfacesAdded``.
        """
        return (card, reason)

    @dbus_signal()
    def SlotsAvailable(self, card: DBusObjectPath) -> DBusObjectPath:  # noqa: N802
        """The cloud answered: ``GetBookingSlots(card)`` now returns the slots."""
        return card

    def announce_restriction(self, restricted: bool) -> None:  # noqa: FBT001
        """``PropertiesChanged`` for DrivingRestricted."""
        self.emit_properties_changed({"DrivingRestricted": restricted})

    def announce_waiting(self, waiting: int) -> None:
        """``PropertiesChanged`` for Waiting."""
        self.emit_properties_changed({"Waiting": waiting})

    def announce_locale(self, locale: str) -> None:
        """``PropertiesChanged`` for Locale."""
        self.emit_properties_changed({"Locale": locale})


class ConsentInterface(ServiceInterface):
    """``org.touchpoint.Agent1.Consent``: for the settings app (its own bus policy)."""

    def __init__(self, backend: ConsentBackend) -> None:
        super().__init__(CONSENT_INTERFACE)
        self._backend = backend

    @dbus_method()
    def GetCategories(self) -> DBusConsents:  # noqa: N802
        """``(category, purpose, granted, granted_at µs, expires_at µs or 0)`` each.

        A method, not a property: ``Properties.Get`` is one bus-policy permission for
        every interface, so the HMI could read consent; a Consent method is the
        settings app's alone.
        """
        return self._backend.consents()

    @dbus_method()
    async def SetConsent(  # noqa: N802
        self, category: DBusStr, granted: DBusBool, valid_for_s: DBusInt64
    ) -> None:
        """Grant (for ``valid_for_s`` seconds, at most ten years; 0 without end) or withdraw.

        At most 20 a minute per connection (``LimitsExceeded`` beyond, see the bridge).
        """
        if valid_for_s < 0:
            raise DBusError(ERROR_INVALID_ARGS, "valid_for_s must be 0 or more")
        await self._backend.set_consent(category, granted=granted, valid_for_s=valid_for_s)

    @dbus_method()
    async def DeleteMyData(self) -> None:  # noqa: N802
        """Delete the driver's data in the car (cards, wallet, bookings, events to send)."""
        await self._backend.wipe(owner_change=False)

    @dbus_method()
    async def ResetForNewOwner(self) -> None:  # noqa: N802
        """Delete everything personal, consent included, for a new owner."""
        await self._backend.wipe(owner_change=True)

    @dbus_signal()
    def CategoriesChanged(self) -> None:  # noqa: N802
        """Consent changed (or was wiped): call ``GetCategories``. Never the values."""

    def announce(self) -> None:
        """``CategoriesChanged``: a driver's choices are theirs, not a broadcast's."""
        self.CategoriesChanged()
