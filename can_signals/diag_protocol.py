"""The diagnostic protocols of stored-DTC reads: OBD-II service 03 and UDS 0x19 0x02.

Requests, strict parsing of the answers, the ECU addresses and the results, with no
I/O: :mod:`can_signals.obd` talks to the ECUs over ISO-TP, and
:mod:`can_signals.simulator.ecu_emulator` answers like one.

* OBD-II service 03 (ISO 15765-4 / SAE J1979): request ``03``, positive response
  ``43 <count> <hi lo>...`` with two-byte J2012 codes; ``00 00`` pairs are padding.
* UDS ReadDTCInformation, reportDTCByStatusMask (ISO 14229-1): request
  ``19 02 <mask>``, positive response ``59 02 <availability> <hi mid lo status>...``;
  the first two bytes of each 3-byte DTC are the J2012 code, the third the failure type.

Negative responses are ``7F <service> <NRC>``; NRC 0x78 (response pending) means "wait
longer", every other NRC fails that ECU's read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

import isotp

from can_signals.dtc import NO_DTC, dtc_to_text
from can_signals.errors import CanSignalsError

#: Which request an ECU understands: OBD-II service 03 or UDS 0x19 0x02.
DiagnosticProtocol = Literal["obd", "uds"]

OBD_STORED_DTCS: Final = 0x03
UDS_READ_DTC_INFORMATION: Final = 0x19
UDS_REPORT_DTC_BY_STATUS_MASK: Final = 0x02
NEGATIVE_RESPONSE: Final = 0x7F
#: A positive response's service id is the request's plus this.
POSITIVE_RESPONSE_OFFSET: Final = 0x40
NRC_RESPONSE_PENDING: Final = 0x78
#: UDS DTC status bit 3, confirmedDTC: the fault matured and is stored, which is what
#: OBD service 03 reports too. The default mask, so both protocols mean "stored DTCs".
UDS_STATUS_CONFIRMED: Final = 0x08

#: Seconds an ECU has to answer a request (UDS P2 for a tester, generous for CAN).
DEFAULT_TIMEOUT: Final = 1.0
#: Seconds to wait after each "response pending" (UDS P2* server maximum).
DEFAULT_PENDING_TIMEOUT: Final = 5.0
#: An ECU that keeps saying "pending" is broken; stop waiting after this many.
MAX_PENDING_RESPONSES: Final = 16

#: ISO-TP settings for both ends. OBD on CAN requires 8-byte frames, hence padding
#: (0xCC is the filler ISO 15765-2 suggests); block size 0 and STmin 0 let the sender
#: stream a multi-frame answer without waiting for further flow control.
ISOTP_PARAMS: Final[Mapping[str, Any]] = MappingProxyType(
    {"tx_padding": 0xCC, "blocksize": 0, "stmin": 0}
)

#: Names of the negative response codes of ISO 14229-1, table A.1.
NRC_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        0x10: "generalReject",
        0x11: "serviceNotSupported",
        0x12: "subFunctionNotSupported",
        0x13: "incorrectMessageLengthOrInvalidFormat",
        0x14: "responseTooLong",
        0x21: "busyRepeatRequest",
        0x22: "conditionsNotCorrect",
        0x24: "requestSequenceError",
        0x25: "noResponseFromSubnetComponent",
        0x26: "failurePreventsExecutionOfRequestedAction",
        0x31: "requestOutOfRange",
        0x33: "securityAccessDenied",
        0x35: "invalidKey",
        0x36: "exceedNumberOfAttempts",
        0x37: "requiredTimeDelayNotExpired",
        0x70: "uploadDownloadNotAccepted",
        0x71: "transferDataSuspended",
        0x72: "generalProgrammingFailure",
        0x73: "wrongBlockSequenceCounter",
        0x78: "requestCorrectlyReceivedResponsePending",
        0x7E: "subFunctionNotSupportedInActiveSession",
        0x7F: "serviceNotSupportedInActiveSession",
    }
)

_MAX_11BIT_ID: Final = 0x7FF
_MAX_29BIT_ID: Final = 0x1FFF_FFFF


class DiagnosticError(CanSignalsError):
    """A diagnostic read that failed, or an answer that cannot be used."""


class DiagnosticConfigError(DiagnosticError):
    """An ECU address, a list of ECUs or a reader setting that cannot work."""


class DiagnosticTimeoutError(DiagnosticError):
    """An ECU that did not answer (completely) in time."""


class MalformedResponseError(DiagnosticError):
    """An answer that does not follow the protocol: wrong service, length or count."""


class NegativeResponseError(DiagnosticError):
    """An ECU that refused the request with a negative response code.

    Attributes:
        service: The service id the ECU refused.
        nrc: The negative response code.
    """

    def __init__(self, service: int, nrc: int) -> None:
        self.service = service
        self.nrc = nrc
        super().__init__(
            f"the ECU refused service 0x{service:02X}: {self.nrc_name} (NRC 0x{nrc:02X})"
        )

    @property
    def nrc_name(self) -> str:
        """The ISO 14229-1 name of the code, e.g. ``serviceNotSupported``."""
        return nrc_name(self.nrc)


def nrc_name(nrc: int) -> str:
    """Return the ISO 14229-1 name of a negative response code, or a generic label."""
    return NRC_NAMES.get(nrc, f"unknown NRC 0x{nrc:02X}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EcuAddress:
    """Where one ECU listens and answers, and how to ask it for its stored DTCs.

    Attributes:
        name: A label for logs and results, e.g. ``engine``.
        request_id: CAN id the tester sends to (physical addressing).
        response_id: CAN id the ECU answers on.
        extended_id: Whether both ids are 29-bit (``True``) or 11-bit.
        protocol: ``obd`` for OBD-II service 03, ``uds`` for UDS 0x19 0x02.
        status_mask: UDS only: the DTC status mask to request. The default, 0x08
            (confirmedDTC), asks for the same "stored" codes OBD service 03 returns;
            0x04 would add pending ones, 0xFF every code the ECU tracks.
    """

    name: str = "engine"
    request_id: int = 0x7E0
    response_id: int = 0x7E8
    extended_id: bool = False
    protocol: DiagnosticProtocol = "obd"
    status_mask: int = UDS_STATUS_CONFIRMED

    def __post_init__(self) -> None:
        if not self.name:
            raise DiagnosticConfigError("an ECU needs a name")
        limit = _MAX_29BIT_ID if self.extended_id else _MAX_11BIT_ID
        width = "29" if self.extended_id else "11"
        for label, value in (("request_id", self.request_id), ("response_id", self.response_id)):
            if not 0 <= value <= limit:
                raise DiagnosticConfigError(
                    f"ECU {self.name!r}: {label} 0x{value:X} does not fit in {width} bits"
                )
        if self.request_id == self.response_id:
            raise DiagnosticConfigError(f"ECU {self.name!r}: request and response ids must differ")
        if self.protocol not in ("obd", "uds"):
            raise DiagnosticConfigError(
                f"ECU {self.name!r}: protocol must be 'obd' or 'uds', got {self.protocol!r}"
            )
        if not 0 < self.status_mask <= 0xFF:
            # A zero mask is legal on the wire but matches no DTC, which would read as
            # "no faults": refuse it rather than report a healthy car.
            raise DiagnosticConfigError(
                f"ECU {self.name!r}: status_mask must be 0x01..0xFF, got {self.status_mask!r}"
            )

    @property
    def service(self) -> int:
        """The service id of the request."""
        return OBD_STORED_DTCS if self.protocol == "obd" else UDS_READ_DTC_INFORMATION

    def request(self) -> bytes:
        """The request payload: ``03`` or ``19 02 <mask>``."""
        if self.protocol == "obd":
            return bytes([OBD_STORED_DTCS])
        return bytes([UDS_READ_DTC_INFORMATION, UDS_REPORT_DTC_BY_STATUS_MASK, self.status_mask])

    def isotp_address(self, *, as_ecu: bool = False) -> isotp.Address:
        """The ISO-TP address of the tester's end, or of the ECU's end if ``as_ecu``."""
        tx_id, rx_id = self.request_id, self.response_id
        if as_ecu:
            tx_id, rx_id = rx_id, tx_id
        mode = (
            isotp.AddressingMode.Normal_29bits
            if self.extended_id
            else isotp.AddressingMode.Normal_11bits
        )
        return isotp.Address(mode, txid=tx_id, rxid=rx_id)


#: The engine ECU of ISO 15765-4 (request 0x7E0, response 0x7E8), asked with service 03.
ENGINE_ECU: Final = EcuAddress()
DEFAULT_ECUS: Final[tuple[EcuAddress, ...]] = (ENGINE_ECU,)


@dataclass(frozen=True, slots=True)
class EcuDtcResult:
    """What one ECU answered: its stored codes, or why there are none to show.

    Attributes:
        ecu: The ECU asked.
        codes: J2012 codes, sorted and deduplicated; empty when ``error`` is set.
        error: Why the read failed (timeout, negative or malformed response), or None.
    """

    ecu: EcuAddress
    codes: tuple[str, ...] = ()
    error: DiagnosticError | None = None

    @property
    def ok(self) -> bool:
        """Whether the ECU answered with a usable list (possibly empty)."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class DtcReadResult:
    """The outcome of one read, one entry per ECU in the order they were configured."""

    ecus: tuple[EcuDtcResult, ...]

    @property
    def codes(self) -> tuple[str, ...]:
        """Every code any ECU reported, sorted and deduplicated."""
        return tuple(sorted({code for result in self.ecus for code in result.codes}))

    @property
    def failed(self) -> tuple[EcuDtcResult, ...]:
        """The ECUs whose read failed."""
        return tuple(result for result in self.ecus if not result.ok)

    @property
    def complete(self) -> bool:
        """Whether every ECU answered, so ``codes`` is the car's whole stored list."""
        return not self.failed

    def for_ecu(self, name: str) -> EcuDtcResult:
        """Return the result of the ECU called ``name``.

        Raises:
            KeyError: If no ECU of that name was asked.
        """
        for result in self.ecus:
            if result.ecu.name == name:
                return result
        raise KeyError(name)


def parse_dtc_response(payload: bytes | bytearray, ecu: EcuAddress = ENGINE_ECU) -> tuple[str, ...]:
    """Parse an ECU's answer to :meth:`EcuAddress.request` into J2012 codes.

    Args:
        payload: The complete ISO-TP payload the ECU sent.
        ecu: The ECU it came from; gives the protocol and, for UDS, the status mask.
            UDS records whose status does not match the mask are dropped, because
            some ECUs ignore the mask and report every code they track.

    Returns:
        The codes, sorted and deduplicated, without ``P0000`` padding.

    Raises:
        NegativeResponseError: If the ECU refused the request (including NRC 0x78).
        MalformedResponseError: If the payload does not follow the protocol.
    """
    data = bytes(payload)
    _raise_if_negative(data, ecu.service)
    if ecu.protocol == "obd":
        return _parse_obd(data)
    return _parse_uds(data, ecu.status_mask)


def _raise_if_negative(data: bytes, service: int) -> None:
    if not data:
        raise MalformedResponseError("empty response")
    if data[0] != NEGATIVE_RESPONSE:
        return
    if len(data) != 3:
        raise MalformedResponseError(
            f"a negative response is 3 bytes (7F, service, NRC), got {data.hex(' ')}"
        )
    if data[1] != service:
        raise MalformedResponseError(
            f"negative response for service 0x{data[1]:02X}, but 0x{service:02X} was requested"
        )
    raise NegativeResponseError(service, data[2])


def _check_service(data: bytes, service: int) -> None:
    expected = service + POSITIVE_RESPONSE_OFFSET
    if data[0] != expected:
        raise MalformedResponseError(
            f"expected a response to service 0x{service:02X} (0x{expected:02X}), "
            f"got service id 0x{data[0]:02X}"
        )


def _parse_obd(data: bytes) -> tuple[str, ...]:
    _check_service(data, OBD_STORED_DTCS)
    if len(data) < 2:
        raise MalformedResponseError("OBD service 03 response without its DTC count byte")
    body = data[2:]
    if len(body) % 2:
        raise MalformedResponseError(
            f"OBD service 03 response has {len(body)} DTC bytes, not a whole number of codes"
        )
    raws = [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2)]
    codes = [raw for raw in raws if raw != NO_DTC]
    count = data[1]
    if count > len(raws):
        raise MalformedResponseError(
            f"truncated OBD response: it announces {count} DTCs but carries {len(raws)}"
        )
    if count != len(codes):
        raise MalformedResponseError(
            f"OBD response announces {count} DTCs but carries {len(codes)} non-zero codes"
        )
    return _as_text(codes)


def _parse_uds(data: bytes, status_mask: int) -> tuple[str, ...]:
    _check_service(data, UDS_READ_DTC_INFORMATION)
    if len(data) < 3:
        raise MalformedResponseError(
            "UDS 0x59 response without its sub-function and availability mask"
        )
    if data[1] != UDS_REPORT_DTC_BY_STATUS_MASK:
        raise MalformedResponseError(
            f"UDS response to sub-function 0x{data[1]:02X}, "
            f"but 0x{UDS_REPORT_DTC_BY_STATUS_MASK:02X} was requested"
        )
    body = data[3:]
    if len(body) % 4:
        raise MalformedResponseError(
            f"UDS response has {len(body)} record bytes, not a whole number of 4-byte records"
        )
    codes = []
    for i in range(0, len(body), 4):
        raw = int.from_bytes(body[i : i + 2], "big")
        status = body[i + 3]
        if raw != NO_DTC and status & status_mask:
            codes.append(raw)
    return _as_text(codes)


def _as_text(codes: list[int]) -> tuple[str, ...]:
    return tuple(sorted({dtc_to_text(code) for code in codes}))


def is_response_pending(payload: bytes | bytearray, service: int) -> bool:
    """Whether ``payload`` is ``7F <service> 78``: the ECU needs more time."""
    return bytes(payload) == bytes([NEGATIVE_RESPONSE, service, NRC_RESPONSE_PENDING])
