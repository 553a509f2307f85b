"""Rate-limited logging: the first occurrence of a problem is logged, repeats are summarised."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable


class RateLimitedLog:
    """Logs a warning per key at most once per interval, with the count of what was held back.

    A bus that sends the same garbage frame 100 times a second must not flood the
    journal, but the operator must still see that it is happening and how often.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def warning(self, key: Hashable, message: str, *args: object) -> None:
        """Log ``message % args`` unless ``key`` was logged less than an interval ago."""
        now = self._clock()
        if now < self._next.get(key, float("-inf")):
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._next[key] = now + self._interval
        if held:
            self._logger.warning("%s (%d more since the last report)", message % args, held)
        else:
            self._logger.warning(message, *args)
