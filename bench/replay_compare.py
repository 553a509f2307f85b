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

import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import can
import cantools
from cantools.database.can import Database

from bench.harness import US, replay_us
from bench.kuksa_baseline import KuksaLikeProvider
from bench.report import REPEATS, DataMissingError, Row, Section, realdata_dir
from can_signals.binding import Binding, bind
from can_signals.bus_input import BusInput
from can_signals.candump import CandumpPlayer
from can_signals.dbc import load_dbcs
from can_signals.mapping import load_mapping
from can_signals.processor import FrameProcessor
from can_signals.routes import Plan
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


class _TimedInput:
    """A bus input in front of the processor's, adding up the time spent behind it."""

    def __init__(self, inner: BusInput, spent: list[int]) -> None:
        self._inner = inner
        self._spent = spent
        self.table = inner.table

    @property
    def stale_check_at(self) -> float:
        return self._inner.stale_check_at

    def skip(self, timestamp: float) -> bool:
        start = time.perf_counter_ns()
        looked = self._inner.skip(timestamp)
        self._spent[0] += time.perf_counter_ns() - start
        return looked

    def feed(self, plan: Plan, timestamp: float, data: bytes) -> None:
        start = time.perf_counter_ns()
        self._inner.feed(plan, timestamp, data)
        self._spent[0] += time.perf_counter_ns() - start

    def count_skipped(self, count: int, latest: float) -> None:
        start = time.perf_counter_ns()
        self._inner.count_skipped(count, latest)
        self._spent[0] += time.perf_counter_ns() - start

    def __call__(self, msg: can.Message) -> None:
        start = time.perf_counter_ns()
        self._inner(msg)
        self._spent[0] += time.perf_counter_ns() - start


def _touchpoint_stages(binding: Binding, log: Path) -> dict[str, float]:
    """µs per frame: parsing, the processor (timed inside one replay), the pipeline's part."""
    updates: list[SignalUpdate] = []
    processor = FrameProcessor(binding, updates.append)
    spent = [0]
    player = CandumpPlayer(
        lambda c: _TimedInput(processor.bus("can0" if c is None else str(c)), spent),
        lambda: None, None, lambda: False, lambda _n, _e: None,
    )  # fmt: skip
    with log.open(encoding="utf-8", errors="replace", newline=None) as handle:
        cpu, wall = time.thread_time(), time.perf_counter_ns()
        player.play(handle)
        cpu, wall = time.thread_time() - cpu, time.perf_counter_ns() - wall
    replay = cpu / player.frames * US
    processing = replay * spent[0] / wall
    return {
        "parse": replay - processing,
        "process": processing,
        "replay": replay,
        "pipeline": replay_us(binding, log, allow_rejections=True) - replay,
    }


def _kuksa_stages(database: Database, binding: Binding, log: Path) -> dict[str, float]:
    """µs per frame of the baseline's stages, each timed inside one run."""
    provider = KuksaLikeProvider(database, binding.document.entries)
    clock = time.perf_counter_ns
    reading = decoding = publishing = frames = 0
    reader = can.LogReader(log)
    cpu = time.thread_time()
    try:
        mark = clock()
        for msg in reader:
            read = clock()
            decoded = provider.decode(msg)
            decode = clock()
            if decoded is not None:
                provider.publish(decoded[0], decoded[1], msg.timestamp)
            done = clock()
            reading += read - mark
            decoding += decode - read
            publishing += done - decode
            mark = done
            frames += 1
    finally:
        reader.stop()
    whole = (time.thread_time() - cpu) / frames * US
    wall = reading + decoding + publishing
    return {
        "parse": whole * reading / wall,
        "decode": whole * decoding / wall,
        "publish": whole * publishing / wall,
        "kuksa": whole,
    }


def _stage_rows(recording: Recording) -> list[Row]:
    binding = bind(load_mapping(recording.mapping), load_dbcs([(None, recording.dbc)]))
    database = cantools.database.load_file(str(recording.dbc), strict=False)
    assert isinstance(database, Database)
    quiet = logging.getLogger("can_signals")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # KUKSA's Model 3 mapping lacks the gear's SNA value
    try:
        rounds = [
            (_touchpoint_stages(binding, recording.log),
             _kuksa_stages(database, binding, recording.log))
            for _ in range(REPEATS)
        ]  # fmt: skip
    finally:
        quiet.setLevel(level)
    # Of each side, the round that cost least: load from other processes only ever adds.
    ours = min((r[0] for r in rounds), key=lambda stages: stages["replay"])
    theirs = min((r[1] for r in rounds), key=lambda stages: stages["kuksa"])
    # The pipeline's own part is small: the median of its rounds' differences (two runs
    # each), which load from other processes may push a little either side of 0.
    pipeline = statistics.median(r[0]["pipeline"] for r in rounds)
    shares = (
        ("touchpoint: read and parse lines, skip unmapped frames", ours["parse"], ours["replay"]),
        ("touchpoint: processor (compare bits, decode, convert, check)", ours["process"],
         ours["replay"]),
        ("KUKSA-like: python-can LogReader (a Message per line)", theirs["parse"],
         theirs["kuksa"]),
        ("KUKSA-like: decode whitelisted frames with choices", theirs["decode"], theirs["kuksa"]),
        ("KUKSA-like: range, interval, transform, on_change", theirs["publish"],
         theirs["kuksa"]),
    )  # fmt: skip
    rows = [Row(f"  {label}: {us:.2f} µs", us / whole * 100, "%", digits=0)
            for label, us, whole in shares]  # fmt: skip
    rows.insert(
        2,
        Row("  touchpoint: the pipeline around them (thread, hand-off, consumer)", pipeline, "µs"),
    )
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
                "stages: this process, one thread, the recording as it is, timed inside one "
                f"run (the cheapest of {REPEATS}); touchpoint's two add up to its replay without "
                "the pipeline, whose part is the difference of two runs; the baseline's three "
                "to its whole loop."
            ),
        ),
    )
