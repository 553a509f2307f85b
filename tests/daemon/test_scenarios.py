"""The agent's decisions on simulated drives, through the real signal layer.

Each scenario is recorded by the vehicle simulator to a candump log, replayed at full
speed through the real pipeline (reference DBC and mapping) into a real daemon and
store; the assertions read the events the daemon committed and the card changes it
showed. The cloud's documents (service history, wallet, rules) are loaded by a first
daemon run without CAN, as they would have arrived earlier.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.benefits import Coupon, Wallet
from agent.cards import CardKind, ChangeType, CloseReason
from agent.consent import Category
from agent.core import Agent, Output
from agent.plan import LocalisedText, ServiceHistory, ServiceRecord, default_plan
from agent.rule_model import RuleSetDocument
from agent.settings import ConsentSettings, PolicySettings, StoreSettings
from can_signals.settings import CanSettings, DbcSettings
from can_signals.simulator import ScenarioOptions, build_scenario, record, reference_files
from tests.daemon.conftest import RecordingSink
from touchpoint.daemon import Daemon
from touchpoint.settings import DaemonSettings

Step = Callable[[Agent, float, float], Output]
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
_CONSENTED = (Category.VEHICLE_HEALTH, Category.USAGE_ANALYTICS, Category.MARKETING)


def _settings(store: Path, log: Path | None) -> DaemonSettings:
    files = reference_files()
    can = None
    if log is not None:
        can = CanSettings(mapping=files.mapping, dbc=[DbcSettings(file=files.dbc)], replay=log,
                          replay_speed=0)  # fmt: skip
    return DaemonSettings(
        store=StoreSettings(path=store),
        can=can,
        policy=PolicySettings(quiet_hours=None),
        consent=ConsentSettings(defaults=dict.fromkeys(_CONSENTED, True)),
    )


def _drive(
    tmp_path: Path, name: str, *, start_km: float, documents: list[Step], **initial: Any
) -> tuple[list[dict[str, Any]], RecordingSink]:
    """Record a short scenario, load the documents, replay the drive; return the events."""
    scenario = build_scenario(
        name, ScenarioOptions(short=True, start_odometer_km=start_km, utc_start_s=int(time.time()))
    )
    if initial:
        scenario = replace(scenario, initial=replace(scenario.initial, **initial))
    log = tmp_path / f"{name}.log"
    record(scenario, log)
    store = tmp_path / "touchpoint.db"
    sink = RecordingSink()

    async def run() -> None:
        first = Daemon(_settings(store, None))
        await first.start()
        for step in documents:
            await first.apply(step)
        await first.stop()
        daemon = Daemon(_settings(store, log))
        daemon.sinks.append(sink)
        await daemon.start()
        await asyncio.wait_for(daemon.signals_finished.wait(), timeout=60)
        await daemon.settle()
        await daemon.stop()

    asyncio.run(run())
    with sqlite3.connect(store) as connection:
        rows = connection.execute("SELECT type, payload FROM outbox ORDER BY rowid").fetchall()
    return [{"type": t, **json.loads(p)} for t, p in rows], sink


def _history(*, oil_km: float = 0.0) -> Step:
    items = tuple(i.id for i in default_plan().items)
    records = (
        ServiceRecord(items=items, odometer_km=0, source="delivery"),
        ServiceRecord(items=("tyre_rotation", "cabin_filter"), odometer_km=10_020),
        ServiceRecord(items=("engine_oil",), odometer_km=oil_km),
    )
    history = ServiceHistory(version=1, records=records)
    return lambda a, w, m: a.set_history(history, w, m)


def _of(events: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]


def _never_shown_while_driving(events: list[dict[str, Any]]) -> None:
    for event in _of(events, "card.displayed"):
        if event["kind"] != "FAULT":
            assert event["parked"], f"a parked-only card was shown while driving: {event}"


def test_the_service_reminder_appears_once_parked_with_the_right_items(tmp_path: Path) -> None:
    # Engine oil serviced at 0 km: due soon at 13,500 km, crossed on the highway.
    events, sink = _drive(tmp_path, "highway_service", start_km=13_497, oil_life_pct=40.0,
                          documents=[_history()])  # fmt: skip
    [reminder] = _of(events, "maintenance.reminder")
    assert reminder["state"] == "DUE_SOON"
    assert [i["id"] for i in reminder["items"]] == ["engine_oil"]
    assert len(_of(events, "card.created", key="maintenance")) == 1
    displayed = _of(events, "card.displayed", key="maintenance")
    assert displayed, "the reminder was never shown"
    assert all(e["parked"] for e in displayed)
    _never_shown_while_driving(events)
    added = [c for c in sink.changes if c.type is ChangeType.ADDED]
    assert [c.card.kind for c in added] == [CardKind.MAINTENANCE]
    assert "Engine oil" in added[0].card.body.en


def test_due_escalates_the_same_card_in_place(tmp_path: Path) -> None:
    # Due soon from the start (14,997.5 km), due at 15,000 km on the highway.
    events, sink = _drive(tmp_path, "highway_service", start_km=14_997.5, oil_life_pct=40.0,
                          documents=[_history()])  # fmt: skip
    states = [e["state"] for e in _of(events, "maintenance.reminder")]
    assert states == ["DUE_SOON", "DUE"]
    [created] = _of(events, "card.created", key="maintenance")
    updated = _of(events, "card.updated", key="maintenance")
    assert updated, "the escalation did not update the card"
    assert {e["card_id"] for e in updated} == {created["card_id"]}
    shown = [c.card for c in sink.changes if c.type is not ChangeType.REMOVED]
    assert shown[-1].title.en == "Service due now"


def test_a_fault_card_appears_and_is_retracted_when_the_fault_clears(tmp_path: Path) -> None:
    events, sink = _drive(tmp_path, "fault", start_km=20_000, documents=[])
    detected = {e["code"] for e in _of(events, "fault.detected")}
    cleared = {e["code"] for e in _of(events, "fault.cleared")}
    assert {"P0301", "P0300"} <= detected
    assert "LAMP:MalfunctionIndicator" not in detected  # the misfire codes explain the lamp
    assert {"P0301", "P0300"} <= cleared
    # The two misfire codes tell of one problem: one card, keyed by their group.
    assert len(_of(events, "card.created", key="fault:misfire")) == 1
    [closed] = _of(events, "card.closed", key="fault:misfire")
    assert closed["reason"] == CloseReason.CLOSED_BY_AGENT.name
    assert not [e for e in _of(events, "card.created") if e["key"].startswith("fault:P")]
    # Service-soon faults are parked-only: they came and went while driving.
    assert not [c for c in sink.changes if c.card.kind is CardKind.FAULT]


def _wallet() -> Step:
    text = LocalisedText(zh_cn="充电送咖啡", en="A coffee while you charge")
    wallet = Wallet(version=1, tier="gold", coupons=(
        Coupon(id="coffee-1", title=text, body=text, scenes=("charging_started",)),))  # fmt: skip
    return lambda a, w, m: a.set_wallet(wallet, w, m)


def test_a_charging_stop_with_a_coupon_shows_the_benefit_once(tmp_path: Path) -> None:
    events, _ = _drive(tmp_path, "park_charge", start_km=8_000, documents=[_wallet()])
    assert len(_of(events, "benefit.offered", coupon_id="coffee-1")) == 1
    assert len(_of(events, "card.created", key="benefit:coffee-1")) == 1
    displayed = _of(events, "card.displayed", key="benefit:coffee-1")
    assert displayed
    assert all(e["parked"] for e in displayed)
    _never_shown_while_driving(events)


def test_a_pushed_rule_with_a_new_trigger_works_without_code(tmp_path: Path) -> None:
    document = RuleSetDocument.model_validate({
        "version": 1,
        "rules": [{
            "id": "campaign.charged-enough", "version": 1,
            "trigger": {"signal": {"path": SOC, "op": ">=", "value": 23}},
            "card": {"key": "campaign:charged", "kind": "campaign",
                     "title": {"zh-CN": "已充至 23%", "en": "Charged to 23 %"},
                     "body": {"zh-CN": "可以出发了", "en": "Ready to go"}},
        }],
    })  # fmt: skip
    events, sink = _drive(tmp_path, "park_charge", start_km=8_000, documents=[
        lambda a, w, m: a.set_rules(document, w, m)])  # fmt: skip
    [created] = _of(events, "card.created", key="campaign:charged")
    assert created["rule"] == "campaign.charged-enough@1"
    assert any(c.card.key == "campaign:charged" for c in sink.changes if c.type is ChangeType.ADDED)
    _never_shown_while_driving(events)


@pytest.mark.parametrize("scenario", ["commute", "fault", "park_charge"])
def test_no_parked_only_card_is_ever_shown_while_driving(tmp_path: Path, scenario: str) -> None:
    events, _ = _drive(tmp_path, scenario, start_km=13_497, oil_life_pct=40.0,
                       documents=[_history(), _wallet()])  # fmt: skip
    _never_shown_while_driving(events)
