"""The daemon's settings: TOML file, environment overrides, and what happens when they are wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.consent import Category
from agent.settings import DEFAULT_STATE_DIR
from touchpoint.settings import ConfigError, DaemonSettings, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TOUCHPOINT_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "touchpoint.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_is_the_defaults() -> None:
    settings = load_settings(None)
    assert settings == DaemonSettings()
    assert settings.store.path == DEFAULT_STATE_DIR / "touchpoint.db"
    assert settings.can is None
    assert settings.policy.quiet_hours == (22, 7)


def test_a_missing_file_stops_the_daemon(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read the config file"):
        load_settings(missing)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\npath = "/tmp/x.db"\nmax_events = = 3\n')
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 3") as caught:
        load_settings(path)
    assert str(caught.value).startswith(str(path))


def test_a_good_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
tick_seconds = 0.5
[vehicle]
id = "car-7"
model = "sedan"
[store]
path = "{tmp_path / "db.sqlite"}"
max_events = 500
[policy]
max_visible = 2
quiet_hours = [23, 6]
[time]
zone = "Europe/Berlin"
trust_ntp = false
[consent.defaults]
vehicle_health = true
marketing_benefits = false
[can]
mapping = "mapping.yaml"
dbc = [{{file = "car.dbc"}}]
buses = [{{name = "body", interface = "virtual", channel = "vc0"}}]
""",
    )
    settings = load_settings(path)
    assert settings.tick_seconds == 0.5
    assert settings.vehicle.id == "car-7"
    assert settings.store.path == tmp_path / "db.sqlite"
    assert settings.store.max_events == 500
    assert settings.policy.quiet_hours == (23, 6)
    assert settings.time.zone == "Europe/Berlin"
    assert settings.time.trust_ntp is False
    assert settings.consent.defaults == {
        Category.VEHICLE_HEALTH: True,
        Category.MARKETING: False,
    }
    assert settings.can is not None
    assert settings.can.buses[0].channel == "vc0"


def test_wrong_values_stop_the_daemon_each_named_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
tick_seconds = 600
surprise = 1
[vehicle]
id = "has spaces"
model = "ok-model"
[store]
path = 123
max_events = 5
max_bytes = 100000000
[policy]
max_visible = 0
quiet_hours = [25, 7]
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    lines = str(caught.value).splitlines()
    # Every problem at once, each where the operator wrote it.
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:2", "tick_seconds"],
        [f"{path}:3", "surprise"],
        [f"{path}:5", "vehicle.id"],
        [f"{path}:8", "store.path"],
        [f"{path}:9", "store.max_events"],
        [f"{path}:12", "policy.max_visible"],
        [f"{path}:13", "policy.quiet_hours.0"],
    ]


def test_a_can_section_missing_a_required_value_names_the_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nmax_events = 1000\n[can]\ndbc = [{file = "car.dbc"}]\n')
    with pytest.raises(ConfigError, match=rf"^{path}:3: can.mapping: Field required"):
        load_settings(path)


def test_a_bad_dbc_entry_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[can]\nmapping = "m.yaml"\ndbc = [{bus = "x"}]\n')
    with pytest.raises(ConfigError, match=rf"^{path}:3: can.dbc.0.file"):
        load_settings(path)


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path, '[store]\npath = "/from/file.db"\nmax_events = 700\n[vehicle]\nmodel = "file"\n'
    )
    monkeypatch.setenv("TOUCHPOINT_STORE__PATH", str(tmp_path / "env.db"))
    monkeypatch.setenv("TOUCHPOINT_VEHICLE__MARKET", "EU")
    monkeypatch.setenv("TOUCHPOINT_TICK_SECONDS", "2.5")
    settings = load_settings(path)
    assert settings.store.path == tmp_path / "env.db"
    assert settings.store.max_events == 700  # the file's other values stay
    assert settings.vehicle.model == "file"
    assert settings.vehicle.market == "EU"
    assert settings.tick_seconds == 2.5


def test_the_environment_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOUCHPOINT_STORE__PATH", str(tmp_path / "only-env.db"))
    settings = load_settings(None)
    assert settings.store.path == tmp_path / "only-env.db"


def test_a_wrong_value_in_the_environment_stops_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHPOINT_POLICY__MAX_VISIBLE", "99")
    with pytest.raises(ConfigError, match=r"policy\.max_visible"):
        load_settings(None)


def test_a_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[vehicle]\nmodel = "Größe"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path)


# --- the environment, variable by variable (passed explicitly: no monkeypatching) ---------


def test_lower_case_variables_work_too() -> None:
    settings = load_settings(None, {"touchpoint_vehicle__market": "JP"})
    assert settings.vehicle.market == "JP"


def test_other_touchpoint_variables_are_not_settings() -> None:
    environ = {"TOUCHPOINT_KILL_SEED": "7", "TOUCHPOINT_BENCH_FLEET_MAX": "9", "HOME": "/root"}
    settings = load_settings(None, environ)
    assert settings == DaemonSettings()


def test_a_misspelt_key_in_a_known_section_stops_the_daemon() -> None:
    expected = r"^TOUCHPOINT_STORE__PTH \(store\.pth\): Extra inputs are not permitted"
    with pytest.raises(ConfigError, match=expected):
        load_settings(None, {"TOUCHPOINT_STORE__PTH": "/tmp/x.db"})


def test_a_wrong_value_in_a_json_array_names_its_variable() -> None:
    with pytest.raises(ConfigError, match=r"^TOUCHPOINT_CAN__DBC \(can\.dbc\.0\.file\)"):
        load_settings(None, {"TOUCHPOINT_CAN__MAPPING": "m.yaml", "TOUCHPOINT_CAN__DBC": "[{}]"})


def test_a_table_that_is_not_json_stops_the_daemon() -> None:
    with pytest.raises(ConfigError, match=r"TOUCHPOINT_POLICY__QUIET_HOURS: .*JSON"):
        load_settings(None, {"TOUCHPOINT_POLICY__QUIET_HOURS": "23-6"})


def test_a_key_of_a_file_table_is_overridden_alone(tmp_path: Path) -> None:
    path = write(tmp_path, '[can]\nmapping = "file.yaml"\ndbc = [{file = "car.dbc"}]\n')
    settings = load_settings(path, {"TOUCHPOINT_CAN__MAPPING": "env.yaml"})
    assert settings.can is not None
    assert settings.can.mapping == Path("env.yaml")
    assert [entry.file for entry in settings.can.dbc] == [Path("car.dbc")]


def test_a_whole_table_from_json_then_a_key_over_it() -> None:
    environ = {
        "TOUCHPOINT_STORE": '{"path": "/json/t.db", "max_events": 600}',
        "TOUCHPOINT_STORE__MAX_EVENTS": "800",
    }
    settings = load_settings(None, environ)
    assert settings.store.path == Path("/json/t.db")
    assert settings.store.max_events == 800


def test_a_wrong_file_value_under_an_environment_override_is_still_named(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[policy]\nmax_visible = 99\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: policy.max_visible"):
        load_settings(path, {"TOUCHPOINT_POLICY__QUIET_HOURS": "[22, 7]"})


def test_a_table_the_environment_leaves_incomplete_stops_the_daemon() -> None:
    with pytest.raises(ConfigError, match=r"can\.mapping: Field required"):
        load_settings(None, {"TOUCHPOINT_CAN__DBC": '[{"file": "car.dbc"}]'})


def test_the_environment_wins_even_over_a_wrong_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "tick_seconds = -1\n")
    settings = load_settings(path, {"TOUCHPOINT_TICK_SECONDS": "3"})
    assert settings.tick_seconds == 3.0
