"""The soak: a seeded, stateful random walk over the real daemon, checked after every step.

The world (:mod:`tests.soak.stack`): ``touchpoint run`` in its own process on a faked
clock, a private D-Bus, Mosquitto and the reference cloud, and the car on a
python-can-remote bus (:mod:`tests.soak.car`). Each step is drawn at random (weights
in :data:`STEPS`) from what a car, a driver and an unreliable world do: drive, park,
charge, raise and clear faults, send a bad frame or a GNSS time without a fix, tap
cards over D-Bus (book and pick a slot, redeem, snooze, dismiss, OK, change the
language), take the broker down and up, make the cloud slow, declining or silent,
SIGKILL and restart the daemon, jump the daemon's clock, publish new documents. After
every step :class:`~tests.invariants.checker.InvariantChecker` checks the store, the
cloud and the bus. The first violation ends the run with the steps that led to it.

There is no shrinking: the seed and the step list are the reproduction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from agent.plan import ServiceHistory, ServiceRecord, default_plan
from can_signals.simulator import Gear, Ignition, Phase, VehicleState, record
from can_signals.simulator.scenario import (
    STANDSTILL,
    ClearDtc,
    PlugCable,
    RaiseDtc,
    SetIgnition,
    UnplugCable,
    constant,
)
from cloud_sync.contract import DocumentKind
from cloud_sync.reference.demo_content import demo_campaign, demo_wallet
from cloud_sync.reference.private_broker import BrokerError
from tests.daemon.killharness import OilMonitorDrops, kill_loop_drive
from tests.invariants.checker import (
    INVARIANTS,
    Bounds,
    InvariantChecker,
    Observation,
    Truth,
    Violation,
)
from tests.invariants.views import NO_SCREEN, ScreenView, read_store
from tests.soak.car import RecordedCar, Segment, SimCar, drive_phases
from tests.soak.recordings import RAV4_DIR, rav4_decoder, rav4_setup, reference_decoder
from tests.soak.stack import REQUEST_TIMEOUT_S, VEHICLE_ID, World, running_world, stop_on_sigterm
from ui_bridge.reference.hmi_client import HmiClient, HmiError

_log = logging.getLogger(__name__)

#: The car's odometer at the start: the oil-life monitor, not distance, decides.
START_ODOMETER_KM: Final = 8_000.0
#: How fast drive segments play (the car's clock runs this much faster than real).
DRIVE_SPEED: Final = 1.0
#: Codes the soak raises and clears (the reference DTC catalogue knows them).
CODES: Final = ("P0301", "P0420", "P0171", "C0035")
#: How long one D-Bus call or wait for the agent may take.
CALL_TIMEOUT_S: Final = 15.0


@dataclass(slots=True)
class CloudMode:
    """How the reference cloud behaves now (a step changes it)."""

    name: str = "normal"

    @property
    def answering(self) -> bool:
        """Whether requests get answers (slowly or not)."""
        return self.name != "silent"


@dataclass(slots=True)
class Run:
    """The state of one soak run: the world, the car, the driver, what happened."""

    world: World
    car: SimCar | RecordedCar
    rng: random.Random
    out: TextIO
    checker: InvariantChecker = field(default_factory=lambda: InvariantChecker(Bounds(
        request_timeout_s=REQUEST_TIMEOUT_S)))  # fmt: skip
    hmi: HmiClient | None = None
    steps: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    broker_up: bool = True
    broker_since: float = field(default_factory=time.monotonic)
    mode: CloudMode = field(default_factory=CloudMode)
    mode_since: float = field(default_factory=time.monotonic)
    real_start: float = field(default_factory=time.time)
    dismissed_ids: set[str] = field(default_factory=set)
    closed_keys: dict[str, float] = field(default_factory=dict)
    documents: Counter[str] = field(default_factory=Counter)
    #: Violations found inside a step (checks made while it waited).
    pending: list[Violation] = field(default_factory=list)
    verbose: bool = field(default_factory=lambda: bool(os.environ.get("SOAK_VERBOSE")))

    # -- the daemon --------------------------------------------------------------------

    async def start_daemon(self) -> None:
        """Start ``touchpoint run`` and wait until it serves on the bus."""
        # The client must have seen the last daemon go, or its state is the old one's.
        with contextlib.suppress(TimeoutError):
            await self.until(lambda: self.hmi is None or not self.hmi.state.running, "gone", 5)
        self.world.daemon.start()
        try:
            await self.until(lambda: self.screen().running, "the daemon on the bus")
        except TimeoutError:
            raise RuntimeError(
                f"the daemon did not come up:\n{self.world.daemon.log_tail()}"
            ) from None

    async def until(self, predicate: Callable[[], bool], what: str, within: float = 30) -> None:
        """Wait for ``predicate``, or raise TimeoutError naming ``what``."""
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.05)

    def screen(self) -> ScreenView:
        """What the bus shows now."""
        if self.hmi is None or not self.world.daemon.running:
            return NO_SCREEN
        return ScreenView.of(self.hmi.state)

    # -- observing ------------------------------------------------------------------------

    def truth(self) -> Truth:
        """The ground truth now."""
        moving, moving_for, parked_for = self.car.motion()
        odometer = self.car.odometer_range()
        now = time.monotonic()
        answering: float | None = None
        if self.broker_up and self.mode.answering:
            answering = now - max(self.broker_since, self.mode_since)
        return Truth(
            real_now=time.time(),
            real_start=self.real_start,
            moving=moving,
            moving_for_s=moving_for,
            parked_for_s=parked_for,
            daemon_up_s=self.world.daemon.up_s,
            cloud_answering_s=answering,
            odometer_min_km=None if odometer is None else odometer[0],
            odometer_max_km=None if odometer is None else odometer[1],
            dismissed_ids=frozenset(self.dismissed_ids),
            closed_keys=dict(self.closed_keys),
        )

    def observe(self) -> list[Violation]:
        """Check every invariant now (store first, then the cloud: see the views)."""
        truth = self.truth()
        store = read_store(self.world.store)
        cloud = self.world.ledger.view()
        screen = self.screen()
        return self.checker.check(Observation(truth, store, cloud, screen))

    def card_keys(self) -> dict[str, str]:
        """Open cards' keys by id (the store's cards section)."""
        cards = read_store(self.world.store, integrity=False).section("cards") or {}
        return {str(c["id"]): str(c["key"]) for c in cards.get("cards", [])}

    # -- the report ------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """One line of the run's output."""
        print(text, file=self.out, flush=True)

    def summary(self) -> str:
        """The counts of steps and checks."""
        lines = ["steps:"]
        lines += [f"  {name:<24} {n}" for name, n in sorted(self.counts.items())]
        lines.append("checks:")
        lines += [f"  {self.checker.checked[name]:>8}  {name}" for name in INVARIANTS]
        return "\n".join(lines)


# -- the steps -----------------------------------------------------------------------------

Step = Callable[[Run], Awaitable[str]]


async def _play(run: Run, segment: Segment, *, wait: bool = False) -> str | None:
    """Queue a segment for the car (which plays one at a time), unless it is busy.

    The car's steps do not wait for their segment: the next steps (taps, kills, a
    broker or a clock going wrong) happen while it plays, and the checks run meanwhile.
    On a loaded machine the simulator plays slower than real time; a step that finds
    the car still busy says so and changes nothing.
    """
    car = run.car
    assert isinstance(car, SimCar)
    if car.busy:
        return f"{segment.name}: the car is still busy"
    if wait:
        await asyncio.to_thread(car.play, segment)
    else:
        car.play(segment, wait=False)
    return None


async def drive(run: Run) -> str:
    """A drive: start, drive in town or on the highway for a while, park.

    The step returns as the car sets off: the next steps (taps, kills, a broker or a
    clock going wrong) happen while it drives, and the checks run mid-drive.
    """
    rng = run.rng
    duration = rng.randrange(5_000, 25_000)
    kmh = float(rng.choice((30, 50, 60, 80, 110)))
    actions: list[object] = []
    if rng.random() < 0.4:
        actions.append(OilMonitorDrops(rng.choice((14.0, 4.0, 0.0))))
    phases = drive_phases(
        "drive",
        Phase("drive", duration, tuple(actions), constant(kmh)),  # type: ignore[arg-type]
    )
    # Slow down to a stop before the gear goes to P.
    phases.insert(-2, Phase("slow down", 10_000, (), STANDSTILL))
    busy = await _play(run, Segment("drive", tuple(phases), speed=DRIVE_SPEED))
    return busy or f"drive {duration / 1000:.0f} s at {kmh:.0f} km/h (car time, x{DRIVE_SPEED:.0f})"


async def park(run: Run) -> str:
    """Stand parked, locked, for a while."""
    seconds = run.rng.uniform(1, 6)
    busy = await _play(run, Segment("park", (Phase("parked", int(seconds * 1000),
                                                    (SetIgnition(Ignition.LOCK),)),)))  # fmt: skip
    return busy or f"park {seconds:.0f} s"


async def charge(run: Run) -> str:
    """Plug in, charge a little, unplug."""
    seconds = run.rng.uniform(3, 8)
    busy = await _play(run, Segment("charge", (
        Phase("plug in", 1_000, (SetIgnition(Ignition.OFF), PlugCable(11.0))),
        Phase("charging", int(seconds * 1000)),
        Phase("unplug", 1_000, (UnplugCable(),)),
    )))  # fmt: skip
    return busy or f"charge {seconds:.0f} s"


async def fault(run: Run) -> str:
    """Raise a DTC, or clear one that is active."""
    car = run.car
    assert isinstance(car, SimCar)
    active = car.state.dtcs
    if active and run.rng.random() < 0.5:
        code = run.rng.choice(active)
        action: object = ClearDtc(code)
        what = f"clear {code}"
    else:
        code = run.rng.choice(CODES)
        action, what = RaiseDtc(code), f"raise {code}"
    segment = Segment("fault", (Phase(what, 1_000, (action,)),))  # type: ignore[arg-type]
    return await _play(run, segment) or what


async def bad_frame(run: Run) -> str:
    """An odometer of all ones, the DBC's 'not available' (on a start, as seen in cars)."""
    car = run.car
    assert isinstance(car, SimCar)
    car.inject("ODOMETER", {"ODOMETER": (1 << 24) - 1})
    await asyncio.sleep(0.5)
    return "odometer 0xFFFFFF"


async def gnss(run: Run) -> str:
    """A GNSS time with no fix: wildly wrong (2106), or years off."""
    car = run.car
    assert isinstance(car, SimCar)
    value = run.rng.choice((0xFFFFFFFF, int(time.time()) - 2 * 365 * 86_400, 0))
    for _ in range(run.rng.randrange(1, 20)):
        car.inject("GNSS_TIME", {"GNSS_UTC_TIME": value, "GNSS_FIX": 0})
    await asyncio.sleep(0.5)
    return f"gnss {value} without fix"


async def _card_with(run: Run, action: str) -> tuple[str, str] | None:
    """A card on the bus offering ``action``: (path, id)."""
    if run.hmi is None:
        return None
    cards = [c for c in run.hmi.state.cards.values() if any(a.key == action for a in c.actions)]
    if not cards:
        return None
    card = run.rng.choice(sorted(cards, key=lambda c: c.path))
    return card.path, card.id


async def _call(run: Run, call: Awaitable[None]) -> str:
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await call
    except HmiError as err:
        return f"refused: {err.name.rsplit('.', 1)[-1]}"
    except TimeoutError:
        return "no answer"
    return "ok"


async def tap(run: Run, action: str) -> str:
    """The driver taps ``action`` on a card that offers it."""
    found = await _card_with(run, action)
    if found is None or run.hmi is None:
        return f"{action}: no card offers it"
    path, card_id = found
    key = run.card_keys().get(card_id, "?")
    if action == "dismiss":
        result = await _call(run, run.hmi.dismiss(path))
        if result == "ok":
            run.dismissed_ids.add(card_id)
            run.closed_keys[key] = time.time()
        return f"dismiss {key}: {result}"
    result = await _call(run, run.hmi.invoke_action(path, action))
    if action == "snooze" and result == "ok":
        run.closed_keys[key] = time.time()
    if action == "book" and result == "ok":
        return f"book {key}: ok; " + await _pick_slot(run, path)
    return f"{action} {key}: {result}"


async def _pick_slot(run: Run, path: str) -> str:
    hmi = run.hmi
    assert hmi is not None
    ready = hmi.expect_slots(path)
    try:
        async with asyncio.timeout(run.rng.uniform(1, 10)):
            slots = await hmi.booking_slots(path)
    except HmiError:
        try:
            async with asyncio.timeout(10):
                await ready
            slots = await hmi.booking_slots(path)
        except (HmiError, TimeoutError) as err:
            return f"no slots ({type(err).__name__})"
    except TimeoutError:
        return "no slots (timeout)"
    if not slots:
        return "no slots offered"
    slot = run.rng.choice(slots)
    return f"picks {slot.id}: " + await _call(run, hmi.request_booking(path, slot.id))


async def book(run: Run) -> str:
    """Tap Book and pick a slot."""
    return await tap(run, "book")


async def redeem(run: Run) -> str:
    """Tap Redeem."""
    return await tap(run, "redeem")


async def snooze(run: Run) -> str:
    """Tap Snooze."""
    return await tap(run, "snooze")


async def dismiss(run: Run) -> str:
    """Dismiss a card."""
    return await tap(run, "dismiss")


async def ok(run: Run) -> str:
    """Tap OK (a booking confirmation)."""
    return await tap(run, "ok")


def _offering(run: Run, action: str) -> list[str]:
    """Ids of the cards on the bus that offer ``action``."""
    if run.hmi is None:
        return []
    return [c.id for c in run.hmi.state.cards.values() if any(a.key == action for a in c.actions)]


async def _watch(run: Run, seconds: float, done: Callable[[], bool] = lambda: False) -> bool:
    """Observe every half second for up to ``seconds`` or until ``done``; whether it was."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not run.pending:
        if done():
            return True
        await asyncio.sleep(0.5)
        run.pending += run.observe()
    return done()


async def errand(run: Run) -> str:
    """The driver follows one request to its end on screen.

    Taps Book (and picks a slot) or Redeem on a card that offers it, then watches that
    card until the request ends (answered, declined, or given up on at the timeout) and
    a while after, checking all the time, so the invariants see outcomes on cards, not
    only requests. Without such a card, the car makes one if it is free: a fault a
    workshop should see, or a charge (with a new coupon in the wallet) for a benefit.
    """
    if run.hmi is None or not run.world.daemon.running:
        return "errand: the daemon is down"
    action = run.rng.choice(("book", "redeem"))
    made = ""
    if not run.broker_up and run.rng.random() < 0.7 and await start_broker(run):
        # Mostly the driver runs the errand with coverage: with the broker down the
        # whole time, Book stops at the slots, which no invariant can see end.
        made = "broker up; "
    if not _offering(run, action):
        car = run.car
        if not isinstance(car, SimCar):
            return f"errand {action}: no card offers it"
        await _watch(run, 60, lambda: not car.busy)  # the driver waits for the drive to end
        made += (await _new_fault(run)) if action == "book" else (await _coupon_and_charge(run))
        if "busy" in made:
            return f"errand {action}: no card, and {made}"
        if not await _watch(run, 40, lambda: bool(_offering(run, action))):
            screen = run.screen()
            return (f"errand {action}: {made}; no card offers it (broker "
                    f"{'up' if run.broker_up else 'down'}, {len(screen.cards)} on screen, "
                    f"{screen.waiting} waiting)")  # fmt: skip
        made += "; "
    tapped = await tap(run, action)
    if tapped.endswith("no card offers it"):  # it went before the tap
        return f"errand {made}{tapped}"
    ids = set(_offering(run, action)) | {c.id for c in run.hmi.state.cards.values() if c.pending}

    def settled() -> bool:
        assert run.hmi is not None
        return not any(c.pending for c in run.hmi.state.cards.values() if c.id in ids)

    ended = await _watch(run, REQUEST_TIMEOUT_S + 15, settled)
    await _watch(run, 7)  # past the invariant's grace, with the outcome on screen
    return f"errand {made}{tapped}; {'settled' if ended else 'still pending'}"


async def due(run: Run) -> str:
    """The oil-life monitor drops to due or overdue while the car stands, and it stands on.

    The driver waits for a drive to end first; the checks run all the while, so the
    invariant on a due item's card looks at a car parked long enough to show it.
    """
    car = run.car
    assert isinstance(car, SimCar)
    await _watch(run, 60, lambda: not car.busy)
    percent = run.rng.choice((4.0, 0.0))
    seconds = run.rng.uniform(25, 40)
    # Ignition on, in P: the driver sits in the parked car with the screen on.
    phase = Phase("parked, oil due", int(seconds * 1000),
                  (SetIgnition(Ignition.ON), OilMonitorDrops(percent)))  # fmt: skip
    busy = await _play(run, Segment("park", (phase,)))
    if busy:
        return f"due: {busy}"
    await _watch(run, seconds + 10, lambda: not car.busy)
    return f"oil life {percent:.0f} %, parked {seconds:.0f} s"


async def _new_fault(run: Run) -> str:
    """Raise a code that is not active (one a workshop should see)."""
    car = run.car
    assert isinstance(car, SimCar)
    codes = [c for c in CODES if c not in car.state.dtcs] or list(CODES)
    code = run.rng.choice(codes)
    segment = Segment("fault", (Phase(f"raise {code}", 1_000, (RaiseDtc(code),)),))
    return await _play(run, segment) or f"raise {code}"


async def _coupon_and_charge(run: Run) -> str:
    """A new coupon in the wallet, then a charge (the scene that unlocks it)."""
    run.documents["wallet"] += 1
    version = run.documents["wallet"] + 1
    wallet = demo_wallet(version)
    coupon = wallet.coupons[0].model_copy(update={"id": f"coffee-charge-{version:02d}"})
    body = wallet.model_copy(update={"coupons": (coupon,)}).model_dump(mode="json")
    run.world.cloud.publish_document(VEHICLE_ID, DocumentKind.WALLET, body)
    return f"wallet v{version}, " + await charge(run)


async def locale(run: Run) -> str:
    """Switch the display language."""
    if run.hmi is None or not run.screen().running:
        return "locale: no agent"
    chosen = run.rng.choice(("en", "zh-CN"))
    return f"locale {chosen}: " + await _call(run, run.hmi.set_locale(chosen))


async def broker(run: Run) -> str:
    """Crash the broker, or start it again."""
    if run.broker_up:
        await asyncio.to_thread(run.world.broker.stop, crash=True)
        run.broker_up = False
        return "broker down (crash)"
    if not await start_broker(run):
        return "broker up: its port is taken meanwhile, still down"
    return "broker up"


async def start_broker(run: Run) -> bool:
    """Start the broker again on its ports; False if another process took one meanwhile.

    A port the crashed broker listened on is free for anyone until it is back: on a
    busy machine an outgoing connection may get it as its own. It is tried again at
    the next broker step.
    """
    for _ in range(10):
        try:
            await asyncio.to_thread(run.world.broker.start)
        except BrokerError as err:
            if "already in use" not in str(err):
                raise
            await asyncio.sleep(1.0)
            continue
        run.broker_up, run.broker_since = True, time.monotonic()
        return True
    return False


async def cloud(run: Run) -> str:
    """The cloud becomes normal, slow, declining or silent."""
    name = run.rng.choice(("normal", "normal", "slow", "declining", "silent"))
    sim = run.world.cloud
    sim.answering = name != "silent"
    sim.booking = "decline" if name == "declining" else "confirm"
    sim.reply_delay_s = run.rng.uniform(3, 20) if name == "slow" else 0.0
    if name != run.mode.name:
        run.mode, run.mode_since = CloudMode(name), time.monotonic()
    return f"cloud {name}" + (f" ({sim.reply_delay_s:.0f} s)" if name == "slow" else "")


async def kill(run: Run) -> str:
    """SIGKILL the daemon at a random moment, and start it again (or later)."""
    await asyncio.sleep(run.rng.uniform(0, 2))
    code = run.world.daemon.kill()
    if run.rng.random() < 0.8:
        await run.start_daemon()
        return f"SIGKILL ({code}), restarted"
    return f"SIGKILL ({code}), left down"


async def restart(run: Run) -> str:
    """Start the daemon if it is down (weights keep it mostly up)."""
    if run.world.daemon.running:
        return "daemon already running"
    await run.start_daemon()
    return "daemon started"


async def clock(run: Run) -> str:
    """Jump the daemon's clock forward or back (the machine's clock is untouched)."""
    offset = run.rng.choice((0, 0, 300, -300, 3_600, -3_600, 86_400, -86_400, 2 * 365 * 86_400))
    run.world.daemon.jump_clock(offset)
    return f"daemon clock {offset:+d} s"


async def document(run: Run) -> str:
    """The cloud publishes a new wallet, campaign, service history or plan."""
    kind = run.rng.choice(("wallet", "rules", "history", "plan"))
    run.documents[kind] += 1
    version = run.documents[kind] + 1
    sim = run.world.cloud
    if kind == "wallet":
        wallet = demo_wallet(version)
        coupon = wallet.coupons[0].model_copy(update={"id": f"coffee-charge-{version:02d}"})
        body = wallet.model_copy(update={"coupons": (coupon,)}).model_dump(mode="json")
        sim.publish_document(VEHICLE_ID, DocumentKind.WALLET, body)
    elif kind == "rules":
        body = demo_campaign(version).model_dump(mode="json", by_alias=True)
        sim.publish_document(VEHICLE_ID, DocumentKind.RULES, body)
    elif kind == "history":
        car = run.car
        odometer = car.state.odometer_km if isinstance(car, SimCar) else START_ODOMETER_KM
        plan = default_plan()
        done = ServiceRecord(items=tuple(i.id for i in plan.items), odometer_km=0,
                             source="delivery")  # fmt: skip
        records = [done]
        if run.rng.random() < 0.3:  # a workshop visit: the oil is done
            records.append(ServiceRecord(items=("engine_oil",), odometer_km=round(odometer)))
        history = ServiceHistory(version=version, records=tuple(records))
        sim.publish_document(VEHICLE_ID, DocumentKind.SERVICE_HISTORY,
                             history.model_dump(mode="json"))  # fmt: skip
    else:
        sim.publish_document(VEHICLE_ID, DocumentKind.SERVICE_PLAN,
                             default_plan().model_dump(mode="json", by_alias=True))  # fmt: skip
    return f"document {kind} v{version}"


async def wait(run: Run) -> str:
    """Let time pass (timeouts, retries, acknowledgements), checking as it goes."""
    seconds = run.rng.uniform(0.5, 8)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 0.5))
        run.pending += run.observe()
        if run.pending:
            break
    return f"wait {seconds:.1f} s"


#: Step kinds and their weights.
STEPS: Final[dict[str, tuple[Step, float]]] = {
    "drive": (drive, 4), "park": (park, 3), "charge": (charge, 2), "fault": (fault, 3),
    "bad_frame": (bad_frame, 1), "gnss_no_fix": (gnss, 1), "book": (book, 4),
    "redeem": (redeem, 2), "snooze": (snooze, 2), "dismiss": (dismiss, 3), "ok": (ok, 1),
    "locale": (locale, 1), "broker": (broker, 1.5), "cloud": (cloud, 2), "kill": (kill, 2),
    "restart": (restart, 2), "clock": (clock, 1.5), "document": (document, 1.5),
    "wait": (wait, 6), "errand": (errand, 2), "due": (due, 1),
}  # fmt: skip


async def play_recording(run: Run) -> str:
    """The recording goes on for a while (it loops at its end)."""
    car = run.car
    assert isinstance(car, RecordedCar)
    seconds = run.rng.uniform(2, 12)
    await asyncio.to_thread(car.play, seconds)
    return f"recording {seconds:.0f} s (loop {car.loops})"


#: The car's own steps, replaced by the recording's when a recording is the car.
CAR_STEPS: Final = frozenset(
    {"drive", "park", "charge", "fault", "bad_frame", "gnss_no_fix", "due"}
)
#: The car, by ``--source``.
SOURCES: Final = ("simulator", "simlog", "rav4")


def recording_steps() -> dict[str, tuple[Step, float]]:
    """The soak's steps with a recording as the car."""
    steps = {k: v for k, v in STEPS.items() if k not in CAR_STEPS}
    steps["recording"] = (play_recording, 12)
    return steps


async def soak(
    seconds: float, seed: int, directory: Path, out: TextIO, *,
    fake_clock: bool = True, source: str = "simulator",
) -> int:  # fmt: skip
    """Run the soak for ``seconds``; 0 if every invariant held, 1 at the first violation."""
    rng = random.Random(seed)
    setup = rav4_setup() if source == "rav4" else None
    with running_world(directory, fake_clock=fake_clock, car=setup) as world:
        if source == "simulator":
            initial = VehicleState(
                utc_start_s=int(time.time()), odometer_km=START_ODOMETER_KM, oil_life_pct=14.0,
                soc_pct=60.0, gear=Gear.P,
            )  # fmt: skip
            car = SimCar(world.can.url, initial)
            car.start()
            return await _walk(Run(world, car, rng, out), seconds, STEPS)
        if source == "simlog":
            log = directory / "simulator.log"
            record(kill_loop_drive(2, utc_start_s=int(time.time()), seed=seed), log)
            recorded = RecordedCar(world.can.url, log, reference_decoder())
        else:
            recorded = RecordedCar(world.can.url, RAV4_DIR / "drive_seg40.log", rav4_decoder())
        recorded.start()
        return await _walk(Run(world, recorded, rng, out), seconds, recording_steps())


async def _walk(run: Run, seconds: float, steps: dict[str, tuple[Step, float]]) -> int:
    names = list(steps)
    weights = [steps[n][1] for n in names]
    run.hmi = HmiClient(run.world.bus_address, locale="en")
    run.hmi.start()
    began = time.monotonic()
    status = 0
    try:
        await run.start_daemon()
        run.say(f"soak: the daemon is up; stepping for {seconds:.0f} s")
        while time.monotonic() - began < seconds:
            name = run.rng.choices(names, weights)[0]
            what = await steps[name][0](run)
            run.counts[name] += 1
            elapsed = time.monotonic() - began
            run.steps.append(f"{elapsed:7.1f} s  {name:<12} {what}")
            if run.verbose:
                run.say(run.steps[-1])
            violations, run.pending = run.pending + run.observe(), []
            if violations:
                status = 1
                run.say(f"VIOLATION after step {len(run.steps)} ({name}):")
                for violation in violations:
                    run.say(f"  {violation}")
                run.say("steps that led to it:")
                for line in run.steps:
                    run.say(f"  {line}")
                run.say(f"daemon log (end):\n{run.world.daemon.log_tail(30)}")
                break
            car_error = getattr(run.car, "error", None)
            if car_error is not None:
                raise RuntimeError(f"the car stopped: {car_error}")
    finally:
        with contextlib.suppress(Exception):
            await run.hmi.close()
        stop = getattr(run.car, "stop", None)
        if stop is not None:
            stop()
    run.say(run.summary())
    run.say(f"result: {'FAILED' if status else 'every invariant held'} "
            f"({len(run.steps)} steps in {time.monotonic() - began:.0f} s)")  # fmt: skip
    return status


def main(
    seconds: float, seed: int | None, keep: Path | None = None, *, source: str = "simulator"
) -> int:
    """Print the seed first, run, return the exit status."""
    chosen = seed if seed is not None else random.SystemRandom().randrange(2**32)
    print(f"TOUCHPOINT_SEED={chosen}", flush=True)
    stop_on_sigterm()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if keep is not None:
        return asyncio.run(soak(seconds, chosen, keep, sys.stdout, source=source))
    with tempfile.TemporaryDirectory(prefix="touchpoint-soak-") as directory:
        return asyncio.run(soak(seconds, chosen, Path(directory), sys.stdout, source=source))
