"""An ECU that answers stored-DTC requests, for tests, the vehicle simulator and developers.

It listens on one :class:`~can_signals.obd.EcuAddress` with its own ISO-TP stack and
answers OBD-II service 03 and UDS 0x19 0x02 (reportDTCByStatusMask) from a mutable set
of stored DTCs. Anything else gets the negative response a real ECU would send: 0x11
serviceNotSupported for another service, 0x12 subFunctionNotSupported for another
0x19 sub-function, 0x13 for a request of the wrong length.

Knobs for the unhappy paths a reader must survive: ``silent`` (never answer),
``pending_responses`` (answer 0x78 "response pending" that many times first) and
``raw_response`` (send these exact bytes instead of the real answer).

Example:
    >>> with can.Bus(interface="virtual", channel="demo") as bus:  # doctest: +SKIP
    ...     with EcuEmulator(bus, dtcs=["P0301", "P0420"]):
    ...         ...
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

import can
import isotp

from can_signals.diag_protocol import (
    ENGINE_ECU,
    ISOTP_PARAMS,
    NEGATIVE_RESPONSE,
    NRC_RESPONSE_PENDING,
    OBD_STORED_DTCS,
    POSITIVE_RESPONSE_OFFSET,
    UDS_READ_DTC_INFORMATION,
    UDS_REPORT_DTC_BY_STATUS_MASK,
    UDS_STATUS_CONFIRMED,
    EcuAddress,
)
from can_signals.dtc import dtc_from_text, dtc_to_text
from can_signals.errors import CanSignalsError

logger = logging.getLogger(__name__)

NRC_SERVICE_NOT_SUPPORTED: Final = 0x11
NRC_SUB_FUNCTION_NOT_SUPPORTED: Final = 0x12
NRC_INCORRECT_LENGTH: Final = 0x13
#: The OBD count byte caps how many codes one service 03 answer can carry.
MAX_STORED_DTCS: Final = 255
#: The largest payload classic ISO-TP can carry.
MAX_PAYLOAD: Final = 4095

# How often the emulator's threads look up from their queues to see whether to stop:
# short, so that tests which start and stop emulators by the dozen stay fast.
_POLL_INTERVAL: Final = 0.01


class EmulatorError(CanSignalsError):
    """An emulator setting that cannot work, or a start/stop out of order."""


@dataclass(frozen=True, slots=True)
class StoredDtc:
    """One DTC in the emulator's memory.

    Attributes:
        code: The J2012 code, e.g. ``P0301``.
        status: The UDS status byte; OBD service 03 reports the code only when bit 3
            (confirmedDTC) is set, as a real ECU reports only confirmed codes there.
        failure_type: The third byte of the UDS DTC (ISO 15031-6 failure type).
    """

    code: str
    status: int = UDS_STATUS_CONFIRMED
    failure_type: int = 0

    def __post_init__(self) -> None:
        # Normalises the text ("p0301 " -> "P0301") and rejects what is not a code.
        object.__setattr__(self, "code", dtc_to_text(dtc_from_text(self.code)))
        for label, value in (("status", self.status), ("failure_type", self.failure_type)):
            if not 0 <= value <= 0xFF:
                raise EmulatorError(f"{self.code}: {label} must be one byte, got {value!r}")

    @property
    def raw(self) -> int:
        """The two-byte encoding of :attr:`code`."""
        return dtc_from_text(self.code)


class EcuEmulator:
    """An ECU answering stored-DTC requests on a python-can bus until stopped.

    All setters are thread-safe and take effect from the next request.

    Args:
        bus: The bus to answer on (e.g. python-can's ``virtual`` interface).
        ecu: The ids to listen and answer on. Its ``protocol`` and ``status_mask`` are
            ignored: the emulator answers both protocols, with the mask in the request.
        dtcs: The stored DTCs, as J2012 strings (status confirmed) or :class:`StoredDtc`.
        notifier: A :class:`can.Notifier` already reading ``bus``, to share; without
            one the emulator runs its own while started.
        availability_mask: The DTCStatusAvailabilityMask of UDS answers.
        silent: Never answer (requests are still counted).
        pending_responses: How many 0x78 "response pending" to send before each answer.

    Raises:
        EmulatorError: If a setting is out of range or there are too many DTCs.
        can_signals.dtc.DtcFormatError: If a code is not a J2012 code.
    """

    def __init__(
        self,
        bus: can.BusABC,
        ecu: EcuAddress = ENGINE_ECU,
        dtcs: Iterable[str | StoredDtc] = (),
        *,
        notifier: can.Notifier | None = None,
        availability_mask: int = 0xFF,
        silent: bool = False,
        pending_responses: int = 0,
    ) -> None:
        if not 0 <= availability_mask <= 0xFF:
            raise EmulatorError(f"availability_mask must be one byte, got {availability_mask!r}")
        self._bus = bus
        self._ecu = ecu
        self._given_notifier = notifier
        self._availability_mask = availability_mask
        self._lock = threading.Lock()
        self._dtcs: tuple[StoredDtc, ...] = ()
        self._silent = silent
        self._pending_responses = 0
        self._raw_response: bytes | None = None
        self._requests_received = 0
        self.set_dtcs(dtcs)
        self.pending_responses = pending_responses
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._stack: isotp.NotifierBasedCanStack | None = None
        self._own_notifier: can.Notifier | None = None

    @property
    def ecu(self) -> EcuAddress:
        """The address the emulator answers on."""
        return self._ecu

    @property
    def dtcs(self) -> tuple[StoredDtc, ...]:
        """The stored DTCs."""
        with self._lock:
            return self._dtcs

    def set_dtcs(self, dtcs: Iterable[str | StoredDtc]) -> None:
        """Replace the stored DTCs.

        Raises:
            EmulatorError: If there are more than :data:`MAX_STORED_DTCS`.
            can_signals.dtc.DtcFormatError: If a code is not a J2012 code.
        """
        stored = tuple(d if isinstance(d, StoredDtc) else StoredDtc(d) for d in dtcs)
        if len(stored) > MAX_STORED_DTCS:
            raise EmulatorError(f"at most {MAX_STORED_DTCS} stored DTCs, got {len(stored)}")
        with self._lock:
            self._dtcs = stored

    @property
    def silent(self) -> bool:
        """Whether the emulator ignores requests (to provoke timeouts)."""
        with self._lock:
            return self._silent

    @silent.setter
    def silent(self, value: bool) -> None:
        with self._lock:
            self._silent = value

    @property
    def pending_responses(self) -> int:
        """How many 0x78 "response pending" precede each answer."""
        with self._lock:
            return self._pending_responses

    @pending_responses.setter
    def pending_responses(self, value: int) -> None:
        if value < 0:
            raise EmulatorError(f"pending_responses must be >= 0, got {value!r}")
        with self._lock:
            self._pending_responses = value

    @property
    def raw_response(self) -> bytes | None:
        """Bytes sent verbatim instead of every real answer, or None for real answers."""
        with self._lock:
            return self._raw_response

    @raw_response.setter
    def raw_response(self, value: bytes | None) -> None:
        if value is not None and not 0 < len(value) <= MAX_PAYLOAD:
            raise EmulatorError(f"a raw response must be 1..{MAX_PAYLOAD} bytes")
        with self._lock:
            self._raw_response = None if value is None else bytes(value)

    @property
    def requests_received(self) -> int:
        """How many requests arrived since the emulator was created."""
        with self._lock:
            return self._requests_received

    def answer(self, request: bytes) -> tuple[bytes, ...]:
        """Return the payloads the emulator sends in reply to ``request``, in order.

        Empty when silent or when the request is empty (there is no service to refuse).
        """
        with self._lock:
            self._requests_received += 1
            silent, pending, raw = self._silent, self._pending_responses, self._raw_response
            dtcs = self._dtcs
        if silent or not request:
            return ()
        waiting = (bytes([NEGATIVE_RESPONSE, request[0], NRC_RESPONSE_PENDING]),) * pending
        return (*waiting, raw if raw is not None else self._real_answer(request, dtcs))

    def _real_answer(self, request: bytes, dtcs: tuple[StoredDtc, ...]) -> bytes:
        service = request[0]
        if service == OBD_STORED_DTCS:
            return self._obd_answer(request, dtcs)
        if service == UDS_READ_DTC_INFORMATION:
            return self._uds_answer(request, dtcs)
        return _negative(service, NRC_SERVICE_NOT_SUPPORTED)

    @staticmethod
    def _obd_answer(request: bytes, dtcs: tuple[StoredDtc, ...]) -> bytes:
        if len(request) != 1:
            return _negative(OBD_STORED_DTCS, NRC_INCORRECT_LENGTH)
        confirmed = [d for d in dtcs if d.status & UDS_STATUS_CONFIRMED]
        body = b"".join(d.raw.to_bytes(2, "big") for d in confirmed)
        return bytes([OBD_STORED_DTCS + POSITIVE_RESPONSE_OFFSET, len(confirmed)]) + body

    def _uds_answer(self, request: bytes, dtcs: tuple[StoredDtc, ...]) -> bytes:
        service = UDS_READ_DTC_INFORMATION
        if len(request) < 2:
            return _negative(service, NRC_INCORRECT_LENGTH)
        if request[1] != UDS_REPORT_DTC_BY_STATUS_MASK:
            return _negative(service, NRC_SUB_FUNCTION_NOT_SUPPORTED)
        if len(request) != 3:
            return _negative(service, NRC_INCORRECT_LENGTH)
        available = self._availability_mask
        # ISO 14229-1: report a DTC when (status & mask) != 0, both limited to the bits
        # this ECU supports.
        mask = request[2] & available
        records = b"".join(
            d.raw.to_bytes(2, "big") + bytes([d.failure_type, d.status & available])
            for d in dtcs
            if d.status & mask
        )
        head = bytes([service + POSITIVE_RESPONSE_OFFSET, request[1], available])
        return head + records

    def start(self) -> None:
        """Start answering requests.

        Raises:
            EmulatorError: If already started, or the bus already has a Notifier that
                was not passed in.
        """
        if self._thread is not None:
            raise EmulatorError("the emulator is already running")
        notifier = self._given_notifier
        if notifier is None:
            try:
                notifier = self._own_notifier = can.Notifier(self._bus, [], timeout=_POLL_INTERVAL)
            except ValueError as err:
                raise EmulatorError(
                    "another can.Notifier already reads this bus: pass it as notifier="
                ) from err
        self._stack = isotp.NotifierBasedCanStack(
            self._bus,
            notifier,
            address=self._ecu.isotp_address(as_ecu=True),
            params=dict(ISOTP_PARAMS),
            read_timeout=_POLL_INTERVAL,
        )
        try:
            self._stack.start()
        except RuntimeError as err:
            self.stop()
            raise EmulatorError(f"cannot start the ISO-TP stack: {err}") from err
        self._stop_requested.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(self._stack,), name=f"ecu-emulator-{self._ecu.name}"
        )
        self._thread.start()
        logger.debug("ECU emulator %s listening on 0x%X", self._ecu.name, self._ecu.request_id)

    def stop(self) -> None:
        """Stop answering and release every thread; does nothing if not started."""
        self._stop_requested.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._stack is not None:
            self._stack.stop()
            self._stack = None
        if self._own_notifier is not None:
            self._own_notifier.stop()
            self._own_notifier = None

    def _serve(self, stack: isotp.NotifierBasedCanStack) -> None:
        while not self._stop_requested.is_set():
            request = stack.recv(block=True, timeout=_POLL_INTERVAL)
            if request is None:
                continue
            for payload in self.answer(bytes(request)):
                stack.send(payload)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _negative(service: int, nrc: int) -> bytes:
    return bytes([NEGATIVE_RESPONSE, service, nrc])
