"""A long simulated drive of the reference car: one candump log and its signal updates.

The agent benchmarks need what the daemon sees on a real head unit: the reference car's
frames, decoded by the real signal layer (its DBC, its mapping, its throttles and
plausibility guards) into :class:`~can_signals.update.SignalUpdate` s. The simulator's
scenarios are chained into one drive, each starting where the last one ended (odometer
and clock), so the odometer never runs backwards and the guards accept every reading:

1. ``highway_service``: town, 20 minutes of highway, past the 15,000 km service threshold;
2. ``park_charge``: to a charger, 20 minutes of AC charging with the SoC rising;
3. ``commute``: 15 minutes of city stop-and-go, reverse park, lock.

One pass over the simulator's timeline writes the log (for the daemon's replay) and
feeds the frames to a :class:`~can_signals.processor.FrameProcessor` (for the core's
benchmark), so the slow part, the simulation, runs once per ``python -m bench``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from bench.scratch import disk_base
from can_signals.binding import bind_files
from can_signals.processor import FrameProcessor
from can_signals.simulator import LogSink, chained_timeline, reference_files
from can_signals.update import SignalUpdate

#: The scenarios, in the order they are driven.
SCENARIOS: Final = ("highway_service", "park_charge", "commute")
#: The channel written in the log, which the daemon's replay takes as the bus name.
CHANNEL: Final = "can0"


@dataclass(frozen=True, slots=True)
class Drive:
    """The recorded drive.

    Attributes:
        log: The candump log of every frame (on a real disk; removed at exit).
        updates: The signal updates the signal layer makes of those frames, in order.
        frames: Frames in the log.
        seconds: Scenario time the drive covers.
    """

    log: Path
    updates: tuple[SignalUpdate, ...]
    frames: int
    seconds: float


@cache
def recorded_drive() -> Drive:
    """Simulate the drive once per process (about 20 s of CPU) and keep it."""
    directory = Path(tempfile.mkdtemp(prefix="touchpoint-bench-drive-", dir=disk_base()))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    log = directory / "drive.log"
    files = reference_files()
    binding = bind_files(files.mapping, [(None, files.dbc)])
    updates: list[SignalUpdate] = []
    listener = FrameProcessor(binding, updates.append).bus(CHANNEL)
    sink = LogSink(log)
    frames = 0
    # Each scenario's clock, at its last tick.
    ends: dict[int, float] = {}
    try:
        for index, tick in chained_timeline(SCENARIOS, channel=CHANNEL):
            for frame in tick.frames:
                sink.send(frame.message)
                listener(frame.message)
            frames += len(tick.frames)
            ends[index] = tick.state.clock_ms / 1000
    finally:
        sink.close()
    seconds = sum(ends.values())
    return Drive(log, tuple(updates), frames, seconds)
