"""Running a scenario: the timeline of states and frames, paced onto buses and into logs.

:func:`timeline` is pure: it walks the scenario clock in ticks, advancing the model and
asking the encoder for the frames due, and yields both. :class:`ScenarioRunner` feeds a
timeline to sinks (a python-can bus, a log file) in real time, at a speed factor, or as
fast as possible. Frame timestamps and the model's time both come from the scenario
clock, never from the wall clock, so a recording is the same at any speed; the wall
clock only decides *when* a frame is handed to a live bus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import can
from cantools.database.can import Database

from can_signals.simulator.encoder import EncodedFrame, FrameEncoder
from can_signals.simulator.errors import SimulatorError
from can_signals.simulator.model import VehicleState, step
from can_signals.simulator.reference import load_reference_database
from can_signals.simulator.scenario import Phase, Scenario
from can_signals.simulator.scenarios import ScenarioOptions, build_scenario

_log = logging.getLogger(__name__)

PhaseListener = Callable[[int, Phase, VehicleState], None]
Observer = Callable[[VehicleState], None]


@dataclass(frozen=True, slots=True)
class Tick:
    """One instant of the scenario clock.

    Attributes:
        clock_ms: Scenario time.
        state: The model state at that time (after the phase's actions, if it starts).
        frames: The frames due at that time, encoded from ``state``.
        phase_index: The running phase.
        phase_started: Whether the phase starts at this tick.
    """

    clock_ms: int
    state: VehicleState
    frames: tuple[EncodedFrame, ...]
    phase_index: int
    phase_started: bool


def timeline(scenario: Scenario, encoder: FrameEncoder) -> Iterator[Tick]:
    """Walk the scenario in steps of the encoder's tick, yielding states and frames.

    Args:
        scenario: The scenario; its initial state's clock is the start.
        encoder: A fresh encoder (it counts frames).
    """
    tick_ms = encoder.tick_ms
    state = scenario.initial
    for index, phase in enumerate(scenario.phases):
        state = phase.begin(state)
        start = state.clock_ms
        end = start + phase.duration_ms
        first = True
        while state.clock_ms < end:
            frames = encoder.frames_at(state.clock_ms, state.utc_start_s, state)
            yield Tick(state.clock_ms, state, tuple(frames), index, first)
            first = False
            target = phase.profile.target(state.clock_ms - start)
            state = step(state, target, tick_ms, scenario.params)


def chained_timeline(
    names: Sequence[str], *, utc_start_s: int | None = None, channel: str = "can0"
) -> Iterator[tuple[int, Tick]]:
    """The reference car through the scenarios ``names``, each where the last one ended.

    Each scenario starts at the last one's odometer and one second after its clock ended
    (the first at ``utc_start_s``, or the scenario's own start); yields ``(index of the
    scenario in names, tick)``.

    Raises:
        SimulatorError: A scenario name that is unknown, or a scenario with no tick.
    """
    odometer_km: float | None = None
    utc_s = utc_start_s
    for index, name in enumerate(names):
        options = ScenarioOptions(start_odometer_km=odometer_km, utc_start_s=utc_s)
        encoder = FrameEncoder(load_reference_database(), channel)
        state: VehicleState | None = None
        for tick in timeline(build_scenario(name, options), encoder):
            state = tick.state
            yield index, tick
        if state is None:
            raise SimulatorError(f"scenario {name} has no ticks")
        odometer_km, utc_s = state.odometer_km, state.utc_s + 1


class FrameSink(Protocol):
    """Where frames go."""

    def send(self, message: can.Message) -> None:
        """Take one frame."""

    def close(self) -> None:
        """No more frames will come."""


class BusSink:
    """Sends frames on a python-can bus (which the caller opens and shuts down)."""

    def __init__(self, bus: can.BusABC, timeout: float = 1.0) -> None:
        self._bus = bus
        self._timeout = timeout

    def send(self, message: can.Message) -> None:
        """Send one frame, waiting up to the timeout for room in the transmit queue.

        Raises:
            SimulatorError: If the bus refuses the frame.
        """
        try:
            self._bus.send(message, timeout=self._timeout)
        except (can.CanError, OSError) as err:
            raise SimulatorError(f"sending on {self._bus.channel_info} failed: {err}") from err

    def close(self) -> None:
        """The bus stays open: its owner shuts it down."""


class LogSink:
    """Writes frames to a log file; a ``.log`` file is candump format (CanutilsLogWriter).

    Raises:
        SimulatorError: If the file cannot be created or its format is unknown.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._writer = can.Logger(self.path)
        except (OSError, ValueError) as err:
            raise SimulatorError(f"cannot record to {self.path}: {err}") from err

    def send(self, message: can.Message) -> None:
        """Write one frame."""
        self._writer.on_message_received(message)

    def close(self) -> None:
        """Flush and close the file."""
        self._writer.stop()


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run did.

    Attributes:
        frames: Frames handed to the sinks.
        clock_ms: Scenario time reached.
        final: The last state.
        completed: ``False`` if the run was stopped before the scenario's end.
    """

    frames: int
    clock_ms: int
    final: VehicleState
    completed: bool


class ScenarioRunner:
    """Plays a scenario into sinks, paced against the wall clock or as fast as possible.

    Args:
        scenario: The scenario.
        encoder: A fresh encoder for the reference DBC.
        sinks: Where the frames go (every frame goes to every sink).
        speed: 1 for real time, 2 twice as fast, 0 as fast as possible.
        on_phase: Called when each phase starts (progress output).
        observers: Called with every new state (e.g. to keep an ECU emulator in sync).
    """

    def __init__(
        self,
        scenario: Scenario,
        encoder: FrameEncoder,
        sinks: Sequence[FrameSink],
        *,
        speed: float = 0.0,
        on_phase: PhaseListener | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        if speed < 0:
            raise SimulatorError("speed must be 0 (as fast as possible) or more")
        self._scenario = scenario
        self._encoder = encoder
        self._sinks = tuple(sinks)
        self._speed = speed
        self._on_phase = on_phase
        self._observers = tuple(observers)
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask a running :meth:`run` to return early (from another thread or a signal)."""
        self._stop.set()

    def run(self) -> RunResult:
        """Play the scenario; the sinks are closed at the end.

        Raises:
            SimulatorError: If a sink fails.
        """
        frames = 0
        state = self._scenario.initial
        wall_start = time.monotonic()
        completed = True
        try:
            for tick in timeline(self._scenario, self._encoder):
                if self._stop.is_set():
                    completed = False
                    break
                state = tick.state
                if tick.phase_started and self._on_phase is not None:
                    phase = self._scenario.phases[tick.phase_index]
                    self._on_phase(tick.phase_index, phase, state)
                for observer in self._observers:
                    observer(state)
                if not tick.frames:
                    continue
                if self._speed and self._wait_until(
                    wall_start + tick.clock_ms / 1000 / self._speed
                ):
                    completed = False
                    break
                for frame in tick.frames:
                    for sink in self._sinks:
                        sink.send(frame.message)
                frames += len(tick.frames)
        finally:
            for sink in self._sinks:
                sink.close()
        _log.debug("scenario %s: %d frames", self._scenario.name, frames)
        return RunResult(frames, state.clock_ms, state, completed)

    def _wait_until(self, deadline: float) -> bool:
        """Wait for a monotonic-clock deadline; ``True`` if stopped meanwhile."""
        delay = deadline - time.monotonic()
        return self._stop.wait(delay) if delay > 0 else self._stop.is_set()


def record(
    scenario: Scenario, path: str | Path, *, channel: str = "can0", database: Database | None = None
) -> RunResult:
    """Record ``scenario`` to a log file as fast as possible.

    Args:
        scenario: The scenario.
        path: The log file; ``.log`` gives a candump log, identical on every run.
        channel: The channel name written on every frame (the replayed bus's name).
        database: The DBC to encode with (default: the reference DBC).

    Raises:
        SimulatorError: If the file cannot be written.
    """
    encoder = FrameEncoder(database or load_reference_database(), channel)
    return ScenarioRunner(scenario, encoder, [LogSink(path)]).run()
