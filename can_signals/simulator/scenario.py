"""Scenarios as data: phases that change the car (actions) and drive it (a speed profile).

A phase starts by applying its actions to the state (the driver turns the key, a fault
appears, a cable is plugged in), then drives the model for its duration towards the
target speed its profile gives for each moment of the phase. Profiles are built when the
scenario is built, from a seeded random generator where they vary, so the same
scenario name and options always give the same drive.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from can_signals.catalogue import LAMP_NAMES
from can_signals.dtc import dtc_from_text, dtc_to_text
from can_signals.simulator.errors import SimulatorError
from can_signals.simulator.model import DEFAULT_PARAMS, Gear, Ignition, VehicleParams, VehicleState

Action = Callable[[VehicleState], VehicleState]


@dataclass(frozen=True, slots=True)
class SpeedProfile:
    """A driver's target speed over a phase: piecewise constant.

    Attributes:
        steps: ``(phase time in ms, target km/h)`` pairs, the first at time 0, in order.
    """

    steps: tuple[tuple[int, float], ...] = ((0, 0.0),)

    def __post_init__(self) -> None:
        times = [t for t, _ in self.steps]
        if not times or times[0] != 0 or times != sorted(times):
            raise SimulatorError("a speed profile starts at 0 ms and runs forwards")

    def target(self, phase_ms: int) -> float:
        """The target speed ``phase_ms`` into the phase."""
        index = bisect.bisect_right(self.steps, phase_ms, key=lambda s: s[0]) - 1
        return self.steps[index][1]


STANDSTILL = SpeedProfile()


def constant(kmh: float) -> SpeedProfile:
    """Hold one target speed for the whole phase."""
    return SpeedProfile(((0, kmh),))


def city(rng: random.Random, duration_ms: int) -> SpeedProfile:
    """Stop-and-go city driving: accelerate, cruise, brake for a light, wait, again.

    The last 20 s aim at 0 km/h, so the phase ends standing still.
    """
    steps: list[tuple[int, float]] = []
    t = 0
    end = duration_ms - 20_000
    while t < end:
        steps.append((t, float(rng.choice((30, 40, 50, 50, 60, 70)))))
        t += rng.randrange(8_000, 30_000, 10)
        if rng.random() < 0.3 and t < end:  # a change of speed limit without stopping
            steps.append((t, float(rng.choice((30, 50, 60)))))
            t += rng.randrange(5_000, 15_000, 10)
        steps.append((min(t, end), 0.0))
        t += rng.randrange(5_000, 25_000, 10)  # a red light or a queue
    steps.append((max(end, 0), 0.0))
    return _merged(steps)


def highway(rng: random.Random, duration_ms: int, cruise_kmh: float = 120.0) -> SpeedProfile:
    """Motorway cruising around ``cruise_kmh`` with traffic varying the pace."""
    steps: list[tuple[int, float]] = []
    t = 0
    while t < duration_ms:
        steps.append((t, cruise_kmh + rng.choice((-20.0, -10.0, 0.0, 0.0, 5.0, 10.0))))
        t += rng.randrange(30_000, 90_000, 10)
    return _merged(steps)


def _merged(steps: list[tuple[int, float]]) -> SpeedProfile:
    """Drop steps that another step at the same time replaces."""
    by_time = dict(steps)  # a later step at the same time wins
    return SpeedProfile(tuple(sorted(by_time.items())))


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of a scenario.

    Attributes:
        name: What happens, for progress output.
        duration_ms: How long the phase lasts on the scenario clock.
        actions: Changes applied to the state when the phase starts.
        profile: The driver's target speed during the phase.
    """

    name: str
    duration_ms: int
    actions: tuple[Action, ...] = ()
    profile: SpeedProfile = STANDSTILL

    def begin(self, state: VehicleState) -> VehicleState:
        """The state once the phase's actions are applied."""
        for action in self.actions:
            state = action(state)
        return state


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named, deterministic drive.

    Attributes:
        name: The scenario's name.
        description: One line on what it shows.
        initial: The state before the first phase.
        phases: The phases, in order.
        params: The car's constants.
    """

    name: str
    description: str
    initial: VehicleState
    phases: tuple[Phase, ...]
    params: VehicleParams = field(default=DEFAULT_PARAMS)

    @property
    def duration_ms(self) -> int:
        """The scenario's length on its own clock."""
        return sum(p.duration_ms for p in self.phases)


# Actions: frozen dataclasses rather than closures, so that scenarios compare equal
# and print readably.


@dataclass(frozen=True, slots=True)
class SetIgnition:
    """Turn the key (or press the power button) to ``mode``."""

    mode: Ignition

    def __call__(self, state: VehicleState) -> VehicleState:
        """Apply the action."""
        return replace(state, ignition=self.mode)


@dataclass(frozen=True, slots=True)
class SelectGear:
    """Move the gear lever."""

    gear: Gear

    def __call__(self, state: VehicleState) -> VehicleState:
        """Apply the action."""
        return replace(state, gear=self.gear)


@dataclass(frozen=True, slots=True)
class ParkingBrake:
    """Apply or release the parking brake."""

    engaged: bool

    def __call__(self, state: VehicleState) -> VehicleState:
        """Apply the action."""
        return replace(state, parking_brake=self.engaged)


@dataclass(frozen=True, slots=True)
class PlugCable:
    """Plug in a charging cable at a station offering ``charger_kw`` (0: no power)."""

    charger_kw: float

    def __call__(self, state: VehicleState) -> VehicleState:
        """Apply the action."""
        return replace(state, cable_connected=True, charger_kw=self.charger_kw)


@dataclass(frozen=True, slots=True)
class UnplugCable:
    """Unplug the charging cable."""

    def __call__(self, state: VehicleState) -> VehicleState:
        """Apply the action."""
        return replace(state, cable_connected=False, charger_kw=0.0, charging=False)


@dataclass(frozen=True, slots=True)
class RaiseDtc:
    """An ECU detects a fault: ``code`` becomes active and ``lamps`` light up.

    Raises:
        SimulatorError: If a lamp is not one of the catalogue's lamps.
        can_signals.dtc.DtcFormatError: If the code is not a J2012 code.
    """

    code: str
    lamps: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", dtc_to_text(dtc_from_text(self.code)))
        _check_lamps(self.lamps)

    def __call__(self, state: VehicleState) -> VehicleState:
        """Apply the action."""
        dtcs = state.dtcs if self.code in state.dtcs else (*state.dtcs, self.code)
        return replace(state, dtcs=dtcs, lamps=state.lamps | self.lamps)


@dataclass(frozen=True, slots=True)
class ClearDtc:
    """The fault is gone: ``code`` is no longer active and ``lamps`` go out.

    Raises:
        SimulatorError: If a lamp is not one of the catalogue's lamps.
        can_signals.dtc.DtcFormatError: If the code is not a J2012 code.
    """

    code: str
    lamps: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", dtc_to_text(dtc_from_text(self.code)))
        _check_lamps(self.lamps)

    def __call__(self, state: VehicleState) -> VehicleState:
        """Apply the action."""
        dtcs = tuple(c for c in state.dtcs if c != self.code)
        return replace(state, dtcs=dtcs, lamps=state.lamps - self.lamps)


@dataclass(frozen=True, slots=True)
class ServiceReset:
    """A workshop services the car: new oil, and the service indicator is reset."""

    def __call__(self, state: VehicleState) -> VehicleState:
        """Apply the action."""
        return replace(state, oil_life_pct=100.0, service_resets=(state.service_resets + 1) % 256)


def _check_lamps(lamps: frozenset[str]) -> None:
    unknown = sorted(lamps - set(LAMP_NAMES))
    if unknown:
        raise SimulatorError(f"unknown warning lamps {unknown}; known: {', '.join(LAMP_NAMES)}")
