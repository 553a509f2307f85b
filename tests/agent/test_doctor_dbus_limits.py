"""``touchpoint doctor``'s ``dbus.limits``: the bridge's refusals, from the health file."""

from __future__ import annotations

import time
from pathlib import Path

from touchpoint.doctor import Status
from touchpoint.doctor.dbus_checks import check_dbus_limits
from touchpoint.health import STALE_AFTER_S, HealthFile


def _health(directory: Path, figures: dict[str, int], written_at: float) -> Path:
    database = directory / "touchpoint.db"
    HealthFile.beside(database).write(
        {}, stalled=[], status="", wall=written_at, problems={}, counters={"dbus": figures}
    )
    return database


def test_refusals_are_a_warning_with_the_figures(tmp_path: Path) -> None:
    figures = {"calls_refused": 3864, "consent_changes_refused": 10, "reconnects": 0}
    [check] = check_dbus_limits(_health(tmp_path, figures, time.time()))
    assert check.status is Status.WARN
    assert "3864 call(s) and 10 consent change(s) refused" in check.message
    assert check.fix


def test_no_refusals_is_ok(tmp_path: Path) -> None:
    figures = {"calls_refused": 0, "consent_changes_refused": 0, "reconnects": 1}
    [check] = check_dbus_limits(_health(tmp_path, figures, time.time()))
    assert check.status is Status.OK
    assert "1 reconnection(s)" in check.message


def test_nothing_is_said_without_a_running_daemons_file(tmp_path: Path) -> None:
    assert list(check_dbus_limits(tmp_path / "touchpoint.db")) == []
    stale = _health(tmp_path, {"calls_refused": 5}, time.time() - STALE_AFTER_S - 1)
    assert list(check_dbus_limits(stale)) == []
