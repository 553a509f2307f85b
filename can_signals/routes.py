"""The frame processor's runtime state: per mapped CAN ID a plan, per binding a route.

A :class:`Plan` is one mapped CAN ID on one bus: its cut-down decoder and its routes. A
:class:`Route` is one binding on one bus: KUKSA's interval and on-change state, the bits
it last converted, whether its signal is present. A :class:`Combo` is one combined
value (``combine``) on one bus: the latest reading of each input and the route its
value goes out through. :mod:`can_signals.processor` runs them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Final

from cantools.database.errors import DecodeError

from can_signals.catalogue import LAMP_PREFIX
from can_signals.layout import Combination, FrameLayout, RouteKind, SignalBinding, route_mask
from can_signals.update import SignalValue

#: ``due`` runs early by a microsecond (the resolution of a candump log): float rounding
#: may make ``t - last_time`` reach the interval a hair before ``last_time + interval``.
_EARLY: Final = 1e-6


class Route:
    """Runtime state of one binding on one bus."""

    __slots__ = (
        "binding", "cached", "combo", "convert", "due", "interval", "interval_ms", "kind",
        "last_bits", "last_len", "last_present", "last_time", "mask", "name", "on_change",
        "path", "present", "scale", "selector", "signal", "stale_after", "unavailable", "unit",
        "value",
    )  # fmt: skip

    def __init__(self, binding: SignalBinding) -> None:
        entry = binding.entry
        self.binding = binding
        self.path = entry.path
        self.unit = binding.spec.unit
        self.signal = binding.signal.name
        self.convert = binding.convert
        self.kind = binding.kind
        self.selector = binding.selector
        #: Decoded values that mean "no value" (SNA, all ones): absent, not numbers.
        self.unavailable = binding.unavailable
        # An input of a combined value looks at every frame; a DTC slot cycles through
        # codes, so every change matters, whatever the file says.
        every_frame = binding.kind == "part"
        self.interval_ms = 0 if binding.kind == "dtc" or every_frame else entry.interval_ms
        self.interval = self.interval_ms / 1000
        self.on_change = (binding.kind == "dtc" or entry.on_change) and not every_frame
        self.stale_after = binding.stale_seconds
        self.scale = float(binding.signal.scale)
        self.mask = route_mask(binding)
        # KUKSA's time condition, to the letter: a look when (t - last_time) * 1000 is
        # not below interval_ms. ``due`` is a little earlier, for the frame-level shortcut.
        self.last_time = -math.inf
        self.due = -math.inf
        # The bits (and frame length) last converted; None: look at the next frame.
        self.last_bits: int | None = None
        self.last_len = -1
        self.value: SignalValue | None = None
        self.present = False
        self.last_present = -math.inf
        # For an input of a combined value: its state, its name there, its last reading.
        self.combo: Combo | None = None
        self.name = binding.part_name
        self.cached: float | int = 0

    def restart_interval(self, timestamp: float) -> None:
        """The time condition held at ``timestamp``: the next look is an interval later."""
        self.last_time = timestamp
        self.due = timestamp + self.interval - _EARLY

    def time_condition(self, timestamp: float) -> bool:
        """KUKSA's ``interval_ms`` rule: whether the route may look at ``timestamp``."""
        return not self.interval_ms or (timestamp - self.last_time) * 1000.0 >= self.interval_ms


class Combo:
    """One combined value on one bus: the latest reading of each input, and its route.

    Attributes:
        readings: The latest value of each input, by its name (``x`` for ``signal``).
        stamps: When each was received, on the frames' clock.
        route: The route the combined value goes out through (interval, on_change,
            the converter of the whole expression, staleness).
    """

    __slots__ = ("count", "readings", "route", "stamps", "within_ms")

    def __init__(self, combination: Combination, first: SignalBinding) -> None:
        kind: RouteKind = "lamp" if combination.entry.path.startswith(LAMP_PREFIX) else "value"
        output = dataclasses.replace(first, convert=combination.convert, kind=kind)
        self.route = Route(output)
        self.route.stale_after = combination.stale_seconds
        self.count = len(combination.names)
        self.within_ms = combination.within_ms
        self.readings: dict[str, float | int] = {}
        self.stamps: dict[str, float] = {}

    def complete(self, timestamp: float) -> bool:
        """Whether every input has a reading, all within ``within_ms`` of ``timestamp``."""
        stamps = self.stamps
        return (
            len(stamps) == self.count
            and (timestamp - min(stamps.values())) * 1000.0 <= self.within_ms
        )

    def oldest(self) -> float:
        """When the oldest reading was received (``-inf`` without a complete set)."""
        return min(self.stamps.values()) if len(self.stamps) == self.count else -math.inf


class Plan:
    """Runtime state of one mapped CAN ID on one bus."""

    __slots__ = (
        "bus", "decode", "kernel_alive", "last_len", "last_seen", "length", "name", "next_due",
        "rearm", "routes", "watch_bits", "watch_mask",
    )  # fmt: skip

    def __init__(self, layout: FrameLayout, bus: str) -> None:
        message = layout.message
        self.bus = bus
        self.name = message.name
        self.length = message.length
        self.routes = tuple(Route(b) for b in layout.bindings)
        # The bits of the routes that look at every change (interval 0, on change): a
        # frame where they are unchanged and no interval is due needs no work at all.
        self.watch_mask = 0
        self._watch_every_change()
        self.watch_bits: int | None = None
        # Set while the kernel filters this frame by content (CAN_BCM, can_signals.bcm):
        # unchanged frames never arrive, so "alive" is the kernel's word (no RX timeout
        # since the last frame), and ``rearm`` makes it pass the next frame to a route even
        # if identical.
        self.kernel_alive = False
        self.rearm: Callable[[Route], None] | None = None
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

    def _watch_every_change(self) -> None:
        self.watch_mask = 0
        for route in self.routes:
            if not route.interval and route.on_change:
                self.watch_mask |= route.mask

    def throttle_in_kernel(self) -> None:
        """The kernel throttles this frame to the routes' interval: none is kept here.

        With content filtering an unchanged frame never arrives, so a change held back
        by the interval here would wait for the next change; the kernel's throttle
        delivers it when the interval ends instead.
        """
        for route in self.routes:
            route.interval_ms = 0
            route.interval = 0.0
            route.due = -math.inf
        self._watch_every_change()
