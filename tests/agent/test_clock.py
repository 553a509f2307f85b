"""The clock model (agent/clock.py, docs/time.md): sources, plausibility, the floor."""

from __future__ import annotations

from agent.clock import EARLIEST, LATEST, ClockState, Now, Rejection, TimeSource
from tests.agent.conftest import T0


def _set(clock: ClockState, wall: float, mono: float, source: TimeSource) -> ClockState:
    result = clock.set_trusted(wall, mono, source)
    assert isinstance(result, ClockState), result
    return result


def test_an_untrusted_clock_reads_the_system_clock_never_below_the_floor() -> None:
    clock = ClockState(last_trusted=T0).after_restart(10.0)
    now = clock.read(T0 + 50, 15.0)
    assert (now.wall, now.trusted, now.monotonic) == (T0 + 50, False, 15.0)
    assert now.floor == T0 + 5  # the mark plus the time this run has been up
    # The RTC lost a day: the estimate is the floor, never before it.
    assert clock.read(T0 - 86_400, 20.0).wall == T0 + 10


def test_an_implausible_system_clock_is_not_the_estimate() -> None:
    clock = ClockState(last_trusted=T0).after_restart(0.0)
    assert clock.read(4_294_967_295.0, 1.0).wall == T0 + 1  # 2106: all ones
    assert clock.read(0.0, 1.0).wall == T0 + 1  # 1970
    fresh = ClockState().after_restart(0.0)
    assert fresh.read(0.0, 0.0).wall == EARLIEST  # no mark yet: this build's release


def test_a_trusted_anchor_runs_on_the_monotonic_clock() -> None:
    clock = _set(ClockState(), T0, 100.0, TimeSource.GNSS)
    now = clock.read(0.0, 160.0)  # the system clock says 1970
    assert now.trusted
    assert now.wall == now.floor == T0 + 60
    assert clock.set_trusted(T0 + 61, 160.0, TimeSource.GNSS) is clock  # within the threshold
    moved = _set(clock, T0 + 600, 160.0, TimeSource.CLOUD)
    assert moved.read(0.0, 160.0).wall == T0 + 600
    assert moved.source is TimeSource.CLOUD


def test_a_worse_source_never_overrides_a_better_one() -> None:
    clock = _set(ClockState(), T0, 0.0, TimeSource.CLOUD)
    refused = clock.set_trusted(T0 - 30 * 86_400, 1.0, TimeSource.GNSS)  # a month off
    assert isinstance(refused, Rejection)
    assert "cloud" in refused.reason
    assert clock.set_trusted(T0 + 1.5, 1.0, TimeSource.NTP) is clock  # agrees: nothing to do


def test_times_outside_the_plausible_range_are_refused() -> None:
    for wall in (0.0, EARLIEST - 1, LATEST + 1, 4_294_967_295.0):
        assert isinstance(ClockState().set_trusted(wall, 0.0, TimeSource.CLOUD), Rejection)


def test_no_going_back_past_the_mark_unless_a_source_as_good_says_so() -> None:
    gnss = _set(ClockState(), T0, 0.0, TimeSource.GNSS)
    gnss = gnss.remember(gnss.read(0.0, 100.0)).after_restart(0.0)
    assert gnss.last_trusted == T0 + 100
    assert isinstance(gnss.set_trusted(T0 - 3600, 1.0, TimeSource.GNSS), ClockState)
    cloud = _set(ClockState(), T0, 0.0, TimeSource.CLOUD).after_restart(0.0)
    # GNSS may not undo what the cloud set...
    assert isinstance(cloud.set_trusted(T0 - 3600, 1.0, TimeSource.GNSS), Rejection)
    # ...but the cloud may undo what a wrong GNSS set: the way back from a bad mark.
    wrong = _set(ClockState(), T0 + 10 * 365 * 86_400, 0.0, TimeSource.GNSS).after_restart(0.0)
    fixed = _set(wrong, T0, 1.0, TimeSource.CLOUD)
    assert fixed.last_trusted == T0
    assert fixed.last_source is TimeSource.CLOUD


def test_a_corrupt_mark_is_forgotten_at_a_restart() -> None:
    clock = ClockState(last_trusted=4_294_967_295.0, last_source=TimeSource.GNSS)
    restarted = clock.after_restart(0.0)
    assert restarted.last_trusted is None
    assert restarted.last_source is TimeSource.NONE


def test_remember_ignores_untrusted_and_older_times() -> None:
    clock = ClockState(last_trusted=T0)
    assert clock.remember(clock.read(T0 + 10, 0.0)) is clock
    anchored = ClockState(anchor_wall=T0 - 10, anchor_monotonic=0.0, last_trusted=T0)
    assert anchored.remember(anchored.read(0.0, 5.0)) is anchored
    assert anchored.remember(Now(T0 + 5, True, 15.0, T0 + 5)).last_trusted == T0 + 5
