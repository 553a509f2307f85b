"""The time sources: what each one last said against the system clock, and NTP now.

The daemon keeps each source's last reading with its state (docs/time.md): when it was
taken by the system clock, and how far the source was from it. The doctor shows them
and fails when the trusted time and the system clock disagreed by more than
``[time] max_disagreement_s``: whatever reads the system clock directly (logs, the
HMI's own clock, TLS in other programs) is that far off.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from typing import Final

from agent.settings import TimeSettings
from agent.store.readonly import read_section
from touchpoint.doctor.report import Check, fail, ok, warn
from touchpoint.ntp import system_clock_synchronised

#: The sources, best first (agent.clock.TimeSource's labels).
SOURCES: Final = ("cloud", "ntp", "gnss")


def clock_sources_check(
    connection: sqlite3.Connection, now: float, settings: TimeSettings
) -> Check:
    """``clock.sources``: each source's last reading, their agreement, NTP now."""
    found = None
    with contextlib.suppress(ValueError):  # the clock check says so
        found = read_section(connection, "clock")
    data = found[0] if found and isinstance(found[0], dict) else {}
    raw = data.get("readings")
    readings = raw if isinstance(raw, dict) else {}
    ntp = "synchronised" if system_clock_synchronised() else "not synchronised"
    seen: list[tuple[str, float, float]] = []
    for source in SOURCES:
        pair = readings.get(source)
        if (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int | float) and math.isfinite(v) for v in pair)
        ):
            seen.append((source, float(pair[0]), float(pair[1])))
    if not seen:
        return warn(
            "clock.sources",
            f"no time source has been heard yet (NTP now: {ntp})",
            "let the car reach the cloud once (it asks the time), get a GNSS fix, or run NTP",
        )
    parts = [f"{s} {_ago(now - at)} ago: {offset:+.1f} s from the system clock"
             for s, at, offset in seen]  # fmt: skip
    described = "; ".join(parts) + f"; NTP now: {ntp}"
    best, _, offset = seen[0]
    if abs(offset) > settings.max_disagreement_s:
        return fail(
            "clock.sources",
            f"the system clock was {offset:+.0f} s off the {best} time: {described}",
            "set the system clock (enable NTP, or let the daemon's cloud time set it); "
            f"the limit is [time] max_disagreement_s = {settings.max_disagreement_s:.0f}",
        )
    return ok("clock.sources", described)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0.0, seconds):.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"
