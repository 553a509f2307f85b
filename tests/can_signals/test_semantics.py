"""What a decoded value becomes: KUKSA's timing rules, staleness, units, times.

All timing is on the frames' own clock, so these tests feed frames with chosen
timestamps and never wait; one test replays the same log at two speeds to show the
result does not depend on the wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from pathlib import Path

import can
import pytest

from can_signals.mapping import DEFAULT_INTERVAL_MS, parse_mapping
from can_signals.pipeline import SignalPipeline
from can_signals.update import SignalUpdate
from tests.can_signals.conftest import Harness, HarnessFactory, encode, load_database

SPEED = "Vehicle.Speed"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
ODOMETER = "Vehicle.TraveledDistance"
KM_PER_MILE = 1.609344


ODOMETER_MAPPING = "Vehicle.TraveledDistance:\n  dbc2vss: {signal: ODOMETER}\n"


def _speed_mapping(block: str) -> str:
    return f"Vehicle.Speed:\n  dbc2vss: {{signal: SPEED{block}}}\n"


def _feed(harness: Harness, frames: list[tuple[float, float]]) -> list[tuple[float, object]]:
    for t, kmh in frames:
        harness.send("VEHICLE", t, SPEED=kmh, FUEL=50, RATIO=1)
    return [(u.timestamp, u.value) for u in harness.updates if u.path == SPEED]


# --- KUKSA's interval_ms / on_change ------------------------------------------------------


def test_kuksa_defaults_are_every_1000_ms_changed_or_not() -> None:
    (entry,) = parse_mapping(_speed_mapping("")).entries

    assert DEFAULT_INTERVAL_MS == 1000
    assert (entry.interval_ms, entry.on_change) == (1000, False)


def test_without_interval_or_on_change_the_value_is_sent_every_second(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(_speed_mapping(""))
    # Every 0.125 s for 3.5 s; the speed changes once, at 1.25 s.
    frames = [(n / 8, 30.0 if n < 10 else 31.0) for n in range(29)]

    assert _feed(harness, frames) == [(0.0, 30.0), (1.0, 30.0), (2.0, 31.0), (3.0, 31.0)]


def test_on_change_alone_sends_every_change_and_nothing_else(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(_speed_mapping(", on_change: true"))
    speeds = [30, 30, 31, 31, 31, 30, 32, 32, 33]
    frames = [(n / 100, float(v)) for n, v in enumerate(speeds)]

    assert _feed(harness, frames) == [(0.0, 30.0), (0.02, 31.0), (0.05, 30.0), (0.06, 32.0),
                                      (0.08, 33.0)]  # fmt: skip


def test_on_change_with_an_interval_sends_at_most_once_per_interval_and_only_changes(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(_speed_mapping(", interval_ms: 500, on_change: true"))
    speeds = [1, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4]
    frames = [(n / 4, float(v)) for n, v in enumerate(speeds)]

    # 0.5: changed, due. 1.0 and 1.5: due, unchanged. 1.75: changed, not due. 2.0: both.
    assert _feed(harness, frames) == [(0.0, 1.0), (0.5, 3.0), (2.0, 4.0)]


def test_an_interval_alone_repeats_an_unchanged_value(make_harness: HarnessFactory) -> None:
    harness = make_harness(_speed_mapping(", interval_ms: 500"))
    frames = [(n / 4, 50.0) for n in range(9)]

    assert _feed(harness, frames) == [(t / 2, 50.0) for t in range(5)]


def test_interval_zero_without_on_change_sends_every_frame(make_harness: HarnessFactory) -> None:
    harness = make_harness(_speed_mapping(", interval_ms: 0"))
    frames = [(n / 100, 40.0) for n in range(5)]

    assert _feed(harness, frames) == frames


def test_the_timing_rules_give_the_same_updates_at_speed_0_and_1(
    write_file: object, tmp_path: Path, test_dbc: Path
) -> None:
    vehicle = load_database(test_dbc).get_message_by_name("VEHICLE")
    log = tmp_path / "short.log"
    with can.CanutilsLogWriter(log) as writer:  # 1.2 s of frames, 25 ms apart
        for n in range(49):
            speed = 20 + (n // 3) * 0.5  # changes every 75 ms
            data = encode(vehicle, {"SPEED": speed, "FUEL": 10 + n // 20, "RATIO": 1})
            frame = can.Message(timestamp=5000 + n * 0.025, arbitration_id=vehicle.frame_id,
                                is_extended_id=False, data=data)  # fmt: skip
            writer.on_message_received(frame)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "Vehicle.Speed:\n  dbc2vss: {signal: SPEED, interval_ms: 100, on_change: true}\n"
        "Vehicle.Powertrain.FuelSystem.RelativeLevel:\n"
        "  dbc2vss: {signal: FUEL, interval_ms: 300}\n"
    )

    async def replay(speed: float) -> list[SignalUpdate]:
        pipeline = SignalPipeline.from_files(mapping, [(None, test_dbc)], replay=log, speed=speed)
        async with pipeline:
            return [update async for update in pipeline]

    fast, real_time = asyncio.run(replay(0)), asyncio.run(replay(1))

    assert fast == real_time
    speeds = [u for u in fast if u.path == SPEED]
    assert all(b.timestamp - a.timestamp >= 0.1 - 1e-9 for a, b in itertools.pairwise(speeds))
    assert len(speeds) >= 8
    assert len([u for u in fast if u.path == FUEL]) == 4  # 0, 0.3, 0.6, 0.9 (+1.2 s: 5000.3…)


# --- staleness --------------------------------------------------------------------------


def test_a_signal_that_stops_goes_stale_on_the_frames_clock_and_recovers(
    make_harness: HarnessFactory,
) -> None:
    # VEHICLE's cycle time is 100 ms: stale after 10 cycles, 1 s (the minimum).
    harness = make_harness(_speed_mapping(", on_change: true") + ODOMETER_MAPPING)
    for n in range(11):  # VEHICLE until 1.0 s
        harness.send("VEHICLE", n / 10, SPEED=60, RATIO=1)
    for n in range(11, 31):  # then only CLUSTER, another mapped message, until 3.0 s
        harness.send("CLUSTER", n / 10, ODOMETER=100)
    harness.send("VEHICLE", 3.1, SPEED=60, RATIO=1)

    speed = [u for u in harness.updates if u.path == SPEED]
    assert [u.value for u in speed] == [60.0, None, 60.0]
    stale_at = speed[1].timestamp
    assert 2.0 < stale_at <= 2.0 + 0.25 + 0.1  # 1 s after the last frame, on the next check
    assert speed[1].unit == "km/h"
    assert speed[2].timestamp == 3.1
    # The odometer kept arriving: never stale.
    assert None not in harness.values(ODOMETER)


def test_other_traffic_moves_the_clock_too(make_harness: HarnessFactory) -> None:
    harness = make_harness(_speed_mapping(", on_change: true, stale_ms: 300"))
    harness.send("VEHICLE", 0.0, SPEED=60, RATIO=1)
    listener = harness.processor.bus("can0")
    for n in range(1, 11):  # frames nobody maps, until 1.0 s
        listener(can.Message(timestamp=n / 10, arbitration_id=0x7FF, is_extended_id=False))

    assert harness.values(SPEED) == [60.0, None]
    assert 0.3 < harness.timestamps(SPEED)[1] <= 0.3 + 0.25 + 0.1


@pytest.mark.parametrize(("stale_ms", "stale"), [(200, True), (0, False)])
def test_stale_ms_sets_the_timeout_and_zero_means_never(
    make_harness: HarnessFactory, stale_ms: int, stale: bool
) -> None:
    harness = make_harness(
        _speed_mapping(f", on_change: true, stale_ms: {stale_ms}") + ODOMETER_MAPPING
    )
    harness.send("VEHICLE", 0.0, SPEED=60, RATIO=1)
    for n in range(1, 21):
        harness.send("CLUSTER", n / 10, ODOMETER=100)

    assert (None in harness.values(SPEED)) is stale


def test_a_signal_missing_from_short_frames_goes_stale(make_harness: HarnessFactory) -> None:
    harness = make_harness(
        _speed_mapping(", on_change: true")
        + "Vehicle.Chassis.ParkingBrake.IsEngaged:\n"
        + "  dbc2vss: {signal: PARK_BRAKE, on_change: true}\n"
    )
    vehicle = harness.database.get_message_by_name("VEHICLE")
    for n in range(31):
        data = encode(vehicle, {"SPEED": 20, "PARK_BRAKE": 1, "RATIO": 1})
        harness.send("VEHICLE", n / 10, data=data if n <= 5 else data[:2])

    assert harness.values("Vehicle.Chassis.ParkingBrake.IsEngaged") == [True, None]
    assert harness.values(SPEED) == [20.0]  # still in the short frames
    stale_at = harness.timestamps("Vehicle.Chassis.ParkingBrake.IsEngaged")[1]
    assert 1.5 < stale_at <= 1.5 + 0.25 + 0.1  # 1 s after the last frame that carried it


# --- units ---------------------------------------------------------------------------------

UNITS_DBC = """VERSION ""

BU_: ECU

BO_ 1 US: 8 ECU
 SG_ SPEED_MPH : 0|8@1+ (1,0) [0|255] "mph" ECU
 SG_ ODO_MILES : 8|24@1+ (1,0) [0|16777215] "miles" ECU
 SG_ TYRE_PSI : 32|8@1+ (1,0) [0|255] "psi" ECU
 SG_ SERVICE_DAYS : 40|8@1+ (1,0) [0|255] "days" ECU

BO_ 2 EU: 8 ECU
 SG_ ODO_KM : 0|24@1+ (0.1,0) [0|1677721.5] "km" ECU
 SG_ ODO_PLAIN : 24|24@1+ (1,0) [0|16777215] "" ECU
 SG_ SPEED_KPH : 48|8@1+ (1,0) [0|255] "kph" ECU
 SG_ GNSS_TIME : 56|8@1+ (1,0) [0|255] "" ECU
"""


@pytest.mark.parametrize(
    ("node", "message", "values", "expected"),
    [
        ("Vehicle.Speed:\n  dbc2vss: {signal: SPEED_MPH}", "US", {"SPEED_MPH": 50},
         50 * KM_PER_MILE),
        ("Vehicle.TraveledDistance:\n  dbc2vss: {signal: ODO_MILES}", "US",
         {"ODO_MILES": 15589}, round(15589 * KM_PER_MILE * 1000)),
        ("Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure:\n  dbc2vss: {signal: TYRE_PSI}",
         "US", {"TYRE_PSI": 35}, round(35 * 6.894757293168)),
        ("Vehicle.Service.TimeToService:\n  dbc2vss: {signal: SERVICE_DAYS}", "US",
         {"SERVICE_DAYS": 30}, 30 * 86400),
        ("Vehicle.TraveledDistance:\n  dbc2vss: {signal: ODO_KM}", "EU", {"ODO_KM": 12345.6},
         12345600),
        ("Vehicle.Speed:\n  dbc2vss: {signal: SPEED_KPH}", "EU", {"SPEED_KPH": 88}, 88.0),
        # A VSS 4 mapping: TraveledDistance was km then; a DBC without a unit.
        (("Vehicle.TraveledDistance:\n  datatype: float\n  unit: km\n"
          "  dbc2vss: {signal: ODO_PLAIN}"), "EU", {"ODO_PLAIN": 4321}, 4321000),
        # The declared unit is the unit of the transform's result.
        (("Vehicle.TraveledDistance:\n  unit: km\n  dbc2vss:\n    signal: ODO_PLAIN\n"
          "    transform: {math: x / 10}"), "EU", {"ODO_PLAIN": 4321}, 432100),
        (("Vehicle.TraveledDistance:\n  unit: km\n  dbc2vss:\n    signal: ODO_PLAIN\n"
          "    transform:\n      mapping:\n        - {from: 7, to: 1.5}"), "EU",
         {"ODO_PLAIN": 7}, 1500),
    ],
    ids=["mph", "miles", "psi", "days", "km", "kph", "vss4-km", "math-km", "table-km"],
)  # fmt: skip
def test_units_are_normalised_to_the_catalogue(
    make_harness: HarnessFactory, node: str, message: str, values: dict[str, float],
    expected: float,
) -> None:  # fmt: skip
    harness = make_harness(node + "\n", dbc=UNITS_DBC)
    if "TraveledDistance" in node:
        harness.processor.seed_odometer(expected)  # an odometer kept: no wait to confirm

    harness.send(message, 1.0, data=encode(harness.database.get_message_by_name(message), values))

    (update,) = harness.updates
    assert update.value == pytest.approx(expected)
    assert type(update.value) is type(expected)
    units = {"Vehicle.Speed": "km/h", "Vehicle.TraveledDistance": "m",
             "Vehicle.Service.TimeToService": "s"}  # fmt: skip
    assert update.unit == units.get(update.path, "kPa")


def test_a_gnss_time_becomes_an_iso8601_string(make_harness: HarnessFactory) -> None:
    harness = make_harness(
        "Vehicle.CurrentLocation.Timestamp:\n  dbc2vss: {signal: UTC, on_change: true}\n"
    )
    moments = [datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)]

    for t, moment in enumerate(moments):
        harness.send("GNSS", float(t), UTC=int(moment.timestamp()))

    assert harness.values("Vehicle.CurrentLocation.Timestamp") == [
        "2024-02-29T23:59:58Z", "2030-01-01T00:00:00Z",
    ]  # fmt: skip
    assert all(
        datetime.fromisoformat(str(v)) == m
        for v, m in zip(harness.values("Vehicle.CurrentLocation.Timestamp"), moments, strict=True)
    )
