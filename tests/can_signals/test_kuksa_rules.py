"""KUKSA's rules where touchpoint used to be stricter: labels, the interval, VSS 4.0 units.

- A ``from`` label the DBC lacks is a warning and never matches (KUKSA compares it with
  the decoded label, which it never equals); a label counts when any message carrying
  the signal name has it (the RAV4 DBC's ``GEAR`` is in two messages with different
  tables).
- A value refused for its range or plausibility does not use up ``interval_ms``: KUKSA
  drops out-of-range values before its time condition, so the next good value inside
  the interval is still sent. A missing table entry does use it up, as in KUKSA.
- A mapping written for VSS 4.0 declares the odometer in km; touchpoint's catalogue
  (VSS 6.0) has metres, and the declared unit is converted.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from can_signals.binding import bind
from can_signals.dbc import load_dbc
from can_signals.errors import MappingError
from can_signals.mapping import load_mapping
from can_signals.pipeline import PipelineStats, SignalPipeline
from can_signals.update import SignalUpdate
from tests.can_signals.conftest import Harness, HarnessFactory, load_database

WriteFile = Callable[[str, str], Path]

SPEED = "Vehicle.Speed"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
ODOMETER = "Vehicle.TraveledDistance"
MILE_KM = 1.609344


async def _replay(
    mapping: Path, dbc: Path, log: Path
) -> tuple[list[SignalUpdate], PipelineStats, SignalPipeline]:
    pipeline = SignalPipeline.from_files(mapping, [(None, dbc)], replay=log, speed=0)
    async with pipeline:
        updates = [u async for u in pipeline]
    return updates, pipeline.stats(), pipeline


# --- labels ----------------------------------------------------------------------------

GEAR_LABELS = """\
Vehicle.Powertrain.Transmission.SelectedGear:
  datatype: int8
  dbc2vss:
    signal: GEAR
    on_change: true
    transform:
      mapping:
        - {from: D, to: 127}
        - {from: S, to: 127}
        - {from: N, to: 0}
        - {from: R, to: -1}
        - {from: P, to: 126}
"""


def test_rav4_gear_labels_of_either_message_decode_drive(
    write_file: WriteFile, rav4_dir: Path
) -> None:
    # GEAR is in GEAR_PACKET (D S N R P) and GEAR_PACKET_HYBRID (B D N P R): S is a label
    # of the one, not of the other, and no 'message' key picks one.
    mapping = write_file("gear.yaml", GEAR_LABELS)

    updates, stats, pipeline = asyncio.run(
        _replay(mapping, rav4_dir / "toyota_new_mc_pt.dbc", rav4_dir / "drive_seg40.log")
    )

    assert [u.value for u in updates if u.path == GEAR] == [127]  # Drive, throughout
    assert stats.processor.rejected == 0
    warnings = [w.message for w in pipeline.binding.warnings]
    assert len(warnings) == 1
    assert "in several messages (GEAR_PACKET, GEAR_PACKET_HYBRID)" in warnings[0]


def test_a_label_no_message_has_is_a_warning_and_never_matches(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(
        "Vehicle.Powertrain.Transmission.SelectedGear:\n  dbc2vss:\n    signal: GEAR\n"
        "    on_change: true\n    transform:\n      mapping:\n"
        "        - {from: DRIVE, to: 127}\n        - {from: D, to: 127}\n"
        "        - {from: PARK, to: 126}\n        - {from: P, to: 126}\n"
    )

    (warning,) = harness.binding.warnings
    assert warning.where == "line 1"
    assert (
        "mapping sources 'DRIVE', 'PARK' are not a label of DBC signal GEAR "
        "(its labels: D, N, P, R, S): never matches"
    ) in warning.message
    for t, gear in enumerate(("P", "D", "P")):
        harness.send("VEHICLE", float(t), GEAR=gear)
    assert harness.values(GEAR) == [126, 127, 126]


def test_a_table_of_unknown_labels_only_loads_and_maps_nothing(
    make_harness: HarnessFactory,
) -> None:
    # A mapping shared across a model family: this car's DBC has none of these labels.
    harness = make_harness(
        "Vehicle.Powertrain.Transmission.SelectedGear:\n  dbc2vss:\n    signal: GEAR\n"
        "    on_change: true\n    transform:\n      mapping:\n"
        "        - {from: DI_GEAR_D, to: 127}\n"
    )

    harness.send("VEHICLE", 0.0, GEAR="D")

    assert harness.values(GEAR) == []
    assert harness.rejections("no_table_entry", GEAR) == 1
    assert "'DI_GEAR_D' is not a label" in harness.binding.warnings[0].message


# --- the interval ------------------------------------------------------------------------


def _speeds(harness: Harness, frames: list[tuple[float, float]]) -> list[tuple[float, object]]:
    for t, kmh in frames:
        harness.send("VEHICLE", t, SPEED=kmh)
    return [(u.timestamp, u.value) for u in harness.updates if u.path == SPEED]


def test_a_value_outside_the_dbc_range_does_not_use_up_the_interval(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness("Vehicle.Speed:\n  dbc2vss: {signal: SPEED, interval_ms: 100}\n")
    # SPEED's DBC range ends at 320 km/h: the frame at 0.10 s is refused, and the good
    # value 50 ms later is sent at once, not held back until 0.20 s.
    frames = [(0.0, 30.0), (0.10, 400.0), (0.15, 31.0), (0.20, 31.5), (0.26, 32.0)]

    assert _speeds(harness, frames) == [(0.0, 30.0), (0.15, 31.0), (0.26, 32.0)]
    assert harness.rejections("out_of_dbc_range", SPEED) == 1


def test_an_implausible_value_does_not_use_up_the_interval(make_harness: HarnessFactory) -> None:
    harness = make_harness("Vehicle.Speed:\n  dbc2vss: {signal: SPEED, interval_ms: 100}\n")
    # 30 -> 200 km/h in 0.1 s is no car's acceleration.
    frames = [(0.0, 30.0), (0.10, 200.0), (0.12, 31.0)]

    assert _speeds(harness, frames) == [(0.0, 30.0), (0.12, 31.0)]
    assert harness.rejections("speed_jump", SPEED) == 1


def test_a_missing_table_entry_uses_up_the_interval_as_in_kuksa(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(
        "Vehicle.Powertrain.Transmission.SelectedGear:\n  dbc2vss:\n    signal: GEAR\n"
        "    interval_ms: 100\n    transform:\n      mapping:\n"
        "        - {from: P, to: 126}\n        - {from: D, to: 127}\n"
    )
    # N has no entry: KUKSA's time condition already held, so D at 0.15 s waits.
    for t, gear in ((0.0, "P"), (0.10, "N"), (0.15, "D"), (0.20, "D")):
        harness.send("VEHICLE", t, GEAR=gear)

    assert list(zip(harness.timestamps(GEAR), harness.values(GEAR), strict=True)) == [
        (0.0, 126), (0.20, 127),
    ]  # fmt: skip
    assert harness.rejections("no_table_entry", GEAR) == 1


def test_the_interval_is_kuksas_float_comparison(make_harness: HarnessFactory) -> None:
    # KUKSA compares (t - last) * 1000 < interval_ms; with these timestamps (from the
    # Model 3 recording) t - last falls a hair short of 0.1 s in floating point, while
    # last + 0.1 does not exceed t: the frame at .965242 is not yet due in KUKSA.
    harness = make_harness("Vehicle.Speed:\n  dbc2vss: {signal: SPEED, interval_ms: 100}\n")
    first, second, third = 1637353680.865242, 1637353680.965242, 1637353680.975692
    assert (second - first) * 1000.0 < 100
    assert second >= first + 0.1

    assert [t for t, _ in _speeds(harness, [(first, 30.0), (second, 30.0), (third, 30.0)])] == [
        first, third,
    ]  # fmt: skip


# --- VSS 4.0 units -----------------------------------------------------------------------


def vss40_odometer_tree() -> dict[str, object]:
    """A KUKSA VSS 4.0 tree mapping the RAV4's odometer: VSS 4.0 has it as a float in km."""
    return {
        "Vehicle": {
            "type": "branch",
            "description": "High-level vehicle data.",
            "children": {
                "TraveledDistance": {
                    "type": "sensor",
                    "datatype": "float",
                    "unit": "km",
                    "description": "Odometer reading, total distance traveled during the "
                    "lifetime of the vehicle.",
                    "dbc2vss": {
                        "signal": "ODOMETER",
                        "on_change": True,
                        # The cluster counts miles (UNITS == 2 in this recording).
                        "transform": {"math": f"x * {MILE_KM}"},
                    },
                }
            },
        }
    }


def test_a_vss40_odometer_in_km_is_published_in_metres(tmp_path: Path, rav4_dir: Path) -> None:
    mapping = tmp_path / "vss_dbc.json"
    mapping.write_text(json.dumps(vss40_odometer_tree(), indent=2))
    database = load_database(rav4_dir / "toyota_new_mc_pt.dbc")
    cluster = database.get_message_by_name("UI_SETTING")
    line = re.compile(rf"^\(([\d.]+)\) can0 {cluster.frame_id:03X}#([0-9A-F]*)$")
    miles: list[int] = []
    for text in (rav4_dir / "drive_seg40.log").read_text().splitlines():
        if match := line.match(text):
            decoded = cluster.decode(bytes.fromhex(match[2]), allow_truncated=True)
            assert isinstance(decoded, dict)
            reading = decoded["ODOMETER"]
            assert isinstance(reading, int)
            if not miles or miles[-1] != reading:
                miles.append(reading)

    updates, _, _ = asyncio.run(
        _replay(mapping, rav4_dir / "toyota_new_mc_pt.dbc", rav4_dir / "drive_seg40.log")
    )

    odometer = [u for u in updates if u.path == ODOMETER]
    assert miles == [15589, 15590]
    assert [u.value for u in odometer] == [round(m * MILE_KM * 1000) for m in miles]
    assert [u.value for u in odometer] == [25088064, 25089673]
    assert {u.unit for u in odometer} == {"m"}
    assert all(isinstance(u.value, int) for u in odometer)  # VSS 6.0's uint32


def test_a_declared_unit_that_cannot_become_the_catalogues_is_an_error(
    write_file: WriteFile, test_dbc: Path
) -> None:
    text = (
        "Vehicle.TraveledDistance:\n  datatype: float\n  unit: kg\n"
        "  dbc2vss: {signal: SERVICE_KM, transform: {math: x}}\n"
        "Vehicle.Speed:\n  unit: furlongs/fortnight\n  dbc2vss: {signal: SPEED, "
        "transform: {math: x}}\n"
    )
    with pytest.raises(MappingError) as caught:
        bind(load_mapping(write_file("m.yaml", text)), [load_dbc(test_dbc)])

    odometer, speed = caught.value.problems
    assert "cannot convert 'kg' (mass) to 'm' (length)" in odometer.message
    assert "unknown unit 'furlongs/fortnight'" in speed.message


def test_the_cli_shows_the_warnings_with_the_problems(
    write_file: WriteFile, rav4_dir: Path
) -> None:
    mapping = write_file(
        "draft.yaml",
        GEAR_LABELS.replace("{from: P, to: 126}", "{from: PARK, to: 126}")
        + "Vehicle.Speed:\n  dbc2vss: {signal: SPED}\n",
    )
    run = subprocess.run(
        [sys.executable, "-m", "touchpoint.cli", "signals", "--dbc",
         str(rav4_dir / "toyota_new_mc_pt.dbc"), "--mapping", str(mapping),
         "--replay", str(rav4_dir / "drive_seg40_excerpt.log")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert lines[0].startswith("warning: ")
    assert "in several messages" in lines[0]
    assert lines[1].startswith("warning: ")
    assert "'PARK' is not a label" in lines[1]
    assert lines[2] == "error: 1 problem found"
    assert "unknown DBC signal 'SPED' (did you mean 'SPEED'?)" in lines[3]
