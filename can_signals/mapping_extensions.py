"""touchpoint's two mapping keys for what KUKSA's ``dbc2vss`` cannot say (KUKSA ignores both).

``multiplexer``: one multiplexed signal, one VSS path per multiplexer value. A message
whose multiplexer says which axle or wheel the rest of the frame is about (KUKSA's
issue 47: ``AxleLocation M`` and ``AxleWeight``) maps the same signal to a path per
instance::

    Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure:
      dbc2vss:
        signal: TirePressure
        multiplexer: 0                 # only frames whose multiplexer is 0 (or a label)

``multiplexer: {signal: NAME, value: V}`` names the selector when the DBC declares none.

``combine``: several signals of different frames into one VSS value, atomically: the
value is computed only from readings received within ``within_ms`` of each other, so
it never mixes one cycle's degrees with another cycle's minutes (KUKSA's issue 16)::

    Vehicle.CurrentLocation.Latitude:
      dbc2vss:
        signal: LAT_MIN                # x, as KUKSA reads it
        combine:
          signals: [LAT_DEG]           # or MESSAGE.SIGNAL where the name repeats
          within_ms: 50
        transform:
          math: "LAT_DEG + x / 60"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

Scalar = bool | int | float | str
_NAME: Final = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$")
#: The most signals one combined value may read (besides ``signal``).
MAX_PARTS: Final = 8


@dataclass(frozen=True, slots=True)
class Multiplexer:
    """Which multiplexer value selects a mapping entry's instance of its signal.

    Attributes:
        value: The multiplexer's value: a number, or a label of its value table.
        signal: The selecting signal, when the DBC does not declare it (``None``: the
            signal's own multiplexer, or the message's only one).
    """

    value: int | float | str
    signal: str | None = None


@dataclass(frozen=True, slots=True)
class Combine:
    """Other signals a mapping entry's value is computed from, and how fresh they must be.

    Attributes:
        signals: Signal names (``SIGNAL`` or ``MESSAGE.SIGNAL``), besides ``signal``.
        within_ms: The largest time between the oldest and the newest reading used.
    """

    signals: tuple[str, ...]
    within_ms: int

    def part_name(self, index: int) -> str:
        """The name the ``math`` expression uses for a combined signal: its signal name."""
        return self.signals[index].rpartition(".")[2]


def read_multiplexer(value: object) -> Multiplexer | str:
    """Parse a ``multiplexer`` value; a message saying what is wrong if it is malformed."""
    if isinstance(value, dict):
        if set(value) != {"signal", "value"} or not isinstance(value["signal"], str):
            return "'multiplexer' must be a value, or {signal: NAME, value: VALUE}"
        selector, value = value["signal"], value["value"]
    else:
        selector = None
    if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
        return "'multiplexer' must be a number or a value-table label of the multiplexer"
    return Multiplexer(value, selector)


def read_combine(value: object) -> Combine | str:
    """Parse a ``combine`` value; a message saying what is wrong if it is malformed."""
    shape = "'combine' must be {signals: [NAME, ...], within_ms: MILLISECONDS}"
    if not isinstance(value, dict) or set(value) != {"signals", "within_ms"}:
        return shape
    signals, within = value["signals"], value["within_ms"]
    if (
        not isinstance(signals, list)
        or not signals
        or not all(isinstance(s, str) and _NAME.match(s) for s in signals)
    ):
        return "'combine' signals must be a list of signal names (NAME or MESSAGE.NAME)"
    if len(signals) > MAX_PARTS:
        return f"'combine' reads at most {MAX_PARTS} signals"
    names = [s.rpartition(".")[2] for s in signals]
    if len(set(names)) != len(names):
        return "'combine' names a signal twice"
    if isinstance(within, bool) or not isinstance(within, int) or within <= 0:
        return "'combine' within_ms must be a whole number of milliseconds > 0"
    return Combine(tuple(signals), within)
