"""The RAV4 recording played onto vcan0 by canplayer gives the updates of its replay.

canplayer (can-utils) plays the first seconds of the real drive at real time; the
pipeline reads vcan0 as the car's ``can0`` with the RAV4 mapping, the same one that
replays the recording file. Their value sequences agree path by path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from can_signals.pipeline import SignalPipeline
from can_signals.sources import BusConfig
from can_signals.update import SignalUpdate
from tests.socketcan.kernel import Candump, candump_frames
from tests.socketcan.updates import STAMP_TOLERANCE_S, ByPath, assert_same_updates, by_path

PROJECT = Path(__file__).resolve().parents[2]
MAPPING = PROJECT / "docs" / "cars" / "rav4_2016" / "mapping.yaml"
#: Seconds of the recording played (at real time: the odometer's plausibility guard
#: judges the frames' own timing, and interval routes count in it).
PLAY_S = 15.0
#: Seconds the pipelines keep listening after the play: every signal goes stale.
SILENCE_S = 6.0


def _excerpt(rav4_dir: Path, into: Path) -> Path:
    lines = (rav4_dir / "drive_seg40_excerpt.log").read_text(encoding="ascii").splitlines()
    start = float(lines[0].split()[0].strip("()"))
    kept = [line for line in lines if float(line.split()[0].strip("()")) < start + PLAY_S]
    path = into / "rav4_first_seconds.log"
    path.write_text("\n".join(kept) + "\n", encoding="ascii")
    return path


async def _replay(log: Path, dbc: Path, mapping: Path = MAPPING) -> list[SignalUpdate]:
    pipeline = SignalPipeline.from_files(mapping, [(None, dbc)], replay=log, speed=0)
    updates: list[SignalUpdate] = []
    async with pipeline:
        async for batch in pipeline.batches():
            updates += batch
    return updates


async def _play(log: Path, dbc: Path, candump_log: Path, mapping: Path = MAPPING) -> dict[str, Any]:
    """Play ``log`` once into two pipelines: the raw path, and the kernel's broadcast manager."""
    raw = SignalPipeline.from_files(
        mapping, [(None, dbc)], buses=[BusConfig("can0", "socketcan", "vcan0", bcm=False)]
    )
    bcm = SignalPipeline.from_files(
        mapping, [(None, dbc)], buses=[BusConfig("can0", "socketcan", "vcan0")]
    )
    updates: dict[str, list[SignalUpdate]] = {"raw": [], "bcm": []}

    async def consume(pipeline: SignalPipeline, into: list[SignalUpdate]) -> None:
        async for batch in pipeline.batches():
            into.extend(batch)

    candump = Candump("vcan0", candump_log)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(raw)
        await stack.enter_async_context(bcm)
        consumers = [
            asyncio.create_task(consume(raw, updates["raw"])),
            asyncio.create_task(consume(bcm, updates["bcm"])),
        ]
        player = await asyncio.create_subprocess_exec("canplayer", "-I", str(log), "vcan0=can0")
        assert await player.wait() == 0
        mapped = sum(1 for ident, _ in candump_frames(log) if int(ident, 16) in _mapped(raw))
        for _ in range(600):  # the pipelines work through their sockets' backlog
            seen = bcm.processor.frames + bcm.stats().kernel_held_back
            if raw.processor.frames >= mapped and seen >= mapped:
                break
            await asyncio.sleep(0.1)
        # The kernel's throttle sends a held change at the end of its interval (500 ms at
        # most), and its timeouts (1 s: ten cycles of these frames) report the silence.
        await asyncio.sleep(SILENCE_S)
        frames = {"raw": raw.processor.frames, "bcm": bcm.processor.frames}
        # The paths whose frames the kernel filters (the rest share the raw socket).
        in_kernel = {
            route.path
            for plan in bcm.processor.bus("can0").table.values()
            if plan.rearm is not None
            for route in plan.routes
        }
        held_back = {"raw": raw.stats().kernel_held_back, "bcm": bcm.stats().kernel_held_back}
        operations = bcm.stats().kernel_operations
    await asyncio.gather(*consumers)
    candump.stop()
    return {
        "updates": updates, "frames": frames, "held_back": held_back, "mapped": mapped,
        "in_kernel": in_kernel, "operations": operations,
    }  # fmt: skip


def _mapped(pipeline: SignalPipeline) -> set[int]:
    return {key & 0x1FFFFFFF for key in pipeline.processor.bus("can0").table}


def _values(updates: list[SignalUpdate]) -> dict[str, list[Any]]:
    # Stale markers aside: the live side's silence watcher runs on the wall clock.
    paths: dict[str, list[Any]] = defaultdict(list)
    for update in updates:
        if update.value is not None:
            paths[update.path].append(update.value)
    return dict(paths)


@pytest.fixture(scope="module")
def played(rav4_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("rav4")
    log = _excerpt(rav4_dir, work)
    dbc = rav4_dir / "toyota_new_mc_pt.dbc"
    run = asyncio.run(_play(log, dbc, work / "candump.log"))
    return {
        "log": log, "live": run["updates"]["raw"], "bcm": run["updates"]["bcm"], "run": run,
        "replay": asyncio.run(_replay(log, dbc)), "candump": work / "candump.log",
    }  # fmt: skip


def test_canplayer_puts_the_recordings_frames_on_vcan0(played: dict[str, Any]) -> None:
    assert candump_frames(played["candump"]) == candump_frames(played["log"])


def test_the_played_recording_gives_the_updates_of_its_replay(played: dict[str, Any]) -> None:
    live, replay = _values(played["live"]), _values(played["replay"])
    assert {"Vehicle.Speed", "Vehicle.TraveledDistance"} <= live.keys()
    # Routes with an interval pick frames by their timing, which canplayer reproduces only
    # roughly under emulation (tens of ms): those are held to the next test instead.
    timed = _interval_paths()
    assert {"Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"} <= timed
    assert {p: v for p, v in live.items() if p not in timed} == {
        p: v for p, v in replay.items() if p not in timed
    }
    assert live.keys() == replay.keys()


def test_the_played_recording_gives_the_updates_of_what_was_on_the_bus(
    played: dict[str, Any], rav4_dir: Path
) -> None:
    # The replay of candump's recording of vcan0 has the frames' kernel timestamps, the
    # ones the live pipeline saw: every route, intervals too, agrees to the microsecond.
    bus = asyncio.run(_replay(played["candump"], rav4_dir / "toyota_new_mc_pt.dbc"))
    assert_same_updates(_timed(played["live"]), _timed(bus))


def _timed(updates: list[SignalUpdate]) -> ByPath:
    return by_path((u.path, u.value, u.timestamp) for u in updates)


def _interval_paths() -> set[str]:
    document = yaml.safe_load(MAPPING.read_text(encoding="utf-8"))
    return {
        path
        for path, node in document.items()
        if isinstance(node, dict) and "interval_ms" in (node.get("dbc2vss") or {})
    }


# The kernel's broadcast manager (CAN_BCM, can_signals.bcm) against the raw path, both
# fed by the same play.


def test_the_kernel_holds_back_frames_whose_mapped_bits_did_not_change(
    played: dict[str, Any],
) -> None:
    run = played["run"]
    frames, held_back = run["frames"], run["held_back"]
    assert frames["raw"] == run["mapped"]
    assert held_back["raw"] == 0
    # Every mapped frame reached the kernel's operations: passed on, or held back.
    assert frames["bcm"] + held_back["bcm"] == run["mapped"]
    # A real drive: the speed changes in most frames, the rest mostly holds still.
    assert held_back["bcm"] > run["mapped"] // 4


def test_on_change_routes_get_the_raw_paths_updates_through_the_kernel(
    played: dict[str, Any],
) -> None:
    # The kernel passes exactly the frames whose mapped bits changed, with their stamps.
    # ENGINE_RPM is read at two intervals (the engine speed every 500 ms, whether it runs
    # at every change): two kernel operations, each passing its own routes' changes.
    throttled = _interval_paths() & played["run"]["in_kernel"]
    assert throttled == {"Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"}
    every_change = {"Vehicle.TraveledDistance", "Vehicle.Powertrain.Transmission.SelectedGear",
                    "Vehicle.Chassis.ParkingBrake.IsEngaged",
                    "Vehicle.Powertrain.CombustionEngine.IsRunning"}  # fmt: skip
    assert every_change <= played["run"]["in_kernel"]
    assert played["run"]["operations"] == 6  # five frames, ENGINE_RPM twice
    raw = {p: u for p, u in _timed(played["live"]).items() if p not in throttled}
    bcm = {p: u for p, u in _timed(played["bcm"]).items() if p not in throttled}
    assert_same_updates(bcm, raw)


def test_interval_routes_through_the_kernels_throttle(
    played: dict[str, Any], rav4_dir: Path, tmp_path: Path
) -> None:
    throttled = {p: i for p, i in _intervals().items() if p in played["run"]["in_kernel"]}
    assert set(throttled) == {"Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"}
    _assert_throttled(played, throttled, rav4_dir, tmp_path)


def _assert_throttled(
    played: dict[str, Any], throttled: dict[str, float], rav4_dir: Path, tmp_path: Path
) -> None:
    """Each update the latest value on the bus by its stamp, at most one per interval."""
    # What the raw path saw: every change of every route (the intervals taken out), from
    # candump's recording of the bus (the kernel's stamps).
    document = yaml.safe_load(MAPPING.read_text(encoding="utf-8"))
    for node in document.values():
        if isinstance(node, dict):
            (node.get("dbc2vss") or {}).pop("interval_ms", None)
            (node.get("dbc2vss") or {})["on_change"] = True
    every_change = tmp_path / "every_change.yaml"
    every_change.write_text(yaml.safe_dump(document), encoding="utf-8")
    dbc = rav4_dir / "toyota_new_mc_pt.dbc"
    changes = _timed(asyncio.run(_replay(played["candump"], dbc, every_change)))
    bcm = _timed(played["bcm"])
    for path, interval in throttled.items():
        updates, seen = bcm[path], changes[path]
        assert len(updates) > 3, path
        # Each update is the latest change the bus had carried by its stamp...
        for value, stamp in updates:
            latest = [v for v, t in seen if t <= stamp + STAMP_TOLERANCE_S][-1]
            assert value == latest, (path, stamp)
        # ... and the last change gets out, at most an interval late.
        assert updates[-1][0] == seen[-1][0], (path, updates[-3:], seen[-6:])
        # At most one per interval. The kernel stamps a held change with the last frame it
        # received (up to one frame gap before it sends), and sends held changes on a grid
        # of intervals: a send the guest's timer fires late (hundreds of ms, under emulation
        # on a loaded host) is followed by one on the grid, less than an interval after it.
        # So: never three updates within an interval, and no more than one per interval
        # over the play (a late send, at most an interval late, aside).
        stamps = [t for _, t in seen]
        longest_gap = max(b - a for a, b in itertools.pairwise(stamps))
        times = [t for _, t in updates]
        spans = [c - a for a, c in zip(times, times[2:], strict=False)]
        assert min(spans) >= interval - longest_gap, path
        assert len(times) - 1 <= (times[-1] - times[0] + longest_gap) / interval + 1, path


def test_the_kernel_reports_the_silence_as_the_raw_path_does(played: dict[str, Any]) -> None:
    end = max(u.timestamp for u in played["live"] if u.value is not None)
    stale = {
        name: {u.path for u in played[name] if u.value is None and u.timestamp > end}
        for name in ("live", "bcm")
    }
    # Unchanged frames never arrive, yet nothing went stale while the bus carried them.
    assert not [u.path for u in played["bcm"] if u.value is None and u.timestamp <= end]
    assert stale["bcm"] == stale["live"]
    assert len(stale["bcm"]) >= 4


def _intervals() -> dict[str, float]:
    document = yaml.safe_load(MAPPING.read_text(encoding="utf-8"))
    return {
        path: node["dbc2vss"]["interval_ms"] / 1000
        for path, node in document.items()
        if isinstance(node, dict) and "interval_ms" in (node.get("dbc2vss") or {})
    }


# Routes without on_change (KUKSA's default): a value every interval, changed or not. The
# kernel passes one frame per interval of their ID, whatever its content (RX_FILTER_ID).

EVERY_INTERVAL = {"Vehicle.Speed": 0.1, "Vehicle.Powertrain.CombustionEngine.Speed": 0.5}


@pytest.fixture(scope="module")
def played_every_interval(
    rav4_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("rav4_every_interval")
    document = yaml.safe_load(MAPPING.read_text(encoding="utf-8"))
    for path in EVERY_INTERVAL:
        document[path]["dbc2vss"]["on_change"] = False
    mapping = work / "every_interval.yaml"
    mapping.write_text(yaml.safe_dump(document), encoding="utf-8")
    log = _excerpt(rav4_dir, work)
    dbc = rav4_dir / "toyota_new_mc_pt.dbc"
    run = asyncio.run(_play(log, dbc, work / "candump.log", mapping))
    return {
        "live": run["updates"]["raw"], "bcm": run["updates"]["bcm"], "run": run,
        "candump": work / "candump.log",
    }  # fmt: skip


def test_routes_without_on_change_get_one_frame_per_interval_from_the_kernel(
    played_every_interval: dict[str, Any], rav4_dir: Path, tmp_path: Path
) -> None:
    played = played_every_interval
    run = played["run"]
    # ENGINE_RPM: the engine speed every 500 ms, whether it runs at every change; the
    # speed every 100 ms: six operations, all mapped frames in the kernel.
    assert set(EVERY_INTERVAL) <= run["in_kernel"]
    assert run["operations"] == 6
    assert run["frames"]["bcm"] + run["held_back"]["bcm"] == run["mapped"]
    assert run["held_back"]["bcm"] > run["mapped"] // 4
    _assert_throttled(played, EVERY_INTERVAL, rav4_dir, tmp_path)
    raw, bcm = _timed(played["live"]), _timed(played["bcm"])
    for path in EVERY_INTERVAL:
        # A value every interval on both paths, changed or not: about as many updates (the
        # kernel's come an interval apart, KUKSA's an interval and up to a frame gap).
        assert 0.8 * len(raw[path]) <= len(bcm[path]) <= 1.25 * len(raw[path]) + 2, path
