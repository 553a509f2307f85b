"""Degrade, don't die: what stops the daemon, and what stops only one part of it.

A configuration the operator wrote and the daemon cannot read stops it (exit status 2,
the file and line named); anything else stops only the part it concerns, and the
driver's cards keep working while the store and the bus do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "touchpoint.cli"]


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("TOUCHPOINT_")}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("store.path = 123\n", ":1: store.path: Input is not a valid path"),
        ("[store\npath = 'x'\n", ": not valid TOML: Expected ']' at the end of a table"),
        ("[policy]\nquiet_hours = [22, 7]\nmax_visible = 0\n",
         ":3: policy.max_visible: Input should be greater than or equal to 1"),
    ],
    ids=["not-a-path", "not-toml", "out-of-range"],
)  # fmt: skip
def test_a_configuration_it_cannot_read_stops_the_daemon_with_status_2(
    tmp_path: Path, text: str, said: str
) -> None:
    config = tmp_path / "touchpoint.toml"
    config.write_text(text, encoding="utf-8")

    done = subprocess.run(
        [*CLI, "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False, env=_environment(),
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert f"{config}{said}" in done.stderr
    assert "Traceback" not in done.stderr
    # It stopped before it opened anything: no database on built-in defaults.
    assert not list(tmp_path.glob("*.db"))
    assert "READY" not in done.stderr


def test_a_missing_configuration_file_stops_the_daemon(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    done = subprocess.run(
        [*CLI, "run", "--config", str(missing)],
        capture_output=True, text=True, timeout=60, check=False, env=_environment(),
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{missing}: cannot read the config file (No such file or directory)" in done.stderr
