"""The simulator on vcan0, decoded live by ``touchpoint signals``, watched by candump.

One run, several checks: the simulator plays the commute at real time onto vcan0 while
frames of IDs the mapping does not read are sent among them; ``touchpoint signals``
decodes vcan0 live (a separate process, as a user runs it) and candump records it.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import pytest

from can_signals.pipeline import SignalPipeline
from can_signals.simulator.encoder import FrameEncoder
from can_signals.simulator.reference import load_reference_database
from can_signals.simulator.runner import BusSink, ScenarioRunner
from can_signals.simulator.scenarios import ScenarioOptions, build_scenario
from tests.socketcan.kernel import Candump, kernel_filters, wait_for, wait_idle
from tests.socketcan.updates import ByPath, assert_same_updates, by_path

PROJECT = Path(__file__).resolve().parents[2]
REFERENCE = PROJECT / "can_signals" / "reference"
DBC = REFERENCE / "touchpoint_ref.dbc"
MAPPING = REFERENCE / "touchpoint_ref.mapping.yaml"
#: Wall-clock seconds of the commute played (its start: ignition, gear, speed, odometer).
PLAY_S = 8.0
#: IDs no mapping reads, one 11-bit and one 29-bit, sent among the simulator's frames.
UNMAPPED = ((0x7FF, False), (0x1FFFFFF0, True))
UNMAPPED_EACH = 150


class _Capture:
    """A simulator sink keeping what it was given, in candump's spelling."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, str]] = []

    def send(self, message: can.Message) -> None:
        self.frames.append(_spelled(message))

    def close(self) -> None:
        """Nothing to close."""


def _spelled(message: can.Message) -> tuple[str, str]:
    width = 8 if message.is_extended_id else 3
    return f"{message.arbitration_id:0{width}X}", bytes(message.data).hex().upper()


@dataclass
class LiveRun:
    sent: list[tuple[str, str]]
    unmapped_sent: int
    candump: list[tuple[str, str]]
    candump_log: Path
    filter_ids: set[int]
    kernel_matches: int
    updates: list[dict[str, Any]]
    summary: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> LiveRun:
    work = tmp_path_factory.mktemp("live")
    candump = Candump("vcan0", work / "candump.log")
    out, err = (work / "signals.out").open("wb"), (work / "signals.err").open("wb")
    signals = subprocess.Popen(
        [str(PROJECT / ".venv" / "bin" / "touchpoint"), "signals", "--dbc", str(DBC),
         "--mapping", str(MAPPING), "--interface", "socketcan", "--channel", "vcan0", "--json",
         "--no-bcm"],  # the raw path: its kernel filters are counted below
        stdout=out, stderr=err,
    )  # fmt: skip
    try:
        # Ready once its socket's kernel filters are in place (a slow start under emulation).
        wait_for("touchpoint signals to open vcan0", lambda: kernel_filters("vcan0"), 120)
        capture = _Capture()
        scenario = build_scenario("commute", ScenarioOptions(short=True))
        with (
            can.Bus(interface="socketcan", channel="vcan0") as sim_bus,
            can.Bus(interface="socketcan", channel="vcan0") as other_bus,
        ):
            encoder = FrameEncoder(load_reference_database(), "vcan0")
            runner = ScenarioRunner(scenario, encoder, [BusSink(sim_bus), capture], speed=1.0)
            player = threading.Thread(target=runner.run)
            player.start()
            unmapped = 0
            for n in range(UNMAPPED_EACH):
                for ident, extended in UNMAPPED:
                    data = n.to_bytes(2, "big")
                    other_bus.send(can.Message(arbitration_id=ident, data=data,
                                               is_extended_id=extended))  # fmt: skip
                    unmapped += 1
                time.sleep(PLAY_S / UNMAPPED_EACH)
            runner.stop()
            player.join()
        filters = kernel_filters("vcan0")
        mapped = sum(1 for ident, _ in capture.frames if int(ident, 16) in _ids(filters))
        # The kernel has passed every mapped frame to the socket: let Python catch up.
        wait_for("the kernel filters to pass every mapped frame",
                 lambda: sum(f.matches for f in kernel_filters("vcan0")) >= mapped, 30)  # fmt: skip
        matches = sum(f.matches for f in kernel_filters("vcan0"))
        wait_idle(signals.pid, 120)
    finally:
        signals.send_signal(signal.SIGINT)
        signals.wait(60)
        out.close()
        err.close()
        dumped = candump.stop()
    lines = (work / "signals.out").read_text(encoding="utf-8").splitlines()
    return LiveRun(
        sent=capture.frames, unmapped_sent=unmapped, candump=dumped,
        candump_log=work / "candump.log", filter_ids=_ids(filters), kernel_matches=matches,
        updates=[json.loads(line) for line in lines],
        summary=(work / "signals.err").read_text(encoding="utf-8"),
    )  # fmt: skip


def _ids(filters: list[Any]) -> set[int]:
    # An extended filter carries CAN_EFF_FLAG; candump spells the id without it.
    return {f.can_id & 0x1FFFFFFF for f in filters}


def test_candump_sees_exactly_what_the_simulator_sends(live: LiveRun) -> None:
    unmapped_ids = {f"{i:0{8 if ext else 3}X}" for i, ext in UNMAPPED}
    simulated = [frame for frame in live.candump if frame[0] not in unmapped_ids]
    assert len(live.sent) > 500
    assert simulated == live.sent
    assert len(live.candump) - len(simulated) == live.unmapped_sent


def test_unmapped_ids_never_reach_python(live: LiveRun) -> None:
    match = re.search(r"# frames: (\d+) \((\d+) mapped, (\d+) unmapped", live.summary)
    assert match, live.summary
    frames, mapped, unmapped = (int(g) for g in match.groups())
    expected = sum(1 for ident, _ in live.sent if int(ident, 16) in live.filter_ids)
    # Python counted only the mapped frames, as many as the kernel's filters passed; the
    # frames of unmapped IDs (the simulator's own and ours) stayed in the kernel.
    assert unmapped == 0
    assert frames == mapped == expected == live.kernel_matches
    assert len(live.candump) - expected >= live.unmapped_sent
    assert 0x7FF not in live.filter_ids


def test_the_live_decoding_equals_the_replay_of_what_candump_recorded(live: LiveRun) -> None:
    replayed = asyncio.run(_replay(live.candump_log))
    assert_same_updates(_by_path(live.updates), _by_path(replayed))
    paths = {u["path"] for u in live.updates}
    assert {"Vehicle.Speed", "Vehicle.TraveledDistance"} <= paths


async def _replay(log: Path) -> list[dict[str, Any]]:
    pipeline = SignalPipeline.from_files(MAPPING, [(None, DBC)], replay=log, speed=0)
    updates: list[dict[str, Any]] = []
    async with pipeline:
        async for batch in pipeline.batches():
            updates += [u.to_json_dict() for u in batch]
    return updates


def _by_path(updates: list[dict[str, Any]]) -> ByPath:
    return by_path((u["path"], u["value"], u["timestamp"]) for u in updates)
