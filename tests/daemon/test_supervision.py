"""Supervised loops: a crash is restarted and told everywhere; a stuck loop stops the
watchdog; a loop waiting for work does not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from agent.core import Agent, Output
from touchpoint.daemon import Daemon
from touchpoint.doctor.health_checks import check_health
from touchpoint.doctor.report import Status
from touchpoint.health import FILE_NAME
from touchpoint.sdnotify import Notifier
from touchpoint.settings import DaemonSettings
from touchpoint.tasks import Supervisor, beat, idle


def _no_can(settings: DaemonSettings) -> DaemonSettings:
    return settings.model_copy(update={"can": None, "tick_seconds": 0.1})


async def _until(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_a_crashed_loop_is_restarted_after_a_back_off_and_reported() -> None:
    told: list[tuple[str, str]] = []
    runs: list[float] = []

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) <= 2:
            raise RuntimeError(f"crash {len(runs)}")
        with idle():
            await asyncio.Event().wait()

    async def scenario() -> Supervisor:
        supervisor = Supervisor(lambda record, err: told.append((record.name, str(err))))
        supervisor.start("flaky", flaky)
        await _until(lambda: len(runs) == 3, "the third run")
        await asyncio.sleep(0.05)
        await supervisor.stop()
        return supervisor

    supervisor = asyncio.run(scenario())
    assert told == [("flaky", "crash 1"), ("flaky", "crash 2")]
    record = supervisor.loops["flaky"]
    assert record.crashes == 2
    assert record.last_error == "RuntimeError: crash 2"
    assert record.state == "stopped"
    # Back-off: 1 s, then 2 s.
    assert runs[1] - runs[0] == pytest.approx(1.0, abs=0.3)
    assert runs[2] - runs[1] == pytest.approx(2.0, abs=0.3)


def test_a_loop_not_to_be_restarted_is_failed_and_the_others_stop_cleanly() -> None:
    async def broken() -> None:
        raise ValueError("no")

    async def steady() -> None:
        while True:
            beat()
            await asyncio.sleep(0.01)

    async def scenario() -> Supervisor:
        supervisor = Supervisor()
        supervisor.start("broken", broken, restart=False)
        supervisor.start("steady", steady)
        await asyncio.sleep(0.2)
        assert supervisor.stalled(0.1) == []
        await supervisor.stop()
        return supervisor

    supervisor = asyncio.run(scenario())
    assert supervisor.loops["broken"].state == "failed"
    assert supervisor.loops["steady"].state == "stopped"


def test_a_loop_that_waits_is_alive_and_one_that_hangs_is_stalled() -> None:
    never = asyncio.Event

    async def waiting() -> None:
        with idle():
            await never().wait()

    async def hanging() -> None:
        await never().wait()  # neither beating nor saying it waits

    async def scenario() -> list[str]:
        supervisor = Supervisor()
        supervisor.start("waiting", waiting)
        supervisor.start("hanging", hanging)
        await asyncio.sleep(0.3)
        stalled = supervisor.stalled(0.2)
        await supervisor.stop()
        return stalled

    assert asyncio.run(scenario()) == ["hanging"]


def test_a_crash_in_the_daemon_is_an_event_a_status_and_a_doctor_warning(
    rav4_settings: DaemonSettings, mocker: MockerFixture
) -> None:
    settings = _no_can(rav4_settings)
    health_file = settings.store.path.parent / FILE_NAME

    async def scenario() -> tuple[str, list[str]]:
        daemon = Daemon(settings)
        types: list[str] = []
        daemon.event_taps.append(lambda events: types.extend(e.type for e in events))
        await daemon.start()
        try:
            original = daemon.agent.on_tick
            calls = 0

            # A bug in a step (there is none to provoke for real): the first tick fails.
            def on_tick(wall: float, monotonic: float) -> Output:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("a bug in the tick")
                return original(wall, monotonic)

            mocker.patch.object(Agent, "on_tick", autospec=True,
                                side_effect=lambda _self, w, m: on_tick(w, m))  # fmt: skip
            await _until(lambda: daemon.supervisor.loops["tick"].crashes == 1, "the crash")
            await _until(lambda: calls >= 3, "ticks after the restart", within=5.0)
            status = daemon._status()
            await daemon.settle()
        finally:
            await daemon.stop()
        return status, types

    status, types = asyncio.run(scenario())
    assert "restarted: tick x1" in status
    assert "daemon.loop_crashed" in types
    health = json.loads(health_file.read_text())
    assert health["loops"]["tick"]["crashes"] == 1
    assert "a bug in the tick" in health["loops"]["tick"]["last_error"]
    assert oct(health_file.stat().st_mode & 0o777) == "0o600"
    found = {c.name: c for c in check_health(settings.store.path, now=health["written_at"])}
    assert found["daemon.loops"].status is Status.WARN
    assert "tick x1" in found["daemon.loops"].message


def test_a_stuck_store_withholds_the_watchdog_until_it_moves_again(
    rav4_settings: DaemonSettings,
    listener: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
    mocker: MockerFixture,
) -> None:
    settings = _no_can(rav4_settings)
    sock, address = listener
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr("touchpoint.daemon.STALL_S", 0.5)

    def watchdog_pings(seconds: float) -> int:
        sock.settimeout(0.05)
        pings, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                pings += sock.recv(4096).decode().split("\n").count("WATCHDOG=1")
        return pings

    async def scenario() -> tuple[int, int, int, list[str]]:
        daemon = Daemon(settings, notifier=Notifier(address))
        await daemon.start()
        loop = asyncio.get_running_loop()
        try:
            fed = await loop.run_in_executor(None, watchdog_pings, 1.0)
            # A disk that stops answering (not to be had for real here): commits hang.
            hung = threading.Event()
            original = daemon.runner.store.commit
            mocker.patch.object(
                daemon.runner.store, "commit",
                side_effect=lambda *a, **k: (hung.wait(30), original(*a, **k))[1],
            )  # fmt: skip
            daemon.submit(daemon.agent.on_tick(time.time(), time.monotonic()))
            await asyncio.sleep(1.0)  # stalled after 0.5 s
            await loop.run_in_executor(None, watchdog_pings, 0.1)  # what was said before
            withheld = await loop.run_in_executor(None, watchdog_pings, 1.0)
            stalled = json.loads((settings.store.path.parent / FILE_NAME).read_text())["stalled"]
            hung.set()
            await daemon.settle()
            back = await loop.run_in_executor(None, watchdog_pings, 1.0)
        finally:
            await daemon.stop()
        return fed, withheld, back, stalled

    fed, withheld, back, stalled = asyncio.run(scenario())
    assert fed >= 5
    assert withheld == 0
    assert stalled == ["commit"]
    assert back >= 5


def test_no_health_file_and_an_old_one_are_told_apart(tmp_path: Path) -> None:
    database = tmp_path / "touchpoint.db"
    (found,) = check_health(database)
    assert found.status is Status.OK
    (tmp_path / FILE_NAME).write_text(json.dumps({"written_at": 1000.0, "loops": {}}))
    (found,) = check_health(database, now=1000.0 + 600)
    assert found.status is Status.WARN
    assert "not running" in found.message
