"""The progress display: a bar on a terminal, periodic plain lines elsewhere."""

from __future__ import annotations

import io
import re

from touchpoint.progress import PLAIN_INTERVAL_S, Progress


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is a terminal (and has no file descriptor: 80 columns)."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_every_interval_with_rate_and_eta() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress(1000, unit="frames", label="replay", stream=out, clock=clock) as progress:
        assert not progress.terminal
        for _ in range(10):  # 100 frames a second for 10 s
            clock.now += 1
            progress.advance(100)
    lines = out.getvalue().splitlines()

    # One line per 5 s, then the closing line; nothing redrawn in place.
    assert lines == [
        "replay: 500/1,000 frames (50%), 100 frames/s, ETA 5.0 s",
        "replay: 1,000/1,000 frames (100%), 100 frames/s, ETA 0.0 s",
        "replay: 1,000 frames in 10 s, 100 frames/s",
    ]
    assert "\r" not in out.getvalue()


def test_nothing_before_the_first_interval_but_the_closing_line() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress(None, unit="events", label="drain", stream=out, clock=clock) as progress:
        clock.now += PLAIN_INTERVAL_S / 2
        progress.advance(3)

    assert out.getvalue() == "drain: 3 events in 2.5 s, 1.2 events/s\n"


def test_an_unknown_total_gives_count_rate_and_elapsed_time() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(unit="frames", label="replay", stream=out, clock=clock, interval=1.0)
    for _ in range(3):
        clock.now += 1
        progress.advance(20_000)
    progress.close()
    lines = out.getvalue().splitlines()

    assert lines[0] == "replay: 20,000 frames, 20,000 frames/s, 1.0 s elapsed"
    assert lines[2] == "replay: 60,000 frames, 20,000 frames/s, 3.0 s elapsed"
    assert "ETA" not in out.getvalue()
    assert lines[-1] == "replay: 60,000 frames in 3.0 s, 20,000 frames/s"


def test_a_terminal_gets_a_bar_redrawn_in_place_then_the_closing_line() -> None:
    clock, out = Clock(), Terminal()
    with Progress(135_468, unit="frames", label="replay", stream=out, clock=clock) as progress:
        assert progress.terminal
        for _ in range(4):
            clock.now += 0.5
            progress.advance(10_000)
    text = out.getvalue()
    frames = text.split("\r\x1b[K")[1:]

    assert len(frames) == 5  # four redraws and the closing line, each over the last
    first = re.fullmatch(
        r"replay \[(#*)(\.*)\]   7%  10,000/135,468 frames 20,000/s ETA 6.3 s", frames[0]
    )
    assert first is not None
    bar = len(first[1]) + len(first[2])
    assert len(first[1]) == int(bar * 10_000 / 135_468)
    assert frames[3].startswith(f"replay [{'#' * int(bar * 40_000 / 135_468)}.")
    assert "  30%  40,000/135,468 frames 20,000/s ETA 4.8 s" in frames[3]
    assert all("\n" not in f and len(f) < 80 for f in frames[:-1])
    assert frames[-1] == "replay: 40,000 of 135,468 frames in 2.0 s, 20,000 frames/s\n"


def test_a_terminal_is_redrawn_at_most_ten_times_a_second() -> None:
    clock, out = Clock(), Terminal()
    progress = Progress(1000, stream=out, clock=clock)
    for _ in range(100):
        clock.now += 0.01
        progress.advance()

    assert 9 <= out.getvalue().count("\r") <= 10  # 1 s of steps, summed in floating point


def test_the_eta_follows_the_recent_rate() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(10_000, stream=out, clock=clock)
    for _ in range(20):  # 100/s for 20 s, then 1,000/s
        clock.now += 1
        progress.advance(100)
    for _ in range(20):
        clock.now += 1
        progress.advance(1000)

    rate = progress.rate()
    remaining = progress.remaining()
    assert rate is not None
    assert 900 <= rate <= 1000  # the slow start has left the window
    assert remaining is not None
    assert remaining < 10


def test_update_takes_an_absolute_count_and_close_is_idempotent() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(10, unit="frames", label="x", stream=out, clock=clock)
    clock.now += 1
    progress.update(7)
    progress.close()
    progress.close()
    progress.advance(3)  # after close: ignored

    assert out.getvalue() == "x: 7 of 10 frames in 1.0 s, 7.0 frames/s\n"


def test_a_closed_stream_stops_the_output_without_an_error() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(10, stream=out, clock=clock, interval=1)
    out.close()
    clock.now += 2
    progress.advance()
    progress.close()
