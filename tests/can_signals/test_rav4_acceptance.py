"""Acceptance on real data: a 2016 RAV4 drive (comma2k19) through opendbc's Toyota DBC.

The recording's traps, each checked here: the odometer counts whole miles (VSS wants
metres); GEAR_PACKET (0x3BC) arrives with 6 of its 8 bytes, but GEAR is inside them;
BODY_CONTROL_STATE (0x620) arrives with 7, so PARKING_BRAKE (in byte 7) is absent,
never "false"; four buses are recorded (can0, can1, can128, can129) and only can0
carries the mapped signals.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from can_signals.pipeline import PipelineStats, SignalPipeline
from can_signals.update import SignalUpdate
from tests.can_signals.conftest import decode_numbers, load_database

ODOMETER = "Vehicle.TraveledDistance"
SPEED = "Vehicle.Speed"
ENGINE_SPEED = "Vehicle.Powertrain.CombustionEngine.Speed"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
PARKING_BRAKE = "Vehicle.Chassis.ParkingBrake.IsEngaged"
METRES_PER_MILE = 1609.344
#: The DBC messages the RAV4 mapping reads.
MAPPED_MESSAGES = ("SPEED", "ENGINE_RPM", "GEAR_PACKET", "UI_SETTING", "BODY_CONTROL_STATE")
_LOG_LINE = re.compile(r"^\((?P<t>[\d.]+)\) (?P<bus>\S+) (?P<id>[0-9A-F]+)#(?P<data>[0-9A-F]*)$")


def _mapping(repo_root: Path) -> Path:
    return repo_root / "docs" / "cars" / "rav4_2016" / "mapping.yaml"


Frame = tuple[float, str, int, bytes]  # timestamp, bus, id, data


def _log_frames(path: Path) -> list[Frame]:
    """Every frame of a candump log, read independently of python-can."""
    frames = []
    for line in path.read_text().splitlines():
        match = _LOG_LINE.match(line)
        assert match, f"unexpected line in {path.name}: {line!r}"
        frames.append(
            (float(match["t"]), match["bus"], int(match["id"], 16), bytes.fromhex(match["data"]))
        )
    return frames


@pytest.fixture(scope="module")
def drive_frames(rav4_dir: Path) -> list[Frame]:
    return _log_frames(rav4_dir / "drive_seg40.log")


async def _collect(pipeline: SignalPipeline) -> tuple[list[SignalUpdate], PipelineStats]:
    async with pipeline:
        updates = [update async for update in pipeline]
    return updates, pipeline.stats()


@pytest.fixture(scope="module")
def cli_run(rav4_dir: Path, repo_root: Path) -> subprocess.CompletedProcess[str]:
    """``touchpoint signals`` on the whole drive, as a user runs it."""
    command = [
        sys.executable, "-m", "touchpoint.cli", "signals",
        "--dbc", str(rav4_dir / "toyota_new_mc_pt.dbc"),
        "--mapping", str(_mapping(repo_root)),
        "--replay", str(rav4_dir / "drive_seg40.log"),
        "--json", "--speed", "0",
    ]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, cwd=repo_root, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def cli_updates(cli_run: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert cli_run.returncode == 0, cli_run.stderr
    return [json.loads(line) for line in cli_run.stdout.splitlines()]


def _values(updates: list[dict[str, Any]], path: str) -> list[Any]:
    return [u["value"] for u in updates if u["path"] == path]


def test_the_odometer_goes_from_15589_to_15590_miles_in_metres(
    cli_updates: list[dict[str, Any]],
) -> None:
    odometer = _values(cli_updates, ODOMETER)

    assert odometer == [round(15589 * METRES_PER_MILE), round(15590 * METRES_PER_MILE)]
    assert odometer == [25088064, 25089673]
    assert all(u["unit"] == "m" for u in cli_updates if u["path"] == ODOMETER)


def test_the_odometer_never_decreases(cli_updates: list[dict[str, Any]]) -> None:
    odometer = [u for u in cli_updates if u["path"] == ODOMETER]

    assert odometer
    assert all(a["value"] <= b["value"] for a, b in itertools.pairwise(odometer))
    assert all(a["timestamp"] < b["timestamp"] for a, b in itertools.pairwise(odometer))


def test_speed_stays_between_29_and_74_kmh(cli_updates: list[dict[str, Any]]) -> None:
    speeds = _values(cli_updates, SPEED)

    assert len(speeds) > 100
    assert all(29.0 <= v <= 74.0 for v in speeds)
    assert max(speeds) - min(speeds) > 40  # a real drive, not one value repeated
    assert {u["unit"] for u in cli_updates if u["path"] == SPEED} == {"km/h"}


def test_speed_updates_respect_the_100_ms_interval(cli_updates: list[dict[str, Any]]) -> None:
    times = [u["timestamp"] for u in cli_updates if u["path"] == SPEED]
    values = _values(cli_updates, SPEED)

    assert all(b - a >= 0.1 for a, b in itertools.pairwise(times))
    assert all(a != b for a, b in itertools.pairwise(values))  # on_change


def _kuksa_rule(frames: list[tuple[float, float]], interval: float) -> list[tuple[float, float]]:
    """KUKSA's interval_ms + on_change, as its dbc2vssmapper applies them: at the first
    frame an interval after the last check, check again (and restart the interval), and
    send the value if it differs from the last one sent."""
    sent: list[tuple[float, float]] = []
    last_check = -math.inf
    for t, value in frames:
        if t < last_check + interval:
            continue
        last_check = t
        if not sent or sent[-1][1] != value:
            sent.append((t, value))
    return sent


@pytest.mark.parametrize(
    ("path", "message", "signal", "interval"),
    [(SPEED, "SPEED", "SPEED", 0.1), (ENGINE_SPEED, "ENGINE_RPM", "RPM", 0.5)],
)
def test_interval_and_on_change_follow_kuksas_rule_on_the_real_frames(
    cli_updates: list[dict[str, Any]],
    drive_frames: list[Frame],
    rav4_dir: Path,
    path: str,
    message: str,
    signal: str,
    interval: float,
) -> None:
    # The reference decodes the log with cantools itself.
    definition = load_database(rav4_dir / "toyota_new_mc_pt.dbc").get_message_by_name(message)
    frames = [(t, decode_numbers(definition, d)[signal]) for t, bus, i, d in drive_frames
              if bus == "can0" and i == definition.frame_id]  # fmt: skip
    sent = [(u["timestamp"], u["value"]) for u in cli_updates if u["path"] == path]

    assert sent == _kuksa_rule(frames, interval)
    assert len(sent) > 100


def test_the_gear_from_the_6_byte_frame_is_drive_throughout(
    cli_updates: list[dict[str, Any]], drive_frames: list[Frame], rav4_dir: Path
) -> None:
    gear_packet = load_database(rav4_dir / "toyota_new_mc_pt.dbc").get_message_by_name(
        "GEAR_PACKET"
    )
    lengths = {len(d) for _, _, i, d in drive_frames if i == 0x3BC}

    assert lengths == {6}  # the trap is in the data
    assert gear_packet.length == 8
    assert _values(cli_updates, GEAR) == [127]  # Drive, once: on_change


def test_the_parking_brake_of_the_7_byte_frame_is_absent_not_false(
    cli_run: subprocess.CompletedProcess[str], cli_updates: list[dict[str, Any]]
) -> None:
    assert PARKING_BRAKE not in {u["path"] for u in cli_updates}
    summary = cli_run.stderr
    absent = summary.split("# absent (bits missing from short frames):", 1)
    assert len(absent) == 2, summary
    assert PARKING_BRAKE in absent[1]
    assert "# rejected: 0" in summary


def test_only_can0_produces_updates(
    cli_updates: list[dict[str, Any]], drive_frames: list[Frame]
) -> None:
    buses = Counter(bus for _, bus, _, _ in drive_frames)

    assert set(buses) == {"can0", "can1", "can128", "can129"}
    assert {u["bus"] for u in cli_updates} == {"can0"}


def test_the_summary_counts_frames_as_the_log_has_them(
    cli_run: subprocess.CompletedProcess[str], drive_frames: list[Frame], rav4_dir: Path
) -> None:
    database = load_database(rav4_dir / "toyota_new_mc_pt.dbc")
    lengths = {
        database.get_message_by_name(name).frame_id: database.get_message_by_name(name).length
        for name in MAPPED_MESSAGES
    }
    frames = drive_frames
    mapped = [(i, len(d)) for _, _, i, d in frames if i in lengths]
    short = sum(1 for i, n in mapped if n < lengths[i])

    summary = cli_run.stderr
    assert (
        f"# frames: {len(frames)} ({len(mapped)} mapped, {len(frames) - len(mapped)} unmapped, "
        "0 on buses without a DBC)"
    ) in summary
    assert f"# frames shorter than their DBC length: {short}, longer: 0" in summary
    assert short > 0


def test_a_dbc_for_can0_only_leaves_the_other_buses_undecoded(
    rav4_dir: Path, repo_root: Path, tmp_path: Path
) -> None:
    # The excerpt's odometer and speed frames copied onto can128 and can129 with
    # absurd payloads: with the DBC assigned to can0, they must change nothing.
    excerpt = (rav4_dir / "drive_seg40_excerpt.log").read_text().splitlines()
    copies = [
        line.replace(" can0 ", f" can{128 + n % 2} ").split("#")[0] + "#FFFFFFFFFFFFFFFF"
        for n, line in enumerate(excerpt)
        if " 611#" in line or " 0B4#" in line
    ]
    mixed = tmp_path / "mixed.log"
    mixed.write_text("\n".join(sorted(excerpt + copies)) + "\n")
    dbc = rav4_dir / "toyota_new_mc_pt.dbc"

    plain, _ = asyncio.run(
        _collect(SignalPipeline.from_files(_mapping(repo_root), [(None, dbc)],
                                           replay=rav4_dir / "drive_seg40_excerpt.log", speed=0))
    )  # fmt: skip
    scoped, stats = asyncio.run(
        _collect(SignalPipeline.from_files(_mapping(repo_root), [("can0", dbc)],
                                           replay=mixed, speed=0))
    )  # fmt: skip

    assert copies
    assert scoped == plain
    assert stats.processor.frames_without_dbc == len(copies)
    assert set(stats.processor.rejections) == {("truncated", PARKING_BRAKE)}


def test_the_excerpt_gives_the_same_updates_at_any_speed(
    rav4_dir: Path, repo_root: Path, cli_updates: list[dict[str, Any]]
) -> None:
    dbcs: list[tuple[str | None, Path]] = [(None, rav4_dir / "toyota_new_mc_pt.dbc")]
    log = rav4_dir / "drive_seg40_excerpt.log"
    assert len(log.read_text().splitlines()) == 5360

    fast, fast_stats = asyncio.run(
        _collect(SignalPipeline.from_files(_mapping(repo_root), dbcs, replay=log, speed=0))
    )
    # 60 s of recording at 40 times real time: 1.5 s, paced by the frames' timestamps.
    paced, paced_stats = asyncio.run(
        _collect(SignalPipeline.from_files(_mapping(repo_root), dbcs, replay=log, speed=40))
    )

    assert fast == paced
    assert fast_stats.processor == paced_stats.processor
    assert fast_stats.dropped_updates == paced_stats.dropped_updates == 0
    # The excerpt holds the whole drive's mapped frames: the same updates as the full log.
    assert [u.to_json_dict() for u in fast] == cli_updates
