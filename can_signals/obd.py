"""On-demand read of stored DTCs over ISO-TP: OBD-II service 03 or UDS 0x19 0x02.

Broadcast frames only tell us about the faults a car chooses to announce; the full list
of stored codes has to be asked for. This module asks each configured ECU with a
physically addressed ISO-TP request (ISO 15765-2); :mod:`can_signals.diag_protocol`
builds the requests and parses the answers strictly. A "response pending" answer
extends the wait; one ECU failing never loses another ECU's answer: each gets its own
:class:`EcuDtcResult`.

On SocketCAN, where the kernel has ISO-TP, each ECU gets a kernel ``CAN_ISOTP`` socket
for the duration of a read (:mod:`can_signals.kernel_isotp`): the kernel does the
segmenting and the flow control. Elsewhere the reader shares the bus with the rest of the
CAN pipeline: it hangs can-isotp's user-space stacks on the pipeline's
:class:`can.Notifier` (or on a Notifier of its own when given only a bus) for the
duration of a read, and removes them afterwards so that between reads no diagnostic
code runs per CAN frame.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Literal, Protocol

import can
import isotp

from can_signals.diag_protocol import (
    DEFAULT_ECUS,
    DEFAULT_PENDING_TIMEOUT,
    DEFAULT_TIMEOUT,
    ISOTP_PARAMS,
    MAX_PENDING_RESPONSES,
    DiagnosticConfigError,
    DiagnosticError,
    DiagnosticTimeoutError,
    DtcReadResult,
    EcuAddress,
    EcuDtcResult,
    is_response_pending,
    parse_dtc_response,
)
from can_signals.kernel_isotp import KernelIsoTpLink, kernel_isotp_channel

logger = logging.getLogger(__name__)


# How often the threads of a read (worker, ISO-TP relay, a Notifier the reader owns)
# look up from their queues to see whether to stop. They exist only during a read, so
# a short period costs little and makes cancelling and finishing a read quick.
_POLL_INTERVAL: Final = 0.02


class _Link(Protocol):
    """One ECU's ISO-TP channel for the duration of a read, and what went wrong under it."""

    ecu: EcuAddress
    problem: str | None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def send(self, payload: bytes) -> None: ...
    def receive(self, deadline: float, cancel: threading.Event) -> bytes | None: ...


class _EcuLink:
    """One ECU's user-space ISO-TP stack for the duration of a read."""

    def __init__(self, bus: can.BusABC, notifier: can.Notifier, ecu: EcuAddress) -> None:
        self.ecu = ecu
        # Written by the stack's threads, read by the worker after its wait: only ever
        # rebound, never mutated, so no lock is needed.
        self.problem: str | None = None
        self.stack = isotp.NotifierBasedCanStack(
            bus,
            notifier,
            address=ecu.isotp_address(),
            error_handler=self._on_transport_error,
            params=dict(ISOTP_PARAMS),
            read_timeout=_POLL_INTERVAL,
        )
        # A bus that refuses a frame (a full socketcan queue, a bus shut down under us)
        # raises in the stack's own thread and would kill it silently; keep the thread
        # alive and report the cause when the wait for an answer runs out.
        send_frame = self.stack.txfn

        def guarded_send(msg: isotp.CanMessage) -> None:
            try:
                send_frame(msg)
            except can.CanError as err:
                self.problem = f"transmit failed: {err}"

        self.stack.txfn = guarded_send

    def _on_transport_error(self, error: Exception) -> None:
        self.problem = f"ISO-TP error: {type(error).__name__}: {error}"

    def start(self) -> None:
        try:
            self.stack.start()
        except RuntimeError as err:
            raise DiagnosticError(f"cannot start the ISO-TP stack: {err}") from err

    def stop(self) -> None:
        self.stack.stop()

    def send(self, payload: bytes) -> None:
        self.stack.send(payload)

    def receive(self, deadline: float, cancel: threading.Event) -> bytes | None:
        return _receive(self.stack, deadline, cancel)


class DtcReader:
    """Reads the stored DTCs of a list of ECUs, all of them in parallel.

    Args:
        bus: The bus to talk on; shared with the rest of the CAN pipeline.
        ecus: The ECUs to ask; by default the engine ECU with OBD service 03.
        notifier: The :class:`can.Notifier` already reading ``bus``, if there is one.
            Without it the reader runs a Notifier of its own for each read, which
            fails if another Notifier is reading the bus.
        ecu_timeout: Seconds each ECU has to answer; the ECUs are asked in parallel,
            so a read takes about this long when one of them stays silent.
        pending_timeout: Seconds to wait after each "response pending" (NRC 0x78).

    Raises:
        DiagnosticConfigError: If the ECU list is empty, names an ECU or a response id
            twice, or a timeout is not positive.
    """

    def __init__(
        self,
        bus: can.BusABC,
        ecus: Sequence[EcuAddress] = DEFAULT_ECUS,
        *,
        notifier: can.Notifier | None = None,
        ecu_timeout: float = DEFAULT_TIMEOUT,
        pending_timeout: float = DEFAULT_PENDING_TIMEOUT,
    ) -> None:
        self._ecus = tuple(ecus)
        if not self._ecus:
            raise DiagnosticConfigError("no ECU to read DTCs from")
        if len({ecu.name for ecu in self._ecus}) != len(self._ecus):
            raise DiagnosticConfigError("two ECUs share a name")
        # Two stacks listening on one response id would both take each answer.
        if len({(ecu.response_id, ecu.extended_id) for ecu in self._ecus}) != len(self._ecus):
            raise DiagnosticConfigError("two ECUs share a response id")
        if not (ecu_timeout > 0 and pending_timeout > 0):
            raise DiagnosticConfigError("timeouts must be positive")
        self._bus = bus
        self._notifier = notifier
        self._ecu_timeout = ecu_timeout
        self._pending_timeout = pending_timeout
        # Overlapping reads would each see the other's answers; one at a time.
        self._lock = threading.Lock()

    @property
    def ecus(self) -> tuple[EcuAddress, ...]:
        """The ECUs this reader asks."""
        return self._ecus

    @property
    def transport(self) -> Literal["kernel", "user-space"]:
        """Whose ISO-TP a read uses: the kernel's (SocketCAN with CAN_ISOTP) or can-isotp's."""
        return "kernel" if kernel_isotp_channel(self._bus) is not None else "user-space"

    def read(self) -> DtcReadResult:
        """Ask every ECU for its stored DTCs, blocking until all answered or timed out.

        For the CLI and other synchronous callers; never call it from a running event
        loop (use :meth:`read_async`).

        Returns:
            One result per ECU; a failing ECU carries its error, never raises.

        Raises:
            DiagnosticError: If the reader cannot listen on the bus at all.
        """
        return self._read(threading.Event())

    async def read_async(self) -> DtcReadResult:
        """Like :meth:`read`, without blocking the event loop.

        The ISO-TP exchange runs in worker threads. Cancelling the call makes them give
        up within a poll interval instead of waiting out the timeout.
        """
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self._read, cancel)
        finally:
            cancel.set()

    def _read(self, cancel: threading.Event) -> DtcReadResult:
        channel = kernel_isotp_channel(self._bus)
        with self._lock:
            if channel is not None:
                return self._read_kernel(channel, cancel)
            if self._notifier is not None and self._notifier.stopped:
                raise DiagnosticError("the can.Notifier given to the reader has been stopped")
            notifier = self._own_notifier() if self._notifier is None else self._notifier
            try:
                links: list[_Link] = [_EcuLink(self._bus, notifier, e) for e in self._ecus]
                return self._ask_all(links, cancel, "user-space")
            finally:
                if notifier is not self._notifier:
                    notifier.stop()

    def _read_kernel(self, channel: str, cancel: threading.Event) -> DtcReadResult:
        links: list[_Link] = []
        try:
            for ecu in self._ecus:
                links.append(KernelIsoTpLink(channel, ecu))  # noqa: PERF401 - closed on failure
        except OSError as err:
            for link in links:
                link.stop()
            raise DiagnosticError(
                f"cannot open a kernel ISO-TP socket on {channel}: {err}"
            ) from err
        return self._ask_all(links, cancel, "kernel")

    def _ask_all(self, links: list[_Link], cancel: threading.Event, how: str) -> DtcReadResult:
        try:
            for link in links:
                link.start()
            query = functools.partial(self._query, cancel=cancel)
            with ThreadPoolExecutor(len(links), thread_name_prefix="dtc-read") as pool:
                results = tuple(pool.map(query, links))
        finally:
            for link in links:
                link.stop()
        logger.info(
            "read stored DTCs from %d ECU(s) over %s ISO-TP: %d code(s), %d failed",
            len(results),
            how,
            sum(len(r.codes) for r in results),
            sum(not r.ok for r in results),
        )
        return DtcReadResult(results)

    def _own_notifier(self) -> can.Notifier:
        try:
            return can.Notifier(self._bus, [], timeout=_POLL_INTERVAL)
        except ValueError as err:
            raise DiagnosticConfigError(
                "another can.Notifier already reads this bus: pass it as notifier="
            ) from err

    def _query(self, link: _Link, cancel: threading.Event) -> EcuDtcResult:
        ecu = link.ecu
        try:
            codes = self._exchange(link, cancel)
        except DiagnosticError as err:
            logger.warning(
                "reading DTCs from the %s ECU (0x%X) failed: %s", ecu.name, ecu.request_id, err
            )
            return EcuDtcResult(ecu=ecu, error=err)
        logger.debug("the %s ECU reports %d stored DTC(s)", ecu.name, len(codes))
        return EcuDtcResult(ecu=ecu, codes=codes)

    def _exchange(self, link: _Link, cancel: threading.Event) -> tuple[str, ...]:
        ecu = link.ecu
        try:
            link.send(ecu.request())
        except (RuntimeError, ValueError, OSError, isotp.IsoTpError) as err:
            raise DiagnosticError(f"cannot send the request to the {ecu.name} ECU: {err}") from err
        deadline = time.monotonic() + self._ecu_timeout
        pending = 0
        while True:
            payload = link.receive(deadline, cancel)
            if payload is None:
                if cancel.is_set():
                    raise DiagnosticError("the read was cancelled")
                detail = f"; {link.problem}" if link.problem else ""
                after = f" after {pending} response-pending answer(s)" if pending else ""
                raise DiagnosticTimeoutError(
                    f"no answer from the {ecu.name} ECU (0x{ecu.request_id:X}) "
                    f"in time{after}{detail}"
                )
            if is_response_pending(payload, ecu.service):
                pending += 1
                if pending > MAX_PENDING_RESPONSES:
                    raise DiagnosticTimeoutError(
                        f"the {ecu.name} ECU answered 'response pending' {pending} times"
                    )
                deadline = time.monotonic() + self._pending_timeout
                continue
            return parse_dtc_response(payload, ecu)


def _receive(stack: isotp.TransportLayer, deadline: float, cancel: threading.Event) -> bytes | None:
    # Short slices rather than one long wait, so that a cancelled read frees its thread.
    while not cancel.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        payload = stack.recv(block=True, timeout=min(remaining, _POLL_INTERVAL))
        if payload is not None:
            return bytes(payload)
    return None


async def read_stored_dtcs(
    bus: can.BusABC,
    ecus: Sequence[EcuAddress] = DEFAULT_ECUS,
    *,
    notifier: can.Notifier | None = None,
    ecu_timeout: float = DEFAULT_TIMEOUT,
    pending_timeout: float = DEFAULT_PENDING_TIMEOUT,
) -> DtcReadResult:
    """Read the stored DTCs of ``ecus`` without blocking the event loop.

    See :class:`DtcReader` for the arguments.

    Returns:
        One result per ECU; a failing ECU carries its error, never raises.

    Raises:
        DiagnosticConfigError: If the configuration cannot work.
        DiagnosticError: If the reader cannot listen on the bus at all.
    """
    reader = DtcReader(
        bus, ecus, notifier=notifier, ecu_timeout=ecu_timeout, pending_timeout=pending_timeout
    )
    return await reader.read_async()


def read_stored_dtcs_sync(
    bus: can.BusABC,
    ecus: Sequence[EcuAddress] = DEFAULT_ECUS,
    *,
    notifier: can.Notifier | None = None,
    ecu_timeout: float = DEFAULT_TIMEOUT,
    pending_timeout: float = DEFAULT_PENDING_TIMEOUT,
) -> DtcReadResult:
    """Read the stored DTCs of ``ecus``, blocking; for the CLI.

    See :class:`DtcReader` for the arguments and :func:`read_stored_dtcs` for the
    result and errors.
    """
    reader = DtcReader(
        bus, ecus, notifier=notifier, ecu_timeout=ecu_timeout, pending_timeout=pending_timeout
    )
    return reader.read()
