"""The tree keeps its import rules (tests/architecture.py), and the checker catches breaks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent import signals
from can_signals import catalogue
from tests.architecture import is_tool, reachable, violations

ROOT = Path(__file__).resolve().parents[1]


def test_the_tree_keeps_the_import_rules() -> None:
    assert violations(ROOT) == []


def test_the_daemon_loads_no_developer_tool() -> None:
    loaded = reachable(ROOT, "touchpoint.commands.run")
    assert "touchpoint.daemon" in loaded
    assert sorted(m for m in loaded if is_tool(m)) == []
    assert not any(m.startswith(("touchpoint.demo", "touchpoint.docgen")) for m in loaded)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in ("agent", "can_signals", "ui_bridge", "cloud_sync", "touchpoint"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(text))
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"agent/core.py": "from can_signals.update import X\n", "can_signals/update.py": ""},
         "the domain imports another package"),
        ({"agent/core.py": "def f():\n    import dbus_fast\n"},
         "the domain imports an I/O library"),
        ({"agent/core.py": "import sqlite3\n"}, "the domain imports an I/O library"),
        ({"ui_bridge/bridge.py": "from agent.core import Agent\n", "agent/core.py": ""},
         "an adapter imports agent internals"),
        ({"ui_bridge/bridge.py": "from cloud_sync import sync\n", "cloud_sync/sync.py": ""},
         "an adapter imports another adapter"),
        ({"can_signals/x.py": "from agent.cards import Card\n", "agent/cards.py": ""},
         "the CAN layer imports the agent"),
        ({"cloud_sync/sync.py": "from cloud_sync.reference import cloud_sim\n",
          "cloud_sync/reference/cloud_sim.py": ""},
         "a production module imports a developer tool"),
        ({"ui_bridge/bridge.py": "from touchpoint.daemon import Daemon\n",
          "touchpoint/daemon.py": ""},
         "an adapter imports the application"),
        ({"touchpoint/cli.py": "import importlib\nT = {'x': 'agent.core'}\n"
                               "importlib.import_module(T['x'])\n",
          "agent/core.py": "from touchpoint.cli import T\n"},
         "the domain imports another package"),
        ({"cloud_sync/a.py": "from agent.ports import P\n",
          "agent/ports.py": "def f():\n    from cloud_sync import a\n"},
         "cycle agent -> cloud_sync -> agent"),
    ],
)  # fmt: skip
def test_the_checker_catches_each_kind_of_break(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    found = violations(_tree(tmp_path, files))
    assert any(expected in line for line in found), found


def test_the_checker_allows_what_the_rules_allow(tmp_path: Path) -> None:
    files = {
        "agent/store/store.py": "import sqlite3\nfrom touchpoint.errors import E\n",
        "touchpoint/errors.py": "",
        "ui_bridge/bridge.py": "from agent.ports import CardBoard\nfrom agent.cards import C\n",
        "agent/ports.py": "",
        "agent/cards.py": "",
        "cloud_sync/reference/fleet_sim.py": "from agent.core import Agent\n",
        "agent/core.py": "",
        "touchpoint/daemon.py": "from ui_bridge.bridge import B\nfrom agent.core import A\n",
    }
    assert violations(_tree(tmp_path, files)) == []


def test_the_domains_signal_names_and_units_are_the_catalogues() -> None:
    specs = catalogue.CATALOGUE
    for path, unit in signals.UNITS.items():
        assert path in specs, path
        assert specs[path].unit == unit, path
    names = [v for k, v in vars(signals).items() if k.isupper() and isinstance(v, str)]
    for path in names:
        if path.startswith("Vehicle.") and not path.endswith("."):
            assert path in specs, path
    assert signals.GEAR_PARK == catalogue.GEAR_PARK
    assert signals.GEAR_DRIVE == catalogue.GEAR_DRIVE
    assert signals.LAMP_PREFIX == catalogue.LAMP_PREFIX
