"""A full disk while the car sends: nothing stops for good, nothing is lost or doubled.

The store lives on a small tmpfs of its own; the disk is filled for real (ENOSPC, which
SQLite reports as 'database or disk is full') while the cloud is receiving, then space
comes back. Needs root to mount the tmpfs, as CI has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from agent.consent import Category
from agent.errors import StoreError
from cloud_sync.contract import WireEvent
from tests.cloud_sync.conftest import Broker, new_vehicle_id
from tests.cloud_sync.test_sync import (
    car,
    cloud,
    cloud_settings,
    make_events,
    outbox_count,
    prefill,
    until,
)
from touchpoint.daemon import Daemon

DISK_BYTES: Final = 16 * 1024 * 1024
#: The acceptance bound: once space returns, everything is at the cloud within this.
RECOVERY_S: Final = 30.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(where)],
        check=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk; the file that holds them."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, b"\0" * size):
                    pass
    finally:
        os.close(descriptor)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def store_problem(daemon: Daemon) -> str | None:
    return daemon.runner.store_problem


async def toggle_consent(daemon: Daemon, granted: bool) -> None:
    await daemon.apply(
        lambda a, w, m: a.set_consent(
            Category.MARKETING, granted=granted, valid_for=None, wall=w, monotonic=m
        )
    )


def test_a_full_disk_while_sending_loses_nothing_once_space_returns(
    broker: Broker, tmp_path: Path
) -> None:
    vehicle = new_vehicle_id()
    before = make_events(120)
    arrived: list[str] = []
    consent_changes: list[object] = []

    def on_event(_vehicle: str, event: WireEvent) -> None:
        arrived.append(event.id)
        if (
            event.type == "consent.changed"
            and event.payload.get("category") == Category.MARKETING.value
        ):
            consent_changes.append(event.payload.get("granted"))

    async def scenario(disk: Path) -> None:
        store = disk / "t.db"
        prefill(store, before)
        with cloud(broker, on_event=on_event) as sim:
            # The cloud takes the events but does not say it stored them yet: they are
            # in flight when the disk fills, and their acknowledgement must be written.
            sim.acknowledge = False
            config = cloud_settings(broker, vehicle, batch_events=20, ack_timeout_s=2.0)
            async with car(store, config, vehicle) as d:
                await until(lambda: len(set(arrived)) >= 40, "the first batches at the cloud")
                filler = fill(disk)
                sim.acknowledge = True
                # A driver's change while the disk is full: refused at once, not hung.
                started = time.monotonic()
                with pytest.raises(StoreError, match="full"):
                    await toggle_consent(d, False)
                assert time.monotonic() - started < 5.0
                await asyncio.sleep(4.0)  # sends, acks and retries all meet the full disk
                assert store_problem(d) is not None
                assert "store failing" in d._status()  # the systemd status line
                filler.unlink()
                recovered = time.monotonic()
                await toggle_consent(d, True)
                ours = {e.id for e in before}
                await until(
                    lambda: ours <= set(arrived) and outbox_count(store) == 0,
                    "every event at the cloud and the outbox empty",
                    within=RECOVERY_S,
                )
                took = time.monotonic() - recovered
                assert store_problem(d) is None
                assert d.cloud is not None
                assert d.cloud.supervisor.troubled() == []  # degraded, never crashed
            print(f"everything at the cloud {took:.1f} s after space returned")
        # Everything recorded, before and after, is at the cloud once (on_event hears
        # only what is new after de-duplication); the change refused while the disk was
        # full was kept in order and committed when space returned.
        assert len(arrived) == len(set(arrived))
        assert {e.id for e in before} <= set(arrived)
        assert consent_changes[-2:] == [False, True]  # after the first boot's default

    with small_disk(tmp_path / "disk") as disk:
        asyncio.run(scenario(disk))
