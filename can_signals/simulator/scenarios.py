"""The named scenarios: commute, highway_service, fault, park_charge and service_visit.

Every scenario has a ``short`` variant (a minute or two of scenario time instead of a
quarter of an hour or more) for tests and quick demos, a configurable start odometer and
a seed for the random parts of its speed profiles.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final

from can_signals.simulator.errors import SimulatorError
from can_signals.simulator.model import Gear, Ignition, VehicleState
from can_signals.simulator.scenario import (
    Action,
    ClearDtc,
    ParkingBrake,
    Phase,
    PlugCable,
    RaiseDtc,
    Scenario,
    SelectGear,
    ServiceReset,
    SetIgnition,
    SpeedProfile,
    UnplugCable,
    city,
    constant,
    highway,
)

#: The distance of the reference car's first service (its maintenance plan's oil interval).
SERVICE_THRESHOLD_KM: Final = 15_000.0
_MINUTE: Final = 60_000
MIL: Final = "MalfunctionIndicator"


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    """Choices every scenario accepts.

    Attributes:
        short: Build the short variant (for tests and quick demos).
        start_odometer_km: The odometer at the start; ``None`` for the scenario's default.
        seed: Seed of the random parts (stop-and-go timing, highway pace).
        utc_start_s: The UNIX time the scenario starts at (its GNSS clock and frame
            timestamps); ``None`` for a fixed default, so recordings are reproducible.
            Chained scenarios pass the time the previous one ended.
    """

    short: bool = False
    start_odometer_km: float | None = None
    seed: int = 2016
    utc_start_s: int | None = None


def _start_up(*, unlock: bool = True) -> list[Phase]:
    unlocking = [
        Phase("parked and locked", 2_000),
        Phase("unlock the car", 3_000, (SetIgnition(Ignition.OFF),)),
    ]
    return [
        *(unlocking if unlock else []),
        Phase("accessory mode", 2_000, (SetIgnition(Ignition.ACC),)),
        Phase("ignition on", 2_000, (SetIgnition(Ignition.ON),)),
        Phase("start", 1_000, (SetIgnition(Ignition.START),)),
        Phase(
            "ready: release the parking brake, select D", 3_000,
            (SetIgnition(Ignition.ON), ParkingBrake(engaged=False), SelectGear(Gear.D)),
        ),
    ]  # fmt: skip


def _park(*, reverse: bool = False, lock: bool = True) -> list[Phase]:
    phases = []
    if reverse:
        phases.append(
            Phase("reverse into the parking space", 10_000, (SelectGear(Gear.R),),
                  SpeedProfile(((0, 5.0), (6_000, 0.0))))
        )  # fmt: skip
    phases += [
        Phase("park: P and the parking brake", 3_000,
              (SelectGear(Gear.P), ParkingBrake(engaged=True))),
        Phase("ignition off", 3_000, (SetIgnition(Ignition.OFF),)),
    ]  # fmt: skip
    if lock:
        phases.append(Phase("lock the car", 3_000, (SetIgnition(Ignition.LOCK),)))
    return phases


def _city(name: str, rng: random.Random, duration_ms: int, *actions: Action) -> Phase:
    return Phase(name, duration_ms, tuple(actions), city(rng, duration_ms))


def commute(options: ScenarioOptions) -> Scenario:
    """Ignition on, about 15 minutes of city stop-and-go, reverse park, ignition off."""
    rng = random.Random(options.seed)  # noqa: S311 - a simulation, not security
    initial = VehicleState(odometer_km=_start(options, 12_480.0), soc_pct=64.0)
    drive_ms = _MINUTE if options.short else 15 * _MINUTE
    phases = [*_start_up(), _city("city stop-and-go", rng, drive_ms), *_park(reverse=True)]
    return Scenario("commute", "a city commute: start, stop-and-go traffic, park, lock",
                    initial, tuple(phases))  # fmt: skip


def highway_service(options: ScenarioOptions, cruise_minutes: float | None = None) -> Scenario:
    """A long highway drive that crosses the 15,000 km first-service threshold.

    Args:
        options: The common options; the default start odometer is 30 km before the
            threshold (1.5 km in the short variant).
        cruise_minutes: Minutes of highway cruising (default 20, 40 s when short).
    """
    rng = random.Random(options.seed)  # noqa: S311 - a simulation, not security
    short = options.short
    start_km = _start(options, SERVICE_THRESHOLD_KM - (1.5 if short else 30.0))
    minutes = cruise_minutes if cruise_minutes is not None else (2 / 3 if short else 20.0)
    cruise_ms = round(minutes * _MINUTE)
    town_ms = 40_000 if short else 2 * _MINUTE
    # The first service has not been done yet, and the oil monitor agrees it is near.
    initial = VehicleState(
        odometer_km=start_km, soc_pct=55.0, oil_life_pct=2.4, service_resets=0,
        pad_wear_pct=(21.0, 21.0, 12.0, 12.5),
    )  # fmt: skip
    phases = [
        *_start_up(),
        _city("through town to the motorway", rng, town_ms),
        Phase("on-ramp: accelerate to 120 km/h", 30_000, (), constant(120.0)),
        Phase("highway cruise", cruise_ms, (), highway(rng, cruise_ms)),
        Phase("exit: slow down for the town", 20_000, (), constant(50.0)),
        _city("arrive at the dealer", rng, town_ms),
        *_park(),
    ]
    description = f"a highway drive past the {SERVICE_THRESHOLD_KM:,.0f} km service threshold"
    return Scenario("highway_service", description, initial, tuple(phases))


def fault(options: ScenarioOptions) -> Scenario:
    """A drive where a misfire (P0301, then P0300) lights the MIL, then clears."""
    rng = random.Random(options.seed)  # noqa: S311 - a simulation, not security
    part = 30_000 if options.short else 3 * _MINUTE
    # A low battery keeps the engine running (charge-sustaining), as a misfire needs.
    initial = VehicleState(odometer_km=_start(options, 31_207.0), soc_pct=10.0, fuel_pct=38.0)
    phases = [
        *_start_up(),
        _city("drive", rng, part),
        _city("misfire on cylinder 1: P0301, MIL on", rng, part,
              RaiseDtc("P0301", frozenset({MIL}))),
        _city("the misfire spreads: P0300 as well", rng, part, RaiseDtc("P0300")),
        _city("the misfire stops: codes clear, MIL off", rng, part,
              ClearDtc("P0301", frozenset({MIL})), ClearDtc("P0300")),
        *_park(),
    ]  # fmt: skip
    return Scenario("fault", "a misfire lights the MIL during a drive, later it clears",
                    initial, tuple(phases))  # fmt: skip


def park_charge(options: ScenarioOptions) -> Scenario:
    """Drive to a charger, park, plug in, charge with the SoC rising, unplug, lock."""
    rng = random.Random(options.seed)  # noqa: S311 - a simulation, not security
    drive_ms = 40_000 if options.short else 4 * _MINUTE
    charge_ms = 2 * _MINUTE if options.short else 20 * _MINUTE
    initial = VehicleState(odometer_km=_start(options, 8_902.0), soc_pct=21.0, fuel_pct=71.0)
    phases = [
        *_start_up(),
        _city("drive to the charging station", rng, drive_ms),
        *_park(lock=False),
        Phase("plug in the cable (7.2 kW AC)", 5_000, (PlugCable(7.2),)),
        Phase("charging", charge_ms),
        Phase("unplug the cable", 5_000, (UnplugCable(),)),
        Phase("lock the car", 3_000, (SetIgnition(Ignition.LOCK),)),
    ]
    return Scenario("park_charge", "drive to a charger, charge (SoC rising), unplug",
                    initial, tuple(phases))  # fmt: skip


def service_visit(options: ScenarioOptions) -> Scenario:
    """Drive to the workshop past the service threshold, get serviced, drive home."""
    rng = random.Random(options.seed)  # noqa: S311 - a simulation, not security
    part = 40_000 if options.short else 3 * _MINUTE
    initial = VehicleState(
        odometer_km=_start(options, SERVICE_THRESHOLD_KM + 20.0), oil_life_pct=0.0, service_resets=0
    )
    phases = [
        *_start_up(),
        _city("drive to the workshop", rng, part),
        *_park(lock=False),
        Phase("workshop: oil change, service indicator reset", 10_000, (ServiceReset(),)),
        *_start_up(unlock=False),
        _city("drive home", rng, part),
        *_park(),
    ]
    return Scenario("service_visit", "past the service threshold to the workshop and home again",
                    initial, tuple(phases))  # fmt: skip


def at_rest(after: VehicleState, duration_ms: int) -> Scenario:
    """The car parked after a drive, its ECUs still awake, for ``duration_ms``.

    A parked car's ECUs keep sending a while after it is locked; a bus that goes silent
    instead is, rightly, "state unknown" to the agent. The rest's clock starts at 0 (a
    runner paces from it); its frames' time goes on from the drive's, rounded up to the
    next second.
    """
    resting = replace(after, utc_start_s=after.utc_s + 1, clock_ms=0)
    return Scenario("rest", "parked, the ECUs still awake", resting, (Phase("rest", duration_ms),))


def _start(options: ScenarioOptions, default_km: float) -> float:
    km = options.start_odometer_km
    if km is None:
        return default_km
    if not 0 <= km < 1_600_000:  # what the reference odometer signal can show
        raise SimulatorError(f"start odometer {km} km is outside 0 to 1,600,000 km")
    return km


ScenarioFactory = Callable[[ScenarioOptions], Scenario]
SCENARIOS: Final[Mapping[str, ScenarioFactory]] = MappingProxyType({
    "commute": commute,
    "highway_service": highway_service,
    "fault": fault,
    "park_charge": park_charge,
    "service_visit": service_visit,
})  # fmt: skip


def build_scenario(name: str, options: ScenarioOptions | None = None) -> Scenario:
    """Build the scenario called ``name``.

    Raises:
        SimulatorError: If there is no such scenario or an option is out of range.
    """
    factory = SCENARIOS.get(name)
    if factory is None:
        raise SimulatorError(f"no scenario {name!r}; known: {', '.join(SCENARIOS)}")
    options = options or ScenarioOptions()
    scenario = factory(options)
    if options.utc_start_s is None:
        return scenario
    initial = replace(scenario.initial, utc_start_s=options.utc_start_s)
    return replace(scenario, initial=initial)
