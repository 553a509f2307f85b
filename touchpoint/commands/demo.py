"""``touchpoint demo``: the whole loop, from a simulated car to cards to the cloud and back.

It starts, privately and on loopback only (:mod:`touchpoint.demo.stack`): a D-Bus bus, a
Mosquitto broker with mutual TLS, the reference cloud, and the agent reading the
vehicle simulator's CAN frames from a virtual bus through the real CAN signal layer. A
scripted driver (:mod:`touchpoint.demo.driver`) uses the D-Bus API as an HMI would. The
timeline shows what every component does; the summary what was shown, tapped, sent,
acknowledged and received; the exit status is 0 only if the story happened as it should
(:mod:`touchpoint.demo.stories`).

``--interactive`` opens the reference HMI instead of the scripted driver, so a person
can tap the cards; the timeline then goes to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Final, TextIO

import can

from agent.events import EventType
from can_signals.simulator import (
    BusSink,
    FrameEncoder,
    Phase,
    RunResult,
    Scenario,
    ScenarioOptions,
    ScenarioRunner,
    VehicleState,
    at_rest,
    build_scenario,
    load_reference_database,
)
from cloud_sync.contract import WireEvent
from cloud_sync.reference.cloud_sim import BookingAnswer
from touchpoint.daemon import Daemon
from touchpoint.demo.driver import ScriptedDriver
from touchpoint.demo.stack import Stack, running_stack
from touchpoint.demo.stories import DOCUMENTS, STORIES, Drive, Outcome, Story
from touchpoint.demo.timeline import Timeline
from touchpoint.extras import HMI

#: The oil-life monitor's reading at the start: high enough that distance decides.
OIL_LIFE_PCT: Final = 40.0
#: How long the demo waits for the cloud, the driver or the outbox at each step.
WAIT_S: Final = 30.0
#: The story is over when the car has recorded nothing new for this long.
QUIET_S: Final = 1.0
#: How long the car may rest between drives, on the scenario clock (ended earlier).
REST_MS: Final = 3_600_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "--scenario",
        choices=sorted(STORIES),
        default="service",
        help="the story: 'service' (the service comes due, is booked; a charging stop "
        "unlocks a coupon) or 'fault' (a misfire lights the check-engine lamp); "
        "default: service",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="how much faster than real time the car drives (default 60)",
    )
    parser.add_argument(
        "--full", action="store_true", help="the full-length drives instead of the short ones"
    )
    parser.add_argument(
        "--interactive",
        action="store_true",
        help="open the reference HMI instead of the scripted driver, and keep running "
        "until it is closed (q)",
    )
    parser.add_argument(
        "--timeline",
        type=Path,
        metavar="FILE",
        help="write the timeline to FILE (default: the terminal; with --interactive, "
        "touchpoint-demo.log)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also show every kilometre of the odometer"
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 if the story happened as it should."""
    if args.speed <= 0:
        print("error: --speed must be positive", file=sys.stderr)
        return 2
    missing = HMI.missing("touchpoint demo --interactive") if args.interactive else None
    if missing is not None:
        print(missing, file=sys.stderr)
        return 1
    story = STORIES[args.scenario]
    path: Path | None = args.timeline or (Path("touchpoint-demo.log") if args.interactive else None)
    with contextlib.ExitStack() as files:
        out: TextIO = sys.stdout
        if path is not None:
            out = files.enter_context(path.open("w", encoding="utf-8"))
            print(f"touchpoint demo: the timeline goes to {path}", flush=True)
        demo = Demo(story, out, speed=args.speed, short=not args.full, verbose=args.verbose)
        status = asyncio.run(demo.run(interactive=args.interactive))
    if path is not None:
        text = path.read_text(encoding="utf-8")
        if args.interactive:
            # The screen was the HMI's; what happened is the summary at the log's end.
            text = text[text.rfind("\nsummary") + 1 :]
        print(text, end="")
    return status


class Demo:
    """One run of a story through every component."""

    def __init__(
        self,
        story: Story,
        out: TextIO,
        *,
        speed: float,
        short: bool,
        verbose: bool = False,
        booking: BookingAnswer = "confirm",
    ) -> None:
        self.story = story
        self.booking: BookingAnswer = booking
        self.out = out
        self.speed = speed
        self.short = short
        self.timeline = Timeline(out, verbose=verbose)
        self.outcome: Outcome | None = None
        self.interactive = False
        self.figures: list[str] = []
        self._recorded, self._recorded_at = 0, 0.0
        self._runners: list[ScenarioRunner] = []
        self._resting: asyncio.Task[RunResult] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, *, interactive: bool = False) -> int:
        """Start everything, play the story, stop everything; the exit status."""
        self._loop = asyncio.get_running_loop()
        self.interactive = interactive
        timeline = self.timeline
        timeline.line(f"DEMO     story '{self.story.name}': {self.story.description}", state="-")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="touchpoint-demo-") as directory:
            async with running_stack(
                Path(directory),
                on_cloud_event=self._from_cloud,
                before_start=self._attach,
                booking=self.booking,
            ) as stack:
                self.timeline.vehicle = lambda: stack.daemon.agent.vehicle
                timeline.line(
                    f"DEMO     private D-Bus at {stack.bus_address.split(',')[0]}; Mosquitto "
                    f"(mutual TLS) on "
                    f"127.0.0.1:{stack.broker.port}; reference cloud on :{stack.broker.cloud_port}"
                )
                if interactive:
                    await self._interactive(stack)
                else:
                    await self._scripted(stack)
        return self._summary(time.monotonic() - started)

    # -- wiring ---------------------------------------------------------------------------

    def _attach(self, daemon: Daemon) -> None:
        daemon.sinks.append(self.timeline)
        daemon.signal_taps.append(self.timeline.on_signals)
        daemon.event_taps.append(self.timeline.on_events)

    def _from_cloud(self, vehicle_id: str, event: WireEvent) -> None:
        # On the cloud's MQTT thread: the timeline is the event loop's.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.timeline.on_cloud_event, vehicle_id, event)

    # -- the scripted run ---------------------------------------------------------------------

    async def _scripted(self, stack: Stack) -> None:
        timeline = self.timeline
        driver = ScriptedDriver(stack.bus_address, timeline.line, lambda: timeline.moving)
        driver.start()
        try:
            await self._documents(stack)
            await self._drives(stack)
            await driver.idle()
            await self._until(lambda: self._settled(stack), "every event to reach the cloud")
            timeline.line(
                f"CLOUD    has all {len(timeline.car_events)} events the car recorded", state="-"
            )
            self.outcome = await self._outcome(stack, driver)
        finally:
            await driver.stop()
            await self._wake_up()

    async def _documents(self, stack: Stack) -> None:
        cloud = stack.daemon.cloud
        assert cloud is not None
        await self._until(lambda: cloud.connected, "the car to connect to the broker")
        self.timeline.line("CLOUD    the car is online (mutual TLS); the cloud sends its documents")
        await self._until(
            lambda: cloud.stats.documents_applied >= DOCUMENTS,
            "the cloud's documents to take effect",
        )
        self.timeline.line(
            f"CLOUD    {cloud.stats.documents_applied} signed documents verified and applied "
            "(service plan, history, DTC catalogue, wallet, campaign)"
        )

    async def _drives(self, stack: Stack) -> None:
        after: VehicleState | None = None
        for drive in self.story.drives:
            after = await self._drive(drive, stack.can_channel, after)
            for wanted in drive.wait_for:
                types = wanted.split("|")
                await self._until(
                    lambda t=types: any(self.timeline.car_types()[x] for x in t),  # type: ignore[misc]
                    " or ".join(types),
                )

    async def _drive(self, drive: Drive, channel: str, after: VehicleState | None) -> VehicleState:
        """Play one drive; the car then rests, its ECUs awake, until the next one."""
        rested = await self._wake_up()
        after = rested or after
        start = int(time.time()) if after is None else after.utc_s + 1
        odometer = self.story.start_km if after is None else after.odometer_km
        options = ScenarioOptions(short=self.short, start_odometer_km=odometer, utc_start_s=start)
        scenario = build_scenario(drive.scenario, options)
        phases = tuple(p for p in scenario.phases if not p.name.startswith(drive.without))
        # One car, several drives: what the car carries (oil life, fuel, the service
        # counter) continues from where the last drive left it.
        carried = after or replace(scenario.initial, oil_life_pct=OIL_LIFE_PCT)
        initial = replace(
            scenario.initial,
            oil_life_pct=carried.oil_life_pct,
            fuel_pct=carried.fuel_pct,
            service_resets=carried.service_resets,
        )
        scenario = replace(scenario, initial=initial, phases=phases)
        self.timeline.line(f"SIM      drive '{scenario.name}': {scenario.description}")
        result = await self._play(scenario, channel, self.speed, report=True)
        rest = at_rest(result.final, REST_MS)
        self._resting = asyncio.create_task(self._play(rest, channel, 1.0), name="car at rest")
        return result.final

    async def _wake_up(self) -> VehicleState | None:
        """End the rest between drives; the car's state after it."""
        task, self._resting = self._resting, None
        if task is None:
            return None
        self._runners[-1].stop()
        return (await task).final

    async def _play(
        self, scenario: Scenario, channel: str, speed: float, *, report: bool = False
    ) -> RunResult:
        loop = asyncio.get_running_loop()

        def phase(index: int, p: Phase, _state: VehicleState) -> None:
            text = f"SIM      phase {index + 1}/{len(scenario.phases)}: {p.name}"
            loop.call_soon_threadsafe(self.timeline.line, text)

        bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
        runner = ScenarioRunner(
            scenario,
            FrameEncoder(load_reference_database()),
            [BusSink(bus)],
            speed=speed,
            on_phase=phase if report else None,
        )
        self._runners.append(runner)
        try:
            return await asyncio.to_thread(runner.run)
        finally:
            bus.shutdown()

    async def _until(self, condition: Callable[[], bool], what: str) -> bool:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            if time.monotonic() > deadline:
                self.timeline.line(f"DEMO     gave up waiting for {what} after {WAIT_S:.0f} s")
                return False
            await asyncio.sleep(0.05)
        return True

    def _settled(self, stack: Stack) -> bool:
        """Whether the cloud has every event and the car has had nothing new for a while."""
        recorded = len(self.timeline.car_events)
        now = time.monotonic()
        if recorded != self._recorded:
            self._recorded, self._recorded_at = recorded, now
        quiet = now - self._recorded_at >= QUIET_S
        delivered = set(self.timeline.car_events) <= self.timeline.cloud_ids()
        return quiet and delivered and stack.daemon.store.outbox_count == 0

    async def _outcome(self, stack: Stack, driver: ScriptedDriver) -> Outcome:
        daemon = stack.daemon
        await daemon.settle()
        cloud = daemon.cloud
        assert cloud is not None
        dead = await daemon.in_store_thread(lambda store: store.dead_letter_count())
        assert isinstance(dead, int)
        self.figures = _figures(stack)
        return Outcome(
            cards_shown=self.timeline.cards_shown(),
            car_events=self.timeline.car_types(),
            car_ids=frozenset(self.timeline.car_events),
            cloud_ids=frozenset(self.timeline.cloud_ids()),
            outbox_left=daemon.store.outbox_count,
            dead_letters=dead,
            documents_applied=cloud.stats.documents_applied,
            documents_rejected=cloud.stats.documents_rejected,
            driver=driver.log,
        )

    # -- the interactive run -----------------------------------------------------------------

    async def _interactive(self, stack: Stack) -> None:
        from ui_bridge.reference.hmi_app import HmiApp  # noqa: PLC0415 - Textual only when asked

        timeline = self.timeline
        # The person taps; a watching driver still holds the screen to the distraction
        # rules, so the story's result covers them too.
        watcher = ScriptedDriver(
            stack.bus_address, timeline.line, lambda: timeline.moving, watch_only=True
        )
        watcher.start()
        await self._documents(stack)
        drives = asyncio.create_task(self._drives(stack), name="demo drives")
        try:
            await HmiApp(stack.bus_address, locale="en").run_async()
        finally:
            drives.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drives
            for runner in self._runners:
                runner.stop()
            await watcher.stop()
            await self._wake_up()
        # What the person did, as the car recorded it.
        log = watcher.log
        log.impressions = timeline.car_types()[EventType.CARD_SHOWN]
        log.taps = [(a, "") for a in timeline.actions]
        log.booked_slots = list(timeline.booked_slots)
        self.outcome = await self._outcome(stack, watcher)

    # -- the summary -------------------------------------------------------------------------

    def _summary(self, seconds: float) -> int:
        out, outcome = self.out, self.outcome
        if outcome is None:
            return 1
        driver = outcome.driver
        kinds = ", ".join(f"{k.name.lower()} {n}" for k, n in outcome.cards_shown.items())
        taps = ", ".join(key for key, _ in driver.taps) or "none"
        missing = len(outcome.car_ids - outcome.cloud_ids)
        out.write(f"\nsummary ({seconds:.0f} s)\n")
        out.write(f"  cards shown: {sum(outcome.cards_shown.values())} ({kinds})\n")
        out.write(f"  driver (over D-Bus): {driver.impressions} cards seen, taps: {taps}\n")
        out.write(
            f"  events: {len(outcome.car_ids)} recorded by the car = "
            f"{len(outcome.car_ids & outcome.cloud_ids)} received by the cloud + {missing} "
            f"missing ({outcome.outbox_left} still in the outbox, {outcome.dead_letters} "
            "dead letters)\n"
        )
        out.writelines(f"  {line}\n" for line in self.figures)
        out.write("  story:\n")
        ok = True
        for text, check in self.story.checks:
            if check(outcome):
                out.write(f"    [ok] {text}\n")
            elif self.interactive and self.story.up_to_the_driver(text):
                # A person may well not tap; that is theirs to choose, not a fault.
                out.write(f"    [not done] {text} (a tap of yours on the screen)\n")
            else:
                out.write(f"    [FAILED] {text}\n")
                ok = False
        for violation in driver.violations:
            out.write(f"    violation: {violation}\n")
        out.write(f"  result: {'the story happened' if ok else 'the story did NOT happen'}\n")
        out.flush()
        return 0 if ok else 1


def _figures(stack: Stack) -> list[str]:
    """What the broker, the cloud and the CAN layer counted."""
    daemon = stack.daemon
    sync = daemon.cloud.stats if daemon.cloud is not None else None
    cloud = stack.cloud.snapshot()
    lines = []
    if sync is not None:
        # Sent counts every send (a resend after a lost ack too); acknowledged is what the
        # cloud confirmed it stored, once per event.
        resent = sync.events_sent - sync.events_acknowledged
        lines.append(
            f"MQTT: {sync.events_sent} events sent in {sync.messages_sent} messages "
            f"({max(resent, 0)} sent again or not yet acknowledged), "
            f"{sync.events_acknowledged} acknowledged by the cloud as stored, "
            f"{sync.events_refused} refused by the broker, {sync.connections} connection(s)"
        )
    lines.append(
        f"cloud: {cloud.events + cloud.requests_new} events taken in = {cloud.events} in "
        f"batches + {cloud.requests_new} requests; {cloud.duplicates} duplicates dropped, "
        f"{cloud.answered} answers, {cloud.malformed} malformed"
    )
    rejected = sync.documents_rejected if sync is not None else 0
    stats = daemon.pipeline.stats() if daemon.pipeline is not None else None
    if stats is not None:
        p = stats.processor
        lines.append(
            f"CAN: {p.frames:,} frames decoded into {p.updates:,} signal updates, "
            f"{p.rejected} rejected; downlink documents rejected: {rejected}"
        )
    return lines
