"""Whether the kernel says NTP keeps the system clock synchronised (``adjtimex``).

The answer makes the system clock one of the agent's trusted time sources (below the
cloud's time, above GNSS; docs/time.md). Read-only: ``adjtimex`` with no mode bits set
changes nothing. Where it cannot be asked (not Linux, no glibc), the answer is "no".
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

_log = logging.getLogger(__name__)

#: ``adjtimex`` returns this clock state when the clock is not synchronised.
_TIME_ERROR: Final = 5
#: ``timex.status`` bit: the clock is not synchronised.
_STA_UNSYNC: Final = 0x0040
#: A synchronised clock whose estimated maximum error (µs) is above this is not trusted.
MAX_ERROR_US: Final = 1_000_000


class _Timex(ctypes.Structure):
    """``struct timex`` (Linux, x86-64 and aarch64 layouts agree on these fields)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def system_clock_synchronised() -> bool:
    """Whether NTP (chrony, systemd-timesyncd, ntpd) keeps the system clock in step."""
    try:
        adjtimex = ctypes.CDLL("libc.so.6", use_errno=True).adjtimex
    except (OSError, AttributeError):
        return False
    timex = _Timex()
    state = adjtimex(ctypes.byref(timex))
    if state < 0:
        _log.debug("adjtimex failed (errno %d)", ctypes.get_errno())
        return False
    return (
        state != _TIME_ERROR
        and not timex.status & _STA_UNSYNC
        and 0 <= timex.maxerror <= MAX_ERROR_US
    )
