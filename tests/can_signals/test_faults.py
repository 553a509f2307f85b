"""DTCs and warning lamps folded into ``DTCList`` / ``DTCCount``.

A car broadcasts one DTC at a time in a slot that cycles through the active codes; code
0 means "none". Lamps are separate signals. On-demand diagnostic reads add their codes.
"""

from __future__ import annotations

import pytest

from can_signals.dtc import dtc_from_text, dtc_to_text
from tests.can_signals.conftest import Harness, HarnessFactory

DTC_LIST = "Vehicle.Diagnostics.DTCList"
DTC_COUNT = "Vehicle.Diagnostics.DTCCount"
MIL = "LAMP:MalfunctionIndicator"
OIL = "LAMP:OilPressure"


def _mapping(stale_ms: int) -> str:
    return (
        f"Vehicle.Diagnostics.DTCList:\n  dbc2vss: {{signal: DTC, transform: {{dtc: true}}, "
        f"stale_ms: {stale_ms}}}\n"
        "Vehicle.Diagnostics.Lamp.MalfunctionIndicator:\n"
        "  dbc2vss: {signal: MIL, on_change: true}\n"
        "Vehicle.Diagnostics.Lamp.OilPressure:\n  dbc2vss: {signal: OIL_LAMP, on_change: true}\n"
    )


@pytest.fixture
def faults(make_harness: HarnessFactory) -> Harness:
    return make_harness(_mapping(2000))  # a code not seen for 2 s is gone


def _send(harness: Harness, t: float, code: str | None, *, mil: int = 0, oil: int = 0) -> None:
    harness.send("FAULTS", t, DTC=0 if code is None else dtc_from_text(code), MIL=mil,
                 OIL_LAMP=oil)  # fmt: skip


def _listings(harness: Harness) -> list[tuple[str, ...]]:
    listings = []
    for value in harness.values(DTC_LIST):
        assert isinstance(value, tuple)
        listings.append(value)
    return listings


def _assert_counts_match(harness: Harness) -> None:
    """Every DTCList update is followed by the DTCCount of its length."""
    paths = [u.path for u in harness.updates if u.path in (DTC_LIST, DTC_COUNT)]
    assert paths == [DTC_LIST, DTC_COUNT] * (len(paths) // 2)
    assert harness.values(DTC_COUNT) == [len(listing) for listing in _listings(harness)]


def test_the_two_byte_encoding() -> None:
    assert dtc_to_text(0x0301) == "P0301"
    assert dtc_to_text(0x4123) == "C0123"
    assert dtc_to_text(0x9234) == "B1234"
    assert dtc_to_text(0xC100) == "U0100"
    assert all(dtc_to_text(dtc_from_text(c)) == c for c in ("P0420", "U3FFF", "B0001"))


def test_a_cycling_slot_lists_its_codes_sorted_with_the_lamps(faults: Harness) -> None:
    for n in range(10):  # P0420 and P0301 take turns, every 100 ms
        _send(faults, n / 10, ("P0420", "P0301")[n % 2], mil=int(n >= 5))

    # Nothing before the slot has gone round once (P0420 back at 0.2 s): a first list of
    # one code would say the other had cleared.
    assert _listings(faults) == [
        ("P0301", "P0420"),
        ("P0301", "P0420", MIL),
    ]
    assert faults.timestamps(DTC_LIST)[0] == pytest.approx(0.2)
    _assert_counts_match(faults)


def test_a_code_not_seen_for_its_hold_time_disappears(faults: Harness) -> None:
    for n in range(10):
        _send(faults, n / 10, ("P0420", "P0301")[n % 2])
    for n in range(10, 40):  # only P0301 from 1 s on: P0420 was last seen at 0.8 s
        _send(faults, n / 10, "P0301")

    assert _listings(faults)[-1] == ("P0301",)
    gone = next(u for u in faults.updates if u.path == DTC_LIST and u.value == ("P0301",)
                and u.timestamp > 1)  # fmt: skip
    assert 0.8 + 2.0 < gone.timestamp <= 0.8 + 2.0 + 0.25 + 0.1
    _assert_counts_match(faults)


def test_code_zero_clears_the_slot_at_once(faults: Harness) -> None:
    _send(faults, 0.0, "P0420", mil=1)
    _send(faults, 0.1, "P0301", mil=1)
    _send(faults, 0.2, "P0420", mil=1)  # round once: the list is whole
    _send(faults, 0.3, None, mil=1)

    assert _listings(faults)[-2:] == [("P0301", "P0420", MIL), (MIL,)]
    _send(faults, 0.4, None, mil=0)
    assert _listings(faults)[-1] == ()
    _assert_counts_match(faults)


def test_a_slot_that_stops_arriving_drops_its_codes_after_the_hold(faults: Harness) -> None:
    for n in range(5):
        _send(faults, n / 10, "P0171")
    # The FAULTS message stops; other traffic continues.
    listener = faults.processor.bus("can0")
    for n in range(5, 40):
        faults.send("VEHICLE", n / 10, data=bytes(8))

    assert _listings(faults)[-2:] == [("P0171",), ()]
    assert 0.4 + 2.0 < faults.timestamps(DTC_LIST)[-1] <= 0.4 + 2.0 + 0.35
    assert listener is faults.processor.bus("can0")


def test_hold_zero_keeps_codes_until_the_ecu_sends_zero(make_harness: HarnessFactory) -> None:
    # stale_ms: 0 means "never stale": a cycling code is not dropped between its turns.
    harness = make_harness(_mapping(0))
    for n in range(4):
        _send(harness, n / 10, ("P0420", "P0301")[n % 2])
    for n in range(4, 100):
        _send(harness, n / 10, "P0301")

    assert _listings(harness)[-1] == ("P0301", "P0420")
    _send(harness, 10.0, None)
    assert _listings(harness)[-1] == ()


def test_lamps_are_listed_and_a_stale_lamp_is_no_longer_lit(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(_mapping(2000).replace("on_change: true}", "on_change: true, "
                                                   "stale_ms: 500}"))  # fmt: skip
    _send(harness, 0.0, None, mil=1, oil=1)
    for n in range(1, 20):  # FAULTS stops; VEHICLE keeps the clock going
        harness.send("VEHICLE", n / 10, data=bytes(8))

    # One update per change: the slot's "none", then each lamp in mapping order.
    assert _listings(harness) == [(), (MIL,), (MIL, OIL), (OIL,), ()]
    stale_at = harness.timestamps(DTC_LIST)[-2:]
    assert all(0.5 < t <= 0.5 + 0.35 for t in stale_at)
    assert harness.values("Vehicle.Diagnostics.Lamp.MalfunctionIndicator") == [True, None]
    _assert_counts_match(harness)


def test_a_diagnostic_read_adds_its_codes_and_replaces_its_last_result(
    faults: Harness,
) -> None:
    _send(faults, 0.0, "P0420", mil=1)
    _send(faults, 0.1, None, mil=1)  # the slot says "none"...
    _send(faults, 0.2, "P0420", mil=1)  # ...and shows P0420 again: whole, and settled
    faults.processor.dtc_read_result("engine", ("U0100", "B1234"), 0.5)
    faults.processor.dtc_read_result("transmission", ("P0700",), 0.6)
    faults.processor.dtc_read_result("engine", (), 0.7)  # the engine's codes were cleared

    assert _listings(faults)[-3:] == [
        ("B1234", "P0420", "U0100", MIL),
        ("B1234", "P0420", "P0700", "U0100", MIL),
        ("P0420", "P0700", MIL),
    ]
    read = [u for u in faults.updates if u.path == DTC_LIST and u.timestamp >= 0.5]
    assert {u.bus for u in read} == {"diag"}
    _assert_counts_match(faults)


def test_a_first_list_waits_for_a_whole_rotation(faults: Harness) -> None:
    """After a start, the slot's first code alone is not the list (the kill loop's find)."""
    _send(faults, 0.0, "P0301", mil=1)  # the lamp and the first of three codes
    _send(faults, 0.1, "P0420", mil=1)
    assert _listings(faults) == []  # not yet: P0171 has not had its turn
    _send(faults, 0.2, "P0171", mil=1)
    _send(faults, 0.3, "P0301", mil=1)  # round once
    assert _listings(faults) == [("P0171", "P0301", "P0420", MIL)]


def test_the_same_read_twice_publishes_once(faults: Harness) -> None:
    faults.processor.dtc_read_result("engine", ("P0301",), 1.0)
    faults.processor.dtc_read_result("engine", ("P0301",), 2.0)

    assert _listings(faults) == [("P0301",)]


def test_a_three_byte_uds_code_drops_its_failure_type(make_harness: HarnessFactory) -> None:
    dbc = (
        'VERSION ""\n\nBU_: ECU\n\nBO_ 1792 UDS_DTC: 8 ECU\n'
        ' SG_ DTC24 : 0|24@1+ (1,0) [0|16777215] "" ECU\n'
    )
    harness = make_harness(
        "Vehicle.Diagnostics.DTCList:\n  dbc2vss: {signal: DTC24, transform: {dtc: true}}\n",
        dbc=dbc,
    )

    for n in range(7):  # one code, over and over: whole once its hold time (5 s) passed
        harness.send("UDS_DTC", float(n), DTC24=(0x0301 << 8) | 0x13)  # P0301, type 0x13

    assert harness.values(DTC_LIST) == [("P0301",)]


def test_many_codes_in_turn_outlast_the_hold_time_without_flicker(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(_mapping(1000))  # held 1 s, but 12 codes take 1.2 s to go round
    codes = [f"P03{n:02d}" for n in range(12)]
    for n in range(12 * 10):  # ten rotations, a code every 100 ms
        _send(harness, n / 10, codes[n % 12])

    counts = [int(c) for c in harness.values(DTC_COUNT) if isinstance(c, int)]
    assert counts == sorted(counts), f"the list shrank while every code kept coming: {counts}"
    assert counts[-1] == 12
    _assert_counts_match(harness)

    for n in range(120, 200):  # then only one code is left
        _send(harness, n / 10, "P0300")
    assert _listings(harness)[-1] == ("P0300",)
