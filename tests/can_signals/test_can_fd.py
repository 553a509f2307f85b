"""CAN FD and 29-bit IDs: frames up to 64 bytes, from replays and a live bus.

The car is opendbc's Hyundai CAN FD DBC (built from its generator sources, as opendbc
builds it: the common file imported first), whose messages are 24 and 32 bytes long.
The simulator's encoder drives it through the reference commute (D, reverse, P) and
writes a candump log, where CAN FD frames are ``##`` lines with the bit-rate switch.
Expectations come from the encoder's raw values, never from the code under test. A
second DBC declares a 64-byte CAN FD message on a 29-bit ID.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can
import pytest
from cantools.database.can import Database

from can_signals.binding import bind
from can_signals.dbc import load_dbc
from can_signals.mapping import load_mapping
from can_signals.pipeline import PipelineStats, SignalPipeline
from can_signals.settings import BusSettings, CanSettings, DbcSettings
from can_signals.simulator.encoder import FrameEncoder
from can_signals.simulator.model import VehicleState
from can_signals.simulator.runner import LogSink, timeline
from can_signals.simulator.scenarios import build_scenario
from can_signals.sources import BusConfig, kernel_filters
from can_signals.update import SignalUpdate
from tests.can_signals.conftest import load_database
from touchpoint.doctor import Status
from touchpoint.doctor.can_checks import check_can

SPEED = "Vehicle.Speed"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
GEARS = {"P": 126, "R": -1, "N": 0, "D": 127}
WHEEL_SPEED = 0.03125  # km/h per bit
HYUNDAI_MAPPING = """\
Vehicle.Speed:
  dbc2vss:
    signal: WHL_SpdFLVal
    on_change: true
    transform: {math: "(x + WHL_SpdFRVal + WHL_SpdRLVal + WHL_SpdRRVal) / 4"}
Vehicle.Powertrain.Transmission.SelectedGear:
  dbc2vss:
    signal: GEAR
    message: GEAR
    on_change: true
    transform:
      mapping: [{from: P, to: 126}, {from: R, to: -1}, {from: N, to: 0}, {from: D, to: 127}]
"""
_IMPORT = re.compile(r'CM_ "IMPORT (.*?)";\n')


@pytest.fixture(scope="module")
def hyundai_canfd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """opendbc's ``hyundai_canfd.dbc``, its imports resolved as opendbc's generator does."""
    sources = Path(str(importlib.resources.files("opendbc") / "dbc" / "generator" / "hyundai"))
    text = (sources / "hyundai_canfd.dbc").read_text(encoding="utf-8")
    imported = "".join(
        (sources / name).read_text(encoding="utf-8") for name in _IMPORT.findall(text)
    )
    path = tmp_path_factory.mktemp("opendbc") / "hyundai_canfd.dbc"
    path.write_text(imported + _IMPORT.sub("", text), encoding="utf-8")
    return path


def _wheels(state: VehicleState, n: int) -> dict[str, float | int | str]:
    speed = state.speed_kmh
    return {
        "CHECKSUM": 0, "COUNTER": n % 256,
        "MOVING_FORWARD": int(speed > 0 and state.gear.value != "R"),
        "MOVING_BACKWARD": int(speed > 0 and state.gear.value == "R"),
        "MOVING_FORWARD2": 0, "MOVING_BACKWARD2": 0,
        # The four wheels differ a little (a corner): the mean is what VSS gets.
        "WHL_SpdFLVal": speed, "WHL_SpdFRVal": speed * 1.01,
        "WHL_SpdRLVal": speed * 0.99, "WHL_SpdRRVal": speed,
    }  # fmt: skip


def _gear(state: VehicleState, n: int) -> dict[str, float | int | str]:
    return {"CHECKSUM": 0, "COUNTER": n % 256, "GEAR": state.gear.value}


def _encoder(database: Database, channel: str = "can0") -> FrameEncoder:
    return FrameEncoder(
        database, channel, messages={"WHEEL_SPEEDS": _wheels, "GEAR": _gear},
        checksums={}, cycle_ms={"WHEEL_SPEEDS": 100, "GEAR": 500},
    )  # fmt: skip


def _expected(database: Database) -> tuple[list[can.Message], list[float], list[int]]:
    """The commute's frames, and the speeds and gears they carry (consecutive changes)."""
    frames: list[can.Message] = []
    speeds: list[float] = []
    gears: list[int] = []
    for tick in timeline(build_scenario("commute"), _encoder(database)):
        for frame in tick.frames:
            frames.append(frame.message)
            if frame.name == "WHEEL_SPEEDS":
                raw = [frame.raw[f"WHL_Spd{w}Val"] for w in ("FL", "FR", "RL", "RR")]
                value = sum(r * WHEEL_SPEED for r in raw) / 4
                if not speeds or speeds[-1] != value:
                    speeds.append(value)
            else:
                message = database.get_message_by_name("GEAR")
                label = str(message.get_signal_by_name("GEAR").choices[frame.raw["GEAR"]])  # type: ignore[index]
                if not gears or gears[-1] != GEARS[label]:
                    gears.append(GEARS[label])
    return frames, speeds, gears


@pytest.fixture(scope="module")
def commute(hyundai_canfd: Path) -> tuple[list[can.Message], list[float], list[int]]:
    return _expected(load_database(hyundai_canfd))


def _replay(mapping: Path, dbc: Path, log: Path) -> tuple[list[SignalUpdate], PipelineStats]:
    async def run() -> tuple[list[SignalUpdate], PipelineStats]:
        pipeline = SignalPipeline.from_files(mapping, [(None, dbc)], replay=log, speed=0)
        async with pipeline:
            updates = [u async for u in pipeline]
        return updates, pipeline.stats()

    return asyncio.run(run())


WriteFile = Callable[[str, str], Path]


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf"])
def test_a_can_fd_log_of_the_hyundai_decodes(
    write_file: WriteFile,
    tmp_path: Path,
    hyundai_canfd: Path,
    commute: tuple[list[can.Message], list[float], list[int]],
    suffix: str,
) -> None:
    frames, speeds, gears = commute
    log = tmp_path / f"hyundai{suffix}"
    sink = LogSink(log)
    for frame in frames:
        sink.send(frame)
    sink.close()

    updates, stats = _replay(write_file("m.yaml", HYUNDAI_MAPPING), hyundai_canfd, log)

    assert [u.value for u in updates if u.path == SPEED] == pytest.approx(speeds)
    assert [u.value for u in updates if u.path == GEAR] == gears
    assert set(gears) == {126, -1, 127}  # the commute parks, reverses and drives
    assert max(speeds) > 30
    assert stats.processor.frames == len(frames)
    assert stats.processor.short_frames == stats.processor.long_frames == 0
    assert stats.bad_log_lines == 0


def test_the_candump_log_holds_can_fd_lines(
    tmp_path: Path, commute: tuple[list[can.Message], list[float], list[int]]
) -> None:
    frames, _, _ = commute
    log = tmp_path / "hyundai.log"
    sink = LogSink(log)
    for frame in frames[:20]:
        sink.send(frame)
    sink.close()

    lines = log.read_text().splitlines()
    # "(t) can0 0A0##1<48 hex digits> T": CAN FD, flags 1 = bit-rate switch, 24 bytes,
    # sent by the simulated car (T).
    pattern = re.compile(r"\([\d.]+\) can0 0(45|A0)##1([0-9A-F]+) T")
    matches = [pattern.fullmatch(line) for line in lines]
    assert all(matches)
    assert {len(m[2]) for m in matches if m} == {48}
    assert all(frame.is_fd and frame.bitrate_switch for frame in frames)


def test_can_fd_frames_decode_live_on_a_virtual_bus(
    write_file: WriteFile,
    hyundai_canfd: Path,
    commute: tuple[list[can.Message], list[float], list[int]],
    virtual_channel: str,
    no_leaked_threads: None,
) -> None:
    frames, speeds, gears = commute
    mapping = write_file("m.yaml", HYUNDAI_MAPPING)
    pipeline = SignalPipeline.from_files(
        mapping, [(None, hyundai_canfd)], buses=[BusConfig("can0", "virtual", virtual_channel)]
    )
    # Live frames get the wall clock: the first minutes, where the plausibility guards
    # see a speed ramp they accept at any pace, and every gear change of the drive.
    wanted = [
        f for f in frames if f.arbitration_id == 0x45 or f.timestamp < frames[0].timestamp + 120
    ]

    async def run() -> list[SignalUpdate]:
        updates: list[SignalUpdate] = []
        async with pipeline:
            with can.Bus(interface="virtual", channel=virtual_channel) as car:
                sender = threading.Thread(target=lambda: [car.send(f) for f in wanted])
                sender.start()
                async with asyncio.timeout(20):
                    async for batch in pipeline.batches():
                        updates.extend(batch)
                        if pipeline.processor.frames >= len(wanted) and _gears(updates) == gears:
                            break
                sender.join()
        return updates

    updates = asyncio.run(run())

    assert _gears(updates) == gears
    assert [u.value for u in updates if u.path == SPEED][:5] == pytest.approx(speeds[:5])
    assert pipeline.binding.fd_for_bus("can0")


def _gears(updates: list[SignalUpdate]) -> list[Any]:
    return [u.value for u in updates if u.path == GEAR]


# --- 64 bytes on a 29-bit ID ------------------------------------------------------------------

#: cantools reads a message's CAN FD-ness from VFrameFormat (14, 15: CAN FD).
_FORMATS = ",".join(
    f'"{name}"' for name in ["StandardCAN", "ExtendedCAN", *["reserved"] * 12,
                             "StandardCAN_FD", "ExtendedCAN_FD"]
)  # fmt: skip
FD64_DBC = f"""VERSION ""

NS_ :

BS_:

BU_: ECU

BO_ 2566834689 BATTERY_FD: 64 ECU
 SG_ PACK_SOC : 0|8@1+ (0.5,0) [0|100] "%" ECU
 SG_ CELL_MAX_V : 480|16@1+ (0.001,0) [0|5] "V" ECU
 SG_ PACK_TEMP : 496|8@1+ (1,-40) [-40|100] "degC" ECU

BO_ 2566834690 BATTERY: 8 ECU
 SG_ CHARGING : 0|1@1+ (1,0) [0|1] "" ECU

BA_DEF_ BO_ "VFrameFormat" ENUM {_FORMATS};
BA_DEF_DEF_ "VFrameFormat" "StandardCAN";
BA_ "VFrameFormat" BO_ 2566834689 15;
BA_ "VFrameFormat" BO_ 2566834690 1;
"""
FD64_MAPPING = """\
Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed:
  dbc2vss: {signal: PACK_SOC, on_change: true}
Vehicle.Powertrain.TractionBattery.CellVoltage.Max:
  datatype: float
  unit: V
  dbc2vss: {signal: CELL_MAX_V, on_change: true}
Vehicle.Powertrain.TractionBattery.Charging.IsCharging:
  dbc2vss: {signal: CHARGING, on_change: true}
"""


def _battery_frames(database: Database) -> list[can.Message]:
    fd64 = database.get_message_by_name("BATTERY_FD")
    classic = database.get_message_by_name("BATTERY")
    frames = []
    for i in range(10):
        frames.append(
            can.Message(
                timestamp=2000.0 + i / 10, arbitration_id=fd64.frame_id, is_extended_id=True,
                is_fd=True, bitrate_switch=i % 2 == 0, error_state_indicator=i == 3,
                data=fd64.encode({"PACK_SOC": 80 - i, "CELL_MAX_V": 4.1 - i / 100,
                                  "PACK_TEMP": 25}),
                channel="can1",
            )
        )  # fmt: skip
        frames.append(
            can.Message(
                timestamp=2000.05 + i / 10, arbitration_id=classic.frame_id, is_extended_id=True,
                data=classic.encode({"CHARGING": i // 5}), channel="can1",
            )
        )  # fmt: skip
    return frames


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf"])
def test_64_byte_frames_on_29_bit_ids(write_file: WriteFile, tmp_path: Path, suffix: str) -> None:
    dbc = write_file("fd64.dbc", FD64_DBC)
    database = load_database(dbc)
    assert database.get_message_by_name("BATTERY_FD").is_fd
    log = tmp_path / f"battery{suffix}"
    with can.Logger(log) as writer:
        for frame in _battery_frames(database):
            writer.on_message_received(frame)

    updates, stats = _replay(write_file("m.yaml", FD64_MAPPING), dbc, log)

    def values(path: str) -> list[Any]:
        return [u.value for u in updates if u.path == path]

    assert values("Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed") == [
        float(80 - i) for i in range(10)
    ]
    assert values("Vehicle.Powertrain.TractionBattery.CellVoltage.Max") == pytest.approx(
        [4.1 - i / 100 for i in range(10)]
    )
    assert values("Vehicle.Powertrain.TractionBattery.Charging.IsCharging") == [False, True]
    assert stats.processor.unmapped_frames == 0
    if suffix == ".log":
        assert "18FECA01##1" in log.read_text()  # 29-bit ID, CAN FD, bit-rate switch


def test_kernel_filters_keep_11_and_29_bit_ids_apart(write_file: WriteFile) -> None:
    dbc = FD64_DBC.replace(
        "BA_DEF_ BO_", 'BO_ 291 DASH: 8 ECU\n SG_ LIGHTS : 0|1@1+ (1,0) [0|1] "" ECU\n\nBA_DEF_ BO_'
    )
    mapping = (
        FD64_MAPPING + "Vehicle.Private.Lights:\n  datatype: boolean\n  dbc2vss: {signal: LIGHTS}\n"
    )
    binding = bind(
        load_mapping(write_file("m.yaml", mapping)), [load_dbc(write_file("d.dbc", dbc))]
    )

    filters = sorted(kernel_filters(binding.frame_ids_for_bus("can0")), key=lambda f: f["can_id"])

    assert filters == [
        {"can_id": 0x123, "can_mask": 0x7FF, "extended": False},
        {"can_id": 0x18FECA01, "can_mask": 0x1FFFFFFF, "extended": True},
        {"can_id": 0x18FECA02, "can_mask": 0x1FFFFFFF, "extended": True},
    ]
    assert binding.fd_for_bus("can0")


@pytest.mark.parametrize(("mtu", "status"), [(16, Status.FAIL), (72, Status.OK)])
def test_the_doctor_wants_a_can_fd_interface_for_can_fd_messages(
    write_file: WriteFile, tmp_path: Path, hyundai_canfd: Path, mtu: int, status: Status
) -> None:
    device = tmp_path / "sys" / "can0"
    device.mkdir(parents=True)
    for name, text in (("type", "280"), ("flags", "0x1"), ("operstate", "up"), ("mtu", str(mtu))):
        (device / name).write_text(f"{text}\n")
    settings = CanSettings(
        mapping=write_file("m.yaml", HYUNDAI_MAPPING),
        dbc=[DbcSettings(file=hyundai_canfd)],
        buses=[BusSettings(name="can0", interface="socketcan", channel="can0")],
    )

    (check,) = [c for c in check_can(settings, sysfs=tmp_path / "sys") if c.name == "can.can0"]

    assert check.status is status
    if status is Status.FAIL:
        assert "classic CAN (mtu 16), but the mapping reads CAN FD messages" in check.message
        assert check.fix is not None
        assert "fd on" in check.fix


def test_a_socketcan_bus_for_can_fd_messages_is_opened_with_fd(
    write_file: WriteFile,
    hyundai_canfd: Path,
    monkeypatch: pytest.MonkeyPatch,
    virtual_channel: str,
    no_leaked_threads: None,
) -> None:
    # No machine of this project has SocketCAN: what python-can is asked to open is
    # recorded, and a virtual bus stands in for the socket.
    from can_signals import sources  # noqa: PLC0415

    asked: list[BusConfig] = []

    def open_bus(config: BusConfig, mapped_ids: list[tuple[int, bool]], **_: object) -> can.BusABC:
        asked.append(config)
        assert sorted(mapped_ids) == [(0x45, False), (0xA0, False)]
        return can.Bus(interface="virtual", channel=virtual_channel)

    monkeypatch.setattr(sources, "_open_bus", open_bus)
    buses = [
        BusConfig("can0", "socketcan", "can0"),
        BusConfig("can1", "socketcan", "can1", {"fd": False}),  # the integrator's word holds
    ]
    pipeline = SignalPipeline.from_files(
        write_file("m.yaml", HYUNDAI_MAPPING), [(None, hyundai_canfd)], buses=buses
    )

    async def run() -> None:
        async with pipeline:
            pass

    asyncio.run(run())

    assert [dict(c.options) for c in asked] == [{"fd": True}, {"fd": False}]
