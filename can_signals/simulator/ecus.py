"""The reference car's ECUs: what each message of ``touchpoint_ref.dbc`` carries for a state.

One function per message returns its signals' physical values (labels for value-table
signals), given the model state and the frame's sequence number (for rolling counters
and the DTC slot that cycles through the active codes). Quantising, range limits and
checksums are the encoder's job.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from can_signals.catalogue import LAMP_NAMES
from can_signals.dtc import NO_DTC, dtc_from_text
from can_signals.simulator.model import WHEELS, VehicleState

SignalValues = dict[str, float | int | str]
MessageFunction = Callable[[VehicleState, int], SignalValues]

#: Messages protected by a checksum: the message name and its checksum signal.
CHECKSUMS: Final[Mapping[str, str]] = MappingProxyType({
    "ENGINE_STATUS": "ENGINE_CHECKSUM",
    "VEHICLE_SPEED": "SPEED_CHECKSUM",
})  # fmt: skip
#: DBC lamp signal per catalogue lamp name, in LAMP_NAMES order.
LAMP_SIGNALS: Final[Mapping[str, str]] = MappingProxyType(dict(zip(LAMP_NAMES, (
    "LAMP_MIL", "LAMP_OIL_PRESSURE", "LAMP_COOLANT_TEMP", "LAMP_BATTERY_CHARGE",
    "LAMP_BRAKE_SYSTEM", "LAMP_ABS", "LAMP_AIRBAG", "LAMP_TIRE_PRESSURE",
), strict=True)))  # fmt: skip
_GNSS_FIX_3D: Final = "FIX_3D"


def _engine(s: VehicleState, n: int) -> SignalValues:
    return {
        "ENGINE_SPEED": s.engine_rpm,
        "ENGINE_RUNNING": int(s.engine_running),
        "ENGINE_CRANKING": int(s.engine_rpm > 0 and not s.engine_running),
        "COOLANT_TEMP": s.coolant_c,
        "ENGINE_COUNTER": n % 16,
        "ENGINE_CHECKSUM": 0,
    }


def _speed(s: VehicleState, n: int) -> SignalValues:
    return {"VEHICLE_SPEED": s.speed_kmh, "SPEED_COUNTER": n % 16, "SPEED_CHECKSUM": 0}


def _gear(s: VehicleState, _n: int) -> SignalValues:
    return {
        "GEAR_LEVER": s.gear.value,
        "CURRENT_GEAR": s.current_gear,
        "PARK_LOCK_ENGAGED": int(s.park_lock),
    }


def _power_mode(s: VehicleState, _n: int) -> SignalValues:
    return {"IGNITION_STATE": s.ignition.value}


def _parking_brake(s: VehicleState, _n: int) -> SignalValues:
    return {"PARKING_BRAKE_ENGAGED": int(s.parking_brake)}


def _battery(s: VehicleState, _n: int) -> SignalValues:
    return {
        # The cluster never shows more charge than there is: round the display down.
        "SOC_DISPLAYED": floor_to(s.soc_pct, 0.5),
        "CHARGING_ACTIVE": int(s.charging),
        "CHARGE_CABLE_CONNECTED": int(s.cable_connected),
        "CHARGE_POWER": s.charge_power_kw,
    }


def _lamps(s: VehicleState, _n: int) -> SignalValues:
    return {signal: int(name in s.lamps) for name, signal in LAMP_SIGNALS.items()}


def _dtc(s: VehicleState, n: int) -> SignalValues:
    # One code per frame, cycling through the active codes; code 0 says "none active".
    count = len(s.dtcs)
    if not count:
        return {"DTC_ACTIVE_COUNT": 0, "DTC_INDEX": 0, "DTC_CODE": NO_DTC}
    index = n % count
    return {
        "DTC_ACTIVE_COUNT": count,
        "DTC_INDEX": index,
        "DTC_CODE": dtc_from_text(s.dtcs[index]),
    }


def _odometer(s: VehicleState, _n: int) -> SignalValues:
    # An odometer counts whole steps: 0.1 km shows once the car has driven it.
    return {"ODOMETER": floor_to(s.odometer_km, 0.1)}


def _fuel_and_oil(s: VehicleState, _n: int) -> SignalValues:
    return {"FUEL_LEVEL": s.fuel_pct, "OIL_LIFE_REMAINING": s.oil_life_pct}


def _tpms(s: VehicleState, _n: int) -> SignalValues:
    values: SignalValues = {}
    for wheel, kpa, low in zip(WHEELS, s.tyre_kpa, s.tyre_low, strict=True):
        values[f"TIRE_PRESSURE_{wheel}"] = kpa
        values[f"TIRE_LOW_{wheel}"] = int(low)
    return values


def _pads(s: VehicleState, _n: int) -> SignalValues:
    return {f"BRAKE_PAD_WEAR_{w}": p for w, p in zip(WHEELS, s.pad_wear_pct, strict=True)}


def _service(s: VehicleState, _n: int) -> SignalValues:
    return {"SERVICE_RESET_COUNTER": s.service_resets}


def _gnss(s: VehicleState, _n: int) -> SignalValues:
    return {"GNSS_UTC_TIME": s.utc_s, "GNSS_FIX": _GNSS_FIX_3D}


#: What every message of the reference DBC carries, by message name.
MESSAGES: Final[Mapping[str, MessageFunction]] = MappingProxyType({
    "ENGINE_STATUS": _engine,
    "VEHICLE_SPEED": _speed,
    "GEAR_STATUS": _gear,
    "POWER_MODE": _power_mode,
    "EPB_STATUS": _parking_brake,
    "HV_BATTERY_STATUS": _battery,
    "LAMP_STATUS": _lamps,
    "DTC_BROADCAST": _dtc,
    "ODOMETER": _odometer,
    "FUEL_AND_OIL": _fuel_and_oil,
    "TPMS_STATUS": _tpms,
    "BRAKE_PAD_WEAR": _pads,
    "SERVICE_INFO": _service,
    "GNSS_TIME": _gnss,
})  # fmt: skip


def floor_to(value: float, step: float) -> float:
    """Round ``value`` down to a multiple of ``step`` (how counters such as odometers show)."""
    return math.floor(value / step + 1e-9) * step
