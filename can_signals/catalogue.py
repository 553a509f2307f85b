"""The signal catalogue: the COVESA VSS 6.0 signals touchpoint reads, as data.

Every value that leaves the signal layer is expressed in the catalogue's datatype and
unit, whatever the car's DBC uses (the odometer is metres in VSS 6.0, even when the car
counts miles). A handful of signals VSS 6.0 does not define (warning lamps, oil life as
a percentage) are touchpoint extensions, marked ``standard=False``.

This module is pure data and imports nothing from python-can or cantools, so the agent
core can read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class DataType(StrEnum):
    """The VSS datatypes a CAN signal can feed (every scalar one, and ``string[]``)."""

    BOOLEAN = "boolean"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    UINT64 = "uint64"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    FLOAT = "float"
    DOUBLE = "double"
    STRING = "string"
    STRING_ARRAY = "string[]"

    @property
    def integer_range(self) -> tuple[int, int] | None:
        """The representable range of an integer datatype, ``None`` for the others."""
        return _INTEGER_RANGES.get(self)

    @property
    def is_numeric(self) -> bool:
        """Whether values of this type are numbers (booleans are not)."""
        return self in _INTEGER_RANGES or self in (DataType.FLOAT, DataType.DOUBLE)


_INTEGER_RANGES: Final[dict[DataType, tuple[int, int]]] = {
    DataType.UINT8: (0, 2**8 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.UINT64: (0, 2**64 - 1),
    DataType.INT8: (-(2**7), 2**7 - 1),
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
}


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """One catalogue entry.

    Attributes:
        path: The VSS path, e.g. ``Vehicle.Speed``.
        datatype: The VSS datatype values are converted to.
        unit: The VSS unit values are normalised to, or ``None`` for unitless signals.
        description: What the signal means, in one line.
        minimum: The lowest plausible value; lower values are rejected.
        maximum: The highest plausible value; higher values are rejected.
        allowed: For enumerated strings, the values VSS allows.
        standard: ``False`` for touchpoint extensions that VSS 6.0 does not define.
    """

    path: str
    datatype: DataType
    unit: str | None
    description: str
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None
    standard: bool = True


LOW_VOLTAGE_SYSTEM_STATES: Final = ("UNDEFINED", "LOCK", "OFF", "ACC", "ON", "START")
#: VSS 6.0's ``GNSSReceiver.FixType`` values.
GNSS_FIX_TYPES: Final = (
    "NONE",
    "TWO_D",
    "TWO_D_SATELLITE_BASED_AUGMENTATION",
    "TWO_D_GROUND_BASED_AUGMENTATION",
    "TWO_D_SATELLITE_AND_GROUND_BASED_AUGMENTATION",
    "THREE_D",
    "THREE_D_SATELLITE_BASED_AUGMENTATION",
    "THREE_D_GROUND_BASED_AUGMENTATION",
    "THREE_D_SATELLITE_AND_GROUND_BASED_AUGMENTATION",
)
#: ``SelectedGear`` values VSS reserves for the lever positions that are not a gear.
GEAR_PARK: Final = 126
GEAR_DRIVE: Final = 127
#: Warning lamps touchpoint folds into ``DTCList`` as ``LAMP:<name>`` entries.
LAMP_NAMES: Final = (
    "MalfunctionIndicator",
    "OilPressure",
    "EngineCoolantTemperature",
    "BatteryCharge",
    "BrakeSystem",
    "ABS",
    "Airbag",
    "TirePressure",
)
LAMP_PREFIX: Final = "Vehicle.Diagnostics.Lamp."
DTC_LIST: Final = "Vehicle.Diagnostics.DTCList"
DTC_COUNT: Final = "Vehicle.Diagnostics.DTCCount"
ODOMETER: Final = "Vehicle.TraveledDistance"
SPEED: Final = "Vehicle.Speed"


def _wheels() -> Iterable[SignalSpec]:
    for row in ("Row1", "Row2"):
        for side in ("Left", "Right"):
            wheel = f"Vehicle.Chassis.Axle.{row}.Wheel.{side}"
            yield SignalSpec(
                f"{wheel}.Tire.Pressure", DataType.UINT16, "kPa",
                "Tyre pressure.", minimum=0, maximum=1000,
            )  # fmt: skip
            yield SignalSpec(
                f"{wheel}.Tire.IsPressureLow", DataType.BOOLEAN, None,
                "The tyre pressure monitor reports low pressure.",
            )  # fmt: skip
            yield SignalSpec(
                f"{wheel}.Brake.PadWear", DataType.UINT8, "percent",
                "Brake pad wear: 0 = new, 100 = worn out.", minimum=0, maximum=100,
            )  # fmt: skip


def _lamps() -> Iterable[SignalSpec]:
    for name in LAMP_NAMES:
        yield SignalSpec(
            f"{LAMP_PREFIX}{name}", DataType.BOOLEAN, None,
            f"The {name} warning lamp is lit (folded into DTCList as LAMP:{name}).",
            standard=False,
        )  # fmt: skip


_SIGNALS: Final[tuple[SignalSpec, ...]] = (
    SignalSpec(ODOMETER, DataType.UINT32, "m",
               "Odometer: distance travelled in the vehicle's lifetime."),
    SignalSpec(SPEED, DataType.FLOAT, "km/h", "Vehicle speed.", minimum=-100, maximum=400),
    SignalSpec("Vehicle.Powertrain.Transmission.CurrentGear", DataType.INT8, None,
               "Engaged gear: 0 = neutral, 1.. forward, -1.. reverse."),
    SignalSpec("Vehicle.Powertrain.Transmission.SelectedGear", DataType.INT8, None,
               "Selected gear: 0 = neutral, 1.. forward, -1.. reverse, 126 = park, 127 = drive."),
    SignalSpec("Vehicle.Powertrain.Transmission.IsParkLockEngaged", DataType.BOOLEAN, None,
               "The transmission's park lock is engaged."),
    SignalSpec("Vehicle.Chassis.ParkingBrake.IsEngaged", DataType.BOOLEAN, None,
               "The parking brake is engaged."),
    SignalSpec("Vehicle.LowVoltageSystemState", DataType.STRING, None,
               "Ignition state.", allowed=LOW_VOLTAGE_SYSTEM_STATES),
    SignalSpec("Vehicle.Powertrain.CombustionEngine.Speed", DataType.FLOAT, "rpm",
               "Engine speed.", minimum=0, maximum=20000),
    SignalSpec("Vehicle.Powertrain.CombustionEngine.IsRunning", DataType.BOOLEAN, None,
               "The engine is running."),
    SignalSpec("Vehicle.Powertrain.CombustionEngine.EngineOil.LifeRemaining", DataType.INT32,
               "s", "Remaining engine oil life; negative = exceeded."),
    SignalSpec("Vehicle.Powertrain.CombustionEngine.EngineOil.RelativeLifeRemaining",
               DataType.UINT8, "percent",
               "Remaining engine oil life as the car's oil-life monitor reports it.",
               minimum=0, maximum=100, standard=False),
    SignalSpec(DTC_LIST, DataType.STRING_ARRAY, None,
               "Active DTCs in SAE J2012 form (P0301), and LAMP:<name> for lit warning lamps."),
    SignalSpec(DTC_COUNT, DataType.UINT8, None, "Number of entries in DTCList."),
    *_lamps(),
    SignalSpec("Vehicle.Powertrain.TractionBattery.Charging.IsCharging", DataType.BOOLEAN,
               None, "The traction battery is charging."),
    SignalSpec("Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.IsChargingCableConnected",
               DataType.BOOLEAN, None, "A charging cable is plugged in."),
    SignalSpec("Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed", DataType.FLOAT,
               "percent", "State of charge shown to the driver.", minimum=0, maximum=100),
    SignalSpec("Vehicle.Powertrain.FuelSystem.RelativeLevel", DataType.UINT8, "percent",
               "Fuel level.", minimum=0, maximum=100),
    SignalSpec("Vehicle.Service.DistanceToService", DataType.FLOAT, "km",
               "Distance to the next service; negative = overdue."),
    SignalSpec("Vehicle.Service.TimeToService", DataType.INT32, "s",
               "Time to the next service; negative = overdue."),
    SignalSpec("Vehicle.Service.IsServiceDue", DataType.BOOLEAN, None,
               "The car itself says a service is due."),
    SignalSpec("Vehicle.Service.ResetCounter", DataType.UINT8, None,
               "Counts resets of the car's service indicator by a workshop (wraps at 255).",
               standard=False),
    SignalSpec("Vehicle.CurrentLocation.Timestamp", DataType.STRING, "iso8601",
               "UTC time from the GNSS receiver (a trusted time only with a fix)."),
    SignalSpec("Vehicle.CurrentLocation.GNSSReceiver.FixType", DataType.STRING, None,
               "The GNSS receiver's fix: without one, its time is not a time.",
               allowed=GNSS_FIX_TYPES),
    *_wheels(),
)  # fmt: skip

CATALOGUE: Final[Mapping[str, SignalSpec]] = MappingProxyType({s.path: s for s in _SIGNALS})


def lookup(path: str) -> SignalSpec | None:
    """Return the catalogue entry for a VSS path, or ``None`` if touchpoint does not use it."""
    return CATALOGUE.get(path)
