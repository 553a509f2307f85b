"""The baseline the signal benchmarks compare against: what KUKSA's CAN provider does.

After the Eclipse KUKSA CAN provider's ``CanReader`` and ``Mapper`` (its ``dbcfeeder``):
frames come through python-can (its ``LogReader`` for a replay); a frame whose ID is not
whitelisted (no mapped signal in its message) is dropped, as KUKSA's CAN filters drop it;
every other frame is decoded with cantools, choices included; per decoded signal the DBC
range check, then per mapping entry the time condition (``interval_ms``), the transform
(``mapping`` by a linear search, ``math``) and the change condition (``on_change``), and
the value is published.

Left out, so that the ratio against it is a floor: KUKSA's hand-off of every value
through a ``queue.Queue`` to a second thread, its logging of decode errors with their
traceback, and its parsing of a ``math`` expression again for every value
(``py_expression_eval``); here an expression is compiled once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import can
from cantools.database.can import Database, Message
from cantools.database.errors import DecodeError
from cantools.database.namedsignalvalue import NamedSignalValue

from can_signals.expression import Expression, compile_expression
from can_signals.mapping import MappingEntry


class _Route:
    """One mapping entry the KUKSA provider's way (its ``VSSMapping``)."""

    __slots__ = (
        "expression", "interval_ms", "last_time", "last_vss_value", "on_change", "table",
        "vss_name",
    )  # fmt: skip

    def __init__(self, entry: MappingEntry, message: Message) -> None:
        self.vss_name = entry.path
        self.interval_ms = entry.interval_ms
        self.on_change = entry.on_change
        self.last_time = 0.0
        self.last_vss_value: object = None
        transform = entry.transform
        self.table = transform.table if transform else None
        self.expression: Expression | None = None
        if transform is not None and transform.math is not None:
            names = {"x", *(s.name for s in message.signals)}
            self.expression = compile_expression(transform.math, names)

    def time_condition_fulfilled(self, rx_time: float) -> bool:
        """KUKSA's ``interval_ms`` rule; the time is taken even if no value follows."""
        if (
            self.interval_ms > 0
            and self.last_time != 0.0
            and (rx_time - self.last_time) * 1000.0 < self.interval_ms
        ):
            return False
        self.last_time = rx_time
        return True

    def transform_value(self, value: object, decoded: Mapping[str, object]) -> object:
        """KUKSA's ``mapping`` (a linear search) or ``math`` transform; ``None``: no match."""
        if self.table is not None:
            # A NamedSignalValue equals its label, which the table's ``from`` holds.
            for source, target in self.table:
                if value == source:
                    return target
            return None
        if self.expression is not None:
            # KUKSA's ``math`` only sees ``x``; touchpoint's may read the frame's other
            # signals (the RAV4's UNITS), which arrive as NamedSignalValues with choices.
            variables = {k: _number(v) for k, v in decoded.items()}
            variables["x"] = _number(value)
            try:
                return self.expression(variables)
            except (ArithmeticError, ValueError):
                return None
        return _number(value)

    def change_condition_fulfilled(self, vss_value: object) -> bool:
        """KUKSA's ``on_change`` rule, on the transformed value."""
        if vss_value is None:
            return False
        fulfilled = self.last_vss_value is None or not self.on_change
        fulfilled = fulfilled or self.last_vss_value != vss_value
        if fulfilled:
            self.last_vss_value = vss_value
        return fulfilled


def _number(value: object) -> float | int | bool:
    """A decoded value as a number (a NamedSignalValue's raw number; NaN if none)."""
    if isinstance(value, NamedSignalValue):
        value = value.value
    return value if isinstance(value, int | float) else math.nan


class KuksaLikeProvider:
    """KUKSA's provider pipeline, per frame (see the module's docstring).

    Args:
        database: The DBC.
        entries: The mapping's entries (``message`` pins a message, as in touchpoint).
    """

    def __init__(self, database: Database, entries: Sequence[MappingEntry]) -> None:
        self._routes: dict[tuple[str, str], list[_Route]] = {}
        self._whitelist: dict[int, Message] = {}
        for entry in entries:
            for message in database.messages:
                if entry.message not in (None, message.name):
                    continue
                if any(s.name == entry.signal for s in message.signals):
                    key = (message.name, entry.signal)
                    self._routes.setdefault(key, []).append(_Route(entry, message))
                    self._whitelist[message.frame_id] = message
        self.published: list[tuple[str, object, float]] = []

    @property
    def whitelist(self) -> Mapping[int, Message]:
        """The frame IDs KUKSA's CAN filters let through, with their messages."""
        return self._whitelist

    def __call__(self, msg: can.Message) -> None:
        """Process one frame."""
        decoded = self.decode(msg)
        if decoded is not None:
            self.publish(decoded[0], decoded[1], msg.timestamp)

    def decode(self, msg: can.Message) -> tuple[Message, Mapping[str, object]] | None:
        """KUKSA's CAN filter and cantools' decoding with choices; ``None``: dropped."""
        message = self._whitelist.get(msg.arbitration_id)
        if message is None:
            return None  # KUKSA's CAN filter (kernel or python-can) drops it
        try:
            decoded = message.decode(bytes(msg.data), decode_choices=True, allow_truncated=True)
        except DecodeError:
            return None  # KUKSA logs these with a traceback; not charged here
        assert isinstance(decoded, dict)
        return message, decoded

    def publish(self, message: Message, decoded: Mapping[str, object], rx_time: float) -> None:
        """KUKSA's per-signal steps: range check, interval, transform, on_change."""
        for name, raw in decoded.items():
            signal = message.get_signal_by_name(name)
            if isinstance(raw, int | float):
                if signal.minimum is not None and raw < signal.minimum:
                    continue
                if signal.maximum is not None and raw > signal.maximum:
                    continue
            for route in self._routes.get((message.name, name), ()):
                if not route.time_condition_fulfilled(rx_time):
                    continue
                value = route.transform_value(raw, decoded)
                if route.change_condition_fulfilled(value):
                    self.published.append((route.vss_name, value, rx_time))
