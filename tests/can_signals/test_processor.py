"""The frame processor on frames the car should not send: wrong lengths, noise, garbage values.

Every frame is counted, nothing raises, and a value that cannot be right is rejected,
counted by reason, and never reaches the rest of touchpoint.
"""

from __future__ import annotations

from pathlib import Path

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from can_signals.binding import Binding, bind
from can_signals.catalogue import CATALOGUE, DataType
from can_signals.dbc import load_dbc
from can_signals.mapping import parse_mapping
from can_signals.processor import FrameProcessor
from can_signals.update import SignalUpdate
from tests.can_signals.conftest import (
    FAULTS_ID,
    FULL_MAPPING,
    TEST_DBC,
    Harness,
    HarnessFactory,
    load_database,
)

SPEED = "Vehicle.Speed"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
PARKING_BRAKE = "Vehicle.Chassis.ParkingBrake.IsEngaged"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
ODOMETER = "Vehicle.TraveledDistance"
OIL_LIFE = "Vehicle.Powertrain.CombustionEngine.EngineOil.RelativeLifeRemaining"
DISTANCE_TO_SERVICE = "Vehicle.Service.DistanceToService"
FRONT_TYRE = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"
REAR_TYRE = "Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.Pressure"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
METRES_PER_MILE = 1609.344


@pytest.fixture
def harness(make_harness: HarnessFactory) -> Harness:
    return make_harness(FULL_MAPPING)


# --- frame lengths -----------------------------------------------------------------------


def test_a_short_frame_leaves_missing_signals_absent_not_zero(harness: Harness) -> None:
    vehicle = harness.database.get_message_by_name("VEHICLE")
    full = vehicle.encode({"SPEED": 42.5, "GEAR": "D", "IGN": "ON", "PARK_BRAKE": 1,
                           "FUEL": 60, "RATIO": 4, "RPM": 2000})  # fmt: skip

    harness.send("VEHICLE", 1.0, data=full[:2])  # SPEED only

    assert harness.values(SPEED) == [42.5]
    for path in (GEAR, PARKING_BRAKE, FUEL, RPM, "Vehicle.LowVoltageSystemState"):
        assert harness.values(path) == [], path
        assert harness.rejections("truncated", path) == 1
    stats = harness.processor.stats()
    assert stats.short_frames == 1
    assert stats.updates == 1

    harness.send("VEHICLE", 1.1, data=full)  # the whole frame: now they are there

    assert harness.values(GEAR) == [127]
    assert harness.values(PARKING_BRAKE) == [True]
    assert harness.values(FUEL) == [60]
    assert harness.values(RPM) == [2000.0]


def test_a_big_endian_signal_cut_by_the_frame_end_is_absent(harness: Harness) -> None:
    # RPM is Motorola, bytes 5 and 6: a 6-byte frame holds half of it.
    vehicle = harness.database.get_message_by_name("VEHICLE")
    data = vehicle.encode({"SPEED": 10, "GEAR": "P", "IGN": "OFF", "PARK_BRAKE": 0,
                           "FUEL": 50, "RATIO": 1, "RPM": 800})  # fmt: skip

    harness.send("VEHICLE", 1.0, data=data[:6])

    assert harness.values(RPM) == []
    assert harness.values(FUEL) == [50]
    assert harness.rejections("truncated", RPM) == 1


def test_a_long_frame_is_decoded(harness: Harness) -> None:
    vehicle = harness.database.get_message_by_name("VEHICLE")
    data = vehicle.encode({"SPEED": 88.8, "GEAR": "R", "IGN": "ON", "PARK_BRAKE": 0,
                           "FUEL": 12, "RATIO": 5, "RPM": 1000})  # fmt: skip

    harness.send("VEHICLE", 1.0, data=data + b"\xff" * 4)

    assert harness.values(SPEED) == [88.8]
    assert harness.values(GEAR) == [-1]
    assert harness.processor.stats().long_frames == 1


def test_an_empty_frame_of_a_mapped_id_is_counted_not_decoded_to_zeros(
    harness: Harness,
) -> None:
    harness.send("VEHICLE", 1.0, data=b"")

    assert harness.updates == []
    assert harness.processor.stats().short_frames == 1


def test_remote_and_error_frames_are_counted_and_ignored(harness: Harness) -> None:
    listener = harness.processor.bus("can0")
    listener(can.Message(timestamp=1.0, arbitration_id=0x100, is_remote_frame=True, dlc=8,
                         is_extended_id=False))  # fmt: skip
    listener(can.Message(timestamp=1.1, arbitration_id=0x100, is_error_frame=True,
                         is_extended_id=False, data=b"\xff" * 8))  # fmt: skip

    assert harness.updates == []
    assert harness.processor.stats().error_or_remote_frames == 2


def test_standard_and_extended_ids_do_not_mix(harness: Harness) -> None:
    listener = harness.processor.bus("can0")
    payload = b"\x01\x03" + b"\x00" * 6
    # 0x100 is VEHICLE only as a standard ID; FAULTS only as an extended one.
    listener(can.Message(timestamp=1.0, arbitration_id=0x100, is_extended_id=True, data=payload))
    listener(can.Message(timestamp=1.1, arbitration_id=FAULTS_ID & 0x7FF, is_extended_id=False,
                         data=payload))  # fmt: skip
    listener(can.Message(timestamp=1.2, arbitration_id=FAULTS_ID, is_extended_id=True,
                         data=payload))  # fmt: skip

    stats = harness.processor.stats()
    assert stats.unmapped_frames == 2
    assert stats.mapped_frames == 1
    assert stats.decodes == 1  # only the extended FAULTS frame was decoded


# --- random frames -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_dbc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("noise") / "powertrain.dbc"
    path.write_text(TEST_DBC)
    return path


@pytest.fixture(scope="module")
def noise_binding(noise_dbc: Path) -> Binding:
    # The DBC describes can0 only: can1's frames are frames on a bus without a DBC.
    return bind(parse_mapping(FULL_MAPPING), [load_dbc(noise_dbc, "can0")])


@pytest.fixture(scope="module")
def noise_lengths(noise_dbc: Path) -> dict[tuple[int, bool], int]:
    """Every message of the DBC (all are mapped) by (id, extended): its length."""
    return {(m.frame_id, m.is_extended_frame): m.length for m in load_database(noise_dbc).messages}


_KNOWN_IDS = [(0x100, False), (0x611, False), (0x300, False), (0x301, False), (FAULTS_ID, True)]

frame_strategy = st.tuples(
    st.one_of(
        st.sampled_from(_KNOWN_IDS),
        st.integers(0, 0x7FF).map(lambda i: (i, False)),
        st.integers(0, 0x1FFFFFFF).map(lambda i: (i, True)),
    ),
    st.one_of(st.binary(max_size=8), st.binary(min_size=9, max_size=64)),
    st.sampled_from(["data", "data", "data", "data", "remote", "error"]),
    st.sampled_from(["can0", "can0", "can0", "can1"]),
    st.floats(0.0, 2.0, allow_nan=False),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(frame_strategy, max_size=80))
def test_random_frames_never_raise_and_every_frame_is_counted(
    noise_binding: Binding,
    noise_lengths: dict[tuple[int, bool], int],
    frames: list[tuple[tuple[int, bool], bytes, str, str, float]],
) -> None:
    updates: list[SignalUpdate] = []
    processor = FrameProcessor(noise_binding, updates.append)
    lengths = noise_lengths
    now = 1000.0
    for (can_id, extended), data, kind, bus, gap in frames:
        now += gap
        message = can.Message(
            timestamp=now, arbitration_id=can_id, is_extended_id=extended,
            is_remote_frame=kind == "remote", is_error_frame=kind == "error",
            data=None if kind == "remote" else data, is_fd=len(data) > 8, channel=bus,
        )  # fmt: skip
        processor.bus(bus)(message)

    on_can0 = [f for f in frames if f[3] == "can0"]
    mapped = [f for f in on_can0 if f[0] in lengths]
    data_frames = [f for f in mapped if f[2] == "data"]
    stats = processor.stats()
    assert stats.frames == len(frames)
    assert stats.frames_without_dbc == len(frames) - len(on_can0)
    assert stats.mapped_frames == len(mapped)
    assert stats.unmapped_frames == len(on_can0) - len(mapped)
    assert stats.frames == stats.mapped_frames + stats.unmapped_frames + stats.frames_without_dbc
    assert stats.error_or_remote_frames == len(mapped) - len(data_frames)
    assert stats.short_frames == sum(1 for f in data_frames if len(f[1]) < lengths[f[0]])
    assert stats.long_frames == sum(1 for f in data_frames if len(f[1]) > lengths[f[0]])
    assert stats.updates == len(updates)
    assert stats.decodes <= len(data_frames)
    for update in updates:
        _check_update(update)


def _check_update(update: SignalUpdate) -> None:
    """An update that left the processor has the catalogue's type and range."""
    spec = CATALOGUE[update.path]
    assert update.bus == "can0"
    assert update.unit == spec.unit
    value = update.value
    if value is None:
        return
    if spec.datatype == DataType.BOOLEAN:
        assert isinstance(value, bool)
    elif spec.datatype == DataType.STRING_ARRAY:
        assert isinstance(value, tuple)
    elif spec.datatype == DataType.STRING:
        assert isinstance(value, str)
        assert spec.allowed is None or value in spec.allowed
    else:
        assert isinstance(value, int | float)
        assert not isinstance(value, bool)
        limits = spec.datatype.integer_range
        if limits is not None:
            assert isinstance(value, int)
            assert limits[0] <= value <= limits[1]
        assert spec.minimum is None or value >= spec.minimum
        assert spec.maximum is None or value <= spec.maximum


# --- implausible values --------------------------------------------------------------------


def _odometer(harness: Harness, t: float, miles: int) -> None:
    harness.send("CLUSTER", t, ODOMETER=miles)


def test_an_odometer_jump_and_a_step_back_are_rejected_and_later_values_accepted(
    harness: Harness,
) -> None:
    harness.processor.seed_odometer(1000 * METRES_PER_MILE)  # what the last run kept
    harness.send("VEHICLE", 0.0, SPEED=100)
    _odometer(harness, 0.0, 1000)
    _odometer(harness, 1.0, 1500)  # 500 miles in a second
    _odometer(harness, 2.0, 999)  # backwards
    _odometer(harness, 3.0, 1000)  # the same again: no news
    _odometer(harness, 60.0, 1001)  # a mile in a minute at 100 km/h: fine

    assert harness.values(ODOMETER) == [round(1000 * METRES_PER_MILE),
                                        round(1001 * METRES_PER_MILE)]  # fmt: skip
    assert harness.rejections("odometer_jump", ODOMETER) == 1
    assert harness.rejections("odometer_backwards", ODOMETER) == 1
    assert [key for key in harness.processor.stats().rejections if key[1] == ODOMETER] == [
        ("odometer_jump", ODOMETER), ("odometer_backwards", ODOMETER),
    ]  # fmt: skip


def test_the_odometer_bound_follows_the_speed_seen(harness: Harness) -> None:
    harness.processor.seed_odometer(1000 * METRES_PER_MILE)
    harness.send("VEHICLE", 0.0, SPEED=0)
    _odometer(harness, 0.0, 1000)
    # Parked: one mile (the odometer's resolution) may appear at once, two may not.
    _odometer(harness, 10.0, 1002)
    _odometer(harness, 11.0, 1001)

    assert harness.values(ODOMETER) == [round(1000 * METRES_PER_MILE),
                                        round(1001 * METRES_PER_MILE)]  # fmt: skip
    assert harness.rejections("odometer_jump", ODOMETER) == 1


def test_a_seeded_odometer_refuses_lower_readings(harness: Harness) -> None:
    harness.processor.seed_odometer(2000 * METRES_PER_MILE)

    _odometer(harness, 0.0, 1999)
    _odometer(harness, 1.0, 2000)

    assert harness.values(ODOMETER) == [round(2000 * METRES_PER_MILE)]
    assert harness.rejections("odometer_backwards", ODOMETER) == 1


def test_a_speed_jump_is_rejected_and_later_values_accepted(harness: Harness) -> None:
    harness.send("VEHICLE", 0.0, SPEED=50)
    harness.send("VEHICLE", 0.1, SPEED=200)  # +150 km/h in 0.1 s
    harness.send("VEHICLE", 0.2, SPEED=55)
    harness.send("VEHICLE", 6.0, SPEED=200)  # after 5.8 s a car could be there

    assert harness.values(SPEED) == [50, 55, 200]
    assert harness.rejections("speed_jump", SPEED) == 1


def test_dbc_and_catalogue_range_violations(harness: Harness) -> None:
    cluster = harness.database.get_message_by_name("CLUSTER")
    vehicle = harness.database.get_message_by_name("VEHICLE")
    # FUEL's DBC range is 0..100 but its 8 bits carry up to 255.
    fuel_200 = bytes(vehicle.encode({"SPEED": 0, "GEAR": 0, "IGN": 0, "PARK_BRAKE": 0,
                                     "FUEL": 200, "RATIO": 1, "RPM": 0}, strict=False))  # fmt: skip
    harness.send("VEHICLE", 0.0, data=fuel_200)
    # OIL_LIFE's DBC allows 255 %, the catalogue stops at 100 %.
    harness.send("CLUSTER", 0.1, data=bytes(cluster.encode(
        {"ODOMETER": 1, "SERVICE_KM": 0, "OIL_LIFE": 150})))  # fmt: skip
    harness.send("CLUSTER", 0.2, data=bytes(cluster.encode(
        {"ODOMETER": 1, "SERVICE_KM": 0, "OIL_LIFE": 80})))  # fmt: skip

    assert harness.values(FUEL) == []
    assert harness.rejections("out_of_dbc_range", FUEL) == 1
    assert harness.values(OIL_LIFE) == [80]
    assert harness.rejections("out_of_range", OIL_LIFE) == 1


def test_a_transform_dividing_by_zero_is_counted_as_failed(harness: Harness) -> None:
    for t, ratio in enumerate([4, 0, 0, 5]):
        harness.send("VEHICLE", float(t), RATIO=ratio)

    assert harness.values(DISTANCE_TO_SERVICE) == [100 / 4, 100 / 5]
    # A rejected value makes the processor look at the next identical frame again.
    assert harness.rejections("transform_failed", DISTANCE_TO_SERVICE) == 2


def test_a_value_with_no_table_entry_is_counted(harness: Harness) -> None:
    # The mapping has no entry for S (4), and 6 is in neither table.
    for t, gear in enumerate([3, 4, 6, 3, 0]):
        harness.send("VEHICLE", float(t), GEAR=gear)

    assert harness.values(GEAR) == [127, 126]
    assert harness.rejections("no_table_entry", GEAR) == 2


# --- multiplexed frames -----------------------------------------------------------------


def test_a_multiplexed_message_decodes_each_branch_and_the_common_part(
    harness: Harness,
) -> None:
    tyres = harness.database.get_message_by_name("TYRES")
    frames = [
        bytes(tyres.encode({"TYRE_IDX": 0, "PRESSURE_FRONT": 240, "SOC": 80})),
        bytes(tyres.encode({"TYRE_IDX": 1, "PRESSURE_REAR": 2.2, "SOC": 80.5})),
        # A branch the DBC does not define (cantools will not even encode it).
        bytes([2, 0xAA, int(81 / 0.5), 0, 0, 0, 0, 0]),
        bytes(tyres.encode({"TYRE_IDX": 0, "PRESSURE_FRONT": 248, "SOC": 81})),
    ]
    for t, data in enumerate(frames):
        harness.send("TYRES", float(t), data=data)

    assert harness.values(FRONT_TYRE) == [240, 248]
    assert harness.values(REAR_TYRE) == [220]  # 2.2 bar in kPa
    assert harness.values(SOC) == [80.0, 80.5, 81.0]
    assert harness.processor.stats().rejections == {}


def test_a_mux_branch_the_mapping_does_not_read_is_no_failure(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(
        f"{FRONT_TYRE}:\n  dbc2vss: {{signal: PRESSURE_FRONT, on_change: true}}\n"
    )
    tyres = harness.database.get_message_by_name("TYRES")
    for t in range(6):
        values = {"TYRE_IDX": t % 2, "PRESSURE_FRONT": 200 + 4 * t, "PRESSURE_REAR": 2.0,
                  "SOC": 50}  # fmt: skip
        harness.send("TYRES", float(t), data=bytes(tyres.encode(values, strict=False)))

    assert harness.values(FRONT_TYRE) == [200, 208, 216]
    assert harness.processor.stats().rejections == {}
