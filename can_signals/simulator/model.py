"""The vehicle model: a plug-in hybrid as a frozen state advanced by a pure step function.

:func:`step` takes a state, the driver's target speed and a time step and returns the
next state; it reads no clock and draws no random numbers, so a scenario replays to the
same states every time. The physics is deliberately simple (first-order dynamics, a few
constants) but keeps what the signal layer and the agent care about consistent: the
odometer integrates speed, the engine runs when a plug-in hybrid's would, the battery
drains in EV mode and charges on a cable, oil life follows engine distance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final


class Ignition(StrEnum):
    """Power mode, with the labels of VSS ``Vehicle.LowVoltageSystemState``."""

    LOCK = "LOCK"
    OFF = "OFF"
    ACC = "ACC"
    ON = "ON"
    START = "START"


class Gear(StrEnum):
    """Gear lever position, with the labels of the reference DBC's value table."""

    P = "P"
    R = "R"
    N = "N"
    D = "D"


WHEELS: Final = ("FL", "FR", "RL", "RR")
#: 2024-05-06 07:30:00 UTC, a Monday morning: the default start of every scenario's clock.
DEFAULT_UTC_START: Final = 1_714_980_600
#: Upshift points of the six-speed dual-clutch gearbox, in km/h.
_UPSHIFTS: Final = (15.0, 30.0, 45.0, 65.0, 90.0)
_MASS_KG: Final = 1750.0
_AMBIENT_C: Final = 15.0


@dataclass(frozen=True, slots=True)
class VehicleParams:
    """Constants of the simulated car (a compact plug-in hybrid)."""

    battery_kwh: float = 11.1
    tank_litres: float = 43.0
    ev_kwh_per_km: float = 0.17
    aux_kw: float = 0.4
    regen_efficiency: float = 0.3
    charge_efficiency: float = 0.92
    fuel_litres_per_km: float = 0.055
    idle_litres_per_hour: float = 0.8
    accel_kmh_per_s: float = 7.0
    decel_kmh_per_s: float = 10.0
    reverse_max_kmh: float = 8.0
    #: The engine starts above this speed and stops again below the lower one.
    engine_on_kmh: float = 65.0
    engine_off_kmh: float = 55.0
    #: Below this state of charge the car holds charge with the engine.
    sustain_soc: float = 15.0
    #: The engine warms the catalyst: it starts below the first and runs up to the second.
    warm_up_start_c: float = 30.0
    warm_up_done_c: float = 45.0
    #: Engine distance from 100 % to 0 % oil life.
    oil_life_km: float = 15_000.0
    #: Pad wear, in percent per km/h of speed shed by braking.
    front_pad_wear: float = 2.5e-5
    rear_pad_wear: float = 1.2e-5


DEFAULT_PARAMS: Final = VehicleParams()


@dataclass(frozen=True, slots=True)
class VehicleState:
    """Everything the car's ECUs report, at one instant of the scenario clock.

    Attributes:
        clock_ms: Time since the scenario started.
        utc_start_s: The UNIX time of the scenario start (the GNSS receiver's clock).
        ignition: Power mode.
        ready: The powertrain is ready to drive (after START, until the ignition leaves ON).
        gear: Gear lever position.
        parking_brake: The parking brake is engaged.
        speed_kmh: Vehicle speed.
        odometer_km: Distance driven in the car's lifetime.
        engine_running: The combustion engine runs.
        engine_rpm: Engine speed (cranking speed while starting).
        coolant_c: Engine coolant temperature.
        soc_pct: Traction battery state of charge.
        cable_connected: A charging cable is plugged in.
        charger_kw: The power the charging station offers (0: none).
        charging: The battery is charging.
        fuel_pct: Fuel level.
        oil_life_pct: Oil life monitor, 100 after an oil change.
        tyre_placard_kpa: Cold pressure each tyre should have (FL, FR, RL, RR).
        tyre_cold_kpa: Cold pressure each tyre has (lower than placard: leaking).
        tyre_heat: How warm the tyres are, 0 (ambient) to 1 (after a fast drive).
        pad_wear_pct: Brake pad wear per wheel, 0 new to 100 worn out.
        service_resets: Service indicator resets by a workshop (wraps at 256).
        dtcs: Active DTCs in J2012 form, in the order the ECU reports them.
        lamps: Lit warning lamps, by their catalogue name.
    """

    clock_ms: int = 0
    utc_start_s: int = DEFAULT_UTC_START
    ignition: Ignition = Ignition.LOCK
    ready: bool = False
    gear: Gear = Gear.P
    parking_brake: bool = True
    speed_kmh: float = 0.0
    odometer_km: float = 12_480.0
    engine_running: bool = False
    engine_rpm: float = 0.0
    coolant_c: float = _AMBIENT_C
    soc_pct: float = 80.0
    cable_connected: bool = False
    charger_kw: float = 0.0
    charging: bool = False
    fuel_pct: float = 62.0
    oil_life_pct: float = 17.0
    tyre_placard_kpa: tuple[float, float, float, float] = (240.0, 240.0, 230.0, 230.0)
    tyre_cold_kpa: tuple[float, float, float, float] = (241.0, 238.0, 231.0, 229.0)
    tyre_heat: float = 0.0
    pad_wear_pct: tuple[float, float, float, float] = (38.0, 38.5, 24.0, 24.0)
    service_resets: int = 3
    dtcs: tuple[str, ...] = ()
    lamps: frozenset[str] = frozenset()

    @property
    def utc_s(self) -> int:
        """GNSS UTC time in whole UNIX seconds."""
        return self.utc_start_s + self.clock_ms // 1000

    @property
    def tyre_kpa(self) -> tuple[float, ...]:
        """Tyre pressures now: warm tyres read up to 7 % above their cold pressure."""
        return tuple(p * (1 + 0.07 * self.tyre_heat) for p in self.tyre_cold_kpa)

    @property
    def tyre_low(self) -> tuple[bool, ...]:
        """The tyre pressure monitor's verdicts: more than 25 % below placard."""
        return tuple(
            p < 0.75 * placard
            for p, placard in zip(self.tyre_kpa, self.tyre_placard_kpa, strict=True)
        )

    @property
    def current_gear(self) -> int:
        """The engaged gear: 0 in P and N, -1 in R, 1 to 6 in D by the shift schedule."""
        if self.gear is Gear.R:
            return -1
        if self.gear is not Gear.D:
            return 0
        return 1 + sum(1 for point in _UPSHIFTS if self.speed_kmh >= point)

    @property
    def park_lock(self) -> bool:
        """The transmission's park pawl is engaged."""
        return self.gear is Gear.P

    @property
    def charge_power_kw(self) -> float:
        """Power flowing into the battery from the cable."""
        return self.charger_kw if self.charging else 0.0


def step(
    state: VehicleState, target_kmh: float, dt_ms: int, params: VehicleParams = DEFAULT_PARAMS
) -> VehicleState:
    """Advance the car by ``dt_ms`` while the driver aims for ``target_kmh``.

    The driver's target is only followed when the car can move (ready, D or R, parking
    brake released); otherwise the car brakes to a stop.
    """
    dt = dt_ms / 1000
    ready = state.ignition is Ignition.START or (state.ready and state.ignition is Ignition.ON)
    speed = _next_speed(state, target_kmh, dt, params)
    distance_km = (state.speed_kmh + speed) / 2 * dt / 3600
    shed_kmh = max(0.0, state.speed_kmh - speed)
    running = _engine_runs(state, speed, params)
    charging = (
        state.cable_connected
        and state.charger_kw > 0
        and state.soc_pct < 100.0
        and state.ignition not in (Ignition.ON, Ignition.START)
    )
    return replace(
        state,
        clock_ms=state.clock_ms + dt_ms,
        ready=ready,
        speed_kmh=speed,
        odometer_km=state.odometer_km + distance_km,
        engine_running=running,
        engine_rpm=_engine_rpm(state, speed, running=running),
        coolant_c=_coolant(state.coolant_c, dt, running=running),
        soc_pct=_soc(state, speed, distance_km, dt, params, running=running, charging=charging),
        charging=charging,
        fuel_pct=_fuel(state.fuel_pct, distance_km, dt, params, running=running),
        oil_life_pct=_oil_life(state.oil_life_pct, distance_km, params, running=running),
        tyre_heat=_tyre_heat(state.tyre_heat, speed, dt),
        pad_wear_pct=_pad_wear(state.pad_wear_pct, shed_kmh, params),
    )


def _next_speed(state: VehicleState, target_kmh: float, dt: float, params: VehicleParams) -> float:
    can_move = (
        state.ready
        and state.ignition is Ignition.ON
        and state.gear in (Gear.D, Gear.R)
        and not state.parking_brake
    )
    target = max(0.0, target_kmh) if can_move else 0.0
    if state.gear is Gear.R:
        target = min(target, params.reverse_max_kmh)
    current = state.speed_kmh
    if target > current:
        return min(target, current + params.accel_kmh_per_s * dt)
    return max(target, current - params.decel_kmh_per_s * dt)


def _engine_runs(state: VehicleState, speed: float, params: VehicleParams) -> bool:
    if not state.ready or state.ignition is not Ignition.ON:
        return False
    # Hysteresis on every condition, so the engine does not flicker around a threshold.
    if state.engine_running:
        return (
            speed > params.engine_off_kmh
            or state.soc_pct < params.sustain_soc + 2
            or state.coolant_c < params.warm_up_done_c
        )
    return (
        speed > params.engine_on_kmh
        or state.soc_pct < params.sustain_soc
        or state.coolant_c < params.warm_up_start_c
    )


def _engine_rpm(state: VehicleState, speed: float, *, running: bool) -> float:
    if state.ignition is Ignition.START:
        return 250.0  # the starter cranks the engine
    if not running:
        return 0.0
    idle = 1200.0 if state.coolant_c < 40 else 950.0
    load = 450.0 if speed > state.speed_kmh else 0.0
    return min(4500.0, idle + 17.0 * speed + load)


def _coolant(coolant_c: float, dt: float, *, running: bool) -> float:
    # Warms towards 90 °C in a couple of minutes; cools towards ambient over half an hour.
    if running:
        return coolant_c + (90.0 - coolant_c) * dt / 100.0
    return coolant_c - (coolant_c - _AMBIENT_C) * dt / 1800.0


def _oil_life(oil_pct: float, distance_km: float, params: VehicleParams, *, running: bool) -> float:
    # The oil ages with engine distance only: driving on the battery spares it.
    if not running:
        return oil_pct
    return max(0.0, oil_pct - distance_km / params.oil_life_km * 100)


def _soc(
    state: VehicleState,
    speed: float,
    distance_km: float,
    dt: float,
    params: VehicleParams,
    *,
    running: bool,
    charging: bool,
) -> float:
    kwh = 0.0
    if charging:
        kwh += state.charger_kw * params.charge_efficiency * dt / 3600
    if state.ignition is Ignition.ON and not running:
        kwh -= distance_km * params.ev_kwh_per_km + params.aux_kw * dt / 3600
    # Braking recovers part of the kinetic energy, engine or not.
    v0, v1 = state.speed_kmh / 3.6, speed / 3.6
    if v1 < v0:
        kwh += 0.5 * _MASS_KG * (v0 * v0 - v1 * v1) * params.regen_efficiency / 3.6e6
    return min(100.0, max(0.0, state.soc_pct + kwh / params.battery_kwh * 100))


def _fuel(
    fuel_pct: float, distance_km: float, dt: float, params: VehicleParams, *, running: bool
) -> float:
    if not running:
        return fuel_pct
    litres = distance_km * params.fuel_litres_per_km + params.idle_litres_per_hour * dt / 3600
    return max(0.0, fuel_pct - litres / params.tank_litres * 100)


def _tyre_heat(heat: float, speed: float, dt: float) -> float:
    # Tyres warm towards a speed-dependent level within minutes and cool more slowly.
    goal = min(1.0, speed / 110.0)
    rate = 1 / 300 if goal > heat else 1 / 1200
    return heat + (goal - heat) * min(1.0, dt * rate)


def _pad_wear(
    wear: tuple[float, float, float, float], shed_kmh: float, params: VehicleParams
) -> tuple[float, float, float, float]:
    if shed_kmh <= 0:
        return wear
    front, rear = shed_kmh * params.front_pad_wear, shed_kmh * params.rear_pad_wear
    fl, fr, rl, rr = wear
    return (
        min(100.0, fl + front),
        min(100.0, fr + front),
        min(100.0, rl + rear),
        min(100.0, rr + rear),
    )
