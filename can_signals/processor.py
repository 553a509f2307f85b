"""The frame processor: CAN frames in, plausible VSS updates out. This is the hot path.

Per frame the work is, in order, and stops as early as it can:

1. look the frame key up in the bus's table (unmapped frames stop here, without the
   processor's lock);
2. when no route's interval has come due and the bits of the every-change routes are
   what they were, stop;
3. per route that is due: compare the route's own bits with those it last converted;
   only if they differ, decode (once per frame, with the cut-down cantools message:
   only the mapped signals, no choices) and run KUKSA's ``on_change`` rule, the
   converter, the plausibility guards and the hand-off.

Comparing with the bits a route last *converted* (not with the previous frame) is what
keeps KUKSA's semantics exact: a value that changed while its route waited for its
interval is still seen when the interval comes due, even if the frames since were
identical.

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

from can_signals.binding import Binding, FrameLayout, SignalBinding, frame_key, route_mask
from can_signals.catalogue import LAMP_PREFIX, ODOMETER, SPEED
from can_signals.convert import Rejected
from can_signals.faults import FaultAssembler
from can_signals.plausibility import OdometerGuard, SpeedGuard
from can_signals.update import SignalUpdate, SignalValue
from touchpoint.ratelimit import RateLimitedLog

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
        "binding", "convert", "due", "interval", "kind", "last_bits", "last_len",
        "last_present", "mask", "on_change", "path", "present", "scale", "signal",
        "stale_after", "unit", "value",
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
        self.mask = route_mask(binding)
        # When the interval allows the next look (KUKSA's time condition).
        self.due = -math.inf
        # The bits (and frame length) last converted; None: look at the next frame.
        self.last_bits: int | None = None
        self.last_len = -1
        self.value: SignalValue | None = None
        self.present = False
        self.last_present = -math.inf


class _Plan:
    """Runtime state of one mapped CAN ID on one bus."""

    __slots__ = (
        "bus", "decode", "last_len", "last_seen", "length", "name", "next_due", "routes",
        "watch_bits", "watch_mask",
    )  # fmt: skip

    def __init__(self, layout: FrameLayout, bus: str) -> None:
        message = layout.message
        self.bus = bus
        self.name = message.name
        self.length = message.length
        self.routes = tuple(_Route(b) for b in layout.bindings)
        # The bits of the routes that look at every change (interval 0, on change): a
        # frame where they are unchanged and no interval is due needs no work at all.
        self.watch_mask = 0
        for route in self.routes:
            if not route.interval and route.on_change:
                self.watch_mask |= route.mask
        self.watch_bits: int | None = None
        self.last_len = -1
        self.last_seen = -math.inf
        self.next_due = -math.inf
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
    """Receives the frames of one named bus; a python-can listener (callable).

    One thread feeds one bus (its Notifier's reader, or the replay), so the counters
    here need no lock, and neither does the table look-up that ends an unmapped frame.
    """

    __slots__ = (
        "_processor", "_table", "error_or_remote", "frames", "name", "unmapped", "without_dbc",
    )  # fmt: skip

    def __init__(self, processor: FrameProcessor, name: str, table: dict[int, _Plan]) -> None:
        self._processor = processor
        self._table = table
        self.name = name
        self.frames = 0
        self.unmapped = 0
        self.without_dbc = 0
        self.error_or_remote = 0

    def __call__(self, msg: can.Message) -> None:
        """Process one frame (the python-can ``Listener`` protocol)."""
        self.frames += 1
        key = msg.arbitration_id | 0x8000_0000 if msg.is_extended_id else msg.arbitration_id
        plan = self._table.get(key)
        processor = self._processor
        if plan is None:
            if self._table:
                self.unmapped += 1
            else:
                self.without_dbc += 1
            # Other traffic still moves the clock: mapped IDs that stopped go stale.
            timestamp = msg.timestamp
            processor.latest_timestamp = timestamp
            if timestamp >= processor.next_stale_check:
                with processor.lock:
                    processor.advance_clock(timestamp)
            return
        if msg.is_remote_frame or msg.is_error_frame:
            self.error_or_remote += 1
            return
        timestamp, data = msg.timestamp, msg.data
        # The common case, decided without the lock: nothing due, nothing watched changed.
        # Only this bus's thread writes these fields; another thread may reset them (a
        # stale signal), and this frame then simply takes the full path below or the next.
        if (
            timestamp < plan.next_due
            and timestamp < processor.next_stale_check
            and len(data) == plan.last_len == plan.length
            and int.from_bytes(data, "little") & plan.watch_mask == plan.watch_bits
        ):
            plan.last_seen = processor.latest_timestamp = timestamp
            return
        with processor.lock:
            processor.frame(plan, timestamp, data)

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
        self.next_stale_check = -math.inf
        self._rejections: Counter[tuple[str, str]] = Counter()
        self._log = RateLimitedLog(_log)
        self.short_frames = 0
        self.long_frames = 0
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

    @property
    def frames(self) -> int:
        """Frames received on every bus."""
        return sum(i.frames for i in list(self._inputs.values()))

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
        plan.last_seen = self.latest_timestamp = timestamp
        if timestamp >= self.next_stale_check:
            self._check_stale(timestamp)
        bits = int.from_bytes(data, "little")
        if (
            timestamp < plan.next_due
            and length == plan.last_len
            and bits & plan.watch_mask == plan.watch_bits
        ):
            return
        plan.last_len = length
        plan.watch_bits = bits & plan.watch_mask
        self._run_routes(plan, timestamp, previous_seen, data, bits)

    def advance_clock(self, timestamp: float) -> None:
        """Note a frame's timestamp and look for stale signals when due (lock held)."""
        self.latest_timestamp = timestamp
        if timestamp >= self.next_stale_check:
            self._check_stale(timestamp)

    def _run_routes(
        self,
        plan: _Plan,
        timestamp: float,
        previous_seen: float,
        data: bytes | bytearray,
        bits: int,
    ) -> None:
        values: Mapping[str, float | int] | None = None
        length = plan.last_len
        bus = plan.bus
        next_due = math.inf
        for route in plan.routes:
            if route.interval:
                if timestamp < route.due:
                    next_due = min(next_due, route.due)
                    continue
                route.due = timestamp + route.interval
                next_due = min(next_due, route.due)
            elif not route.on_change:
                next_due = -math.inf
            route_bits = bits & route.mask
            if route_bits == route.last_bits and length == route.last_len:
                # Nothing this route reads changed since it last converted.
                if not route.on_change and route.value is not None:
                    self._emit_counted(
                        SignalUpdate(route.path, route.value, route.unit, timestamp, bus)
                    )
                continue
            if values is None:
                try:
                    values = plan.decode(data)
                except (DecodeError, ValueError, KeyError, IndexError) as err:
                    plan.watch_bits = None
                    self._reject(plan.name, DECODE_FAILED, f"{plan.name}: {err}")
                    return
                self.decodes += 1
            route.last_bits, route.last_len = route_bits, length
            raw = values.get(route.signal)
            if raw is None:
                if route.present:
                    route.present = False
                    route.last_present = previous_seen
                if length < plan.length:  # else another multiplexer branch
                    self._rejections[(TRUNCATED, route.path)] += 1
                continue
            route.present = True
            route.last_present = timestamp
            self._convert(plan, route, raw, values, timestamp)
        plan.next_due = next_due

    def _convert(
        self,
        plan: _Plan,
        route: _Route,
        raw: float | int,
        values: Mapping[str, float | int],
        timestamp: float,
    ) -> None:
        """Convert a route's raw value, check it, and publish it if it is news."""
        try:
            value = route.convert(raw, values)
        except Rejected as rejected:
            self._look_again(plan, route)
            self._reject(route.path, rejected.reason, str(rejected))
            return
        if route.on_change and value == route.value:
            return
        bus = plan.bus
        if route.kind == "dtc":
            route.value = value
            self._assembler.slot(id(route), value, timestamp, bus)  # type: ignore[arg-type]
            return
        reason = self._implausible(route, value, raw, values, timestamp)
        if reason is not None:
            self._look_again(plan, route)
            self._reject(route.path, reason, f"implausible value {value!r}")
            return
        route.value = value
        self._emit_counted(SignalUpdate(route.path, value, route.unit, timestamp, bus))
        if route.kind == "lamp":
            self._assembler.lamp(route.path[len(LAMP_PREFIX) :], bool(value), timestamp, bus)

    @staticmethod
    def _look_again(plan: _Plan, route: _Route) -> None:
        """Make the next frame of the plan reach the route, even if identical."""
        route.last_bits = None
        plan.watch_bits = None
        plan.next_due = -math.inf

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
        self.next_stale_check = now + STALE_CHECK_PERIOD
        for plan in self._plans:
            for route in plan.routes:
                if route.value is None or not route.stale_after or route.kind == "dtc":
                    continue
                last = plan.last_seen if route.present else route.last_present
                if now - last <= route.stale_after:
                    continue
                route.value = None
                self._look_again(plan, route)  # the next frame is news, even if identical
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
            inputs = list(self._inputs.values())
            frames = sum(i.frames for i in inputs)
            unmapped = sum(i.unmapped for i in inputs)
            without_dbc = sum(i.without_dbc for i in inputs)
            return ProcessorStats(
                frames=frames,
                mapped_frames=frames - unmapped - without_dbc,
                unmapped_frames=unmapped,
                frames_without_dbc=without_dbc,
                short_frames=self.short_frames,
                long_frames=self.long_frames,
                error_or_remote_frames=sum(i.error_or_remote for i in inputs),
                decodes=self.decodes,
                updates=self.updates,
                rejections=rejections,
            )


def _last_seen_of(plan: _Plan) -> Callable[[], float]:
    return lambda: plan.last_seen


__all__ = ["BusInput", "FrameProcessor", "ProcessorStats", "frame_key"]
