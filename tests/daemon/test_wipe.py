"""Privacy wipes: "delete my data in the car" and a change of owner, on a real store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from agent.benefits import Coupon, Wallet
from agent.consent import Category
from agent.plan import LocalisedText
from tests.daemon.conftest import RecordingSink
from touchpoint.daemon import Daemon
from touchpoint.settings import DaemonSettings

SECRET = "MEMBER-COUPON-7f3a9c"


def _wallet() -> Wallet:
    text = LocalisedText(zh_cn="咖啡券", en="Coffee")
    return Wallet(version=3, tier="gold", points=900, dealer_id="dealer-42",
                  coupons=(Coupon(id=SECRET, title=text, body=text,
                                  scenes=("charging_started",)),))  # fmt: skip


def _file_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())


@pytest.mark.parametrize("owner_change", [False, True])
def test_a_wipe_removes_the_drivers_data_and_keeps_the_cars(
    rav4_settings: DaemonSettings, owner_change: bool
) -> None:
    db = rav4_settings.store.path
    sink = RecordingSink()

    async def scenario() -> Daemon:
        daemon = Daemon(rav4_settings)
        daemon.sinks.append(sink)
        await daemon.start()
        await daemon.apply(lambda a, w, m: a.set_wallet(_wallet(), w, m))
        await asyncio.wait_for(daemon.signals_finished.wait(), timeout=30)
        await daemon.settle()
        assert daemon.agent.cards.cards, "the drive should have made a maintenance card"
        assert SECRET.encode() in _file_bytes(db)
        await daemon.wipe(owner_change=owner_change)
        odometer = daemon.agent.vehicle.odometer_m
        await daemon.stop()
        assert odometer is not None
        return daemon

    daemon = asyncio.run(scenario())
    with sqlite3.connect(db) as connection:
        events = connection.execute("SELECT type, payload FROM outbox").fetchall()
        sections = dict(connection.execute("SELECT section, value FROM state").fetchall())
    assert [t for t, _ in events] == ["privacy.wiped"]
    assert json.loads(events[0][1])["scope"] == ("owner_change" if owner_change else "my_data")
    assert json.loads(sections["wallet"])["wallet"] is None
    assert json.loads(sections["cards"])["cards"] == []
    assert json.loads(sections["vehicle"])["odometer_m"] == daemon.agent.vehicle.odometer_m
    consent = json.loads(sections["consent"])
    if owner_change:
        assert consent == {}
    else:
        assert consent[Category.VEHICLE_HEALTH.value]["granted"] is True
    assert SECRET.encode() not in _file_bytes(db), "the coupon is still on disk"
