"""Errors of the vehicle simulator."""

from __future__ import annotations

from can_signals.errors import CanSignalsError


class SimulatorError(CanSignalsError):
    """A scenario, a bus or a recording the simulator cannot work with."""
