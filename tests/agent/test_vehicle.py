"""Vehicle state from signal updates, the clock's trust, ids and card texts."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import vehicle as veh
from agent.cards import Action, ArgValue, Text, render, restrict_for_moving
from agent.ids import IdFactory, uuid7
from agent.signals import IGNITION, IS_CHARGING, SELECTED_GEAR
from agent.vehicle import Transition, VehicleState
from can_signals.catalogue import DTC_LIST, GEAR_DRIVE, GEAR_PARK, ODOMETER, SPEED
from can_signals.update import SignalValue
from tests.agent.conftest import T0, upd


def fold(
    *pairs: tuple[str, SignalValue | None], state: VehicleState | None = None
) -> tuple[VehicleState, list[Transition]]:
    current = state or VehicleState()
    seen: list[Transition] = []
    for path, value in pairs:
        current, changes = veh.apply(current, upd(path, value))
        seen += [c.transition for c in changes]
    return current, seen


def test_unknown_is_not_parked() -> None:
    assert VehicleState().driving
    state, _ = fold((SPEED, 0.0))
    assert state.driving  # speed alone: the gear could be Drive


@pytest.mark.parametrize(
    ("pairs", "parked"),
    [
        ([(SPEED, 0.0), (SELECTED_GEAR, GEAR_PARK)], True),
        ([(SPEED, 0.3), (SELECTED_GEAR, GEAR_PARK)], True),
        ([(SPEED, 0.0), (SELECTED_GEAR, GEAR_DRIVE)], False),  # a red light
        ([(SPEED, 5.0), (SELECTED_GEAR, GEAR_PARK)], False),
        ([(SPEED, 0.0), ("Vehicle.Powertrain.Transmission.IsParkLockEngaged", True)], True),
        ([(IGNITION, "OFF")], True),
        ([(IGNITION, "ACC"), (SPEED, 30.0)], True),
        ([(IGNITION, "ON")], False),
        ([(SPEED, 0.0), (SELECTED_GEAR, GEAR_PARK), (SPEED, None)], False),  # stale speed
    ],
)
def test_parked(pairs: Sequence[tuple[str, SignalValue | None]], parked: bool) -> None:
    state, _ = fold(*pairs)
    assert state.parked is parked
    assert state.driving is not parked


def test_transitions() -> None:
    state, seen = fold((IGNITION, "ON"), (SELECTED_GEAR, GEAR_DRIVE), (SPEED, 30.0))
    assert seen == [Transition.DRIVE_CYCLE_STARTED]
    assert state.drive_cycle == 1
    state, seen = fold((SPEED, 0.0), (SELECTED_GEAR, GEAR_PARK), state=state)
    assert seen == [Transition.PARKED]
    state, seen = fold((SELECTED_GEAR, GEAR_DRIVE), state=state)
    assert seen == [Transition.DRIVING_STARTED]
    state, seen = fold((IGNITION, "OFF"), state=state)
    assert seen == [Transition.DRIVE_CYCLE_ENDED, Transition.PARKED]
    state, seen = fold((IS_CHARGING, True), (IS_CHARGING, True), (IS_CHARGING, False), state=state)
    assert seen == [Transition.CHARGING_STARTED, Transition.CHARGING_STOPPED]
    state, seen = fold((IGNITION, "START"), state=state)
    assert state.drive_cycle == 2


def test_odometer_and_faults() -> None:
    state, seen = fold((ODOMETER, 1_000), (ODOMETER, 1_000), (ODOMETER, 1_500))
    assert seen == [Transition.ODOMETER_CHANGED, Transition.ODOMETER_CHANGED]
    state, _ = fold((ODOMETER, None), state=state)
    assert state.odometer_m == 1_500  # kept while the signal is stale
    assert state.value(ODOMETER) is None
    state, changes = veh.apply(state, upd(DTC_LIST, ("P0301", "LAMP:ABS")))
    assert state.faults == ("P0301", "LAMP:ABS")
    assert changes[0].detail == {"added": ("LAMP:ABS", "P0301"), "removed": ()}
    assert veh.lamp_names(state.faults) == ("ABS",)
    state, changes = veh.apply(state, upd(DTC_LIST, ("P0301",)))
    assert changes[0].detail == {"added": (), "removed": ("LAMP:ABS",)}


def test_service_reset_needs_a_previous_counter() -> None:
    _, seen = fold(("Vehicle.Service.ResetCounter", 3))
    assert seen == []
    _, seen = fold(("Vehicle.Service.ResetCounter", 3), ("Vehicle.Service.ResetCounter", 4))
    assert seen == [Transition.SERVICE_RESET]


_PATHS = st.sampled_from([SPEED, SELECTED_GEAR, IGNITION, ODOMETER, IS_CHARGING])
_VALUES: dict[str, st.SearchStrategy[SignalValue | None]] = {
    SPEED: st.one_of(st.none(), st.floats(-10, 200)),
    SELECTED_GEAR: st.sampled_from([GEAR_PARK, GEAR_DRIVE, 0, 1, -1]),
    IGNITION: st.sampled_from(["LOCK", "OFF", "ACC", "ON", "START", "UNDEFINED"]),
    ODOMETER: st.integers(0, 2**32 - 1),
    IS_CHARGING: st.booleans(),
}


@settings(max_examples=100, deadline=None)
@given(st.lists(_PATHS.flatmap(lambda p: st.tuples(st.just(p), _VALUES[p])), max_size=40))
def test_the_derived_state_always_matches_the_signals(
    pairs: list[tuple[str, SignalValue | None]],
) -> None:
    state, seen = fold(*pairs)
    signals = state.signals
    off = signals.get(IGNITION) in ("LOCK", "OFF", "ACC")
    speed = signals.get(SPEED)
    at_rest = isinstance(speed, float) and abs(speed) < veh.STANDSTILL_KMH
    assert state.parked == (off or (at_rest and signals.get(SELECTED_GEAR) == GEAR_PARK))
    assert state.charging == (signals.get(IS_CHARGING) is True)
    assert state.drive_cycle == seen.count(Transition.DRIVE_CYCLE_STARTED)
    parks = seen.count(Transition.PARKED) - seen.count(Transition.DRIVING_STARTED)
    assert parks == (1 if state.parked else 0)


# -- ids ------------------------------------------------------------------------------------


def test_uuid7_layout() -> None:
    value = uuid.UUID(uuid7(int(T0 * 1000), random.Random(1).getrandbits))
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == int(T0 * 1000)
    with pytest.raises(ValueError, match="out of range"):
        uuid7(-1)


def test_ids_are_unique_and_ordered_even_in_one_millisecond() -> None:
    ids = IdFactory(random.Random(7).getrandbits)
    made = [ids.new(T0) for _ in range(5000)] + [ids.new(T0 - 10)] + [ids.new(T0 + 1)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(uuid.UUID(i).version == 7 for i in made)


def test_ids_are_deterministic_under_a_seed() -> None:
    a = IdFactory(random.Random(3).getrandbits)
    b = IdFactory(random.Random(3).getrandbits)
    assert [a.new(T0 + i) for i in range(5)] == [b.new(T0 + i) for i in range(5)]


# -- card texts -----------------------------------------------------------------------------


def test_render_fills_plain_names_only() -> None:
    args: dict[str, ArgValue] = {
        "items": (Text("机油", "Oil"), "Filter"),
        "km": 12345,
        "soc": 19.5,
        "big": 12345.6,
        "title": Text("标题", "Title"),
        "flag": True,
    }
    assert render("{items}; {km} km; {soc}%; {big}", args, "en") == (
        "Oil, Filter; 12,345 km; 19.5%; 12,346"
    )
    assert render("{items}", args, "zh-CN") == "机油、Filter"
    assert render("{title} {flag} {missing} {km.real} {0}", args, "en") == (
        "Title True {missing} {km.real} {0}"
    )


def test_text_falls_back_between_locales() -> None:
    assert Text("中", "").get("en") == "中"
    assert Text("", "en").get("zh-CN") == "en"
    assert Text.from_json(Text("中", "en").to_json()) == Text("中", "en")


def test_restrict_for_moving() -> None:
    title, actions = restrict_for_moving(
        Text("长" * 50, "x" * 41),
        (Action("ok", Text("好", "OK")), Action("book", Text("约", "Book"))),
    )
    assert len(title.zh_cn) == len(title.en) == 40
    assert title.en.endswith("…")
    assert [a.key for a in actions] == ["ok"]
