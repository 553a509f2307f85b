"""Unit normalisation: converts a DBC's or a mapping's unit to the catalogue's unit.

Only linear (factor and offset) conversions between units of the same dimension, which
is all a signal catalogue needs; a unit we do not know is reported, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from can_signals.errors import CanSignalsError


class UnitError(CanSignalsError):
    """Two units that cannot be converted into each other."""


@dataclass(frozen=True, slots=True)
class _Unit:
    dimension: str
    factor: float  # to the dimension's base unit
    offset: float = 0.0


_UNITS: Final[dict[str, _Unit]] = {
    "m": _Unit("length", 1.0),
    "mm": _Unit("length", 0.001),
    "cm": _Unit("length", 0.01),
    "km": _Unit("length", 1000.0),
    "mi": _Unit("length", 1609.344),
    "inch": _Unit("length", 0.0254),
    "km/h": _Unit("speed", 1 / 3.6),
    "m/s": _Unit("speed", 1.0),
    "mph": _Unit("speed", 1609.344 / 3600),
    "m/s^2": _Unit("acceleration", 1.0),
    "Pa": _Unit("pressure", 1.0),
    "hPa": _Unit("pressure", 100.0),
    "kPa": _Unit("pressure", 1000.0),
    "mbar": _Unit("pressure", 100.0),
    "bar": _Unit("pressure", 100_000.0),
    "psi": _Unit("pressure", 6894.757293168),
    "percent": _Unit("ratio", 1.0),
    "ms": _Unit("time", 0.001),
    "s": _Unit("time", 1.0),
    "min": _Unit("time", 60.0),
    "h": _Unit("time", 3600.0),
    "day": _Unit("time", 86400.0),
    "rpm": _Unit("rotation", 1.0),
    "celsius": _Unit("temperature", 1.0),
    "fahrenheit": _Unit("temperature", 5 / 9, -32 * 5 / 9),
    "degrees": _Unit("angle", 1.0),
    "rad": _Unit("angle", 180 / math.pi),
    "degrees/s": _Unit("angular speed", 1.0),
    "rad/s": _Unit("angular speed", 180 / math.pi),
    "V": _Unit("voltage", 1.0),
    "mV": _Unit("voltage", 0.001),
    "A": _Unit("current", 1.0),
    "mA": _Unit("current", 0.001),
    "W": _Unit("power", 1.0),
    "kW": _Unit("power", 1000.0),
    "Wh": _Unit("energy", 1.0),
    "kWh": _Unit("energy", 1000.0),
    "Ah": _Unit("charge", 1.0),
    "mAh": _Unit("charge", 0.001),
    "N": _Unit("force", 1.0),
    "Nm": _Unit("torque", 1.0),
    "kg": _Unit("mass", 1.0),
    "l": _Unit("volume", 1.0),
    "ml": _Unit("volume", 0.001),
    "cm^3": _Unit("volume", 0.001),
    "g/s": _Unit("mass flow", 1.0),
    "km/l": _Unit("fuel economy", 1.0),
    "g/km": _Unit("emission", 1.0),
    "cpm": _Unit("frequency per minute", 1.0),
    "bpm": _Unit("heart rate", 1.0),
}

# Spellings found in real DBC files and VSS versions, folded to the names above.
_ALIASES: Final[dict[str, str]] = {
    "meter": "m", "meters": "m", "metre": "m", "metres": "m",
    "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km",
    "mile": "mi", "miles": "mi", "in": "inch", "inches": "inch",
    "kph": "km/h", "kmh": "km/h", "km/hr": "km/h", "kmph": "km/h", "km^h": "km/h",
    "mi/h": "mph", "m/s2": "m/s^2", "m/s/s": "m/s^2",
    "%": "percent", "pct": "percent",
    "sec": "s", "second": "s", "seconds": "s",
    "minute": "min", "minutes": "min",
    "hour": "h", "hours": "h", "hr": "h",
    "days": "day", "d": "day",
    "1/min": "rpm", "u/min": "rpm",
    "degc": "celsius", "°c": "celsius", "deg c": "celsius", "c": "celsius",
    "degf": "fahrenheit", "°f": "fahrenheit",
    "deg": "degrees", "degree": "degrees", "°": "degrees", "º": "degrees",
    "deg/s": "degrees/s", "°/s": "degrees/s", "º/s": "degrees/s",
    "kpa": "kPa", "hpa": "hPa", "pa": "Pa", "v": "V", "volt": "V", "volts": "V",
    "mv": "mV", "a": "A", "amp": "A", "amps": "A", "ma": "mA",
    "w": "W", "kw": "kW", "wh": "Wh", "kwh": "kWh", "ah": "Ah", "mah": "mAh",
    "nm": "Nm", "n": "N",
    "liter": "l", "litre": "l", "liters": "l", "litres": "l",
}  # fmt: skip


def canonical_unit(unit: str | None) -> str | None:
    """Return touchpoint's name for a unit spelling, or ``None`` if empty or unknown."""
    if unit is None:
        return None
    text = unit.strip()
    if not text:
        return None
    if text in _UNITS:
        return text
    folded = text.lower()
    name = _ALIASES.get(folded, folded)
    return name if name in _UNITS else None


def converter(source: str, target: str) -> Callable[[float], float] | None:
    """Return a function converting values from ``source`` to ``target``.

    Returns ``None`` when no conversion is needed: the same unit, or the same spelling of
    a unit touchpoint does not know (``Nm`` to ``Nm`` needs no table).

    Raises:
        UnitError: If either unit is unknown or the two measure different things.
    """
    if source.strip().lower() == target.strip().lower():
        return None
    src_name, dst_name = canonical_unit(source), canonical_unit(target)
    if src_name is None or dst_name is None:
        unknown = source if src_name is None else target
        raise UnitError(f"unknown unit {unknown!r}")
    if src_name == dst_name:
        return None
    src, dst = _UNITS[src_name], _UNITS[dst_name]
    if src.dimension != dst.dimension:
        raise UnitError(
            f"cannot convert {source!r} ({src.dimension}) to {target!r} ({dst.dimension})"
        )
    scale = src.factor / dst.factor
    shift = (src.offset - dst.offset) / dst.factor

    def convert(value: float) -> float:
        return value * scale + shift

    return convert
