"""A restart never puts a parked-only card on the screen before the car is known parked.

Found by the soak (``make soak``, seed 2026): the daemon was SIGKILLed while a
parked-only maintenance card was on screen; the restarted daemon exported it at once,
with ``DrivingRestricted`` true (until its first signals the agent counts an unknown
car as driving), so an HMI saw a parked-only card while told the car was moving. On a
head unit restarting mid-drive, the driver would have seen it while driving.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

from agent.cards import Card, ChangeType, Display
from agent.policy import moving_allowed
from agent.settings import ConsentSettings, PolicySettings, StoreSettings
from can_signals.simulator import Phase, Scenario, record
from tests.daemon.conftest import RecordingSink
from tests.daemon.killharness import kill_loop_drive
from tests.daemon.test_kill_loop import CONSENTED, STEP_TIMEOUT, _replay_settings
from touchpoint.daemon import Daemon
from touchpoint.runner import AgentRunner
from touchpoint.settings import DaemonSettings


def _crash_with_parked_only_cards_shown(tmp_path: Path) -> tuple[Path, set[str], Path]:
    """Drive, park with the service due and faults on, crash: the store holds them shown."""
    before = record(kill_loop_drive(3, utc_start_s=int(time.time())), tmp_path / "before.log")
    parked = Scenario("parked on", "still parked", before.final, (Phase("parked", 20_000),))
    record(parked, tmp_path / "after.log")
    db = tmp_path / "touchpoint.db"

    async def drive_then_crash() -> set[str]:
        daemon = Daemon(_replay_settings(db, tmp_path / "before.log"))
        await daemon.start()
        await asyncio.wait_for(daemon.signals_finished.wait(), timeout=STEP_TIMEOUT)
        await daemon.settle()
        # No stop(): a crash. The store's executor thread is left to the process.
        return {c.id for c in daemon.runner.shown if not moving_allowed(c)}

    shown = asyncio.run(drive_then_crash())
    assert shown, "the drive should end with a parked-only card on screen"
    return db, shown, tmp_path / "after.log"


class _Probe(AgentRunner):
    """The daemon's runner, remembering the cards it held as shown when it was built."""

    first_shown: ClassVar[list[Card]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Probe.first_shown = list(self.shown)


def test_a_restarted_daemon_shows_no_parked_only_card_before_it_knows_the_car_is_parked(
    tmp_path: Path,
) -> None:
    db, shown_before, after = _crash_with_parked_only_cards_shown(tmp_path)

    async def restart_without_signals() -> tuple[bool, list[str]]:
        # No CAN at all: the car's state stays unknown, so driving is assumed. What the
        # runner holds as shown when it is built is what the D-Bus bridge exports when
        # it connects (before any commit); a probe records it.
        settings = DaemonSettings(
            store=StoreSettings(path=db, max_events=1_000_000, max_bytes=256 * 1024 * 1024),
            policy=PolicySettings(quiet_hours=None),
            consent=ConsentSettings(defaults=dict.fromkeys(CONSENTED, True)),
        )
        daemon = Daemon(settings)
        sink = RecordingSink()
        daemon.sinks.append(sink)
        with mock.patch("touchpoint.daemon.AgentRunner", _Probe):
            await daemon.start()
        await daemon.settle()
        restricted = daemon.runner.driving
        on_screen = [c.id for c in _Probe.first_shown if c.display is Display.PARKED_ONLY]
        on_screen += [c.id for c in daemon.runner.shown if c.display is Display.PARKED_ONLY]
        on_screen += [
            c.card.id
            for c in sink.changes
            if c.type is ChangeType.ADDED and c.card.display is Display.PARKED_ONLY
        ]
        await daemon.stop()
        return restricted, on_screen

    restricted, on_screen = asyncio.run(restart_without_signals())
    assert restricted
    assert on_screen == [], f"parked-only cards on screen while restricted: {on_screen}"

    async def restart_parked() -> set[str]:
        daemon = Daemon(_replay_settings(db, after))
        await daemon.start()
        await asyncio.wait_for(daemon.signals_finished.wait(), timeout=STEP_TIMEOUT)
        await daemon.settle()
        assert not daemon.runner.driving
        back = {c.id for c in daemon.runner.shown}
        await daemon.stop()
        return back

    # Parked again: the cards the crash left on screen are back on it.
    assert shown_before <= asyncio.run(restart_parked())
