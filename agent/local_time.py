"""The car's local time: one time zone (an IANA name) for every text and every hour.

Times stay UTC instants everywhere; only what a person reads or what depends on the hour
of the day (quiet hours, time-of-day rules, birthdays, a booking's time in a card) is
local, in the car's one zone (``[vehicle] time_zone``; the D-Bus Manager's ``TimeZone``
property, so every HMI renders times the same way). The zone object comes from the
application (``zoneinfo``); the default is China Standard Time, fixed at UTC+8.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Final

#: The default zone when none is configured: the market's (Asia/Shanghai has no DST).
DEFAULT_ZONE: Final[tzinfo] = timezone(timedelta(hours=8), "Asia/Shanghai")
DEFAULT_ZONE_NAME: Final = "Asia/Shanghai"
_EPOCH_ORDINAL: Final = datetime(1970, 1, 1, tzinfo=UTC).toordinal()


def local(wall: float, zone: tzinfo) -> datetime:
    """The instant ``wall`` (seconds since the epoch) on the car's local clock."""
    return datetime.fromtimestamp(wall, zone)


def local_day(wall: float, zone: tzinfo) -> int:
    """The local calendar day of ``wall``, counted from 1970-01-01."""
    return local(wall, zone).toordinal() - _EPOCH_ORDINAL


def local_text(wall: float, zone: tzinfo) -> str:
    """``YYYY-MM-DD HH:MM`` in the car's zone: how cards write a time."""
    return local(wall, zone).strftime("%Y-%m-%d %H:%M")
