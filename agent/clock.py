"""What time it is, as far as the car can know: one clock model for every decision.

A head unit's system clock can be wrong (a flat backup battery, a factory default, a
developer's faked clock) until something trustworthy sets it. The model (written down
in ``docs/time.md``):

- **Durations** within a run (timeouts, debounce, retries) use the monotonic clock.
- **Trusted time** comes from an anchor: a time a trusted source gave, paired with the
  monotonic clock at that moment; it then runs on the monotonic clock, so a system
  clock that jumps does not move it. Sources, best first: the cloud (a time exchange
  over the authenticated link), the system clock while NTP keeps it synchronised, GNSS
  with a fix. A better source replaces a worse one's anchor; a worse one never
  overrides a better one in the same run.
- **Plausibility**: no source's time is taken outside ``[EARLIEST, LATEST]`` (this
  build's release date; 40 years on), nor one that goes back before the last trusted
  time unless it comes from a source at least as good as the one that set that mark
  (the way back from a bad mark: the cloud can always correct it).
- **The floor** is the latest instant known to have passed: the trusted time when there
  is one; otherwise the last trusted time (persisted) plus the time this run has been
  up. Everything that *ends* by wall time (expiries, snoozes, cooldowns, the caps'
  rolling day, consent validity) ends against the floor, so an untrusted clock never
  expires anything early, whichever way it is wrong.
- **The wall time** stamped on events: the trusted time, else the system clock if it is
  plausible and not before the floor, else the floor; each event says whether its time
  was trusted. What the agent dates for itself (a card's expiry, a snooze, a consent's
  validity, a dismissal's cooldown) it dates by the floor, so that with an untrusted
  clock such a duration still runs exactly on the time the car has been up; once the
  clock is trusted, those dates move by the correction.

Pure: the caller passes the clocks' readings in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from types import MappingProxyType
from typing import Final

#: The earliest time any clock can say: this build's release (2026-01-01 UTC). A clock
#: before it is wrong, and no certificate or deadline is judged against anything earlier.
EARLIEST: Final = 1_767_225_600.0
#: No time after this is plausible (40 years after the release): a GNSS receiver's
#: all-ones "no time" (2106) is not a time.
LATEST: Final = EARLIEST + 40 * 365.25 * 86_400
#: A trusted source further than this from the running anchor replaces it.
RESYNC_THRESHOLD_S: Final = 2.0
#: A source may go back this far before the last trusted time (clock jitter).
BACKWARDS_TOLERANCE_S: Final = 2.0


class TimeSource(IntEnum):
    """Where a trusted time came from; a higher value is a better source."""

    NONE = 0
    GNSS = 1
    NTP = 2
    CLOUD = 3

    @property
    def label(self) -> str:
        """The source's name in events, logs and the doctor."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Now:
    """One reading of the clock.

    Attributes:
        wall: Seconds since the epoch: the trusted time if ``trusted``, else the best
            estimate (the system clock if plausible, never before ``floor``).
        trusted: Whether ``wall`` comes from a trusted source.
        monotonic: The monotonic clock, for durations within a run.
        floor: The latest instant known to have passed (``wall`` when trusted): what
            every expiry is judged against.
    """

    wall: float
    trusted: bool
    monotonic: float
    floor: float = 0.0


@dataclass(frozen=True, slots=True)
class Rejection:
    """A source's time that was not taken, and why (for the log and the doctor)."""

    source: TimeSource
    wall: float
    reason: str
    #: Whether a better source's time simply wins (normal), rather than the time being
    #: impossible (a fault to look into).
    outranked: bool = False


@dataclass(frozen=True, slots=True)
class ClockState:
    """What the agent knows about time.

    ``last_trusted`` and ``last_source`` survive restarts; the anchor and the start of
    this run do not (the monotonic clock restarts with the machine).
    """

    anchor_wall: float | None = None
    anchor_monotonic: float | None = None
    source: TimeSource = TimeSource.NONE
    last_trusted: float | None = None
    #: The source that set ``last_trusted``: only one as good can move it back.
    last_source: TimeSource = TimeSource.NONE
    #: The monotonic clock when this run began (for the untrusted floor).
    started_monotonic: float | None = None
    #: Each source's last reading, by its label: the system clock then, and how far the
    #: source was from it (source minus system), for ``touchpoint doctor``.
    readings: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def trusted(self) -> bool:
        """Whether a trusted source anchored the clock in this run."""
        return self.anchor_wall is not None

    def read(self, system_wall: float, monotonic: float) -> Now:
        """The time now, from the system clock's and the monotonic clock's readings."""
        if self.anchor_wall is not None and self.anchor_monotonic is not None:
            wall = self.anchor_wall + (monotonic - self.anchor_monotonic)
            return Now(wall, True, monotonic, wall)
        floor = self.floor(monotonic)
        wall = system_wall if floor <= system_wall <= LATEST else floor
        return Now(wall, False, monotonic, floor)

    def floor(self, monotonic: float) -> float:
        """The latest instant known to have passed, without a trusted anchor."""
        base = max(self.last_trusted or EARLIEST, EARLIEST)
        started = self.started_monotonic
        up = 0.0 if started is None else max(0.0, monotonic - started)
        return base + up

    def check(self, wall: float, source: TimeSource) -> str | None:
        """Why ``wall`` from ``source`` is not taken, or ``None`` when it is plausible."""
        if not EARLIEST <= wall <= LATEST:
            return "outside the plausible range"
        mark = self.last_trusted
        if mark is not None and wall < mark - BACKWARDS_TOLERANCE_S and source < self.last_source:
            return (
                f"earlier than the last trusted time, which a better source "
                f"({self.last_source.label}) set"
            )
        return None

    def set_trusted(
        self, wall: float, monotonic: float, source: TimeSource
    ) -> ClockState | Rejection:
        """Anchor the clock to a source's time, if the source may and the time is plausible.

        Returns:
            The new state (the same one when nothing changes), or why the time was not
            taken.
        """
        why = self.check(wall, source)
        if why is not None:
            return Rejection(source, wall, why)
        if self.anchor_wall is not None and self.anchor_monotonic is not None:
            running = self.anchor_wall + (monotonic - self.anchor_monotonic)
            if source < self.source:
                if abs(running - wall) >= RESYNC_THRESHOLD_S:
                    return Rejection(
                        source,
                        wall,
                        f"{running - wall:+.0f} s from the {self.source.label} time in effect",
                        outranked=True,
                    )
                return self
            if abs(running - wall) < RESYNC_THRESHOLD_S and source == self.source:
                return self
        mark = self.last_trusted
        if mark is not None and wall < mark and source < self.last_source:
            # Within the tolerance of a better source's mark: keep that mark.
            mark_wall, mark_source = mark, self.last_source
        else:
            mark_wall, mark_source = wall, source
        return replace(
            self,
            anchor_wall=wall,
            anchor_monotonic=monotonic,
            source=source,
            last_trusted=mark_wall,
            last_source=mark_source,
        )

    def noted(self, source: TimeSource, system_wall: float, wall: float) -> ClockState:
        """The state with ``source``'s reading recorded (against the system clock then)."""
        readings = dict(self.readings)
        readings[source.label] = (system_wall, wall - system_wall)
        return replace(self, readings=MappingProxyType(readings))

    def remember(self, now: Now) -> ClockState:
        """Raise the persisted high-water mark of trusted time."""
        if not now.trusted or (self.last_trusted is not None and now.wall <= self.last_trusted):
            return self
        return replace(self, last_trusted=now.wall, last_source=self.source)

    def after_restart(self, monotonic: float | None = None) -> ClockState:
        """The state a new run starts from: the anchor is gone, the mark stays."""
        mark = self.last_trusted
        if mark is not None and not EARLIEST <= mark <= LATEST:
            mark = None  # a mark no source could have set: corruption, or an old bug
        return ClockState(
            last_trusted=mark,
            last_source=self.last_source if mark is not None else TimeSource.NONE,
            started_monotonic=monotonic,
            readings=self.readings,
        )

    def started(self, monotonic: float) -> ClockState:
        """The state with this run's start set (at the first reading), if it was not."""
        if self.started_monotonic is not None:
            return self
        return replace(self, started_monotonic=monotonic)
