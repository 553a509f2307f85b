"""The agent on the clock model: what went wrong when time came from several places.

Each test reproduces a failure found outside the scripted demo (issue 11): a GNSS
receiver's "no time" taken for a time, a drive that lasted minus two weeks, things dated
by a wrong system clock living years too long.
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.cards import CardKind
from agent.clock import EARLIEST, LATEST, TimeSource
from agent.consent import Category
from agent.events import EventType
from agent.signals import GNSS_FIX, GNSS_TIME, IGNITION
from tests.agent.conftest import DAY, HOUR, T0, Car, all_consent, make_agent, serviced_at


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def test_a_gnss_time_of_all_ones_never_sets_the_clock() -> None:
    car = Car(make_agent())
    all_consent(car)
    # Without a fix, and then with one: 0xFFFFFFFF seconds is the year 2106.
    car.send((GNSS_FIX, "NONE"), (GNSS_TIME, _iso(4_294_967_295)))
    car.send((GNSS_FIX, "THREE_D"), (GNSS_TIME, _iso(4_294_967_295 - 10)))
    assert not _trusted(car)
    assert car.agent.clock_rejections[TimeSource.GNSS] == 1  # the one with a fix
    car.park()
    assert car.events
    assert all(EARLIEST <= e.time <= LATEST for e in car.events)
    assert not any(e.time_trusted for e in car.events)


def _trusted(car: Car) -> bool:
    return car.agent.clock.trusted


def test_a_gnss_time_needs_a_fix() -> None:
    car = Car(make_agent())
    car.send((GNSS_FIX, "NONE"), (GNSS_TIME, _iso(T0)))
    assert not _trusted(car)
    car.send((GNSS_FIX, "TWO_D"), (GNSS_TIME, _iso(T0 + 1)))
    assert _trusted(car)
    assert car.agent.clock.source is TimeSource.GNSS


def test_a_drive_that_the_clock_corrected_midway_has_its_true_duration() -> None:
    car = Car(make_agent(), wall=T0 + 15 * DAY)  # the system clock is 15 days ahead
    all_consent(car)
    car.send((IGNITION, "ON"))
    car.advance(20 * 60)
    car.send((GNSS_FIX, "THREE_D"), (GNSS_TIME, _iso(T0 + 20 * 60)))  # the truth arrives
    car.advance(10 * 60)
    car.send((IGNITION, "OFF"))
    [summary] = car.events_of(EventType.DRIVE_SUMMARY)
    assert summary.payload["duration_min"] == 30.0
    assert summary.time_trusted


def test_a_card_dated_by_a_wrong_clock_moves_when_the_clock_is_trusted() -> None:
    car = Car(make_agent(), wall=T0 + 4 * 365 * DAY)  # the system clock is years ahead
    all_consent(car)
    car.park()
    car.send((IGNITION, "ON"))
    car.agent.set_consent(
        Category.MARKETING, granted=True, valid_for=2 * HOUR, wall=car.wall, monotonic=car.mono
    )
    car.keep(car.agent.on_time(TimeSource.CLOUD, T0, car.wall, car.mono))
    grant = car.agent.consent.grants[Category.MARKETING]
    assert grant.expires_at is not None
    assert abs(grant.expires_at - (T0 + 2 * HOUR)) < 1.0  # moved with the correction
    assert car.agent.consent.allows(Category.MARKETING, T0 + HOUR)
    assert not car.agent.consent.allows(Category.MARKETING, T0 + 3 * HOUR)
    [trusted] = car.events_of(EventType.CLOCK_TRUSTED)
    assert trusted.payload["source"] == "cloud"
    assert trusted.payload["trusted_before"] is False


def test_a_snooze_ends_by_the_floor_not_by_an_untrusted_clock_jumping_ahead() -> None:
    car = Car(make_agent())
    all_consent(car)
    car.history(serviced_at(0, T0 - 100 * DAY))
    car.park()
    car.odometer_km(14_900)  # the oil service is due soon: a card
    [card] = car.visible(CardKind.MAINTENANCE)
    car.tap(card, "snooze")
    assert car.visible(CardKind.MAINTENANCE) == []
    car.wall += 400 * DAY  # the system clock jumps a year ahead; the car was up a minute
    car.advance(60)
    car.tick()
    assert car.visible(CardKind.MAINTENANCE) == []  # still snoozed
    # The cloud's time dates the snooze afresh: it was made a minute ago, whatever the
    # calendar says, and lasts its days from then.
    car.keep(car.agent.on_time(TimeSource.CLOUD, T0 + 30 * DAY, car.wall, car.mono))
    car.tick()
    assert car.visible(CardKind.MAINTENANCE) == []
    car.advance(car.agent.plan.snooze_days * DAY)
    car.tick()
    assert [c.key for c in car.visible(CardKind.MAINTENANCE)] == ["maintenance"]
