"""The car on the soak's CAN bus: the vehicle simulator, or a recording played back.

:class:`SimCar` plays drive segments the soak asks for, one after the other, onto the
python-can-remote bus from a thread of its own; between segments the car stands where
it is and keeps sending (an ECU never goes quiet because nobody asked for anything).
It keeps the ground truth the invariants need: whether the car moves and since when,
and the lowest and highest odometer it really sent. It can also put single frames on
the bus that no scenario makes: an odometer of all ones ("not available") and GNSS
times without a fix.

:class:`RecordedCar` plays a candump log instead (a simulator recording, or the real
RAV4 drive), a stretch at a time, at its own pace, looping at the end.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import can
import cantools.database

from can_signals.simulator import (
    BusSink,
    FrameEncoder,
    Gear,
    Ignition,
    Phase,
    Scenario,
    ScenarioRunner,
    VehicleState,
    load_reference_database,
)
from can_signals.simulator.scenario import ParkingBrake, SelectGear, SetIgnition

#: How long a stand-still stretch between segments lasts (scenario ms), re-played.
HOLD_MS: Final = 2_000
#: Above this speed (km/h) the car moves.
MOVING_KMH: Final = 0.5


def drive_phases(name: str, drive: Phase) -> list[Phase]:
    """Unlock, start, select D, ``drive``, park, switch off."""
    return [
        Phase(f"{name}: unlock", 500, (SetIgnition(Ignition.OFF),)),
        Phase("accessory", 500, (SetIgnition(Ignition.ACC),)),
        Phase("ignition on", 500, (SetIgnition(Ignition.ON),)),
        Phase("start", 1_000, (SetIgnition(Ignition.START),)),
        Phase(
            "ready: release the parking brake, select D",
            1_000,
            (SetIgnition(Ignition.ON), ParkingBrake(engaged=False), SelectGear(Gear.D)),
        ),
        drive,
        Phase("park", 1_500, (SelectGear(Gear.P), ParkingBrake(engaged=True))),
        Phase("ignition off", 1_000, (SetIgnition(Ignition.OFF),)),
    ]


@dataclass(frozen=True, slots=True)
class Segment:
    """Phases to play from the current state, at a speed factor."""

    name: str
    phases: tuple[Phase, ...]
    speed: float = 1.0


class _TruthSink:
    """A sink that tells the car each frame really went out."""

    def __init__(self, sink: BusSink, sent: Callable[[], None]) -> None:
        self._sink = sink
        self._sent = sent

    def send(self, message: can.Message) -> None:
        """Send, then say so."""
        self._sink.send(message)
        self._sent()

    def close(self) -> None:
        """Close the wrapped sink."""
        self._sink.close()


class SimCar:
    """The simulated car, driving segments on request (see the module docstring).

    Args:
        channel: The python-can-remote URL.
        initial: The state the car starts in.
    """

    def __init__(self, channel: str, initial: VehicleState) -> None:
        self._channel = channel
        self._database = load_reference_database()
        self._segments: queue.Queue[Segment] = queue.Queue()
        self._raw: queue.Queue[can.Message] = queue.Queue()
        self._lock = threading.Lock()
        self._state = initial
        self._moving_since: float | None = None
        self._parked_since: float = time.monotonic()
        self._odometer = (initial.odometer_km, initial.odometer_km)
        self._busy = threading.Event()
        self._stop = threading.Event()
        self._runner: ScenarioRunner | None = None
        self._staged: VehicleState | None = None
        self._standing = True
        self._thread = threading.Thread(target=self._run, name="soak car", daemon=True)
        self._listener = threading.Thread(target=self._listen, name="soak listener", daemon=True)
        self.error: BaseException | None = None

    # -- control ----------------------------------------------------------------------

    def start(self) -> None:
        """Start sending, and listening for what the bus delivers."""
        self._thread.start()
        self._listener.start()

    def stop(self) -> None:
        """Stop sending and wait for the thread."""
        self._stop.set()
        runner = self._runner
        if runner is not None:
            runner.stop()
        self._thread.join(timeout=10)
        self._listener.join(timeout=10)

    def play(self, segment: Segment, *, wait: bool = True, timeout: float = 300.0) -> None:
        """Play ``segment`` next; with ``wait``, return once it was played."""
        self._busy.set()
        self._segments.put(segment)
        runner = self._runner
        if runner is not None and self._standing:
            runner.stop()  # end the stand-still stretch now (never a segment asked for)
        if wait:
            deadline = time.monotonic() + timeout
            while self._busy.is_set() and not self._stop.is_set() and time.monotonic() < deadline:
                if self.error is not None:
                    raise RuntimeError(f"the car stopped: {self.error}") from self.error
                time.sleep(0.05)

    def inject(self, message_name: str, raw: dict[str, int]) -> None:
        """Send one frame of the reference DBC with these raw signal values."""
        message = self._database.get_message_by_name(message_name)
        data = message.encode(raw, scaling=False, strict=False)
        self._raw.put(
            can.Message(
                arbitration_id=message.frame_id, data=data, is_extended_id=message.is_extended_frame
            )
        )

    @property
    def busy(self) -> bool:
        """Whether a segment asked for is still playing or waiting to."""
        return self._busy.is_set()

    @property
    def database(self) -> cantools.database.Database:
        """The reference DBC."""
        db: cantools.database.Database = self._database
        return db

    # -- truth ------------------------------------------------------------------------

    @property
    def state(self) -> VehicleState:
        """The state the car is in now."""
        with self._lock:
            return self._state

    def motion(self) -> tuple[bool, float, float]:
        """Whether it moves, for how long it has moved, for how long it has stood (s)."""
        now = time.monotonic()
        with self._lock:
            if self._moving_since is not None:
                return True, now - self._moving_since, 0.0
            return False, 0.0, now - self._parked_since

    def odometer_range(self) -> tuple[float, float]:
        """The lowest and highest odometer the car sent (km)."""
        with self._lock:
            return self._odometer

    # -- the thread -------------------------------------------------------------------

    def _stage(self, state: VehicleState) -> None:
        """A new state, not on the bus yet (the runner calls this before sending)."""
        self._staged = state

    def _sent(self) -> None:
        """A frame went out: the truth is now the state it came from."""
        staged = self._staged
        if staged is not None:
            self._staged = None
            self._observe(staged)

    def _observe(self, state: VehicleState) -> None:
        with self._lock:
            self._state = state
            low, high = self._odometer
            shown = int(state.odometer_km * 10) / 10
            self._odometer = (min(low, shown), max(high, shown))

    def _listen(self) -> None:
        """Motion as the bus delivers it: another client of the server, as the daemon is.

        On a loaded machine the bus can trail the simulator by seconds: the daemon can
        only react to what it was given, so the truth is what a listener received.
        """
        speed = self._database.get_message_by_name("VEHICLE_SPEED")
        with can.Bus(interface="remote", channel=self._channel) as bus:
            while not self._stop.is_set():
                message = bus.recv(0.5)
                if message is None or message.arbitration_id != speed.frame_id:
                    continue
                with contextlib.suppress(ValueError, KeyError):
                    decoded = speed.decode(bytes(message.data))
                    kmh = decoded.get("VEHICLE_SPEED") if isinstance(decoded, dict) else None
                    if isinstance(kmh, int | float):
                        self._moved(float(kmh) > MOVING_KMH)

    def _moved(self, moving: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if moving and self._moving_since is None:
                self._moving_since = now
            elif not moving and self._moving_since is not None:
                self._moving_since, self._parked_since = None, now

    def _run(self) -> None:
        try:
            with can.Bus(interface="remote", channel=self._channel) as bus:
                while not self._stop.is_set():
                    self._send_raw(bus)
                    try:
                        segment = self._segments.get_nowait()
                        self._standing = False
                    except queue.Empty:
                        self._busy.clear()
                        segment = Segment("stand", (Phase("stand", HOLD_MS),), speed=1.0)
                        self._standing = True
                    self._play(bus, segment)
        except BaseException as err:  # noqa: BLE001 - kept for the soak to report
            self.error = err

    def _send_raw(self, bus: can.BusABC) -> None:
        while True:
            try:
                message = self._raw.get_nowait()
            except queue.Empty:
                return
            bus.send(message, timeout=1.0)

    def _play(self, bus: can.BusABC, segment: Segment) -> None:
        state = self.state
        # The GNSS receiver tells the real time at the start of every segment.
        initial = replace(state, utc_start_s=int(time.time()) - state.clock_ms // 1000)
        scenario = Scenario(segment.name, segment.name, initial, segment.phases)
        runner = ScenarioRunner(
            scenario,
            FrameEncoder(self._database),
            [_TruthSink(BusSink(bus), self._sent)],
            speed=segment.speed,
            # The truth follows the frames actually sent: a bus that lags behind the
            # simulator (a loaded machine) must not make the car "move" early.
            observers=[self._stage],
        )
        self._runner = runner
        if self._stop.is_set():
            return
        result = runner.run()
        self._observe(result.final)


class RecordedCar:
    """A candump log played onto the bus, a stretch at a time, looping at its end.

    The truth it gives is only what the log says (the soak's invariants that need the
    car's motion or odometer use the decoded signals of the frames it sent).

    Args:
        channel: The python-can-remote URL.
        log: The candump log.
        decode: Frame -> (moving, odometer km), each None when the frame does not say.
        channels: The log's channels to play (a live bus is one of the car's buses).
    """

    def __init__(
        self,
        channel: str,
        log: Path,
        decode: Callable[[can.Message], tuple[bool | None, float | None]],
        channels: frozenset[str] = frozenset({"can0"}),
    ) -> None:
        self._channel = channel
        self._frames: Sequence[can.Message] = [
            m for m in can.LogReader(str(log)) if m.channel is None or str(m.channel) in channels
        ]
        self._decode = decode
        self._position = 0
        self._lock = threading.Lock()
        self._moving_since: float | None = None
        self._parked_since = time.monotonic()
        self._odometer: tuple[float, float] | None = None
        self._bus: can.BusABC | None = None
        self.loops = 0

    def start(self) -> None:
        """Connect to the bus."""
        self._bus = can.Bus(interface="remote", channel=self._channel)

    def stop(self) -> None:
        """Disconnect."""
        if self._bus is not None:
            with contextlib.suppress(can.CanError, OSError):
                self._bus.shutdown()

    def play(self, seconds: float) -> None:
        """Play the next ``seconds`` of the log at real time (blocking)."""
        assert self._bus is not None
        if not self._frames:
            return
        start = self._frames[self._position].timestamp
        wall = time.monotonic()
        while True:
            frame = self._frames[self._position]
            offset = frame.timestamp - start
            if offset > seconds:
                return
            delay = wall + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._bus.send(
                can.Message(
                    arbitration_id=frame.arbitration_id,
                    data=frame.data,
                    is_extended_id=frame.is_extended_id,
                    dlc=frame.dlc,
                ),
                timeout=1.0,
            )
            self._observe(frame)
            self._position += 1
            if self._position >= len(self._frames):
                self._position, self.loops = 0, self.loops + 1
                return

    def _observe(self, frame: can.Message) -> None:
        moving, odometer = self._decode(frame)
        now = time.monotonic()
        with self._lock:
            if moving is True and self._moving_since is None:
                self._moving_since = now
            elif moving is False and self._moving_since is not None:
                self._moving_since, self._parked_since = None, now
            if odometer is not None:
                low, high = self._odometer or (odometer, odometer)
                self._odometer = (min(low, odometer), max(high, odometer))

    def motion(self) -> tuple[bool, float, float]:
        """As :meth:`SimCar.motion`."""
        now = time.monotonic()
        with self._lock:
            if self._moving_since is not None:
                return True, now - self._moving_since, 0.0
            return False, 0.0, now - self._parked_since

    def odometer_range(self) -> tuple[float, float] | None:
        """As :meth:`SimCar.odometer_range` (None: the log has no odometer)."""
        with self._lock:
            return self._odometer
