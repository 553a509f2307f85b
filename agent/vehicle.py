"""Vehicle state, built from signal updates, and the transitions the engines react to.

Pure: ``apply(state, update)`` returns the new state and the transitions it caused
(a drive cycle started, the car parked, charging stopped, a DTC appeared...). Nothing
here reads a clock or does I/O.

"Parked" follows the brief: speed 0 with the lever in Park, or the ignition off or in
accessory mode. Everything else counts as driving for the driver-distraction rules,
including standing at a red light in Drive, and including not knowing: a car whose
speed or gear we have not heard yet is not assumed to be parked unless its ignition
says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from agent.signals import (
    DTC_LIST,
    GEAR_PARK,
    GNSS_TIME,
    IGNITION,
    IS_CHARGING,
    ODOMETER,
    PAD_WEAR_SUFFIX,
    PARK_LOCK,
    SELECTED_GEAR,
    SERVICE_RESET,
    SPEED,
    STATE_OF_CHARGE,
    TYRE_LOW_SUFFIX,
    SignalReading,
    SignalValue,
)

#: Ignition states in which the car is off or in accessory mode: parked, whatever else.
_OFF_STATES: Final = frozenset({"LOCK", "OFF", "ACC"})
_ON_STATES: Final = frozenset({"ON", "START"})
#: Below this speed a car in Park is at rest (sensors report small values when still).
STANDSTILL_KMH: Final = 0.5


class Transition(StrEnum):
    """Something that changed, for the engines and rules to react to."""

    DRIVE_CYCLE_STARTED = "drive_cycle_started"
    DRIVE_CYCLE_ENDED = "drive_cycle_ended"
    DRIVING_STARTED = "driving_started"
    PARKED = "parked"
    CHARGING_STARTED = "charging_started"
    CHARGING_STOPPED = "charging_stopped"
    ODOMETER_CHANGED = "odometer_changed"
    FAULTS_CHANGED = "faults_changed"
    SERVICE_RESET = "service_reset"
    GNSS_TIME = "gnss_time"


@dataclass(frozen=True, slots=True)
class VehicleState:
    """The agent's picture of the car.

    Attributes:
        signals: The latest value of every signal heard, by VSS path (stale signals are
            absent).
        odometer_m: The last known odometer, kept across restarts and stale periods.
        drive_cycle: Drive cycles (ignition on to off) counted since the agent began.
        in_drive_cycle: Whether the ignition is on now.
        parked: Whether the car is parked (see the module docstring).
        charging: Whether a charging session is running.
        faults: Active DTCs and lit lamps (``DTCList``), sorted.
    """

    signals: Mapping[str, SignalValue] = field(default_factory=lambda: MappingProxyType({}))
    odometer_m: int | None = None
    drive_cycle: int = 0
    in_drive_cycle: bool = False
    parked: bool = False
    charging: bool = False
    faults: tuple[str, ...] = ()

    @property
    def driving(self) -> bool:
        """Whether the driver-distraction restrictions apply (anything but parked)."""
        return not self.parked

    @property
    def speed_kmh(self) -> float | None:
        """The current speed, if known."""
        value = self.signals.get(SPEED)
        return float(value) if isinstance(value, int | float) else None

    def value(self, path: str) -> SignalValue | None:
        """The latest value of a signal, or ``None`` if unknown or stale."""
        return self.signals.get(path)

    def brake_pad_wear(self) -> int | None:
        """The most worn brake pad, in percent, if any is reported."""
        wear = [
            int(v)
            for k, v in self.signals.items()
            if k.endswith(PAD_WEAR_SUFFIX) and isinstance(v, int | float)
        ]
        return max(wear) if wear else None

    def low_tyres(self) -> tuple[str, ...]:
        """The wheels whose tyre pressure monitor reports low pressure."""
        return tuple(
            sorted(
                k.removesuffix(TYRE_LOW_SUFFIX).removeprefix("Vehicle.Chassis.Axle.")
                for k, v in self.signals.items()
                if k.endswith(TYRE_LOW_SUFFIX) and v is True
            )
        )


@dataclass(frozen=True, slots=True)
class Change:
    """A transition with the values that describe it."""

    transition: Transition
    detail: Mapping[str, SignalValue | None] = field(default_factory=lambda: MappingProxyType({}))


def apply(state: VehicleState, update: SignalReading) -> tuple[VehicleState, list[Change]]:
    """Fold one signal update into the state.

    Returns:
        The new state and the transitions the update caused, in order.
    """
    previous = state.signals.get(update.path)
    if update.value == previous and (update.value is not None or update.path not in state.signals):
        return state, []
    signals = dict(state.signals)
    if update.value is None:
        signals.pop(update.path, None)
    else:
        signals[update.path] = update.value
    changes: list[Change] = []
    odometer = state.odometer_m
    faults = state.faults
    if update.path == ODOMETER and isinstance(update.value, int):
        if odometer != update.value:
            changes.append(
                Change(Transition.ODOMETER_CHANGED, {"from": odometer, "to": update.value})
            )
        odometer = update.value
    elif update.path == DTC_LIST and isinstance(update.value, tuple):
        faults = update.value
        added = tuple(sorted(set(faults) - set(state.faults)))
        removed = tuple(sorted(set(state.faults) - set(faults)))
        changes.append(Change(Transition.FAULTS_CHANGED, {"added": added, "removed": removed}))
    elif update.path == SERVICE_RESET and isinstance(previous, int) and update.value is not None:
        changes.append(Change(Transition.SERVICE_RESET, {"counter": update.value}))
    elif update.path == GNSS_TIME and isinstance(update.value, str):
        changes.append(Change(Transition.GNSS_TIME, {"time": update.value}))
    return _derive(state, signals, odometer, faults, changes)


def _derive(
    old: VehicleState,
    signals: dict[str, SignalValue],
    odometer: int | None,
    faults: tuple[str, ...],
    changes: list[Change],
) -> tuple[VehicleState, list[Change]]:
    ignition = signals.get(IGNITION)
    in_cycle = old.in_drive_cycle
    cycle = old.drive_cycle
    if ignition in _ON_STATES and not in_cycle:
        in_cycle, cycle = True, cycle + 1
        changes.append(Change(Transition.DRIVE_CYCLE_STARTED, {"cycle": cycle}))
    elif ignition in _OFF_STATES and in_cycle:
        in_cycle = False
        changes.append(Change(Transition.DRIVE_CYCLE_ENDED, {"cycle": cycle}))
    parked = _is_parked(signals)
    if parked != old.parked:
        changes.append(Change(Transition.PARKED if parked else Transition.DRIVING_STARTED))
    charging = signals.get(IS_CHARGING) is True
    if charging != old.charging:
        transition = Transition.CHARGING_STARTED if charging else Transition.CHARGING_STOPPED
        changes.append(Change(transition, {"soc": signals.get(STATE_OF_CHARGE)}))
    # One construction per update (this runs for every signal the car sends).
    return VehicleState(
        MappingProxyType(signals), odometer, cycle, in_cycle, parked, charging, faults
    ), changes


def _is_parked(signals: Mapping[str, SignalValue]) -> bool:
    if signals.get(IGNITION) in _OFF_STATES:
        return True
    speed = signals.get(SPEED)
    at_rest = isinstance(speed, int | float) and abs(speed) < STANDSTILL_KMH
    in_park = signals.get(SELECTED_GEAR) == GEAR_PARK or signals.get(PARK_LOCK) is True
    return at_rest and in_park


def lamp_names(faults: tuple[str, ...]) -> tuple[str, ...]:
    """The lit lamps among ``DTCList`` entries (``LAMP:OilPressure`` -> ``OilPressure``)."""
    return tuple(f.removeprefix("LAMP:") for f in faults if f.startswith("LAMP:"))


__all__ = ["Change", "Transition", "VehicleState", "apply", "lamp_names"]
