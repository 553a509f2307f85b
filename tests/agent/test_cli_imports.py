"""``touchpoint SUBCOMMAND`` imports that subcommand's module only, whatever options come first."""

from __future__ import annotations

import subprocess
import sys

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
