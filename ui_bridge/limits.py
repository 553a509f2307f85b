"""What one D-Bus peer may make the daemon hold: calls in flight, consent changes a minute.

A peer is a connection, named by its unique bus name (``:1.42``). Calls that commit
(card actions, consent, booking, the wipes) wait for the store; a peer that sends
thousands without waiting for the answers would otherwise make the daemon hold
thousands of them, and a settings client could fill the outbox with consent records.
Refusals are counted; the bridge answers them with ``LimitsExceeded``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: Calls one peer may have waiting for the agent at once (an HMI needs a handful).
MAX_CALLS_IN_FLIGHT: Final = 32
#: Consent changes one peer may make in any minute (a driver flips a few switches).
CONSENT_CHANGES_PER_MINUTE: Final = 20
_WINDOW_S: Final = 60.0
#: Past this many peers remembered, those with nothing in the last minute are forgotten.
_PRUNE_AFTER: Final = 64


@dataclass(slots=True)
class LimitCounters:
    """What the limits refused, and the most calls in flight seen (for the health file)."""

    calls_refused: int = 0
    consent_changes_refused: int = 0
    peak_calls_in_flight: int = 0


class PeerLimits:
    """The per-peer limits, kept across reconnections of the bridge.

    Args:
        max_in_flight: Calls one peer may have waiting for the agent at once.
        consent_per_minute: Consent changes one peer may make in any 60 s.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        max_in_flight: int = MAX_CALLS_IN_FLIGHT,
        consent_per_minute: int = CONSENT_CHANGES_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.consent_per_minute = consent_per_minute
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        self._consent: dict[str, deque[float]] = {}
        self.counters = LimitCounters()

    @property
    def calls_in_flight(self) -> int:
        """Calls of every peer waiting for the agent now."""
        return sum(self._in_flight.values())

    def admit_call(self, peer: str) -> bool:
        """Take a slot for a call of ``peer`` (``False``, counted, when it has none left)."""
        held = self._in_flight.get(peer, 0)
        if held >= self.max_in_flight:
            self.counters.calls_refused += 1
            return False
        self._in_flight[peer] = held + 1
        self.counters.peak_calls_in_flight = max(self.counters.peak_calls_in_flight, held + 1)
        return True

    def release_call(self, peer: str) -> None:
        """A call of ``peer`` was answered (or ended without an answer)."""
        held = self._in_flight.get(peer, 0) - 1
        if held > 0:
            self._in_flight[peer] = held
        else:
            self._in_flight.pop(peer, None)

    def admit_consent_change(self, peer: str) -> float | None:
        """``None`` if ``peer`` may change consent now, else the seconds until it may."""
        now = self._clock()
        if len(self._consent) > _PRUNE_AFTER:
            self._consent = {
                p: t for p, t in self._consent.items() if t and t[-1] > now - _WINDOW_S
            }
        recent = self._consent.setdefault(peer, deque())
        while recent and recent[0] <= now - _WINDOW_S:
            recent.popleft()
        if len(recent) >= self.consent_per_minute:
            self.counters.consent_changes_refused += 1
            return recent[0] + _WINDOW_S - now
        recent.append(now)
        return None
