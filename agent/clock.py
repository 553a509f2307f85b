"""Whether the head unit knows what time it is.

A head unit's real-time clock can be wrong until GNSS or the cloud sets it (a flat
backup battery, a factory default). Time-based decisions (an item due every 12 months,
a coupon valid until Sunday) must wait for a trusted clock, and every event says
whether its time was trusted.

Trust comes from an anchor: a trusted wall time received from GNSS or the cloud,
paired with the monotonic clock at that moment. The anchor is lost at reboot (the
monotonic clock restarts), but the last trusted time is kept: a system clock earlier
than that is known to be wrong.

Pure: the caller passes the system clock's readings in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

#: A GNSS or cloud time further than this from the running anchor replaces it.
RESYNC_THRESHOLD_S = 2.0


class TimeSource(StrEnum):
    """Where a trusted time came from."""

    GNSS = "gnss"
    CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class Now:
    """One reading of the clock.

    Attributes:
        wall: Seconds since the epoch: trusted time if ``trusted``, else the system
            clock (never earlier than the last trusted time).
        trusted: Whether ``wall`` comes from a trusted source.
        monotonic: The monotonic clock, for intervals.
    """

    wall: float
    trusted: bool
    monotonic: float


@dataclass(frozen=True, slots=True)
class ClockState:
    """What the agent knows about time; ``last_trusted`` survives restarts."""

    anchor_wall: float | None = None
    anchor_monotonic: float | None = None
    source: TimeSource | None = None
    last_trusted: float | None = None

    def read(self, system_wall: float, monotonic: float) -> Now:
        """The time now, from the system clock's readings."""
        if self.anchor_wall is not None and self.anchor_monotonic is not None:
            return Now(self.anchor_wall + (monotonic - self.anchor_monotonic), True, monotonic)
        wall = system_wall
        if self.last_trusted is not None and wall < self.last_trusted:
            wall = self.last_trusted  # known to be wrong: at least not before what we saw
        return Now(wall, False, monotonic)

    def set_trusted(self, wall: float, monotonic: float, source: TimeSource) -> ClockState:
        """Anchor the clock to a trusted time (GNSS fix, cloud time)."""
        if self.anchor_wall is not None and self.anchor_monotonic is not None:
            running = self.anchor_wall + (monotonic - self.anchor_monotonic)
            if abs(running - wall) < RESYNC_THRESHOLD_S:
                return self
        return replace(
            self,
            anchor_wall=wall,
            anchor_monotonic=monotonic,
            source=source,
            last_trusted=max(wall, self.last_trusted or wall),
        )

    def remember(self, now: Now) -> ClockState:
        """Raise the persisted high-water mark of trusted time."""
        if not now.trusted or (self.last_trusted is not None and now.wall <= self.last_trusted):
            return self
        return replace(self, last_trusted=now.wall)

    def after_restart(self) -> ClockState:
        """The state a new process starts from: the anchor is gone, the mark stays."""
        return ClockState(last_trusted=self.last_trusted)
