"""Many simulated cars' cloud sync in one process, for ``touchpoint fleet-sim``.

What a broker and a cloud instance take is set by what the cars do on the wire, so
each simulated car runs the real client: :class:`~cloud_sync.sync.CloudSync` with its
own paho thread and MQTT 5 connection (mutual TLS unless told otherwise), its own
SQLite outbox (:class:`~agent.store.store.Store`, WAL with a sync per commit, one file
per car) and its own :class:`~agent.core.Agent`, which stamps the events, holds the
consent the sync client checks before sending, and takes in what comes down (signed
documents, answers). The agents share the immutable plan, DTC catalogue and built-in
rules, so a car costs a few KiB besides its connection and its store.

What is simulated is what the car sees: instead of CAN signals and a driver, events
are drawn from the agent's own event types (:data:`EVENT_MIX`, payloads from the event
catalogue) at random times, a Poisson process of :data:`DEFAULT_RATE` events a second
per car unless told otherwise. Consent to every category is granted and the clock is
trusted from the start, as in a car that has been in use for a while.

The default rate is a busy car, not an average one. The reference drive through the
agent core (``bench/drive.py``: 65 minutes of highway, charging and commuting) records
7 events; with the HMI's impressions and the driver's answers (three or four events
per card on screen) a drive comes to roughly 10-20 events an hour, 0.003-0.006 a
second. 0.1 a second (360 an hour) is a car in a campaign with a card every few
minutes and every one of them reported: some 20-30 times the reference drive, so that
a capacity figure errs on the side of fewer cars per broker. Figures for another rate
scale with the events a second.

Each car commits through the daemon's own commit path
(:class:`~touchpoint.runner.AgentRunner`): what it records while a commit runs goes
into the next one, in one transaction of its own store. The stores are used from their
store thread only; the cars share a few (``store_threads``), as the store allows.

The links are watched by the event loop (epoll), so the cars of a process are bounded
by its open-file limit (a socket and three store descriptors a car), which is raised to
fit, and by one core's worth of CPU: a larger fleet is several processes (``touchpoint
fleet-sim`` starts them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from agent.clock import TimeSource
from agent.consent import CONSENTABLE, ConsentState
from agent.context import AgentConfig
from agent.core import Agent, AgentState
from agent.event_catalogue import CATALOGUE
from agent.events import Event, EventDraft, EventType
from agent.fault_engine import default_catalogue
from agent.ids import IdFactory
from agent.plan import default_plan
from agent.rule_model import builtin_rules
from agent.store.store import Store
from cloud_sync.errors import SyncError
from cloud_sync.settings import CloudSettings
from cloud_sync.sync import CloudSync
from touchpoint.runner import AgentRunner
from touchpoint.services import CloudService
from touchpoint.tasks import cancel_and_wait

_log = logging.getLogger(__name__)

#: Events a second per car by default (see the module's docstring for why this many).
DEFAULT_RATE: Final = 0.1
#: The event types a simulated car records, with their relative frequency: card life
#: (posted, on screen, seen, answered) makes most of it, as on the reference drive with
#: an HMI; drive and charging summaries, reminders, faults and offers the rest.
EVENT_MIX: Final[tuple[tuple[EventType, int], ...]] = (
    (EventType.CARD_CREATED, 14),
    (EventType.CARD_DISPLAYED, 18),
    (EventType.CARD_SHOWN, 18),
    (EventType.CARD_WITHDRAWN, 6),
    (EventType.CARD_ACTION, 5),
    (EventType.CARD_DISMISSED, 8),
    (EventType.CARD_EXPIRED, 4),
    (EventType.CARD_CLOSED, 3),
    (EventType.DRIVE_SUMMARY, 8),
    (EventType.CHARGING_SESSION, 2),
    (EventType.MAINTENANCE_REMINDER, 6),
    (EventType.FAULT_DETECTED, 2),
    (EventType.FAULT_CLEARED, 2),
    (EventType.BENEFIT_OFFERED, 4),
)
#: Descriptors each car holds: its MQTT socket, its store (database, WAL, shared memory).
CAR_DESCRIPTORS: Final = 4
#: Descriptors kept free for whatever else the process opens.
_SPARE: Final = 64
#: How a vehicle id is made from the prefix and the car's number.
ID_FORMAT: Final = "{prefix}-{number:05d}"
#: The prefix of the cars' ids unless told otherwise (``fleet-00000``, ...).
DEFAULT_PREFIX: Final = "fleet"


class FleetError(SyncError):
    """The fleet cannot be set up as asked (too many cars for a process, no store)."""


def vehicle_ids(prefix: str, first: int, count: int) -> list[str]:
    """The ids of ``count`` cars numbered from ``first``."""
    return [ID_FORMAT.format(prefix=prefix, number=n) for n in range(first, first + count)]


def capacity() -> int:
    """How many cars this process can hold, as its open-file limit allows (after raising it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        soft = hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    in_use = sum(1 for _ in Path("/proc/self/fd").iterdir())
    return max(0, (soft - in_use - _SPARE) // CAR_DESCRIPTORS)


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """What fleet to simulate.

    Attributes:
        vehicles: How many cars.
        settings: The ``[cloud]`` settings of a car, by vehicle id.
        store_dir: Where the cars' databases go (one file each).
        rate: Events a second per car (a Poisson process).
        prefix: Vehicle ids are ``{prefix}-{number:05d}``.
        first: The number of the first car (several processes share out a fleet).
        store_threads: Store threads the cars are shared out to.
        connect_rate: Cars started a second (a fleet that connects all at once is a
            storm the broker's accept queue may not take).
        seed: For the random event times and types (``None``: different each run).
    """

    vehicles: int
    settings: Callable[[str], CloudSettings]
    store_dir: Path
    rate: float = DEFAULT_RATE
    prefix: str = "fleet"
    first: int = 0
    store_threads: int = 1
    connect_rate: float = 200.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """The fleet's counters at one moment (sums over the cars).

    Attributes:
        at: ``time.monotonic()`` when taken.
        vehicles: Cars in the fleet.
        online: Cars whose connection is up.
        recorded: Events committed to the cars' outboxes so far.
        acknowledged: Events the broker acknowledged (and the cars deleted).
        backlog: Events in the outboxes (pending or in flight).
        reconnects: Connections beyond each car's first.
        failures: Connection attempts that failed.
        commit_failures: Commits a store refused (their events are lost).
        cpu_s: CPU time of this process (every thread).
    """

    at: float
    vehicles: int
    online: int
    recorded: int
    acknowledged: int
    backlog: int
    reconnects: int
    failures: int
    commit_failures: int
    cpu_s: float


def _backlog_of(store: Store) -> int:
    return store.outbox_count


class SimCar:
    """One simulated car: an agent and its store behind the daemon's own commit path.

    Args:
        vehicle_id: The car's id.
        runner: Its agent, store and group commit (the daemon's :class:`AgentRunner`).
        settings: Its ``[cloud]`` settings.
        on_record: Called with each of its events once committed.
    """

    def __init__(
        self,
        vehicle_id: str,
        runner: AgentRunner,
        settings: CloudSettings,
        on_record: Callable[[str, Event], None] | None,
    ) -> None:
        self.vehicle_id = vehicle_id
        self.runner = runner
        self.recorded = 0
        self._on_record = on_record
        self.cloud = CloudSync(CloudService(runner), settings, vehicle_id)
        runner.event_taps.append(self._committed)
        runner.event_taps.append(self.cloud.events_committed)

    @property
    def store(self) -> Store:
        """The car's store (its store thread only)."""
        return self.runner.store

    def _committed(self, events: Sequence[Event]) -> None:
        self.recorded += len(events)
        if self._on_record is not None:
            for event in events:
                self._on_record(self.vehicle_id, event)

    def record(self, draft: EventDraft) -> None:
        """Record an event as the agent does, and queue it for the next commit."""
        runner = self.runner
        wall, monotonic = runner.wall(), runner.monotonic()
        runner.agent.record(draft, runner.agent.clock.read(wall, monotonic))
        # What record() stamped goes out with the next input's output; a tick is the
        # input that always comes.
        runner.submit(runner.agent.on_tick(wall, monotonic))


class Fleet:
    """The simulated cars of one process, on the running event loop.

    Args:
        options: What fleet.
        on_record: Called with each event once it is committed (tests).
    """

    def __init__(
        self, options: FleetOptions, *, on_record: Callable[[str, Event], None] | None = None
    ) -> None:
        if options.vehicles < 1 or options.store_threads < 1 or options.rate < 0:
            raise FleetError("a fleet needs a car, a store thread and a rate of 0 or more")
        self.options = options
        self.cars: list[SimCar] = []
        self._on_record = on_record
        self._executors: list[ThreadPoolExecutor] = []
        self._rng = random.Random(options.seed)  # noqa: S311 - a simulation, not a secret
        self._drafts, self._weights = _drafts()
        self._generator: asyncio.Task[None] | None = None
        self._started: list[SimCar] = []
        self._cpu_at_start = time.process_time()

    async def start(self) -> None:
        """Open the stores, make the cars and connect them (at ``connect_rate``).

        Raises:
            FleetError: The cars do not fit this process, or a store cannot be opened.
        """
        options = self.options
        room = capacity()
        if options.vehicles > room:
            raise FleetError(
                f"{options.vehicles} cars do not fit one process: its open-file limit "
                f"leaves room for {room} cars; share the fleet out to several processes"
            )
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"store-{i}")
            for i in range(min(options.store_threads, options.vehicles))
        ]
        ids = vehicle_ids(options.prefix, options.first, options.vehicles)
        stores = await self._open_stores(ids)
        plan, catalogue, rules = default_plan(), default_catalogue(), builtin_rules()
        boot_id = str(uuid.uuid4())
        for index, (vehicle_id, store) in enumerate(zip(ids, stores, strict=True)):
            agent = Agent(
                AgentConfig(vehicle_id=vehicle_id), boot_id=boot_id, ids=IdFactory(), plan=plan,
                catalogue=catalogue, builtin_rules=rules, state=_in_use_state(),
            )  # fmt: skip
            # The agent forgets a trusted clock's anchor across a (re)start; the cars
            # have had GNSS time since, so their events' times measure the latency.
            agent.on_time(TimeSource.GNSS, time.time(), time.time(), time.monotonic())
            executor = self._executors[index % len(self._executors)]
            runner = AgentRunner(agent, store, executor, wall=time.time, monotonic=time.monotonic)
            runner.start()
            car = SimCar(vehicle_id, runner, options.settings(vehicle_id), self._on_record)
            self.cars.append(car)
        loop = asyncio.get_running_loop()
        began = loop.time()
        for index, car in enumerate(self.cars):
            await asyncio.sleep(max(0.0, began + index / options.connect_rate - loop.time()))
            await car.cloud.start()
            self._started.append(car)

    async def _open_stores(self, ids: Sequence[str]) -> list[Store]:
        directory = self.options.store_dir
        executors = self._executors
        loop = asyncio.get_running_loop()

        def open_one(path: Path) -> Store:
            return Store.open(path)[0]

        opened = await asyncio.gather(
            *(
                loop.run_in_executor(
                    executors[i % len(executors)], open_one, directory / f"{vehicle_id}.db"
                )
                for i, vehicle_id in enumerate(ids)
            ),
            return_exceptions=True,
        )
        errors = [o for o in opened if isinstance(o, BaseException)]
        if errors:
            for i, store in enumerate(opened):
                if isinstance(store, Store):
                    await loop.run_in_executor(executors[i % len(executors)], store.close)
            raise FleetError(f"cannot open the cars' stores in {directory}: {errors[0]}")
        return [o for o in opened if isinstance(o, Store)]

    def start_recording(self) -> None:
        """Start recording events (a Poisson process per car)."""
        if self._generator is None and self.options.rate > 0:
            self._generator = asyncio.create_task(self._generate(), name="fleet events")

    async def stop_recording(self) -> None:
        """Stop recording events (what was recorded is still sent)."""
        task, self._generator = self._generator, None
        await cancel_and_wait([task])

    async def _generate(self) -> None:
        # The cars' Poisson processes together are one of the summed rate, each event
        # going to a car picked at random: one timer for the fleet instead of one a car.
        loop = asyncio.get_running_loop()
        rate = self.options.rate * len(self.cars)
        due = loop.time() + self._rng.expovariate(rate)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            while due <= now:  # all that fell due while the loop was busy
                car = self._rng.choice(self.cars)
                car.record(self._rng.choices(self._drafts, cum_weights=self._weights)[0])
                due += self._rng.expovariate(rate)

    async def snapshot(self) -> FleetSnapshot:
        """The counters now."""
        backlogs = await asyncio.gather(*(c.runner.in_store_thread(_backlog_of) for c in self.cars))
        cars = self.cars
        return FleetSnapshot(
            at=time.monotonic(),
            vehicles=len(cars),
            online=sum(1 for c in cars if c.cloud.connected),
            recorded=sum(c.recorded for c in cars),
            acknowledged=sum(c.cloud.stats.events_acknowledged for c in cars),
            backlog=sum(backlogs),
            reconnects=sum(max(0, c.cloud.stats.connections - 1) for c in cars),
            failures=sum(c.cloud.link.failures for c in cars),
            commit_failures=sum(c.runner.failures for c in cars),
            cpu_s=time.process_time(),
        )

    async def stop(self) -> None:
        """Stop recording, commit what is pending, disconnect every car, close the stores."""
        await self.stop_recording()
        # Pending commits first (the cars' stop puts what is in flight back in the store).
        for car in self.cars:
            await car.runner.settle()
        await asyncio.gather(*(car.cloud.stop() for car in self._started))
        self._started.clear()
        for car in self.cars:
            await car.runner.close()
        for executor in self._executors:
            executor.shutdown(wait=True)


def _drafts() -> tuple[list[EventDraft], list[int]]:
    """The drafts of :data:`EVENT_MIX` and their cumulative weights."""
    drafts: list[EventDraft] = []
    cumulative: list[int] = []
    total = 0
    for event_type, weight in EVENT_MIX:
        entry = CATALOGUE[event_type]
        payload = MappingProxyType(entry.example_payload())
        drafts.append(EventDraft(event_type, entry.categories[0], payload, entry.priority))
        total += weight
        cumulative.append(total)
    return drafts, cumulative


def _in_use_state() -> AgentState:
    """A car in use: every consent granted (its clock is set once the agent exists)."""
    wall = time.time()
    consent = ConsentState()
    for category in CONSENTABLE:
        consent = consent.set(category, granted=True, now=wall)
    return AgentState(consent=consent)
