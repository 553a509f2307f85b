"""``touchpoint rules replay``: the real agent over a real RAV4 drive and simulated ones."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cloud_sync.reference.demo_content import demo_campaign
from touchpoint.cli import main

START = "2027-01-04T08:00:00+08:00"
BREAK: dict[str, Any] = {
    "version": 1,
    "rules": [{
        "id": "ops.highway-break", "version": 1,
        "trigger": {"signal": {"path": "Vehicle.Speed", "op": ">", "value": 40},
                    "min_interval_s": 600},
        "card": {"key": "ops:highway-break", "kind": "campaign", "urgency": "low",
                 "title": {"zh-CN": "休息一下", "en": "Time for a break"},
                 "body": {"zh-CN": "附近合作咖啡店。", "en": "A partner café nearby."},
                 "ttl_s": 3600},
        "caps": {"per_day": 1},
    }],
}  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    status = main(["rules", "replay", *map(str, args)])
    return status, capsys.readouterr().out


def test_a_campaign_on_the_real_rav4_drive_is_posted_and_held_back_while_it_moves(
    repo_root: Path, rav4_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "break.json"
    rules.write_text(json.dumps(BREAK), encoding="utf-8")
    car: list[str | Path] = ["--dbc", rav4_dir / "toyota_new_mc_pt.dbc",
           "--mapping", repo_root / "docs/cars/rav4_2016/mapping.yaml"]  # fmt: skip
    status, out = run(capsys, "--rules", rules, "--replay", rav4_dir / "drive_seg40.log", *car,
                      "--start", START, "--json")  # fmt: skip
    assert status == 0
    result = json.loads(out)
    [card] = [c for c in result["cards"] if c["rule"] == "ops.highway-break@1"]
    # The recording is a minute of driving: the card waits for the car to park.
    assert card["posted_parked"] is False
    assert card["shown"] is None
    assert card["held_s"]["moving"] > 50
    assert result["rules"]["ops.highway-break@1"]["posted"] == 1
    assert result["start"] == pytest.approx(1_799_020_800.0)
    assert 55 < result["end"] - result["start"] < 65
    status, text = run(capsys, "--rules", rules, "--replay", rav4_dir / "drive_seg40.log", *car,
                       "--start", START)  # fmt: skip
    assert re.search(r"ops\.highway-break@1 +1 +0 +0  moving 5\d s", text), text


def test_simulated_drives_side_by_side_with_a_baseline_and_a_timeline_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    campaign, empty = tmp_path / "campaign.json", tmp_path / "empty.json"
    campaign.write_text(demo_campaign().model_dump_json(by_alias=True), encoding="utf-8")
    empty.write_text(json.dumps({"version": 1, "rules": []}), encoding="utf-8")
    page = tmp_path / "timeline.html"
    status, out = run(capsys, "--rules", campaign, "--baseline", empty, "--scenario",
                      "park_charge", "--start", START, "--html", page)  # fmt: skip
    assert status == 0
    assert re.search(r"campaign\.partner-chargers@1 +0 -> 1 +0 -> 1", out), out
    assert re.search(r"2027-01-04 08:0\d:\d\d .* parked  08:0\d:\d\d .*partner-chargers", out)
    html = page.read_text(encoding="utf-8")
    assert html.count("<svg") == 2  # the rule set and the baseline
    assert html.count("class='posted'") == html.count("class='shown'") == 1
    assert "class='driving'" in html
    assert "campaign.partner-chargers@1" in html


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text('{"version": 1, "rules": [{"id": "x"}]}', encoding="utf-8")
    assert main(["rules", "replay", "--rules", str(rules), "--scenario", "park_charge"]) == 2
    assert "is not a valid rule document (3 problems: `touchpoint rules check" in (
        capsys.readouterr().err
    )
    log = tmp_path / "drive.log"
    log.write_text("", encoding="utf-8")
    assert run(capsys, "--rules", rules, "--replay", log)[0] == 2  # no --dbc, --mapping
    with pytest.raises(SystemExit):
        main(["rules", "replay", "--rules", str(rules), "--scenario", "x", "--start", "soon"])
