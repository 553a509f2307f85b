"""Plausibility guards: a garbage frame must never become a wrong odometer or speed.

Guards run on the frames' own timestamps, so a replay gives the same verdicts at any
speed. They are plain state machines with no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

ODOMETER_BACKWARDS: Final = "odometer_backwards"
ODOMETER_JUMP: Final = "odometer_jump"
#: A first reading waiting for others to confirm it (not a rejection).
ODOMETER_UNCONFIRMED: Final = "odometer_unconfirmed"
SPEED_JUMP: Final = "speed_jump"

#: Speed assumed when none has been seen: faster than any road car's top speed.
DEFAULT_MAX_SPEED_KMH: Final = 300.0
#: A hard stop or launch stays well under 1.5 g, about 53 km/h per second.
MAX_ACCELERATION_KMH_PER_S: Final = 53.0
#: Right after a start the odometer may be this far above the one kept (the daemon
#: restarted on the move); further needs readings to confirm it.
STORED_ALLOWANCE_M: Final = 5_000.0
#: With no odometer to compare with (a new head unit), this many readings consistent
#: with each other over this long become the odometer.
CONFIRM_READINGS: Final = 3
CONFIRM_S: Final = 1.0
#: Readings that disagree with the odometer but agree with each other replace it after
#: this many over this long, with no reading accepted meanwhile.
RECOVER_READINGS: Final = 5
RECOVER_S: Final = 10.0
#: Below this, readings under the reference do not replace it: they catch up with it
#: as the car drives on (a drive replayed twice, a reference a little too high), and a
#: correction would judge the maintenance plan afresh for nothing.
RECOVER_BACKWARDS_MIN_M: Final = 100_000.0
#: Speed sensors jitter and frames are sampled: never reject a change smaller than this.
SPEED_JITTER_KMH: Final = 10.0


@dataclass(slots=True)
class _Run:
    """Readings consistent with each other that the reference does not accept."""

    first_time: float
    value: float
    time: float
    count: int = 1


class OdometerGuard:
    """The odometer never goes backwards, nor further than the car could have driven.

    The bound between two readings is the highest speed seen in between (with a
    margin) times the elapsed time, plus one step of the odometer's resolution: a
    cluster that counts whole miles moves 1,609 m at once, however slowly it crept there.

    The first reading after a start is bounded too: by the odometer a previous run kept
    (not below it, at most :data:`STORED_ALLOWANCE_M` above it), or, with none kept,
    held until readings confirm it. A single garbage frame at start can then never
    become the odometer. And a reference that is itself wrong (a garbage value kept by an
    older version, a replaced cluster) is not kept for good: readings that disagree with
    it but agree with each other, with nothing accepted meanwhile, replace it once they
    span :data:`RECOVER_S` and :data:`RECOVER_READINGS` (readings below it only when
    :data:`RECOVER_BACKWARDS_MIN_M` or more below); :meth:`take_correction` tells.
    """

    def __init__(self, max_speed_kmh: float = DEFAULT_MAX_SPEED_KMH) -> None:
        self._max_speed = max_speed_kmh
        self._last: float | None = None
        self._last_time = -math.inf
        self._stored: float | None = None
        self._speed: float | None = None
        self._peak_speed: float | None = None
        self._run: _Run | None = None
        self._correction: tuple[float, float] | None = None

    @property
    def last(self) -> float | None:
        """The last accepted reading, in metres."""
        return self._last

    def seed(self, metres: float) -> None:
        """Start from a reading kept from a previous run: the first reading is bound by it."""
        self._stored = metres

    def observe_speed(self, kmh: float) -> None:
        """Feed an accepted vehicle speed (the bound uses the peak since the last reading)."""
        self._speed = abs(kmh)
        self._peak_speed = max(self._peak_speed or 0.0, abs(kmh))

    def check(self, metres: float, timestamp: float, quantum: float) -> str | None:
        """Return why the reading is not taken, or ``None`` after accepting it.

        :data:`ODOMETER_UNCONFIRMED` is not a rejection: the reading waits for others.
        """
        reason = self._against_reference(metres, timestamp, quantum)
        if reason is None:
            self._accept(metres, timestamp)
            return None
        if self._run_confirms(metres, timestamp, quantum):
            if self._reference is not None:
                self._correction = (self._reference, metres)
            self._accept(metres, timestamp)
            return None
        return reason

    def take_correction(self) -> tuple[float, float] | None:
        """``(reference, reading)`` once, after readings replaced a wrong reference."""
        correction, self._correction = self._correction, None
        return correction

    @property
    def _reference(self) -> float | None:
        return self._last if self._last is not None else self._stored

    def _against_reference(self, metres: float, timestamp: float, quantum: float) -> str | None:
        reference = self._reference
        if reference is None:
            return ODOMETER_UNCONFIRMED
        if metres < reference:
            return ODOMETER_BACKWARDS
        if self._last is None:
            reachable = STORED_ALLOWANCE_M + quantum
        else:
            peak = self._peak_speed if self._peak_speed is not None else self._max_speed
            reachable = self._reachable(peak, timestamp - self._last_time, quantum)
        return ODOMETER_JUMP if metres - reference > reachable else None

    def _run_confirms(self, metres: float, timestamp: float, quantum: float) -> bool:
        run = self._run
        if run is None or not (
            run.value
            <= metres
            <= run.value + self._reachable(self._max_speed, timestamp - run.time, quantum)
        ):
            self._run = _Run(timestamp, metres, timestamp)
            run = self._run
        else:
            run.value, run.time, run.count = metres, timestamp, run.count + 1
        reference = self._reference
        if reference is None:
            readings, span = CONFIRM_READINGS, CONFIRM_S
        elif reference - metres < RECOVER_BACKWARDS_MIN_M and metres < reference:
            return False
        else:
            readings, span = RECOVER_READINGS, RECOVER_S
        return (
            run.count >= readings
            and timestamp - run.first_time >= span
            and timestamp - self._last_time >= span
        )

    @staticmethod
    def _reachable(peak_kmh: float, elapsed: float, quantum: float) -> float:
        return (peak_kmh * 1.25 + SPEED_JITTER_KMH) / 3.6 * max(0.0, elapsed) + quantum + 1.0

    def _accept(self, metres: float, timestamp: float) -> None:
        self._last, self._last_time = metres, timestamp
        self._peak_speed = self._speed
        self._run = None


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
