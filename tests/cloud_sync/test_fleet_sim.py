"""``touchpoint fleet-sim`` on the private broker: every event a simulated car records
reaches the reference cloud, with the car's real sync client over mutual TLS.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from cloud_sync.contract import WireEvent
from cloud_sync.reference.fleet_sim import Fleet, FleetError, FleetOptions, capacity, vehicle_ids
from tests.cloud_sync.conftest import Broker
from tests.cloud_sync.test_sync import KEY, cloud, cloud_settings, until


def test_every_event_the_fleet_records_reaches_the_cloud_once(
    broker: Broker, tmp_path: Path
) -> None:
    prefix = f"fl{uuid.uuid4().hex[:6]}"
    recorded: set[tuple[str, str]] = set()
    received: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_event(vehicle_id: str, event: WireEvent) -> None:
        with lock:
            received.append((vehicle_id, event.id))

    options = FleetOptions(
        vehicles=4,
        settings=lambda vehicle_id: cloud_settings(broker, vehicle_id),
        store_dir=tmp_path,
        rate=10.0,
        prefix=prefix,
        seed=7,
    )

    async def scenario() -> None:
        fleet = Fleet(options, on_record=lambda vid, event: recorded.add((vid, event.id)))
        try:
            await fleet.start()
            await until(lambda: all(car.cloud.connected for car in fleet.cars), "cars online")
            fleet.start_recording()
            await asyncio.sleep(2.0)
            await fleet.stop_recording()
            await until(lambda: len(received) >= len(recorded), "the cloud to get every event")
            # The PUBACKs, and the deletes they lead to, may trail the cloud's receipt.
            for _ in range(200):
                snapshot = await fleet.snapshot()
                if snapshot.backlog == 0:
                    break
                await asyncio.sleep(0.05)
            assert snapshot.backlog == 0
            assert snapshot.acknowledged >= len(recorded)
            assert snapshot.commit_failures == 0
        finally:
            await fleet.stop()

    with cloud(broker, on_event=on_event, documents=False) as sim:
        asyncio.run(scenario())
        # At 10 events a second for 2 s, four cars record some 80 events.
        assert len(recorded) > 30
        assert sorted(received) == sorted(recorded)
        assert {vid for vid, _ in received} == set(vehicle_ids(prefix, 0, 4))
        assert sim.stats.duplicates == 0
        # The cars' clocks are trusted, so the cloud measures the end-to-end latency.
        assert sim.stats.latency_p50_s is not None


def test_a_fleet_larger_than_a_process_can_select_on_is_refused(tmp_path: Path) -> None:
    options = FleetOptions(
        vehicles=capacity() + 1_000,
        settings=lambda _vid: pytest.fail("no car may be made"),
        store_dir=tmp_path,
    )
    with pytest.raises(FleetError, match="do not fit one process"):
        asyncio.run(Fleet(options).start())


def test_the_command_shares_the_fleet_out_to_processes(broker: Broker, tmp_path: Path) -> None:
    prefix = f"fc{uuid.uuid4().hex[:6]}"
    received: set[str] = set()
    lock = threading.Lock()

    def on_event(vehicle_id: str, _event: WireEvent) -> None:
        with lock:
            received.add(vehicle_id)

    with cloud(broker, on_event=on_event, documents=True):
        command = [
            sys.executable, "-m", "touchpoint.cli", "fleet-sim",
            "--broker", f"{broker.host}:{broker.port}", "--cert-dir", str(broker.pki.directory),
            "--vehicles", "6", "--processes", "2", "--rate", "5", "--duration", "2",
            "--interval", "1", "--prefix", prefix, "--seed", "3", "--json",
            "--store-dir", str(tmp_path), "--cloud-key", f"{KEY.key_id}={KEY.public_base64()}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["vehicles"] == 6
    assert summary["processes"] == 2
    assert summary["online"] == 6
    assert summary["backlog"] == 0
    assert summary["recorded"] > 10
    # With the cloud's key the cars accept its documents: each car also records that.
    assert summary["acknowledged"] >= summary["recorded"]
    assert received == set(vehicle_ids(prefix, 0, 6))
    assert "refused a message" not in done.stderr
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        f"{vid}.db" for vid in vehicle_ids(prefix, 0, 6)
    ]
