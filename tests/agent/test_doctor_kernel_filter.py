"""``touchpoint doctor``'s ``can.bcm``: the kernel's broadcast manager, from the health file."""

from __future__ import annotations

import time
from pathlib import Path

from can_signals.settings import BusSettings, CanSettings, DbcSettings
from touchpoint.doctor import Status
from touchpoint.doctor.kernel_filter_checks import check_kernel_filter
from touchpoint.health import STALE_AFTER_S, HealthFile


def _settings(*, interface: str = "socketcan", bcm: bool = True) -> CanSettings:
    bus = BusSettings(name="can0", interface=interface, channel="can0", bcm=bcm)
    return CanSettings(mapping=Path("m.yaml"), dbc=[DbcSettings(file=Path("c.dbc"))], buses=[bus])


def _health(directory: Path, figures: dict[str, int], written_at: float) -> Path:
    database = directory / "touchpoint.db"
    HealthFile.beside(database).write(
        {}, stalled=[], status="", wall=written_at, problems={}, counters={"can": figures}
    )
    return database


def test_frames_held_back_in_the_kernel_are_ok_with_the_figures(tmp_path: Path) -> None:
    figures = {"frames": 120, "kernel_held_back": 9480, "kernel_operations": 6}
    [check] = check_kernel_filter(_settings(), _health(tmp_path, figures, time.time()))
    assert check.status is Status.OK
    assert "held back 9480 frame(s)" in check.message
    assert "120 reached" in check.message


def test_a_kernel_without_the_broadcast_manager_is_a_warning(tmp_path: Path) -> None:
    figures = {"frames": 5000, "kernel_held_back": 0, "kernel_operations": 0}
    [check] = check_kernel_filter(_settings(), _health(tmp_path, figures, time.time()))
    assert check.status is Status.WARN
    assert check.fix is not None
    assert "modprobe can-bcm" in check.fix


def test_nothing_held_back_on_a_busy_bus_is_a_warning(tmp_path: Path) -> None:
    figures = {"frames": 5000, "kernel_held_back": 0, "kernel_operations": 6}
    [check] = check_kernel_filter(_settings(), _health(tmp_path, figures, time.time()))
    assert check.status is Status.WARN


def test_turned_off_by_the_setting_is_said(tmp_path: Path) -> None:
    database = _health(tmp_path, {"frames": 5000}, time.time())
    [check] = check_kernel_filter(_settings(bcm=False), database)
    assert check.status is Status.OK
    assert "bcm = false" in check.message


def test_nothing_is_said_without_socketcan_or_a_running_daemons_file(tmp_path: Path) -> None:
    figures = {"frames": 5000, "kernel_held_back": 0, "kernel_operations": 0}
    fresh = _health(tmp_path, figures, time.time())
    assert list(check_kernel_filter(_settings(interface="virtual"), fresh)) == []
    assert list(check_kernel_filter(None, fresh)) == []
    assert list(check_kernel_filter(_settings(), tmp_path / "elsewhere" / "touchpoint.db")) == []
    stale = _health(tmp_path, figures, time.time() - STALE_AFTER_S - 1)
    assert list(check_kernel_filter(_settings(), stale)) == []
