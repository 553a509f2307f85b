"""Plausibility guards: a garbage frame must never become a wrong odometer or speed.

Guards run on the frames' own timestamps, so a replay gives the same verdicts at any
speed. They are plain state machines with no I/O.
"""

from __future__ import annotations

import math
from typing import Final

ODOMETER_BACKWARDS: Final = "odometer_backwards"
ODOMETER_JUMP: Final = "odometer_jump"
SPEED_JUMP: Final = "speed_jump"

#: Speed assumed when none has been seen: faster than any road car's top speed.
DEFAULT_MAX_SPEED_KMH: Final = 300.0
#: A hard stop or launch stays well under 1.5 g, about 53 km/h per second.
MAX_ACCELERATION_KMH_PER_S: Final = 53.0
#: Speed sensors jitter and frames are sampled: never reject a change smaller than this.
SPEED_JITTER_KMH: Final = 10.0


class OdometerGuard:
    """The odometer never goes backwards, nor further than the car could have driven.

    The bound between two readings is the highest speed seen in between (with a
    margin) times the elapsed time, plus one step of the odometer's resolution: a
    cluster that counts whole miles moves 1,609 m at once, however slowly it crept there.
    """

    def __init__(self, max_speed_kmh: float = DEFAULT_MAX_SPEED_KMH) -> None:
        self._max_speed = max_speed_kmh
        self._last: float | None = None
        self._last_time = -math.inf
        self._floor: float | None = None
        self._speed: float | None = None
        self._peak_speed: float | None = None

    @property
    def last(self) -> float | None:
        """The last accepted reading, in metres."""
        return self._last

    def seed(self, metres: float) -> None:
        """Start from a reading kept from a previous run: nothing lower is accepted."""
        self._floor = metres

    def observe_speed(self, kmh: float) -> None:
        """Feed an accepted vehicle speed (the bound uses the peak since the last reading)."""
        self._speed = abs(kmh)
        self._peak_speed = max(self._peak_speed or 0.0, abs(kmh))

    def check(self, metres: float, timestamp: float, quantum: float) -> str | None:
        """Return a rejection reason, or ``None`` after accepting the reading."""
        floor = self._last if self._last is not None else self._floor
        if floor is not None and metres < floor:
            return ODOMETER_BACKWARDS
        if self._last is not None:
            elapsed = max(0.0, timestamp - self._last_time)
            peak = self._peak_speed if self._peak_speed is not None else self._max_speed
            reachable = (peak * 1.25 + SPEED_JITTER_KMH) / 3.6 * elapsed + quantum + 1.0
            if metres - self._last > reachable:
                return ODOMETER_JUMP
        self._last, self._last_time = metres, timestamp
        self._peak_speed = self._speed
        return None


class SpeedGuard:
    """Speed cannot change faster than a car can brake or accelerate."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._last_time = -math.inf

    def check(self, kmh: float, timestamp: float) -> str | None:
        """Return a rejection reason, or ``None`` after accepting the reading."""
        if self._last is not None:
            elapsed = max(0.0, timestamp - self._last_time)
            if abs(kmh - self._last) > MAX_ACCELERATION_KMH_PER_S * elapsed + SPEED_JITTER_KMH:
                return SPEED_JUMP
        self._last, self._last_time = kmh, timestamp
        return None
