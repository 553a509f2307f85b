"""The live pipeline on python-can's virtual bus, kernel filters, and the CLI's error paths.

The car is another ``can.Bus`` on the same virtual channel, as a second node would be.
The socketcan filter list is checked without a kernel: python-can's ``socketcan``
backend entry is pointed at its virtual bus, which applies the same filters in software,
so the computed ``can_filters`` and their effect are both visible.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import can
import can.interfaces
import pytest

from can_signals import pipeline as pipeline_module
from can_signals.binding import bind
from can_signals.dbc import load_dbc
from can_signals.errors import SourceError
from can_signals.mapping import parse_mapping
from can_signals.pipeline import SignalPipeline
from can_signals.processor import FrameProcessor
from can_signals.sources import BusConfig, LiveBuses
from can_signals.update import SignalUpdate
from tests.can_signals.conftest import FAULTS_ID, FULL_MAPPING, encode, load_database
from touchpoint.cli import main

SPEED = "Vehicle.Speed"
WriteFile = Callable[[str, str], Path]


def _vehicle_frame(dbc: Path, kmh: float) -> can.Message:
    vehicle = load_database(dbc).get_message_by_name("VEHICLE")
    return can.Message(arbitration_id=vehicle.frame_id, is_extended_id=False,
                       data=encode(vehicle, {"SPEED": kmh, "RATIO": 1}))  # fmt: skip


def test_a_live_pipeline_decodes_frames_from_another_node(
    write_file: WriteFile, test_dbc: Path, virtual_channel: str, no_leaked_threads: None
) -> None:
    mapping = write_file("m.yaml", "Vehicle.Speed:\n  dbc2vss: {signal: SPEED, on_change: true}\n")
    speeds = [10.0, 12.5, 15.0, 17.5]

    async def run() -> list[SignalUpdate]:
        pipeline = SignalPipeline.from_files(
            mapping, [(None, test_dbc)], buses=[BusConfig("front", "virtual", virtual_channel)]
        )
        received: list[SignalUpdate] = []
        async with pipeline:
            assert pipeline.bus("front") is not None
            assert pipeline.notifier("front") is not None
            with can.Bus(interface="virtual", channel=virtual_channel) as car:
                for kmh in speeds:
                    car.send(_vehicle_frame(test_dbc, kmh))
                async with asyncio.timeout(5):
                    async for update in pipeline:
                        received.append(update)
                        if len(received) == len(speeds):
                            break
        return received

    updates = asyncio.run(run())

    assert [u.value for u in updates] == speeds
    assert {u.bus for u in updates} == {"front"}
    assert all(u.unit == "km/h" for u in updates)


def test_the_silence_watcher_marks_a_silent_bus_stale(
    write_file: WriteFile, test_dbc: Path, virtual_channel: str, no_leaked_threads: None
) -> None:
    mapping = write_file(
        "m.yaml", "Vehicle.Speed:\n  dbc2vss: {signal: SPEED, on_change: true, stale_ms: 200}\n"
    )

    async def run() -> list[SignalUpdate]:
        pipeline = SignalPipeline.from_files(
            mapping, [(None, test_dbc)], buses=[BusConfig("can0", "virtual", virtual_channel)]
        )
        received: list[SignalUpdate] = []
        async with pipeline:
            with can.Bus(interface="virtual", channel=virtual_channel) as car:
                car.send(_vehicle_frame(test_dbc, 42.0))
                async with asyncio.timeout(5):
                    async for update in pipeline:
                        received.append(update)
                        if update.value is None:  # the bus went silent: stale
                            car.send(_vehicle_frame(test_dbc, 42.0))
                        elif len(received) > 1:
                            break  # and back after the frame resumed
        return received

    updates = asyncio.run(run())

    assert [u.value for u in updates] == [42.0, None, 42.0]
    assert updates[1].timestamp - updates[0].timestamp >= 0.2


def _expected_filters(dbc: Path) -> list[dict[str, int | bool]]:
    """Every message of the test DBC is mapped by FULL_MAPPING."""
    return [
        {"can_id": m.frame_id, "can_mask": 0x1FFFFFFF if m.is_extended_frame else 0x7FF,
         "extended": m.is_extended_frame}
        for m in load_database(dbc).messages
    ]  # fmt: skip


def _key(f: dict[str, int | bool]) -> tuple[int, bool]:
    return int(f["can_id"]), bool(f["extended"])


def test_socketcan_gets_kernel_filters_for_the_mapped_ids(
    monkeypatch: pytest.MonkeyPatch,
    test_dbc: Path,
    virtual_channel: str,
    no_leaked_threads: None,
) -> None:
    monkeypatch.setitem(can.interfaces.BACKENDS, "socketcan", ("can.interfaces.virtual",
                                                               "VirtualBus"))  # fmt: skip
    binding = bind(parse_mapping(FULL_MAPPING), [load_dbc(test_dbc)])
    processor = FrameProcessor(binding, lambda _update: None)
    configs = (
        BusConfig("kernel", "socketcan", virtual_channel),
        BusConfig("plain", "virtual", virtual_channel),
    )
    live = LiveBuses(configs, processor, binding.frame_ids_for_bus)

    async def run() -> None:
        live.start(asyncio.get_running_loop())
        with can.Bus(interface="virtual", channel=virtual_channel) as car:
            car.send(can.Message(arbitration_id=0x7FF, is_extended_id=False, data=b"\x00"))
            car.send(can.Message(arbitration_id=FAULTS_ID, is_extended_id=True, data=bytes(8)))
            # 2 frames on the plain bus, 1 through the filter; counted by Notifier threads.
            async with asyncio.timeout(5):
                while processor.stats().frames < 3:  # noqa: ASYNC110 - polling another thread
                    await asyncio.sleep(0.005)
        await asyncio.to_thread(live.stop)

    try:
        asyncio.run(run())
    finally:
        live.stop()  # again, in case the test failed half-way: closing twice is harmless
    stats = processor.stats()

    assert stats.frames == 3
    assert stats.unmapped_frames == 1  # 0x7FF reached only the unfiltered bus


def test_the_computed_filter_list(
    monkeypatch: pytest.MonkeyPatch, test_dbc: Path, virtual_channel: str
) -> None:
    monkeypatch.setitem(can.interfaces.BACKENDS, "socketcan", ("can.interfaces.virtual",
                                                               "VirtualBus"))  # fmt: skip
    binding = bind(parse_mapping(FULL_MAPPING), [load_dbc(test_dbc)])
    processor = FrameProcessor(binding, lambda _update: None)
    configs = (
        BusConfig("kernel", "socketcan", virtual_channel),
        BusConfig("plain", "virtual", virtual_channel),
    )
    live = LiveBuses(configs, processor, binding.frame_ids_for_bus)

    async def run() -> tuple[object, object]:
        live.start(asyncio.get_running_loop())
        try:
            return live.buses["kernel"].filters, live.buses["plain"].filters
        finally:
            await asyncio.to_thread(live.stop)

    kernel, plain = asyncio.run(run())

    assert isinstance(kernel, list)
    assert sorted(kernel, key=_key) == sorted(_expected_filters(test_dbc), key=_key)
    assert plain is None  # python-can would filter in Python, slower than our table


def test_a_bus_that_cannot_open_closes_the_ones_already_open(
    test_dbc: Path, virtual_channel: str, no_leaked_threads: None
) -> None:
    binding = bind(parse_mapping(FULL_MAPPING), [load_dbc(test_dbc)])
    processor = FrameProcessor(binding, lambda _update: None)
    configs = (
        BusConfig("ok", "virtual", virtual_channel),
        # No CAN in this kernel, and no such interface on one that has it.
        BusConfig("broken", "socketcan", "tp-no-such-if"),
    )
    live = LiveBuses(configs, processor, binding.frame_ids_for_bus)

    async def run() -> None:
        with pytest.raises(SourceError, match="cannot open CAN bus 'broken'"):
            live.start(asyncio.get_running_loop())

    asyncio.run(run())

    assert live.buses == {}
    assert live.notifiers == {}


@pytest.mark.parametrize("interface", ["no-such-interface", "definitely-not-a-bus"])
def test_an_unknown_interface_is_a_source_error(
    write_file: WriteFile, test_dbc: Path, interface: str
) -> None:
    mapping = write_file("m.yaml", FULL_MAPPING)

    async def run() -> None:
        pipeline = SignalPipeline.from_files(
            mapping, [(None, test_dbc)], buses=[BusConfig("x", interface, "nowhere")]
        )
        async with pipeline:
            pytest.fail("the pipeline started")

    with pytest.raises(SourceError, match="cannot open CAN bus 'x'"):
        asyncio.run(run())


def test_a_pipeline_needs_exactly_one_source(write_file: WriteFile, test_dbc: Path) -> None:
    mapping = write_file("m.yaml", FULL_MAPPING)
    bus = BusConfig("can0", "virtual", "x")

    with pytest.raises(ValueError, match="either live buses or a log"):
        SignalPipeline.from_files(mapping, [(None, test_dbc)])
    with pytest.raises(ValueError, match="either live buses or a log"):
        SignalPipeline.from_files(mapping, [(None, test_dbc)], buses=[bus], replay=test_dbc)


# --- the CLI ----------------------------------------------------------------------------


def test_cli_interface_without_channel(
    write_file: WriteFile, test_dbc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = write_file("m.yaml", FULL_MAPPING)

    status = main(["signals", "--dbc", str(test_dbc), "--mapping", str(mapping),
                   "--interface", "virtual"])  # fmt: skip

    assert status == 2
    assert "--interface needs --channel" in capsys.readouterr().err


def test_cli_negative_speed(
    write_file: WriteFile, test_dbc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = write_file("m.yaml", FULL_MAPPING)

    status = main(["signals", "--dbc", str(test_dbc), "--mapping", str(mapping),
                   "--replay", str(test_dbc), "--speed", "-1"])  # fmt: skip

    assert status == 2
    assert "--speed" in capsys.readouterr().err


def test_cli_lists_every_problem_of_a_bad_mapping(
    write_file: WriteFile, test_dbc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "Vehicle.Speed:\n  dbc2vss: {signal: SPEEED}\n"
        "Vehicle.Sped:\n  dbc2vss: {signal: SPEED}\n"
        "Vehicle.TraveledDistance:\n  dbc2vss: {signal: ODOMETER, interval_ms: soon}\n"
    )
    mapping = write_file("bad.yaml", text)

    status = main(["signals", "--dbc", str(test_dbc), "--mapping", str(mapping),
                   "--replay", str(test_dbc)])  # fmt: skip

    err = capsys.readouterr().err
    assert status == 2
    assert "error: 3 problems found" in err
    assert f"{mapping}:line 1: Vehicle.Speed: unknown DBC signal 'SPEEED'" in err
    assert f"{mapping}:line 3: Vehicle.Sped: unknown VSS path" in err
    assert f"{mapping}:line 6: Vehicle.TraveledDistance: 'interval_ms' must be" in err
    assert "Traceback" not in err


def test_cli_bad_dbc_and_missing_log(
    write_file: WriteFile, test_dbc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = write_file("m.yaml", FULL_MAPPING)
    broken = write_file("broken.dbc", "BO_ nonsense\n")

    bad_dbc = main(["signals", "--dbc", str(broken), "--mapping", str(mapping),
                    "--replay", str(test_dbc)])  # fmt: skip
    err_dbc = capsys.readouterr().err
    no_log = main(["signals", "--dbc", str(test_dbc), "--mapping", str(mapping),
                   "--replay", str(tmp_path / "missing.log")])  # fmt: skip
    err_log = capsys.readouterr().err

    assert bad_dbc == 2
    assert f"{broken}:line 1: not a valid DBC file" in err_dbc
    assert no_log == 2
    assert "no such log file" in err_log


def test_cli_text_output_and_summary(
    write_file: WriteFile, test_dbc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = write_file("m.yaml", "Vehicle.Speed:\n  dbc2vss: {signal: SPEED, on_change: true, "
                                   "stale_ms: 100}\n")  # fmt: skip
    vehicle = load_database(test_dbc).get_message_by_name("VEHICLE")
    log = tmp_path / "drive.log"
    log.write_text(
        f"(10.000000) can0 100#{encode(vehicle, {'SPEED': 36.5}).hex().upper()}\n"
        "not a frame\n"
        "(11.000000) can0 7FF#00\n"
    )

    status = main(["signals", "--dbc", str(test_dbc), "--mapping", str(mapping),
                   "--replay", str(log), "--speed", "0"])  # fmt: skip

    out, err = capsys.readouterr()
    assert status == 0
    assert out.splitlines() == [
        "10.000 can0 Vehicle.Speed = 36.5 km/h",
        "11.000 can0 Vehicle.Speed = (stale)",
    ]
    assert "# frames: 2 (1 mapped, 1 unmapped, 0 on buses without a DBC)" in err
    assert "# malformed log lines skipped: 1" in err


def test_cli_reports_a_corrupt_blf_with_status_1(
    write_file: WriteFile, test_dbc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = write_file("m.yaml", FULL_MAPPING)
    log = tmp_path / "drive.blf"
    with can.Logger(log) as writer:
        for n in range(20):
            frame = can.Message(
                timestamp=n / 10, arbitration_id=0x100, is_extended_id=False, data=bytes(8)
            )
            writer.on_message_received(frame)
    data = bytearray(log.read_bytes())
    data[-40:-20] = b"\xff" * 20
    log.write_bytes(bytes(data))

    status = main(["signals", "--dbc", str(test_dbc), "--mapping", str(mapping),
                   "--replay", str(log), "--speed", "0"])  # fmt: skip

    assert status == 1
    assert "# replay error:" in capsys.readouterr().err


def _remote_server(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, "-m", "can_remote", "-i", "virtual", "-c", f"lost-{port}",
         "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the python-can-remote server did not start")
            time.sleep(0.05)
        else:
            return server


def test_a_lost_bus_is_reported_once_and_opened_again(
    write_file: WriteFile,
    test_dbc: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A python-can-remote bus, whose server goes away and comes back (a lab stopped and
    # started again). Before, python-can's Notifier left the dead socket watched by the
    # loop: a traceback per turn of the loop, thousands a second, and no way back.
    monkeypatch.setattr(pipeline_module, "REOPEN_S", 0.2)
    mapping = write_file("m.yaml", "Vehicle.Speed:\n  dbc2vss: {signal: SPEED}\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    url = f"ws://127.0.0.1:{port}/"
    servers = [_remote_server(port)]
    loop_errors: list[dict[str, object]] = []

    async def until(condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not condition():  # noqa: ASYNC110 - the pipeline has no event for it
                await asyncio.sleep(0.05)

    def send(kmh: float) -> None:
        car = can.Bus(interface="remote", channel=url)
        car.send(_vehicle_frame(test_dbc, kmh))
        car.shutdown()
        car.socket.close()  # type: ignore[attr-defined]  # left to the garbage collector

    async def speeds(pipeline: SignalPipeline, kmh: float) -> None:
        send(kmh)
        async with asyncio.timeout(10):
            async for update in pipeline:
                if update.value == kmh:
                    return

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, c: loop_errors.append(c))
        pipeline = SignalPipeline.from_files(
            mapping, [(None, test_dbc)], buses=[BusConfig("can0", "remote", url)]
        )
        async with pipeline:
            await speeds(pipeline, 31.0)
            servers[0].kill()
            servers[0].wait()
            await asyncio.sleep(1.0)  # the reopening fails a few times meanwhile
            assert len(loop_errors) == 0, f"{len(loop_errors)} errors on the loop"
            assert "can0" in pipeline.lost
            assert pipeline.bus("can0") is None
            servers.append(_remote_server(port))
            await until(lambda: not pipeline.lost)
            await speeds(pipeline, 42.0)

    try:
        with caplog.at_level(logging.WARNING, logger="can_signals.pipeline"):
            asyncio.run(run())
    finally:
        for server in servers:
            server.kill()
            server.wait()
    assert loop_errors == []
    messages = [r.getMessage() for r in caplog.records if r.name == "can_signals.pipeline"]
    assert len([m for m in messages if "lost" in m]) == 1, messages
    assert "CAN bus can0 is open again" in messages
