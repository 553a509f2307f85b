"""Replaying recorded logs that are damaged: what survives is decoded, the damage counted.

Logs are written by python-can's own writers (candump ``.log``, Vector ``.asc``, PEAK
``.trc``, ``.blf``) and then corrupted. The reference for what must come out is
python-can's reader on the undamaged file, minus the frames the damage destroyed.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from pathlib import Path

import can
import pytest
from can.io.blf import BLFWriter

from can_signals.errors import SourceError
from can_signals.pipeline import PipelineStats, SignalPipeline
from can_signals.update import SignalUpdate
from tests.can_signals.conftest import encode, load_database

SPEED = "Vehicle.Speed"
MAPPING = "Vehicle.Speed:\n  dbc2vss: {signal: SPEED, on_change: true}\n"
FRAMES = 40

WriteFile = Callable[[str, str], Path]


@pytest.fixture
def mapping(write_file: WriteFile) -> Path:
    return write_file("mapping.yaml", MAPPING)


def _frames(test_dbc: Path, count: int = FRAMES) -> list[can.Message]:
    """``count`` VEHICLE frames 0.1 s apart; frame ``i`` says ``i`` km/h (all distinct)."""
    vehicle = load_database(test_dbc).get_message_by_name("VEHICLE")
    return [
        can.Message(timestamp=1000.0 + i / 10, arbitration_id=vehicle.frame_id,
                    is_extended_id=False, data=encode(vehicle, {"SPEED": i}), channel=0)
        for i in range(count)
    ]  # fmt: skip


def _write(path: Path, frames: list[can.Message]) -> Path:
    with can.Logger(path) as writer:
        for frame in frames:
            writer.on_message_received(frame)
    return path


def _reference(path: Path) -> list[tuple[float, float]]:
    """(timestamp, speed) python-can reads from an undamaged log."""
    return [(m.timestamp, int.from_bytes(m.data[:2], "little") / 100) for m in can.LogReader(path)]


def _replay(mapping: Path, dbc: Path, log: Path) -> tuple[list[SignalUpdate], PipelineStats]:
    async def run() -> tuple[list[SignalUpdate], PipelineStats]:
        pipeline = SignalPipeline.from_files(mapping, [(None, dbc)], replay=log, speed=0)
        async with pipeline:
            updates = [update async for update in pipeline]
        return updates, pipeline.stats()

    return asyncio.run(run())


def _speeds(updates: list[SignalUpdate]) -> list[tuple[float, float]]:
    speeds = []
    for u in updates:
        if u.path == SPEED:
            assert isinstance(u.value, float)
            speeds.append((u.timestamp, u.value))
    return speeds


def _same(got: list[tuple[float, float]], expected: list[tuple[float, float]]) -> bool:
    """Equal lists of (timestamp, speed), timestamps to the microsecond (text formats)."""
    return len(got) == len(expected) and all(
        abs(t1 - t2) < 1e-6 and v1 == v2 for (t1, v1), (t2, v2) in zip(got, expected, strict=True)
    )


def _is_frame_line(line: str) -> bool:
    return bool(re.search(r"\b100\b.*\bRx\b|\b0100\b|\) \S+ 100#", line))


def _damage(clean: Path, damaged: Path, broken: set[int], junk: dict[int, str]) -> list[int]:
    """Copy ``clean`` with frame lines ``broken`` made malformed and ``junk`` lines inserted
    before the frame lines of those numbers; returns the broken frames' indexes."""
    out: list[str] = []
    frame = 0
    for line in clean.read_text().splitlines():
        if _is_frame_line(line):
            if frame in junk:
                out.append(junk[frame])
            if frame in broken:
                # Keep the line's shape, spoil its payload: the reader must choke on it.
                line = re.sub(r"( [0-9A-F]{2})+$", " ZZ" * 8, line)  # noqa: PLW2901
                line = re.sub(r"#[0-9A-F]+", "#ZZZZ", line)  # noqa: PLW2901
            frame += 1
        out.append(line)
    assert frame == FRAMES, f"found {frame} frame lines in {clean.name}"
    damaged.write_text("\n".join(out) + "\n")
    return sorted(broken)


@pytest.mark.parametrize("suffix", [".log", ".asc", ".trc"])
def test_malformed_frame_lines_are_skipped_and_counted(
    suffix: str, tmp_path: Path, test_dbc: Path, mapping: Path
) -> None:
    clean = _write(tmp_path / f"clean{suffix}", _frames(test_dbc))
    broken = _damage(clean, tmp_path / f"damaged{suffix}", {0, 7, 8, 20, FRAMES - 1}, {})
    reference = _reference(clean)

    updates, stats = _replay(mapping, test_dbc, tmp_path / f"damaged{suffix}")

    expected = [r for i, r in enumerate(reference) if i not in broken]
    assert _same(_speeds(updates), expected), _speeds(updates)
    assert stats.bad_log_lines == len(broken)
    assert stats.replay_error is None


def test_garbage_lines_in_a_candump_log_are_skipped_and_counted(
    tmp_path: Path, test_dbc: Path, mapping: Path
) -> None:
    clean = _write(tmp_path / "clean.log", _frames(test_dbc))
    junk = {
        0: "garbage before the first frame",
        5: "(1000.45) can0",  # truncated
        10: "(not-a-time) can0 100#0000",
        11: "\x00\x01\x02\xff\xfe binary junk",
        12: "(1000.1) can0 100#0G",  # odd, non-hex payload
        30: "(1000.1) can0 100#00 extra words",
    }
    _damage(clean, tmp_path / "damaged.log", set(), junk)

    updates, stats = _replay(mapping, test_dbc, tmp_path / "damaged.log")

    assert _speeds(updates) == _reference(clean)  # every frame, before and after
    assert stats.bad_log_lines == len(junk)


@pytest.mark.parametrize("suffix", [".asc", ".trc"])
def test_foreign_lines_in_asc_and_trc_are_ignored_like_their_readers_do(
    suffix: str, tmp_path: Path, test_dbc: Path, mapping: Path
) -> None:
    # These formats carry many lines that are not frames (events, statistics, comments);
    # python-can's readers skip what they do not recognise, and so does the replay.
    clean = _write(tmp_path / f"clean{suffix}", _frames(test_dbc))
    junk = {3: "garbage !!! line", 9: "more junk 1 2 3", 25: "   "}
    _damage(clean, tmp_path / f"damaged{suffix}", set(), junk)

    updates, stats = _replay(mapping, test_dbc, tmp_path / f"damaged{suffix}")

    assert _same(_speeds(updates), _reference(clean)), _speeds(updates)
    assert stats.bad_log_lines == 0


def _blf(path: Path, frames: list[can.Message]) -> bytes:
    writer = BLFWriter(path)
    writer.max_container_size = 256  # several compressed containers, like a long recording
    for frame in frames:
        writer.on_message_received(frame)
    writer.stop()
    return path.read_bytes()


def test_a_corrupt_blf_keeps_the_frames_before_the_damage(
    tmp_path: Path, test_dbc: Path, mapping: Path
) -> None:
    frames = _frames(test_dbc, 200)
    data = bytearray(_blf(tmp_path / "clean.blf", frames))
    containers = [m.start() for m in re.finditer(b"LOBJ", bytes(data))]
    assert len(containers) > 4
    middle = containers[len(containers) // 2]
    data[middle + 40 : middle + 60] = b"\xff" * 20  # inside the compressed data
    damaged = tmp_path / "damaged.blf"
    damaged.write_bytes(bytes(data))
    reference = _reference(tmp_path / "clean.blf")

    updates, stats = _replay(mapping, test_dbc, damaged)

    speeds = _speeds(updates)
    assert 0 < len(speeds) < len(reference)
    assert speeds == reference[: len(speeds)]
    assert stats.bad_log_lines == 1
    assert stats.replay_error is not None
    assert str(damaged) in stats.replay_error


def test_a_truncated_blf_gives_what_it_holds(tmp_path: Path, test_dbc: Path, mapping: Path) -> None:
    data = _blf(tmp_path / "clean.blf", _frames(test_dbc, 200))
    truncated = tmp_path / "truncated.blf"
    truncated.write_bytes(data[: len(data) * 2 // 3])

    updates, stats = _replay(mapping, test_dbc, truncated)

    reference = _reference(tmp_path / "clean.blf")
    speeds = _speeds(updates)
    assert speeds == reference[: len(speeds)]
    assert len(reference) // 3 < len(speeds) < len(reference)
    assert stats.processor.frames == len(speeds)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("header.blf", b"this is not a blf file at all" * 8, "cannot read log"),
        ("empty.blf", b"", "cannot read log"),
        ("frames.xyz", b"(1.0) can0 100#00\n", "cannot read log"),
    ],
    ids=["bad-header", "empty-blf", "unknown-format"],
)
def test_a_log_that_cannot_be_opened_fails_at_start(
    tmp_path: Path, test_dbc: Path, mapping: Path, name: str, content: bytes, expected: str
) -> None:
    log = tmp_path / name
    log.write_bytes(content)

    with pytest.raises(SourceError, match=expected):
        _replay(mapping, test_dbc, log)


def test_a_missing_log(tmp_path: Path, test_dbc: Path, mapping: Path) -> None:
    with pytest.raises(SourceError, match="no such log file"):
        _replay(mapping, test_dbc, tmp_path / "missing.log")


def test_stopping_a_paced_replay_ends_its_thread(
    tmp_path: Path, test_dbc: Path, mapping: Path, no_leaked_threads: None
) -> None:
    log = _write(tmp_path / "slow.log", _frames(test_dbc))

    async def run() -> list[SignalUpdate]:
        # Real time: the 4 s log would take 4 s; stop after the first update.
        pipeline = SignalPipeline.from_files(mapping, [(None, test_dbc)], replay=log, speed=1)
        got: list[SignalUpdate] = []
        async with pipeline:
            async for update in pipeline:
                got.append(update)
                break
        # Then the updates decoded before the stop are drained.
        got.extend([update async for update in pipeline])
        return got

    updates = asyncio.run(run())

    assert 1 <= len(updates) < FRAMES
    assert _speeds(updates)[0] == (1000.0, 0.0)


def test_the_consumer_may_ask_for_stats_while_a_replay_waits_for_room(
    tmp_path: Path, test_dbc: Path, mapping: Path
) -> None:
    # A replay blocks when the stream is full; it must not do so holding the processor
    # lock, or a consumer reading stats() would deadlock the event loop.
    log = _write(tmp_path / "frames.log", _frames(test_dbc))
    result: list[tuple[int, int]] = []

    async def run() -> None:
        pipeline = SignalPipeline.from_files(
            mapping, [(None, test_dbc)], replay=log, speed=0, capacity=1
        )
        async with pipeline:
            async for _ in pipeline:
                await asyncio.sleep(0)  # let the replay fill the stream
                stats = pipeline.stats()
                result.append((stats.processor.updates, stats.dropped_updates))

    # In a thread of its own: a deadlocked event loop cannot time itself out.
    worker = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    worker.start()
    worker.join(timeout=10)

    assert not worker.is_alive(), "the event loop is stuck on the processor's lock"
    assert len(result) == FRAMES
    assert all(dropped == 0 for _, dropped in result)
