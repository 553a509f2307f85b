"""Identifiers: UUIDv7 (RFC 9562) for events, cards and requests.

UUIDv7 puts the millisecond time first, so ids sort by creation and index well in
SQLite and in the cloud's stores. The random part comes from an injected source, so
the decision code stays deterministic under test.
"""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Callable

RandomBits = Callable[[int], int]


def uuid7(unix_ms: int, random_bits: RandomBits = secrets.randbits) -> str:
    """Return a UUIDv7 string for a time in milliseconds since the Unix epoch.

    Raises:
        ValueError: If the time does not fit the 48-bit field.
    """
    if not 0 <= unix_ms < 1 << 48:
        raise ValueError(f"UUIDv7 time out of range: {unix_ms}")
    value = (unix_ms << 80) | (0x7 << 76) | (random_bits(12) << 64) | (0b10 << 62)
    value |= random_bits(62)
    return str(uuid.UUID(int=value))


class IdFactory:
    """Makes UUIDv7 ids that stay unique and ordered within one millisecond.

    Args:
        random_bits: The source of randomness (a seeded ``random.Random().getrandbits``
            in tests).
    """

    def __init__(self, random_bits: RandomBits = secrets.randbits) -> None:
        self._random_bits = random_bits
        self._last_ms = -1
        self._counter = 0

    def new(self, unix_time: float) -> str:
        """A new id for a moment given in seconds since the epoch."""
        # Clamped to the 48-bit field: a wildly wrong clock must not make ids fail.
        millis = unix_time * 1000
        ceiling = (1 << 48) - 1
        unix_ms = int(min(max(0.0, millis), ceiling)) if math.isfinite(millis) else ceiling
        if unix_ms <= self._last_ms:
            # Same (or an earlier, untrusted) millisecond: count in the 12-bit field
            # (RFC 9562 method 1), borrowing the next millisecond when it overflows.
            self._counter += 1
            if self._counter >= 1 << 12:
                self._last_ms += 1
                self._counter = 0
            unix_ms = self._last_ms
        else:
            self._last_ms, self._counter = unix_ms, self._random_bits(8)
        value = (unix_ms << 80) | (0x7 << 76) | (self._counter << 64) | (0b10 << 62)
        value |= self._random_bits(62)
        return str(uuid.UUID(int=value))
