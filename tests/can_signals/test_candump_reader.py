"""The candump fast path reads what python-can's reader reads, line for line.

:class:`~can_signals.candump.CandumpPlayer` parses the common lines itself and hands the
rest to python-can. Held against python-can's ``CanutilsLogReader`` on every candump log
in the shared data and on a log of edge cases (CAN FD ``##`` lines with every flag, 29-bit
IDs, remote and error frames, ``R``/``T`` marks, numeric channels, garbage); then whole
replays, fast and python-can only, give the same updates and the same counters.
"""

from __future__ import annotations

import asyncio
import io
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest

from can_signals.candump import CandumpPlayer
from can_signals.pipeline import SignalPipeline
from can_signals.processor import FrameProcessor
from can_signals.sources import Replay
from can_signals.update import SignalUpdate
from tests.can_signals.conftest import FAULTS_ID, FULL_MAPPING, encode, load_database

#: What a frame is to the processor: bus channel, time, key, bytes, remote, error.
Seen = tuple[object, float, int, bytes | None, bool, bool]
_EXTENDED = 0x8000_0000


class _Everything(dict[int, int]):
    """A table in which every key is mapped (to itself)."""

    def get(self, key: int, default: Any = None) -> Any:
        return key


class Recorder:
    """A replay input that writes down every frame it is given.

    ``counted`` holds the unmapped frames the player only counted (before the stale-check
    time the recorder gives); with ``-inf`` there it hands every one over, one by one.
    """

    def __init__(
        self, channel: object, seen: list[Seen], *, mapped: bool, stale_check_at: float
    ) -> None:
        self.channel = channel
        self.seen = seen
        self.mapped = mapped
        self.table: dict[int, int] = _Everything() if mapped else {}
        self.stale_check_at = stale_check_at
        self.counted = 0

    def count_skipped(self, count: int, latest: float) -> None:
        assert latest < self.stale_check_at
        self.counted += count

    def skip(self, timestamp: float) -> bool:
        self.seen.append((self.channel, timestamp, -1, None, False, False))
        return False

    def feed(self, plan: Any, timestamp: float, data: bytes) -> None:
        self.seen.append((self.channel, timestamp, plan, bytes(data), False, False))

    def __call__(self, msg: can.Message) -> None:
        # As a BusInput: an unmapped key is skipped, whatever the frame.
        self.seen.append(_seen(self.channel, msg, mapped=self.mapped))


def _key(msg: can.Message) -> int:
    return msg.arbitration_id | _EXTENDED if msg.is_extended_id else msg.arbitration_id


def _seen(channel: object, msg: can.Message, *, mapped: bool) -> Seen:
    if not mapped:
        return (channel, msg.timestamp, -1, None, False, False)
    data = None if msg.is_remote_frame or msg.is_error_frame else bytes(msg.data)
    return (channel, msg.timestamp, _key(msg), data, msg.is_remote_frame, msg.is_error_frame)


def fast(
    lines: list[str], *, mapped: bool, stale_check_at: float = -math.inf
) -> tuple[list[Seen], list[int]]:
    """What the player hands on, and the numbers of the lines it refused."""
    seen: list[Seen] = []
    bad: list[int] = []
    recorders: list[Recorder] = []

    def recorder(channel: object) -> Recorder:
        made = Recorder(channel, seen, mapped=mapped, stale_check_at=stale_check_at)
        recorders.append(made)
        return made

    player = CandumpPlayer(recorder, lambda: None, None, lambda: False,
                           lambda number, _err: bad.append(number))  # fmt: skip
    player.play(lines)
    assert player.frames == len(seen) + sum(r.counted for r in recorders)
    return seen, bad


def reference(lines: list[str], *, mapped: bool) -> tuple[list[Seen], list[int]]:
    """python-can's reader on each line, as the replay used it before the fast path."""
    seen: list[Seen] = []
    bad: list[int] = []
    for number, line in enumerate(lines, 1):
        try:
            messages = list(can.CanutilsLogReader(io.StringIO(line)))
        except (ValueError, IndexError, KeyError, TypeError, OverflowError, AttributeError):
            bad.append(number)
            continue
        seen += [_seen(msg.channel, msg, mapped=mapped) for msg in messages]
    return seen, bad


def _shared_logs(realdata_dir: Path) -> Iterator[Path]:
    yield from sorted(realdata_dir.rglob("*.log"))


def test_every_shared_log_reads_as_python_can_reads_it(realdata_dir: Path) -> None:
    logs = list(_shared_logs(realdata_dir))
    assert {log.name for log in logs} >= {
        "drive_seg40.log", "drive_seg40_excerpt.log", "candump_Manual_SOC_DogMode_CabinTemp.log",
    }  # fmt: skip
    for log in logs:
        lines = log.read_text().splitlines(keepends=True)
        whole = [_seen(m.channel, m, mapped=True) for m in can.LogReader(log)]

        assert fast(lines, mapped=True) == (whole, []), log.name
        assert fast(lines, mapped=False)[0] == [
            (c, t, -1, None, False, False) for c, t, *_ in whole
        ], log.name
        # Before the next stale check, unmapped frames are only counted: all of them.
        assert fast(lines, mapped=False, stale_check_at=math.inf) == ([], []), log.name


def _edge_frames() -> list[can.Message]:
    """Frames of every kind python-can's writer writes."""
    frames = []
    t = 100.0

    def add(**kwargs: Any) -> None:
        nonlocal t
        t += 0.001
        frames.append(can.Message(timestamp=t, channel=kwargs.pop("channel", "can0"), **kwargs))

    add(arbitration_id=0x100, data=bytes(range(8)))
    add(arbitration_id=0x7FF, data=b"")  # no data at all
    add(arbitration_id=FAULTS_ID, is_extended_id=True, data=b"\x01\x02\x03")  # 29-bit
    add(arbitration_id=0x1FFFFFFF, is_extended_id=True, data=b"\xff" * 8)
    add(arbitration_id=0x0, is_extended_id=True, data=b"\x00")  # 29-bit 0: "00000000"
    for flags in range(4):  # CAN FD: BRS and ESI in every combination
        add(arbitration_id=0x123, is_fd=True, bitrate_switch=bool(flags & 1),
            error_state_indicator=bool(flags & 2), data=bytes(range(12)))  # fmt: skip
    add(arbitration_id=0x18DAF110, is_extended_id=True, is_fd=True, data=bytes(range(64)))
    add(arbitration_id=0x100, is_remote_frame=True, dlc=8)
    add(arbitration_id=FAULTS_ID, is_extended_id=True, is_remote_frame=True, dlc=0)
    add(is_error_frame=True, arbitration_id=0, data=bytes(8))
    add(arbitration_id=0x100, data=b"\x10", is_rx=False)  # " T"
    add(arbitration_id=0x100, data=b"\x11", channel="vcan1")
    add(arbitration_id=0x100, data=b"\x12", channel=1)  # numeric channel
    return frames


#: Lines a damaged or hand-edited log holds, and spellings candump's neighbours use.
EDGE_LINES = [
    "",
    "   \n",
    "# a comment\n",
    "garbage\n",
    "(100.5) can0\n",
    "(100.5) can0 100#0102 extra words here\n",
    "(100.5)\tcan0\t100#0102\n",  # tabs
    "(100.5) can0 100#0102\r\n",  # CRLF
    "(100.5) can0 100#0102 R\n",
    "(100.5) can0 100#0102 t\n",
    "(100.5) can0 100#0102\tR\n",  # a mark python-can does not take after a tab
    "(100.5) can0 r\n",
    "(100.5) can0 #0102\n",
    "(100.5) can0 100\n",
    "(100.5) can0 100#ABC\n",  # an odd number of digits: python-can keeps a half byte
    "(100.5) can0 100#abcdef\n",  # lower case
    "(100.5) can0 100#GG\n",
    "(100.5) can0 100#+1\n",
    "(100.5) can0 100#-1\n",
    "(100.5) can0 0x100#01\n",
    "(100.5) can0 1_00#01\n",
    "(100.5) can0 -100#01\n",
    "(100.5) can0 0100#01\n",  # four digits: 29-bit to python-can
    "(100.5) can0 FFF#01\n",  # more than 11 bits, short spelling: standard to python-can
    "(100.5) can0 20000080#0000000000000000\n",  # an error frame
    "(100.5) can0 20000100#01\n",  # the error flag without a bus error: a data frame
    "(100.5) can0 100#R\n",
    "(100.5) can0 100#R3\n",
    "(100.5) can0 100#Rx\n",
    "(100.5) can0 100##\n",
    "(100.5) can0 100##1\n",  # CAN FD without data
    "(100.5) can0 100##A00\n",
    "(100.5) can0 100##1R\n",
    "(100.5) can0 100##301020304\n",
    "(100.5) 01 100#01\n",  # "01" is channel 1 to python-can
    "(100.5) \u00b2 100#01\n",  # a digit that is no number
    "[100.5] can0 100#01\n",  # python-can does not look at the brackets
    "(abc) can0 100#01\n",
    "(1e2) can0 100#01\n",
    "(100.5) can0 " + "100#" + "00" * 2000 + "\n",
]


@pytest.fixture(scope="module")
def edge_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("logs") / "edge.log"
    with can.CanutilsLogWriter(path) as writer:
        for frame in _edge_frames():
            writer.on_message_received(frame)
    written = path.read_text().splitlines(keepends=True)
    # The hand-written lines go between the written ones.
    mixed = [line for pair in zip(written, EDGE_LINES, strict=False) for line in pair]
    mixed += written[len(EDGE_LINES) :] + EDGE_LINES[len(written) :]
    path.write_text("".join(mixed), newline="")
    return path


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "unmapped"])
def test_a_log_of_edge_cases_reads_as_python_can_reads_it(edge_log: Path, mapped: bool) -> None:
    with edge_log.open(newline=None) as handle:
        lines = list(handle)

    got = fast(lines, mapped=mapped)
    expected = reference(lines, mapped=mapped)

    assert got == expected
    assert len(expected[1]) >= 15  # the garbage was refused...
    assert len(expected[0]) > 30  # ...and the frames read
    kinds = {(remote, error) for *_, remote, error in expected[0]}
    if mapped:
        assert kinds == {(False, False), (True, False), (False, True)}


# --- whole replays: the fast path against python-can's reader -----------------------------------


def _replay(log: Path, mapping: str, dbc: Path, *, python_can_only: bool) -> tuple[Any, ...]:
    from can_signals.binding import bind  # noqa: PLC0415
    from can_signals.dbc import load_dbc  # noqa: PLC0415
    from can_signals.mapping import parse_mapping  # noqa: PLC0415

    binding = bind(parse_mapping(mapping, "m.yaml"), [load_dbc(dbc)])
    updates: list[SignalUpdate] = []
    processor = FrameProcessor(binding, updates.append)
    done = threading.Event()
    replay = Replay(log, processor, speed=0, on_done=done.set, python_can_only=python_can_only)
    replay.start()
    assert done.wait(60)
    replay.stop()
    return updates, processor.stats(), replay.bad_lines, replay.frames


def test_replays_of_the_shared_logs_match_python_can(realdata_dir: Path, repo_root: Path) -> None:
    rav4 = realdata_dir / "rav4_2016"
    model3 = realdata_dir / "kuksa_model3"
    cases = [
        (rav4 / "drive_seg40.log", (repo_root / "docs/cars/rav4_2016/mapping.yaml").read_text(),
         rav4 / "toyota_new_mc_pt.dbc"),
        (rav4 / "drive_seg40_excerpt.log", (repo_root / "docs/cars/rav4_2016/mapping.yaml")
         .read_text(), rav4 / "toyota_new_mc_pt.dbc"),
        (model3 / "candump_Manual_SOC_DogMode_CabinTemp.log",
         (model3 / "dbc_overlay.vspec").read_text(), model3 / "Model3CAN.dbc"),
    ]  # fmt: skip
    for log, mapping, dbc in cases:
        fast_run = _replay(log, mapping, dbc, python_can_only=False)
        slow_run = _replay(log, mapping, dbc, python_can_only=True)

        assert fast_run == slow_run, log.name
        assert len(fast_run[0]) > 50


def test_a_replay_of_the_edge_cases_matches_python_can(edge_log: Path, test_dbc: Path) -> None:
    # The test DBC maps 0x100 (VEHICLE) and the 29-bit FAULTS: some edge frames decode.
    fast_run = _replay(edge_log, FULL_MAPPING, test_dbc, python_can_only=False)
    slow_run = _replay(edge_log, FULL_MAPPING, test_dbc, python_can_only=True)

    assert fast_run == slow_run
    updates, stats, bad_lines, frames = fast_run
    assert updates
    assert stats.error_or_remote_frames >= 2
    assert bad_lines >= 15
    assert frames == stats.frames


def test_the_pipeline_replays_a_candump_log_through_the_fast_path(
    write_file: Any, test_dbc: Path, tmp_path: Path
) -> None:
    vehicle = load_database(test_dbc).get_message_by_name("VEHICLE")
    log = tmp_path / "drive.log"
    with can.CanutilsLogWriter(log) as writer:
        for i in range(20):
            writer.on_message_received(
                can.Message(timestamp=1.0 + i / 10, arbitration_id=vehicle.frame_id,
                            is_extended_id=False, data=encode(vehicle, {"SPEED": i}))
            )  # fmt: skip
    mapping = write_file("m.yaml", "Vehicle.Speed:\n  dbc2vss: {signal: SPEED, on_change: true}\n")

    async def run() -> list[SignalUpdate]:
        pipeline = SignalPipeline.from_files(mapping, [(None, test_dbc)], replay=log, speed=0)
        async with pipeline:
            return [u async for u in pipeline]

    assert [u.value for u in asyncio.run(run())] == [float(i) for i in range(20)]
