"""``touchpoint demo``: a simulated car through the real CAN layer into the real agent.

The vehicle simulator drives the reference car on a python-can virtual bus; the daemon
decodes it through the reference DBC and mapping, decides, and commits to a SQLite
store in a temporary directory; this command prints the timeline (phases, signals,
cards) and a summary, and exits 0 only if the story happened: the service came due and
its card appeared once the car was parked; the charging stop surfaced the coupon.

The cloud's documents (service history, member wallet) are loaded locally until cloud
sync exists; the D-Bus HMI and the MQTT cloud join the loop with their issues.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final, TextIO

import can

from agent.benefits import Wallet
from agent.cards import CardKind
from agent.config import (
    BusSettings,
    CanSettings,
    ConsentSettings,
    DaemonSettings,
    DbcSettings,
    PolicySettings,
    StoreSettings,
)
from agent.consent import Category
from agent.daemon import Daemon
from agent.plan import ServiceHistory
from agent.policy import CardChange, ChangeType
from can_signals.simulator import (
    BusSink,
    FrameEncoder,
    Phase,
    ScenarioOptions,
    ScenarioRunner,
    VehicleState,
    build_scenario,
    load_reference_database,
    reference_files,
)
from can_signals.update import SignalUpdate
from cloud_sync.demo_content import demo_history, demo_wallet

#: Where the story starts: 3 km before the engine oil's "due soon" point (13,500 km).
START_KM: Final = 13_497.0
_WATCHED: Final = {
    "Vehicle.LowVoltageSystemState": "ignition",
    "Vehicle.Powertrain.Transmission.SelectedGear": "gear",
    "Vehicle.Powertrain.TractionBattery.Charging.IsCharging": "charging",
    "Vehicle.Diagnostics.DTCList": "faults",
}
_GEARS: Final = {126: "P", 127: "D", 0: "N", -1: "R"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="how much faster than real time the car drives (default 60)",
    )
    parser.add_argument(
        "--full", action="store_true", help="the full-length scenarios instead of the short ones"
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 if the story happened as it should."""
    if args.speed <= 0:
        print("error: --speed must be positive", file=sys.stderr)
        return 2
    return asyncio.run(_demo(args.speed, short=not args.full, out=sys.stdout))


class Timeline:
    """Prints what happens, with the time since the start and the odometer."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._start = time.monotonic()
        self.odometer_km = 0.0
        self.changes: list[CardChange] = []
        self._last_km = -1
        self._values: dict[str, object] = {}

    def line(self, text: str) -> None:
        """One line of the timeline."""
        elapsed = time.monotonic() - self._start
        self._out.write(f"[{elapsed:6.1f}s] {self.odometer_km:10,.1f} km  {text}\n")
        self._out.flush()

    def on_signals(self, updates: Sequence[SignalUpdate]) -> None:
        """A signal tap: the odometer each kilometre and the watched signals' changes."""
        for update in updates:
            if update.path == "Vehicle.TraveledDistance" and isinstance(update.value, int):
                self.odometer_km = update.value / 1000
                if int(self.odometer_km) != self._last_km:
                    self._last_km = int(self.odometer_km)
                    self.line(f"odometer {self.odometer_km:,.1f} km")
            name = _WATCHED.get(update.path)
            if name is None or self._values.get(name) == update.value:
                continue
            self._values[name] = update.value
            value = update.value
            if name == "gear" and isinstance(value, int):
                value = _GEARS.get(value, value)
            if name == "faults" and isinstance(value, tuple):
                value = ", ".join(value) or "none"
            self.line(f"signal   {name}: {value}")

    async def apply(self, changes: Sequence[CardChange]) -> None:
        """A card sink: every card shown or taken away."""
        for change in changes:
            self.changes.append(change)
            card = change.card
            if change.type is ChangeType.ADDED:
                self.line(
                    f"CARD     shown: [{card.kind.name.lower()}] {card.title.en} — {card.body.en}"
                )
            elif change.type is ChangeType.REMOVED:
                self.line(f"CARD     removed ({change.reason.name.lower()}): {card.title.en}")
            else:
                self.line(f"CARD     updated: {card.title.en}")


def _settings(directory: Path, channel: str) -> DaemonSettings:
    files = reference_files()
    return DaemonSettings(
        store=StoreSettings(path=directory / "touchpoint.db"),
        can=CanSettings(
            mapping=files.mapping,
            dbc=[DbcSettings(file=files.dbc)],
            buses=[BusSettings(name="can0", interface="virtual", channel=channel)],
        ),
        policy=PolicySettings(quiet_hours=None),  # the demo runs at any hour
        consent=ConsentSettings(
            defaults={
                Category.VEHICLE_HEALTH: True,
                Category.USAGE_ANALYTICS: True,
                Category.MARKETING: True,
            }
        ),
    )


def _cloud_documents() -> tuple[ServiceHistory, Wallet]:
    return demo_history(), demo_wallet()


#: The oil-life monitor's reading at the start: high enough that distance decides.
OIL_LIFE_PCT: Final = 40.0


async def _drive(
    name: str,
    options: ScenarioOptions,
    channel: str,
    speed: float,
    timeline: Timeline,
    *,
    after: VehicleState | None = None,
) -> VehicleState:
    scenario = build_scenario(name, options)
    # One car, several scenarios: what the car carries over (oil life, fuel, the service
    # counter) continues from where the previous scenario left it.
    carried = after or replace(scenario.initial, oil_life_pct=OIL_LIFE_PCT)
    initial = replace(
        scenario.initial,
        oil_life_pct=carried.oil_life_pct,
        fuel_pct=carried.fuel_pct,
        service_resets=carried.service_resets,
    )
    scenario = replace(scenario, initial=initial)
    timeline.line(f"SIM      scenario {scenario.name}: {scenario.description}")

    def phase(index: int, p: Phase, _state: VehicleState) -> None:
        timeline.line(f"SIM      phase {index + 1}/{len(scenario.phases)}: {p.name}")

    bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    runner = ScenarioRunner(
        scenario,
        FrameEncoder(load_reference_database()),
        [BusSink(bus)],
        speed=speed,
        on_phase=phase,
    )
    try:
        result = await asyncio.to_thread(runner.run)
    finally:
        bus.shutdown()
    return result.final


async def _demo(speed: float, *, short: bool, out: TextIO) -> int:
    timeline = Timeline(out)
    channel = f"touchpoint-demo-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="touchpoint-demo-") as directory:
        daemon = Daemon(_settings(Path(directory), channel))
        daemon.sinks.append(timeline)
        daemon.signal_taps.append(timeline.on_signals)
        await daemon.start()
        try:
            history, wallet = _cloud_documents()
            await daemon.apply(lambda a, w, m: a.set_history(history, w, m))
            await daemon.apply(lambda a, w, m: a.set_wallet(wallet, w, m))
            timeline.line("CLOUD    service history and member wallet loaded")
            start = int(time.time())
            first = await _drive(
                "highway_service",
                ScenarioOptions(short=short, start_odometer_km=START_KM, utc_start_s=start),
                channel,
                speed,
                timeline,
            )
            await _drive(
                "park_charge",
                ScenarioOptions(
                    short=short,
                    start_odometer_km=first.odometer_km,
                    utc_start_s=first.utc_start_s + first.clock_ms // 1000 + 1,
                ),
                channel,
                speed,
                timeline,
                after=first,
            )
            await asyncio.sleep(0.5)  # the last frames through the pipeline
            await daemon.settle()
            return _summary(daemon, timeline, out)
        finally:
            await daemon.stop()


def _summary(daemon: Daemon, timeline: Timeline, out: TextIO) -> int:
    first_shown = {c.card.id: c.card.kind for c in timeline.changes if c.type is ChangeType.ADDED}
    shown = Counter(first_shown.values())
    summary = daemon.store.summary()
    events = sum(n for _, _, n, _ in summary)
    stats = daemon.pipeline.stats() if daemon.pipeline else None
    out.write("\nsummary\n")
    kinds = ", ".join(f"{kind.name.lower()} {count}" for kind, count in shown.items())
    out.write(f"  cards shown: {sum(shown.values())} ({kinds})\n")
    out.write(f"  events waiting for the cloud: {events}\n")
    out.writelines(
        f"    {category:18} priority {priority:3}: {count:4} events, {size:,} bytes\n"
        for category, priority, count, size in summary
    )
    if stats is not None:
        p = stats.processor
        out.write(
            f"  CAN: {p.frames:,} frames, {p.updates:,} updates, {p.rejected} rejected, "
            f"{stats.dropped_updates} dropped\n"
        )
    ok = shown[CardKind.MAINTENANCE] >= 1 and shown[CardKind.BENEFIT] >= 1
    out.write(
        "  story: "
        + ("complete\n" if ok else "INCOMPLETE: a maintenance and a benefit card were expected\n")
    )
    return 0 if ok else 1
