"""``touchpoint sim``: in-process runs, and across processes over python-can-remote.

The cross-process test starts ``python -m can_remote`` (bound to 127.0.0.1 on a free
port), ``touchpoint signals --interface remote`` reading from it and ``touchpoint sim
--interface remote`` writing to it, each in its own process, as a developer would.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import can
import pytest

from can_signals.simulator import (
    SCENARIOS,
    FrameEncoder,
    ScenarioOptions,
    build_scenario,
    load_reference_database,
    record,
    reference_files,
    timeline,
)
from cloud_sync.reference.private_broker import free_ports
from tests.processes import stop_process
from touchpoint.cli import main

REF = reference_files()
CLI = [sys.executable, "-m", "touchpoint.cli"]
#: Seconds any one step of the cross-process test may take before the test fails.
STEP_TIMEOUT = 20.0


def test_list_names_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(SCENARIOS)


def test_record_matches_the_api_and_reports_each_phase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "cli.log"
    assert main(["sim", "--scenario", "park_charge", "--short", "--record", str(log)]) == 0
    scenario = build_scenario("park_charge", ScenarioOptions(short=True))
    record(scenario, tmp_path / "api.log")
    assert log.read_bytes() == (tmp_path / "api.log").read_bytes()
    err = capsys.readouterr().err.splitlines()
    phase_lines = [line for line in err if line.startswith("[")]
    assert len(phase_lines) == len(scenario.phases)
    assert "plug in the cable" in "\n".join(phase_lines)
    assert err[-1].startswith("done: ")


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "--record", "x.log"],  # no scenario
        ["sim", "--scenario", "commute"],  # nowhere to send
        ["sim", "--scenario", "commute", "--interface", "virtual"],  # no channel
        ["sim", "--scenario", "commute", "--record", "x.log", "--speed", "-1"],
        ["sim", "--scenario", "commute", "--record", "x.log", "--ecu"],  # --ecu needs a bus
        ["sim", "--scenario", "commute", "--record", "x.log", "--stay-awake"],  # so does this
    ],
)
def test_unusable_arguments_exit_2(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert not (tmp_path / "x.log").exists()


def test_start_sets_the_recordings_clock_and_the_gnss_time(tmp_path: Path) -> None:
    log = tmp_path / "old.log"
    argv = ["sim", "--scenario", "commute", "--short", "--record", str(log)]
    assert main([*argv, "--start", "2024-12-07T19:00:00+01:00"]) == 0
    start = 1_733_594_400  # 2024-12-07T18:00:00Z
    gnss = load_reference_database().get_message_by_name("GNSS_TIME").frame_id
    with can.LogReader(str(log)) as reader:
        frames = list(reader)
    assert frames[0].timestamp == start
    # GNSS_UTC_TIME: bits 0..31, little-endian, unsigned, in seconds.
    times = [int.from_bytes(m.data[:4], "little") for m in frames if m.arbitration_id == gnss]
    assert times[0] == start
    assert times[-1] == start + int(frames[-1].timestamp - start)
    # Without a zone it is UTC.
    naive = tmp_path / "naive.log"
    assert main([*argv[:-1], str(naive), "--start", "2024-12-07T18:00:00"]) == 0
    assert naive.read_bytes() == log.read_bytes()


@pytest.mark.parametrize("start", ["yesterday", "2107-01-01T00:00:00Z", "1969-12-31T23:59:59Z"])
def test_an_unusable_start_is_refused(
    start: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "x.log"
    with pytest.raises(SystemExit) as stopped:
        main(["sim", "--scenario", "commute", "--record", str(log), "--start", start])
    assert stopped.value.code == 2
    assert "--start" in capsys.readouterr().err
    assert not log.exists()


def test_live_virtual_bus_with_ecu_emulator() -> None:
    channel = f"test-sim-cli-{uuid.uuid4().hex}"
    scenario = build_scenario("fault", ScenarioOptions(short=True))
    encoder = FrameEncoder(load_reference_database())
    expected = [f.message for t in timeline(scenario, encoder) for f in t.frames]
    with can.Bus(interface="virtual", channel=channel) as receiver:
        argv = ["sim", "--scenario", "fault", "--short", "--speed", "0", "--ecu"]
        assert main([*argv, "--interface", "virtual", "--channel", channel]) == 0
        received = list(iter(lambda: receiver.recv(timeout=0), None))
    assert [(m.arbitration_id, m.data) for m in received] == [
        (m.arbitration_id, m.data) for m in expected
    ]


def _lines(stream: IO[str]) -> queue.Queue[str]:
    """Read a child's output in a thread, so the test can wait with a timeout."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], text: str) -> str:
    while True:
        try:
            line = lines.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"timed out waiting for {text!r}")
        if text in line:
            return line


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in reversed(started):
        stop_process(process, STEP_TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _start(processes: list[subprocess.Popen[str]], argv: list[str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(process)
    return process


def test_sim_over_remote_feeds_signals_in_another_process(
    processes: list[subprocess.Popen[str]],
) -> None:
    (port,) = free_ports(1)
    url = f"ws://127.0.0.1:{port}/"
    server = _start(
        processes,
        [sys.executable, "-m", "can_remote", "-i", "virtual", "-c", f"sim-{uuid.uuid4().hex}",
         "-H", "127.0.0.1", "-p", str(port)],
    )  # fmt: skip
    assert server.stderr is not None
    server_log = _lines(server.stderr)
    _wait_for(server_log, "Server listening")

    signals = _start(
        processes,
        [*CLI, "signals", "--interface", "remote", "--channel", url, "--json",
         "--dbc", str(REF.dbc), "--mapping", str(REF.mapping)],
    )  # fmt: skip
    assert signals.stdout is not None
    decoded = _lines(signals.stdout)
    _wait_for(server_log, "Connected to bus")  # the reader is attached before frames flow

    sim = subprocess.run(
        # 20 times real time, not as fast as possible: at full speed the whole drive's
        # frames went out in well under the second the odometer guard needs to confirm a
        # first reading, and the test failed on a quick machine.
        [*CLI, "sim", "--scenario", "commute", "--short", "--speed", "20",
         "--interface", "remote", "--channel", url],
        capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    assert "11/11 lock the car" in sim.stderr

    first = json.loads(_wait_for(decoded, "Vehicle.TraveledDistance"))
    # The scenario starts at 12,480 km; with no odometer kept, the first readings wait
    # to be confirmed by the next ones (a fraction of the drive's first kilometre).
    assert 12_480_000 <= first["value"] < 12_481_000
    assert first["bus"] == url
    last = json.loads(_wait_for(decoded, '"LOCK"'))
    assert last["path"] == "Vehicle.LowVoltageSystemState"

    signals.send_signal(signal.SIGTERM)
    assert signals.wait(timeout=STEP_TIMEOUT) == 0
