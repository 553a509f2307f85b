"""The vehicle simulator against the real signal pipeline: what the model encodes decodes back.

Scenarios are recorded to candump logs in tmp_path and replayed through
``SignalPipeline`` (or sent live on a python-can virtual bus), and the decoded updates
are compared, per VSS path, with the distinct values the model produced, quantised as
the DBC quantises them. The oracle below converts raw DBC values to VSS values on its
own (it does not reuse the signal layer's converters), so both sides are checked.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import can
import pytest
import yaml
from cantools.database.can import Message

from can_signals.binding import bind
from can_signals.catalogue import (
    CATALOGUE,
    DTC_COUNT,
    DTC_LIST,
    LAMP_NAMES,
    LAMP_PREFIX,
    ODOMETER,
    SPEED,
    DataType,
)
from can_signals.dbc import load_dbcs
from can_signals.dtc import dtc_to_text
from can_signals.mapping import load_mapping
from can_signals.pipeline import PipelineStats, SignalPipeline
from can_signals.plausibility import CONFIRM_READINGS
from can_signals.simulator import (
    SCENARIOS,
    SERVICE_THRESHOLD_KM,
    BusSink,
    FrameEncoder,
    LogSink,
    Scenario,
    ScenarioOptions,
    ScenarioRunner,
    VehicleState,
    build_scenario,
    load_reference_database,
    record,
    reference_files,
    step,
    timeline,
)
from can_signals.simulator.ecu_emulator import EcuEmulator
from can_signals.simulator.ecu_sync import EcuDtcSync
from can_signals.simulator.ecus import LAMP_SIGNALS
from can_signals.sources import BusConfig
from can_signals.update import SignalValue

REF = reference_files()
SHORT = ScenarioOptions(short=True)
GEAR_TO_VSS = {"P": 126, "R": -1, "N": 0, "D": 127, "B": 127}
FIX_TO_VSS = {
    "NO_FIX": "NONE",
    "FIX_2D": "TWO_D",
    "FIX_3D": "THREE_D",
    "FIX_3D_DGNSS": "THREE_D_GROUND_BASED_AUGMENTATION",
}
Decoded = dict[str, list[SignalValue | None]]


# -- the oracle: raw DBC values to VSS values, written independently of can_signals.convert --


def _physical(message: Message, name: str, raw: int) -> float | str:
    signal = message.get_signal_by_name(name)
    if signal.choices:
        return str(signal.choices[raw])
    return raw * signal.scale + signal.offset


def _to_vss(path: str) -> Callable[[Any], SignalValue]:
    if path == ODOMETER:
        return lambda km: round(km * 1000)  # km in the DBC, metres in VSS 6.0
    if path.endswith(".SelectedGear"):
        return GEAR_TO_VSS.__getitem__
    if path.endswith(".GNSSReceiver.FixType"):
        return FIX_TO_VSS.__getitem__
    if path == "Vehicle.CurrentLocation.Timestamp":
        return lambda s: datetime.fromtimestamp(s, UTC).isoformat().replace("+00:00", "Z")
    datatype = CATALOGUE[path].datatype
    if datatype is DataType.BOOLEAN:
        return bool
    if datatype is DataType.STRING:
        return str
    if datatype.integer_range is not None:
        return round
    return float


def _signal_paths() -> dict[str, list[str]]:
    """DBC signal name -> the VSS paths the reference mapping feeds from it (not DTCs)."""
    paths: dict[str, list[str]] = defaultdict(list)
    for entry in load_mapping(REF.mapping).entries:
        if entry.path != DTC_LIST:
            paths[entry.signal].append(entry.path)
    return paths


def expected_values(scenario: Scenario) -> tuple[Decoded, list[VehicleState]]:
    """Per VSS path, the distinct consecutive values the frames carry; and every state."""
    database = load_reference_database()
    signal_paths = _signal_paths()
    converters = {p: _to_vss(p) for paths in signal_paths.values() for p in paths}
    expected: Decoded = defaultdict(list)
    states: list[VehicleState] = []
    seen_codes: set[str] = set()
    lamps: dict[str, bool] = {}
    listing: tuple[str, ...] | None = None

    def add(path: str, value: SignalValue) -> None:
        values = expected[path]
        if not values or values[-1] != value:
            values.append(value)

    for tick in timeline(scenario, FrameEncoder(database)):
        states.append(tick.state)
        for frame in tick.frames:
            message = database.get_message_by_name(frame.name)
            for name, raw in frame.raw.items():
                for path in signal_paths.get(name, ()):
                    add(path, converters[path](_physical(message, name, raw)))
            if frame.name == "DTC_BROADCAST":
                code = frame.raw["DTC_CODE"]
                if code:
                    seen_codes.add(dtc_to_text(code))
                else:
                    seen_codes.clear()
            elif frame.name == "LAMP_STATUS":
                lamps = {lamp: bool(frame.raw[LAMP_SIGNALS[lamp]]) for lamp in LAMP_NAMES}
            else:
                continue
            now = (*sorted(seen_codes), *sorted(f"LAMP:{n}" for n, lit in lamps.items() if lit))
            if now != listing:
                expected[DTC_LIST].append(now)
                listing = now
    return expected, states


# -- running the pipeline --


def exact_mapping(directory: Path) -> Path:
    """The reference mapping with every entry forwarding every change (no throttling)."""
    document = yaml.safe_load(REF.mapping.read_text(encoding="utf-8"))
    for node in document.values():
        node["dbc2vss"]["on_change"] = True
        node["dbc2vss"]["interval_ms"] = 0
    path = directory / "exact.mapping.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


async def _collect(pipeline: SignalPipeline, decoded: Decoded) -> None:
    async for update in pipeline:
        decoded[update.path].append(update.value)


def replay(mapping: Path, log: Path) -> tuple[Decoded, PipelineStats]:
    async def main() -> tuple[Decoded, PipelineStats]:
        pipeline = SignalPipeline.from_files(mapping, [(None, REF.dbc)], replay=log, speed=0)
        decoded: Decoded = defaultdict(list)
        async with pipeline:
            await _collect(pipeline, decoded)
        return decoded, pipeline.stats()

    return asyncio.run(main())


def numbers(values: list[SignalValue | None]) -> list[float]:
    assert all(isinstance(v, int | float) for v in values)
    return [float(v) for v in values if isinstance(v, int | float)]


def assert_matches(decoded: Decoded, expected: Decoded, stats: PipelineStats) -> None:
    assert stats.processor.rejected == 0, stats.processor.rejections
    assert stats.dropped_updates == 0
    assert decoded[DTC_COUNT] == [len(listing) for listing in decoded[DTC_LIST]]  # type: ignore[arg-type]
    assert set(decoded) - {DTC_COUNT} == set(expected)
    for path, values in expected.items():
        wanted = values
        if path == ODOMETER and decoded[path] != values:
            # No odometer kept: the first readings wait until later ones confirm them.
            held = len(values) - len(decoded[path])
            assert 0 < held <= CONFIRM_READINGS, (path, decoded[path][:5], values[:5])
            wanted = values[held:]
        assert decoded[path] == wanted, path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("recordings")
    logs = {}
    for name in SCENARIOS:
        logs[name] = directory / f"{name}.log"
        record(build_scenario(name, SHORT), logs[name])
    return logs


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exact_mapping(tmp_path_factory.mktemp("mapping"))


# -- the tests --


def test_reference_files_load_strictly_and_bind_without_warnings() -> None:
    database = load_reference_database()
    orders = {s.byte_order for m in database.messages for s in m.signals}
    assert orders == {"big_endian", "little_endian"}
    assert all(m.cycle_time for m in database.messages)
    binding = bind(load_mapping(REF.mapping), load_dbcs([(None, REF.dbc)]))
    assert binding.warnings == ()
    mapped = {b.entry.path for b in binding.bindings}
    assert {f"{LAMP_PREFIX}{lamp}" for lamp in LAMP_NAMES} <= mapped
    assert {ODOMETER, SPEED, DTC_LIST, "Vehicle.Service.ResetCounter"} <= mapped


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_decodes_back_to_what_the_model_encoded(
    name: str, recordings: dict[str, Path], exact: Path
) -> None:
    expected, states = expected_values(build_scenario(name, SHORT))
    decoded, stats = replay(exact, recordings[name])
    assert_matches(decoded, expected, stats)
    odometers = [s.odometer_km for s in states]
    assert odometers == sorted(odometers)
    assert all(0 <= s.speed_kmh <= 140 for s in states)
    assert all(0 <= s.soc_pct <= 100 and 0 <= s.fuel_pct <= 100 for s in states)


def test_fault_dtcs_and_lamp_appear_and_clear(recordings: dict[str, Path], exact: Path) -> None:
    decoded, _ = replay(exact, recordings["fault"])
    listings = decoded[DTC_LIST]
    assert ("P0301", "LAMP:MalfunctionIndicator") in listings
    assert ("P0300", "P0301", "LAMP:MalfunctionIndicator") in listings
    assert listings[0] == listings[-1] == ()
    assert decoded[f"{LAMP_PREFIX}MalfunctionIndicator"] == [False, True, False]


def test_product_mapping_keeps_odometer_monotonic_and_speed_in_range(
    recordings: dict[str, Path],
) -> None:
    decoded, stats = replay(REF.mapping, recordings["highway_service"])
    assert stats.processor.rejected == 0, stats.processor.rejections
    odometer = numbers(decoded[ODOMETER])
    assert odometer == sorted(odometer)
    assert odometer[0] < SERVICE_THRESHOLD_KM * 1000 < odometer[-1]
    speeds = numbers(decoded[SPEED])
    assert all(0 <= v <= 140 for v in speeds)
    assert max(speeds) > 100


def test_park_charge_soc_rises_while_charging(recordings: dict[str, Path], exact: Path) -> None:
    decoded, _ = replay(exact, recordings["park_charge"])
    charging = "Vehicle.Powertrain.TractionBattery.Charging."
    assert decoded[f"{charging}IsCharging"] == [False, True, False]
    assert decoded[f"{charging}ChargingPort.IsChargingCableConnected"] == [False, True, False]
    soc = numbers(decoded["Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"])
    assert soc[-1] > min(soc) + 1


def test_default_highway_service_crosses_the_service_threshold() -> None:
    scenario = build_scenario("highway_service")
    state = scenario.initial
    assert state.odometer_km < SERVICE_THRESHOLD_KM
    for phase in scenario.phases:  # coarse steps: the model only, no frames
        state = phase.begin(state)
        for t in range(0, phase.duration_ms, 200):
            state = step(state, phase.profile.target(t), 200)
    assert state.odometer_km > SERVICE_THRESHOLD_KM + 5


def test_scenarios_are_deterministic_and_options_apply() -> None:
    assert build_scenario("commute", SHORT) == build_scenario("commute", SHORT)
    moved = build_scenario("commute", ScenarioOptions(short=True, start_odometer_km=100.0))
    assert moved.initial.odometer_km == 100.0
    other_seed = build_scenario("commute", ScenarioOptions(short=True, seed=7))
    assert other_seed.phases != build_scenario("commute", SHORT).phases
    assert build_scenario("commute").duration_ms > 15 * 60_000


def test_recording_is_identical_at_two_speeds(recordings: dict[str, Path], tmp_path: Path) -> None:
    paced = tmp_path / "paced.log"
    scenario = build_scenario("commute", SHORT)
    encoder = FrameEncoder(load_reference_database())
    result = ScenarioRunner(scenario, encoder, [LogSink(paced)], speed=400).run()
    assert result.completed
    assert paced.read_bytes() == recordings["commute"].read_bytes()


def test_live_virtual_bus_to_live_pipeline(exact: Path) -> None:
    channel = f"test-sim-{uuid.uuid4().hex}"
    scenario = build_scenario("fault", SHORT)
    expected, _ = expected_values(scenario)

    async def main() -> tuple[Decoded, PipelineStats, int]:
        bus_config = BusConfig("car", "virtual", channel)
        pipeline = SignalPipeline.from_files(exact, [(None, REF.dbc)], buses=[bus_config])
        decoded: Decoded = defaultdict(list)
        async with pipeline:
            collector = asyncio.create_task(_collect(pipeline, decoded))
            # The frames keep the scenario's timestamps: sent as fast as the machine
            # goes, their send times span well under the second the odometer guard
            # needs to confirm a first reading (the test failed on a quick machine).
            with can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as bus:
                runner = ScenarioRunner(
                    scenario, FrameEncoder(load_reference_database()), [BusSink(bus)]
                )
                result = await asyncio.to_thread(runner.run)
            async with asyncio.timeout(10):
                # The processor offers no event to wait on: its frame counter is polled.
                while pipeline.processor.frames < result.frames:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        await collector
        return decoded, pipeline.stats(), result.frames

    decoded, stats, frames = asyncio.run(main())
    assert stats.processor.frames == frames
    assert_matches(decoded, expected, stats)


def test_ecu_sync_answers_service_03_with_the_model_codes() -> None:
    with can.Bus(interface="virtual", channel=f"test-sim-{uuid.uuid4().hex}") as bus:
        emulator = EcuEmulator(bus)
        sync = EcuDtcSync(emulator)
        encoder = FrameEncoder(load_reference_database())
        states = [t.state for t in timeline(build_scenario("fault", SHORT), encoder)]
        answers: Mapping[tuple[str, ...], bytes] = {}
        for state in states:
            sync(state)
            answers = {**answers, state.dtcs: emulator.answer(b"\x03")[0]}
    assert answers[()] == bytes([0x43, 0])
    assert answers[("P0301",)] == bytes([0x43, 1, 0x03, 0x01])
    assert answers[("P0301", "P0300")] == bytes([0x43, 2, 0x03, 0x01, 0x03, 0x00])


def test_checksums_and_counters_are_consistent() -> None:
    encoder = FrameEncoder(load_reference_database())
    ticks = timeline(build_scenario("commute", SHORT), encoder)
    frames = [f for t in ticks for f in t.frames if f.name == "VEHICLE_SPEED"][:40]
    counters = [f.raw["SPEED_COUNTER"] for f in frames]
    assert counters == [n % 16 for n in range(40)]
    for frame in frames:
        data = frame.message.data
        total = 0xB4 + len(data) + sum(data[:-1])
        assert data[-1] == total & 0xFF
