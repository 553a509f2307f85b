"""Progress of a long operation on a terminal, or as plain periodic lines in a log.

On a terminal a bar is redrawn in place (at most ten times a second) with the count,
the rate and the time remaining; anywhere else (a pipe, a file, the journal) a plain
line is written every few seconds, so that logs stay readable. Both end with one line
that says how much was done, in how long and how fast. With an unknown total there is
no bar and no remaining time: the count, the rate and the time so far.

Typical use::

    with Progress(total=len(items), unit="frames", label="replay", stream=sys.stderr) as p:
        for item in items:
            ...
            p.advance()

No dependency beyond the standard library: the daemon's commands stay lean.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self, TextIO

#: A terminal's line is redrawn at most this often (seconds).
REFRESH_S: Final = 0.1
#: A plain line is written this often (seconds) when the stream is not a terminal.
PLAIN_INTERVAL_S: Final = 5.0
#: The rate (and so the time remaining) is measured over this recent window (seconds).
RATE_WINDOW_S: Final = 10.0
_BAR_WIDTH: Final = 30
_MIN_BAR_WIDTH: Final = 8
_CLEAR_LINE: Final = "\r\x1b[K"


class Progress:
    """A progress display for ``stream``: a bar on a terminal, periodic lines elsewhere.

    Safe to advance from another thread than the one that created it.

    Args:
        total: How many units there are, or ``None`` if not known (no bar, no ETA).
        unit: What is counted (``"frames"``, ``"events"``), in the plural.
        label: What is going on (``"replay"``), at the start of every line.
        stream: Where to write (standard error, so that standard output stays clean).
        interval: Seconds between plain lines (``PLAIN_INTERVAL_S`` by default).
        terminal: Whether to draw a bar; by default, whether ``stream`` is a terminal.
        clock: A monotonic clock, in seconds (replaceable for tests).
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        unit: str = "items",
        label: str = "progress",
        stream: TextIO,
        interval: float = PLAIN_INTERVAL_S,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total if total is None or total >= 0 else None
        self.unit = unit
        self.label = label
        self._stream = stream
        self._interval = interval
        self.terminal = _is_terminal(stream) if terminal is None else terminal
        self._clock = clock
        self._lock = threading.Lock()
        self.done = 0
        self._start = clock()
        self._last_draw = self._start
        self._samples: deque[tuple[float, int]] = deque([(self._start, 0)])
        self._closed = False
        self._drawn = False

    # -- feeding --------------------------------------------------------------------------

    def advance(self, count: int = 1) -> None:
        """``count`` more units are done."""
        with self._lock:
            self._set(self.done + count)

    def update(self, done: int) -> None:
        """``done`` units are done in all (for callers that poll a counter)."""
        with self._lock:
            self._set(done)

    def set_total(self, total: int | None) -> None:
        """The total became known (or changed, or unknown again)."""
        with self._lock:
            self.total = total

    def _set(self, done: int) -> None:
        if self._closed:
            return
        self.done = done
        now = self._clock()
        self._sample(now)
        if now - self._last_draw >= (REFRESH_S if self.terminal else self._interval):
            self._last_draw = now
            self._write(self._bar_line(now) if self.terminal else self._plain_line(now))

    def _sample(self, now: float) -> None:
        samples = self._samples
        if now - samples[-1][0] >= REFRESH_S / 2 or len(samples) == 1:
            samples.append((now, self.done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()

    # -- figures -----------------------------------------------------------------------------

    def rate(self, now: float | None = None) -> float | None:
        """Units per second lately (over about ``RATE_WINDOW_S``), or ``None`` too early."""
        now = self._clock() if now is None else now
        first_time, first_done = self._samples[0]
        span = now - first_time
        if span <= 0:
            return None
        return (self.done - first_done) / span

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left at the recent rate, or ``None`` if unknown."""
        rate = self.rate(now)
        if self.total is None or rate is None or rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / rate)

    # -- lines -----------------------------------------------------------------------------

    def _counted(self, *, aligned: bool = False) -> str:
        if self.total is None:
            return f"{self.done:,} {self.unit}"
        total = f"{self.total:,}"
        # On a terminal the count keeps its width, so the bar does not jump about.
        done = f"{self.done:>{len(total)},}" if aligned else f"{self.done:,}"
        return f"{done}/{total} {self.unit}"

    def _fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))

    def _figures(self, now: float, *, short: bool = False) -> list[str]:
        rate = self.rate(now)
        per_second = "/s" if short else f" {self.unit}/s"
        figures = [f"{_number(rate)}{per_second}"]
        if self.total is None:
            figures.append(f"{_duration(now - self._start)} elapsed")
        else:
            figures.append(f"ETA {_duration(self.remaining(now))}")
        return figures

    def _plain_line(self, now: float) -> str:
        fraction = self._fraction()
        share = f" ({fraction:.0%})" if fraction is not None else ""
        return f"{self.label}: {self._counted()}{share}, {', '.join(self._figures(now))}\n"

    def _bar_line(self, now: float) -> str:
        fraction = self._fraction()
        figures = " ".join([self._counted(aligned=True), *self._figures(now, short=True)])
        width = _terminal_width(self._stream) - 1  # the last column would wrap on some
        if fraction is None:
            line = f"{self.label} {figures}"
        else:
            rest = f"{self.label} [] {fraction:4.0%} {figures}"
            bar = min(_BAR_WIDTH, width - len(rest))
            if bar >= _MIN_BAR_WIDTH:
                filled = int(fraction * bar)
                line = (
                    f"{self.label} [{'#' * filled}{'.' * (bar - filled)}] {fraction:4.0%} {figures}"
                )
            else:
                line = f"{self.label} {fraction:4.0%} {figures}"
        self._drawn = True
        return _CLEAR_LINE + line[:width]

    def summary(self, now: float | None = None) -> str:
        """The closing line: how many, in how long, how fast (no newline)."""
        now = self._clock() if now is None else now
        elapsed = now - self._start
        average = self.done / elapsed if elapsed > 0 else None
        speed = f", {_number(average)} {self.unit}/s" if average is not None else ""
        of = f" of {self.total:,}" if self.total is not None and self.total != self.done else ""
        return f"{self.label}: {self.done:,}{of} {self.unit} in {_duration(elapsed)}{speed}"

    # -- output ------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: progress is not worth dying for
            self._closed = True

    def close(self) -> None:
        """Write the closing line (replacing the bar on a terminal); idempotent."""
        with self._lock:
            if self._closed:
                return
            line = self.summary()
            self._write((_CLEAR_LINE if self._drawn else "") + line + "\n")
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _terminal_width(stream: TextIO) -> int:
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return 80
    try:
        return os.get_terminal_size(fd).columns or 80
    except OSError:
        return shutil.get_terminal_size().columns


def _number(value: float | None) -> str:
    """A rate for people: thousands separated, one decimal below 100."""
    if value is None:
        return "?"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _duration(seconds: float | None) -> str:
    """``4.2 s`` under 10 s, ``42 s`` under a minute, then ``12:05``, ``1:02:03``."""
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
