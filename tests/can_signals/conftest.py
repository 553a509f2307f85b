"""Shared pieces of the CAN signal layer's tests: a test DBC, a processor harness, buses.

Everything here is real: DBC and mapping files are written to ``tmp_path`` and loaded
the way the daemon loads them, frames are encoded with cantools, and live tests use
python-can's ``virtual`` interface on a channel name of their own (virtual channels are
process-global).
"""

from __future__ import annotations

import importlib.resources
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import can
import cantools
import pytest
from cantools.database.can import Database, Message

from can_signals.binding import Binding, bind
from can_signals.dbc import load_dbc
from can_signals.mapping import load_mapping
from can_signals.processor import FrameProcessor
from can_signals.update import SignalUpdate, SignalValue

#: A small powertrain DBC covering what the signal layer must handle: little- and
#: big-endian, signed, scaled and offset signals, value tables (one with a label the
#: catalogue does not allow), a multiplexed message, an extended (29-bit) ID, cycle times.
TEST_DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU

BO_ 256 VEHICLE: 8 ECU
 SG_ SPEED : 0|16@1+ (0.01,0) [0|320] "km/h" ECU
 SG_ GEAR : 16|3@1+ (1,0) [0|7] "" ECU
 SG_ IGN : 19|3@1+ (1,0) [0|7] "" ECU
 SG_ PARK_BRAKE : 22|1@1+ (1,0) [0|1] "" ECU
 SG_ FUEL : 24|8@1+ (1,0) [0|100] "%" ECU
 SG_ RATIO : 32|8@1+ (1,0) [0|255] "" ECU
 SG_ RPM : 47|16@0+ (0.25,0) [0|16000] "rpm" ECU

BO_ 1553 CLUSTER: 8 ECU
 SG_ ODOMETER : 7|24@0+ (1,0) [0|16777215] "mi" ECU
 SG_ SERVICE_KM : 24|16@1- (1,0) [-32768|32767] "km" ECU
 SG_ OIL_LIFE : 40|8@1+ (1,0) [0|255] "%" ECU

BO_ 2566834688 FAULTS: 8 ECU
 SG_ DTC : 0|16@1+ (1,0) [0|65535] "" ECU
 SG_ MIL : 16|1@1+ (1,0) [0|1] "" ECU
 SG_ OIL_LAMP : 17|1@1+ (1,0) [0|1] "" ECU

BO_ 768 GNSS: 8 ECU
 SG_ UTC : 0|32@1+ (1,0) [0|4294967295] "s" ECU

BO_ 769 TYRES: 8 ECU
 SG_ TYRE_IDX M : 0|2@1+ (1,0) [0|3] "" ECU
 SG_ PRESSURE_FRONT m0 : 8|8@1+ (4,0) [0|1020] "kPa" ECU
 SG_ PRESSURE_REAR m1 : 8|8@1+ (0.04,0) [0|10.2] "bar" ECU
 SG_ SOC : 16|8@1+ (0.5,0) [0|100] "%" ECU

BA_DEF_ BO_ "GenMsgCycleTime" INT 0 65535;
BA_DEF_DEF_ "GenMsgCycleTime" 0;
BA_ "GenMsgCycleTime" BO_ 256 100;
BA_ "GenMsgCycleTime" BO_ 1553 1000;

VAL_ 256 GEAR 0 "P" 1 "R" 2 "N" 3 "D" 4 "S" ;
VAL_ 256 IGN 0 "OFF" 1 "ACC" 2 "ON" 3 "START" 4 "CRANK" ;
"""

#: The 29-bit ID of the test DBC's FAULTS message.
FAULTS_ID = 0x18FECA00


def encode(message: Message, values: Mapping[str, float | int | str]) -> bytes:
    """Encode a frame with cantools; signals not given are 0 (raw-range checks off)."""
    full: dict[str, float | int | str] = {signal.name: 0 for signal in message.signals}
    full.update(values)
    return bytes(message.encode(full, strict=False))


def decode_numbers(message: Message, data: bytes) -> dict[str, float]:
    """cantools' own decoding of a frame, as numbers (value tables not applied)."""
    values = message.decode_simple(data, decode_choices=False)
    numbers: dict[str, float] = {}
    for name, value in values.items():
        assert isinstance(value, int | float), (name, value)
        numbers[name] = value
    return numbers


@dataclass
class Harness:
    """A frame processor bound to files on disk, collecting what it emits."""

    processor: FrameProcessor
    database: Database
    binding: Binding
    updates: list[SignalUpdate] = field(default_factory=list)

    def send(
        self,
        message: str,
        timestamp: float,
        *,
        bus: str = "can0",
        data: bytes | None = None,
        **values: float | str,
    ) -> None:
        """Feed one frame of ``message`` (encoded from ``values`` unless ``data`` is given)."""
        definition = self.database.get_message_by_name(message)
        payload = encode(definition, values) if data is None else data
        self.processor.bus(bus)(
            can.Message(
                timestamp=timestamp,
                arbitration_id=definition.frame_id,
                is_extended_id=definition.is_extended_frame,
                data=payload,
                channel=bus,
            )
        )

    def values(self, path: str) -> list[SignalValue | None]:
        """The values emitted for ``path``, in order (``None`` for stale)."""
        return [u.value for u in self.updates if u.path == path]

    def timestamps(self, path: str) -> list[float]:
        """When the updates of ``path`` were emitted, on the frames' clock."""
        return [u.timestamp for u in self.updates if u.path == path]

    def rejections(self, reason: str, path: str) -> int:
        """How many values of ``path`` were rejected for ``reason``."""
        return self.processor.stats().rejections.get((reason, path), 0)


HarnessFactory = Callable[..., Harness]


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a text file into the test's temporary directory and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def test_dbc(write_file: Callable[[str, str], Path]) -> Path:
    """The test DBC, written to a file."""
    return write_file("powertrain.dbc", TEST_DBC)


@pytest.fixture
def make_harness(write_file: Callable[[str, str], Path]) -> HarnessFactory:
    """Build a :class:`Harness` from mapping text (YAML unless ``name`` ends in .json)."""

    def make(mapping: str, dbc: str = TEST_DBC, name: str = "mapping.yaml") -> Harness:
        dbc_path = write_file("harness.dbc", dbc)
        mapping_path = write_file(name, mapping)
        source = load_dbc(dbc_path)
        binding = bind(load_mapping(mapping_path), [source])
        updates: list[SignalUpdate] = []
        processor = FrameProcessor(binding, updates.append)
        return Harness(processor, source.database, binding, updates)

    return make


@pytest.fixture
def virtual_channel() -> str:
    """A virtual CAN channel name no other test uses."""
    return f"test-signals-{uuid.uuid4().hex}"


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (notifiers, replays)."""
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture(scope="session")
def opendbc_dir() -> Path:
    """The DBC files shipped by the ``opendbc`` package."""
    return Path(str(importlib.resources.files("opendbc") / "dbc"))


@pytest.fixture(scope="session")
def tesla_party_dbc(opendbc_dir: Path) -> Path:
    """opendbc's Tesla Model 3 "party" bus DBC: speed, gear table, a multiplexed message."""
    path = opendbc_dir / "tesla_model3_party.dbc"
    assert path.is_file(), f"opendbc no longer ships {path.name}"
    return path


@pytest.fixture(scope="session")
def vss6(realdata_dir: Path) -> Path:
    """VSS 6.0's JSON export (``shared/vss/vss-6.0.json``), as an integrator's ``--vss``."""
    path = realdata_dir.parent / "vss" / "vss-6.0.json"
    if not path.is_file():
        pytest.fail(f"the shared VSS release is missing: {path}", pytrace=False)
    return path


def load_database(path: Path) -> Database:
    """Load a DBC as the tests' own reference decoder (cantools, non-strict like the code)."""
    database = cantools.database.load_file(str(path), strict=False)
    assert isinstance(database, Database)
    return database


#: A mapping of every signal of :data:`TEST_DBC`, each forwarded on change.
FULL_MAPPING = """\
Vehicle.Speed:
  dbc2vss: {signal: SPEED, on_change: true}
Vehicle.Powertrain.Transmission.SelectedGear:
  dbc2vss:
    signal: GEAR
    on_change: true
    transform:
      mapping:
        - {from: P, to: 126}
        - {from: R, to: -1}
        - {from: N, to: 0}
        - {from: D, to: 127}
Vehicle.LowVoltageSystemState:
  dbc2vss:
    signal: IGN
    on_change: true
    transform:
      mapping:
        - {from: OFF, to: OFF}
        - {from: ACC, to: ACC}
        - {from: ON, to: ON}
        - {from: START, to: START}
        - {from: CRANK, to: START}
Vehicle.Chassis.ParkingBrake.IsEngaged:
  dbc2vss: {signal: PARK_BRAKE, on_change: true}
Vehicle.Powertrain.FuelSystem.RelativeLevel:
  dbc2vss: {signal: FUEL, on_change: true}
Vehicle.Service.DistanceToService:
  dbc2vss: {signal: RATIO, on_change: true, transform: {math: "100 / x"}}
Vehicle.Powertrain.CombustionEngine.Speed:
  dbc2vss: {signal: RPM, on_change: true}
Vehicle.TraveledDistance:
  dbc2vss: {signal: ODOMETER, on_change: true}
Vehicle.Powertrain.CombustionEngine.EngineOil.RelativeLifeRemaining:
  dbc2vss: {signal: OIL_LIFE, on_change: true}
Vehicle.Diagnostics.DTCList:
  dbc2vss: {signal: DTC, transform: {dtc: true}}
Vehicle.Diagnostics.Lamp.MalfunctionIndicator:
  dbc2vss: {signal: MIL, on_change: true}
Vehicle.Diagnostics.Lamp.OilPressure:
  dbc2vss: {signal: OIL_LAMP, on_change: true}
Vehicle.CurrentLocation.Timestamp:
  dbc2vss: {signal: UTC, on_change: true}
Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure:
  dbc2vss: {signal: PRESSURE_FRONT, on_change: true}
Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.Pressure:
  dbc2vss: {signal: PRESSURE_REAR, on_change: true}
Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed:
  dbc2vss: {signal: SOC, on_change: true}
"""
