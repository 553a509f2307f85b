"""A whole recording replayed by touchpoint and by a KUKSA-like provider, per frame.

Each side runs as a whole process (:mod:`bench.replay_process`): start-up, the DBC and
the mapping, the replay. Its CPU time comes from the kernel. The cost per frame in
steady state is the whole process minus the same process replaying only the log's
first frame, over the other frames; that one-frame run is the start-up, reported apart.
Both sides run back to back in every round (their order alternating), and the ratio is
taken per round, so that load from other processes slows both alike.

Where the time goes is measured in this process, on one thread, stage by stage:
touchpoint's line parsing (:class:`~can_signals.candump.CandumpPlayer`, unmapped frames
skipped), its processor, its pipeline (replay thread, hand-off, asyncio consumer); the
baseline's python-can ``LogReader``, its decoding of whitelisted frames with choices,
and KUKSA's per-signal steps (interval, transform, on_change).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import can
import cantools
from cantools.database.can import Database
from cantools.database.errors import DecodeError

from bench.harness import US, log_parsing_us, replay_us
from bench.kuksa_baseline import KuksaLikeProvider
from bench.report import REPEATS, DataMissingError, Row, Section, realdata_dir
from can_signals.binding import Binding, bind
from can_signals.candump import CandumpPlayer
from can_signals.dbc import load_dbcs
from can_signals.mapping import load_mapping
from can_signals.processor import FrameProcessor
from can_signals.update import SignalUpdate

#: The issue's target: touchpoint at least this many times cheaper per frame (RAV4).
RATIO_TARGET: Final = 3.0
#: A recording shorter than this is played several times over for the whole-process
#: figures: the start-up's own variation would swamp the cost of a few thousand frames.
MIN_FRAMES: Final = 100_000
_REPO_ROOT: Final = Path(__file__).resolve().parents[1]
_SIDES: Final = ("touchpoint", "kuksa")


@dataclass(frozen=True, slots=True)
class Recording:
    """A recorded log with the DBC and mapping it is replayed with."""

    name: str
    log: Path
    dbc: Path
    mapping: Path
    target: float | None


def recordings() -> tuple[Recording, ...]:
    """The RAV4 drive with touchpoint's mapping, KUKSA's Model 3 recording with KUKSA's.

    Raises:
        DataMissingError: If a file is missing.
    """
    data = realdata_dir()
    rav4, model3 = data / "rav4_2016", data / "kuksa_model3"
    found = (
        Recording("RAV4 2016 drive", rav4 / "drive_seg40.log", rav4 / "toyota_new_mc_pt.dbc",
                  _REPO_ROOT / "docs" / "cars" / "rav4_2016" / "mapping.yaml", RATIO_TARGET),
        Recording("KUKSA's Model 3 recording", model3 / "candump_Manual_SOC_DogMode_CabinTemp.log",
                  model3 / "Model3CAN.dbc", model3 / "vss_dbc.json", None),
    )  # fmt: skip
    for recording in found:
        for path in (recording.log, recording.dbc, recording.mapping):
            if not path.is_file():
                raise DataMissingError(f"missing {path} (see shared/realdata/README.md)")
    return found


def _process_cpu(side: str, log: Path, recording: Recording) -> tuple[float, dict[str, int]]:
    """CPU seconds of one whole replay process, and what it reports."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-m", "bench.replay_process", side, str(log), str(recording.dbc),
         str(recording.mapping)],
        check=False, capture_output=True, text=True, cwd=_REPO_ROOT,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise RuntimeError(f"the {side} replay of {log.name} failed:\n{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report: dict[str, int] = json.loads(result.stdout)
    return cpu, report


@dataclass(frozen=True, slots=True)
class _Round:
    per_frame_us: dict[str, float]
    startup_ms: dict[str, float]
    updates: dict[str, int]
    frames: int


def _round(recording: Recording, first_frame: Path, order: tuple[str, ...]) -> _Round:
    per_frame: dict[str, float] = {}
    startup: dict[str, float] = {}
    updates: dict[str, int] = {}
    frames = 0
    for side in order:
        whole, report = _process_cpu(side, recording.log, recording)
        one, _ = _process_cpu(side, first_frame, recording)
        frames = report["frames"]
        per_frame[side] = (whole - one) / (frames - 1) * US
        startup[side] = one * 1000
        updates[side] = report["updates"]
    return _Round(per_frame, startup, updates, frames)


# --- stages, in this process ----------------------------------------------------------------


class _NullInput:
    """A bus input that only tells mapped from unmapped frames: the parsing alone."""

    def __init__(self, table: Mapping[int, object]) -> None:
        self.table = table

    def skip(self, _timestamp: float) -> bool:
        return False

    def feed(self, plan: object, timestamp: float, data: bytes) -> None:
        """Nothing to do."""

    @property
    def stale_check_at(self) -> float:
        return math.inf

    def count_skipped(self, count: int, latest: float) -> None:
        """Nothing to do."""

    def __call__(self, msg: can.Message) -> None:
        """Nothing to do."""


def _thread_us(run: Callable[[], int]) -> float:
    """CPU µs per frame of ``run`` (which returns how many frames it handled)."""
    start = time.thread_time()
    frames = run()
    return (time.thread_time() - start) / frames * US


def _play(log: Path, input_for: Callable[[str | int | None], Any]) -> int:
    player = CandumpPlayer(input_for, lambda: None, None, lambda: False, lambda _n, _e: None)
    with log.open(encoding="utf-8", errors="replace", newline=None) as handle:
        player.play(handle)
    return player.frames


def _touchpoint_stages(binding: Binding, log: Path) -> dict[str, float]:
    def parsing() -> int:
        def null(channel: str | int | None) -> _NullInput:
            return _NullInput(binding.layouts_for_bus("can0" if channel is None else str(channel)))

        return _play(log, null)

    def processing() -> int:
        updates: list[SignalUpdate] = []
        processor = FrameProcessor(binding, updates.append)
        return _play(log, lambda c: processor.bus("can0" if c is None else str(c)))

    return {
        "parse": _thread_us(parsing),
        "process": _thread_us(processing),
        "pipeline": replay_us(binding, log, allow_rejections=True),
    }


def _kuksa_stages(database: Database, binding: Binding, log: Path) -> dict[str, float]:
    provider = KuksaLikeProvider(database, binding.document.entries)
    whitelist = provider.whitelist

    def decoding() -> int:
        frames = 0
        reader = can.LogReader(log)
        try:
            for msg in reader:
                frames += 1
                message = whitelist.get(msg.arbitration_id)
                if message is not None:
                    with contextlib.suppress(DecodeError):
                        message.decode(bytes(msg.data), decode_choices=True, allow_truncated=True)
        finally:
            reader.stop()
        return frames

    def everything() -> int:
        fresh = KuksaLikeProvider(database, binding.document.entries)
        frames = 0
        reader = can.LogReader(log)
        try:
            for msg in reader:
                frames += 1
                fresh(msg)
        finally:
            reader.stop()
        return frames

    return {
        "parse": log_parsing_us(log),
        "decode": _thread_us(decoding),
        "kuksa": _thread_us(everything),
    }


def _stage_rows(recording: Recording) -> list[Row]:
    binding = bind(load_mapping(recording.mapping), load_dbcs([(None, recording.dbc)]))
    database = cantools.database.load_file(str(recording.dbc), strict=False)
    assert isinstance(database, Database)
    quiet = logging.getLogger("can_signals")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # KUKSA's Model 3 mapping lacks the gear's SNA value
    try:
        # Both sides in every round, every stage in every round.
        rounds = [
            (_touchpoint_stages(binding, recording.log),
             _kuksa_stages(database, binding, recording.log))
            for _ in range(REPEATS)
        ]  # fmt: skip
    finally:
        quiet.setLevel(level)
    stages = (
        ("touchpoint: read and parse lines, skip unmapped frames", 0, "parse", None, "pipeline"),
        ("touchpoint: processor (compare bits, decode, convert, check)", 0, "process", "parse",
         "pipeline"),
        ("touchpoint: pipeline (replay thread, hand-off, consumer)", 0, "pipeline", "process",
         "pipeline"),
        ("KUKSA-like: python-can LogReader (a Message per line)", 1, "parse", None, "kuksa"),
        ("KUKSA-like: decode whitelisted frames with choices", 1, "decode", "parse", "kuksa"),
        ("KUKSA-like: range, interval, transform, on_change", 1, "kuksa", "decode", "kuksa"),
    )  # fmt: skip
    # The least of each stage over the rounds: load from other processes only ever adds.
    least = [{k: min(r[side][k] for r in rounds) for k in rounds[0][side]} for side in (0, 1)]
    rows = []
    for label, side, upto, before, whole in stages:
        cost = least[side][upto] - (least[side][before] if before else 0.0)
        share = cost / least[side][whole] * 100
        rows.append(Row(f"  {label}: {cost:.2f} µs", share, "%", digits=0))
    return rows


def _long_enough(log: Path, scratch: Path) -> tuple[Path, int]:
    """The log, or the log played over and over (timestamps moved on) to MIN_FRAMES."""
    lines = log.read_text(encoding="utf-8").splitlines()
    times = [float(line[1 : line.index(")")]) for line in lines]
    copies = -(-MIN_FRAMES // len(lines))
    if copies == 1:
        return log, 1
    span = max(times) - min(times) + 0.1
    longer = scratch / log.name
    with longer.open("w", encoding="utf-8") as out:
        for copy in range(copies):
            shift = copy * span
            out.writelines(
                f"({t + shift:.6f}){line[line.index(')') + 1 :]}\n"
                for t, line in zip(times, lines, strict=True)
            )
    return longer, copies


def section(recording: Recording) -> Section:
    """The comparison on one recording."""
    with tempfile.TemporaryDirectory() as scratch:
        log, copies = _long_enough(recording.log, Path(scratch))
        played = Recording(recording.name, log, recording.dbc, recording.mapping, None)
        first_frame = Path(scratch) / "first.log"
        with recording.log.open(encoding="utf-8") as handle:
            first_frame.write_text(handle.readline(), encoding="utf-8")
        rounds = [
            _round(played, first_frame, _SIDES if n % 2 == 0 else _SIDES[::-1])
            for n in range(REPEATS)
        ]
    ours = statistics.median(r.per_frame_us["touchpoint"] for r in rounds)
    theirs = statistics.median(r.per_frame_us["kuksa"] for r in rounds)
    ratio = statistics.median(r.per_frame_us["kuksa"] / r.per_frame_us["touchpoint"]
                              for r in rounds)  # fmt: skip
    start_ours = statistics.median(r.startup_ms["touchpoint"] for r in rounds)
    start_theirs = statistics.median(r.startup_ms["kuksa"] for r in rounds)
    rows = [
        Row("touchpoint, CPU per frame (whole process minus a one-frame run)", ours, "µs"),
        Row("KUKSA-like provider, the same", theirs, "µs"),
        Row("KUKSA-like / touchpoint", ratio, "x", recording.target, at_least=True),
        Row("start-up, a one-frame replay: touchpoint", start_ours, "ms", digits=0),
        Row("start-up, a one-frame replay: KUKSA-like", start_theirs, "ms", digits=0),
        *_stage_rows(recording),
    ]
    last = rounds[-1]
    return Section(
        f"Replay of a whole recording, touchpoint against KUKSA's pipeline ({recording.name})",
        tuple(rows),
        (
            (
                f"{last.frames:,} frames"
                + (
                    f" (the recording {copies} times over, timestamps moved on)"
                    if copies > 1
                    else ""
                )
                + f"; updates: touchpoint {last.updates['touchpoint']:,}, KUKSA-like "
                f"{last.updates['kuksa']:,} (touchpoint also refuses implausible values and "
                "SNA values outside the DBC range)."
            ),
            (
                "each side a whole process (python -m bench.replay_process), CPU from the "
                "kernel; per frame = (whole log - first frame only) / (frames - 1); median of "
                f"{REPEATS} rounds, both sides in each."
            ),
            (
                "stage shares: this process, one thread, the recording as it is; each stage the "
                f"least of {REPEATS} runs; touchpoint's stages add up to its in-process replay, "
                "the baseline's to its whole loop."
            ),
        ),
    )
