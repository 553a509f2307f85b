"""Diagnostic trouble codes: the two-byte SAE J2012 / ISO 15031-6 encoding and its text form.

A DTC on the wire is two bytes (OBD-II service 03) or three (UDS, the third byte being
the failure type). The top two bits pick the system letter (P powertrain, C chassis,
B body, U network), the next two the first digit, and three nibbles the rest:
``0x0301`` is ``P0301``.
"""

from __future__ import annotations

import re
from typing import Final

from can_signals.errors import CanSignalsError

_LETTERS: Final = "PCBU"
_TEXT_FORM: Final = re.compile(r"^[PCBU][0-3][0-9A-F]{3}$")
#: ``P0000`` means "no fault" where a bus carries one DTC slot at a time.
NO_DTC: Final = 0


class DtcFormatError(CanSignalsError):
    """A DTC that is neither a valid two-byte code nor a valid J2012 string."""


def dtc_to_text(raw: int) -> str:
    """Return the J2012 text form of a two-byte DTC.

    Args:
        raw: The code as an unsigned 16-bit integer.

    Returns:
        The five-character code, e.g. ``P0301``.

    Raises:
        DtcFormatError: If ``raw`` does not fit in 16 bits.
    """
    if not 0 <= raw <= 0xFFFF:
        raise DtcFormatError(f"a two-byte DTC must be 0..0xFFFF, got {raw!r}")
    return f"{_LETTERS[raw >> 14]}{(raw >> 12) & 0x3}{raw & 0xFFF:03X}"


def dtc_from_text(text: str) -> int:
    """Return the two-byte encoding of a J2012 code such as ``P0301``.

    Raises:
        DtcFormatError: If ``text`` is not a five-character J2012 code.
    """
    code = text.strip().upper()
    if not _TEXT_FORM.match(code):
        raise DtcFormatError(f"not a J2012 DTC (expected e.g. P0301): {text!r}")
    return (_LETTERS.index(code[0]) << 14) | (int(code[1]) << 12) | int(code[2:], 16)  # noqa: FURB166 - hex digits, not a 0x prefix


def is_dtc_text(text: str) -> bool:
    """Whether ``text`` is a J2012 code in canonical (upper-case, five-character) form."""
    return bool(_TEXT_FORM.match(text))
