"""``touchpoint signals --replay``: progress on stderr, stdout left to the signals."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import can
import pytest

from tests.can_signals.conftest import encode, load_database
from touchpoint.cli import main
from touchpoint.commands import signals as cli_signals
from touchpoint.commands.signals import estimate_frames
from touchpoint.progress import Progress

WriteFile = Callable[[str, str], Path]
MAPPING = "Vehicle.Speed:\n  dbc2vss: {signal: SPEED}\n"


def _drive_log(dbc: Path, path: Path, frames: int, step: float) -> Path:
    vehicle = load_database(dbc).get_message_by_name("VEHICLE")
    lines = [
        f"({10 + n * step:.6f}) can0 100#{encode(vehicle, {'SPEED': n % 100}).hex().upper()}\n"
        for n in range(frames)
    ]
    path.write_text("".join(lines))
    return path


def test_a_replay_ends_with_a_progress_line_on_stderr_only(
    write_file: WriteFile, test_dbc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = write_file("m.yaml", MAPPING)
    log = _drive_log(test_dbc, tmp_path / "drive.log", 50, 0.01)

    status = main(["signals", "--dbc", str(test_dbc), "--mapping", str(mapping),
                   "--replay", str(log), "--speed", "0"])  # fmt: skip

    out, err = capsys.readouterr()
    assert status == 0
    assert out.startswith("10.000 can0 Vehicle.Speed = 0 km/h\n")
    assert "replay" not in out
    closing = [line for line in err.splitlines() if line.startswith("replay: ")]
    assert len(closing) == 1
    assert closing[0].startswith("replay: 50 frames in ")
    assert closing[0].endswith(" frames/s")
    # The closing line comes before the summary.
    assert err.index("replay: 50 frames") < err.index("# frames: 50")


def test_a_long_replay_prints_periodic_lines_with_rate_and_eta(
    write_file: WriteFile,
    test_dbc: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Half a second of real-time replay, a plain line every 0.1 s (stderr is no terminal).
    monkeypatch.setattr(cli_signals, "Progress", functools.partial(Progress, interval=0.1))
    mapping = write_file("m.yaml", MAPPING)
    log = _drive_log(test_dbc, tmp_path / "drive.log", 50, 0.01)

    status = main(["signals", "--dbc", str(test_dbc), "--mapping", str(mapping),
                   "--replay", str(log), "--speed", "1"])  # fmt: skip

    out, err = capsys.readouterr()
    assert status == 0
    assert "replay" not in out
    periodic = [line for line in err.splitlines() if line.startswith("replay: ") and "/50" in line]
    assert len(periodic) >= 2, err
    assert all(" frames/s, ETA " in line for line in periodic)
    assert all("\r" not in line for line in err.splitlines())


def test_no_progress_with_the_option(
    write_file: WriteFile, test_dbc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = write_file("m.yaml", MAPPING)
    log = _drive_log(test_dbc, tmp_path / "drive.log", 5, 0.01)

    status = main(["signals", "--dbc", str(test_dbc), "--mapping", str(mapping),
                   "--replay", str(log), "--speed", "0", "--no-progress"])  # fmt: skip

    assert status == 0
    assert "replay:" not in capsys.readouterr().err


def test_the_total_is_estimated_from_the_log(test_dbc: Path, tmp_path: Path) -> None:
    log = _drive_log(test_dbc, tmp_path / "drive.log", 30, 0.01)
    frames = [
        can.Message(timestamp=n / 10, arbitration_id=0x100, is_extended_id=False, data=bytes(8))
        for n in range(25)
    ]
    for suffix in (".asc", ".blf", ".trc"):
        with can.Logger(tmp_path / f"drive{suffix}") as writer:
            for frame in frames:
                writer.on_message_received(frame)
    (tmp_path / "empty.log").write_text("")

    assert estimate_frames(log) == 30
    assert estimate_frames(tmp_path / "drive.asc") == 25
    assert estimate_frames(tmp_path / "drive.blf") == 25
    assert estimate_frames(tmp_path / "drive.trc") == 25
    assert estimate_frames(tmp_path / "empty.log") == 0
    assert estimate_frames(tmp_path / "missing.log") is None
