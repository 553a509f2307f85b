"""The pieces around the daemon, running for a developer: ``touchpoint lab``.

:class:`Lab` starts in a directory of its own, on loopback only: a private D-Bus bus
any local peer may use (development only), a CAN bus several processes share (a
python-can-remote server on 127.0.0.1), a development PKI, Mosquitto with the reference
configuration (mutual TLS, the per-vehicle ACL) and the reference cloud (``touchpoint
cloud-sim``). It writes ``touchpoint.toml`` for ``touchpoint run`` (the development
car of :mod:`touchpoint.devstack`, checked the way the daemon checks it) and, once
every service has answered, ``env``: last, atomically, so a script that sees the file
finds everything up. Stopping removes ``env`` first, then stops every process it
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509

from can_signals.settings import BusSettings
from cloud_sync.reference.cloud_sim import BookingAnswer
from cloud_sync.reference.pki import CLOUD_USER, DevPki
from cloud_sync.reference.private_broker import LOOPBACK, PrivateBroker, free_ports
from touchpoint.commands.cloud_sim import signing_key
from touchpoint.devstack import car_settings, settings_toml
from touchpoint.errors import TouchpointError
from touchpoint.settings import ConfigError, load_settings
from ui_bridge.reference.private_bus import session_config, start_dbus_daemon, stop_dbus_daemon

#: The lab car's identity (its certificate's common name, its MQTT username).
VEHICLE_ID: Final = "lab-car-0001"
#: The PKI of an earlier lab is kept while it is valid for longer than this.
PKI_REUSE_MIN: Final = dt.timedelta(days=7)
#: How long each service may take to answer at start.
START_TIMEOUT: Final = 15.0
#: prctl(2)'s option: the signal a child gets when its parent thread dies.
_PR_SET_PDEATHSIG: Final = 1
#: The longest unix socket path (``sun_path`` holds 108 bytes with the final NUL).
_MAX_SOCKET_PATH: Final = 107

_Child = subprocess.Popen[bytes] | subprocess.Popen[str]


class LabError(TouchpointError):
    """A lab service did not start or stopped on its own."""


@dataclass(frozen=True, slots=True)
class LabInfo:
    """Where a running lab's services are."""

    directory: Path
    config: Path
    env: Path
    dbus_address: str
    can_interface: str
    can_channel: str
    broker_port: int
    cloud_port: int

    def environment(self) -> dict[str, str]:
        """What ``env`` exports."""
        return {
            "TOUCHPOINT_LAB_DIR": str(self.directory),
            "TOUCHPOINT_LAB_CONFIG": str(self.config),
            "TOUCHPOINT_LAB_DBUS_ADDRESS": self.dbus_address,
            "TOUCHPOINT_LAB_CAN_INTERFACE": self.can_interface,
            "TOUCHPOINT_LAB_CAN_CHANNEL": self.can_channel,
        }

    def commands(self) -> dict[str, str]:
        """The commands that start the other pieces against the lab, quoted for a shell."""
        q = shlex.quote
        return {
            "the agent": f"touchpoint run --config {q(str(self.config))}",
            "the HMI": f"touchpoint hmi --address {q(self.dbus_address)}",
            "a drive": (
                "touchpoint sim --scenario highway_service --short --stay-awake "
                f"--interface {q(self.can_interface)} --channel {q(self.can_channel)}"
            ),
            "the cards": (
                f"busctl --address={q(self.dbus_address)} call org.touchpoint.Agent1 "
                "/org/touchpoint/Agent1 org.freedesktop.DBus.ObjectManager GetManagedObjects"
            ),
        }


class Lab:
    """The lab's services in ``directory``: :meth:`start`, then :meth:`stop`.

    Args:
        directory: Made if missing; what an earlier lab left there is reused (the
            store, the broker's data, the cloud's signing key) or replaced.
        booking: How the cloud answers booking requests.
        should_stop: Asked while starting: a true answer abandons the start.
    """

    def __init__(
        self,
        directory: Path,
        *,
        booking: BookingAnswer = "confirm",
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.directory = directory.resolve()
        self.booking: BookingAnswer = booking
        self.should_stop = should_stop
        self.info: LabInfo | None = None
        self._stack = contextlib.ExitStack()
        self._processes: dict[str, tuple[_Child, Path]] = {}
        self._previous = _Ports(None, None)

    @property
    def env_file(self) -> Path:
        """``env``: there only while the lab is up."""
        return self.directory / "env"

    @property
    def config_file(self) -> Path:
        """``touchpoint.toml``: the daemon's settings."""
        return self.directory / "touchpoint.toml"

    # -- starting ---------------------------------------------------------------------------

    def start(self) -> LabInfo:
        """Start every service, write the files; stop what started if one fails.

        Raises:
            LabError: If a service did not start, another lab runs in the directory,
                or a stop was asked for meanwhile.
        """
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> LabInfo:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock()
        # An env left by a lab that was killed says "up" when nothing is.
        self.env_file.unlink(missing_ok=True)
        self._previous = _previous_ports(self.config_file)
        dbus_address = self._start_dbus()
        self._check_stop()
        can_channel = self._start_can()
        self._check_stop()
        broker = self._start_broker()
        self._check_stop()
        key = signing_key(self.directory / "cloud-signing.key")
        self._start_cloud(broker)
        settings = car_settings(
            self.directory,
            vehicle_id=VEHICLE_ID,
            bus=BusSettings(name="can0", interface="remote", channel=can_channel),
            bus_address=dbus_address,
            broker=broker,
            key=key,
        )
        header = (
            "The development car, written by `touchpoint lab` at every start: edits are lost.",
            "Start the agent with: touchpoint run --config THIS_FILE",
            "Development only: every consent is granted, and quiet_hours = [0, 0] is an empty",
            "span (cards show at any hour).",
        )
        _write_atomically(self.config_file, settings_toml(settings, header))
        try:
            read_back = load_settings(self.config_file, environ={})
        except ConfigError as err:
            raise LabError(f"the lab wrote a configuration the daemon refuses:\n{err}") from err
        if read_back != settings:
            raise LabError(f"{self.config_file} does not read back as written")
        self._check_answers(dbus_address, can_channel)
        info = LabInfo(
            directory=self.directory,
            config=self.config_file,
            env=self.env_file,
            dbus_address=dbus_address,
            can_interface="remote",
            can_channel=can_channel,
            broker_port=broker.port,
            cloud_port=broker.cloud_port,
        )
        exports = "".join(
            f"export {name}={shlex.quote(value)}\n" for name, value in info.environment().items()
        )
        _write_atomically(self.env_file, exports)
        self.info = info
        return info

    def _lock(self) -> None:
        lock = self._stack.enter_context((self.directory / "lab.lock").open("a"))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabError(f"another touchpoint lab runs in {self.directory}") from None

    def _check_stop(self) -> None:
        if self.should_stop():
            raise LabError("stopped while starting")

    def _start_dbus(self) -> str:
        socket_path = self.directory / "dbus.sock"
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            raise LabError(
                f"{socket_path} is too long for a unix socket ({_MAX_SOCKET_PATH} bytes at "
                "most): choose a shorter --dir"
            )
        socket_path.unlink(missing_ok=True)  # left by a lab that was killed
        config = self.directory / "dbus.conf"
        # Any local user may connect: the daemon may run as a user of its own. Never
        # for a car, whose bus policy is systemd/org.touchpoint.Agent1.conf.
        config.write_text(session_config(f"unix:path={socket_path}", any_user=True))
        process, _ = start_dbus_daemon(config, preexec_fn=die_with_parent)
        self._processes["dbus-daemon"] = (process, config.with_suffix(".log"))
        self._stack.callback(stop_dbus_daemon, process)
        # The address it printed carries the bus's guid; the path alone outlives a restart.
        return f"unix:path={socket_path}"

    def _start_can(self) -> str:
        port = self._previous.can_port or free_ports(1)[0]
        log = self.directory / "can-remote.log"
        argv = [sys.executable, "-m", "can_remote", "-i", "virtual", "-c", "lab",
                "-H", LOOPBACK, "-p", str(port)]  # fmt: skip
        process = self._spawn("python-can-remote", argv, log)
        self._wait_for_line(process, log, "Server listening", "python-can-remote")
        return f"ws://{LOOPBACK}:{port}/"

    def _start_broker(self) -> PrivateBroker:
        pki = _pki(self.directory / "pki")
        broker = PrivateBroker(
            self.directory / "broker", pki,
            preexec_fn=die_with_parent, port=self._previous.broker_port,
        )  # fmt: skip
        broker.start()
        self._stack.callback(broker.stop)
        process = broker._process  # noqa: SLF001 - watched like every other child
        assert process is not None
        self._processes["mosquitto"] = (process, broker.log)
        return broker

    def _start_cloud(self, broker: PrivateBroker) -> None:
        cert, key = broker.credentials(CLOUD_USER)
        log = self.directory / "cloud-sim.log"
        argv = [
            sys.executable, "-m", "touchpoint.cli", "cloud-sim",
            "--broker", f"{broker.host}:{broker.cloud_port}",
            "--ca", str(broker.pki.ca_cert), "--cert", str(cert), "--key", str(key),
            "--signing-key", str(self.directory / "cloud-signing.key"),
            "--booking", self.booking, "--instance", "lab", "--print",
        ]  # fmt: skip
        process = self._spawn("cloud-sim", argv, log)
        self._wait_for_line(process, log, "consuming from", "cloud-sim")

    def _spawn(self, name: str, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        # Output to a file, not a pipe: nobody has to read it for the child to go on.
        with log_path.open("wb") as log:
            process = subprocess.Popen(  # noqa: S603 - our argv, no shell
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.directory,
                # Python children print as they go, so their logs can be followed.
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                # The lab starts every child before it starts any thread of its own.
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )  # fmt: skip
        self._processes[name] = (process, log_path)
        self._stack.callback(_terminate, process)
        return process

    def _wait_for_line(
        self, process: subprocess.Popen[bytes], log: Path, text: str, name: str
    ) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while text not in log.read_text(encoding="utf-8", errors="replace"):
            if process.poll() is not None:
                raise LabError(f"{name} exited at start ({process.returncode}):\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise LabError(f"{name} did not start within {START_TIMEOUT:.0f} s:\n{_tail(log)}")
            self._check_stop()
            time.sleep(0.05)

    def _check_answers(self, dbus_address: str, can_channel: str) -> None:
        """Every service answers as a client would meet it (the broker's start waited)."""
        try:
            asyncio.run(asyncio.wait_for(_dbus_hello(dbus_address), START_TIMEOUT))
        except (OSError, TimeoutError, ValueError) as err:
            raise LabError(f"the lab's D-Bus at {dbus_address} does not answer: {err}") from err
        import can  # noqa: PLC0415 - python-can is the [can] extra; the lab needs it here only

        try:
            can.Bus(interface="remote", channel=can_channel).shutdown()
        except (can.CanError, OSError) as err:
            raise LabError(f"the lab's CAN bus at {can_channel} does not answer: {err}") from err

    # -- running and stopping ------------------------------------------------------------

    def exited(self) -> str | None:
        """Which service stopped on its own, with the end of its log; ``None`` if none."""
        for name, (process, log) in self._processes.items():
            if process.poll() is not None:
                return f"{name} exited ({process.returncode}); the end of {log}:\n{_tail(log)}"
        return None

    def pids(self) -> dict[str, int]:
        """The process id of each service the lab started."""
        return {name: process.pid for name, (process, _) in self._processes.items()}

    def stop(self) -> None:
        """Remove ``env``, stop every service (the last started first); idempotent."""
        if self.info is not None:
            self.env_file.unlink(missing_ok=True)
        self._processes.clear()
        self.info = None
        self._stack.close()


@dataclass(frozen=True, slots=True)
class _Ports:
    can_port: int | None
    broker_port: int | None


def _previous_ports(config: Path) -> _Ports:
    """The CAN and broker ports of the lab before, where still free.

    Taking them again lets an agent that outlived that lab find this one: it reopens its
    CAN bus and reconnects to the D-Bus and the broker on its own.
    """
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
        channel = str(data["can"]["buses"][0]["channel"])
        broker = int(data["cloud"]["port"])
    except (OSError, ValueError, LookupError, TypeError):
        return _Ports(None, None)
    url = urllib.parse.urlsplit(channel)
    can_port = url.port if url.hostname == LOOPBACK else None
    return _Ports(
        can_port if can_port is not None and _free(can_port) else None,
        broker if _free(broker) else None,
    )


def _free(port: int) -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket() as probe:
        # As the servers bind: connections of the lab before, closed moments ago and
        # waiting out TIME_WAIT on that port, do not keep it from listening there.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _pki(directory: Path) -> DevPki:
    """The PKI of the lab before, while it has a week to go; a new one otherwise.

    Kept, the certificates an agent that outlived that lab still holds stay good.
    """
    try:
        pki = DevPki.load(directory)
        ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        usable = pki.server_cert.exists() and pki.server_key.exists() and pki.crl.exists()
    except (OSError, ValueError, TypeError):
        return DevPki.create(directory)
    left = ca.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return pki if usable and left > PKI_REUSE_MIN else DevPki.create(directory)


def die_with_parent() -> None:
    """In a child before it runs: get SIGTERM when the lab dies, even by SIGKILL.

    Without it a lab killed outright (``kill -9``, the OOM killer) would leave its
    broker, bus and servers running with nobody to stop them. Linux only; elsewhere
    nothing happens.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _dbus_hello(address: str) -> None:
    from dbus_fast.aio import MessageBus  # noqa: PLC0415 - the lab's alone

    bus = await MessageBus(bus_address=address).connect()
    bus.disconnect()
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


def _write_atomically(path: Path, text: str) -> None:
    """``path`` has either its old content or ``text``, never a part of it."""
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    partial.replace(path)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


@contextlib.contextmanager
def running_lab(directory: Path, *, booking: BookingAnswer = "confirm") -> Iterator[Lab]:
    """A started :class:`Lab` for the block, stopped after it."""
    lab = Lab(directory, booking=booking)
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()
