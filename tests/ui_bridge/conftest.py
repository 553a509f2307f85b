"""A private dbus-daemon per test session, and a touchpoint daemon serving on it.

The bus listens on a unix socket in a temporary directory and is stopped at the end of
the session; nothing here touches the machine's own buses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from agent.consent import Category
from agent.settings import ConsentSettings, PolicySettings, StoreSettings
from can_signals.update import SignalUpdate
from touchpoint.daemon import Daemon
from touchpoint.settings import DaemonSettings
from ui_bridge.reference.private_bus import private_bus
from ui_bridge.settings import DbusSettings

__all__ = ["private_bus"]  # the bus policy tests start buses of their own with it


@pytest.fixture(scope="session")
def bus_address() -> Iterator[str]:
    """A private session-like bus for the whole test session."""
    with private_bus() as address:
        yield address


def settings(store: Path, address: str, locale: str = "en") -> DaemonSettings:
    """A daemon without CAN (signals are fed directly), serving on ``address``."""
    return DaemonSettings(
        store=StoreSettings(path=store),
        dbus=DbusSettings(address=address, locale=locale),  # type: ignore[arg-type]
        policy=PolicySettings(quiet_hours=None),
        consent=ConsentSettings(
            defaults=dict.fromkeys((Category.VEHICLE_HEALTH, Category.USAGE_ANALYTICS,
                                    Category.MARKETING), True)
        ),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def serving(
    store: Path,
    address: str,
    locale: str = "en",
    wall: Callable[[], float] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> AsyncIterator[Daemon]:
    """A started daemon whose bridge owns org.touchpoint.Agent1 on ``address``.

    ``wall`` and ``monotonic`` replace the daemon's clocks (to let expiry times pass
    without waiting: expiries run on the clock model's floor, docs/time.md).
    """
    daemon = Daemon(
        settings(store, address, locale),
        wall=wall or time.time,
        monotonic=monotonic or time.monotonic,
    )
    await daemon.start()
    try:
        assert daemon.bridge is not None
        for _ in range(100):
            if daemon.bridge.connected:
                break
            await asyncio.sleep(0.05)
        assert daemon.bridge.connected, "the bridge did not take the bus name"
        yield daemon
    finally:
        await daemon.stop()


def update(path: str, value: object) -> SignalUpdate:
    """A signal update as the pipeline would make it."""
    return SignalUpdate(path, value, None, 0.0, "can0")  # type: ignore[arg-type]


async def feed(daemon: Daemon, *pairs: tuple[str, object]) -> None:
    """Signal updates into the daemon, committed and shown before this returns."""
    batch = [update(p, v) for p, v in pairs]
    await daemon.apply(lambda a, w, m: a.on_signals(batch, w, m))


PARK = (("Vehicle.Speed", 0.0), ("Vehicle.Powertrain.Transmission.SelectedGear", 126))
DRIVE = (("Vehicle.Speed", 60.0), ("Vehicle.Powertrain.Transmission.SelectedGear", 127))
#: 9,100 km with the default plan and no history: tyre rotation is due soon.
DUE_SOON = (("Vehicle.TraveledDistance", 9_100_000),)


def dbus_env(address: str) -> dict[str, str]:
    """An environment in which command-line clients use the private bus."""
    return {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address}
