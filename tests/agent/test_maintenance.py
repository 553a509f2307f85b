"""The maintenance engine, pure: per-item states, and when to remind the driver."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import maintenance as mnt
from agent.clock import Now
from agent.maintenance import ItemState
from agent.plan import DAY, LocalisedText, ServiceItem, ServicePlan, ServiceRecord
from agent.signals import OIL_LIFE
from agent.vehicle import VehicleState
from can_signals.update import SignalValue
from tests.agent.conftest import T0

PAD_FRONT = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Brake.PadWear"
PAD_REAR = "Vehicle.Chassis.Axle.Row2.Wheel.Right.Brake.PadWear"
TYRE_LOW = "Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.IsPressureLow"


def name(text: str) -> LocalisedText:
    return LocalisedText.model_validate({"zh-CN": text, "en": text})


def item(item_id: str = "x", **fields: object) -> ServiceItem:
    return ServiceItem.model_validate(
        {"id": item_id, "name": {"zh-CN": "项", "en": "item"}, **fields}
    )


def car_at(km: float | None, **signals: SignalValue) -> VehicleState:
    return VehicleState(
        signals=MappingProxyType(dict(signals)),
        odometer_m=None if km is None else round(km * 1000),
    )


def signals_car(km: float | None, signals: dict[str, SignalValue]) -> VehicleState:
    return VehicleState(
        signals=MappingProxyType(signals), odometer_m=None if km is None else round(km * 1000)
    )


def trusted(wall: float = T0) -> Now:
    return Now(wall, True, 0.0)


def untrusted(wall: float = T0) -> Now:
    return Now(wall, False, 0.0)


def record(km: float, when: float | None = T0 - 100 * DAY, *items: str) -> ServiceRecord:
    return ServiceRecord(items=items or ("x",), odometer_km=km, time=when)


# -- per item: distance ----------------------------------------------------------------


@pytest.mark.parametrize("interval_km", [3_000.0, 10_000.0, 15_000.0, 40_000.0, 100_000.0])
def test_distance_lead_window_is_the_larger_of_1000_km_and_a_tenth(interval_km: float) -> None:
    it = item(interval_km=interval_km)
    lead_km = max(1_000.0, interval_km / 10)
    overdue_km = max(500.0, interval_km / 20)
    base = 5_000.0
    last = record(base)

    def state(km: float) -> ItemState:
        return mnt.assess_item(it, last, round(km * 1000), trusted(), car_at(km)).state

    due_at = base + interval_km
    assert state(due_at - lead_km - 0.001) is ItemState.OK
    assert state(due_at - lead_km) is ItemState.DUE_SOON
    assert state(due_at - 0.001) is ItemState.DUE_SOON
    assert state(due_at) is ItemState.DUE
    assert state(due_at + overdue_km - 0.001) is ItemState.DUE
    assert state(due_at + overdue_km) is ItemState.OVERDUE
    got = mnt.assess_item(it, last, round((due_at - 123) * 1000), trusted(), car_at(0))
    assert got.remaining_km == pytest.approx(123)
    assert got.reason == "distance"


def test_explicit_lead_and_overdue_margins_win() -> None:
    it = item(interval_km=10_000, lead_km=200, overdue_km=50)
    last = record(0)

    def state(km: float) -> ItemState:
        return mnt.assess_item(it, last, round(km * 1000), trusted(), car_at(km)).state

    assert state(9_799) is ItemState.OK
    assert state(9_800) is ItemState.DUE_SOON
    assert state(10_049) is ItemState.DUE
    assert state(10_050) is ItemState.OVERDUE


def test_no_service_record_counts_from_zero_and_no_odometer_decides_nothing() -> None:
    it = item(interval_km=10_000)
    assert (
        mnt.assess_item(it, None, 9_500_000, trusted(), car_at(9_500)).state is ItemState.DUE_SOON
    )
    unknown = mnt.assess_item(it, None, None, trusted(), car_at(None))
    assert unknown.state is ItemState.OK
    assert unknown.remaining_km is None


# -- per item: time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_since", "expected"),
    [
        (0, ItemState.OK),
        (334.9, ItemState.OK),
        (335, ItemState.DUE_SOON),  # 30 days left
        (364.9, ItemState.DUE_SOON),
        (365, ItemState.DUE),
        (378.9, ItemState.DUE),
        (379, ItemState.OVERDUE),  # 14 days past
    ],
)
def test_time_states_with_a_trusted_clock_and_service_time(
    days_since: float, expected: ItemState
) -> None:
    it = item(interval_days=365)
    got = mnt.assess_item(it, record(0, T0 - days_since * DAY), 0, trusted(), car_at(0))
    assert got.state is expected
    assert got.remaining_days == pytest.approx(365 - days_since)
    assert not got.time_unknown
    if expected is not ItemState.OK:
        assert got.reason == "time"


def test_time_needs_a_trusted_clock() -> None:
    it = item(interval_days=365)
    got = mnt.assess_item(it, record(0, T0 - 500 * DAY), 0, untrusted(), car_at(0))
    assert got.state is ItemState.OK
    assert got.time_unknown
    assert got.remaining_days is None


def test_time_needs_a_trusted_service_time() -> None:
    it = item(interval_days=365)
    got = mnt.assess_item(it, record(0, None), 0, trusted(), car_at(0))
    assert got.state is ItemState.OK
    assert got.time_unknown
    never = mnt.assess_item(it, None, 0, trusted(), car_at(0))
    assert never.time_unknown


def test_an_untrusted_clock_still_decides_by_distance() -> None:
    it = item(interval_km=10_000, interval_days=365)
    got = mnt.assess_item(it, record(0, None), 10_000_000, untrusted(), car_at(10_000))
    assert got.state is ItemState.DUE
    assert got.reason == "distance"
    assert got.time_unknown


# -- whichever first ----------------------------------------------------------------------


def test_whichever_comes_first_time_before_distance() -> None:
    it = item(interval_km=15_000, interval_days=365)
    got = mnt.assess_item(it, record(0, T0 - 370 * DAY), 2_000_000, trusted(), car_at(2_000))
    assert got.state is ItemState.DUE
    assert got.reason == "time"


def test_whichever_comes_first_distance_before_time() -> None:
    it = item(interval_km=15_000, interval_days=365)
    got = mnt.assess_item(it, record(0, T0 - 10 * DAY), 16_000_000, trusted(), car_at(16_000))
    assert got.state is ItemState.OVERDUE
    assert got.reason == "distance"


# -- conditions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("life", "expected"),
    [(100, ItemState.OK), (16, ItemState.OK), (15, ItemState.DUE_SOON), (6, ItemState.DUE_SOON),
     (5, ItemState.DUE), (1, ItemState.DUE), (0, ItemState.OVERDUE)],
)  # fmt: skip
def test_oil_life_makes_the_oil_item_due_early(life: int, expected: ItemState) -> None:
    it = item(interval_km=15_000, interval_days=365, condition="oil_life")
    vehicle = signals_car(1_000, {OIL_LIFE: life})
    got = mnt.assess_item(it, record(0, T0 - DAY), vehicle.odometer_m, trusted(), vehicle)
    assert got.state is expected
    if expected is not ItemState.OK:
        assert got.reason == "condition"


@pytest.mark.parametrize(
    ("wear", "expected"),
    [(0, ItemState.OK), (69, ItemState.OK), (70, ItemState.DUE_SOON), (85, ItemState.DUE),
     (94, ItemState.DUE), (95, ItemState.OVERDUE)],
)  # fmt: skip
def test_the_most_worn_brake_pad_decides(wear: int, expected: ItemState) -> None:
    it = item("pads", condition="brake_pad_wear")
    vehicle = signals_car(1_000, {PAD_FRONT: 10, PAD_REAR: wear})
    assert mnt.assess_item(it, None, vehicle.odometer_m, trusted(), vehicle).state is expected


def test_low_tyre_pressure_makes_the_check_due() -> None:
    it = item("tyres", condition="tyre_pressure")
    low = signals_car(1_000, {TYRE_LOW: True})
    fine = signals_car(1_000, {TYRE_LOW: False})
    assert mnt.assess_item(it, None, 1, trusted(), low).state is ItemState.DUE
    assert mnt.assess_item(it, None, 1, trusted(), fine).state is ItemState.OK
    assert low.low_tyres() == ("Row2.Wheel.Left",)


def test_a_condition_never_makes_an_item_better_than_its_interval() -> None:
    it = item(interval_km=10_000, condition="oil_life")
    vehicle = signals_car(10_600, {OIL_LIFE: 90})
    assert mnt.assess_item(it, record(0), vehicle.odometer_m, trusted(), vehicle).state is (
        ItemState.OVERDUE
    )


@settings(max_examples=100, deadline=None)
@given(
    a=st.integers(0, 400_000_000),
    b=st.integers(0, 400_000_000),
    days_a=st.floats(0, 3000),
    days_b=st.floats(0, 3000),
    interval_km=st.one_of(st.none(), st.floats(1, 200_000)),
    interval_days=st.one_of(st.none(), st.integers(1, 2000)),
)
def test_more_distance_or_time_never_makes_an_item_better(
    a: int,
    b: int,
    days_a: float,
    days_b: float,
    interval_km: float | None,
    interval_days: int | None,
) -> None:
    it = item(interval_km=interval_km, interval_days=interval_days, condition="oil_life")
    base = T0 - 4000 * DAY
    last = record(0, base)
    (lo, hi), (dlo, dhi) = sorted((a, b)), sorted((days_a, days_b))
    early = mnt.assess_item(it, last, lo, trusted(base + dlo * DAY), car_at(None))
    late = mnt.assess_item(it, last, hi, trusted(base + dhi * DAY), car_at(None))
    assert late.state >= early.state


# -- the latest records -----------------------------------------------------------------


def test_last_records_takes_the_latest_per_item() -> None:
    old = ServiceRecord(items=("a", "b"), odometer_km=1_000, time=T0 - 300 * DAY)
    new = ServiceRecord(items=("a",), odometer_km=9_000, time=T0 - 10 * DAY)
    same_km_later = ServiceRecord(items=("b",), odometer_km=1_000, time=T0 - 200 * DAY)
    latest = mnt.last_records([new, same_km_later, old])
    assert latest == {"a": new, "b": same_km_later}


# -- decide: reminders ----------------------------------------------------------------------

PLAN = ServicePlan.model_validate(
    {
        "version": 1,
        "model": "test",
        "items": [
            {"id": "oil", "name": {"zh-CN": "机油", "en": "Oil"}, "interval_km": 10_000},
            {"id": "filter", "name": {"zh-CN": "滤芯", "en": "Filter"}, "interval_km": 10_500},
            {"id": "fluid", "name": {"zh-CN": "刹车油", "en": "Fluid"}, "interval_days": 730},
        ],
    }
)
#: One distance item with room in each state: due soon from 18,000 km, due from 20,000,
#: overdue from 21,000; nothing joins it while it resurfaces.
ONE = PLAN.model_copy(
    update={"items": (PLAN.items[0].model_copy(update={"interval_km": 20_000.0}), PLAN.items[2])}
)
SERVICED = mnt.MaintenanceState(
    records=(ServiceRecord(items=("oil", "filter", "fluid"), odometer_km=0, time=T0 - DAY),)
)


class Engine:
    """The engine folded over inputs, as the core drives it."""

    def __init__(self, plan: ServicePlan = PLAN, state: mnt.MaintenanceState = SERVICED) -> None:
        self.plan = plan
        self.state = state
        self.km = 0.0
        self.wall = T0

    def at(self, km: float | None = None, wall: float | None = None) -> mnt.Reminder | None:
        self.km = self.km if km is None else km
        self.wall = self.wall if wall is None else wall
        vehicle = car_at(self.km)
        now = trusted(self.wall)
        assessment = mnt.assess(self.plan, self.state, vehicle, now)
        self.state, reminder = mnt.decide(self.plan, self.state, assessment, vehicle, now)
        return reminder

    def dismiss(self) -> None:
        self.state = mnt.on_dismissed(self.state, trusted(self.wall), round(self.km * 1000))


def ids(reminder: mnt.Reminder | None) -> tuple[str, ...]:
    assert reminder is not None
    return tuple(a.item.id for a in reminder.items)


def test_one_reminder_when_the_first_item_comes_due_soon() -> None:
    engine = Engine()
    assert engine.at(8_999) is None
    first = engine.at(9_000)
    assert first is not None
    assert first.state is ItemState.DUE_SOON
    assert ids(first) == ("oil",)
    assert not first.escalated
    assert not first.resurfaced
    assert engine.state.notified is ItemState.DUE_SOON
    # Not again at the same state, however often it is assessed.
    for km in (9_000, 9_100, 9_200, 9_400):
        assert engine.at(km) is None
        assert engine.at(km, engine.wall + DAY) is None


def test_the_reminder_lists_every_item_due_worst_first() -> None:
    engine = Engine()
    reminder = engine.at(10_000)  # oil due, filter due soon at the same time
    assert reminder is not None
    assert reminder.state is ItemState.DUE
    assert ids(reminder) == ("oil", "filter")
    assert [a.state for a in reminder.items] == [ItemState.DUE, ItemState.DUE_SOON]


def test_escalation_due_soon_due_overdue() -> None:
    engine = Engine()
    assert engine.at(9_000) is not None
    due = engine.at(10_000)
    assert due is not None
    assert due.state is ItemState.DUE
    assert due.escalated
    assert engine.at(10_100) is None
    overdue = engine.at(10_500)
    assert overdue is not None
    assert overdue.state is ItemState.OVERDUE
    assert overdue.escalated
    assert engine.at(20_000) is None


def test_another_item_joining_at_the_same_level_updates_the_reminder() -> None:
    engine = Engine()
    assert ids(engine.at(9_000)) == ("oil",)
    assert engine.at(9_400) is None
    joined = engine.at(9_450)  # filter: 10,500 - 1,050
    assert joined is not None
    assert ids(joined) == ("oil", "filter")
    assert not joined.escalated
    assert not joined.resurfaced
    assert engine.state.notified_items == ("oil", "filter")
    assert engine.at(9_500) is None


@pytest.mark.parametrize(
    ("km", "level"),
    [(18_000.0, 0), (20_000.0, 1), (21_000.0, 2)],
    ids=["due_soon", "due", "overdue"],
)
def test_resurfacing_after_a_dismissal_by_distance(km: float, level: int) -> None:
    engine = Engine(ONE)
    assert engine.at(km) is not None
    engine.dismiss()
    step = PLAN.resurface_km[level]
    assert engine.at(km + step - 0.01) is None
    back = engine.at(km + step)
    assert back is not None
    assert back.resurfaced
    assert not back.escalated
    assert back.state.value - ItemState.DUE_SOON.value == level
    assert engine.at(km + step + 1) is None  # once, until the next dismissal


@pytest.mark.parametrize(
    ("km", "level"),
    [(18_000.0, 0), (20_000.0, 1), (21_000.0, 2)],
    ids=["due_soon", "due", "overdue"],
)
def test_resurfacing_after_a_dismissal_by_time(km: float, level: int) -> None:
    engine = Engine(ONE)
    assert engine.at(km) is not None
    engine.dismiss()
    wait = PLAN.resurface_days[level] * DAY
    assert engine.at(wall=engine.wall + wait - 1) is None
    back = engine.at(wall=engine.wall + 1)
    assert back is not None
    assert back.resurfaced


def test_the_worse_the_state_the_sooner_it_resurfaces() -> None:
    assert list(PLAN.resurface_km) == sorted(PLAN.resurface_km, reverse=True)
    assert list(PLAN.resurface_days) == sorted(PLAN.resurface_days, reverse=True)
    waits = []
    for km in (18_000.0, 20_000.0, 21_000.0):
        engine = Engine(ONE)
        engine.at(km)
        engine.dismiss()
        travelled = 0.0
        while engine.at(km + travelled) is None:
            travelled += 10
        waits.append(travelled)
    assert waits[0] > waits[1] > waits[2]


def test_no_resurfacing_while_booked_until_a_day_after_the_appointment() -> None:
    engine = Engine(ONE)
    assert engine.at(18_000) is not None
    engine.dismiss()
    appointment = T0 + 5 * DAY
    engine.state = mnt.on_booked(engine.state, appointment)
    assert engine.state.booked_until == appointment + DAY
    # Far past every resurface distance and time, still booked.
    assert engine.at(19_900, appointment) is None
    assert engine.at(19_950, appointment + DAY - 1) is None
    back = engine.at(19_960, appointment + DAY)
    assert back is not None
    assert back.resurfaced


def test_an_item_joining_while_booked_does_not_remind() -> None:
    engine = Engine()
    assert engine.at(9_000) is not None
    engine.state = mnt.on_booked(engine.state, T0 + 10 * DAY)
    assert engine.at(9_450) is None


def test_all_items_ok_ends_the_episode() -> None:
    engine = Engine()
    assert engine.at(9_000) is not None
    engine.dismiss()
    engine.state = mnt.on_booked(engine.state, T0 + DAY)
    serviced = ServiceRecord(items=("oil", "filter", "fluid"), odometer_km=9_100, time=T0)
    engine.state = mnt.on_serviced(engine.state, serviced)
    assert engine.at(9_100) is None
    assert engine.state.notified is ItemState.OK
    assert engine.state.notified_items == ()
    assert engine.state.dismissed_at is None
    assert engine.state.booked_until is None
    # The next episode starts afresh, at DUE_SOON, not escalated.
    nxt = engine.at(9_100 + 9_000)
    assert nxt is not None
    assert nxt.state is ItemState.DUE_SOON
    assert not nxt.escalated


def test_a_time_item_comes_due_with_a_trusted_clock_only() -> None:
    engine = Engine()
    engine.at(100)
    vehicle = car_at(100)
    late = T0 + 720 * DAY
    blind = mnt.assess(PLAN, engine.state, vehicle, untrusted(late))
    state, reminder = mnt.decide(PLAN, engine.state, blind, vehicle, untrusted(late))
    assert reminder is None
    assert state.notified is ItemState.OK
    reminder = engine.at(wall=late)
    assert ids(reminder) == ("fluid",)


# -- CAN service reset --------------------------------------------------------------------


def test_a_service_reset_records_the_items_that_were_due() -> None:
    engine = Engine()
    engine.at(10_000)  # oil due, filter due soon, fluid ok
    now = trusted(T0 + DAY)
    rec = mnt.reset_record(PLAN, engine.state, 10_000_000, now)
    assert rec is not None
    assert set(rec.items) == {"oil", "filter"}
    assert rec.odometer_km == 10_000
    assert rec.time == now.wall
    assert rec.source == "can_reset"
    engine.state = mnt.on_serviced(engine.state, rec)
    assert engine.at(10_000) is None
    assert engine.state.notified is ItemState.OK


def test_a_service_reset_with_an_untrusted_clock_has_no_time() -> None:
    engine = Engine()
    engine.at(10_000)
    rec = mnt.reset_record(PLAN, engine.state, 10_000_000, untrusted())
    assert rec is not None
    assert rec.time is None


def test_a_service_reset_with_nothing_due_or_no_odometer_records_nothing() -> None:
    engine = Engine()
    engine.at(1_000)
    assert mnt.reset_record(PLAN, engine.state, 1_000_000, trusted()) is None
    engine.at(10_000)
    assert mnt.reset_record(PLAN, engine.state, None, trusted()) is None


def test_records_are_bounded() -> None:
    state = mnt.MaintenanceState()
    for km in range(250):
        state = mnt.on_serviced(state, record(float(km)))
    assert len(state.records) == 200
    assert state.records[-1].odometer_km == 249


# -- milestones -----------------------------------------------------------------------------


def test_milestones() -> None:
    state = mnt.MaintenanceState()
    assert mnt.milestone(PLAN, state, None) == (state, None)
    state, reached = mnt.milestone(PLAN, state, 9_999_000)
    assert reached is None  # the first reading sets the mark, no party
    state, reached = mnt.milestone(PLAN, state, 9_999_999)
    assert reached is None
    state, reached = mnt.milestone(PLAN, state, 10_000_000)
    assert reached == PLAN.milestone_km
    state, reached = mnt.milestone(PLAN, state, 10_500_000)
    assert reached is None
    state, reached = mnt.milestone(PLAN, state, 31_000_000)
    assert reached == 3 * PLAN.milestone_km
    assert state.last_milestone_km == reached


def test_assessment_payload_names_the_due_items_only() -> None:
    engine = Engine()
    vehicle = car_at(9_000)
    assessment = mnt.assess(PLAN, engine.state, vehicle, untrusted())
    payload = mnt.assessment_payload(assessment, vehicle)
    assert payload["state"] == "DUE_SOON"
    assert payload["odometer_km"] == 9_000
    items = payload["items"]
    assert isinstance(items, list)
    assert [i["id"] for i in items] == ["oil"]
    assert items[0]["remaining_km"] == 1_000


def test_plan_rejects_duplicate_items_and_items_without_a_trigger() -> None:
    raw = PLAN.model_dump(by_alias=True)
    raw["items"] = [raw["items"][0], raw["items"][0]]
    with pytest.raises(ValueError, match="unique"):
        ServicePlan.model_validate(raw)
    with pytest.raises(ValueError, match="interval or a condition"):
        item("bare")
    assert replace(SERVICED).records == SERVICED.records
