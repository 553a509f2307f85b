"""The kill loop with the cloud: SIGKILL the daemon where it hurts, over and over.

The same world as the soak (:mod:`tests.soak.stack`): the car drives without pause
(faults, oil-life drops, charging stops), a driver taps cards over D-Bus all the time
(dismiss, book and pick a slot, redeem, snooze, report shown, language), and the
daemon records, sends, receives acknowledgements and answers calls. Each iteration
starts it through :mod:`tests.soak.killpoints`, armed to SIGKILL itself the n-th time
it reaches one point (mid-commit, mid-send, awaiting-ack, mid-call); a daemon that
does not get there within a few seconds is SIGKILLed from outside at a random moment
instead. The broker is crashed at random too, and started again a few kills later.

After every kill the store and the cloud go through the invariant checker
(:class:`~tests.invariants.checker.InvariantChecker`: integrity, nothing lost, nothing
duplicated after the cloud's de-duplication, no dismissed card back...). At the end
the daemon runs once more, unarmed, with the broker up, until its outbox is empty:
then the cloud must hold every committed event exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from can_signals.simulator import Gear, Ignition, Phase, VehicleState
from can_signals.simulator.scenario import (
    STANDSTILL,
    PlugCable,
    RaiseDtc,
    SetIgnition,
    UnplugCable,
    constant,
)
from tests.daemon.killharness import OilMonitorDrops
from tests.invariants.checker import GAVE_UP, INVARIANTS, LOST, Violation
from tests.invariants.views import read_store
from tests.soak.car import Segment, SimCar, drive_phases
from tests.soak.killpoints import POINTS
from tests.soak.loop import START_ODOMETER_KM, Run, start_broker, tap
from tests.soak.stack import World, running_world, stop_on_sigterm
from ui_bridge.names import card_path
from ui_bridge.reference.hmi_client import HmiClient

#: How long an armed daemon may live before it is killed from outside.
MAX_LIFE_S: Final = 6.0
EXTERNAL: Final = "random moment (from outside)"
#: How long the final, unarmed daemon has to empty its outbox.
DRAIN_S: Final = 90.0


@dataclass(slots=True)
class KillCounts:
    """Where the kills landed."""

    landed: Counter[str]
    broker_kills: int = 0

    def lines(self) -> list[str]:
        """One line per point."""
        return [f"  {self.landed[p]:>5}  {p}" for p in (*POINTS, EXTERNAL)]


async def _keep_driving(run: Run) -> None:
    """The car drives, parks, charges, raises a fault now and then, forever."""
    rng = run.rng
    car = run.car
    assert isinstance(car, SimCar)
    cycle = 0
    while True:
        cycle += 1
        duration = rng.randrange(5_000, 15_000)
        actions: list[object] = []
        if cycle % 3 == 0:
            actions.append(OilMonitorDrops(max(0.0, 20.0 - 4 * cycle)))
        if cycle % 4 == 1:
            actions.append(RaiseDtc(rng.choice(("P0301", "P0420", "P0171"))))
        phase = Phase("drive", duration, tuple(actions), constant(50.0))  # type: ignore[arg-type]
        phases = drive_phases("drive", phase)
        phases.insert(-2, Phase("slow down", 8_000, (), STANDSTILL))
        await asyncio.to_thread(car.play, Segment("drive", tuple(phases), speed=2.0))
        stops: tuple[Phase, ...] = (
            Phase("parked", rng.randrange(3_000, 8_000), (SetIgnition(Ignition.LOCK),)),
        )
        if cycle % 2 == 0:
            stops = (
                Phase("plug in", 1_000, (SetIgnition(Ignition.OFF), PlugCable(11.0))),
                Phase("charging", rng.randrange(2_000, 5_000)),
                Phase("unplug", 500, (UnplugCable(),)),
            )
        await asyncio.to_thread(car.play, Segment("stop", stops))


async def _keep_tapping(run: Run) -> None:
    """The driver taps whatever is on screen, all the time."""
    actions = ("dismiss", "book", "redeem", "snooze", "ok", "shown", "locale")
    last_path: str | None = None
    while True:
        await asyncio.sleep(run.rng.uniform(0.05, 0.4))
        if run.hmi is None or not run.screen().running:
            continue
        action = run.rng.choice(actions)
        cards = list(run.hmi.state.cards.values())
        if cards:
            last_path = cards[0].path
        with contextlib.suppress(Exception):
            if action == "shown" and not cards:
                # A booking from a card gone meanwhile (or never there): the agent
                # refuses it, a call carried out all the same.
                async with asyncio.timeout(5):
                    await run.hmi.request_booking(last_path or card_path(str(uuid.uuid4())),
                                                  "slot-0")  # fmt: skip
            elif action == "shown":
                for card in cards:
                    async with asyncio.timeout(5):
                        await run.hmi.report_shown(card.path)
            elif action == "locale":
                async with asyncio.timeout(5):
                    await run.hmi.set_locale(run.rng.choice(("en", "zh-CN")))
            else:
                await tap(run, action)


async def kill_loop(kills: int, seed: int, directory: Path, out: TextIO) -> int:
    """``kills`` iterations; 0 if every invariant held and the cloud got everything once."""
    rng = random.Random(seed)
    counts = KillCounts(Counter())
    argv_base = [sys.executable, "-m", "tests.soak.killpoints"]
    with running_world(directory, fake_clock=False) as world:
        initial = VehicleState(utc_start_s=int(time.time()), odometer_km=START_ODOMETER_KM,
                               oil_life_pct=25.0, soc_pct=60.0, gear=Gear.P)  # fmt: skip
        car = SimCar(world.can.url, initial)
        car.start()
        run = Run(world, car, rng, out)
        run.hmi = HmiClient(world.bus_address, locale="en")
        run.hmi.start()
        background = [asyncio.create_task(_keep_driving(run)),
                      asyncio.create_task(_keep_tapping(run))]  # fmt: skip
        status = 0
        began = time.monotonic()
        broker_back_at: int | None = None
        try:
            for iteration in range(kills):
                point = rng.choice(POINTS)
                nth = rng.randrange(1, 3)
                world.daemon.argv = [*argv_base, point, str(nth), "--log-level", "INFO",
                                     "run", "--config", str(world.daemon.config)]  # fmt: skip
                world.daemon.start()
                landed = await _until_dead(run, rng.uniform(0.5, MAX_LIFE_S))
                counts.landed[point if landed else EXTERNAL] += 1
                if broker_back_at == iteration:
                    broker_back_at = None if await start_broker(run) else iteration + 1
                elif run.broker_up and rng.random() < 0.08:
                    await asyncio.to_thread(world.broker.stop, crash=True)
                    run.broker_up, broker_back_at = False, iteration + rng.randrange(1, 5)
                    counts.broker_kills += 1
                violations = run.observe()
                if violations:
                    status = 1
                    _report(run, f"kill {iteration + 1} ({point}, n={nth})", violations)
                    break
            if status == 0:
                status = await _drain_and_check(run, world)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            with contextlib.suppress(Exception):
                await run.hmi.close()
            car.stop()
        run.say(f"kill loop, seed {seed}: {sum(counts.landed.values())} SIGKILLs in "
                f"{time.monotonic() - began:.0f} s, {counts.broker_kills} broker crashes; "
                "kills landed:")  # fmt: skip
        for line in counts.lines():
            run.say(line)
        run.say("checks:")
        for name in INVARIANTS:
            run.say(f"  {run.checker.checked[name]:>8}  {name}")
        cloud = world.ledger.view()
        run.say(f"cloud: {len(cloud.events)} events, each handed on once: "
                f"{all(n == 1 for n in cloud.handed_on.values())}; "
                f"result: {'FAILED' if status else 'every invariant held'}")  # fmt: skip
        return status


async def _until_dead(run: Run, life_s: float) -> bool:
    """Wait for the armed daemon to kill itself; else kill it. True if it did.

    Its life counts from when it serves on the bus (starting takes seconds on a loaded
    machine, and a kill during the imports tests nothing).
    """
    world = run.world
    with contextlib.suppress(TimeoutError):
        await run.until(lambda: run.screen().running or not world.daemon.running, "the bus")
    deadline = time.monotonic() + life_s
    while time.monotonic() < deadline:
        if not world.daemon.running:
            code = world.daemon.kill()
            if code != -9:
                raise RuntimeError(f"the daemon exited {code}:\n{world.daemon.log_tail()}")
            return True
        await asyncio.sleep(0.02)
    world.daemon.kill()
    return False


async def _drain_and_check(run: Run, world: World) -> int:
    """Run the daemon unarmed until the outbox is empty; then everything is at the cloud."""
    while not run.broker_up and not await start_broker(run):
        pass
    world.daemon.argv = None
    await run.start_daemon()
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        if not read_store(world.store, integrity=False).outbox:
            break
    await asyncio.sleep(1.0)
    world.daemon.stop()
    violations = run.observe()
    store = read_store(world.store)
    cloud = world.ledger.view()
    committed = run.checker.committed.values()
    gave_up = {e.payload.get("request_id") for e in committed if e.type in GAVE_UP}
    missing = [
        e for e in committed
        if e.id not in cloud.events and (e.payload.get("request_id") or e.request_id) not in gave_up
    ]  # fmt: skip
    if store.outbox:
        violations.append(Violation(LOST, f"{len(store.outbox)} events never left the outbox"))
    violations += [Violation(LOST, f"{e.type} {e.id} never reached the cloud") for e in missing]
    if violations:
        _report(run, "the final drain", violations)
        return 1
    return 0


def _report(run: Run, where: str, violations: list[Violation]) -> None:
    run.say(f"VIOLATION after {where}:")
    for violation in violations[:20]:
        run.say(f"  {violation}")
    run.say(f"daemon log (end):\n{run.world.daemon.log_tail(30)}")


def main(kills: int, seed: int | None, keep: Path | None = None) -> int:
    """Print the seed first, run, return the exit status."""
    chosen = seed if seed is not None else random.SystemRandom().randrange(2**32)
    print(f"TOUCHPOINT_SEED={chosen}", flush=True)
    stop_on_sigterm()
    if keep is not None:
        return asyncio.run(kill_loop(kills, chosen, keep, sys.stdout))
    with tempfile.TemporaryDirectory(prefix="touchpoint-kill-") as directory:
        return asyncio.run(kill_loop(kills, chosen, Path(directory), sys.stdout))
