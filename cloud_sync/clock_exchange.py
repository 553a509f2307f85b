"""The cloud's time, asked for and measured: the car's best clock source (docs/time.md).

The car publishes a :class:`~cloud_sync.contract.ClockRequest` when it connects and
every :data:`INTERVAL_S` while connected; the cloud answers with its time. The round
trip is measured on the monotonic clock: an answer that took longer than
:data:`MAX_ROUND_TRIP_S` (a congested link, a reply queued by the broker) is dropped,
otherwise the cloud's time is taken as ``sent_at`` plus half the round trip, so it is
right to within half the round trip.

This needs no trusted clock to work: TLS is checked against the clock floor until the
time is known (``link.py``), so a car whose clock is far off still reaches the cloud to
learn the time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Final

#: Ask again this often while connected.
INTERVAL_S: Final = 3600.0
#: An answer whose round trip took longer than this is not taken.
MAX_ROUND_TRIP_S: Final = 5.0
#: Requests remembered at most (older ones are forgotten: their answers would be late).
_REMEMBERED: Final = 8


@dataclass(frozen=True, slots=True)
class Reading:
    """The cloud's time at a moment of the car's monotonic clock."""

    wall: float
    monotonic: float
    round_trip: float


@dataclass(slots=True)
class ClockExchange:
    """Pending clock requests and the readings their answers give."""

    _asked: dict[str, float] = field(default_factory=dict)
    last_asked: float | None = None
    #: Answers dropped for a slow round trip, or for no request known.
    dropped: int = 0

    def ask(self, monotonic: float) -> str:
        """A new request id, remembered with when it was sent."""
        request_id = str(uuid.uuid4())
        self._asked[request_id] = monotonic
        while len(self._asked) > _REMEMBERED:
            del self._asked[next(iter(self._asked))]
        self.last_asked = monotonic
        return request_id

    def due(self, monotonic: float) -> bool:
        """Whether it is time to ask again."""
        return self.last_asked is None or monotonic - self.last_asked >= INTERVAL_S

    def answer(self, request_id: str, cloud_time: float, monotonic: float) -> Reading | None:
        """The reading an answer gives, or ``None`` (unknown request, or too slow)."""
        asked = self._asked.pop(request_id, None)
        if asked is None or monotonic < asked:
            self.dropped += 1
            return None
        round_trip = monotonic - asked
        if round_trip > MAX_ROUND_TRIP_S:
            self.dropped += 1
            return None
        return Reading(cloud_time + round_trip / 2, monotonic, round_trip)
