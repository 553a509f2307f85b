"""The agent's settings: the car, the store, the card policy, consent at first start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.consent import Category

DEFAULT_STATE_DIR: Final = Path("/var/lib/touchpoint")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VehicleSettings(_Section):
    """What car this is."""

    id: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_-]{1,64}$",
            description="The provisioned device identity (not the VIN): the prefix of the "
            "car's MQTT topics and the common name of its certificate. `cloud` is reserved "
            "for the backend.",
        ),
    ] = "dev-vehicle"
    model: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            description="The car model, matched against a card rule's `targeting.models`.",
        ),
    ] = "touchpoint-ref"
    market: Annotated[
        str,
        Field(
            min_length=2,
            max_length=8,
            description="The market the car is sold in, matched against a card rule's "
            "`targeting.markets`.",
        ),
    ] = "CN"

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "cloud":
            raise ValueError("'cloud' is the backend's identity, not a vehicle's")
        return value


class StoreSettings(_Section):
    """The SQLite store."""

    path: Annotated[
        Path,
        Field(
            description="The database file (WAL mode: its `-wal` and `-shm` files sit beside it)."
        ),
    ] = DEFAULT_STATE_DIR / "touchpoint.db"
    max_events: Annotated[
        int,
        Field(
            ge=100,
            description="Outbox budget in events: beyond it the lowest-priority, oldest events "
            "are evicted (the driver's requests never are).",
        ),
    ] = 100_000
    max_bytes: Annotated[
        int,
        Field(ge=1024 * 1024, description="Outbox budget in bytes, evicting the same way."),
    ] = 64 * 1024 * 1024


class PolicySettings(_Section):
    """The card policy."""

    max_visible: Annotated[
        int, Field(ge=1, le=10, description="Cards on screen at once, at most.")
    ] = 3
    quiet_hours: Annotated[
        tuple[Annotated[int, Field(ge=0, le=23)], Annotated[int, Field(ge=0, le=23)]] | None,
        Field(
            description="Local hours `[start, end)` in which only critical cards appear "
            "(`[22, 7]` spans midnight)."
        ),
    ] = (22, 7)


class RequestSettings(_Section):
    """The driver's requests to the cloud (booking slots, a booking, a redemption)."""

    timeout_s: Annotated[
        float,
        Field(
            ge=5,
            le=3600,
            description="A request with no answer after this many seconds ends on its card as "
            "unanswered (the dealer or partner could not be reached), with a retry; an "
            "answer that comes later is still taken.",
        ),
    ] = 120.0


class TimeSettings(_Section):
    """Where the car's time comes from, and how it is told (docs/time.md)."""

    zone: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            description="The car's time zone, an IANA name (`Asia/Shanghai`, "
            "`Europe/Berlin`): quiet hours, time-of-day rules, birthdays and the times "
            "written in cards use it, and HMIs read it from the D-Bus Manager's `TimeZone`.",
        ),
    ] = "Asia/Shanghai"
    trust_ntp: Annotated[
        bool,
        Field(
            description="Take the system clock as a trusted source while the kernel says NTP "
            "keeps it synchronised (the cloud's time and GNSS with a fix are the others)."
        ),
    ] = True
    max_disagreement_s: Annotated[
        float,
        Field(
            gt=0,
            description="`touchpoint doctor` fails when the trusted time and the system clock "
            "disagree by more than this many seconds.",
        ),
    ] = 300.0

    @field_validator("zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"not a time zone this system knows: {value!r}") from err
        return value


class ConsentSettings(_Section):
    """Consent granted at the very first start (before the driver has chosen)."""

    defaults: Annotated[
        dict[Category, bool],
        Field(
            description="Category = granted, applied at the first start (a store with no consent "
            "yet); the driver's later choices win. Absent categories stay refused; "
            "`service_requests` needs no consent and is ignored here."
        ),
    ] = {}
