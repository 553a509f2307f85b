"""The frame processor: CAN frames in, plausible VSS updates out. This is the hot path.

Per frame the work is, in order, and stops as early as it can:

1. look the frame key up in the bus's table (unmapped frames stop here);
2. mask the payload with the bits of the mapped signals and compare with the last
   frame of that ID: when nothing mapped changed and no periodic update is due, stop;
3. decode with the cut-down cantools message (only the mapped signals, no choices);
4. per route: KUKSA's ``interval_ms`` / ``on_change`` rules, the converter, the
   plausibility guards, and the hand-off.

All timing uses the frames' own timestamps, so a replay gives the same updates at any
speed. Staleness is checked on the same clock as frames arrive, and by
:meth:`FrameProcessor.check_stale` for a live bus that has gone silent.

The processor may be called from python-can's Notifier threads and from the event loop
at once; one lock (uncontended in the common single-bus case) keeps its state whole.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import can
from cantools.database.errors import DecodeError

from can_signals.binding import Binding, FrameLayout, SignalBinding, frame_key
from can_signals.catalogue import LAMP_PREFIX, ODOMETER, SPEED
from can_signals.convert import Rejected
from can_signals.faults import FaultAssembler
from can_signals.plausibility import OdometerGuard, SpeedGuard
from can_signals.ratelimit import RateLimitedLog
from can_signals.update import SignalUpdate, SignalValue

_log = logging.getLogger(__name__)

Emit = Callable[[SignalUpdate], None]
#: How often (on the frames' clock) stale signals and expired DTCs are looked for.
STALE_CHECK_PERIOD: Final = 0.25
TRUNCATED: Final = "truncated"
DECODE_FAILED: Final = "decode_failed"


@dataclass(frozen=True, slots=True)
class ProcessorStats:
    """Counters since start; a snapshot."""

    frames: int
    mapped_frames: int
    unmapped_frames: int
    frames_without_dbc: int
    short_frames: int
    long_frames: int
    error_or_remote_frames: int
    decodes: int
    updates: int
    rejections: Mapping[tuple[str, str], int]

    @property
    def rejected(self) -> int:
        """All rejections together."""
        return sum(self.rejections.values())


class _Route:
    """Runtime state of one binding on one bus."""

    __slots__ = (
        "behind", "binding", "convert", "interval", "kind", "last_present", "last_time",
        "on_change", "path", "present", "scale", "signal", "stale_after", "unit", "value",
    )  # fmt: skip

    def __init__(self, binding: SignalBinding) -> None:
        entry = binding.entry
        self.binding = binding
        self.path = entry.path
        self.unit = binding.spec.unit
        self.signal = binding.signal.name
        self.convert = binding.convert
        self.kind = binding.kind
        # A DTC slot cycles through codes: every change matters, whatever the file says.
        self.interval = 0.0 if binding.kind == "dtc" else entry.interval_ms / 1000
        self.on_change = True if binding.kind == "dtc" else entry.on_change
        self.stale_after = binding.stale_seconds
        self.scale = float(binding.signal.scale)
        self.last_time = -math.inf
        self.value: SignalValue | None = None
        self.present = False
        self.last_present = -math.inf
        # A frame changed while this route waited for its interval: when it is due, it
        # must look at the frame's values even if the frames since are identical.
        self.behind = False


class _Plan:
    """Runtime state of one mapped CAN ID on one bus."""

    __slots__ = (
        "bus", "decode", "last_bits", "last_len", "last_seen", "length", "mask", "name",
        "next_due", "routes", "values",
    )  # fmt: skip

    def __init__(self, layout: FrameLayout, bus: str) -> None:
        message = layout.message
        self.bus = bus
        self.name = message.name
        self.length = message.length
        self.mask = layout.mask
        self.routes = tuple(_Route(b) for b in layout.bindings)
        self.last_bits: int | None = None
        self.last_len = -1
        self.last_seen = -math.inf
        self.next_due = -math.inf
        self.values: Mapping[str, float | int] = {}
        decode_simple = message.decode_simple
        unmultiplexed = layout.unmultiplexed

        def decode(data: bytes | bytearray) -> Mapping[str, float | int]:
            # Positional: no choices, scaling on, truncated frames allowed, excess allowed.
            try:
                return decode_simple(data, False, True, True, True)  # type: ignore[arg-type,return-value]
            except DecodeError:
                if unmultiplexed is None:
                    raise
            # The multiplexer selects a branch the mapping does not read (or one the DBC
            # does not define): only the signals outside the branches are in this frame.
            return unmultiplexed.decode_simple(data, False, True, True, True)  # type: ignore[arg-type,return-value]

        self.decode = decode


class BusInput:
    """Receives the frames of one named bus; a python-can listener (callable)."""

    __slots__ = ("_processor", "_table", "name")

    def __init__(self, processor: FrameProcessor, name: str, table: dict[int, _Plan]) -> None:
        self._processor = processor
        self._table = table
        self.name = name

    def __call__(self, msg: can.Message) -> None:
        """Process one frame (the python-can ``Listener`` protocol)."""
        processor = self._processor
        with processor.lock:
            processor.frames += 1
            key = msg.arbitration_id | 0x8000_0000 if msg.is_extended_id else msg.arbitration_id
            plan = self._table.get(key)
            if plan is None:
                # Other traffic still moves the clock: mapped IDs that stopped go stale.
                processor.advance_clock(msg.timestamp)
                if self._table:
                    processor.unmapped += 1
                else:
                    processor.without_dbc += 1
                return
            if msg.is_remote_frame or msg.is_error_frame:
                processor.error_or_remote += 1
                return
            processor.frame(plan, msg.timestamp, msg.data)

    def on_error(self, exc: Exception) -> None:
        """python-can calls this when the bus fails under a Notifier thread."""
        _log.error("CAN bus %s: receive failed: %s", self.name, exc)


class FrameProcessor:
    """Decodes frames of any number of named buses into :class:`SignalUpdate` s."""

    def __init__(self, binding: Binding, emit: Emit) -> None:
        self.lock = threading.Lock()
        self._binding = binding
        self._emit = emit
        self._inputs: dict[str, BusInput] = {}
        self._plans: list[_Plan] = []
        self._assembler = FaultAssembler(self._emit_counted)
        self._odometer = OdometerGuard()
        self._speed = SpeedGuard()
        self._next_stale_check = -math.inf
        self._rejections: Counter[tuple[str, str]] = Counter()
        self._log = RateLimitedLog(_log)
        self.frames = 0
        self.unmapped = 0
        self.without_dbc = 0
        self.short_frames = 0
        self.long_frames = 0
        self.error_or_remote = 0
        self.decodes = 0
        self.updates = 0
        self.latest_timestamp: float | None = None

    def bus(self, name: str) -> BusInput:
        """The listener for the bus called ``name`` (created on first use)."""
        with self.lock:
            existing = self._inputs.get(name)
            if existing is not None:
                return existing
            table: dict[int, _Plan] = {}
            for key, layout in self._binding.layouts_for_bus(name).items():
                plan = _Plan(layout, name)
                table[key] = plan
                self._plans.append(plan)
                for route in plan.routes:
                    if route.kind == "dtc":
                        self._assembler.add_slot(
                            id(route), name, route.stale_after, _last_seen_of(plan)
                        )
            bus_input = BusInput(self, name, table)
            self._inputs[name] = bus_input
            return bus_input

    def seed_odometer(self, metres: float) -> None:
        """Start from the odometer a previous run kept: lower readings are rejected."""
        with self.lock:
            self._odometer.seed(metres)

    def dtc_read_result(self, source: str, codes: tuple[str, ...], timestamp: float) -> None:
        """Fold the result of an on-demand diagnostic read into ``DTCList``."""
        with self.lock:
            self._assembler.read_result(source, codes, timestamp)

    def frame(self, plan: _Plan, timestamp: float, data: bytes | bytearray) -> None:
        """Process one mapped frame. The caller holds :attr:`lock`."""
        length = len(data)
        if length != plan.length:
            if length < plan.length:
                self.short_frames += 1
            else:
                self.long_frames += 1
        previous_seen = plan.last_seen
        plan.last_seen = timestamp
        self.advance_clock(timestamp)
        bits = int.from_bytes(data, "little") & plan.mask
        if bits == plan.last_bits and length == plan.last_len:
            if timestamp < plan.next_due:
                return
            changed = False
        else:
            try:
                plan.values = plan.decode(data)
            except (DecodeError, ValueError, KeyError, IndexError) as err:
                plan.last_bits = None
                self._reject(plan.name, DECODE_FAILED, f"{plan.name}: {err}")
                return
            self.decodes += 1
            plan.last_bits, plan.last_len = bits, length
            changed = True
        self._run_routes(plan, timestamp, previous_seen, changed=changed)

    def advance_clock(self, timestamp: float) -> None:
        """Note a frame's timestamp and look for stale signals when due (lock held)."""
        self.latest_timestamp = timestamp
        if timestamp >= self._next_stale_check:
            self._check_stale(timestamp)

    def _run_routes(  # noqa: PLR0912 - the per-route rules read best in one place
        self, plan: _Plan, timestamp: float, previous_seen: float, *, changed: bool
    ) -> None:
        values = plan.values
        bus = plan.bus
        next_due = math.inf
        for route in plan.routes:
            if route.interval:
                due = route.last_time + route.interval
                if timestamp < due:
                    next_due = min(next_due, due)
                    route.behind = route.behind or changed
                    continue
                route.last_time = timestamp
                next_due = min(next_due, timestamp + route.interval)
            elif not route.on_change:
                next_due = -math.inf
            if not changed and not route.behind:
                if not route.on_change and route.value is not None:
                    self._emit_counted(
                        SignalUpdate(route.path, route.value, route.unit, timestamp, bus)
                    )
                continue
            route.behind = False
            raw = values.get(route.signal)
            if raw is None:
                if route.present:
                    route.present = False
                    route.last_present = previous_seen
                if plan.last_len < plan.length:  # else another multiplexer branch
                    self._rejections[(TRUNCATED, route.path)] += 1
                continue
            route.present = True
            route.last_present = timestamp
            try:
                value = route.convert(raw, values)
            except Rejected as rejected:
                plan.last_bits = None  # look at the next frame again, even if identical
                self._reject(route.path, rejected.reason, str(rejected))
                continue
            if route.on_change and value == route.value:
                continue
            if route.kind == "dtc":
                route.value = value
                self._assembler.slot(id(route), value, timestamp, bus)  # type: ignore[arg-type]
                continue
            reason = self._implausible(route, value, raw, values, timestamp)
            if reason is not None:
                plan.last_bits = None
                self._reject(route.path, reason, f"implausible value {value!r}")
                continue
            route.value = value
            self._emit_counted(SignalUpdate(route.path, value, route.unit, timestamp, bus))
            if route.kind == "lamp":
                self._assembler.lamp(route.path[len(LAMP_PREFIX) :], bool(value), timestamp, bus)
        plan.next_due = next_due

    def _implausible(
        self,
        route: _Route,
        value: SignalValue,
        raw: float | int,
        values: Mapping[str, float | int],
        timestamp: float,
    ) -> str | None:
        path = route.path
        if path == SPEED:
            assert isinstance(value, int | float)
            reason = self._speed.check(value, timestamp)
            if reason is None:
                self._odometer.observe_speed(value)
            return reason
        if path == ODOMETER:
            assert isinstance(value, int | float)
            try:
                step = route.convert(raw + route.scale, values)
                quantum = abs(float(step) - value) if isinstance(step, int | float) else 0.0
            except Rejected:
                quantum = 0.0
            return self._odometer.check(value, timestamp, quantum)
        return None

    def check_stale(self, now: float) -> None:
        """Report signals that stopped arriving, on a clock comparable to frame timestamps.

        A live source calls this periodically with the wall clock, so that a bus that
        went silent altogether still ages its signals; frames do it on their own clock.
        """
        with self.lock:
            self._check_stale(now)

    def _check_stale(self, now: float) -> None:
        self._next_stale_check = now + STALE_CHECK_PERIOD
        for plan in self._plans:
            for route in plan.routes:
                if route.value is None or not route.stale_after or route.kind == "dtc":
                    continue
                last = plan.last_seen if route.present else route.last_present
                if now - last <= route.stale_after:
                    continue
                route.value = None
                plan.last_bits = None  # the next frame is news, even if identical
                self._log.warning(
                    ("stale", route.path),
                    "%s is stale: no value for %.1f s",
                    route.path,
                    now - last,
                )
                self._emit_counted(SignalUpdate(route.path, None, route.unit, now, plan.bus))
                if route.kind == "lamp":
                    self._assembler.lamp(route.path[len(LAMP_PREFIX) :], None, now, plan.bus)
        self._assembler.expire(now)

    def _emit_counted(self, update: SignalUpdate) -> None:
        self.updates += 1
        self._emit(update)

    def _reject(self, path: str, reason: str, detail: str) -> None:
        self._rejections[(reason, path)] += 1
        self._log.warning((reason, path), "rejected %s (%s): %s", path, reason, detail)

    def stats(self) -> ProcessorStats:
        """A snapshot of the counters."""
        with self.lock:
            rejections = dict(self._rejections)
            mapped = self.frames - self.unmapped - self.without_dbc
            return ProcessorStats(
                frames=self.frames,
                mapped_frames=mapped,
                unmapped_frames=self.unmapped,
                frames_without_dbc=self.without_dbc,
                short_frames=self.short_frames,
                long_frames=self.long_frames,
                error_or_remote_frames=self.error_or_remote,
                decodes=self.decodes,
                updates=self.updates,
                rejections=rejections,
            )


def _last_seen_of(plan: _Plan) -> Callable[[], float]:
    return lambda: plan.last_seen


__all__ = ["BusInput", "FrameProcessor", "ProcessorStats", "frame_key"]
