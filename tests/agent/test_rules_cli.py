"""``touchpoint rules check`` on files nobody here wrote: the RAV4's DBC, KUKSA's Model 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import state_codec
from agent.store.store import Store
from tests.agent.conftest import DAY, T0, Car, all_consent, make_agent, serviced_at
from touchpoint.cli import main

EXAMPLE = Path("docs/examples/campaign_low_battery.json")
BUILTIN = Path("agent/data/rules.json")
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, list[str]]:
    status = main(["rules", "check", *map(str, args)])
    return status, capsys.readouterr().out.splitlines()


def test_the_shipped_rules_and_the_example_campaign_pass_on_the_catalogue(
    repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = run(capsys, repo_root / BUILTIN, repo_root / EXAMPLE)
    assert status == 0
    assert [line.split(": ", 1)[1] for line in lines] == [
        "10 rules, no problems (signals: the signal catalogue)",
        "1 rule, no problems (signals: the signal catalogue)",
    ]


def test_a_battery_campaign_never_fires_on_the_rav4(
    repo_root: Path, rav4_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = repo_root / "docs/cars/rav4_2016/mapping.yaml"
    dbc = rav4_dir / "toyota_new_mc_pt.dbc"
    status, lines = run(capsys, repo_root / EXAMPLE, "--dbc", dbc, "--mapping", mapping)
    assert status == 1
    assert lines == [
        (
            f"{repo_root / EXAMPLE}:13: rules[0].trigger.signal.path "
            f"(campaign.low-battery-charger): {SOC} is not in the mapping {mapping}: "
            "the rule never fires"
        )
    ]


def test_kuksas_own_model3_mapping_and_vss_release(
    realdata_dir: Path, repo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kuksa = realdata_dir / "kuksa_model3"
    speed = {
        "id": "ops.fast", "version": 1,
        "trigger": {"signal": {"path": "Vehicle.Speed", "op": ">", "value": 400}},
        "card": {"kind": "campaign", "title": {"zh-CN": "快", "en": "Fast"},
                 "body": {"zh-CN": "慢一点。", "en": "Slow down."}},
    }  # fmt: skip
    document = tmp_path / "fast.json"
    document.write_text(json.dumps({"version": 1, "rules": [speed]}, indent=1), encoding="utf-8")
    car: list[str | Path] = ["--dbc", kuksa / "Model3CAN.dbc", "--mapping", kuksa / "vss_dbc.json"]
    status, lines = run(capsys, repo_root / BUILTIN, document, *car, "--vss", realdata_dir /
                        ".." / "vss" / "vss-6.0.json")  # fmt: skip
    assert status == 1
    assert lines[0].endswith("10 rules, no problems (signals: the mapping "
                             f"{kuksa / 'vss_dbc.json'})")  # fmt: skip
    assert lines[1:] == [
        (
            f"{document}:8: rules[0].trigger.signal (ops.fast): Vehicle.Speed ranges over "
            "[-100, 400]: the rule never fires"
        )
    ]


def test_every_schema_problem_at_once_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {
        "version": 1,
        "rules": [
            {"id": "ops.a", "version": 1, "trigger": {"event": "lunch"},
             "card": {"kind": "campaign", "title": {"zh-CN": "a", "en": "a"},
                      "body": {"zh-CN": "b", "en": "b"}}},
            {"id": "ops.b", "version": 1, "trigger": {"event": "parked"},
             "card": {"kind": "campaign", "title": {"zh-CN": "a", "en": "a"},
                      "body": {"zh-CN": "b", "en": "b"}}, "caps": {"per_day": 0}},
        ],
    }  # fmt: skip
    document = tmp_path / "bad.json"
    document.write_text(json.dumps(bad, indent=1), encoding="utf-8")
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1,\n "rules": [\n}', encoding="utf-8")
    status, lines = run(capsys, document, broken)
    assert status == 1
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{document}:8",
        f"{document}:40",
        f"{broken}:3",
    ]
    assert "unknown agent event 'lunch'" in lines[0]
    assert "rules[0].trigger.event (ops.a)" in lines[0]
    assert "rules[1].caps.per_day (ops.b)" in lines[1]
    assert lines[2].endswith("not valid JSON: Expecting value")


def test_the_car_from_a_head_units_settings(
    repo_root: Path, rav4_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "touchpoint.toml"
    config.write_text(
        f'[can]\nmapping = "{repo_root / "docs/cars/rav4_2016/mapping.yaml"}"\n'
        f'[[can.dbc]]\nfile = "{rav4_dir / "toyota_new_mc_pt.dbc"}"\n'
        "[policy]\nquiet_hours = [20, 6]\n",
        encoding="utf-8",
    )
    night = {
        "id": "ops.night", "version": 1, "trigger": {"time_of_day": "21:00"},
        "card": {"kind": "campaign", "title": {"zh-CN": "晚", "en": "Evening"},
                 "body": {"zh-CN": "晚安。", "en": "Good night."}},
    }  # fmt: skip
    document = tmp_path / "night.json"
    document.write_text(json.dumps({"version": 1, "rules": [night]}, indent=1), encoding="utf-8")
    status, lines = run(capsys, document, "--config", config)
    assert status == 1
    assert lines == [
        (
            f"{document}:8: rules[0].trigger.time_of_day (ops.night): fires at 21:00, inside the "
            "quiet hours (20:00-06:00): its card waits until 06:00"
        )
    ]
    assert main(["rules", "check", str(document), "--config", str(tmp_path / "none")]) == 2


def test_explain_reads_why_a_card_is_there_from_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    car = Car(make_agent())
    all_consent(car)
    car.history(serviced_at(0, T0 - 100 * DAY))
    car.park()
    car.odometer_km(16_000)  # past the 15,000 km oil change
    database = tmp_path / "touchpoint.db"
    store, _ = Store.open(database)
    try:
        store.commit([], state_codec.encode(car.agent))
    finally:
        store.close()
    assert main(["explain", "maintenance", "--db", str(database)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:4] == [
        "  rule:    builtin.maintenance.overdue@1",
        "  trigger: event maintenance_reminder",
        '  fact:    event.state = "OVERDUE"',
    ]
    assert main(["explain", "--db", str(database), "--json"]) == 0
    [card] = json.loads(capsys.readouterr().out)
    assert card["why"] == {"trigger": "event maintenance_reminder",
                           "facts": {"event.state": "OVERDUE"}}  # fmt: skip
    assert main(["explain", "fault:P0301", "--db", str(database)]) == 1
    assert "no open card 'fault:P0301'" in capsys.readouterr().err
