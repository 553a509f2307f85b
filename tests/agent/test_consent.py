"""Consent: per category, with a validity; nothing without it leaves the car."""

from __future__ import annotations

import pytest

from agent.benefits import Wallet
from agent.cards import ChangeType
from agent.consent import CONSENTABLE, MAX_VALIDITY_S, Category, ConsentState
from agent.core import Agent
from tests.agent.conftest import DAY, HOUR, IS_CHARGING, T0, Car, make_agent, serviced_at


def test_nothing_is_allowed_by_default_but_service_requests() -> None:
    state = ConsentState()
    for category in CONSENTABLE:
        assert not state.allows(category, T0)
    assert state.allows(Category.SERVICE_REQUESTS, T0)


def test_a_grant_with_a_validity_expires() -> None:
    state = ConsentState().set(Category.MARKETING, granted=True, now=T0, valid_for=DAY)
    assert state.allows(Category.MARKETING, T0)
    assert state.allows(Category.MARKETING, T0 + DAY - 1)
    assert not state.allows(Category.MARKETING, T0 + DAY)
    assert not state.allows(Category.VEHICLE_HEALTH, T0)
    withdrawn = state.set(Category.MARKETING, granted=False, now=T0 + 1)
    assert not withdrawn.allows(Category.MARKETING, T0 + 2)


def test_service_requests_and_bad_validities_are_refused() -> None:
    with pytest.raises(ValueError, match="not a consent category"):
        ConsentState().set(Category.SERVICE_REQUESTS, granted=False, now=T0)
    with pytest.raises(ValueError, match="positive"):
        ConsentState().set(Category.LOCATION, granted=True, now=T0, valid_for=0)


def test_consent_round_trips_through_json() -> None:
    state = ConsentState().set(Category.MARKETING, granted=True, now=T0, valid_for=DAY)
    state = state.set(Category.LOCATION, granted=False, now=T0)
    data = state.to_json()
    data["from_the_future"] = {"granted": True}
    assert ConsentState.from_json(data) == state


def test_events_without_consent_are_suppressed_and_counted() -> None:
    car = Car(make_agent())
    car.history(serviced_at(0, T0))
    car.park()
    out = car.odometer_km(9_000)
    assert out.events == []
    assert out.suppressed[Category.VEHICLE_HEALTH.value] == 1  # the reminder
    assert out.suppressed[Category.USAGE_ANALYTICS.value] >= 2  # card created, displayed
    assert car.visible()  # the driver still gets the card: consent is about data leaving


def test_requests_the_driver_makes_always_pass() -> None:
    car = Car(make_agent())
    car.history(serviced_at(0, T0))
    car.park()
    car.odometer_km(9_000)
    [card] = car.visible()
    out = car.tap(card, "book")
    assert [e.type for e in out.events] == ["request.booking_slots"]
    assert out.suppressed[Category.USAGE_ANALYTICS.value] >= 1  # the tap itself


def test_a_consent_change_is_always_reported() -> None:
    car = Car(make_agent())
    car.consent(Category.LOCATION, granted=False)
    [event] = car.events_of("consent.changed")
    assert event.category is Category.SERVICE_REQUESTS
    assert event.payload == {"category": "location", "granted": False, "valid_for_s": None}


def test_consent_that_runs_out_stops_events(car: Car) -> None:
    agent: Agent = car.agent
    car.consent(Category.MARKETING, valid_for=HOUR)
    wallet = Wallet.model_validate(
        {
            "version": 1,
            "coupons": [
                {
                    "id": "c1",
                    "title": {"zh-CN": "券", "en": "Coupon"},
                    "body": {"zh-CN": "券", "en": "Coupon"},
                    "scenes": ["charging_started"],
                    "quota": 5,
                }
            ],
        }
    )
    car.keep(agent.set_wallet(wallet, car.wall, car.mono))
    car.tick(HOUR)
    out = car.send((IS_CHARGING, True))
    assert [c.type for c in out.changes] == [ChangeType.ADDED]
    assert [e for e in out.events if e.category is Category.MARKETING] == []
    assert out.suppressed[Category.MARKETING.value] >= 3  # offered, created, displayed


@pytest.mark.parametrize("valid_for", [MAX_VALIDITY_S + 1, 9.3e12, float("inf"), float("nan")])
def test_a_validity_beyond_ten_years_is_refused(valid_for: float) -> None:
    with pytest.raises(ValueError, match="at most"):
        ConsentState().set(Category.MARKETING, granted=True, now=T0, valid_for=valid_for)


def test_ten_years_is_the_longest_validity() -> None:
    state = ConsentState().set(Category.MARKETING, granted=True, now=T0, valid_for=MAX_VALIDITY_S)
    assert state.grants[Category.MARKETING].expires_at == T0 + MAX_VALIDITY_S


def test_stored_times_that_are_no_finite_number_read_as_none() -> None:
    huge = 10**400  # JSON allows it; float() of it raises OverflowError
    state = ConsentState.from_json({
        "marketing_benefits": {"granted": True, "granted_at": huge, "expires_at": float("inf")},
        "location": {"granted": True, "granted_at": T0, "expires_at": float("nan")},
        "usage_analytics": {"granted": True, "granted_at": True, "expires_at": T0 + 9.3e12},
    })  # fmt: skip
    marketing = state.grants[Category.MARKETING]
    assert (marketing.granted_at, marketing.expires_at) == (None, None)
    assert state.grants[Category.LOCATION].expires_at is None
    analytics = state.grants[Category.USAGE_ANALYTICS]
    assert (analytics.granted_at, analytics.expires_at) == (None, T0 + 9.3e12)
