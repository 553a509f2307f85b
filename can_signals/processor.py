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
from dataclasses import dataclass, field
from typing import Final

from cantools.database.errors import DecodeError

from can_signals.binding import Binding, frame_key
from can_signals.bus_input import BusInput
from can_signals.catalogue import LAMP_PREFIX, ODOMETER, SPEED
from can_signals.convert import (
    NOT_A_NUMBER,
    OUT_OF_DBC_RANGE,
    OUT_OF_RANGE,
    Rejected,
)
from can_signals.faults import FaultAssembler
from can_signals.plausibility import (
    ODOMETER_UNCONFIRMED,
    RECOVER_S,
    OdometerGuard,
    SpeedGuard,
)
from can_signals.routes import Combo, Plan, Route
from can_signals.update import SignalUpdate, SignalValue
from touchpoint.ratelimit import RateLimitedLog

_log = logging.getLogger(__name__)

Emit = Callable[[SignalUpdate], None]
#: How often (on the frames' clock) stale signals and expired DTCs are looked for.
STALE_CHECK_PERIOD: Final = 0.25
TRUNCATED: Final = "truncated"
DECODE_FAILED: Final = "decode_failed"
#: Rejections that leave the interval unused (a missing table entry or a failing
#: expression uses it up, as in KUKSA, where both happen after its time condition).
_RANGE_REASONS: Final = frozenset({OUT_OF_DBC_RANGE, OUT_OF_RANGE, NOT_A_NUMBER})
_NO_READINGS: Final[Mapping[str, float | int]] = {}


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
    #: Per VSS path, frames whose value said "no value" (SNA, all ones): not rejections.
    not_available: Mapping[str, int] = field(default_factory=dict)
    #: Odometer readings held until others confirmed them (not rejections).
    odometer_unconfirmed: int = 0
    #: Times readings agreeing with each other replaced a wrong odometer.
    odometer_corrections: int = 0

    @property
    def rejected(self) -> int:
        """All rejections together."""
        return sum(self.rejections.values())


class FrameProcessor:
    """Decodes frames of any number of named buses into :class:`SignalUpdate` s."""

    def __init__(self, binding: Binding, emit: Emit) -> None:
        self.lock = threading.Lock()
        self._binding = binding
        self._emit = emit
        self._inputs: dict[str, BusInput] = {}
        self._plans: list[Plan] = []
        self._combos: list[tuple[Combo, str]] = []
        self._assembler = FaultAssembler(self._emit_counted)
        self._odometer = OdometerGuard()
        self._speed = SpeedGuard()
        self.next_stale_check = -math.inf
        self._rejections: Counter[tuple[str, str]] = Counter()
        self._not_available_counts: Counter[str] = Counter()
        #: Odometer readings held until others confirmed them (none kept to compare with).
        self.unconfirmed = 0
        #: Times readings replaced a wrong odometer (see OdometerGuard).
        self.odometer_corrections = 0
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
            table: dict[int, Plan] = {}
            combos: dict[int, Combo] = {}
            for key, layout in self._binding.layouts_for_bus(name).items():
                plan = Plan(layout, name)
                table[key] = plan
                self._plans.append(plan)
                for route in plan.routes:
                    if route.kind == "dtc":
                        self._assembler.add_slot(
                            id(route), name, route.stale_after, _last_seen_of(plan)
                        )
                    combination = route.binding.combination
                    if combination is not None:
                        combo = combos.get(id(combination))
                        if combo is None:
                            combo = combos[id(combination)] = Combo(combination, route.binding)
                            self._combos.append((combo, name))
                        route.combo = combo
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

    def frame(self, plan: Plan, timestamp: float, data: bytes | bytearray) -> None:
        """Process one mapped frame. The caller holds :attr:`lock`."""
        length = len(data)
        if length != plan.length:
            self._odd_length(plan, length)
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
        self._run_routes(plan, timestamp, previous_seen, data, bits, routes=plan.routes)

    def frame_for(
        self, plan: Plan, routes: tuple[Route, ...], timestamp: float, data: bytes | bytearray
    ) -> None:
        """Process a frame the kernel passed for some of ``plan``'s routes (lock held).

        The broadcast manager (:mod:`can_signals.bcm`) passes a frame per interval of its
        routes, when their bits changed: only the routes of that interval look at it, so
        a change another interval's throttle holds back stays held. No frame-level
        shortcut: the kernel passed it because it has news.
        """
        length = len(data)
        if length != plan.length:
            self._odd_length(plan, length)
        previous_seen = plan.last_seen
        # Two sockets' messages may interleave a little out of order.
        plan.last_seen = max(previous_seen, timestamp)
        self.advance_clock(timestamp)
        bits = int.from_bytes(data, "little")
        self._run_routes(plan, timestamp, previous_seen, data, bits, routes=routes)

    def _odd_length(self, plan: Plan, length: int) -> None:
        """Count a frame shorter or longer than its DBC says (decoded all the same)."""
        if length < plan.length:
            self.short_frames += 1
        else:
            self.long_frames += 1

    def advance_clock(self, timestamp: float) -> None:
        """Note a frame's timestamp and look for stale signals when due (lock held)."""
        self.latest_timestamp = timestamp
        if timestamp >= self.next_stale_check:
            self._check_stale(timestamp)

    def _run_routes(
        self,
        plan: Plan,
        timestamp: float,
        previous_seen: float,
        data: bytes | bytearray,
        bits: int,
        *,
        routes: tuple[Route, ...],
    ) -> None:
        values: Mapping[str, float | int] | None = None
        length = len(data)
        next_due = math.inf
        for route in routes:
            interval = route.interval_ms
            if interval:
                if (timestamp - route.last_time) * 1000.0 < interval:
                    next_due = min(next_due, route.due)
                    continue
            elif not route.on_change:
                next_due = -math.inf
            route_bits = bits & route.mask
            if route_bits != route.last_bits or length != route.last_len:
                if values is None:
                    values = self._decode(plan, data)
                    if values is None:
                        return
                route.last_bits, route.last_len = route_bits, length
                raw = values.get(route.signal)
                selector = route.selector
                if (
                    raw is None
                    or (selector is not None and values.get(selector[0]) != selector[1])
                    or raw in route.unavailable
                ):
                    self._without_value(plan, route, raw, values, previous_seen)
                    taken = False  # an absent value leaves the interval unused
                else:
                    route.present = True
                    route.last_present = timestamp
                    # A value refused for its range or plausibility does not use up the
                    # interval (KUKSA drops out-of-range values before its time condition).
                    taken = (
                        self._convert(plan, route, raw, values, timestamp)
                        if route.combo is None
                        else self._feed(plan, route, raw, timestamp)
                    )
            else:
                # Nothing this route reads changed since it last converted.
                taken = self._again(plan, route, timestamp)
            if interval:
                if taken:
                    route.restart_interval(timestamp)
                next_due = min(next_due, route.due)
        plan.next_due = next_due

    def _decode(self, plan: Plan, data: bytes | bytearray) -> Mapping[str, float | int] | None:
        try:
            values = plan.decode(data)
        except (DecodeError, ValueError, KeyError, IndexError) as err:
            plan.watch_bits = None
            self._reject(plan.name, DECODE_FAILED, f"{plan.name}: {err}")
            return None
        self.decodes += 1
        return values

    def _absent(
        self, plan: Plan, route: Route, raw: float | int | None, previous_seen: float
    ) -> None:
        """A frame without the route's value.

        Its bits are missing from a short frame, or it is another multiplexer branch, or
        the instance of another multiplexer value.
        """
        if route.present:
            route.present = False
            route.last_present = previous_seen
        if raw is None and route.last_len < plan.length:
            self._rejections[(TRUNCATED, route.path)] += 1

    def _without_value(
        self,
        plan: Plan,
        route: Route,
        raw: float | int | None,
        values: Mapping[str, float | int],
        previous_seen: float,
    ) -> None:
        """A frame that carries no value for the route: absent, or "no value" said."""
        selector = route.selector
        if raw is None or (selector is not None and values.get(selector[0]) != selector[1]):
            self._absent(plan, route, raw, previous_seen)
        else:
            self._not_available(plan, route, raw, previous_seen)

    def _not_available(
        self, plan: Plan, route: Route, raw: float | int, previous_seen: float
    ) -> None:
        """A frame whose value says "no value" (SNA): as if the signal were not in it.

        The last value stays until the signal goes stale, as for a frame without it; each
        such frame is looked at again (an identical frame must not repeat the old value).
        """
        # An input of a combined value keeps its last reading, which ages out of the
        # combination's window: no value is computed with the marker, nor at once stale.
        self._absent(plan, route, raw, previous_seen)
        self._look_again(plan, route)
        self._not_available_counts[route.path] += 1
        self._log.warning(
            ("not_available", route.path),
            "%s: the bus says it has no value (%s %r)",
            route.path,
            route.signal,
            raw,
        )

    def _again(self, plan: Plan, route: Route, timestamp: float) -> bool:
        """A frame whose bits for the route are those it last converted."""
        if route.combo is not None:
            if route.present:
                self._feed(plan, route, route.cached, timestamp)
        elif not route.on_change and route.value is not None:
            self._emit_counted(
                SignalUpdate(route.path, route.value, route.unit, timestamp, plan.bus)
            )
        return True

    def _feed(self, plan: Plan, route: Route, raw: float | int, timestamp: float) -> bool:
        """Hand an input's reading to its combined value, and compute that when it can."""
        combo = route.combo
        assert combo is not None
        try:
            route.convert(raw, _NO_READINGS)  # the input's own DBC range
        except Rejected as rejected:
            self._look_again(plan, route)
            combo.stamps.pop(route.name, None)
            self._reject(route.path, rejected.reason, f"{route.signal}: {rejected}")
            return False
        route.cached = combo.readings[route.name] = raw
        combo.stamps[route.name] = timestamp
        output = combo.route
        if combo.complete(timestamp) and output.time_condition(timestamp):
            taken = self._convert(plan, output, combo.readings["x"], combo.readings, timestamp)
            if taken and output.interval_ms:
                output.restart_interval(timestamp)
        return True

    def _convert(
        self,
        plan: Plan,
        route: Route,
        raw: float | int,
        values: Mapping[str, float | int],
        timestamp: float,
    ) -> bool:
        """Convert a route's raw value, check it, and publish it if it is news.

        Returns:
            Whether the value used up the route's interval: ``False`` when it was refused
            for its range or plausibility, as if the frame had not carried it.
        """
        try:
            value = route.convert(raw, values)
        except Rejected as rejected:
            self._look_again(plan, route)
            self._reject(route.path, rejected.reason, str(rejected))
            return rejected.reason not in _RANGE_REASONS
        if route.on_change and value == route.value:
            return True
        bus = plan.bus
        if route.kind == "dtc":
            route.value = value
            self._assembler.slot(id(route), value, timestamp, bus)  # type: ignore[arg-type]
            return True
        reason = self._implausible(route, value, raw, values, timestamp)
        if reason is not None:
            self._look_again(plan, route)
            if reason == ODOMETER_UNCONFIRMED:
                self.unconfirmed += 1  # waits for the next readings, refused by none
            else:
                self._reject(route.path, reason, f"implausible value {value!r}")
            return False
        route.value = value
        self._emit_counted(SignalUpdate(route.path, value, route.unit, timestamp, bus))
        if route.kind == "lamp":
            self._assembler.lamp(route.path[len(LAMP_PREFIX) :], bool(value), timestamp, bus)
        return True

    @staticmethod
    def _look_again(plan: Plan, route: Route) -> None:
        """Make the next frame of the plan reach the route, even if identical."""
        route.last_bits = None
        plan.watch_bits = None
        plan.next_due = -math.inf
        if plan.rearm is not None:
            plan.rearm(route)

    def _implausible(
        self,
        route: Route,
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
            reason = self._odometer.check(value, timestamp, quantum)
            correction = self._odometer.take_correction()
            if correction is not None:
                self.odometer_corrections += 1
                _log.warning(
                    "odometer: readings of %s km agree with each other for %.0f s and more, "
                    "against %s km before: taking them (that value was wrong, or the "
                    "cluster was replaced)",
                    f"{correction[1] / 1000:,.1f}",
                    RECOVER_S,
                    f"{correction[0] / 1000:,.1f}",
                )
            return reason
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
            if plan.kernel_alive and plan.last_seen < now:
                plan.last_seen = now  # its unchanged frames still arrive, in the kernel
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
        for combo, bus in self._combos:
            self._stale_combo(combo, bus, now)
        self._assembler.expire(now)

    def _stale_combo(self, combo: Combo, bus: str, now: float) -> None:
        route = combo.route
        if route.value is None or not route.stale_after:
            return
        oldest = combo.oldest()
        if now - oldest <= route.stale_after:
            return
        route.value = None
        self._log.warning(
            ("stale", route.path), "%s is stale: no complete set of readings", route.path
        )
        self._emit_counted(SignalUpdate(route.path, None, route.unit, now, bus))
        if route.kind == "lamp":
            self._assembler.lamp(route.path[len(LAMP_PREFIX) :], None, now, bus)

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
                not_available=dict(self._not_available_counts),
                odometer_unconfirmed=self.unconfirmed,
                odometer_corrections=self.odometer_corrections,
            )


def _last_seen_of(plan: Plan) -> Callable[[], float]:
    return lambda: plan.last_seen


__all__ = ["BusInput", "FrameProcessor", "ProcessorStats", "frame_key"]
