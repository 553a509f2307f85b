"""The configuration reference is generated from the settings model and kept current.

``docs/configuration.md`` and the README's block between the config-reference markers
must equal what :mod:`touchpoint.docgen.config_reference` renders now; the example configuration
must load cleanly and show every key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Final

import pytest

from cloud_sync.signing import Verifier
from touchpoint.docgen import config_reference
from touchpoint.docgen.config_reference import COMMAND, DOCUMENT, EXAMPLE, Section, sections
from touchpoint.settings import DaemonSettings, load_settings

FIX: Final = f"run `{COMMAND}` and commit the result"
#: A commented-out setting in the example: "# key = value".
_ALTERNATIVE: Final = re.compile(r"^#\s?([a-z_]+\s*=\s*\S.*)$", re.MULTILINE)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TOUCHPOINT_"):
            monkeypatch.delenv(name)


def test_the_committed_reference_is_current(repo_root: Path) -> None:
    path = repo_root / DOCUMENT
    assert path.is_file(), f"{DOCUMENT} is missing: {FIX}"
    committed = path.read_text(encoding="utf-8")
    assert committed == config_reference.render_document(), f"{DOCUMENT} is stale: {FIX}"


def test_the_readme_block_is_current(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    block = config_reference.readme_block(readme)
    assert block is not None, (
        f"README.md lacks the {config_reference.START} ... {config_reference.END} markers"
    )
    assert block == config_reference.render_readme_block(), (
        f"README.md's configuration reference is stale: {FIX}"
    )


def test_check_mode_reports_a_stale_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "README.md").write_text(
        f"# x\n\n{config_reference.START}\nSTALE-COPY\n{config_reference.END}\n",
        encoding="utf-8",
    )
    assert config_reference.main(["--check", "--root", str(tmp_path)]) == 1
    assert COMMAND in capsys.readouterr().err
    assert config_reference.main(["--write", "--root", str(tmp_path)]) == 0
    assert config_reference.main(["--check", "--root", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# x\n\n")
    assert readme.endswith(f"{config_reference.END}\n")
    assert "STALE-COPY" not in readme


def test_write_refuses_a_readme_without_markers(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# no markers\n", encoding="utf-8")
    assert config_reference.main(["--write", "--root", str(tmp_path)]) == 1
    assert not (tmp_path / DOCUMENT).exists()


def test_every_setting_has_a_description() -> None:
    missing = [
        f"{section.header} {key.name}"
        for section in sections()
        for key in section.keys
        if not key.description
    ]
    assert not missing, f"add Field(description=...) in touchpoint/settings.py for: {missing}"


def test_every_section_and_key_of_the_model_is_listed() -> None:
    headers = [s.header for s in sections()]
    assert headers == [
        "top level",
        "[vehicle]",
        "[can]",
        "[[can.dbc]]",
        "[[can.buses]]",
        "[can.diagnostics]",
        "[[can.diagnostics.ecus]]",
        "[store]",
        "[policy]",
        "[consent]",
        "[time]",
        "[requests]",
        "[dbus]",
        "[cloud]",
    ]
    top = sections()[0]
    assert [k.name for k in top.keys] == list(DaemonSettings.model_fields)


def test_rendered_rows() -> None:
    rows = {(s.header, k.name): k for s in sections() for k in s.keys}
    path = rows["[store]", "path"]
    assert path.env == "`TOUCHPOINT_STORE__PATH`"
    assert path.default == '`"/var/lib/touchpoint/touchpoint.db"`'
    assert rows["[policy]", "max_visible"].type == "integer 1 to 10"
    assert rows["[policy]", "quiet_hours"].env == "`TOUCHPOINT_POLICY__QUIET_HOURS` (JSON)"
    assert rows["[can]", "mapping"].default == "required"
    assert rows["[can]", "replay"].default == "absent"
    assert rows["[cloud]", "session_expiry_s"].default == "`1209600` (14 days)"
    assert rows["[[can.diagnostics.ecus]]", "request_id"].default == "`0x7E0`"
    assert rows["[[can.diagnostics.ecus]]", "request_id"].env == "—"
    assert rows["[dbus]", "locale"].type == '`"zh-CN"` or `"en"`'
    assert "`location`" in rows["[consent]", "defaults"].type


def _env_keys() -> list[tuple[Section, str, str]]:
    """(section, key, variable) of every scalar key the environment can set on its own."""
    return [
        (section, key.name, key.env.strip("`"))
        for section in sections()
        for key in section.keys
        if key.env.startswith("`") and "(JSON)" not in key.env
    ]


@pytest.mark.parametrize(
    ("variable", "value", "where", "expected"),
    [
        ("TOUCHPOINT_TICK_SECONDS", "0.5", ("tick_seconds",), 0.5),
        ("TOUCHPOINT_STORE__MAX_EVENTS", "500", ("store", "max_events"), 500),
        ("TOUCHPOINT_DBUS__LOCALE", "en", ("dbus", "locale"), "en"),
        ("TOUCHPOINT_VEHICLE__MARKET", "DE", ("vehicle", "market"), "DE"),
    ],
)
def test_documented_variables_take_effect(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    where: tuple[str, ...],
    expected: Any,
) -> None:
    assert variable in {v for _, _, v in _env_keys()}, f"{variable} is not in the reference"
    monkeypatch.setenv(variable, value)
    settings = load_settings(None)
    node: Any = settings
    for name in where:
        node = getattr(node, name)
    assert node == expected


def test_documented_json_variables_take_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHPOINT_POLICY__QUIET_HOURS", "[23, 6]")
    monkeypatch.setenv("TOUCHPOINT_CAN__MAPPING", "m.yaml")
    monkeypatch.setenv("TOUCHPOINT_CAN__DBC", '[{"file": "car.dbc"}]')
    monkeypatch.setenv(
        "TOUCHPOINT_CAN__BUSES", '[{"name": "can0", "interface": "socketcan", "channel": "can0"}]'
    )
    settings = load_settings(None)
    assert settings.policy.quiet_hours == (23, 6)
    assert settings.can is not None
    assert settings.can.buses[0].channel == "can0"


def test_null_in_the_environment_turns_quiet_hours_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHPOINT_POLICY__QUIET_HOURS", "null")
    settings = load_settings(None)
    assert settings.policy.quiet_hours is None


# --- the example configuration -----------------------------------------------------------


def _example(repo_root: Path) -> Path:
    return repo_root / EXAMPLE


def test_the_example_loads_without_a_problem(repo_root: Path) -> None:
    settings = load_settings(_example(repo_root))
    assert settings.can is not None
    assert settings.can.diagnostics is not None
    assert settings.dbus is not None
    assert settings.cloud is not None
    assert len(settings.can.buses) == 2
    Verifier(settings.cloud.signing_keys)  # well-formed keys


def test_the_example_with_its_alternatives_loads_without_a_problem(
    repo_root: Path, tmp_path: Path
) -> None:
    text = _example(repo_root).read_text(encoding="utf-8")
    alternatives = _ALTERNATIVE.findall(text)
    assert alternatives, "the example shows no alternative"
    switched_on = tmp_path / "all.toml"
    switched_on.write_text(_ALTERNATIVE.sub(r"\1", text), encoding="utf-8")
    settings = load_settings(switched_on)
    assert settings.can is not None
    assert settings.can.replay is not None


def _has(data: Any, path: tuple[str, ...]) -> bool:
    """Whether the TOML data has ``path`` (in any entry of an array of tables)."""
    if not path:
        return True
    if isinstance(data, list):
        return any(_has(item, path) for item in data)
    return isinstance(data, dict) and path[0] in data and _has(data[path[0]], path[1:])


def test_the_example_shows_every_key(repo_root: Path) -> None:
    text = _ALTERNATIVE.sub(r"\1", _example(repo_root).read_text(encoding="utf-8"))
    data = tomllib.loads(text)
    missing = [
        ".".join((*section.path, key.name))
        for section in sections()
        for key in section.keys
        if not _has(data, (*section.path, key.name))
    ]
    assert not missing, f"{EXAMPLE} does not show: {missing} (add them, or as '# key = value')"
