"""The names of the D-Bus API, version 1: bus name, object paths, interfaces, errors.

Versioned from the first release (the D-Bus API design guidelines): a future
incompatible API is ``org.touchpoint.Agent2``, served next to this one.
"""

from __future__ import annotations

import math
from typing import Any, Final

from dbus_fast import BusType

BUS_NAME: Final = "org.touchpoint.Agent1"
ROOT_PATH: Final = "/org/touchpoint/Agent1"
CARDS_PATH: Final = f"{ROOT_PATH}/cards"

CARD_INTERFACE: Final = "org.touchpoint.Agent1.Card"
MANAGER_INTERFACE: Final = "org.touchpoint.Agent1.Manager"
CONSENT_INTERFACE: Final = "org.touchpoint.Agent1.Consent"
OBJECT_MANAGER: Final = "org.freedesktop.DBus.ObjectManager"

#: The API version this bridge serves (the ``Version`` property says more).
API_VERSION: Final = 1

ERROR_PREFIX: Final = "org.touchpoint.Agent1.Error"
ERROR_UNKNOWN_CARD: Final = f"{ERROR_PREFIX}.UnknownCard"
ERROR_NOT_VISIBLE: Final = f"{ERROR_PREFIX}.NotVisible"
ERROR_UNKNOWN_ACTION: Final = f"{ERROR_PREFIX}.UnknownAction"
ERROR_NO_BOOKING: Final = f"{ERROR_PREFIX}.NoBooking"
ERROR_NO_SUCH_SLOT: Final = f"{ERROR_PREFIX}.NoSuchSlot"
ERROR_NOT_READY: Final = f"{ERROR_PREFIX}.NotReady"
ERROR_ALREADY_REQUESTED: Final = f"{ERROR_PREFIX}.AlreadyRequested"
ERROR_FAILED: Final = f"{ERROR_PREFIX}.Failed"
#: The call was taken, but the store refuses commits for now (a full disk): it is saved
#: once the store takes commits again.
ERROR_NOT_SAVED: Final = f"{ERROR_PREFIX}.NotSaved"
ERROR_INVALID_ARGS: Final = "org.freedesktop.DBus.Error.InvalidArgs"

#: Longest string and largest dictionary a caller may pass (a guard, not a feature).
#: Card properties that may carry personal data: never sent in a broadcast signal.
PRIVATE: Final = frozenset({"Title", "Body", "TemplateArgs", "Note"})

MAX_STRING: Final = 256
MAX_OPTIONS: Final = 16


#: The range of a D-Bus ``x`` (int64), in which times go out as microseconds.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def micros(seconds: float | None) -> int:
    """``seconds`` as whole microseconds for the bus (0 for none), clamped to an int64.

    A time too far out for an int64 (about 292,000 years) would fail to marshal and
    fail every call that returns it, stored or not: it goes out as the largest value.
    """
    if seconds is None or math.isnan(seconds):
        return 0
    if math.isinf(seconds):
        return INT64_MAX if seconds > 0 else INT64_MIN
    return max(INT64_MIN, min(INT64_MAX, round(seconds * 1_000_000)))


def card_path(card_id: str) -> str:
    """The object path of a card (its UUID without dashes)."""
    return f"{CARDS_PATH}/c{card_id.replace('-', '')}"


def card_id_from_path(path: str) -> str | None:
    """The card id an object path names, or ``None`` if it names no card."""
    prefix = f"{CARDS_PATH}/c"
    if not path.startswith(prefix):
        return None
    hex_id = path[len(prefix) :]
    if len(hex_id) != 32 or any(c not in "0123456789abcdef" for c in hex_id):
        return None
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"


def bus_arguments(address: str) -> dict[str, Any]:
    """``MessageBus`` keyword arguments for ``"system"``, ``"session"`` or a D-Bus address."""
    if address in ("system", "session"):
        return {"bus_type": BusType.SYSTEM if address == "system" else BusType.SESSION}
    return {"bus_address": address}
