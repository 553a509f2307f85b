"""touchpoint's two mapping extensions, on real DBC files: ``multiplexer`` and ``combine``.

- ``multiplexer``: a multiplexed signal mapped per multiplexer value, one VSS path each.
  On KUKSA's Model 3 DBC and recording (the cabin temperature sits in branch
  ``STATUS_UI`` of a multiplexed HVAC message), on its TPMS message (a pressure per
  wheel) and its brick-voltage message, whose ``StatusFlags`` is one signal outside the
  branches that means something else for every multiplexer value (KUKSA's issue 47:
  ``AxleLocation M`` / ``AxleWeight``); and on opendbc's Tesla party DBC.
- ``combine``: signals of different frames into one value, with a freshness window. On
  the Model 3 recording: the speed (0x257) signed by the gear (0x118, reverse is 2); on
  opendbc's Tesla DBC with frames whose timing is chosen, to see the window and
  staleness at work.

Expectations come from cantools' own decoding, never from the code under test.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can
import pytest
from cantools.database.can import Database

from can_signals.binding import bind
from can_signals.dbc import DbcSource, load_dbc
from can_signals.errors import MappingError
from can_signals.mapping import parse_mapping
from can_signals.pipeline import SignalPipeline
from can_signals.processor import FrameProcessor
from can_signals.update import SignalUpdate
from tests.can_signals.conftest import encode

LOG = "candump_Manual_SOC_DogMode_CabinTemp.log"
CABIN = "Vehicle.Cabin.HVAC.AmbientAirTemperature"
SPEED = "Vehicle.Speed"
_LINE = re.compile(r"^\((?P<t>[\d.]+)\) \S+ (?P<id>[0-9A-F]+)#(?P<data>[0-9A-F]*)$")


@pytest.fixture(scope="module")
def model3_dir(realdata_dir: Path) -> Path:
    return realdata_dir / "kuksa_model3"


@pytest.fixture(scope="module")
def model3_source(model3_dir: Path) -> DbcSource:
    return load_dbc(model3_dir / "Model3CAN.dbc")


@pytest.fixture(scope="module")
def model3(model3_source: DbcSource) -> Database:
    return model3_source.database


def _changes(values: list[Any]) -> list[Any]:
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def _recording(model3_dir: Path) -> list[tuple[float, int, bytes]]:
    frames = []
    for line in (model3_dir / LOG).read_text().splitlines():
        match = _LINE.match(line)
        assert match, line
        frames.append((float(match["t"]), int(match["id"], 16), bytes.fromhex(match["data"])))
    return frames


def _replay(mapping: Path, dbc: Path, log: Path) -> tuple[list[SignalUpdate], SignalPipeline]:
    pipeline = SignalPipeline.from_files(mapping, [(None, dbc)], replay=log, speed=0)

    async def run() -> list[SignalUpdate]:
        async with pipeline:
            return [u async for u in pipeline]

    return asyncio.run(run()), pipeline


class Feeder:
    """A processor bound to a mapping, fed frames encoded with cantools."""

    def __init__(self, mapping: str, source: DbcSource) -> None:
        self.binding = bind(parse_mapping(mapping, "m.yaml"), [source])
        self.database = source.database
        self.updates: list[SignalUpdate] = []
        self.processor = FrameProcessor(self.binding, self.updates.append)

    def send(self, message: str, t: float, values: dict[str, Any]) -> None:
        definition = self.database.get_message_by_name(message)
        # Signals not given are raw 0 (a physical 0 is out of range for offset signals).
        full: dict[str, Any] = {
            s.name: s.conversion.raw_to_scaled(0, decode_choices=False) for s in definition.signals
        }
        full.update(values)
        self.processor.bus("can0")(
            can.Message(
                timestamp=t, arbitration_id=definition.frame_id, is_extended_id=False,
                data=encode(definition, full),
            )
        )  # fmt: skip

    def values(self, path: str) -> list[object]:
        return [u.value for u in self.updates if u.path == path]


WriteFile = Callable[[str, str], Path]


# --- multiplexer ---------------------------------------------------------------------------


def test_a_multiplexed_signal_by_its_multiplexers_label_on_the_recording(
    write_file: WriteFile, model3_dir: Path, model3: Database
) -> None:
    mapping = write_file(
        "m.yaml",
        f"{CABIN}:\n  datatype: float\n  unit: celsius\n  dbc2vss:\n"
        "    signal: VCRIGHT_hvacCabinTempEst\n    on_change: true\n"
        "    multiplexer: STATUS_UI\n",
    )
    hvac = model3.get_message_by_name("ID243VCRIGHT_hvacStatus")
    expected = []
    for _, frame_id, data in _recording(model3_dir):
        if frame_id == hvac.frame_id:
            decoded = hvac.decode(data, decode_choices=False)
            assert isinstance(decoded, dict)
            if decoded["VCRIGHT_hvacStatusIndex"] == 0:
                expected.append(decoded["VCRIGHT_hvacCabinTempEst"])

    updates, pipeline = _replay(mapping, model3_dir / "Model3CAN.dbc", model3_dir / LOG)

    assert [u.value for u in updates] == pytest.approx(_changes(expected))
    assert len(updates) > 10
    assert pipeline.stats().processor.rejections == {}  # the other branches are no failure


def test_each_wheels_pressure_by_its_multiplexer_value(model3_source: DbcSource) -> None:
    wheels = {0: "Row1.Wheel.Left", 1: "Row1.Wheel.Right", 2: "Row2.Wheel.Left",
              3: "Row2.Wheel.Right"}  # fmt: skip
    mapping = "".join(
        f"Vehicle.Chassis.Axle.{wheel}.Tire.Pressure:\n  dbc2vss:\n"
        f"    signal: VCSEC_TPMSPressure{index}\n    on_change: true\n"
        f"    multiplexer: TPMS_DATA_SENSOR_{index}\n"
        for index, wheel in wheels.items()
    )
    feeder = Feeder(mapping, model3_source)
    bars = {0: 2.4, 1: 2.45, 2: 2.5, 3: 2.55}

    for step in range(8):
        index = step % 4
        feeder.send("ID219VCSEC_TPMSData", step * 0.25, {
            "VCSEC_TPMSDataIndex": index, f"VCSEC_TPMSPressure{index}": bars[index],
        })  # fmt: skip

    for index, wheel in wheels.items():  # bar -> kPa, the catalogue's unit
        path = f"Vehicle.Chassis.Axle.{wheel}.Tire.Pressure"
        assert feeder.values(path) == [round(bars[index] * 100)]


def test_one_signal_outside_the_branches_mapped_per_multiplexer_value(
    model3_source: DbcSource,
) -> None:
    # ID401BrickVoltages: MultiplexSelector picks which three bricks the frame carries,
    # and StatusFlags (in no branch) is about those bricks: one path per selector value.
    mapping = "".join(
        f"Vehicle.Private.BrickGroup{group}.StatusFlags:\n  datatype: uint8\n  dbc2vss:\n"
        f"    signal: StatusFlags\n    on_change: true\n    multiplexer: {group}\n"
        for group in range(3)
    )
    feeder = Feeder(mapping, model3_source)
    sent: dict[int, list[int]] = {0: [], 1: [], 2: [], 3: []}

    for step in range(24):
        group = step % 4
        flags = (step // 4) % 2 * 16 + group  # changes every lap, differs per group
        sent[group].append(flags)
        feeder.send("ID401BrickVoltages", step * 0.01,
                    {"MultiplexSelector": group, "StatusFlags": flags})  # fmt: skip

    for group in range(3):
        assert feeder.values(f"Vehicle.Private.BrickGroup{group}.StatusFlags") == _changes(
            sent[group]
        )
    assert len({u.path for u in feeder.updates}) == 3  # group 3 is mapped to nothing
    assert feeder.processor.stats().rejections == {}


def test_a_plain_signal_per_multiplexer_value_on_opendbc(tesla_party_dbc: Path) -> None:
    # opendbc's Tesla party DBC: VCFRONT_LVPowerState alternates Mux0 and Mux1, and
    # VCFRONT_vehiclePowerState sits outside both branches.
    mapping = "".join(
        f"Vehicle.Private.PowerState{mux}:\n  datatype: uint8\n  dbc2vss:\n"
        f"    signal: VCFRONT_vehiclePowerState\n    on_change: true\n"
        f"    multiplexer: {{signal: VCFRONT_LVPowerStateIndex, value: Mux{mux}}}\n"
        for mux in (0, 1)
    )
    feeder = Feeder(mapping, load_dbc(tesla_party_dbc))

    for step, state in enumerate((0, 2, 3, 3, 1, 0)):
        values = {"VCFRONT_LVPowerStateIndex": step % 2, "VCFRONT_vehiclePowerState": state}
        feeder.send("VCFRONT_LVPowerState", step * 0.1, values)

    assert feeder.values("Vehicle.Private.PowerState0") == [0, 3, 1]
    assert feeder.values("Vehicle.Private.PowerState1") == [2, 3, 0]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("signal: VCRIGHT_hvacCabinTempEst, multiplexer: STATUS_VCFRONT",
         "VCRIGHT_hvacCabinTempEst is only sent when VCRIGHT_hvacStatusIndex is 0, never 1"),
        ("signal: VCRIGHT_hvacCabinTempEst, multiplexer: NOT_A_LABEL",
         "'NOT_A_LABEL' is not a value of VCRIGHT_hvacStatusIndex (its labels: END, "),
        ("signal: DI_uiSpeed, multiplexer: 1",
         "message ID257DIspeed has no multiplexer signals; name the selector"),
        ("signal: DI_uiSpeed, multiplexer: {signal: NOPE, value: 1}",
         "no signal 'NOPE' in message ID257DIspeed"),
        ("signal: DI_uiSpeed, multiplexer: {value: 1}",
         "'multiplexer' must be a value, or {signal: NAME, value: VALUE}"),
    ],
    ids=["wrong-branch", "unknown-label", "no-multiplexer", "unknown-selector", "malformed"],
)  # fmt: skip
def test_multiplexer_mistakes_are_reported(
    model3_source: DbcSource, block: str, expected: str
) -> None:
    text = f"{CABIN}:\n  datatype: float\n  dbc2vss: {{{block}}}\n"

    with pytest.raises(MappingError) as caught:
        bind(parse_mapping(text, "m.yaml"), [model3_source])

    (problem,) = caught.value.problems
    assert expected in problem.message


# --- combine -------------------------------------------------------------------------------

SIGNED_SPEED = f"""\
{SPEED}:
  datatype: float
  dbc2vss:
    signal: DI_uiSpeed
    on_change: true
    combine:
      signals: [DI_gear]
      within_ms: 50
    transform:
      math: "x * (1 - 2 * (DI_gear == 2))"
# Both readings in one number, to see every pairing (speed and gear change apart).
Vehicle.Private.SpeedAndGear:
  datatype: float
  dbc2vss:
    signal: DI_uiSpeed
    on_change: true
    combine: {{signals: [DI_gear], within_ms: 50}}
    transform: {{math: "x * 10 + DI_gear"}}
"""


def test_speed_signed_by_the_gear_of_another_frame_on_the_recording(
    write_file: WriteFile, model3_dir: Path, model3: Database
) -> None:
    speed_message = model3.get_message_by_name("ID257DIspeed")
    gear_message = model3.get_message_by_name("ID118DriveSystemStatus")
    readings: dict[str, tuple[float, float]] = {}
    signed: list[float] = []
    paired: list[float] = []
    for t, frame_id, data in _recording(model3_dir):
        for message, name in ((speed_message, "DI_uiSpeed"), (gear_message, "DI_gear")):
            if frame_id != message.frame_id:
                continue
            decoded = message.decode(data, decode_choices=False)
            assert isinstance(decoded, dict)
            value = decoded[name]
            assert isinstance(value, int | float)
            definition = message.get_signal_by_name(name)
            choices: dict[int, object] = dict(definition.choices or {})
            label = str(choices.get(int(value), ""))
            if not label.endswith(("_SNA", "_INVALID")):
                readings[name] = (t, value)
            # else a marker (DI_uiSpeed 511 and DI_gear 7 are "SNA", DI_gear 0 "INVALID"):
            # no reading, the last one ages out of the 50 ms window
            if len(readings) == 2 and (t - min(r[0] for r in readings.values())) * 1000 <= 50:
                speed, gear = readings["DI_uiSpeed"][1], readings["DI_gear"][1]
                for values, value in ((signed, speed * (1 - 2 * (gear == 2))),
                                      (paired, speed * 10 + gear)):  # fmt: skip
                    if not values or values[-1] != value:
                        values.append(value)

    updates, pipeline = _replay(
        write_file("m.yaml", SIGNED_SPEED), model3_dir / "Model3CAN.dbc", model3_dir / LOG
    )

    # While the gear says SNA for longer than it may be stale, the combined value is
    # unknown (None) and is published again when the gear is back.
    def known(path: str) -> list[object]:
        values = [u.value for u in updates if u.path == path and u.value is not None]
        return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]

    assert known(SPEED) == signed
    assert known("Vehicle.Private.SpeedAndGear") == paired
    assert len(paired) > 10  # (the car stands still: the signed speed stays 0)
    gears = {int(v) % 10 for v in paired}
    assert gears >= {2, 4}  # R and D among them
    assert not gears & {0, 7}  # never invalid nor SNA
    assert pipeline.stats().processor.not_available  # the recording has both markers
    assert {u.unit for u in updates if u.path == SPEED} == {"km/h"}
    assert pipeline.stats().processor.rejections == {}


def test_a_combination_waits_for_fresh_readings_and_goes_stale(tesla_party_dbc: Path) -> None:
    mapping = f"""\
{SPEED}:
  dbc2vss:
    signal: DI_vehicleSpeed
    on_change: true
    stale_ms: 300
    combine: {{signals: [DI_systemStatus.DI_gear], within_ms: 150}}
    transform: {{math: "x * (1 - 2 * (DI_gear == 2))"}}
"""
    feeder = Feeder(mapping, load_dbc(tesla_party_dbc))
    speed = 10.0

    def drive(t: float) -> None:
        feeder.send("DI_speed", t, {"DI_vehicleSpeed": speed + t})

    feeder.send("DI_systemStatus", 0.0, {"DI_gear": "DI_GEAR_R"})
    for t in (0.0, 0.1, 0.2, 0.3):  # the gear reading is 0.2 s old at 0.2: too old
        drive(t)
    # The new gear pairs with the speed read 50 ms before it, then with the next one.
    feeder.send("DI_systemStatus", 0.35, {"DI_gear": "DI_GEAR_D"})
    drive(0.4)
    for t in (0.6, 0.8, 1.0):  # no gear since 0.35: nothing new, then stale
        drive(t)

    values = feeder.values(SPEED)  # DI_vehicleSpeed counts 0.08 km/h per bit
    assert values[:-1] == [
        pytest.approx(v, abs=0.1) for v in (-10.0, -10.1, 10.3, 10.4)
    ]  # fmt: skip
    assert values[-1] is None  # over 0.3 s without a complete set of readings


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("combine: {signals: [DI_gear], within_ms: 50}",
         "'combine' needs a 'math' transform"),
        ("combine: {signals: [NO_SUCH], within_ms: 50}, transform: {math: x}",
         "combine: unknown DBC signal 'NO_SUCH'"),
        ("combine: {signals: [CP_hvChargeStatus], within_ms: 50}, transform: {math: x}",
         "combine: signal 'CP_hvChargeStatus' is in several messages"),
        ("combine: {signals: [DI_gear], within_ms: 50}, transform: {math: x + DI_speedCounter}",
         "combine: the expression may read x and DI_gear"),
        ("combine: {signals: [DI_gear], within_ms: 0}, transform: {math: x}",
         "within_ms must be a whole number of milliseconds > 0"),
    ],
    ids=["no-math", "unknown", "ambiguous", "foreign-name", "window"],
)  # fmt: skip
def test_combine_mistakes_are_reported(model3_source: DbcSource, block: str, expected: str) -> None:
    text = f"{SPEED}:\n  dbc2vss: {{signal: DI_uiSpeed, {block}}}\n"

    with pytest.raises(MappingError) as caught:
        bind(parse_mapping(text, "m.yaml"), [model3_source])  # either may raise

    assert any(expected in p.message for p in caught.value.problems)
