"""The daemon's word on the kernel's broadcast manager: health file, status line, doctor.

The daemon reads a vcan the test creates; one speed frame is sent again and again, so
the broadcast manager passes the first and holds back the rest. With ``bcm = false`` on
the bus, every frame reaches the daemon and nothing is held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from agent.settings import StoreSettings
from can_signals.settings import BusSettings, CanSettings, DbcSettings
from tests.socketcan.kernel import ip_link
from touchpoint import daemon as daemon_module
from touchpoint.daemon import Daemon
from touchpoint.doctor import Check, Status
from touchpoint.doctor.kernel_filter_checks import check_kernel_filter
from touchpoint.health import FILE_NAME, Health, read_health
from touchpoint.settings import DaemonSettings

PROJECT = Path(__file__).resolve().parents[2]
CHANNEL = "vcan6"
SPEED = bytes.fromhex("000000001D0B7A5E")  # 0xB4 from the recording: 29.38 km/h
SENT = 30


@pytest.fixture
def channel() -> Iterator[str]:
    with contextlib.suppress(subprocess.CalledProcessError):
        ip_link("del", CHANNEL)
    ip_link("add", "dev", CHANNEL, "type", "vcan")
    ip_link("set", CHANNEL, "up")
    yield CHANNEL
    with contextlib.suppress(subprocess.CalledProcessError):
        ip_link("del", CHANNEL)


def _settings(tmp_path: Path, rav4_dir: Path, *, bcm: bool) -> DaemonSettings:
    return DaemonSettings(
        store=StoreSettings(path=tmp_path / "touchpoint.db"),
        can=CanSettings(
            mapping=PROJECT / "docs" / "cars" / "rav4_2016" / "mapping.yaml",
            dbc=[DbcSettings(file=rav4_dir / "toyota_new_mc_pt.dbc")],
            buses=[BusSettings(name="can0", interface="socketcan", channel=CHANNEL, bcm=bcm)],
        ),
    )


def _run(settings: DaemonSettings) -> tuple[Health, list[Check]]:
    """Start the daemon, send the same frame :data:`SENT` times: its health once counted.

    With it, what ``touchpoint doctor`` says of the running daemon (``can.bcm``). (Not
    the file a stopped daemon leaves: its buses are closed by then.)
    """
    path = settings.store.path.parent / FILE_NAME

    def counted() -> Health | None:
        health = read_health(path)
        if health is None:
            return None
        figures = health.counters.get("can", {})
        done = figures.get("frames", 0) + figures.get("kernel_held_back", 0) >= SENT
        return health if done else None

    async def scenario() -> tuple[Health, list[Check]]:
        daemon = Daemon(settings)
        await daemon.start()
        try:
            with can.Bus(interface="socketcan", channel=CHANNEL) as bus:
                for _ in range(SENT):
                    bus.send(can.Message(arbitration_id=0xB4, data=SPEED, is_extended_id=False))
            for _ in range(600):
                health = counted()
                if health is not None:
                    return health, list(check_kernel_filter(settings.can, settings.store.path))
                await asyncio.sleep(0.05)
            raise AssertionError(f"the daemon's health file never counted {SENT} frames")
        finally:
            await daemon.stop()

    return asyncio.run(scenario())


def test_the_daemon_reports_the_frames_the_kernel_held_back(
    tmp_path: Path, rav4_dir: Path, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "HEALTH_S", 0.2)
    settings = _settings(tmp_path, rav4_dir, bcm=True)
    health, [check] = _run(settings)
    figures = health.counters["can"]
    assert figures["kernel_operations"] == 6  # five mapped frames, ENGINE_RPM twice
    assert figures["frames"] == 1  # the first speed frame; the rest were unchanged
    assert figures["kernel_held_back"] == SENT - 1
    assert f"{SENT - 1} frames held back in the kernel" in health.status
    assert check.status is Status.OK
    assert f"held back {SENT - 1} frame(s)" in check.message


def test_bcm_false_reads_every_frame_on_the_raw_socket(
    tmp_path: Path, rav4_dir: Path, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "HEALTH_S", 0.2)
    settings = _settings(tmp_path, rav4_dir, bcm=False)
    health, [check] = _run(settings)
    assert health.counters["can"] == {"frames": SENT, "kernel_held_back": 0, "kernel_operations": 0}
    assert "held back" not in health.status
    assert "bcm = false" in check.message
