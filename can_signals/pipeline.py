"""The signal pipeline: DBC files and a mapping, a source, and an async stream of updates.

Typical use::

    pipeline = SignalPipeline.from_files(mapping, [(None, dbc)], replay=log, speed=0)
    async with pipeline:
        async for update in pipeline:
            ...
    print(pipeline.stats())
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import can

from can_signals.binding import Binding, bind_files
from can_signals.errors import SourceError
from can_signals.processor import FrameProcessor, ProcessorStats
from can_signals.sources import BusConfig, LiveBuses, Replay
from can_signals.stream import DEFAULT_CAPACITY, UpdateStream
from can_signals.update import SignalUpdate
from touchpoint.tasks import Supervisor, beat, idle

_log = logging.getLogger(__name__)

#: The consumer gathers updates for this long after a wake-up (see UpdateStream).
COALESCE_S: Final = 0.005
#: How often a live pipeline looks for signals that stopped while the bus is silent.
SILENCE_TICK: Final = 0.5
#: How often a live bus that was lost is tried again, in seconds.
REOPEN_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """What the pipeline did, for the summary and the health report."""

    processor: ProcessorStats
    dropped_updates: int
    bad_log_lines: int
    replay_error: str | None
    #: Frames the kernel's broadcast manager kept from user space (0: not at work).
    kernel_held_back: int = 0
    #: The broadcast manager's operations at work (one per frame and interval; 0: none).
    kernel_operations: int = 0


class SignalPipeline:
    """Frames from live buses or a replay, decoded to an async stream of updates."""

    def __init__(
        self,
        binding: Binding,
        *,
        buses: Sequence[BusConfig] = (),
        replay: str | Path | None = None,
        speed: float = 1.0,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        if bool(buses) == (replay is not None):
            raise ValueError("give either live buses or a log to replay")
        self.binding = binding
        self._bus_configs = tuple(buses)
        self._replay_path = Path(replay) if replay is not None else None
        self._speed = speed
        self._capacity = capacity
        self._stream: UpdateStream[SignalUpdate] | None = None
        self._live: LiveBuses | None = None
        self._replay: Replay | None = None
        #: Runs the staleness watch of a live bus (restarted if it crashes).
        self.supervisor = Supervisor()
        self._held: deque[SignalUpdate] = deque()
        self._held_back = 0
        self.processor = FrameProcessor(binding, self._emit)
        #: The live buses lost and not yet back, with why.
        self.lost: dict[str, str] = {}

    @classmethod
    def from_files(
        cls,
        mapping: str | Path,
        dbcs: Sequence[tuple[str | None, str | Path]],
        *,
        vss: str | Path | None = None,
        **kwargs: object,
    ) -> Self:
        """Load the DBC files, the mapping and (if given) a VSS release, and bind them.

        The binding's warnings (``pipeline.binding.warnings``) are the caller's to show.

        Raises:
            DbcError: If a DBC file does not load.
            VssError: If the VSS release does not load.
            MappingError: If the mapping has problems, all of them listed.
        """
        return cls(bind_files(mapping, dbcs, vss), **kwargs)  # type: ignore[arg-type]

    def _emit(self, update: SignalUpdate) -> None:
        stream = self._stream
        if stream is None:
            return
        if self._replay_path is None:
            stream.put(update)
        else:
            # The processor emits under its lock: a replay waiting there for room would
            # block every other user of the lock (the consumer calling stats(): a
            # deadlock). The replay thread hands these over between frames instead.
            self._held.append(update)

    def _hand_over(self) -> None:
        """Give held updates to the stream, waiting for room (the replay thread only)."""
        stream = self._stream
        while self._held and stream is not None:
            stream.put(self._held.popleft(), block=True)

    def _replay_done(self) -> None:
        self._hand_over()
        if self._stream is not None:
            self._stream.close()

    async def start(self) -> None:
        """Open the sources and start producing updates.

        Raises:
            SourceError: If a bus or the log cannot be opened.
        """
        loop = asyncio.get_running_loop()
        self._stream = UpdateStream(loop, self._capacity, coalesce=COALESCE_S)
        if self._replay_path is not None:
            replay = Replay(
                self._replay_path, self.processor, self._speed,
                on_done=self._replay_done, after_frame=self._hand_over,
            )  # fmt: skip
            replay.check()
            self._replay = replay
            replay.start()
            return
        live = LiveBuses(
            self._bus_configs,
            self.processor,
            self.binding.frame_ids_for_bus,
            fd=self.binding.fd_for_bus,
            on_lost=self._bus_lost,
        )
        live.start(loop)
        self._live = live
        self.supervisor.start("signal staleness", self._watch_silence)

    def _bus_lost(self, name: str, err: Exception) -> None:
        # Its signals go stale on their own (the silence watch); the stream stays open,
        # so the consumer waits for the bus to come back rather than ending.
        self.lost[name] = str(err) or type(err).__name__
        _log.error(
            "CAN bus %s lost: %s; trying to open it again every %.0f s",
            name, self.lost[name], REOPEN_S,
        )  # fmt: skip
        self.supervisor.start(f"reopen CAN bus {name}", lambda: self._reopen(name))

    async def _reopen(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        while (live := self._live) is not None:
            with idle():
                await asyncio.sleep(REOPEN_S)
            try:
                # Off the loop: a server that takes the connection and never answers
                # holds the opening for seconds.
                bus = await asyncio.to_thread(live.open, name)
            except SourceError as err:
                self.lost[name] = str(err)
                _log.debug("CAN bus %s still cannot be opened: %s", name, err)
                continue
            if self._live is not live:  # stopped meanwhile
                await asyncio.to_thread(bus.shutdown)
                return
            live.attach(name, bus, loop)
            del self.lost[name]
            _log.warning("CAN bus %s is open again", name)
            return

    async def stop(self) -> None:
        """Stop the sources; the stream ends once drained."""
        # The staleness watch, and the reopening of a lost bus if one runs.
        await self.supervisor.stop()
        if self._replay is not None:
            if self._stream is not None:
                self._stream.close()  # unblocks a replay waiting for room
            await asyncio.to_thread(self._replay.stop)
        if self._live is not None:
            live, self._live = self._live, None
            await asyncio.to_thread(live.stop)
            self._held_back = live.held_back()
        if self._stream is not None:
            self._stream.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def __aiter__(self) -> AsyncIterator[SignalUpdate]:
        """The updates, until a replay ends or the pipeline is stopped."""
        if self._stream is None:
            raise RuntimeError("start the pipeline first")
        async for update in self._stream:
            yield update

    async def batches(self, max_items: int = 1000) -> AsyncIterator[list[SignalUpdate]]:
        """The updates in batches, for consumers that commit per batch."""
        if self._stream is None:
            raise RuntimeError("start the pipeline first")
        while batch := await self._stream.get_batch(max_items):
            yield batch

    def bus(self, name: str) -> can.BusABC | None:
        """An open live bus, e.g. for an on-demand diagnostic read."""
        return self._live.buses.get(name) if self._live else None

    @property
    def lost_buses(self) -> dict[str, str]:
        """Live buses lost (a vanished interface, a dead connection), being reopened."""
        return dict(self.lost)

    def notifier(self, name: str) -> can.Notifier | None:
        """The Notifier of an open live bus, for ISO-TP stacks that share it."""
        return self._live.notifiers.get(name) if self._live else None

    async def _watch_silence(self) -> None:
        # Frames age signals on their own clock; when none arrive at all, that clock is
        # continued from the last frame, so a silent bus still goes stale.
        loop = asyncio.get_running_loop()
        last_frames, silent_since = -1, loop.time()
        while True:
            beat()
            await asyncio.sleep(SILENCE_TICK)
            frames = self.processor.frames
            if frames != last_frames:
                last_frames, silent_since = frames, loop.time()
                continue
            latest = self.processor.latest_timestamp
            if latest is not None:
                self.processor.check_stale(latest + loop.time() - silent_since)

    def stats(self) -> PipelineStats:
        """A snapshot of the counters."""
        replay = self._replay
        return PipelineStats(
            processor=self.processor.stats(),
            dropped_updates=self._stream.dropped if self._stream else 0,
            bad_log_lines=replay.bad_lines if replay else 0,
            replay_error=replay.error if replay else None,
            kernel_held_back=self._live.held_back() if self._live else self._held_back,
            kernel_operations=self._live.kernel_operations() if self._live else 0,
        )
