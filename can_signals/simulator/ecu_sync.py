"""Keeping an ECU emulator's stored DTCs in step with the model, on a live bus.

The simulated car broadcasts its active DTCs; a diagnostic tool (or the agent's
on-demand read) asks the engine ECU with OBD-II service 03 instead. With
:class:`EcuDtcSync` as a runner observer, an
:class:`~can_signals.simulator.ecu_emulator.EcuEmulator` answers those requests with
the codes the model has active at that moment.
"""

from __future__ import annotations

from can_signals.simulator.ecu_emulator import EcuEmulator
from can_signals.simulator.model import VehicleState


class EcuDtcSync:
    """A runner observer that copies the model's active DTCs into an ECU emulator.

    Args:
        emulator: The emulator to update (started and stopped by its owner).
    """

    def __init__(self, emulator: EcuEmulator) -> None:
        self._emulator = emulator
        self._last: tuple[str, ...] | None = None

    def __call__(self, state: VehicleState) -> None:
        """Update the emulator when the active codes changed (not on every tick)."""
        if state.dtcs != self._last:
            self._emulator.set_dtcs(state.dtcs)
            self._last = state.dtcs
