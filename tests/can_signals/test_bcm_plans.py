"""What the kernel's broadcast manager is given (can_signals.bcm), and how plans it feeds age.

The socket itself needs kernel CAN: tests/socketcan runs it in the test VM. Here: which
frames may go to it, the content mask, and the processor's side of the bargain (frames
the kernel keeps alive do not go stale, a route that must see the next frame re-arms it,
a throttled route keeps no interval of its own).
"""

from __future__ import annotations

from pathlib import Path

import can
import pytest

from can_signals.bcm import bcm_eligible, bcm_keys, content_mask, throttle_groups
from can_signals.layout import signal_bits
from can_signals.pipeline import SignalPipeline
from can_signals.processor import FrameProcessor
from can_signals.routes import Plan
from can_signals.update import SignalUpdate

PROJECT = Path(__file__).resolve().parents[2]
MAPPING = PROJECT / "docs" / "cars" / "rav4_2016" / "mapping.yaml"
SPEED_ID, RPM_ID, GEAR_ID = 0xB4, 0x1C4, 0x3BC


@pytest.fixture
def rav4(rav4_dir: Path) -> tuple[FrameProcessor, list[SignalUpdate]]:
    dbc = rav4_dir / "toyota_new_mc_pt.dbc"
    binding = SignalPipeline.from_files(MAPPING, [(None, dbc)], replay=dbc).binding
    updates: list[SignalUpdate] = []
    return FrameProcessor(binding, updates.append), updates


def _plan(processor: FrameProcessor, key: int) -> Plan:
    return processor.bus("can0").table[key]


def test_frames_whose_routes_all_report_changes_go_to_the_kernel(
    rav4: tuple[FrameProcessor, list[SignalUpdate]],
) -> None:
    processor, _ = rav4
    table = processor.bus("can0").table
    assert bcm_eligible(table[SPEED_ID])  # one route, 100 ms
    assert bcm_eligible(table[GEAR_ID])  # on change, no interval
    assert bcm_eligible(table[RPM_ID])  # RPM every 500 ms, IsRunning every change
    assert sorted(bcm_keys(table)) == sorted(table)


def test_a_route_wanting_every_frame_keeps_its_frame_on_the_raw_socket(
    rav4: tuple[FrameProcessor, list[SignalUpdate]],
) -> None:
    processor, _ = rav4
    plan = _plan(processor, RPM_ID)
    route = plan.routes[0]
    route.on_change = False  # a value every interval, changed or not: the kernel throttles
    assert bcm_eligible(plan)
    route.interval_ms = 0  # every frame: nothing for the kernel to hold back
    assert not bcm_eligible(plan)
    assert RPM_ID not in bcm_keys(processor.bus("can0").table)


def test_routes_wanting_a_value_every_interval_get_an_operation_of_their_own(
    rav4: tuple[FrameProcessor, list[SignalUpdate]],
) -> None:
    processor, _ = rav4
    plan = _plan(processor, RPM_ID)
    running, rpm = plan.routes[1], plan.routes[0]
    assert (running.path, rpm.path) == (
        "Vehicle.Powertrain.CombustionEngine.IsRunning",
        "Vehicle.Powertrain.CombustionEngine.Speed",
    )
    running.interval_ms = 500
    rpm.on_change = False
    groups = throttle_groups(plan)
    assert [[r.path for r in group] for group in groups] == [[running.path], [rpm.path]]


def test_a_frame_read_at_two_intervals_gets_one_kernel_operation_per_interval(
    rav4: tuple[FrameProcessor, list[SignalUpdate]],
) -> None:
    processor, _ = rav4
    plan = _plan(processor, RPM_ID)
    groups = throttle_groups(plan)
    assert [[(r.path, r.interval_ms) for r in group] for group in groups] == [
        [("Vehicle.Powertrain.CombustionEngine.IsRunning", 0)],
        [("Vehicle.Powertrain.CombustionEngine.Speed", 500)],
    ]
    # Each operation watches its own routes' bits only.
    masks = [int.from_bytes(content_mask(group), "little") for group in groups]
    assert all(masks)
    assert masks[0] & masks[1] == 0
    assert masks[0] | masks[1] == int.from_bytes(content_mask(plan.routes), "little")
    assert len(throttle_groups(_plan(processor, SPEED_ID))) == 1


def test_the_content_mask_covers_the_mapped_signals_bits(
    rav4: tuple[FrameProcessor, list[SignalUpdate]],
) -> None:
    processor, _ = rav4
    plan = _plan(processor, SPEED_ID)
    signal = plan.routes[0].binding.signal
    expected = sum(1 << bit for bit in signal_bits(signal))
    assert content_mask(plan.routes) == expected.to_bytes(8, "little")
    assert content_mask(plan.routes) != bytes(8)


def _gear(processor: FrameProcessor, timestamp: float, data: bytes) -> None:
    processor.bus("can0")(
        can.Message(timestamp=timestamp, arbitration_id=GEAR_ID, is_extended_id=False, data=data)
    )


def test_a_frame_the_kernel_keeps_alive_does_not_go_stale(
    rav4: tuple[FrameProcessor, list[SignalUpdate]],
) -> None:
    processor, updates = rav4
    plan = _plan(processor, GEAR_ID)
    _gear(processor, 100.0, bytes([0, 0x20, 0, 0, 0, 0, 0, 0]))
    assert [u.value for u in updates] == [126]  # P
    plan.kernel_alive = True  # unchanged frames keep coming, held back in the kernel
    processor.check_stale(200.0)
    assert [u.value for u in updates] == [126]
    plan.kernel_alive = False  # the kernel's RX_TIMEOUT
    processor.check_stale(300.0)
    assert [u.value for u in updates] == [126, None]


def test_a_route_that_must_see_the_next_frame_rearms_the_kernel(
    rav4: tuple[FrameProcessor, list[SignalUpdate]],
) -> None:
    processor, updates = rav4
    plan = _plan(processor, GEAR_ID)
    rearmed: list[str] = []
    plan.rearm = lambda route: rearmed.append(route.path)
    _gear(processor, 100.0, bytes([0, 0x20, 0, 0, 0, 0, 0, 0]))
    processor.check_stale(200.0)  # stale: the next frame is news even if identical
    assert updates[-1].value is None
    assert rearmed == ["Vehicle.Powertrain.Transmission.SelectedGear"]


def test_a_throttled_plan_keeps_no_interval_of_its_own(
    rav4: tuple[FrameProcessor, list[SignalUpdate]],
) -> None:
    processor, updates = rav4
    plan = _plan(processor, SPEED_ID)
    plan.throttle_in_kernel()
    assert [r.interval_ms for r in plan.routes] == [0]
    bus = processor.bus("can0")
    for n, stamp in enumerate((100.0, 100.01, 100.02)):
        data = bytes([0, 0, 0, 0, 0, (n + 1) * 4, 0, 0])
        bus(can.Message(timestamp=stamp, arbitration_id=SPEED_ID, is_extended_id=False, data=data))
    assert len([u for u in updates if u.path == "Vehicle.Speed"]) == 3


def test_a_frame_passed_for_one_interval_reaches_only_that_intervals_routes(
    rav4: tuple[FrameProcessor, list[SignalUpdate]],
) -> None:
    processor, updates = rav4
    plan = _plan(processor, RPM_ID)
    running, rpm = throttle_groups(plan)
    plan.throttle_in_kernel()
    bus = processor.bus("can0")
    idle = bytes(8)
    bus.feed_routes(plan, running, 100.0, idle)
    bus.feed_routes(plan, rpm, 100.0, idle)
    before = len(updates)
    # The engine speed changed, but only the every-change operation passed the frame (the
    # 500 ms one holds it): the engine speed must wait for its own operation.
    revving = bytes([0x0B, 0xB8, 0, 0, 0, 0, 0, 0])
    bus.feed_routes(plan, running, 100.1, revving)
    assert [u.path for u in updates[before:]] == []
    bus.feed_routes(plan, rpm, 100.5, revving)
    assert [u.path for u in updates[before:]] == ["Vehicle.Powertrain.CombustionEngine.Speed"]
