"""The soak's world: a private bus, broker, cloud and CAN bus, and the daemon as a process.

Everything listens on loopback in a directory of the run's own:

- a private ``dbus-daemon`` (:func:`ui_bridge.reference.private_bus.private_bus`);
- a private Mosquitto with the reference configuration and a development PKI
  (:class:`~cloud_sync.reference.private_broker.PrivateBroker`), which a step may crash
  and start again on the same ports;
- the reference cloud in this process (:class:`~cloud_sync.reference.cloud_sim.CloudSim`),
  recording into a :class:`~tests.invariants.views.CloudLedger`;
- a python-can-remote server on 127.0.0.1 that the car (this process) and the daemon
  (another) share;
- the daemon, ``touchpoint run`` in a process of its own (:class:`DaemonProcess`),
  started, SIGKILLed and started again on the same store, optionally on a faked clock.

The faked clock is libfaketime (Debian's ``faketime``) preloaded into the daemon alone,
reading its offset from a file the soak rewrites (a clock jump without a restart);
the monotonic clock stays real (``FAKETIME_DONT_FAKE_MONOTONIC=1``). libfaketime
0.9.10 breaks ``time.sleep`` in that mode (EINVAL from its ``clock_nanosleep``), so
the daemon is started through :mod:`tests.soak.faked_run`, which puts a
``select``-based sleep in its place and then runs the same ``touchpoint run``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from can_signals.simulator import reference_files
from cloud_sync.reference.cloud_sim import CloudSim, Endpoint
from cloud_sync.reference.pki import CLOUD_USER, DevPki
from cloud_sync.reference.private_broker import PrivateBroker, free_ports, running_broker
from cloud_sync.signing import SigningKey
from tests.invariants.views import CloudLedger
from ui_bridge.reference.private_bus import private_bus

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
VEHICLE_ID: Final = "soak-car-0001"
KEY_ID: Final = "soak"
LIBFAKETIME: Final = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
#: The pending timeout the soak runs the daemon with (short, so it happens).
REQUEST_TIMEOUT_S: Final = 30.0
#: How long a daemon start may take (imports, the store, the bus name).
START_TIMEOUT_S: Final = 30.0


def stop_on_sigterm() -> None:
    """SIGTERM stops a run as Ctrl-C does: everything it started is stopped too.

    SIGUSR1 prints every thread's stack (a run that seems stuck).
    """
    faulthandler.register(signal.SIGUSR1)

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@dataclass(frozen=True, slots=True)
class CanSetup:
    """The car the daemon is configured for: its DBC and mapping."""

    dbc: Path
    mapping: Path

    @classmethod
    def reference(cls) -> CanSetup:
        """The reference car (the simulator's)."""
        files = reference_files()
        return cls(files.dbc, files.mapping)


def write_config(
    path: Path,
    *,
    store: Path,
    bus_address: str,
    broker: PrivateBroker,
    key: SigningKey,
    can_url: str,
    car: CanSetup,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> None:
    """The daemon's ``touchpoint.toml`` for the soak."""

    def q(value: object) -> str:
        return json.dumps(str(value))  # a TOML basic string

    cert, private_key = broker.credentials(VEHICLE_ID)
    path.write_text(
        f"""
[vehicle]
id = {q(VEHICLE_ID)}

[store]
path = {q(store)}
max_events = 1000000
max_bytes = {256 * 1024 * 1024}

[consent.defaults]
vehicle_health = true
usage_analytics = true
marketing_benefits = true

[time]
# libfaketime cannot fake the kernel's NTP status: an "NTP-synchronised" faked clock
# would be a trusted wrong time of the soak's own making.
trust_ntp = false

[requests]
timeout_s = {request_timeout_s}

[can]
mapping = {q(car.mapping)}
dbc = [{{ file = {q(car.dbc)} }}]
buses = [{{ name = "can0", interface = "remote", channel = {q(can_url)} }}]

[dbus]
address = {q(bus_address)}
locale = "en"

[cloud]
host = {q(broker.host)}
port = {broker.port}
ca_file = {q(broker.pki.ca_cert)}
cert_file = {q(cert)}
key_file = {q(private_key)}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
ack_timeout_s = 5
signing_keys = {{ {q(key.key_id)} = {q(key.public_base64())} }}
""",
        encoding="utf-8",
    )


@dataclass(slots=True)
class DaemonProcess:
    """``touchpoint run`` in its own process, killed and restarted on the same store.

    Args:
        config: Its configuration file.
        logs: Where each start's stderr goes (one file per start).
        clock_file: libfaketime's offset file; None: the real clock, no preload.
        argv: The command (default: ``touchpoint run`` through :mod:`tests.soak.faked_run`).
    """

    config: Path
    logs: Path
    clock_file: Path | None = None
    argv: list[str] | None = None
    process: subprocess.Popen[bytes] | None = None
    started_at: float | None = None  # monotonic
    starts: int = 0
    offset_s: int = 0

    def start(self) -> None:
        """Start it (it is not running)."""
        assert self.process is None or self.process.poll() is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY_"))}
        env = {k: v for k, v in env.items() if not k.startswith("TOUCHPOINT_")}
        # TOML has no null: no quiet hours, so cards show whatever the time of day.
        env |= {"TOUCHPOINT_POLICY__QUIET_HOURS": "null", "PYTHONUNBUFFERED": "1"}
        if self.clock_file is not None:
            self._write_offset()
            env |= {
                "LD_PRELOAD": str(LIBFAKETIME),
                "FAKETIME_TIMESTAMP_FILE": str(self.clock_file),
                "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            }
        argv = self.argv or [sys.executable, "-m", "tests.soak.faked_run", "--log-level",
                             "INFO", "run", "--config", str(self.config)]  # fmt: skip
        self.logs.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with (self.logs / f"daemon-{self.starts:04d}.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def up_s(self) -> float | None:
        """Seconds since its start, None while it is not running."""
        if not self.running or self.started_at is None:
            return None
        return time.monotonic() - self.started_at

    def kill(self) -> int | None:
        """SIGKILL it and reap it; its exit status (None if it was not running)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        code = self.process.wait(timeout=START_TIMEOUT_S)
        self.started_at = None
        return code

    def stop(self) -> int | None:
        """SIGTERM it and wait (the end of a run)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return self.kill()
        return self.process.returncode

    def jump_clock(self, offset_s: int) -> None:
        """Set the daemon's clock to the real time plus ``offset_s`` (at once, live)."""
        self.offset_s = offset_s
        self._write_offset()

    def _write_offset(self) -> None:
        if self.clock_file is None:
            return
        # Written whole then renamed: libfaketime re-reads it on every call.
        temporary = self.clock_file.with_suffix(".tmp")
        temporary.write_text(f"{self.offset_s:+d}\n", encoding="ascii")
        temporary.replace(self.clock_file)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the current start's log."""
        path = self.logs / f"daemon-{self.starts:04d}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass(slots=True)
class CanServer:
    """A python-can-remote server on 127.0.0.1 over a virtual bus of its own."""

    logs: Path
    port: int = field(default_factory=lambda: free_ports(1)[0])
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The channel for python-can's ``remote`` interface."""
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "can_remote.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "can_remote", "-i", "virtual", "-c",
                 f"soak-{self.port}", "-H", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the CAN server did not listen on {self.port}")

    def stop(self) -> None:
        """Stop it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass(slots=True)
class World:
    """Everything but the car's frames and the driver's taps."""

    directory: Path
    bus_address: str
    broker: PrivateBroker
    cloud: CloudSim
    ledger: CloudLedger
    can: CanServer
    daemon: DaemonProcess
    store: Path


@contextlib.contextmanager
def running_world(
    directory: Path, *, fake_clock: bool = True, car: CanSetup | None = None,
    daemon_argv: list[str] | None = None, ledger: CloudLedger | None = None,
) -> Iterator[World]:  # fmt: skip
    """Start the bus, broker, cloud and CAN server, write the daemon's configuration.

    The daemon is not started: the caller starts it (and kills it) as it likes. All of
    it is stopped when the block ends. ``ledger`` records what the cloud receives
    (default: a fresh :class:`CloudLedger`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate(KEY_ID)
    pki = DevPki.create(directory / "pki")
    ledger = ledger if ledger is not None else CloudLedger()
    with private_bus() as bus_address, running_broker(directory / "broker", pki) as broker:
        cert, private_key = broker.credentials(CLOUD_USER)
        endpoint = Endpoint(broker.host, broker.cloud_port, pki.ca_cert, cert, private_key)
        cloud = CloudSim(endpoint, key, instance=f"soak-{os.getpid()}", on_event=ledger.on_event)
        cloud.on_reply = ledger.on_reply
        cloud.start()
        can = CanServer(directory / "logs")
        can.start()
        store = directory / "touchpoint.db"
        config = directory / "touchpoint.toml"
        write_config(config, store=store, bus_address=bus_address, broker=broker, key=key,
                     can_url=can.url, car=car or CanSetup.reference())  # fmt: skip
        daemon = DaemonProcess(
            config,
            directory / "logs",
            clock_file=directory / "faketime" if fake_clock else None,
            argv=daemon_argv,
        )
        try:
            yield World(directory, bus_address, broker, cloud, ledger, can, daemon, store)
        finally:
            daemon.stop()
            can.stop()
            with contextlib.suppress(Exception):
                cloud.stop()
