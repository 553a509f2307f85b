"""The state codec: the agent's state as JSON sections, and an agent restarted from them."""

from __future__ import annotations

import json
import logging
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import state_codec
from agent.benefits import Wallet
from agent.booking import BookingStatus, Slot
from agent.cards import CardKind
from agent.context import AgentConfig
from agent.core import AgentState
from agent.policy import PolicyConfig
from agent.rule_model import RuleSetDocument
from agent.sections import VEHICLE_SECTIONS, Section
from agent.signals import IGNITION, IS_CHARGING, STATE_OF_CHARGE
from tests.agent.conftest import DAY, HOUR, T0, Car, all_consent, make_agent, serviced_at

WALLET = Wallet.model_validate(
    {
        "version": 3,
        "tier": "gold",
        "points": 1200,
        "dealer_id": "D-9",
        "dealer_name": {"zh-CN": "朝阳店", "en": "Chaoyang"},
        "birthday": "12-31",
        "coupons": [
            {
                "id": "coffee",
                "title": {"zh-CN": "咖啡", "en": "Coffee"},
                "body": {"zh-CN": "一杯", "en": "One cup"},
                "scenes": ["charging_started"],
                "quota": 2,
                "valid_until": T0 + 30 * DAY,
            }
        ],
    }
)
RULES = RuleSetDocument.model_validate(
    {
        "version": 4,
        "rules": [
            {
                "id": "ops.soc",
                "version": 2,
                "trigger": {"signal": {"path": STATE_OF_CHARGE, "op": "<", "value": 20}},
                "card": {
                    "key": "ops:soc",
                    "kind": "campaign",
                    "title": {"zh-CN": "电量低", "en": "Battery low {value}"},
                    "body": {"zh-CN": "充电", "en": "Charge"},
                },
                "caps": {"per_day": 1, "total": 5},
            }
        ],
    }
)


def rich_car() -> tuple[Car, dict[str, str]]:
    """A car with something in every section; returns it and its booking request id."""
    car = Car(make_agent(AgentConfig(policy=PolicyConfig(max_visible=6))))
    all_consent(car)
    car.trust_clock()
    car.history(serviced_at(0, T0 - 100 * DAY))
    car.keep(car.agent.set_wallet(WALLET, car.wall, car.mono))
    car.keep(car.agent.set_rules(RULES, car.wall, car.mono))
    car.send((IGNITION, "ON"))
    car.park()
    car.odometer_km(9_000)  # maintenance card
    car.dtcs("P0301", "P0524")  # two fault cards
    car.send((STATE_OF_CHARGE, 10.0))  # campaign card
    car.send((IS_CHARGING, True))  # benefit card
    ids: dict[str, str] = {}
    benefit = car.card("benefit:coffee")
    assert benefit is not None
    out = car.tap(benefit, "redeem")
    ids["redemption"] = str(out.events[-1].request_id)
    maintenance = car.card("maintenance")
    assert maintenance is not None
    out = car.tap(maintenance, "book")
    slots_request = str(out.events[-1].request_id)
    car.slots(slots_request, Slot("s1", T0 + 3 * DAY, None), Slot("s2", T0 + 4 * DAY, None))
    out = car.keep(car.agent.request_booking(maintenance.id, "s1", car.wall, car.mono))
    ids["booking"] = str(out.events[-1].request_id)
    fault = car.card("fault:misfire")
    assert fault is not None
    car.tap(fault, "dismiss")
    car.tick(HOUR)
    return car, ids


@cache
def rich_sections() -> tuple[str, ...]:
    car, _ = rich_car()
    return tuple(json.dumps([k, v]) for k, v in state_codec.encode(car.agent).items())


def good_sections() -> dict[str, str]:
    return dict(json.loads(x) for x in rich_sections())


def test_every_section_is_encoded() -> None:
    assert set(good_sections()) == set(state_codec.SECTIONS)


def test_encode_decode_keeps_the_state() -> None:
    car, _ = rich_car()
    before = car.agent.state()
    after = state_codec.decode(state_codec.encode(car.agent))
    assert after.odometer_m == before.odometer_m
    assert after.drive_cycle == before.drive_cycle
    assert after.clock.last_trusted == before.clock.last_trusted
    assert after.plan == before.plan
    assert after.catalogue == before.catalogue
    assert after.maintenance == before.maintenance
    assert dict(after.announced) == dict(before.announced)
    assert after.wallet == before.wallet
    assert dict(after.offered) == dict(before.offered)
    assert after.consent == before.consent
    assert dict(after.scenes) == dict(before.scenes)
    assert after.cloud_rules == before.cloud_rules
    assert after.rule_state == before.rule_state
    assert after.cards is not None
    assert before.cards is not None
    assert after.cards.cards == before.cards.cards
    assert after.cards.shown_log == before.cards.shown_log
    assert dict(after.cards.dismissed) == dict(before.cards.dismissed)
    assert after.bookings == before.bookings
    assert after.redemptions == before.redemptions
    # And encoding again gives the same text.
    again = make_agent(state=after)
    some = {Section.MAINTENANCE, Section.CARDS, Section.FLOWS, Section.WALLET}
    assert state_codec.encode(again, some) == state_codec.encode(car.agent, some)


def test_a_restarted_agent_carries_on() -> None:
    car, ids = rich_car()
    open_cards = {c.id: (c.key, c.state, c.pending) for c in car.agent.cards.cards}
    restarted = car.restarted()
    agent = restarted.agent
    assert {c.id: (c.key, c.state, c.pending) for c in agent.cards.cards} == open_cards
    assert agent.maintenance == car.agent.maintenance
    assert agent.announced == car.agent.announced
    assert agent.wallet == car.agent.wallet
    assert agent.rules.cloud_version == 4
    assert not agent.clock.read(restarted.wall, restarted.mono).trusted
    # The car tells its story again after the restart: nothing is posted twice.
    restarted.send((IGNITION, "ON"))
    restarted.park()
    restarted.odometer_km(9_000.5)
    restarted.dtcs("P0301", "P0524")
    restarted.send((STATE_OF_CHARGE, 9.0))
    restarted.send((IS_CHARGING, True))
    restarted.trust_clock()
    restarted.tick(60)
    assert restarted.events_of("card.created") == []
    assert restarted.events_of("fault.detected") == []
    assert restarted.events_of("maintenance.reminder") == []
    assert restarted.events_of("benefit.offered") == []
    assert {c.id for c in agent.cards.visible} == {c.id for c in car.agent.cards.visible}
    # Answers to requests made before the restart are still awaited.
    out = restarted.keep(
        agent.on_booking_answer(
            ids["booking"], BookingStatus.CONFIRMED, restarted.wall, restarted.mono
        )
    )
    assert [e.type for e in out.events if e.type.startswith("booking.")] == ["booking.confirmed"]
    assert restarted.card("maintenance") is None
    assert restarted.card("booking:maintenance") is not None
    out = restarted.keep(
        agent.on_redemption_answer(
            ids["redemption"], accepted=True, wall=restarted.wall, monotonic=restarted.mono
        )
    )
    assert [e.type for e in out.events if e.type.startswith("redemption.")] == [
        "redemption.confirmed"
    ]
    redeemed = restarted.card("benefit:coffee")  # now the driver's confirmation
    assert redeemed is not None
    assert redeemed.title.en == "Redeemed"
    # The dismissed fault stays dismissed; the rule caps carried over.
    assert restarted.card("fault:misfire") is None
    restarted.send((STATE_OF_CHARGE, 50.0))
    restarted.send((STATE_OF_CHARGE, 5.0))
    assert restarted.events_of("card.updated") == []  # ops.soc: once per day


def test_the_restarted_agent_behaves_like_the_original() -> None:
    original, _ = rich_car()
    restarted = original.restarted()
    for car in (original, restarted):
        car.wall = original.wall + 10
        car.trust_clock()
        car.send((IGNITION, "ON"))
        car.park()
        car.dtcs("P0301", "P0524")
        car.send((IS_CHARGING, True))
        car.send((STATE_OF_CHARGE, 10.0))
    start = (len(original.outputs), len(restarted.outputs))

    def script(car: Car) -> None:
        car.odometer_km(10_000)  # escalates
        car.dtcs("P0524")
        car.drive()
        car.odometer_km(10_600)
        car.park()
        car.tick(DAY)
        car.send((IS_CHARGING, False))
        car.send((IS_CHARGING, True))
        for card in list(car.agent.cards.visible):
            if card.kind is CardKind.FAULT:
                car.dismiss(card)
        car.tick(3 * DAY)

    script(original)
    script(restarted)

    def story(car: Car, skip: int) -> list[tuple[Any, ...]]:
        seen: list[tuple[Any, ...]] = []
        for out in car.outputs[skip:]:
            seen += [(e.type, e.payload.get("key"), e.category) for e in out.events]
            seen += [(c.type, c.card.key, c.card.title.en, c.reason) for c in out.changes]
        return seen

    assert story(original, start[0]) == story(restarted, start[1])
    assert [c.id for c in original.agent.cards.cards if c.key == "maintenance"] == [
        c.id for c in restarted.agent.cards.cards if c.key == "maintenance"
    ]


def test_missing_sections_are_defaults() -> None:
    assert state_codec.decode({}) == AgentState()
    sections = good_sections()
    del sections["cards"]
    state = state_codec.decode(sections)
    assert state.cards is None
    assert state.wallet == WALLET
    assert state_codec.decode({"unknown": "{}"}) == AgentState()


@pytest.mark.parametrize("section", state_codec.SECTIONS)
@pytest.mark.parametrize("text", ["not json", "[]", "5", '"text"', "{}", '{"x": 1}'])
def test_a_malformed_section_is_reset_and_logged(
    section: str, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    sections = good_sections()
    sections[section] = text
    with caplog.at_level(logging.ERROR, logger="agent.state_codec"):
        state = state_codec.decode(sections)
    reset = [r for r in caplog.records if section in r.getMessage()]
    others = state_codec.decode({k: v for k, v in sections.items() if k != section})
    if reset:
        assert "starting it afresh" in reset[0].getMessage()
        assert state == others  # the section was dropped, the others kept
    survive(state)


def survive(state: AgentState) -> Car:
    """An agent from ``state`` takes a busy day without raising."""
    car = Car(make_agent(state=state))
    all_consent(car)
    car.send((IGNITION, "ON"))
    car.park()
    car.odometer_km(9_500)
    car.dtcs("P0301", "P0171")
    car.send((IS_CHARGING, True))
    car.send((STATE_OF_CHARGE, 10.0))
    car.send((IS_CHARGING, False))
    car.drive()
    car.odometer_km(12_000)
    car.park()
    car.send((IGNITION, "OFF"))
    car.tick(DAY)
    car.trust_clock()
    car.tick(40 * DAY)
    car.send((IGNITION, "ON"))
    car.park()
    for card in list(car.agent.cards.visible):
        if card.actions and card in car.agent.cards.visible:
            car.tap(card, card.actions[-1].key)
    while car.agent.cards.visible:
        car.dismiss(car.agent.cards.visible[0])
    car.tick(HOUR)
    return car


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=6,
    )


def mutate(node: Any, data: st.DataObject, value: Any) -> Any:
    """``node`` with one subtree (chosen by ``data``) replaced by ``value``."""
    if isinstance(node, dict) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node)))
        return {**node, key: mutate(node[key], data, value)}
    if isinstance(node, list) and node and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(node) - 1))
        return [*node[:index], mutate(node[index], data, value), *node[index + 1 :]]
    return value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    section=st.sampled_from(
        [s for s in state_codec.SECTIONS if s not in ("plan", "catalogue")]  # pydantic-checked
    ),
    value=json_values(),
    data=st.data(),
)
def test_a_damaged_section_never_crashes_the_agent(
    section: str, value: Any, data: st.DataObject
) -> None:
    sections = good_sections()
    sections[section] = json.dumps(mutate(json.loads(sections[section]), data, value))
    logging.disable(logging.ERROR)
    try:
        state = state_codec.decode(sections)
    finally:
        logging.disable(logging.NOTSET)
    survive(state)


def test_wipe_sections_are_the_vehicles() -> None:
    assert set(VEHICLE_SECTIONS) <= set(state_codec.SECTIONS)
    assert Section.CONSENT not in VEHICLE_SECTIONS
    assert Section.WALLET not in VEHICLE_SECTIONS


def test_a_name_that_is_no_section_is_refused_not_skipped() -> None:
    # A typo used to be skipped silently: the change it named was never persisted.
    car = make_agent()
    with pytest.raises(ValueError, match="not state sections"):
        state_codec.encode(car, {"card"})  # type: ignore[arg-type]


def test_what_only_the_dirty_sections_carry_is_enough() -> None:
    """The daemon writes only the sections each output dirtied: nothing may be missed."""
    car = Car(make_agent())
    all_consent(car)
    car.history(serviced_at(0, T0 - 100 * DAY))
    car.keep(car.agent.set_wallet(WALLET, car.wall, car.mono))
    car.trust_clock()
    car.park()
    car.odometer_km(9_000)  # the milestone mark is set with the first reading
    car.send((IS_CHARGING, True))  # charging session 1: the coffee coupon
    maintenance = car.card("maintenance")
    assert maintenance is not None
    request_id = str(car.tap(maintenance, "book").events[-1].request_id)
    car.slots(request_id, Slot("s1", car.wall + 2 * DAY, None))
    out = car.keep(car.agent.request_booking(maintenance.id, "s1", car.wall, car.mono))
    booking = str(out.events[-1].request_id)
    car.keep(car.agent.on_booking_answer(booking, BookingStatus.CONFIRMED, car.wall, car.mono))
    assert car.agent.maintenance.booked_until is not None
    restarted = car.restarted()
    agent = restarted.agent
    assert agent.maintenance == car.agent.maintenance  # booked_until, milestone mark
    assert agent.scenes["charging_sessions"] == 1
    # The next session is a new occurrence: its coupon is offered, not taken for the first.
    coffee = restarted.card("benefit:coffee")
    assert coffee is not None
    restarted.trust_clock()
    restarted.park()
    restarted.send((IS_CHARGING, False))
    restarted.dismiss(coffee)
    restarted.tick(4 * HOUR)
    restarted.send((IS_CHARGING, True))
    assert [e.payload["coupon_id"] for e in restarted.events_of("benefit.offered")] == ["coffee"]
