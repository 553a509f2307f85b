"""What the signal layer hands to the rest of touchpoint: typed, frozen signal updates.

Pure data: importing this module pulls in nothing from python-can or cantools.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A VSS value: booleans, numbers, strings, and string arrays (``DTCList``) as tuples.
SignalValue = bool | int | float | str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SignalUpdate:
    """A new value of one VSS signal.

    Attributes:
        path: The VSS path, e.g. ``Vehicle.Speed``.
        value: The value in the catalogue's datatype and unit, or ``None`` when the
            signal has gone stale (stopped arriving) and its last value no longer holds.
        unit: The catalogue unit of ``value`` (``None`` for unitless signals).
        timestamp: When the CAN frame that carried it was received, on the bus's clock
            (seconds; a replay keeps the recording's timestamps).
        bus: The name of the bus it came from (``diag`` for on-demand diagnostic reads).
    """

    path: str
    value: SignalValue | None
    unit: str | None
    timestamp: float
    bus: str

    @property
    def stale(self) -> bool:
        """Whether this update says the signal stopped arriving."""
        return self.value is None

    def to_json_dict(self) -> dict[str, object]:
        """A JSON-ready dict (string arrays become lists)."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {
            "path": self.path,
            "value": value,
            "unit": self.unit,
            "timestamp": self.timestamp,
            "bus": self.bus,
        }
