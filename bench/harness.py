"""Measurement primitives for the signal benchmarks: CPU per frame through a virtual bus,
a replay, the processor alone, a live bus at a given frame rate, and a memory probe.

CPU is CPU time (``time.process_time``: every thread, user and system; or
``time.thread_time`` for loops on one thread), never wall time. Each function measures
one fresh pipeline or processor; :mod:`bench.signal_pipeline` repeats them and reports
medians.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import can

from bench.workload import BUS, load_binding
from can_signals.binding import Binding
from can_signals.pipeline import PipelineStats, SignalPipeline
from can_signals.processor import TRUNCATED, FrameProcessor
from can_signals.sources import BusConfig
from can_signals.update import SignalUpdate

#: A saturated 500 kbit/s bus carries about 4,000 to 4,500 frames per second.
SATURATED_FPS: Final = 4_500
#: How often the event loop looks whether a run is done. A pre-filled run lasts tens of
#: milliseconds; a live one seconds, where rarer looks keep the harness's share small.
_POLL: Final = 0.01
_LIVE_POLL: Final = 0.05
US: Final = 1e6

_channels = itertools.count()


class _Drain:
    """The consumer: takes the updates off the pipeline, as the agent will."""

    def __init__(self) -> None:
        self.items = 0

    async def run(self, pipeline: SignalPipeline) -> None:
        """Count the updates until the pipeline's stream ends."""
        async for batch in pipeline.batches():
            self.items += len(batch)


async def _until(done: Callable[[], bool], poll: float = _POLL) -> None:
    """Wait until ``done()``: counters other threads move, so nothing to await but time."""
    while not done():  # noqa: ASYNC110 - no event to wait for; a rare poll costs nothing
        await asyncio.sleep(poll)


def virtual_bus_us(binding: Binding, frames: Sequence[can.Message]) -> float:
    """CPU µs per frame of the full pipeline, frames pre-filled into a virtual bus."""
    return asyncio.run(_virtual_bus_run(binding, frames))


async def _virtual_bus_run(binding: Binding, frames: Sequence[can.Message]) -> float:
    channel = f"bench-{next(_channels)}"
    pipeline = SignalPipeline(binding, buses=[BusConfig(BUS, "virtual", channel)])
    # preserve_timestamps: the frames keep the recording's clock, which the interval and
    # staleness rules run on; python-can would otherwise stamp them all "now".
    sender = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    drain = _Drain()
    try:
        await pipeline.start()
        consumer = asyncio.create_task(drain.run(pipeline))
        processor = pipeline.processor
        # Holding the processor's lock parks the Notifier thread on the first frame while
        # the rest queue up in the bus: the sender's cost (a deep copy per frame) stays
        # out of the measurement. No await in here: the loop must not need the lock.
        with processor.lock:
            for msg in frames:
                sender.send(msg)
            start = time.process_time()
        await _until(lambda: processor.frames >= len(frames) and drain.items >= processor.updates)
        cpu = time.process_time() - start
        check_clean(pipeline.stats())
    finally:
        await pipeline.stop()
        sender.shutdown()
    await consumer
    return cpu / len(frames) * US


def replay_us(binding: Binding, log: Path, *, allow_rejections: bool = False) -> float:
    """CPU µs per frame of a replay of ``log`` at speed 0, parsing included.

    Args:
        binding: The mapping bound to the log's DBC.
        log: The log.
        allow_rejections: Accept a run whose values were refused (KUKSA's Model 3
            mapping has no entry for the gear's SNA value); dropped updates still fail.
    """
    return asyncio.run(_replay_run(binding, log, allow_rejections=allow_rejections))


async def _replay_run(binding: Binding, log: Path, *, allow_rejections: bool) -> float:
    pipeline = SignalPipeline(binding, replay=log, speed=0)
    drain = _Drain()
    start = time.process_time()
    async with pipeline:
        await drain.run(pipeline)  # ends when the replay has played the whole log
    cpu = time.process_time() - start
    stats = pipeline.stats()
    if not allow_rejections:
        check_clean(stats)
    elif stats.dropped_updates or stats.replay_error:
        raise RuntimeError(f"the benchmark run was not clean: {stats}")
    return cpu / stats.processor.frames * US


def log_parsing_us(log: Path) -> float:
    """CPU µs per frame of python-can's reader alone on ``log``."""
    start = time.thread_time()
    reader = can.LogReader(log)
    try:
        count = sum(1 for _ in reader)
    finally:
        reader.stop()
    return (time.thread_time() - start) / count * US


def check_clean(stats: PipelineStats) -> None:
    """Fail a run that dropped updates or rejected values.

    Raises:
        RuntimeError: If it did.
    """
    # A dropped update or a rejection would mean the run measured something else; a
    # signal absent from a short frame is the recording's nature (its README says so).
    rejected = sum(
        n for (reason, _), n in stats.processor.rejections.items() if reason != TRUNCATED
    )
    if stats.dropped_updates or rejected or stats.replay_error:
        raise RuntimeError(f"the benchmark run was not clean: {stats}")


def processor_us(binding: Binding, frames: Sequence[can.Message]) -> float:
    """CPU µs per frame of the processor alone, called as the bus listener, no bus."""
    updates: list[SignalUpdate] = []
    processor = FrameProcessor(binding, updates.append)
    # Frames go to the listener of their log channel, as a replay does (harness work).
    calls = [(processor.bus(BUS if m.channel is None else str(m.channel)), m) for m in frames]
    start = time.thread_time()
    for listener, msg in calls:
        listener(msg)
    return (time.thread_time() - start) / len(frames) * US


@dataclass(frozen=True, slots=True)
class LiveShare:
    """CPU shares of one core (%) while frames arrive at :data:`SATURATED_FPS`."""

    pipeline: float  # the process minus the sender measured alone
    event_loop: float  # of which the event-loop thread (hand-off, consumer, wake-ups)


def live_share(binding: Binding, frames: Sequence[can.Message], tick: float) -> LiveShare:
    """Push ``frames`` at :data:`SATURATED_FPS` in bursts every ``tick`` s into a pipeline."""
    sender_alone = asyncio.run(_live_run(None, frames, tick))
    with_pipeline = asyncio.run(_live_run(binding, frames, tick))
    return LiveShare(with_pipeline.pipeline - sender_alone.pipeline, with_pipeline.event_loop)


async def _live_run(
    binding: Binding | None, frames: Sequence[can.Message], tick: float
) -> LiveShare:
    # binding None: the sender alone, into a bus nobody reads (python-can still copies
    # every frame into its queue, as it does for the pipeline's bus).
    channel = f"bench-{next(_channels)}"
    seconds = len(frames) / SATURATED_FPS
    sender = _Sender(channel, frames, tick)
    if binding is None:
        idle = can.Bus(interface="virtual", channel=channel)
        start_cpu = time.process_time()
        sender.start()
        await _until(lambda: not sender.is_alive(), _LIVE_POLL)
        idle.shutdown()
        return LiveShare((time.process_time() - start_cpu) / seconds * 100, 0.0)
    pipeline = SignalPipeline(binding, buses=[BusConfig(BUS, "virtual", channel)])
    drain = _Drain()
    try:
        await pipeline.start()
        consumer = asyncio.create_task(drain.run(pipeline))
        processor = pipeline.processor
        start_cpu, start_loop = time.process_time(), time.thread_time()
        sender.start()
        await _until(
            lambda: (
                not sender.is_alive()
                and processor.frames >= len(frames)
                and drain.items >= processor.updates
            ),
            _LIVE_POLL,
        )
        cpu, loop_cpu = time.process_time() - start_cpu, time.thread_time() - start_loop
        check_clean(pipeline.stats())
    finally:
        await pipeline.stop()
        sender.join()
    await consumer
    # Per second of traffic: the CPU the frames cost, whatever the run's tail took.
    return LiveShare(cpu / seconds * 100, loop_cpu / seconds * 100)


class _Sender(threading.Thread):
    """Sends frames at :data:`SATURATED_FPS`, in a burst every ``tick`` seconds."""

    def __init__(self, channel: str, frames: Sequence[can.Message], tick: float) -> None:
        super().__init__(name="bench sender", daemon=True)
        self._frames = frames
        self._tick = tick
        # Live timestamps (python-can stamps each frame when sent), as a real bus would.
        self._bus = can.Bus(interface="virtual", channel=channel)

    def run(self) -> None:
        """Send every frame, sleeping between bursts to keep the rate."""
        per_tick = max(1, round(SATURATED_FPS * self._tick))
        due = time.monotonic()
        try:
            for first in range(0, len(self._frames), per_tick):
                for msg in self._frames[first : first + per_tick]:
                    self._bus.send(msg)
                due += per_tick / SATURATED_FPS
                time.sleep(max(0.0, due - time.monotonic()))
        finally:
            self._bus.shutdown()


def memory_probe(mode: str) -> dict[str, float]:
    """Replay the whole recording in a fresh process and return its memory figures.

    A fresh process, because this one holds the benchmarks' frame lists; and one per
    mode, because tracemalloc's own bookkeeping would inflate the resident set.

    Args:
        mode: ``rss`` (``before_kib``, ``peak_kib``) or ``tracemalloc`` (``peak_bytes``).

    Raises:
        RuntimeError: If the probe fails, with its error output.
    """
    result = subprocess.run(
        [sys.executable, "-m", "bench.harness", "--memory", mode],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if result.returncode:
        raise RuntimeError(f"the memory probe failed:\n{result.stderr}")
    figures: dict[str, float] = json.loads(result.stdout)
    return figures


def _peak_rss_kib() -> int:
    """The process's peak resident set, in KiB.

    getrusage's ``ru_maxrss`` survives fork and exec on Linux, so a child reports its
    parent's peak if that was higher (here: the benchmark holding the whole recording).
    The kernel's per-address-space high-water mark, VmHWM, starts afresh at exec.
    """
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _memory_probe(mode: str) -> dict[str, float]:
    log, binding = load_binding()
    before = _peak_rss_kib()
    if mode == "tracemalloc":
        tracemalloc.start()
    replay_us(binding, log)
    figures: dict[str, float] = {"before_kib": before, "peak_kib": _peak_rss_kib()}
    if mode == "tracemalloc":
        figures["peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return figures


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--memory" and argv[1] in ("rss", "tracemalloc"):
        print(json.dumps(_memory_probe(argv[1])))
        return 0
    print("usage: python -m bench.harness --memory {rss,tracemalloc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
