"""Everything the demo runs, private to it: a bus, a broker, the cloud and the agent.

A private ``dbus-daemon`` (a session bus in a temporary directory), a private
Mosquitto with the shipped configuration (mutual TLS, per-vehicle ACL) on free
loopback ports with certificates from a development CA made for the run, the
reference cloud (:class:`~cloud_sync.reference.cloud_sim.CloudSim`, signing with a key made for
the run) and the daemon itself, reading the reference car's CAN from a python-can
virtual bus. Nothing touches the machine's own buses or broker; everything is stopped
when the block ends, also on an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from can_signals.settings import BusSettings
from cloud_sync.contract import WireEvent
from cloud_sync.reference.cloud_sim import BookingAnswer, CloudSim, Endpoint
from cloud_sync.reference.pki import CLOUD_USER, DevPki
from cloud_sync.reference.private_broker import PrivateBroker, running_broker
from cloud_sync.signing import SigningKey
from touchpoint.daemon import Daemon
from touchpoint.devstack import car_settings
from touchpoint.settings import DaemonSettings
from ui_bridge.reference.private_bus import private_bus

#: The demo car's provisioned identity (its certificate's common name).
VEHICLE_ID: Final = "demo-car-0001"
#: The key id the development cloud signs with.
KEY_ID: Final = "demo"

CloudListener = Callable[[str, WireEvent], None]


@dataclass(frozen=True, slots=True)
class Stack:
    """The running pieces of the demo."""

    directory: Path
    bus_address: str
    broker: PrivateBroker
    cloud: CloudSim
    daemon: Daemon
    can_channel: str


def daemon_settings(
    directory: Path, bus_address: str, broker: PrivateBroker, key: SigningKey, can_channel: str
) -> DaemonSettings:
    """The demo car's settings: the development car on a virtual bus, everything private."""
    return car_settings(
        directory,
        vehicle_id=VEHICLE_ID,
        bus=BusSettings(name="can0", interface="virtual", channel=can_channel),
        bus_address=bus_address,
        broker=broker,
        key=key,
    )


@contextlib.asynccontextmanager
async def running_stack(
    directory: Path,
    *,
    on_cloud_event: CloudListener | None = None,
    booking: BookingAnswer = "confirm",
    before_start: Callable[[Daemon], None] | None = None,
) -> AsyncIterator[Stack]:
    """Start the bus, the broker, the cloud and the daemon; stop them after the block.

    Args:
        directory: An empty directory for the run (PKI, broker, store).
        on_cloud_event: Called, on the cloud's MQTT thread, with each event the cloud
            receives for the first time.
        booking: How the cloud answers booking requests.
        before_start: Called with the daemon before it starts (to add sinks and taps).
    """
    can_channel = f"touchpoint-demo-{os.getpid()}"
    key = SigningKey.generate(KEY_ID)
    pki = DevPki.create(directory / "pki")
    with private_bus() as bus_address, running_broker(directory / "broker", pki) as broker:
        cert, private_key = broker.credentials(CLOUD_USER)
        endpoint = Endpoint(broker.host, broker.cloud_port, pki.ca_cert, cert, private_key)
        cloud = CloudSim(
            endpoint,
            key,
            instance=f"demo-{os.getpid()}",
            booking=booking,
            booking_delay_s=1.0,
            on_event=on_cloud_event,
        )
        cloud.start()
        try:
            settings = daemon_settings(directory, bus_address, broker, key, can_channel)
            daemon = Daemon(settings)
            if before_start is not None:
                before_start(daemon)
            await daemon.start()
            try:
                yield Stack(directory, bus_address, broker, cloud, daemon, can_channel)
            finally:
                await daemon.stop()
        finally:
            cloud.stop()
