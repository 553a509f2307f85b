"""Signals beyond touchpoint's catalogue: the mapping's declarations and a VSS release.

An integrator maps whatever the car has; the types and units come from the mapping
itself, else from the VSS release it targets (``--vss``, ``[can] vss``: VSS 6.0's JSON
export here, as the KUKSA databroker takes it). Checked on KUKSA's Model 3 DBC and its
recording: range in miles, state of charge and cabin temperature, which touchpoint's
catalogue does not have, come out in VSS 6.0's units.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import can
import pytest

from agent.settings import StoreSettings
from can_signals.binding import bind
from can_signals.dbc import load_dbc
from can_signals.errors import MappingError
from can_signals.mapping import load_mapping
from can_signals.pipeline import SignalPipeline
from can_signals.processor import FrameProcessor
from can_signals.settings import CanSettings, DbcSettings
from can_signals.update import SignalUpdate
from can_signals.vss import VssError, load_vss
from tests.can_signals.conftest import encode, load_database
from touchpoint.doctor import Check, Status
from touchpoint.doctor.can_checks import check_can
from touchpoint.settings import DaemonSettings

WriteFile = Callable[[str, str], Path]
LOG = "candump_Manual_SOC_DogMode_CabinTemp.log"
RANGE = "Vehicle.Powertrain.Range"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
CABIN = "Vehicle.Cabin.HVAC.AmbientAirTemperature"
#: Only signal names: every type and unit comes from the VSS release.
UNDECLARED = f"""\
{RANGE}:
  dbc2vss: {{signal: UI_Range, on_change: true}}
{SOC}:
  dbc2vss: {{signal: UI_SOC, on_change: true}}
{CABIN}:
  dbc2vss: {{signal: VCRIGHT_hvacCabinTempEst, on_change: true}}
"""


@pytest.fixture(scope="module")
def model3_dir(realdata_dir: Path) -> Path:
    return realdata_dir / "kuksa_model3"


def _changes(values: Sequence[object]) -> list[object]:
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def _decoded(model3_dir: Path, frame_id: int, signal: str, index: int | None) -> list[float]:
    """``signal`` in every frame of ``frame_id`` in the recording, decoded by cantools."""
    message = load_database(model3_dir / "Model3CAN.dbc").get_message_by_frame_id(frame_id)
    line = re.compile(rf"^\([\d.]+\) vcan0 {frame_id:03X}#([0-9A-F]*)$")
    values = []
    for text in (model3_dir / LOG).read_text().splitlines():
        if match := line.match(text):
            decoded = message.decode(bytes.fromhex(match[1]), decode_choices=False)
            assert isinstance(decoded, dict)
            value = decoded[signal]
            assert isinstance(value, int | float)
            if index is None or decoded[message.signals[0].name] == index:
                values.append(float(value))
    return values


def test_the_vss_release_gives_types_and_units_the_mapping_leaves_out(
    write_file: WriteFile, model3_dir: Path, vss6: Path
) -> None:
    mapping = write_file("m.yaml", UNDECLARED)
    pipeline = SignalPipeline.from_files(
        mapping, [(None, model3_dir / "Model3CAN.dbc")], vss=vss6,
        replay=model3_dir / LOG, speed=0,
    )  # fmt: skip

    async def run() -> list[SignalUpdate]:
        async with pipeline:
            return [u async for u in pipeline]

    updates = asyncio.run(run())

    def emitted(path: str) -> list[object]:
        return [u.value for u in updates if u.path == path]

    miles = _decoded(model3_dir, 0x33A, "UI_Range", None)
    percent = _decoded(model3_dir, 0x33A, "UI_SOC", None)
    celsius = _decoded(model3_dir, 0x243, "VCRIGHT_hvacCabinTempEst", 0)  # mux branch 0
    assert emitted(RANGE) == _changes([round(m * 1609.344) for m in miles])  # uint32, m
    # The recording sweeps the SOC from 0 to 127: VSS 6.0 allows 0 to 100.
    assert emitted(SOC) == _changes([p for p in percent if p <= 100])
    assert max(percent) == 127
    assert pipeline.stats().processor.rejections[("out_of_range", SOC)] > 0
    assert emitted(CABIN) == pytest.approx(_changes(celsius))
    assert len(emitted(CABIN)) > 1
    units = {u.path: u.unit for u in updates}
    assert units == {RANGE: "m", SOC: "percent", CABIN: "Celsius"}
    assert pipeline.binding.warnings == ()  # every path is in the release


def test_without_a_release_the_error_names_what_to_add(
    write_file: WriteFile, model3_dir: Path
) -> None:
    with pytest.raises(MappingError) as caught:
        SignalPipeline.from_files(
            write_file("m.yaml", UNDECLARED), [(None, model3_dir / "Model3CAN.dbc")],
            replay=model3_dir / LOG,
        )  # fmt: skip

    assert len(caught.value.problems) == 3
    problem = caught.value.problems[0]
    assert problem.where == "line 1"
    assert problem.message.startswith(f"{RANGE}: unknown VSS path")
    assert "add 'datatype' (and 'unit') to the entry" in problem.message
    assert "--vss" in problem.message


def test_the_mappings_declarations_win_over_the_release(
    write_file: WriteFile, model3_dir: Path, vss6: Path
) -> None:
    # The mapping says the range is a float in km (VSS 6.0: uint32 in m): its word holds.
    text = f"{RANGE}:\n  datatype: float\n  unit: km\n  dbc2vss: {{signal: UI_Range}}\n"
    binding = bind(
        load_mapping(write_file("m.yaml", text)),
        [load_dbc(model3_dir / "Model3CAN.dbc")],
        vss=load_vss(vss6),
    )

    (only,) = binding.bindings
    assert (only.spec.datatype, only.spec.unit) == ("float", "km")
    # UI_Range is in miles in the DBC: converted to the declared km.
    assert only.convert(100, {}) == pytest.approx(160.9344)


def test_the_releases_limits_are_checked(
    write_file: WriteFile, model3_dir: Path, vss6: Path
) -> None:
    # VSS 6.0: a mirror's pan is int8 percent, from -100 to 100 (the DBC's 0 to 5 V
    # scaled as KUKSA's mapping does, but by 60: 5 V would be 200 %).
    text = (
        "Vehicle.Body.Mirrors.DriverSide.Pan:\n  dbc2vss:\n    signal: VCLEFT_mirrorTiltXPosition\n"
        "    on_change: true\n    transform: {math: 'floor((x*60)-100)'}\n"
    )
    database = load_database(model3_dir / "Model3CAN.dbc")
    binding = bind(
        load_mapping(write_file("m.yaml", text)),
        [load_dbc(model3_dir / "Model3CAN.dbc")],
        vss=load_vss(vss6),
    )
    updates: list[SignalUpdate] = []
    processor = FrameProcessor(binding, updates.append)
    (only,) = binding.bindings
    for t, tilt in enumerate((2.5, 3.0, 5.0)):  # -> 50, 80, 200 (refused)
        processor.bus("can0")(
            can.Message(
                timestamp=float(t), arbitration_id=only.message.frame_id, is_extended_id=False,
                data=encode(database.get_message_by_name(only.message.name),
                            {"VCLEFT_mirrorTiltXPosition": tilt}),
            )
        )  # fmt: skip

    assert [u.value for u in updates] == [50, 80]
    assert processor.stats().rejections == {("out_of_range", only.entry.path): 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (("Vehicle.Cabin.Seat.Row1.DriverSide.Massage:\n  datatype: uint8[]\n"
          "  dbc2vss: {signal: UI_SOC}\n"), "datatype 'uint8[]' cannot be fed by one CAN signal"),
        ("Vehicle.Speedo:\n  dbc2vss: {signal: UI_SOC}\n",
         "unknown VSS path: not in touchpoint's signal catalogue nor in"),
    ],
    ids=["array", "unknown"],
)  # fmt: skip
def test_what_a_release_cannot_settle_is_an_error(
    write_file: WriteFile, model3_dir: Path, vss6: Path, text: str, expected: str
) -> None:
    with pytest.raises(MappingError) as caught:
        bind(
            load_mapping(write_file("m.yaml", text)),
            [load_dbc(model3_dir / "Model3CAN.dbc")],
            vss=load_vss(vss6),
        )

    (problem,) = caught.value.problems
    assert expected in problem.message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read the VSS file"),
        ("{not json", "line 1: not valid JSON"),
        ('{"Vehicle": {"type": "branch", "children": {}}}', "holds no VSS signal"),
        ("[1, 2]", "holds no VSS signal"),
    ],
    ids=["missing", "not-json", "empty-tree", "not-a-tree"],
)
def test_a_broken_release_is_reported_with_its_file(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "vss.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(VssError) as caught:
        load_vss(path)

    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_the_vss_60_release_reads_whole(vss6: Path) -> None:
    release = load_vss(vss6)

    assert len(release.leaves) == 1267
    odometer = release.leaves["Vehicle.TraveledDistance"]
    assert (odometer.datatype, odometer.unit) == ("uint32", "m")
    assert release.leaves["Vehicle.LowVoltageSystemState"].allowed == (
        "UNDEFINED", "LOCK", "OFF", "ACC", "ON", "START",
    )  # fmt: skip
    assert not any(path.startswith("Vehicle.OBD.") for path in release.leaves)


def test_the_doctor_reads_can_vss(write_file: WriteFile, model3_dir: Path, vss6: Path) -> None:
    mapping = write_file("m.yaml", UNDECLARED)
    dbc = [DbcSettings(file=model3_dir / "Model3CAN.dbc")]

    with_release = list(check_can(CanSettings(mapping=mapping, dbc=dbc, vss=vss6)))
    without = list(check_can(CanSettings(mapping=mapping, dbc=dbc)))
    broken = list(check_can(CanSettings(mapping=mapping, dbc=dbc, vss=mapping)))

    def status(checks: list[Check], name: str) -> Status:
        (check,) = [c for c in checks if c.name == name]
        return check.status

    assert status(with_release, "can.vss") is Status.OK
    assert status(with_release, "can.mapping") is Status.OK
    assert status(without, "can.mapping") is Status.FAIL
    assert status(broken, "can.vss") is Status.FAIL


def test_the_daemon_reads_can_vss(
    write_file: WriteFile, tmp_path: Path, model3_dir: Path, vss6: Path
) -> None:
    from tests.daemon.conftest import RecordingSink  # noqa: PLC0415
    from touchpoint.daemon import Daemon  # noqa: PLC0415

    def settings(vss: Path | None) -> DaemonSettings:
        return DaemonSettings(
            store=StoreSettings(path=tmp_path / f"{vss is not None}.db"),
            can=CanSettings(
                mapping=write_file("m.yaml", UNDECLARED),
                dbc=[DbcSettings(file=model3_dir / "Model3CAN.dbc")],
                vss=vss,
                replay=model3_dir / LOG,
                replay_speed=0,
            ),
        )

    async def run(vss: Path | None) -> Daemon:
        daemon = Daemon(settings(vss))
        daemon.sinks.append(RecordingSink())
        await daemon.start()
        if daemon.pipeline is not None:
            await asyncio.wait_for(daemon.signals_finished.wait(), timeout=30)
            await daemon.settle()
        await daemon.stop()
        return daemon

    with_release = asyncio.run(run(vss6))
    without = asyncio.run(run(None))

    signals = with_release.agent.vehicle.signals  # the agent has the last of each
    assert signals[SOC] == _decoded(model3_dir, 0x33A, "UI_SOC", None)[-1]
    assert signals[CABIN] == pytest.approx(
        _decoded(model3_dir, 0x243, "VCRIGHT_hvacCabinTempEst", 0)[-1]
    )
    assert without.pipeline is None  # the paths have no type: the daemon runs without CAN
