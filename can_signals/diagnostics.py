"""On-demand reads of the ECUs' stored DTCs, when the car gives a reason to look.

Broadcast frames carry the faults a car chooses to announce; the full list of stored
codes has to be asked for. The daemon asks when a drive cycle starts and when the
check-engine lamp lights (at most once a minute by default), over ISO-TP on the live
bus the pipeline already reads, and folds the answer into ``DTCList``. An ECU that does
not answer keeps its previous answer: no answer is not "no faults".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Final

from can_signals.diag_protocol import DiagnosticError, DtcReadResult, EcuAddress
from can_signals.obd import read_stored_dtcs
from can_signals.pipeline import SignalPipeline
from can_signals.settings import DiagnosticsSettings
from can_signals.update import SignalUpdate

_log = logging.getLogger(__name__)

_IGNITION: Final = "Vehicle.LowVoltageSystemState"
_MIL: Final = "Vehicle.Diagnostics.Lamp.MalfunctionIndicator"
_ON: Final = frozenset({"ON", "START"})


class DtcPoller:
    """Watches signal updates for a reason to read stored DTCs, and reads them."""

    def __init__(self, settings: DiagnosticsSettings, pipeline: SignalPipeline) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._ecus = tuple(
            EcuAddress(
                name=e.name, request_id=e.request_id, response_id=e.response_id,
                extended_id=e.extended_id, protocol=e.protocol,
            )
            for e in settings.ecus
        )  # fmt: skip
        self._ignition_on = False
        self._last_read = -float("inf")
        self._task: asyncio.Task[None] | None = None
        self.reads = 0
        self.last_result: DtcReadResult | None = None

    def observe(self, updates: Sequence[SignalUpdate]) -> None:
        """A signal tap: start a read when a drive cycle starts or the MIL lights."""
        reason = None
        for update in updates:
            if update.path == _IGNITION:
                on = update.value in _ON
                if on and not self._ignition_on and self._settings.on_drive_cycle:
                    reason = "drive cycle started"
                self._ignition_on = on
            elif update.path == _MIL and update.value is True and self._settings.on_lamp:
                reason = "check-engine lamp lit"
        if reason is not None:
            self.request(reason)

    def request(self, reason: str) -> bool:
        """Start a read now, unless one runs or the last was too recent."""
        now = time.monotonic()
        if self._task is not None and not self._task.done():
            return False
        if now - self._last_read < self._settings.min_interval_s:
            return False
        self._last_read = now
        self._task = asyncio.create_task(self._read(reason), name="dtc read")
        return True

    async def _read(self, reason: str) -> None:
        bus = self._pipeline.bus(self._settings.bus)
        notifier = self._pipeline.notifier(self._settings.bus)
        if bus is None or notifier is None:
            _log.error("DTC read: no live bus %r to read on", self._settings.bus)
            return
        _log.info("reading stored DTCs (%s)", reason)
        try:
            result = await read_stored_dtcs(
                bus, self._ecus, notifier=notifier, ecu_timeout=self._settings.timeout_s
            )
        except DiagnosticError as err:
            _log.error("DTC read failed: %s", err)
            return
        self.reads += 1
        self.last_result = result
        stamp = self._pipeline.processor.latest_timestamp or time.time()
        for ecu in result.ecus:
            if ecu.ok:
                self._pipeline.processor.dtc_read_result(f"ecu:{ecu.ecu.name}", ecu.codes, stamp)
            else:
                _log.warning("DTC read: %s did not answer: %s", ecu.ecu.name, ecu.error)

    async def stop(self) -> None:
        """Cancel a read in progress."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
