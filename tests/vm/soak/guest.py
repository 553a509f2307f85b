"""What runs inside the VM for ``make vcan-soak`` (``python -m tests.vm.soak.guest``).

The soak's world (:mod:`tests.soak.stack`: a private bus, broker, reference cloud, CAN
server and the daemon as a process) runs in the guest on its loopback, with the kill
loop's car that never stops and driver who taps all the time.

``net RESULT_JSON``: the daemon's link to the broker through netem
(:mod:`tests.vm.soak.netem`): online, a tunnel, recovery, a weak cellular link, a link
flapping every 10 s, and a broker that goes away while the daemon drains its backlog;
then a final drain. The invariant checker runs every 2 s; the result (per phase: the
daemon's CPU from /proc/PID/stat, events; the reconnect gaps from its log; what
reached the cloud) goes to RESULT_JSON.

``power SHARE BOOT``: one boot of the power-loss loop. The store lives on the VM's
virtio-blk disk (/dev/vda, ext4); everything else is throwaway. The store is checked
before anything starts (integrity, what it holds); then the world runs, and an
observer writes each event it sees committed, each card the driver dismissed and each
event the cloud received to files in SHARE, a host directory: the host reads them
after it cut the power (:mod:`tests.vm.soak.powerloss`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

from can_signals.simulator import Gear, VehicleState
from cloud_sync.contract import WireEvent
from tests.invariants.checker import GAVE_UP, REQUESTS, TERMINAL, Violation
from tests.invariants.views import CloudLedger, Recorded, read_store
from tests.soak.car import SimCar
from tests.soak.killloop import _keep_driving, _keep_tapping
from tests.soak.loop import START_ODOMETER_KM, Run, document, start_broker, tap
from tests.soak.stack import World, running_world
from tests.vm.soak.netem import CLEAN, TUNNEL, WEAK_CELLULAR, PortFaults
from ui_bridge.reference.hmi_client import HmiClient

#: The back-off the net soak runs the daemon with (the production ceiling, 120 s, would
#: outlast a shortened tunnel), and a keep-alive that notices a dead link in 15 s.
RECONNECT_MIN_S: Final = 1.0
RECONNECT_MAX_S: Final = 10.0
KEEPALIVE_S: Final = 10
#: A reconnect attempt takes up to paho's connect timeout (5 s) on a lossy link, and
#: everything is about 20x slower under emulation: the bound on the gap between two
#: attempts while the broker cannot be reached.
BACKOFF_BOUND_S: Final = RECONNECT_MAX_S + 10.0
FLAP_S: Final = 10.0
#: How long the daemon may take to serve on the bus (the soak's 30 s is too short under
#: emulation on a busy machine, for a first start that creates the store).
DAEMON_START_S: Final = 180.0
#: Events per uplink message in the net soak: small, so a backlog drains in several
#: messages and the broker can go away in the middle of it.
BATCH_EVENTS: Final = 5
#: Where the power-loss loop mounts the virtual disk.
STORE_MOUNT: Final = Path("/mnt/touchpoint-store")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process (all its threads), from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text.rsplit(")", 1)[1].split()
    # After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _say(text: str) -> None:
    print(f"[guest {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _tune(config: Path) -> None:
    text = config.read_text(encoding="utf-8")
    tuned = text.replace(
        "reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n",
        f"reconnect_min_s = {RECONNECT_MIN_S}\nreconnect_max_s = {RECONNECT_MAX_S}\n"
        f"keepalive_s = {KEEPALIVE_S}\nbatch_events = {BATCH_EVENTS}\n",
    )
    if tuned == text:
        raise RuntimeError("the soak's cloud settings changed: update tests/vm/soak/guest.py")
    config.write_text(tuned, encoding="utf-8")


@dataclass(slots=True)
class Driving:
    """The car, the driver and the checker, over a world whose daemon is up."""

    run: Run
    tasks: list[asyncio.Task[None]]
    violations: list[Violation] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop the car, the driver and the checks."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.run.hmi is not None:
            with contextlib.suppress(Exception):
                await self.run.hmi.close()
        self.run.car.stop()


async def _checking(driving: Driving, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        found = await asyncio.to_thread(driving.run.observe)
        for violation in found:
            _say(f"VIOLATION {violation}")
        driving.violations += found


async def start_driving(
    world: World,
    seed: int,
    out: TextIO,
    check_every_s: float,
    oil_life_pct: float = 25.0,
    tapping: bool = True,
) -> Driving:
    """The car, the driver (``tapping``: the kill loop's), the daemon (on the bus), the checks."""
    initial = VehicleState(utc_start_s=int(time.time()), odometer_km=START_ODOMETER_KM,
                           oil_life_pct=oil_life_pct, soc_pct=60.0, gear=Gear.P)  # fmt: skip
    car = SimCar(world.can.url, initial)
    car.start()
    run = Run(world, car, random.Random(seed), out)
    run.hmi = HmiClient(world.bus_address, locale="en")
    run.hmi.start()
    world.daemon.start()
    try:
        await run.until(lambda: run.screen().running, "the daemon on the bus", DAEMON_START_S)
    except TimeoutError:
        raise RuntimeError(f"the daemon did not come up:\n{world.daemon.log_tail()}") from None
    driving = Driving(run, [])
    driving.tasks = [asyncio.create_task(_keep_driving(run))]
    if tapping:
        driving.tasks.append(asyncio.create_task(_keep_tapping(run)))
    driving.tasks.append(asyncio.create_task(_checking(driving, check_every_s)))
    return driving


# -- the network faults -------------------------------------------------------------------

#: How often the cloud publishes a document (a wallet's coupons become cards to redeem).
DOCUMENT_EVERY_S: Final = 15.0


async def _requesting(run: Run, link: PortFaults) -> None:
    """The cloud publishes documents now and then; the driver books and redeems what shows
    while the link is bad (the cloud declines bookings, so a maintenance card stays).

    So requests are made under faults, and each must end: answered, or visibly
    unanswered after the request timeout.
    """
    published = time.monotonic()
    while True:
        await asyncio.sleep(2.0)
        if time.monotonic() - published > DOCUMENT_EVERY_S:
            published = time.monotonic()
            with contextlib.suppress(Exception):
                await document(run)
        if link.current == CLEAN:
            continue
        for action in ("redeem", "book"):
            with contextlib.suppress(Exception):
                await tap(run, action)


@dataclass(slots=True)
class Phase:
    """One stretch of the net soak, as measured."""

    name: str
    fault: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    committed: int = 0
    at_cloud: int = 0
    started_at: float = 0.0  # wall clock
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """For the result file."""
        return {
            "name": self.name, "fault": self.fault, "wall_s": round(self.wall_s, 1),
            "cpu_s": round(self.cpu_s, 2),
            "cpu_pct": round(100 * self.cpu_s / self.wall_s, 2) if self.wall_s else None,
            "committed": self.committed, "at_cloud": self.at_cloud, "notes": self.notes,
        }  # fmt: skip


class NetSoak:
    """The phases of the net soak over one world and one daemon."""

    def __init__(self, world: World, driving: Driving, link: PortFaults, scale: float) -> None:
        self.world, self.driving, self.link, self.scale = world, driving, link, scale
        self.phases: list[Phase] = []
        process = world.daemon.process
        assert process is not None
        self.pid = process.pid

    def _counts(self) -> tuple[int, int]:
        return len(self.driving.run.checker.committed), len(self.world.ledger.view().events)

    @contextlib.contextmanager
    def phase(self, name: str, fault: str) -> Iterator[Phase]:
        """Measure a phase; the link has ``fault`` for it."""
        self.link.set(fault)
        phase = Phase(name, fault, started_at=time.time())
        _say(f"phase {name}: {fault}")
        cpu0, (committed0, cloud0), t0 = cpu_s(self.pid), self._counts(), time.monotonic()
        try:
            yield phase
        finally:
            phase.wall_s = time.monotonic() - t0
            phase.cpu_s = cpu_s(self.pid) - cpu0
            committed, cloud = self._counts()
            phase.committed, phase.at_cloud = committed - committed0, cloud - cloud0
            self.phases.append(phase)
            _say(f"  {phase.as_json()}")

    def seconds(self, nominal: float) -> float:
        """A phase's length at this run's scale."""
        return max(5.0, nominal * self.scale)

    def outbox(self) -> int:
        """Events waiting in the store."""
        return len(read_store(self.world.store, integrity=False).outbox)

    async def until_drained(self, within_s: float) -> float | None:
        """Seconds until the outbox is empty, None if it was not within ``within_s``."""
        began = time.monotonic()
        while time.monotonic() - began < within_s:
            if not await asyncio.to_thread(self.outbox):
                return time.monotonic() - began
            await asyncio.sleep(1.0)
        return None

    async def run(self) -> None:
        """Every phase, in order."""
        with self.phase("online", CLEAN):
            await asyncio.sleep(self.seconds(30))
        with self.phase("tunnel", TUNNEL) as tunnel:
            await asyncio.sleep(self.seconds(90))
            tunnel.notes.append(f"outbox at the tunnel's end: {self.outbox()}")
        with self.phase("out of the tunnel", CLEAN) as recovery:
            drained = await self.until_drained(120)
            recovery.notes.append(f"outbox empty after {_s(drained)}")
        with self.phase("weak cellular", WEAK_CELLULAR) as weak:
            await asyncio.sleep(self.seconds(60))
            weak.notes.append(f"outbox at the phase's end: {self.outbox()}")
        with self.phase("flapping every 10 s", TUNNEL) as flapping:
            end = time.monotonic() + self.seconds(60)
            flips = 0
            while time.monotonic() < end:
                await asyncio.sleep(FLAP_S)
                flips += 1
                self.link.set(CLEAN if flips % 2 else TUNNEL)
            flapping.notes.append(f"{flips} flips")
        with self.phase("backlog (tunnel)", TUNNEL):
            await asyncio.sleep(self.seconds(60))
        with self.phase("broker away mid-drain", CLEAN) as away:
            away.notes.append(await self._broker_away_mid_drain())
        with self.phase("final drain", CLEAN) as final:
            drained = await self.until_drained(180)
            final.notes.append(f"outbox empty after {_s(drained)}")

    async def _broker_away_mid_drain(self) -> str:
        before = self.outbox()
        _, cloud0 = self._counts()
        began = time.monotonic()
        left = before
        # Mid-drain: the cloud has some of the backlog, the car still holds some.
        for _ in range(1200):
            left = await asyncio.to_thread(self.outbox)
            if self._counts()[1] != cloud0 and left:
                break
            await asyncio.sleep(0.05)
        else:
            return f"no drain in progress seen within 60 s (backlog {before}, left {left})"
        await asyncio.to_thread(self.world.broker.stop, crash=True)
        run = self.driving.run
        run.broker_up = False
        crashed_at = time.monotonic() - began
        await asyncio.sleep(10.0)
        up = await start_broker(run)
        drained = await self.until_drained(120)
        return (
            f"backlog {before}; the broker crashed {crashed_at:.1f} s into the drain with "
            f"{left} left; 10 s down; back: {up}; outbox empty {_s(drained)} later"
        )


def _s(seconds: float | None) -> str:
    return "never (timed out)" if seconds is None else f"{seconds:.1f} s"


def link_log(logs: Path) -> list[tuple[float, str]]:
    """The daemon's cloud-link events from its logs: (wall time, failed|connected|closed)."""
    found: list[tuple[float, str]] = []
    kinds = {
        "cannot reach the MQTT broker": "failed",
        "not using the broker's connection": "failed",
        "connected to the cloud broker": "connected",
        "the MQTT connection closed": "closed",
    }
    for path in sorted(logs.glob("daemon-*.log")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stamp = _LOG_TIME.match(line)
            if stamp is None:
                continue
            for needle, kind in kinds.items():
                if needle in line:
                    at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    found.append((at, kind))
    return found


def backoff_figures(events: list[tuple[float, str]]) -> dict[str, Any]:
    """The gaps between connection attempts while the daemon could not connect."""
    gaps: list[float] = []
    last_failure: float | None = None
    for at, kind in events:
        if kind == "failed":
            if last_failure is not None:
                gaps.append(at - last_failure)
            last_failure = at
        else:
            last_failure = None
    return {
        "failed_attempts": sum(1 for _, kind in events if kind == "failed"),
        "connections": sum(1 for _, kind in events if kind == "connected"),
        "drops": sum(1 for _, kind in events if kind == "closed"),
        "max_gap_s": round(max(gaps), 1) if gaps else None,
        "mean_gap_s": round(sum(gaps) / len(gaps), 1) if gaps else None,
        "bound_s": BACKOFF_BOUND_S,
        "bounded": all(gap <= BACKOFF_BOUND_S for gap in gaps),
    }


def reconnect_delays(events: list[tuple[float, str]], phases: list[Phase]) -> list[str]:
    """How long after each clean phase that follows a fault the daemon was connected again."""
    lines = []
    for before, phase in itertools.pairwise(phases):
        if phase.fault != CLEAN or before.fault == CLEAN:
            continue
        after = [at for at, kind in events if kind == "connected" and at >= phase.started_at]
        if after:
            lines.append(f"{phase.name}: connected {after[0] - phase.started_at:.1f} s in")
    return lines


def request_figures(committed: list[Recorded]) -> dict[str, int]:
    """Requests made, answered, visibly failed (unanswered), still open."""
    requests = {e.request_id or e.id for e in committed if e.type in REQUESTS}
    ended: dict[str, str] = {}
    for event in committed:
        if event.type in TERMINAL:
            ended[str(event.payload.get("request_id") or event.request_id)] = event.type
    done = {r: t for r, t in ended.items() if r in requests}
    failed = sum(1 for t in done.values() if t in GAVE_UP)
    return {"requests": len(requests), "answered": len(done) - failed,
            "unanswered (visible)": failed, "open": len(requests) - len(done)}  # fmt: skip


async def net_soak(result_file: Path, scale: float, seed: int) -> int:
    """The net soak; 0 if every check held."""
    with tempfile.TemporaryDirectory(prefix="vsoak-net-") as tmp:
        directory = Path(tmp)
        with running_world(directory, fake_clock=False) as world:
            _tune(world.daemon.config)
            link = PortFaults(world.broker.port)
            link.install()
            _say("world up; starting the daemon")
            world.cloud.booking = "decline"
            # Oil nearly due: a maintenance card to book soon after the start.
            driving = await start_driving(world, seed, sys.stderr, check_every_s=2.0,
                                          oil_life_pct=4.0, tapping=False)  # fmt: skip
            driving.tasks.append(asyncio.create_task(_requesting(driving.run, link)))
            # The checker's bounds on the daemon's uptime (a due card within 20 s...) are
            # the host's, where it serves within a second or two; under emulation it takes
            # a minute to get there: its life counts from when it serves on the bus.
            world.daemon.started_at = time.monotonic()
            soak = NetSoak(world, driving, link, scale)
            try:
                await soak.run()
            finally:
                await driving.stop()
                world.daemon.stop()
                link.remove()
            run = driving.run
            violations = driving.violations + run.observe()
            committed = list(run.checker.committed.values())
            cloud = world.ledger.view()
            gave_up = {str(e.payload.get("request_id")) for e in committed if e.type in GAVE_UP}
            missing = [
                e.id for e in committed
                if e.id not in cloud.events
                and str(e.payload.get("request_id") or e.request_id) not in gave_up
            ]  # fmt: skip
            events = link_log(directory / "logs")
            # The daemon's and the broker's logs, for the host (the guest's tmp goes).
            shutil.copytree(directory / "logs", result_file.parent / "logs", dirs_exist_ok=True)
            backoff = backoff_figures(events)
            result = {
                "phases": [p.as_json() for p in soak.phases],
                "committed": len(committed),
                "at_cloud": len(cloud.events),
                "missing_at_cloud": missing[:20],
                "missing_count": len(missing),
                "handed_on_more_than_once": sum(1 for n in cloud.handed_on.values() if n > 1),
                "requests": request_figures(committed),
                "backoff": backoff,
                "reconnects": reconnect_delays(events, soak.phases),
                "violations": [str(v) for v in violations],
                "checks": dict(run.checker.checked),
            }
    await asyncio.to_thread(result_file.write_text, json.dumps(result, indent=1), "utf-8")
    once = all(n == 1 for n in cloud.handed_on.values())
    return 0 if not violations and not missing and once and backoff["bounded"] else 1


# -- power loss ---------------------------------------------------------------------------


def _record(event: Recorded, boot: int) -> dict[str, Any]:
    return {
        "id": event.id, "type": event.type, "boot_id": event.boot_id, "seq": event.seq,
        "request_id": event.request_id, "payload": dict(event.payload), "vm_boot": boot,
    }  # fmt: skip


class Appender:
    """JSON lines appended to a host file, each written out before the call returns."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")

    def add(self, record: dict[str, Any]) -> None:
        """Append one record (on a host share: it is on the host when this returns)."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


@dataclass(slots=True)
class DurableLedger(CloudLedger):
    """The cloud's ledger, also written through to the host: the cloud outlives the car.

    Called before the reference cloud acknowledges, so an event the car may forget is
    on the host first.
    """

    sink: Appender | None = None
    boot: int = 0

    def on_event(self, vehicle_id: str, event: WireEvent) -> None:
        """Record it here and on the host."""
        # Named: a slots dataclass is a new class, which the bare super() does not know.
        super(DurableLedger, self).on_event(vehicle_id, event)
        if self.sink is not None:
            self.sink.add(_record(Recorded.from_wire(event), self.boot))


def _mount_store() -> None:
    STORE_MOUNT.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "ext4", "/dev/vda", str(STORE_MOUNT)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"cannot mount the store's disk: {done.stderr.strip()}")


def _recovered(store: Path) -> dict[str, Any]:
    """What the store holds after the power came back, before the daemon touches it."""
    try:
        view = read_store(store)
    except Exception as err:  # noqa: BLE001 - any failure to read is the finding
        return {"integrity": f"unreadable: {err}", "outbox": [], "dead": [], "cards": []}
    cards = view.section("cards") or {}
    return {
        "integrity": view.integrity,
        "outbox": sorted(view.outbox),
        "dead": sorted(view.dead_letters),
        "cards": sorted(str(c.get("id")) for c in cards.get("cards", [])),
        "evicted": view.evicted,
    }


async def _observe_commits(
    driving: Driving, boot: int, committed: Appender, dismissed: Appender
) -> None:
    run = driving.run
    seen: set[str] = set()
    told: set[str] = set()
    while True:
        view = await asyncio.to_thread(read_store, run.world.store, integrity=False)
        for event in view.outbox.values():
            if event.id not in seen:
                seen.add(event.id)
                committed.add(_record(event, boot))
        for card_id in run.dismissed_ids - told:
            told.add(card_id)
            dismissed.add({"card_id": card_id, "vm_boot": boot})
        await asyncio.sleep(0.1)


async def _dismissing(run: Run) -> None:
    """The driver dismisses what shows, often: a dismissal must outlive a power cut."""
    while True:
        await asyncio.sleep(1.0)
        if run.hmi is not None and run.screen().cards:
            with contextlib.suppress(Exception):
                await tap(run, "dismiss")


async def power_boot(share: Path, boot: int, seed: int, final: bool) -> int:
    """One boot of the power-loss loop (the host cuts the power; ``final``: it does not)."""
    _mount_store()
    store = STORE_MOUNT / "touchpoint.db"
    (share / f"boot-{boot:03d}.json").write_text(json.dumps(_recovered(store)), encoding="utf-8")
    previously_dismissed = set()
    dismissed_file = share / "dismissed.jsonl"
    if dismissed_file.exists():
        for line in dismissed_file.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                previously_dismissed.add(str(json.loads(line)["card_id"]))
    ledger = DurableLedger(sink=Appender(share / "cloud.jsonl"), boot=boot)
    with tempfile.TemporaryDirectory(prefix="vsoak-power-") as tmp:
        directory = Path(tmp)
        # Only the store is on the disk: the bus, broker and PKI are new at each boot.
        (directory / "touchpoint.db").symlink_to(store)
        with running_world(directory, fake_clock=False, ledger=ledger) as world:
            driving = await start_driving(world, seed + boot, sys.stderr, check_every_s=1.0)
            driving.run.dismissed_ids |= previously_dismissed
            driving.tasks.insert(2, asyncio.create_task(_dismissing(driving.run)))
            observer = asyncio.create_task(_observe_commits(
                driving, boot, Appender(share / "committed.jsonl"),
                Appender(dismissed_file)))  # fmt: skip
            violations = Appender(share / "violations.jsonl")
            (share / f"up-{boot:03d}").write_text(f"{time.time()}\n", encoding="utf-8")
            _say(f"boot {boot}: the daemon is up")
            reported = 0
            drained: float | None = None
            began = time.monotonic()
            try:
                while True:  # until the power goes (or, at the final boot, the drain ends)
                    await asyncio.sleep(0.5)
                    for violation in driving.violations[reported:]:
                        violations.add({"vm_boot": boot, "violation": str(violation)})
                    reported = len(driving.violations)
                    if final and time.monotonic() - began > 20:
                        for task in driving.tasks[:3]:  # the car and the driver rest
                            task.cancel()
                        if not read_store(store, integrity=False).outbox:
                            drained = time.monotonic() - began
                            break
                        if time.monotonic() - began > 200:
                            break
            finally:
                await asyncio.sleep(1.0)  # the observer sees the last commits
                observer.cancel()
                await driving.stop()
                world.daemon.stop()
            final_view = read_store(store)
            (share / "final.json").write_text(json.dumps({
                "drained_s": drained, "outbox": sorted(final_view.outbox),
                "integrity": final_view.integrity,
                "violations": [str(v) for v in driving.violations],
            }), encoding="utf-8")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point inside the guest."""
    parser = argparse.ArgumentParser(prog="python -m tests.vm.soak.guest")
    sub = parser.add_subparsers(dest="what", required=True)
    net = sub.add_parser("net")
    net.add_argument("result", type=Path)
    net.add_argument("--scale", type=float, default=1.0)
    net.add_argument("--seed", type=int, default=1)
    power = sub.add_parser("power")
    power.add_argument("share", type=Path)
    power.add_argument("boot", type=int)
    power.add_argument("--seed", type=int, default=1)
    power.add_argument("--final", action="store_true")
    args = parser.parse_args(argv)
    if args.what == "net":
        return asyncio.run(net_soak(args.result, args.scale, args.seed))
    return asyncio.run(power_boot(args.share, args.boot, args.seed, args.final))


if __name__ == "__main__":
    sys.exit(main())
