"""``touchpoint SUBCOMMAND`` imports that subcommand's module only, whatever options come first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: Prints whether the other subcommands' heavy modules got imported by parsing argv.
_PROBE = (
    "import sys\n"
    "from touchpoint.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit:\n"
    "    pass\n"
    "heavy = ('textual', 'ui_bridge.reference.hmi_app', 'touchpoint.commands.fleet_sim')\n"
    "print(sorted(m for m in heavy if m in sys.modules))\n"
)


@pytest.mark.parametrize("argv", [["run", "--help"], ["--log-level", "INFO", "run", "--help"]])
def test_the_daemon_does_not_import_the_other_subcommands(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


#: Loads the settings file in argv[1], imports what ``touchpoint run`` imports with them
#: (the daemon, asyncio, the CAN stack and the D-Bus bridge), and prints whether ``ssl``
#: got loaded.
_TLS_PROBE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from touchpoint.commands.run import leave_out_tls\n"
    "from touchpoint.settings import load_settings\n"
    "leave_out_tls(load_settings(Path(sys.argv[1]), environ={}))\n"
    "import asyncio, can, touchpoint.daemon, can_signals.pipeline, ui_bridge.bridge\n"
    "asyncio.run(asyncio.sleep(0))\n"
    "print(sys.modules.get('ssl') is not None)\n"
)
_CLOUD = (
    '[cloud]\nhost = "127.0.0.1"\nca_file = "ca.pem"\ncert_file = "car.pem"\nkey_file = "car.key"\n'
)
#: A [can] section (files need not exist to be settings) with one bus on ``interface``.
_CAN = (
    '[can]\nmapping = "m.yaml"\n[[can.dbc]]\nfile = "car.dbc"\n'
    '[[can.buses]]\nname = "can0"\ninterface = "{}"\nchannel = "can0"\n'
)


@pytest.mark.parametrize(
    ("config", "loads_ssl"),
    [
        ("", False),
        (_CAN.format("socketcan"), False),
        ('[dbus]\naddress = "session"\n', False),
        (_CLOUD, True),
        (_CAN.format("remote"), True),
    ],
)
def test_the_daemon_loads_tls_only_when_something_it_runs_may_use_it(
    tmp_path: Path, config: str, loads_ssl: bool
) -> None:
    path = tmp_path / "touchpoint.toml"
    path.write_text(config, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", _TLS_PROBE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert done.stdout.strip().splitlines()[-1] == str(loads_ssl)
