"""A KUKSA ``vss_dbc.json`` mapping for a DBC the code has never seen: opendbc's Tesla Model 3.

The mapping is written in KUKSA's nested VSS tree format (what ``vspec export json``
makes of an overlay), with KUKSA's habits: ``mapping`` transforms keyed by the DBC's
value-table labels, a ``math`` transform, the old ``dbc`` synonym of ``dbc2vss``, a
``vss2dbc`` block (for writing to CAN, which touchpoint ignores), branch nodes with
descriptions and uuids. The DBC's VCFRONT_LVPowerState is multiplexed (Mux0/Mux1
alternate on the real car), and one mapped signal sits in each branch.

Frames are generated with cantools from a scripted timeline, replayed from a candump log
written by python-can, and sent on a live virtual bus; expectations come from the
timeline and from cantools' own decoding, never from the code under test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import pytest
import yaml
from cantools.database.can import Database

from can_signals.catalogue import GEAR_DRIVE, GEAR_PARK
from can_signals.pipeline import PipelineStats, SignalPipeline
from can_signals.sources import BusConfig
from can_signals.update import SignalUpdate, SignalValue
from tests.can_signals.conftest import encode, load_database

T0 = 1000.0
DURATION = 4.0

SPEED = "Vehicle.Speed"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
PARK_LOCK = "Vehicle.Powertrain.Transmission.IsParkLockEngaged"
ENGINE_SPEED = "Vehicle.Powertrain.CombustionEngine.Speed"
CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
POWER_STATE = "Vehicle.LowVoltageSystemState"
PARKING_BRAKE = "Vehicle.Chassis.ParkingBrake.IsEngaged"
TYRE_LAMP = "Vehicle.Diagnostics.Lamp.TirePressure"
DTC_LIST = "Vehicle.Diagnostics.DTCList"
DTC_COUNT = "Vehicle.Diagnostics.DTCCount"

GEAR_TABLE = {"DI_GEAR_P": GEAR_PARK, "DI_GEAR_R": -1, "DI_GEAR_N": 0, "DI_GEAR_D": GEAR_DRIVE}
PARK_LOCK_TABLE = {
    "DI_GEAR_P": True, "DI_GEAR_R": False, "DI_GEAR_N": False, "DI_GEAR_D": False,
    "DI_GEAR_INVALID": False,
}  # fmt: skip
POWER_TABLE = {
    "VEHICLE_POWER_STATE_OFF": "OFF",
    "VEHICLE_POWER_STATE_CONDITIONING": "ACC",
    "VEHICLE_POWER_STATE_ACCESSORY": "ACC",
    "VEHICLE_POWER_STATE_DRIVE": "ON",
}
PARK_BRAKE_TABLE = {"APPLIED": True, "RELEASING": True, "RELEASED": False}
ENGINE_MATH = "floor(abs(x) * 9 + 0.5)"  # the axle turns 9 times slower than the motor


def _pairs(table: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"from": label, "to": value} for label, value in table.items()]


def _sensor(datatype: str, block: dict[str, Any], unit: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "datatype": datatype,
        "description": "Mapped for the test.",
        "type": "sensor",
        "uuid": "00000000000000000000000000000000",
        **block,
    }
    if unit is not None:
        node["unit"] = unit
    return node


def _branch(children: dict[str, Any]) -> dict[str, Any]:
    return {"children": children, "description": "A branch.", "type": "branch", "uuid": "0" * 32}


def kuksa_tree() -> dict[str, Any]:
    """The mapping as KUKSA's vss_dbc.json nests it."""
    gear_block = {"interval_ms": 0, "on_change": True, "signal": "DI_gear"}
    parking_brake = _sensor("boolean", {
        "dbc2vss": {"signal": "DI_parkBrakeState", "on_change": True,
                    "transform": {"mapping": _pairs(PARK_BRAKE_TABLE)}},
        "vss2dbc": {"signal": "DI_epbRequest",
                    "transform": {"mapping": [{"from": True, "to": "DI_EPBREQUEST_PARK"}]}},
    })  # fmt: skip
    parking_brake["type"] = "actuator"
    return {
        "Vehicle": _branch({
            "Speed": _sensor("float", {"dbc": {"signal": "DI_vehicleSpeed", "on_change": True}},
                             unit="km/h"),
            "LowVoltageSystemState": _sensor("string", {"dbc2vss": {
                "signal": "VCFRONT_vehiclePowerState", "on_change": True,
                "transform": {"mapping": _pairs(POWER_TABLE)}}}),
            "Chassis": _branch({"ParkingBrake": _branch({"IsEngaged": parking_brake})}),
            "Diagnostics": _branch({"Lamp": _branch({"TirePressure": _sensor("boolean", {
                "dbc2vss": {"signal": "VCFRONT_tpmsLVRequest", "on_change": True,
                            "transform": {"mapping": _pairs({
                                "LV_OFF": False, "LV_ON": False, "LV_GOING_DOWN": False,
                                "LV_FAULT": True})}}})})}),
            "Powertrain": _branch({
                "Transmission": _branch({
                    "SelectedGear": _sensor("int8", {"dbc2vss": {
                        **gear_block, "transform": {"mapping": _pairs(GEAR_TABLE)}}}),
                    "IsParkLockEngaged": _sensor("boolean", {"dbc2vss": {
                        **gear_block, "transform": {"mapping": _pairs(PARK_LOCK_TABLE)}}}),
                }),
                "CombustionEngine": _branch({"Speed": _sensor("float", {"dbc2vss": {
                    "signal": "DI_axleSpeed", "interval_ms": 500,
                    "transform": {"math": ENGINE_MATH}}}, unit="rpm")}),
                "TractionBattery": _branch({"Charging": _branch({"IsCharging": _sensor(
                    "boolean", {"dbc2vss": {"signal": "VCFRONT_pcsLVState", "on_change": True,
                                            "transform": {"mapping": _pairs({
                                                "LV_ON": True, "LV_OFF": False,
                                                "LV_GOING_DOWN": False, "LV_FAULT": False,
                                            })}}})})}),
            }),
        })
    }  # fmt: skip


def flat_overlay(tree: dict[str, Any]) -> dict[str, Any]:
    """The same mapping as a KUKSA overlay: one entry per dotted VSS path."""
    flat: dict[str, Any] = {}

    def visit(path: str, node: dict[str, Any]) -> None:
        if "children" in node:
            for name, child in node["children"].items():
                visit(f"{path}.{name}", child)
        else:
            flat[path] = {k: v for k, v in node.items() if k not in ("uuid", "description")}

    for name, node in tree.items():
        visit(name, node)
    return flat


# --- the scripted drive --------------------------------------------------------------


def _phase(t: float, phases: list[tuple[float, str]]) -> str:
    """The label of the last phase starting at or before ``t`` (seconds after T0)."""
    label = phases[0][1]
    for start, name in phases:
        if t + 1e-9 >= start:
            label = name
    return label


GEAR_PHASES = [(0.0, "DI_GEAR_P"), (1.0, "DI_GEAR_INVALID"), (1.2, "DI_GEAR_D"),
               (3.0, "DI_GEAR_SNA"), (3.1, "DI_GEAR_D"), (3.5, "DI_GEAR_N")]  # fmt: skip
BRAKE_PHASES = [(0.0, "APPLIED"), (1.2, "RELEASING"), (1.4, "RELEASED")]
POWER_PHASES = [(0.0, "VEHICLE_POWER_STATE_OFF"), (0.2, "VEHICLE_POWER_STATE_ACCESSORY"),
                (0.4, "VEHICLE_POWER_STATE_DRIVE")]  # fmt: skip
PCS_PHASES = [(0.0, "LV_OFF"), (2.0, "LV_ON")]
TPMS_PHASES = [(0.0, "LV_ON"), (2.5, "LV_FAULT"), (3.0, "LV_ON")]


@dataclass(frozen=True)
class Drive:
    """The generated frames and what cantools itself decodes from them."""

    frames: list[can.Message]
    decoded: list[tuple[float, str, dict[str, Any]]]  # (timestamp, message, signals)


def make_drive(database: Database) -> Drive:
    frames: list[can.Message] = []
    decoded: list[tuple[float, str, dict[str, Any]]] = []

    def add(t: float, name: str, values: dict[str, Any]) -> None:
        message = database.get_message_by_name(name)
        data = encode(message, values)
        timestamp = round(T0 + t, 6)
        frames.append(
            can.Message(timestamp=timestamp, arbitration_id=message.frame_id,
                        is_extended_id=False, data=data, channel="can0")
        )  # fmt: skip
        decoded.append((timestamp, name, dict(message.decode_simple(data))))

    for step in range(int(DURATION / 0.02)):
        t = step * 0.02
        add(t, "DI_speed", {"DI_vehicleSpeed": -40 + 0.08 * (500 + 2 * step)})
        add(t, "DI_torque", {"DI_axleSpeed": round(step * 0.7, 1) * (-1) ** step})
        if step % 5 == 0:
            add(t, "DI_systemStatus", {"DI_gear": _phase(t, GEAR_PHASES)})
            add(t, "DI_state", {"DI_parkBrakeState": _phase(t, BRAKE_PHASES)})
        if step % 5 in (0, 2):
            mux = 0 if step % 5 == 0 else 1
            add(t, "VCFRONT_LVPowerState", {
                "VCFRONT_LVPowerStateIndex": mux,
                "VCFRONT_vehiclePowerState": _phase(t, POWER_PHASES),
                "VCFRONT_pcsLVState": _phase(t, PCS_PHASES),
                "VCFRONT_tpmsLVRequest": _phase(t, TPMS_PHASES),
            })  # fmt: skip
    return Drive(frames, decoded)


def _changes(values: list[Any]) -> list[Any]:
    """``values`` without consecutive repeats: what on_change forwards."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def _signal(drive: Drive, message: str, signal: str) -> list[tuple[float, Any]]:
    return [(t, values[signal]) for t, name, values in drive.decoded
            if name == message and signal in values]  # fmt: skip


def _label(value: Any) -> str:
    return str(value)  # cantools decodes choices to NamedSignalValue


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tesla(tesla_party_dbc: Path) -> Database:
    return load_database(tesla_party_dbc)


@pytest.fixture(scope="module")
def drive(tesla: Database) -> Drive:
    return make_drive(tesla)


@pytest.fixture
def drive_log(drive: Drive, tmp_path: Path) -> Path:
    path = tmp_path / "tesla.log"
    with can.CanutilsLogWriter(path) as writer:
        for frame in drive.frames:
            writer.on_message_received(frame)
    return path


@pytest.fixture
def json_mapping(tmp_path: Path) -> Path:
    path = tmp_path / "vss_dbc.json"
    path.write_text(json.dumps(kuksa_tree(), indent=2))
    return path


async def _replay(mapping: Path, dbc: Path, log: Path) -> tuple[list[SignalUpdate], PipelineStats]:
    pipeline = SignalPipeline.from_files(mapping, [(None, dbc)], replay=log, speed=0)
    async with pipeline:
        updates = [update async for update in pipeline]
    return updates, pipeline.stats()


def _values(updates: list[SignalUpdate], path: str) -> list[SignalValue | None]:
    return [u.value for u in updates if u.path == path]


@pytest.fixture
def replayed(
    json_mapping: Path, tesla_party_dbc: Path, drive_log: Path
) -> tuple[list[SignalUpdate], PipelineStats]:
    return asyncio.run(_replay(json_mapping, tesla_party_dbc, drive_log))


Replayed = tuple[list[SignalUpdate], PipelineStats]


# --- the replay ------------------------------------------------------------------------


def test_speed_is_every_change_of_the_decoded_value(replayed: Replayed, drive: Drive) -> None:
    updates, _ = replayed
    expected = _changes([v for _, v in _signal(drive, "DI_speed", "DI_vehicleSpeed")])

    assert _values(updates, SPEED) == expected
    assert len(expected) == DURATION / 0.02
    assert {u.unit for u in updates if u.path == SPEED} == {"km/h"}


def test_gear_labels_map_to_vss_gears_and_glitches_are_counted(
    replayed: Replayed, drive: Drive
) -> None:
    updates, stats = replayed
    labels = [_label(v) for _, v in _signal(drive, "DI_systemStatus", "DI_gear")]
    expected = _changes([GEAR_TABLE[label] for label in labels if label in GEAR_TABLE])
    unmapped = sum(1 for label in labels if label not in GEAR_TABLE)

    assert _values(updates, GEAR) == expected == [GEAR_PARK, GEAR_DRIVE, 0]
    assert stats.processor.rejections[("no_table_entry", GEAR)] == unmapped
    assert unmapped == 3  # two DI_GEAR_INVALID frames, one DI_GEAR_SNA


def test_one_signal_feeds_two_paths_with_their_own_tables(replayed: Replayed, drive: Drive) -> None:
    updates, _ = replayed
    labels = [_label(v) for _, v in _signal(drive, "DI_systemStatus", "DI_gear")]

    assert _values(updates, PARK_LOCK) == _changes(
        [PARK_LOCK_TABLE[label] for label in labels if label in PARK_LOCK_TABLE]
    )
    assert _values(updates, PARK_LOCK) == [True, False]


def test_the_math_transform_runs_every_500_ms_of_frame_time(
    replayed: Replayed, drive: Drive
) -> None:
    updates, _ = replayed
    axle = dict(_signal(drive, "DI_torque", "DI_axleSpeed"))
    emitted = [u for u in updates if u.path == ENGINE_SPEED]
    times = [u.timestamp for u in emitted]

    assert len(emitted) == math.ceil(DURATION / 0.5)
    assert all(0.5 <= b - a < 0.5 + 0.02 + 1e-6 for a, b in itertools.pairwise(times))
    assert [u.value for u in emitted] == [math.floor(abs(axle[t]) * 9 + 0.5) for t in times]
    assert {u.unit for u in emitted} == {"rpm"}


def test_signals_of_both_multiplexer_branches_are_decoded(replayed: Replayed, drive: Drive) -> None:
    updates, stats = replayed
    pcs = _signal(drive, "VCFRONT_LVPowerState", "VCFRONT_pcsLVState")
    tpms = _signal(drive, "VCFRONT_LVPowerState", "VCFRONT_tpmsLVRequest")
    charging = [u for u in updates if u.path == CHARGING]
    lamp = [u for u in updates if u.path == TYRE_LAMP]

    assert [u.value for u in charging] == _changes([_label(v) == "LV_ON" for _, v in pcs])
    assert [u.value for u in lamp] == _changes([_label(v) == "LV_FAULT" for _, v in tpms])
    assert [u.value for u in lamp] == [False, True, False]
    # Each update comes from a frame of its own branch.
    assert {u.timestamp for u in charging} <= {t for t, _ in pcs}
    assert {u.timestamp for u in lamp} <= {t for t, _ in tpms}
    assert not {t for t, _ in pcs} & {t for t, _ in tpms}
    # The other branch's frames are not failures, nor "absent" signals.
    assert not [key for key in stats.processor.rejections if key[1] in (CHARGING, TYRE_LAMP)]
    assert ("decode_failed", "VCFRONT_LVPowerState") not in stats.processor.rejections


def test_a_signal_outside_the_branches_is_read_from_every_frame(
    replayed: Replayed, drive: Drive
) -> None:
    updates, _ = replayed
    states = [_label(v) for _, v in _signal(drive, "VCFRONT_LVPowerState",
                                             "VCFRONT_vehiclePowerState")]  # fmt: skip

    assert _values(updates, POWER_STATE) == _changes([POWER_TABLE[s] for s in states])
    assert _values(updates, POWER_STATE) == ["OFF", "ACC", "ON"]


def test_the_lamp_folds_into_the_dtc_list(replayed: Replayed) -> None:
    updates, _ = replayed

    assert _values(updates, DTC_LIST) == [(), ("LAMP:TirePressure",), ()]
    assert _values(updates, DTC_COUNT) == [0, 1, 0]


def test_the_vss2dbc_block_is_ignored_and_the_dbc2vss_one_used(
    replayed: Replayed, drive: Drive
) -> None:
    updates, _ = replayed
    labels = [_label(v) for _, v in _signal(drive, "DI_state", "DI_parkBrakeState")]

    assert _values(updates, PARKING_BRAKE) == _changes([PARK_BRAKE_TABLE[x] for x in labels])
    assert _values(updates, PARKING_BRAKE) == [True, False]


def test_nothing_else_is_rejected(replayed: Replayed, drive: Drive) -> None:
    _, stats = replayed
    labels = [_label(v) for _, v in _signal(drive, "DI_systemStatus", "DI_gear")]

    assert stats.processor.rejections == {
        ("no_table_entry", GEAR): sum(1 for x in labels if x not in GEAR_TABLE),
        ("no_table_entry", PARK_LOCK): sum(1 for x in labels if x not in PARK_LOCK_TABLE),
    }
    assert stats.processor.frames == len(drive.frames)
    assert stats.processor.unmapped_frames == 0
    assert stats.bad_log_lines == 0


def test_the_yaml_overlay_gives_the_same_updates(
    replayed: Replayed, tmp_path: Path, tesla_party_dbc: Path, drive_log: Path
) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(flat_overlay(kuksa_tree()), sort_keys=False))

    updates, stats = asyncio.run(_replay(overlay, tesla_party_dbc, drive_log))

    assert updates == replayed[0]
    assert stats.processor == replayed[1].processor


# --- live, on a virtual bus ------------------------------------------------------------


async def _live(
    mapping: Path,
    dbc: Path,
    channel: str,
    frames: list[can.Message],
    done: Callable[[list[SignalUpdate]], bool],
) -> list[SignalUpdate]:
    pipeline = SignalPipeline.from_files(
        mapping, [(None, dbc)], buses=[BusConfig("can0", "virtual", channel)]
    )
    updates: list[SignalUpdate] = []
    async with pipeline:
        with can.Bus(interface="virtual", channel=channel) as car:
            sender = threading.Thread(target=lambda: [car.send(f) for f in frames])
            sender.start()
            async with asyncio.timeout(10):
                async for batch in pipeline.batches():
                    updates.extend(batch)
                    if done(updates):
                        break
            sender.join()
    return updates


def test_the_mapping_decodes_a_live_virtual_bus(
    json_mapping: Path,
    tesla_party_dbc: Path,
    drive: Drive,
    replayed: Replayed,
    virtual_channel: str,
    no_leaked_threads: None,
) -> None:
    # On a live bus frames get the wall clock's timestamps: compare what does not
    # depend on time (the on_change paths; the speed ramp stays within the guard).
    paths = (GEAR, PARK_LOCK, PARKING_BRAKE, POWER_STATE, CHARGING, TYRE_LAMP, SPEED)
    expected = {path: _values(replayed[0], path) for path in paths}

    def done(updates: list[SignalUpdate]) -> bool:
        return all(len(_values(updates, p)) >= len(expected[p]) for p in paths)

    updates = asyncio.run(_live(json_mapping, tesla_party_dbc, virtual_channel, drive.frames, done))

    assert {path: _values(updates, path) for path in paths} == expected
    assert {u.bus for u in updates} == {"can0"}
