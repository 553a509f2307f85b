"""Degrade, don't die: what stops the daemon, and what stops only one part of it.

A configuration the operator wrote and the daemon cannot read stops it (exit status 2,
the file and line named); anything else stops only the part it concerns, and the
driver's cards keep working while the store and the bus do.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import StoreSettings
from touchpoint.daemon import Daemon
from touchpoint.sdnotify import Notifier
from touchpoint.settings import DaemonSettings

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


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only file system needs root")
def test_a_read_only_state_directory_is_retried_until_it_is_writable(
    tmp_path: Path,
    listener: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Root ignores file modes: the state directory is a read-only file system, as a
    remount after a file-system error leaves it, and is remounted writable later."""
    monkeypatch.setattr("touchpoint.daemon.STORE_OPEN_RETRY_S", 0.2)
    state = tmp_path / "state"
    state.mkdir()
    sock, address = listener
    settings = DaemonSettings(store=StoreSettings(path=state / "touchpoint.db"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=4m", "tmpfs", str(state)], check=True)
    try:

        async def scenario() -> list[str]:
            daemon = Daemon(settings, notifier=Notifier(address))
            starting = asyncio.create_task(daemon.start())
            await asyncio.sleep(1.0)
            assert not starting.done()  # alive, waiting for the store, not exited
            said = sock.recv(4096).decode().splitlines()
            remount = ["mount", "-o", "remount,rw", str(state)]
            await asyncio.to_thread(subprocess.run, remount, check=True)
            await asyncio.wait_for(starting, timeout=10)
            await daemon.apply(lambda agent, wall, mono: agent.on_tick(wall, mono))
            await daemon.stop()
            return said

        said = asyncio.run(scenario())
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    assert said[0].startswith("STATUS=store cannot be opened (retrying): ")
    assert "Read-only file system" in said[0]
    # One log line, with the fix, not one per attempt.
    lines = [r.getMessage() for r in caplog.records if "retrying every" in r.getMessage()]
    assert len(lines) == 1
    assert f"fix: make {state} writable" in lines[0]


def test_sigterm_while_the_store_cannot_be_opened_stops_the_daemon_at_once(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    config = tmp_path / "touchpoint.toml"
    config.write_text(f"[store]\npath = '{blocker / 'touchpoint.db'}'\n", encoding="utf-8")
    with subprocess.Popen(
        [*CLI, "run", "--config", str(config)],
        stderr=subprocess.PIPE, text=True, env=_environment(), cwd=tmp_path,
    ) as process:  # fmt: skip
        assert process.stderr is not None
        for line in process.stderr:
            if "retrying every" in line:
                break
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "Traceback" not in process.stderr.read()
