"""A command that needs an optional extra says which to install when it is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from touchpoint.extras import HMI

#: Runs ``touchpoint ARGV`` as if the [hmi] extra (Textual) were not installed.
_WITHOUT_TEXTUAL = (
    "import sys\n"
    "sys.modules['textual'] = None\n"
    "from touchpoint.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["hmi"], "touchpoint hmi"),
        (["hmi", "--session"], "touchpoint hmi"),
        (["demo", "--interactive"], "touchpoint demo --interactive"),
    ],
)
def test_a_command_needing_the_hmi_extra_says_how_to_install_it(
    argv: list[str], command: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TEXTUAL, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"error: {command} needs the Textual terminal UI, an optional extra:\n"
        "       pip install 'touchpoint[hmi]'\n"
    )


def test_with_the_extra_installed_nothing_is_said() -> None:
    # The test venv has every extra (make test installs .[test], which includes [hmi]).
    assert HMI.missing("touchpoint hmi") is None
