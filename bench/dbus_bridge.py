"""The D-Bus bridge: how fast a card reaches an HMI, and what a property update costs.

Everything runs on a private ``dbus-daemon`` (:mod:`ui_bridge.reference.private_bus`); the
daemon (:class:`touchpoint.daemon.Daemon` with its bridge) runs in this process with its
store on a real disk (:mod:`bench.scratch`), and the HMI is a separate process
(``python -m bench.dbus_bridge listen ADDRESS``) that prints, for each
``InterfacesAdded``/``InterfacesRemoved``/``PropertiesChanged`` it receives, the object
path and ``CLOCK_MONOTONIC`` at receipt. That clock is system-wide, so the two
processes' readings compare directly.

- Latency: a ``DTCList`` signal update with a fault code goes into the daemon (the
  same commit-then-show path as a CAN update: the agent decides, the events are
  committed with fsync, then the bridge exports the card); the figure is from just
  before the update to the HMI's receipt of ``InterfacesAdded``. The code then clears
  (the card goes) before the next. The baseline in the same run is the bus's own
  round trip (a ``Ping`` to the bus daemon from this process): the floor any D-Bus
  service pays.
- Property updates: 20 cards are exported; one card's content changes (a new priority
  and title: ``PropertiesChanged`` with the public values and the private names
  invalidated). The cost is the CPU time of the bridge's update (building the
  properties, marshalling, queueing the message), per card and for all 20 at once;
  and the time until the HMI received all 20 signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

from agent.cards import Card, CardChange, ChangeType, Text
from agent.consent import Category
from agent.fault_engine import default_catalogue
from agent.ids import uuid7
from agent.settings import ConsentSettings, PolicySettings, StoreSettings
from agent.signals import SELECTED_GEAR
from bench.report import Row, Section
from bench.scratch import disk_dir
from can_signals.catalogue import DTC_LIST, GEAR_PARK, SPEED
from can_signals.update import SignalUpdate
from touchpoint.daemon import Daemon
from touchpoint.settings import DaemonSettings
from ui_bridge.names import BUS_NAME, OBJECT_MANAGER, ROOT_PATH
from ui_bridge.reference.private_bus import private_bus
from ui_bridge.settings import DbusSettings

#: The issue's target for the card-to-HMI latency, at the 99th percentile.
P99_TARGET_MS: Final = 20.0
CARDS: Final = 1_000
WARMUP: Final = 20
#: The card set of the property-update figure.
CARD_SET: Final = 20
UPDATE_REPEATS: Final = 200
#: Codes from the DTC catalogue, taken in turn (a cleared code may come back as a new card).
CODES: Final = ("P0301", "P0302", "P0303", "P0304", "P0171", "P0420")
PARK: Final = ((SPEED, 0.0), (SELECTED_GEAR, GEAR_PARK))
TIMEOUT_S: Final = 10.0


def run() -> list[Section]:
    """Both measurements, as printed sections."""
    return asyncio.run(_run())


async def _run() -> list[Section]:
    with private_bus() as address, disk_dir("dbus") as directory:
        async with (
            _daemon(directory / "touchpoint.db", address) as daemon,
            _Listener.start(address) as hmi,
        ):
            latency = await _latency(daemon, hmi)
            updates = await _updates(daemon, hmi)
    return [latency, updates]


# -- the HMI process -------------------------------------------------------------------


class _Listener:
    """The separate HMI process, and the receipts it reports."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, address: str) -> AsyncIterator[_Listener]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.dbus_bridge", "listen", address,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        listener = cls(process)
        try:
            assert await listener.next_line() == ["ready"]
            yield listener
        finally:
            process.terminate()
            await process.wait()

    async def next_line(self) -> list[str]:
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), TIMEOUT_S)
        if not line:
            raise RuntimeError("the HMI process ended")
        return line.decode().split()

    async def receipt(self, member: str, path: str | None = None) -> int:
        """``CLOCK_MONOTONIC`` (ns) when the HMI received ``member`` (for ``path``)."""
        while True:
            got, got_path, stamp = await self.next_line()
            if got == member and path in (None, got_path):
                return int(stamp)


async def _listen(address: str) -> None:
    from dbus_fast import Message, MessageType  # noqa: PLC0415 - only in the HMI process
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    bus = await MessageBus(bus_address=address).connect()
    out = sys.stdout

    def handler(message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        stamp = time.monotonic_ns()
        path = message.body[0] if message.path == ROOT_PATH and message.body else message.path
        out.write(f"{message.member} {path} {stamp}\n")
        out.flush()

    bus.add_message_handler(handler)
    match = f"type='signal',sender='{BUS_NAME}'"
    await bus.call(
        Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[match])
    )  # fmt: skip
    out.write("ready\n")
    out.flush()
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


# -- the daemon ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _daemon(store: Path, address: str) -> AsyncIterator[Daemon]:
    settings = DaemonSettings(
        store=StoreSettings(path=store),
        dbus=DbusSettings(address=address, locale="en"),
        policy=PolicySettings(quiet_hours=None),
        consent=ConsentSettings(defaults={Category.VEHICLE_HEALTH: True}),
    )
    daemon = Daemon(settings)
    await daemon.start()
    try:
        bridge = daemon.bridge
        assert bridge is not None
        for _ in range(200):
            if bridge.connected:
                break
            await asyncio.sleep(0.05)
        if not bridge.connected:
            raise RuntimeError("the bridge did not take the bus name")
        yield daemon
    finally:
        await daemon.stop()


async def _feed(daemon: Daemon, *pairs: tuple[str, object]) -> None:
    batch = [SignalUpdate(p, v, None, 0.0, "can0") for p, v in pairs]  # type: ignore[arg-type]
    await daemon.apply(lambda a, w, m: a.on_signals(batch, w, m))


# -- latency ---------------------------------------------------------------------------


async def _latency(daemon: Daemon, hmi: _Listener) -> Section:
    await _feed(daemon, *PARK)
    catalogue = default_catalogue()  # codes of one problem share a card (the misfires)
    applied: list[float] = []
    received: list[float] = []
    for i in range(WARMUP + CARDS):
        code = CODES[i % len(CODES)]
        began = time.monotonic_ns()
        await _feed(daemon, (DTC_LIST, (code,)))
        done = time.monotonic_ns()
        [card] = daemon.agent.cards.visible
        arrived = await hmi.receipt("InterfacesAdded")
        await _feed(daemon, (DTC_LIST, ()))
        await hmi.receipt("InterfacesRemoved")
        if i >= WARMUP:
            applied.append((done - began) / 1e6)
            received.append((arrived - began) / 1e6)
        assert card.key == f"fault:{catalogue.lookup(code).group or code}", card.key
    ping = await _ping_ms(daemon)
    p50, p99 = _percentile(received, 50), _percentile(received, 99)
    return Section(
        title=f"D-Bus: signal update -> InterfacesAdded at a separate HMI process ({CARDS} cards)",
        rows=(
            Row("p50", p50, "ms"),
            Row("p99", p99, "ms", target=P99_TARGET_MS),
            Row("max", max(received), "ms"),
            Row("of which decide + commit (fsync) + export, p50", _percentile(applied, 50), "ms"),
            Row("baseline: a bus round trip (Ping), p50", ping, "ms"),
        ),
        notes=(
            (
                "each card: a DTCList update with a fault code -> the agent's card -> "
                "commit -> InterfacesAdded; then the code clears and the card goes"
            ),
            "times on CLOCK_MONOTONIC in both processes; the store is on a real disk",
        ),
    )


async def _ping_ms(daemon: Daemon) -> float:
    from dbus_fast import Message  # noqa: PLC0415

    bus = daemon.bridge._bus if daemon.bridge is not None else None  # noqa: SLF001
    assert bus is not None
    times = []
    for _ in range(200):
        began = time.perf_counter()
        await bus.call(
            Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus.Peer", member="Ping")
        )  # fmt: skip
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


# -- property updates ------------------------------------------------------------------


async def _updates(daemon: Daemon, hmi: _Listener) -> Section:
    bridge = daemon.bridge
    assert bridge is not None
    await _feed(daemon, (DTC_LIST, ("P0301",)))
    [template] = daemon.agent.cards.visible
    await hmi.receipt("InterfacesAdded")
    now_ms = int(time.time() * 1000)
    cards = [
        dataclasses.replace(template, id=uuid7(now_ms), key=f"bench:{i}") for i in range(CARD_SET)
    ]
    await bridge.apply([CardChange(ChangeType.ADDED, c) for c in cards])
    for _ in cards:
        await hmi.receipt("InterfacesAdded")

    one: list[float] = []
    all_at_once: list[float] = []
    delivered: list[float] = []
    for n in range(UPDATE_REPEATS):
        single = _changed(cards[0], 2 * n)
        changed = [_changed(c, 2 * n + 1) for c in cards]  # each card differs from before
        began = time.perf_counter()
        await bridge.apply([CardChange(ChangeType.UPDATED, single)])
        one.append((time.perf_counter() - began) * 1e6)
        await hmi.receipt("PropertiesChanged")
        began_ns = time.monotonic_ns()
        began = time.perf_counter()
        await bridge.apply([CardChange(ChangeType.UPDATED, c) for c in changed])
        all_at_once.append((time.perf_counter() - began) * 1e6)
        last = 0
        for _ in changed:
            last = await hmi.receipt("PropertiesChanged")
        delivered.append((last - began_ns) / 1e6)
    bare = await _bare_signal_us(daemon, hmi)
    return Section(
        title=f"D-Bus: a property update of a visible card ({UPDATE_REPEATS} rounds, median)",
        rows=(
            Row("one card: build, marshal, queue", statistics.median(one), "µs", digits=1),
            Row("baseline: an empty signal, marshal and send", bare, "µs", digits=1),
            Row(f"all {CARD_SET} cards at once", statistics.median(all_at_once), "µs", digits=1),
            Row(f"all {CARD_SET} received by the HMI process", statistics.median(delivered), "ms"),
        ),
        notes=(
            (
                "an update changes the priority and the title: PropertiesChanged with the "
                "public values, the private names invalidated"
            ),
        ),
    )


async def _bare_signal_us(daemon: Daemon, hmi: _Listener) -> float:
    """What dbus-fast takes to marshal and send a signal with nothing in it."""
    from dbus_fast import Message  # noqa: PLC0415

    bus = daemon.bridge._bus if daemon.bridge is not None else None  # noqa: SLF001
    assert bus is not None
    times = []
    for _ in range(UPDATE_REPEATS):
        began = time.perf_counter()
        bus.send(Message.new_signal(ROOT_PATH, OBJECT_MANAGER, "Bench", "", []))
        times.append((time.perf_counter() - began) * 1e6)
        await hmi.receipt("Bench")
    return statistics.median(times)


def _changed(card: Card, n: int) -> Card:
    title = Text(zh_cn=f"{card.title.zh_cn} {n}", en=f"{card.title.en} {n}")
    return dataclasses.replace(card, priority=n % 100, title=title)


def _percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main(argv: Sequence[str]) -> int:
    """``listen ADDRESS``: the HMI process; no argument: run and print the benchmark."""
    if argv[:1] == ["listen"] and len(argv) == 2:
        with contextlib.suppress(Exception):
            asyncio.run(_listen(argv[1]))
        return 0
    from bench.report import format_table  # noqa: PLC0415

    for section in run():
        print(format_table(section), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
