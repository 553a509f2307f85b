"""The agent core, in process: fault cards from DTCs and lamps."""

from __future__ import annotations

from agent.cards import (
    MOVING_ACTIONS_MAX,
    MOVING_TITLE_MAX,
    CardKind,
    CardState,
    ChangeType,
    CloseReason,
)
from agent.fault_engine import DtcCatalogue, default_catalogue
from agent.policy import moving_allowed
from tests.agent.conftest import Car, added


def test_a_stop_safely_fault_shows_while_moving_and_goes_when_it_clears(car: Car) -> None:
    car.drive(90.0)
    out = car.dtcs("P0524")
    [card] = added([out])
    assert card.key == "fault:oil_pressure"
    assert card.kind is CardKind.FAULT
    assert moving_allowed(card)
    assert len(card.title.en) <= MOVING_TITLE_MAX
    assert len(card.title.zh_cn) <= MOVING_TITLE_MAX
    assert len(card.actions) <= MOVING_ACTIONS_MAX
    [detected] = car.events_of("fault.detected")
    assert detected.payload["code"] == "P0524"
    assert detected.payload["severity"] == "stop_safely"
    # Still there at the next update of an unrelated signal.
    car.send(("Vehicle.Speed", 80.0))
    assert [c.id for c in car.visible()] == [card.id]
    out = car.dtcs()
    assert [(c.type, c.card.id, c.reason) for c in out.changes] == [
        (ChangeType.REMOVED, card.id, CloseReason.CLOSED_BY_AGENT)
    ]
    assert car.events_of("fault.cleared")[-1].payload["code"] == "P0524"
    assert car.card("fault:oil_pressure") is None


def test_a_service_soon_fault_waits_for_the_car_to_park(car: Car) -> None:
    car.drive()
    out = car.dtcs("P0301")
    assert added([out]) == []
    card = car.card("fault:misfire")
    assert card is not None
    assert card.state is CardState.QUEUED
    assert card.title.en == "Cylinder misfire"  # the P030? pattern
    out = car.park()
    assert [c.id for c in added([out])] == [card.id]
    assert [a.key for a in card.actions] == ["book", "dismiss"]


def test_the_same_fault_is_announced_once(car: Car) -> None:
    car.dtcs("P0301")
    car.dtcs("P0301", "P0171")
    car.dtcs("P0171", "P0301")
    assert [e.payload["code"] for e in car.events_of("fault.detected")] == ["P0301", "P0171"]
    assert len(car.events_of("card.created")) == 2


def test_the_check_engine_lamp_is_explained_by_a_p_code(car: Car) -> None:
    car.dtcs("LAMP:MalfunctionIndicator", "P0301")
    assert car.card("fault:LAMP:MalfunctionIndicator") is None
    assert car.card("fault:misfire") is not None
    # The code clears, the lamp stays lit: once it has waited for another code in vain,
    # the lamp is all we know.
    car.dtcs("LAMP:MalfunctionIndicator")
    assert car.card("fault:misfire") is None
    assert car.card("fault:LAMP:MalfunctionIndicator") is None  # still waiting
    car.tick(3)
    lamp = car.card("fault:LAMP:MalfunctionIndicator")
    assert lamp is not None
    assert lamp.title.en == "Check engine light on"
    # A P-code again explains it: the lamp's card goes.
    car.dtcs("LAMP:MalfunctionIndicator", "P0420")
    assert car.card("fault:LAMP:MalfunctionIndicator") is None


def test_the_check_engine_lamp_waits_for_the_code_that_explains_it(car: Car) -> None:
    car.dtcs("LAMP:MalfunctionIndicator")  # the lamp frame comes first...
    car.advance(0.3)
    car.dtcs("LAMP:MalfunctionIndicator", "P0301")  # ...the code a moment later
    car.tick(5)
    assert [e.payload["code"] for e in car.events_of("fault.detected")] == ["P0301"]
    assert car.card("fault:LAMP:MalfunctionIndicator") is None


def test_a_lamp_alone_makes_a_card(car: Car) -> None:
    car.drive()
    [card] = added([car.dtcs("LAMP:OilPressure")])
    assert card.key == "fault:oil_pressure"  # the lamp's group: the same card as P0524


def test_codes_of_one_problem_make_one_card_that_closes_with_the_last(car: Car) -> None:
    car.park()
    out = car.dtcs("P0300", "P0301")  # a random misfire and cylinder 1's: one problem
    [card] = added([out])
    assert card.key == "fault:misfire"
    assert card.args["codes"] == ("P0300", "P0301")
    assert [e.payload["code"] for e in car.events_of("fault.detected")] == ["P0300", "P0301"]
    out = car.dtcs("P0301")  # one clears: the card stays, with the code left
    assert [c.type for c in out.changes] == [ChangeType.UPDATED]
    kept = car.card("fault:misfire")
    assert kept is not None
    assert kept.args["codes"] == ("P0301",)
    out = car.dtcs()  # the last clears: the card goes
    assert [(c.type, c.reason) for c in out.changes] == [
        (ChangeType.REMOVED, CloseReason.CLOSED_BY_AGENT)
    ]
    assert [e.payload["code"] for e in car.events_of("fault.cleared")] == ["P0300", "P0301"]


def test_info_faults_and_unknown_codes_use_the_catalogue(car: Car) -> None:
    catalogue = default_catalogue()
    car.dtcs("P0455", "U0100", "P1234")
    assert catalogue.lookup("P1234").match == "P*"
    for key in ("evap", "U0100", "P1234"):  # P0455's entry groups it with the EVAP codes
        assert car.card(f"fault:{key}") is not None
    info = car.card("fault:evap")
    assert info is not None
    assert info.urgency.name == "LOW"


def test_a_dismissed_fault_stays_dismissed_while_it_is_active(car: Car) -> None:
    car.dtcs("P0301")
    [card] = car.visible(CardKind.FAULT)
    car.dismiss(card)
    car.dtcs("P0301", "P0455")
    assert car.card("fault:misfire") is None
    car.dtcs()
    car.dtcs("P0301")  # it came back after clearing: a new occurrence
    assert car.card("fault:misfire") is not None


def test_a_new_catalogue_reassesses_active_faults(car: Car) -> None:
    car.dtcs("P0128")
    card = car.card("fault:P0128")
    assert card is not None
    assert card.urgency.name == "NORMAL"
    raw = default_catalogue().model_dump(mode="json", by_alias=True)
    for entry in raw["entries"]:
        if entry["match"] == "P0128":
            entry["severity"] = "stop_safely"
    raw["version"] = 2
    car.drive()
    out = car.keep(car.agent.set_catalogue(DtcCatalogue.model_validate(raw), car.wall, car.mono))
    upgraded = car.card("fault:P0128")
    assert upgraded is not None
    assert upgraded.id == card.id  # updated in place
    assert upgraded.urgency.name == "CRITICAL"
    assert [c.id for c in added([out])] == [card.id]  # now allowed while moving


def test_a_downgraded_fault_leaves_a_moving_drivers_screen(car: Car) -> None:
    car.drive()
    [card] = added([car.dtcs("P0524")])
    raw = default_catalogue().model_dump(mode="json", by_alias=True)
    for entry in raw["entries"]:
        if entry["match"] == "P0524":
            entry["severity"] = "service_soon"
    out = car.keep(car.agent.set_catalogue(DtcCatalogue.model_validate(raw), car.wall, car.mono))
    # The moving driver never sees the parked-only version, not even as an update.
    for change in out.changes:
        if change.type is not ChangeType.REMOVED:
            assert moving_allowed(change.card), change
    assert [c.type for c in out.changes] == [ChangeType.REMOVED]
    assert car.visible() == []
    assert [c.id for c in added([car.park()])] == [card.id]
