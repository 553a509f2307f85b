"""The daemon in-process: a real replay through the real pipeline into a real store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import time
import uuid
from pathlib import Path

import can
import pytest

from agent.clock import TimeSource
from agent.consent import CONSENTABLE, Category
from agent.settings import ConsentSettings
from can_signals import sources
from can_signals.errors import SourceError
from can_signals.settings import BusSettings
from tests.daemon.conftest import RecordingSink
from touchpoint import daemon as daemon_module
from touchpoint.daemon import Daemon
from touchpoint.sdnotify import Notifier
from touchpoint.settings import DaemonSettings


def _payloads(db: Path) -> list[tuple[dict[str, object], str]]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT payload, type FROM outbox ORDER BY time").fetchall()
    return [(json.loads(p), t) for p, t in rows]


def _events(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT id, type FROM outbox ORDER BY rowid").fetchall()


async def _run_once(settings: DaemonSettings, *, replay: bool = True) -> Daemon:
    daemon = Daemon(settings)
    daemon.sinks.append(RecordingSink())
    await daemon.start()
    if replay:
        await asyncio.wait_for(daemon.signals_finished.wait(), timeout=30)
    await daemon.settle()
    await daemon.stop()
    return daemon


def test_a_replayed_drive_reminds_once_and_a_restart_does_not_repeat_it(
    rav4_settings: DaemonSettings,
) -> None:
    db = rav4_settings.store.path
    first = asyncio.run(_run_once(rav4_settings))
    events = _events(db)
    types = [t for _, t in events]
    # The RAV4 has done 25,000 km and the default plan has no service history: due.
    assert types.count("maintenance.reminder") == 1
    assert types.count("card.created") == 1
    assert first.agent.vehicle.odometer_m is not None
    assert first.agent.vehicle.odometer_m >= 25_088_000

    second = asyncio.run(_run_once(rav4_settings))
    after = _events(db)
    assert [e for e in after if e in events] == events, "an event committed earlier was lost"
    new_types = [t for e, t in after if (e, t) not in events]
    assert "maintenance.reminder" not in new_types, "the restart reminded the driver again"
    assert "card.created" not in new_types
    assert len({e for e, _ in after}) == len(after)
    assert second.agent.vehicle.odometer_m == first.agent.vehicle.odometer_m


def test_no_consent_means_nothing_of_that_category_is_queued(
    rav4_settings: DaemonSettings,
) -> None:
    settings = rav4_settings.model_copy(update={"consent": ConsentSettings()})
    daemon = asyncio.run(_run_once(settings))
    categories = {
        c for (c,) in sqlite3.connect(settings.store.path).execute("SELECT category FROM outbox")
    }
    assert categories <= {"service_requests"}
    assert daemon.commits >= 1


def test_a_corrupt_database_is_moved_aside_and_the_daemon_runs(
    rav4_settings: DaemonSettings,
) -> None:
    db = rav4_settings.store.path
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a database" * 1000)
    daemon = asyncio.run(_run_once(rav4_settings))
    assert daemon.open_report is not None
    assert daemon.open_report.recovered_from is not None
    assert daemon.open_report.recovered_from.read_bytes().startswith(b"this is not")
    types = [t for _, t in _events(db)]
    assert "store.recovered" in types
    # The cards serve on; what the store lost is not guessed back: the defaults would
    # grant vehicle health, but the driver may have withdrawn it, so nothing of it is sent.
    assert daemon.agent.cards.by_key("maintenance") is not None
    assert "maintenance.reminder" not in types
    assert not any(daemon.agent.consent.allows(c, time.time()) for c in CONSENTABLE)


def test_an_empty_database_file_is_a_recovery_too(rav4_settings: DaemonSettings) -> None:
    db = rav4_settings.store.path
    db.parent.mkdir(parents=True, exist_ok=True)
    db.touch()
    daemon = asyncio.run(_run_once(rav4_settings))
    assert daemon.open_report is not None
    assert daemon.open_report.problem == "the database file was empty"
    recovered = [p for p, t in _payloads(db) if t == "store.recovered"]
    assert recovered == [
        {"problem": "the database file was empty", "moved_to": None, "consent": "withdrawn"}
    ]
    assert not any(daemon.agent.consent.allows(c, time.time()) for c in CONSENTABLE)


def test_a_withdrawal_survives_a_restart_and_defaults_apply_only_to_a_new_car(
    rav4_settings: DaemonSettings,
) -> None:
    first = asyncio.run(_run_once(rav4_settings))
    assert first.agent.consent.allows(Category.VEHICLE_HEALTH, time.time())

    async def withdraw() -> None:
        daemon = Daemon(rav4_settings.model_copy(update={"can": None}))
        await daemon.start()
        health = Category.VEHICLE_HEALTH
        await daemon.apply(lambda a, w, m: a.set_consent(
            health, granted=False, valid_for=None, wall=w, monotonic=m))  # fmt: skip
        await daemon.stop()

    asyncio.run(withdraw())
    again = asyncio.run(_run_once(rav4_settings))
    assert not again.agent.consent.allows(Category.VEHICLE_HEALTH, time.time())


def test_without_can_settings_the_daemon_still_serves(tmp_path: Path) -> None:
    settings = DaemonSettings(store={"path": tmp_path / "t.db"})  # type: ignore[arg-type]

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        assert daemon.pipeline is None
        await daemon.settle()
        await daemon.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("trust_ntp", [True, False])
def test_an_ntp_synchronised_system_clock_is_a_trusted_source(
    tmp_path: Path, trust_ntp: bool
) -> None:
    settings = DaemonSettings(
        store={"path": tmp_path / "t.db"},  # type: ignore[arg-type]
        time={"trust_ntp": trust_ntp},  # type: ignore[arg-type]
    )

    async def scenario() -> None:
        # The kernel's answer is given: this machine's clock may not be synchronised.
        daemon = Daemon(settings, ntp_synchronised=lambda: True)
        await daemon.start()
        try:
            await daemon.settle()
            assert daemon.agent.clock.trusted is trust_ntp
            if trust_ntp:
                assert daemon.agent.clock.source is TimeSource.NTP
        finally:
            await daemon.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "mapping_text", ["not: [valid", "Vehicle.Speed: {dbc2vss: {signal: NOPE}}"]
)
def test_a_broken_mapping_degrades_to_no_can(
    rav4_settings: DaemonSettings, tmp_path: Path, mapping_text: str
) -> None:
    mapping = tmp_path / "broken.yaml"
    mapping.write_text(mapping_text)
    assert rav4_settings.can is not None
    can = rav4_settings.can.model_copy(update={"mapping": mapping})
    settings = rav4_settings.model_copy(update={"can": can})

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        assert daemon.pipeline is None
        await daemon.stop()

    asyncio.run(scenario())


def _live(settings: DaemonSettings, interface: str, channel: str) -> DaemonSettings:
    assert settings.can is not None
    bus = BusSettings(name="can0", interface=interface, channel=channel)
    can = settings.can.model_copy(update={"replay": None, "buses": [bus]})
    return settings.model_copy(update={"can": can})


def test_a_can_interface_that_cannot_be_opened_does_not_stop_the_daemon(
    rav4_settings: DaemonSettings,
    caplog: pytest.LogCaptureFixture,
    listener: tuple[socket.socket, str],
) -> None:
    # This kernel has no AF_CAN: opening a socketcan bus fails for real.
    settings = _live(rav4_settings, "socketcan", "tp-missing0")
    sock, address = listener

    async def scenario() -> None:
        daemon = Daemon(settings, notifier=Notifier(address))
        await daemon.start()
        try:
            assert daemon.can_problem is not None
            ready = sock.recv(4096).decode().splitlines()
            assert ready[0] == "READY=1"
            assert ready[1].startswith("STATUS=CAN not open (retrying), ")
            assert daemon.pipeline is not None
            # The agent serves on: a tick commits as usual.
            commits = daemon.commits
            await daemon.apply(lambda agent, wall, mono: agent.on_tick(wall, mono))
            assert daemon.commits > commits
        finally:
            await daemon.stop()

    asyncio.run(scenario())
    assert "cannot open the CAN buses" in caplog.text


def test_a_can_interface_that_appears_later_is_picked_up(
    rav4_settings: DaemonSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interface coming up late cannot be staged without kernel CAN: the first two
    # opening attempts fail as a missing interface does, then the virtual bus opens.
    real_open = sources._open_bus
    attempts: list[str] = []

    def open_late(
        config: sources.BusConfig, mapped: list[tuple[int, bool]], *, pass_none: bool = False
    ) -> can.BusABC:
        attempts.append(config.name)
        if len(attempts) <= 2:
            raise SourceError("cannot open can0: No such device")
        return real_open(config, mapped, pass_none=pass_none)

    monkeypatch.setattr(sources, "_open_bus", open_late)
    monkeypatch.setattr(daemon_module, "CAN_RETRY_S", 0.05)
    channel = f"tp-late-{uuid.uuid4().hex[:8]}"
    settings = _live(rav4_settings, "virtual", channel)

    async def scenario() -> None:
        daemon = Daemon(settings)
        heard: list[str] = []
        daemon.signal_taps.append(lambda updates: heard.extend(u.path for u in updates))
        await daemon.start()
        try:
            for _ in range(100):
                if daemon.can_problem is None:
                    break
                await asyncio.sleep(0.05)
            assert daemon.can_problem is None
            sender = can.Bus(interface="virtual", channel=channel)
            try:
                # The RAV4's speed frame (0xB4), from the recording's DBC.
                sender.send(can.Message(arbitration_id=0xB4, data=bytes(8), is_extended_id=False))
                for _ in range(100):
                    if heard:
                        break
                    await asyncio.sleep(0.05)
            finally:
                sender.shutdown()
            assert heard
        finally:
            await daemon.stop()

    asyncio.run(scenario())
    assert len(attempts) == 3


def test_the_store_and_its_directory_are_private_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "state" / "touchpoint"
    settings = DaemonSettings(store={"path": state / "t.db"})  # type: ignore[arg-type]
    old = os.umask(0o022)
    try:
        asyncio.run(_run_once(settings.model_copy(update={"can": None}), replay=False))
    finally:
        os.umask(old)
    assert state.stat().st_mode & 0o777 == 0o700
    files = {p.name: p.stat().st_mode & 0o777 for p in state.iterdir()}
    assert files.get("t.db") == 0o600
    assert set(files.values()) == {0o600}, files  # the WAL and the health file too


def test_an_existing_store_readable_by_others_is_made_private(tmp_path: Path) -> None:
    settings = DaemonSettings(store={"path": tmp_path / "t.db"})  # type: ignore[arg-type]
    asyncio.run(_run_once(settings, replay=False))
    (tmp_path / "t.db").chmod(0o644)
    asyncio.run(_run_once(settings, replay=False))
    assert (tmp_path / "t.db").stat().st_mode & 0o777 == 0o600
