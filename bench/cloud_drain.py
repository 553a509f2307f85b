"""Draining the outbox to a local mosquitto: events per second, and the agent's memory.

A car comes back online with 100,000 events buffered (weeks in a garage). The benchmark
runs ``touchpoint run`` as systemd would, a subprocess, with a store on a real disk
(:mod:`bench.scratch`) prefilled with copies of the events a real drive makes; a
private mosquitto with the shipped configuration (mutual TLS, ACL) and the reference
cloud (:class:`~cloud_sync.reference.cloud_sim.CloudSim`, in this process) as the consumer.

- Rate: from the daemon's "connected" log line to the moment the cloud has received
  every buffered event (after de-duplication): end to end, with PUBACKs, commits of
  the acknowledgements, TLS. Measured for the default settings on the full 100,000,
  and on 20,000 for a sweep of batch sizes and windows, with one event per message
  (no batching) as the baseline in the same run.
- Memory: the daemon's peak resident set (``VmHWM``) while draining 100,000 events,
  against the same daemon with an empty outbox: the backlog is read in batches, never
  loaded.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import import_shares
from bench.outbox import prefill, quiet_store
from bench.processes import MIB, daemon_environment, status_bytes, stop, tail, wait_for_text
from bench.report import Row, Section
from bench.scratch import disk_dir
from cloud_sync.contract import WireEvent
from cloud_sync.reference.cloud_sim import CloudSim, Endpoint
from cloud_sync.reference.pki import CLOUD_USER, DevPki
from cloud_sync.reference.private_broker import PrivateBroker, running_broker
from cloud_sync.signing import SigningKey

TARGET_EPS: Final = 10_000.0
#: The draining daemon's peak resident set, at most (issue 13).
DRAIN_RSS_TARGET_MIB: Final = 50.0
FULL: Final = 100_000
SWEEP: Final = 20_000
#: (events per message, window): the defaults first, then the sweep.
SWEEP_POINTS: Final = ((1, 16), (50, 16), (200, 1), (200, 16), (200, 64), (1000, 16))
DEFAULTS: Final = (200, 16)
TIMEOUT_S: Final = 300.0
_CONNECTED: Final = "connected to the cloud broker"


@dataclass(frozen=True, slots=True)
class Drain:
    """One drain: its rate and the daemon's memory."""

    events: int
    seconds: float
    peak_rss_mib: float

    @property
    def rate(self) -> float:
        """Events per second, end to end."""
        return self.events / self.seconds


def run() -> list[Section]:
    """The drain of 100,000 events and the sweep."""
    with disk_dir("drain") as directory:
        pki = DevPki.create(directory / "pki")
        with running_broker(directory / "broker", pki) as broker, _Cloud(broker) as cloud:
            full = _drain(broker, cloud, directory / "full", FULL, *DEFAULTS)
            empty = _idle_rss(broker, directory / "empty")
            sweep = {
                point: _drain(
                    broker, cloud, directory / f"sweep-{point[0]}-{point[1]}", SWEEP, *point
                )
                for point in SWEEP_POINTS
            }
    baseline = sweep[(1, 16)]
    rows = [
        Row(
            f"drain {FULL:,} events (batch {DEFAULTS[0]}, window {DEFAULTS[1]})",
            full.rate,
            "events/s",
            target=TARGET_EPS,
            at_least=True,
            digits=0,
        ),
        Row(
            f"baseline, same run: one event per message ({SWEEP:,})",
            baseline.rate,
            "events/s",
            digits=0,
        ),
    ]
    for (batch, window), drain in sweep.items():
        if (batch, window) != (1, 16):
            rows.append(
                Row(f"batch {batch}, window {window} ({SWEEP:,})", drain.rate, "events/s", digits=0)
            )
    memory = [
        Row(
            f"daemon peak RSS while draining {FULL:,} events",
            full.peak_rss_mib,
            "MiB",
            target=DRAIN_RSS_TARGET_MIB,
            digits=1,
        ),
        Row("the same daemon idle, empty outbox (baseline)", empty, "MiB", digits=1),
    ]
    return [
        Section(
            "Cloud sync: draining a buffered outbox to a local mosquitto (TLS)",
            tuple(rows),
            (
                "end to end: the car's connection to the last event at the cloud, deduplicated",
                "store on a real disk; each acknowledgement is a committed delete",
            ),
        ),
        Section(
            "Cloud sync: the agent's memory while draining",
            tuple(memory),
            (
                "VmHWM of the touchpoint run process; the backlog is read in batches",
                (
                    "the daemon as the drain runs it: [cloud], no [can], no [dbus] (it imports "
                    "only what its configuration uses)"
                ),
            ),
        ),
        *(
            Section(
                f"Daemon memory by imported library: {configuration}",
                import_shares.rows(configuration),
                ("VmRSS added by importing each library in turn, in a fresh interpreter",),
            )
            for configuration in ("cloud only (the drain)", "CAN, D-Bus and cloud")
        ),
    ]


class _Cloud:
    """The reference cloud in this process, counting events by id."""

    def __init__(self, broker: PrivateBroker) -> None:
        cert, key = broker.credentials(CLOUD_USER)
        endpoint = Endpoint(broker.host, broker.cloud_port, broker.pki.ca_cert, cert, key)
        self.key = SigningKey.generate("bench")
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.sim = CloudSim(
            endpoint, self.key, instance="bench-drain", documents=False, on_event=self._seen
        )

    def _seen(self, vehicle_id: str, _event: WireEvent) -> None:
        with self._lock:
            self._counts[vehicle_id] = self._counts.get(vehicle_id, 0) + 1

    def received(self, vehicle_id: str) -> int:
        with self._lock:
            return self._counts.get(vehicle_id, 0)

    def __enter__(self) -> _Cloud:
        self.sim.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sim.stop()


def _config(
    broker: PrivateBroker, directory: Path, vehicle: str, batch: int, window: int, key: SigningKey
) -> Path:
    cert, key_file = broker.credentials(vehicle)
    path = directory / "touchpoint.toml"

    def q(value: object) -> str:
        return json.dumps(str(value))

    path.write_text(
        f"""
[vehicle]
id = {q(vehicle)}

[store]
path = {q(directory / "touchpoint.db")}

[consent.defaults]
vehicle_health = true
usage_analytics = true
marketing_benefits = true

[cloud]
host = {q(broker.host)}
port = {broker.port}
ca_file = {q(broker.pki.ca_cert)}
cert_file = {q(cert)}
key_file = {q(key_file)}
batch_events = {batch}
window = {window}
signing_keys = {{ {q(key.key_id)} = {q(key.public_base64())} }}
""",
        encoding="utf-8",
    )
    return path


def _drain(
    broker: PrivateBroker, cloud: _Cloud, directory: Path, count: int, batch: int, window: int
) -> Drain:
    directory.mkdir(parents=True)
    vehicle = f"drain-{directory.name}"
    with quiet_store():
        prefill(directory / "touchpoint.db", count, time.time() - count)
    config = _config(broker, directory, vehicle, batch, window, cloud.key)
    with _daemon(config, directory / "daemon.log") as (process, log):
        connected = _wait_for_line(log, _CONNECTED, process)
        deadline = connected + TIMEOUT_S
        while cloud.received(vehicle) < count:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the drain of {count} did not finish:\n{tail(log)}")
            time.sleep(0.01)
        finished = time.monotonic()
        peak = status_bytes(process.pid).get("VmHWM", 0) / MIB  # the kernel keeps the peak
    return Drain(count, finished - connected, peak)


def _idle_rss(broker: PrivateBroker, directory: Path) -> float:
    directory.mkdir(parents=True)
    # Created here, as the drained stores are: the daemon then does not run (and import)
    # the schema migrations, which a car with a store does not either.
    with quiet_store():
        prefill(directory / "touchpoint.db", 0, time.time())
    key = SigningKey.generate("idle")
    config = _config(broker, directory, f"idle-{directory.name}", *DEFAULTS, key)
    with _daemon(config, directory / "daemon.log") as (process, log):
        _wait_for_line(log, _CONNECTED, process)
        time.sleep(2.0)
        return status_bytes(process.pid).get("VmHWM", 0) / MIB


@contextlib.contextmanager
def _daemon(config: Path, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    with log.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "touchpoint.cli",
                "--log-level",
                "INFO",
                "run",
                "--config",
                str(config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=daemon_environment(),
        )
    try:
        yield process, log
    finally:
        stop(process)


def _wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes]) -> float:
    if not wait_for_text(log, text, process, 60.0):
        raise RuntimeError(f"the daemon never said {text!r}:\n{tail(log)}")
    return time.monotonic()


if __name__ == "__main__":
    from bench.report import format_table

    for section in run():
        print(format_table(section), end="\n\n")
