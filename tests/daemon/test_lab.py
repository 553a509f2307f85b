"""``touchpoint lab``, as a developer runs it: every piece a process of its own.

The lab starts; its ``env`` appears last and is sourced by bash; the daemon started with
``touchpoint run --config DIR/touchpoint.toml`` reaches ``READY=1`` and serves the
Manager on the lab's D-Bus, where ``busctl`` calls it; the simulator's frames on the
lab's CAN bus reach the daemon (parked, its signals fresh, the car is no longer
restricted); SIGTERM stops every process the lab started and removes ``env``; the
daemon, still running, takes the loss of its CAN bus in its stride, and finds the CAN
bus, the D-Bus and the broker again when a lab starts again in the same directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest

from agent.settings import PolicySettings
from tests.processes import stop_process
from touchpoint.cli import main
from touchpoint.devstack import settings_toml
from touchpoint.lab import LabInfo
from touchpoint.settings import DaemonSettings, load_settings
from ui_bridge.reference.private_bus import session_config, start_dbus_daemon, stop_dbus_daemon

CLI: Final = [sys.executable, "-m", "touchpoint.cli"]
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
#: Seconds any one step may take.
STEP_TIMEOUT: Final = 30.0
AGENT: Final = ("org.touchpoint.Agent1", "/org/touchpoint/Agent1")
MANAGER: Final = "org.touchpoint.Agent1.Manager"


def _wait(condition: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (children, theirs, ...), with its command name."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...: the name may hold spaces and parentheses.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents[int(entry.name)] = (ppid, name)
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, name) in parents.items():
            if ppid == parent and child not in found:
                found[child] = name
                frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _clean_env() -> dict[str, str]:
    # The suite's own TOUCHPOINT_* variables would override the lab's file.
    return {k: v for k, v in os.environ.items() if not k.startswith(("TOUCHPOINT_", "NOTIFY_"))}


class Lab:
    """``touchpoint lab --dir DIR`` in a process of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.out = directory.parent / f"{directory.name}.out"
        with self.out.open("wb") as out:
            self.process = subprocess.Popen(
                [*CLI, "lab", "--dir", str(directory)], cwd=REPO_ROOT, env=_clean_env(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self) -> dict[str, str]:
        """The variables ``env`` exports, read by bash, once it is there."""
        env = self.directory / "env"

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"the lab exited ({self.process.returncode}):\n{self.output()}")
            return env.exists()

        _wait(ready, "the lab's env")
        shown = subprocess.run(
            ["bash", "-c", 'set -eu; source "$1"; env -0', "bash", str(env)],
            env={"PATH": os.environ["PATH"]}, capture_output=True, check=True,
        )  # fmt: skip
        pairs = (item.split(b"=", 1) for item in shown.stdout.split(b"\0") if b"=" in item)
        return {k.decode(): v.decode() for k, v in pairs if k.startswith(b"TOUCHPOINT_LAB_")}

    def stop(self) -> None:
        stop_process(self.process, STEP_TIMEOUT)


@pytest.fixture
def labs(tmp_path: Path) -> Iterator[Callable[[Path], Lab]]:
    started: list[Lab] = []

    def start(directory: Path) -> Lab:
        started.append(Lab(directory))
        return started[-1]

    try:
        yield start
    finally:
        for lab in reversed(started):
            lab.stop()


@pytest.fixture
def others(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Processes started against the lab (the daemon, the simulator), stopped after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in reversed(started):
            stop_process(process, STEP_TIMEOUT)


def _busctl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["busctl", f"--address={address}", *args], capture_output=True, text=True, check=False
    )


def _restricted(address: str) -> str:
    done = _busctl(address, "get-property", *AGENT, MANAGER, "DrivingRestricted")
    return done.stdout.strip() if done.returncode == 0 else f"error: {done.stderr.strip()}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("busctl") is None, reason="busctl (systemd) is not installed")
def test_the_daemon_and_the_simulator_run_against_the_lab_which_stops_every_child(
    tmp_path: Path,
    labs: Callable[[Path], Lab],
    others: Callable[..., subprocess.Popen[bytes]],
) -> None:
    directory = tmp_path / "lab"
    lab = labs(directory)
    started = time.monotonic()
    exported = lab.wait_ready()
    print(f"lab ready in {time.monotonic() - started:.1f} s")
    config = Path(exported["TOUCHPOINT_LAB_CONFIG"])
    address = exported["TOUCHPOINT_LAB_DBUS_ADDRESS"]
    interface = exported["TOUCHPOINT_LAB_CAN_INTERFACE"]
    channel = exported["TOUCHPOINT_LAB_CAN_CHANNEL"]
    assert config == directory / "touchpoint.toml"
    assert interface == "remote"
    assert channel.startswith("ws://127.0.0.1:")
    output = lab.output()
    assert "\nready\n" in output
    assert f"touchpoint run --config {config}" in output
    assert f"touchpoint hmi --address {address}" in output
    assert f"--interface remote --channel {channel}" in output

    # The file the daemon reads: strictly valid, and pointing at the lab.
    settings = load_settings(config, environ={})
    assert settings.dbus is not None
    assert settings.dbus.address == address
    assert settings.can is not None
    assert [(b.interface, b.channel) for b in settings.can.buses] == [(interface, channel)]
    assert settings.store.path == directory / "touchpoint.db"
    assert settings.cloud is not None
    assert settings.cloud.host == "127.0.0.1"

    # A second lab in the same directory is refused, and leaves the first alone.
    second = subprocess.run(
        [*CLI, "lab", "--dir", str(directory)], cwd=REPO_ROOT, env=_clean_env(),
        capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False,
    )  # fmt: skip
    assert second.returncode == 1
    assert "another touchpoint lab runs" in second.stderr
    assert (directory / "env").exists()

    # The daemon, as the lab says to start it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(STEP_TIMEOUT)
        env = _clean_env() | {"NOTIFY_SOCKET": str(tmp_path / "notify")}
        daemon = others([*CLI, "run", "--config", str(config)], tmp_path / "daemon.log", env)
        messages = b""
        while b"READY=1" not in messages.split(b"\n"):
            try:
                messages = notify.recv(4096)
            except TimeoutError:
                pytest.fail((tmp_path / "daemon.log").read_text())
    assert daemon.poll() is None
    capabilities = _busctl(address, "call", *AGENT, MANAGER, "GetCapabilities")
    assert capabilities.returncode == 0, capabilities.stderr
    assert '"ApiVersion" u 1' in capabilities.stdout
    # No CAN frames yet: the car's state is unknown, so the screen is restricted.
    assert _restricted(address) == "b true"

    # The simulator on the lab's CAN bus: parked and awake, the car is known to stand.
    sim = others(
        [*CLI, "sim", "--scenario", "commute", "--short", "--speed", "20", "--stay-awake",
         "--interface", interface, "--channel", channel],
        tmp_path / "sim.log", _clean_env(),
    )  # fmt: skip
    _wait(lambda: "ECUs still awake" in (tmp_path / "sim.log").read_text(), "the drive's end")
    _wait(lambda: _restricted(address) == "b false", "the daemon to see the parked car")
    sim.terminate()
    assert sim.wait(timeout=STEP_TIMEOUT) == 0

    # SIGTERM: every process the lab started stops, and env goes.
    children = _descendants(lab.process.pid)
    names = sorted(children.values())
    assert "dbus-daemon" in names
    assert "mosquitto" in names
    assert len(children) == 4, names  # and python-can-remote and cloud-sim, in Python
    lab.process.send_signal(signal.SIGTERM)
    assert lab.process.wait(timeout=STEP_TIMEOUT) == 0
    assert not (directory / "env").exists()
    left = {pid: name for pid, name in children.items() if _alive(pid)}
    assert not left, f"left running: {left}"

    # The daemon outlives the lab stopped under it: it says once that the bus is lost
    # (and keeps trying). A lab started again in the same directory takes the same
    # places, so the daemon finds its CAN bus, its D-Bus and its broker again by itself.
    time.sleep(2)
    assert daemon.poll() is None
    again = labs(directory)
    assert again.wait_ready() == exported
    _wait(lambda: _restricted(address) == "b true", "the daemon back on the D-Bus")
    sim = others(
        [*CLI, "sim", "--scenario", "commute", "--short", "--speed", "20", "--stay-awake",
         "--interface", interface, "--channel", channel],
        tmp_path / "sim2.log", _clean_env(),
    )  # fmt: skip
    _wait(lambda: "ECUs still awake" in (tmp_path / "sim2.log").read_text(), "the drive's end")
    _wait(lambda: _restricted(address) == "b false", "the daemon to see the car again")
    cloud_log = directory / "cloud-sim.log"
    _wait(lambda: "lab-car-0001 drive.summary" in cloud_log.read_text(), "the car's events")
    sim.terminate()
    assert sim.wait(timeout=STEP_TIMEOUT) == 0
    daemon.terminate()
    assert daemon.wait(timeout=STEP_TIMEOUT) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert log.count("CAN bus can0 lost") == 1, log[-3000:]
    assert log.count("CAN bus can0 is open again") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.slow
def test_a_service_that_dies_stops_the_lab(tmp_path: Path, labs: Callable[[Path], Lab]) -> None:
    directory = tmp_path / "lab"
    lab = labs(directory)
    lab.wait_ready()
    children = _descendants(lab.process.pid)
    broker = next(pid for pid, name in children.items() if name == "mosquitto")
    os.kill(broker, signal.SIGKILL)
    assert lab.process.wait(timeout=STEP_TIMEOUT) == 1
    assert "mosquitto exited" in lab.output()
    assert not (directory / "env").exists()
    left = {pid: name for pid, name in children.items() if _alive(pid)}
    assert not left, f"left running: {left}"


def test_the_lab_configuration_reads_back_as_written(tmp_path: Path) -> None:
    odd = tmp_path / 'a dir with "quotes", \\ and ünïcödé'
    settings = DaemonSettings.model_validate(
        {
            "vehicle": {"id": "lab-car-0001"},
            "store": {"path": str(odd / "touchpoint.db")},
            "policy": {"quiet_hours": [0, 0], "max_visible": 2},
            "can": {
                "mapping": str(odd / "m.yaml"),
                "dbc": [{"file": str(odd / "a.dbc"), "bus": "can0"}],
                "buses": [{"name": "can0", "interface": "remote", "channel": "ws://h:1/",
                           "options": {"receive_own_messages": False}}],
            },
            "cloud": {"host": "127.0.0.1", "port": 8883, "signing_keys": {"dev.1": "AAAA"},
                      "ca_file": str(odd / "ca.crt"), "cert_file": str(odd / "c.crt"),
                      "key_file": str(odd / "c.key")},
            "dbus": {"address": "unix:path=/tmp/x", "locale": "zh-CN"},
            "tick_seconds": 0.5,
        }
    )  # fmt: skip
    path = tmp_path / "touchpoint.toml"
    path.write_text(settings_toml(settings, ["a header"]), encoding="utf-8")
    assert path.read_text(encoding="utf-8").startswith("# a header\n")
    assert load_settings(path, environ={}) == settings


def test_a_setting_toml_cannot_write_is_refused() -> None:
    settings = DaemonSettings(policy=PolicySettings(quiet_hours=None))
    with pytest.raises(ValueError, match=r"policy\.quiet_hours"):
        settings_toml(settings)


@pytest.mark.slow
def test_a_lab_killed_outright_takes_its_services_with_it(
    tmp_path: Path, labs: Callable[[Path], Lab]
) -> None:
    lab = labs(tmp_path / "lab")
    lab.wait_ready()
    children = _descendants(lab.process.pid)
    assert len(children) == 4, children
    lab.process.kill()
    lab.process.wait()
    try:
        _wait(lambda: not any(_alive(pid) for pid in children), "the lab's services to stop", 15)
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)  # so a failure leaves nothing behind


def test_a_missing_service_is_named_and_the_lab_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dbus-daemon on it
    assert main(["lab", "--dir", str(tmp_path / "lab")]) == 1
    assert "dbus-daemon is not installed" in capsys.readouterr().err
    assert not (tmp_path / "lab" / "env").exists()


def test_the_readme_uses_only_variables_the_lab_exports(tmp_path: Path) -> None:
    info = LabInfo(tmp_path, tmp_path / "t.toml", tmp_path / "env", "unix:path=/x", "remote",
                   "ws://127.0.0.1:1/", 1, 2)  # fmt: skip
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Run the pieces yourself") :]
    section = section[: section.index("\n## ")]
    used = set(re.findall(r"\$TOUCHPOINT_LAB_[A-Z_]+", section))
    assert used
    assert {name[1:] for name in used} <= set(info.environment())


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or shutil.which("busctl") is None,
    reason="needs root (to act as another user), runuser and busctl",
)
@pytest.mark.parametrize("any_user", [False, True])
def test_the_lab_bus_lets_other_local_users_in(*, any_user: bool) -> None:
    # The lab's bus, like a session bus but for any user: a daemon run as a user of its
    # own, or an HMI in another account, can connect to it. A session bus refuses them.
    # (pytest's tmp_path is the owner's alone, so the bus lives elsewhere.)
    with tempfile.TemporaryDirectory(prefix="tp-labbus-") as name:
        directory = Path(name)
        directory.chmod(0o755)
        config = directory / "bus.conf"
        config.write_text(session_config(f"unix:path={directory}/bus", any_user=any_user))
        process, _ = start_dbus_daemon(config)
        try:
            done = subprocess.run(
                ["runuser", "-u", "nobody", "--", "busctl", f"--address=unix:path={directory}/bus",
                 "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                 "GetId"],
                capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False,
            )  # fmt: skip
        finally:
            stop_dbus_daemon(process)
    assert (done.returncode == 0) is any_user, done.stderr
