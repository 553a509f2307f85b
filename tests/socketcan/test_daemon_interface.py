"""The daemon on a real SocketCAN interface that appears late, goes down and comes back.

The interface is a vcan the test creates, takes down and deletes with ``ip link`` (the
guest runs as root), as a late driver, a bus-off recovery or a reloaded module would.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from agent.consent import Category
from agent.settings import ConsentSettings, StoreSettings
from can_signals.settings import BusSettings, CanSettings, DbcSettings
from tests.socketcan.kernel import ip_link
from touchpoint import daemon as daemon_module
from touchpoint.daemon import Daemon
from touchpoint.settings import DaemonSettings

PROJECT = Path(__file__).resolve().parents[2]
CHANNEL = "vcan7"
# Three of the recording's speed frames (0xB4), close enough for the speed guard.
SPEED_FRAMES = {
    29.38: bytes.fromhex("000000001D0B7A5E"),
    29.54: bytes.fromhex("00000000250B8A76"),
    29.86: bytes.fromhex("00000000290BAA9A"),
}


@pytest.fixture
def late_channel() -> Iterator[str]:
    with contextlib.suppress(subprocess.CalledProcessError):
        ip_link("del", CHANNEL)
    yield CHANNEL
    with contextlib.suppress(subprocess.CalledProcessError):
        ip_link("del", CHANNEL)


def _settings(tmp_path: Path, rav4_dir: Path, channel: str) -> DaemonSettings:
    return DaemonSettings(
        store=StoreSettings(path=tmp_path / "touchpoint.db"),
        can=CanSettings(
            mapping=PROJECT / "docs" / "cars" / "rav4_2016" / "mapping.yaml",
            dbc=[DbcSettings(file=rav4_dir / "toyota_new_mc_pt.dbc")],
            buses=[BusSettings(name="can0", interface="socketcan", channel=channel)],
        ),
        consent=ConsentSettings(defaults={Category.VEHICLE_HEALTH: True}),
    )


async def _until(condition: str, check: object, within: float = 60.0) -> None:
    for _ in range(int(within / 0.05)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {condition}")


def _send_speed(channel: str, kmh: float) -> None:
    with can.Bus(interface="socketcan", channel=channel) as bus:
        bus.send(can.Message(arbitration_id=0xB4, data=SPEED_FRAMES[kmh], is_extended_id=False))


def test_the_daemon_follows_an_interface_that_appears_late_goes_down_and_comes_back(
    tmp_path: Path, rav4_dir: Path, late_channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "CAN_RETRY_S", 0.2)
    settings = _settings(tmp_path, rav4_dir, late_channel)
    speeds: list[float] = []

    def heard(kmh: float) -> bool:
        return kmh in speeds

    async def scenario() -> None:
        daemon = Daemon(settings)
        daemon.signal_taps.append(
            lambda updates: speeds.extend(
                float(u.value) for u in updates  # type: ignore[arg-type]
                if u.path == "Vehicle.Speed" and u.value is not None
            )
        )  # fmt: skip
        await daemon.start()
        try:
            # No such interface yet: the daemon serves on and retries.
            assert daemon.can_problem is not None
            assert "vcan7" in daemon.can_problem
            ip_link("add", "dev", late_channel, "type", "vcan")
            ip_link("set", late_channel, "up")
            await _until("the daemon to open the late interface", lambda: not daemon.can_problem)
            _send_speed(late_channel, 29.38)
            await _until("the first speed", lambda: heard(29.38))

            # Down (the socket gets ENETDOWN), and up again: frames flow on.
            ip_link("set", late_channel, "down")
            await asyncio.sleep(0.5)
            ip_link("set", late_channel, "up")
            _send_speed(late_channel, 29.54)
            await _until("a speed after the interface came back up", lambda: heard(29.54))

            # Gone altogether (a reloaded driver) and back: a new interface, same name,
            # which the old socket never hears from.
            pipeline = daemon.pipeline
            assert pipeline is not None
            ip_link("del", late_channel)
            await _until("the bus to be reported lost", lambda: "can0" in pipeline.lost_buses)
            ip_link("add", "dev", late_channel, "type", "vcan")
            ip_link("set", late_channel, "up")
            await _until("the bus to be reopened", lambda: not pipeline.lost_buses)
            _send_speed(late_channel, 29.86)
            await _until("a speed from the re-created interface", lambda: heard(29.86))
        finally:
            await daemon.stop()

    asyncio.run(scenario())
