"""Plausible inputs from the first frame: the odometer at a start, and "no value" markers.

The failure these reproduce: one odometer frame of 0xFFFFFF right after a start (inside
the DBC's range, a common "not available" value) became the odometer for good; the jump
bound only applied once a reading had been accepted in this process, so every real
reading after it was refused as "backwards", across restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from can_signals.catalogue import ODOMETER
from can_signals.dbc import load_dbc
from can_signals.errors import MappingError
from can_signals.mapping import MappingEntry, load_mapping
from can_signals.not_available import marker_labels, not_available_values
from can_signals.plausibility import (
    CONFIRM_S,
    RECOVER_READINGS,
    RECOVER_S,
    STORED_ALLOWANCE_M,
    OdometerGuard,
)
from tests.can_signals.conftest import FULL_MAPPING, TEST_DBC, Harness, HarnessFactory

METRES_PER_MILE = 1609.344
ALL_ONES_24 = 0xFFFFFF  # the test DBC's 24-bit ODOMETER, in miles: 16,777,215 mi
CYCLE = 1.0  # the CLUSTER message's cycle time


def metres(miles: int) -> int:
    return round(miles * METRES_PER_MILE)


@pytest.fixture
def harness(make_harness: HarnessFactory) -> Harness:
    return make_harness(FULL_MAPPING)


def odometer(harness: Harness, t: float, miles: int) -> None:
    harness.send("CLUSTER", t, ODOMETER=miles)


# --- the all-ones value is no value --------------------------------------------------------


def test_an_all_ones_odometer_right_after_a_start_is_no_value(harness: Harness) -> None:
    harness.processor.seed_odometer(metres(9_000))  # what the previous run kept

    odometer(harness, 0.0, ALL_ONES_24)
    for i in range(1, 4):
        odometer(harness, i * CYCLE, 9_001)

    assert harness.values(ODOMETER) == [metres(9_001)]
    stats = harness.processor.stats()
    assert stats.not_available == {ODOMETER: 1}
    assert stats.rejected == 0  # "no value" is not a refused value


def test_no_value_on_a_fresh_unit_is_never_the_odometer(harness: Harness) -> None:
    # No odometer kept (a new head unit): the marker is skipped, the real readings are
    # confirmed by each other, then published.
    odometer(harness, 0.0, ALL_ONES_24)
    for i in range(1, 5):
        odometer(harness, i * CYCLE, 9_001)

    assert harness.values(ODOMETER) == [metres(9_001)]
    assert harness.timestamps(ODOMETER) == [pytest.approx(1.0 + CONFIRM_S + CYCLE)]
    assert harness.processor.stats().odometer_unconfirmed == 2


def test_no_value_keeps_the_last_value_until_it_is_stale(harness: Harness) -> None:
    harness.send("VEHICLE", 0.0, SPEED=50, FUEL=40)
    harness.send("VEHICLE", 0.1, SPEED=50, FUEL=255)  # FUEL's all ones: no value
    harness.send("VEHICLE", 0.2, SPEED=50, FUEL=255)
    harness.processor.check_stale(0.5)
    harness.processor.check_stale(1.5)  # ten cycles of 100 ms, at least a second

    fuel = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
    assert harness.values(fuel) == [40, None]
    assert harness.processor.stats().not_available == {fuel: 2}


# --- the first reading after a start is bounded -------------------------------------------


def test_a_garbage_first_reading_above_the_kept_odometer_never_becomes_it(
    harness: Harness,
) -> None:
    harness.processor.seed_odometer(metres(9_000))

    odometer(harness, 0.0, 1_000_000)  # not the marker, still garbage
    odometer(harness, 1.0, 9_000)
    odometer(harness, 2.0, 9_001)

    assert harness.values(ODOMETER) == [metres(9_000), metres(9_001)]
    assert harness.rejections("odometer_jump", ODOMETER) == 1


def test_a_restart_on_the_move_is_within_the_allowance(harness: Harness) -> None:
    kept = metres(9_000)
    harness.processor.seed_odometer(kept)
    # The daemon was down a minute on the motorway: 2 miles on.
    odometer(harness, 0.0, 9_002)

    assert harness.values(ODOMETER) == [metres(9_002)]
    assert metres(9_002) - kept < STORED_ALLOWANCE_M


def test_a_garbage_first_reading_without_a_kept_odometer_waits_and_loses(
    harness: Harness,
) -> None:
    odometer(harness, 0.0, 1_000_000)
    for i in range(1, 6):
        odometer(harness, float(i), 9_000)

    assert harness.values(ODOMETER) == [metres(9_000)]  # the garbage was never published


def test_a_wrong_kept_odometer_gives_way_to_readings_that_agree(harness: Harness) -> None:
    # An older version kept 0xFFFFFF miles: the real readings are "backwards" from it.
    harness.processor.seed_odometer(metres(ALL_ONES_24))
    t = 0.0
    while t < RECOVER_S:
        odometer(harness, t, 9_000)
        t += CYCLE
    assert harness.values(ODOMETER) == []  # not yet: a few frames prove nothing
    odometer(harness, t, 9_000)

    assert harness.values(ODOMETER) == [metres(9_000)]
    stats = harness.processor.stats()
    assert stats.odometer_corrections == 1
    assert stats.rejections[("odometer_backwards", ODOMETER)] >= RECOVER_READINGS - 1
    odometer(harness, t + 60, 9_001)  # and it goes on from there
    assert harness.values(ODOMETER) == [metres(9_000), metres(9_001)]


def test_garbage_between_accepted_readings_never_wins(harness: Harness) -> None:
    harness.processor.seed_odometer(metres(9_000))
    for i in range(40):  # a stuck garbage value every other frame, for 20 s
        odometer(harness, i * 0.5, 9_000 if i % 2 else 5_000_000)

    assert harness.values(ODOMETER) == [metres(9_000)]
    assert harness.processor.stats().odometer_corrections == 0


def test_the_guard_alone() -> None:
    guard = OdometerGuard()
    guard.seed(1_000_000.0)
    assert guard.check(999_000.0, 0.0, 0.0) == "odometer_backwards"
    assert guard.check(1_000_500.0, 1.0, 0.0) is None
    assert guard.take_correction() is None
    assert guard.last == 1_000_500.0


# --- which values are markers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "markers"),
    [
        (["DI_GEAR_INVALID", "DI_GEAR_P", "DI_GEAR_D", "DI_GEAR_SNA"],
         {"DI_GEAR_INVALID", "DI_GEAR_SNA"}),
        # Unavailable is mostly a feature's state; NA is North America.
        (["HEATER_STATE_SNA", "HEATER_STATE_ON", "HEATER_STATE_OFF_UNAVAILABLE"],
         {"HEATER_STATE_SNA"}),
        (["DAS_NAV_UNAVAILABLE", "DAS_NAV_AVAILABLE"], set()),
        (["NA", "EU", "CN"], set()),
        (["Off", "On", "Signal not available"], {"Signal not available"}),
        (["CELL_NETWORK_NONE", "CELL_NETWORK_SNA"], {"CELL_NETWORK_SNA"}),
    ],
)  # fmt: skip
def test_marker_labels(labels: list[str], markers: set[str]) -> None:
    assert marker_labels(labels) == markers


def test_a_table_decides_and_a_list_replaces_all_ones(
    write_file: Callable[[str, str], Path],
) -> None:
    dbc = TEST_DBC + 'VAL_ 256 RATIO 254 "SNA" ;\n'
    path = write_file("n.dbc", dbc)
    database = load_dbc(path).database
    ratio = database.get_message_by_name("VEHICLE").get_signal_by_name("RATIO")
    gear = database.get_message_by_name("VEHICLE").get_signal_by_name("GEAR")

    def entry(text: str) -> MappingEntry:
        return load_mapping(write_file("m.yaml", text)).entries[0]

    default = entry("Vehicle.Speed:\n  dbc2vss: {signal: RATIO}\n")
    assert not_available_values(default, ratio) == {254, 255}
    listed = entry("Vehicle.Speed:\n  dbc2vss: {signal: RATIO, not_available: [0]}\n")
    assert not_available_values(listed, ratio) == {254, 0}
    labels_only = entry("Vehicle.Speed:\n  dbc2vss: {signal: RATIO, not_available: []}\n")
    assert not_available_values(labels_only, ratio) == {254}
    table = entry(
        "Vehicle.Speed:\n  dbc2vss:\n    signal: RATIO\n"
        "    transform: {mapping: [{from: SNA, to: 0}]}\n"
    )
    assert not_available_values(table, ratio) == frozenset()
    assert not_available_values(default, gear) == frozenset()


def test_a_not_available_label_the_signal_lacks_is_reported(make_harness: HarnessFactory) -> None:
    with pytest.raises(MappingError, match="has no value labelled 'SNA'"):
        make_harness("Vehicle.Speed:\n  dbc2vss: {signal: SPEED, not_available: [SNA]}\n")


def test_a_malformed_not_available_is_reported(make_harness: HarnessFactory) -> None:
    with pytest.raises(MappingError, match="'not_available' must be a list"):
        make_harness("Vehicle.Speed:\n  dbc2vss: {signal: SPEED, not_available: 255}\n")
