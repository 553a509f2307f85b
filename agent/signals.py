"""The signals the domain reads: their VSS names, their values, and what an update is.

The agent takes signal updates from whatever decodes the car's buses (the CAN layer, a
replay, a test) through :class:`SignalReading`, a protocol: the agent imports nothing
of the CAN layer, and the CAN layer nothing of the agent. The VSS names below are the
ones the engines act on; the CAN layer's catalogue declares the same paths with the
units given here (a test holds the two together).
"""

from __future__ import annotations

from typing import Final, Protocol

#: A VSS value: booleans, numbers, strings, and string arrays (``DTCList``) as tuples.
SignalValue = bool | int | float | str | tuple[str, ...]


class SignalReading(Protocol):
    """A new value of one VSS signal, in the unit its catalogue declares."""

    @property
    def path(self) -> str:
        """The VSS path, e.g. ``Vehicle.Speed``."""

    @property
    def value(self) -> SignalValue | None:
        """The value; ``None`` when the signal went stale and its last value no longer holds."""


#: The odometer, in metres (VSS 6.0: uint32, m).
ODOMETER: Final = "Vehicle.TraveledDistance"
#: Vehicle speed, in km/h.
SPEED: Final = "Vehicle.Speed"
IGNITION: Final = "Vehicle.LowVoltageSystemState"
SELECTED_GEAR: Final = "Vehicle.Powertrain.Transmission.SelectedGear"
#: ``SelectedGear`` values VSS reserves for the lever positions that are not a gear.
GEAR_PARK: Final = 126
GEAR_DRIVE: Final = 127
PARK_LOCK: Final = "Vehicle.Powertrain.Transmission.IsParkLockEngaged"
IS_CHARGING: Final = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
#: State of charge shown to the driver, in percent.
STATE_OF_CHARGE: Final = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
#: Fuel level, in percent.
FUEL_LEVEL: Final = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
#: Engine oil life left, in percent.
OIL_LIFE: Final = "Vehicle.Powertrain.CombustionEngine.EngineOil.RelativeLifeRemaining"
SERVICE_RESET: Final = "Vehicle.Service.ResetCounter"
#: GNSS time (ISO 8601); a time source only with a fix.
GNSS_TIME: Final = "Vehicle.CurrentLocation.Timestamp"
#: The GNSS receiver's fix (VSS: NONE, TWO_D, THREE_D and their augmented kinds).
GNSS_FIX: Final = "Vehicle.CurrentLocation.GNSSReceiver.FixType"
GNSS_NO_FIX: Final = "NONE"
#: Active DTCs (SAE J2012 form), with warning lamps folded in as ``LAMP:<name>``.
DTC_LIST: Final = "Vehicle.Diagnostics.DTCList"
#: Warning lamps: ``Vehicle.Diagnostics.Lamp.<name>``, booleans.
LAMP_PREFIX: Final = "Vehicle.Diagnostics.Lamp."
PAD_WEAR_SUFFIX: Final = ".Brake.PadWear"
TYRE_LOW_SUFFIX: Final = ".Tire.IsPressureLow"

#: The unit the domain expects of each numeric signal it reads (``None``: unitless).
UNITS: Final[dict[str, str | None]] = {
    ODOMETER: "m",
    SPEED: "km/h",
    SELECTED_GEAR: None,
    STATE_OF_CHARGE: "percent",
    FUEL_LEVEL: "percent",
    OIL_LIFE: "percent",
}
