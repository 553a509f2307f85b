"""The daemon: wires the signal pipeline, the agent core, the store and the adapters.

Every input goes to the core on the event loop; its output is committed to SQLite (in a
thread of its own, one transaction per batch of outputs) before any card change reaches
the HMI, so nothing is shown that a crash could forget, and nothing is forgotten that
was shown. Under load, outputs queue up while a commit runs and go in the next one
(group commit).

Its long-lived loops run supervised (:mod:`touchpoint.tasks`): a crash is logged,
counted, recorded as a ``daemon.loop_crashed`` event, written to the health file
``touchpoint doctor`` reads, and the loop restarted after a back-off.

systemd: ``READY=1`` once serving, ``STATUS=`` with what it is doing (and what failed),
``WATCHDOG=1`` only while every loop beats or waits for work, ``STOPPING=1`` on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import signal
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final, TypeVar
from zoneinfo import ZoneInfo

from agent import state_codec
from agent.clock import TimeSource
from agent.consent import Category
from agent.context import AgentConfig
from agent.core import Agent, Output
from agent.errors import StoreError
from agent.events import Event, EventDraft, EventType, JsonValue, Priority
from agent.fault_engine import default_catalogue
from agent.ids import IdFactory
from agent.plan import default_plan
from agent.policy import PolicyConfig
from agent.rule_model import builtin_rules
from agent.sections import VEHICLE_SECTIONS, Section
from agent.store.store import OpenReport, Store, StoreLimits
from can_signals.errors import CanSignalsError, SourceError
from touchpoint.health import HealthFile, cloud_problem_text
from touchpoint.ntp import system_clock_synchronised
from touchpoint.runner import AgentRunner, CardSink, Clock, Step
from touchpoint.sdnotify import Notifier, watchdog_interval
from touchpoint.services import CloudService, HmiService
from touchpoint.settings import DaemonSettings
from touchpoint.tasks import LoopRecord, Supervisor, beat, idle

if TYPE_CHECKING:
    from can_signals.diagnostics import DtcPoller
    from can_signals.pipeline import SignalPipeline
    from can_signals.update import SignalUpdate
    from cloud_sync.sync import CloudSync
    from ui_bridge.bridge import DbusBridge

_log = logging.getLogger(__name__)

#: How often CAN buses that could not be opened are tried again.
CAN_RETRY_S: Final = 5.0
#: How often the heap freed since (a burst of signals, commits, a document) is given
#: back to the system: without it a head unit keeps the high-water mark of every drive.
HEAP_TRIM_S: Final = 10.0
#: How often the kernel is asked whether NTP keeps the system clock synchronised.
NTP_CHECK_S: Final = 60.0
#: A loop that has not made progress for this long stops the watchdog.
STALL_S: Final = 30.0
#: How often a store that cannot be opened (read-only, full, missing) is tried again.
STORE_OPEN_RETRY_S: Final = 10.0
#: How often the health file is written when systemd's watchdog is not asking.
HEALTH_S: Final = 10.0

_T = TypeVar("_T")


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator gives memory back itself
        return None


_MALLOC_TRIM: Final = _find_malloc_trim()


def _trim_heap() -> None:
    """Give the memory glibc holds freed back to the system (about 70 µs)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _release_heap() -> None:
    """Collect garbage, then give the heap that start-up freed back to the system.

    Loading the DBC files and the mapping makes many short-lived objects; glibc keeps
    the freed memory in its arenas. On a head unit that memory is better returned.
    """
    gc.collect()
    _trim_heap()


class Daemon:
    """``touchpoint run``: the agent as a service."""

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        notifier: Notifier | None = None,
        wall: Clock = time.time,
        monotonic: Clock = time.monotonic,
        ntp_synchronised: Callable[[], bool] = system_clock_synchronised,
    ) -> None:
        self.settings = settings
        #: Told of card changes once they are durable (the D-Bus bridge, tools, tests).
        self.sinks: list[CardSink] = []
        #: Called with every batch of signal updates the agent receives (timelines, tools).
        self.signal_taps: list[Callable[[Sequence[SignalUpdate]], None]] = []
        #: Called (on the event loop) with the events of each commit once it is durable.
        self.event_taps: list[Callable[[Sequence[Event]], None]] = []
        self._notifier = notifier or Notifier()
        self._wall, self._monotonic = wall, monotonic
        self._ntp_synchronised = ntp_synchronised
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._runner: AgentRunner | None = None
        self._pipeline: SignalPipeline | None = None
        self.supervisor = Supervisor(self._loop_crashed, monotonic=monotonic, wall=wall)
        self._watchdog_task: asyncio.Task[None] | None = None
        self._health: HealthFile | None = None
        self.boot_id = str(uuid.uuid4())
        self.open_report: OpenReport | None = None
        self.dtc_poller: DtcPoller | None = None
        self.bridge: DbusBridge | None = None
        #: Why the CAN buses are not open (retried in the background), or ``None``.
        self.can_problem: str | None = None
        self.cloud: CloudSync | None = None
        #: Why the cloud link is not running (a key or certificate it cannot use), or None.
        self.cloud_problem: str | None = None
        self.started_at = 0.0
        #: Set when a finite signal source (a replay) has been consumed entirely.
        self.signals_finished = asyncio.Event()

    @property
    def runner(self) -> AgentRunner:
        """The agent and its commit path."""
        if self._runner is None:
            raise RuntimeError("the daemon has not started")
        return self._runner

    @property
    def agent(self) -> Agent:
        """The agent core (only the event loop's thread may use it)."""
        return self.runner.agent

    @property
    def store(self) -> Store:
        """The store (only from the store thread; see :meth:`in_store_thread`)."""
        return self.runner.store

    @property
    def driving(self) -> bool:
        """Whether the car was driving as of the last commit the sinks were told of."""
        return self.runner.driving

    @property
    def commits(self) -> int:
        """Commits so far."""
        return self.runner.commits

    @property
    def pipeline(self) -> SignalPipeline | None:
        """The signal pipeline, if CAN is configured."""
        return self._pipeline

    async def in_store_thread(self, function: Callable[[Store], _T]) -> _T:
        """Run ``function(store)`` in the store's thread (tooling, tests)."""
        return await self.runner.in_store_thread(function)

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, restore the agent, start the sources and loops, notify READY.

        A store that cannot be opened is retried (every :data:`STORE_OPEN_RETRY_S`) until
        it can be, or the task is cancelled.
        """
        self.started_at = self._monotonic()
        loop = asyncio.get_running_loop()
        settings = self.settings
        store, report = await self._open_store()
        self.open_report = report
        sections = await loop.run_in_executor(self._executor, store.load_sections)
        agent = self._build_agent(state_codec.decode(sections))
        self._runner = AgentRunner(
            agent, store, self._executor, wall=self._wall, monotonic=self._monotonic
        )
        self._health = HealthFile.beside(settings.store.path)
        self._runner.sinks, self._runner.event_taps = self.sinks, self.event_taps
        self._first_start(sections, report)
        self._pipeline = self._build_pipeline()
        if self._pipeline is not None:
            try:
                await self._pipeline.start()
            except SourceError as err:
                if settings.can is not None and settings.can.replay is not None:
                    raise  # a log that cannot be read will not appear later
                # An interface not up yet (a late driver, a bus brought up by a unit
                # after ours): cards, D-Bus and the cloud serve on while it is retried.
                self.can_problem = str(err)
                _log.error("cannot open the CAN buses: %s; retrying every %.0f s", err, CAN_RETRY_S)
                self.supervisor.start("can retry", self._open_can_later)
            else:
                self._can_started()
        if settings.dbus is not None:
            from ui_bridge.bridge import DbusBridge  # noqa: PLC0415 - only with [dbus]

            board = HmiService(self.runner, self.wipe, settings.time.zone)
            self.bridge = DbusBridge(
                board, settings.dbus.address, settings.dbus.locale, monotonic=self._monotonic
            )
            self.bridge.supervisor.on_crash = self._loop_crashed
            await self.bridge.start()
            self.sinks.append(self.bridge)
        if settings.cloud is not None:
            await self._start_cloud()
        self.supervisor.start("tick", self._tick)
        if settings.time.trust_ntp:
            self.supervisor.start("ntp", self._ntp)
        self.runner.start(self.supervisor)
        self.submit(self.agent.on_tick(self._wall(), self._monotonic()))
        await self.settle()
        _release_heap()
        self._notifier.ready(self._status())
        interval = watchdog_interval()
        self._watchdog_task = asyncio.create_task(
            self._watchdog(interval or HEALTH_S, feed=interval is not None), name="watchdog"
        )
        _log.info("touchpoint started in %.0f ms", (self._monotonic() - self.started_at) * 1000)

    def _can_started(self) -> None:
        settings, pipeline = self.settings, self._pipeline
        assert pipeline is not None
        self.can_problem = None
        diagnostics = settings.can.diagnostics if settings.can else None
        if diagnostics is not None and settings.can and not settings.can.replay:
            # ISO-TP is a sizeable import: only with [can.diagnostics].
            from can_signals.diagnostics import DtcPoller  # noqa: PLC0415

            self.dtc_poller = DtcPoller(diagnostics, pipeline)
            self.signal_taps.append(self.dtc_poller.observe)
        self.supervisor.start("signals", self._consume_signals, restart=False)

    async def _start_cloud(self) -> None:
        """Start the cloud link; a key or certificate it cannot use stops only the link.

        The cards, D-Bus and the store go on, events keep in the outbox (up to its
        budget), and the status, the log and ``touchpoint doctor`` say what to fix.
        """
        from cloud_sync.errors import SyncError  # noqa: PLC0415 - only with [cloud]
        from cloud_sync.sync import CloudSync  # noqa: PLC0415

        cloud = self.settings.cloud
        assert cloud is not None
        try:
            sync = CloudSync(
                CloudService(self.runner), cloud, self.settings.vehicle.id,
                on_crash=self._loop_crashed,
            )  # fmt: skip
            await sync.start()
        except (SyncError, OSError, ValueError) as err:
            self.cloud_problem = cloud_problem_text(err, cloud)
            _log.error("the cloud link is off: %s", self.cloud_problem)
            return
        self.cloud = sync
        self.event_taps.append(sync.events_committed)

    async def _open_can_later(self) -> None:
        pipeline = self._pipeline
        assert pipeline is not None
        while True:
            with idle():
                await asyncio.sleep(CAN_RETRY_S)
            try:
                await pipeline.start()
            except SourceError as err:
                self.can_problem = str(err)
                _log.debug("the CAN buses still cannot be opened: %s", err)
                continue
            _log.info("the CAN buses are open")
            self._can_started()
            return

    def _build_agent(self, state: object) -> Agent:
        settings = self.settings
        policy = PolicyConfig(
            max_visible=settings.policy.max_visible,
            quiet_hours=settings.policy.quiet_hours,
            zone=ZoneInfo(settings.time.zone),
        )
        config = AgentConfig(
            model=settings.vehicle.model,
            market=settings.vehicle.market,
            vehicle_id=settings.vehicle.id,
            policy=policy,
            request_timeout_s=settings.requests.timeout_s,
        )
        return Agent(
            config,
            boot_id=self.boot_id,
            ids=IdFactory(),
            plan=default_plan(),
            catalogue=default_catalogue(),
            builtin_rules=builtin_rules(),
            state=state,  # type: ignore[arg-type]
        )

    async def _open_store(self) -> tuple[Store, OpenReport]:
        """Open the store, retrying while it cannot be.

        A read-only or full disk may heal (a remount, space freed); exiting would only
        have systemd give up on the agent after its start limit.
        """
        settings, loop = self.settings, asyncio.get_running_loop()
        limits = StoreLimits(settings.store.max_events, settings.store.max_bytes)
        said: str | None = None
        while True:
            try:
                return await loop.run_in_executor(
                    self._executor, Store.open, settings.store.path, limits
                )
            except StoreError as err:
                if str(err) != said:
                    said = str(err)
                    _log.error(
                        "%s; fix: make %s writable by the daemon's user (a read-only or full "
                        "file system?); retrying every %.0f s", err, settings.store.path.parent,
                        STORE_OPEN_RETRY_S,
                    )  # fmt: skip
                self._notifier.status(f"store cannot be opened (retrying): {err}")
            await asyncio.sleep(STORE_OPEN_RETRY_S)

    def _first_start(self, sections: dict[str, str], report: OpenReport) -> None:
        agent, wall, mono = self.agent, self._wall(), self._monotonic()
        out = Output()
        if report.recovered:
            # The driver may have withdrawn a consent the defaults grant: what the store
            # lost is not guessed back. Every category starts withdrawn until the driver
            # confirms it (the reference HMI's consent screen, SetConsent).
            _log.warning("the store was recovered: every consent starts withdrawn until the "
                         "driver confirms it")  # fmt: skip
        elif "consent" not in sections:
            for category, granted in self.settings.consent.defaults.items():
                if category is not Category.SERVICE_REQUESTS:
                    out.extend(
                        agent.set_consent(
                            category, granted=granted, valid_for=None, wall=wall, monotonic=mono
                        )
                    )
        if report.recovered:
            moved = None if report.recovered_from is None else str(report.recovered_from)
            # Sent whatever the consent: it says no personal data, and the operations
            # team must hear that a car lost its state.
            agent.record(
                EventDraft(
                    EventType.STORE_RECOVERED,
                    Category.SERVICE_REQUESTS,
                    {"problem": report.problem, "moved_to": moved, "consent": "withdrawn"},
                    Priority.HIGH,
                ),
                agent.clock.read(wall, mono),
            )
        out.extend(agent.on_tick(wall, mono))
        out.dirty |= set(state_codec.SECTIONS) if not sections else set()
        self.submit(out)

    def _build_pipeline(self) -> SignalPipeline | None:
        can = self.settings.can
        if can is None:
            _log.warning("no [can] settings: running without CAN signals")
            return None
        # python-can and cantools only when there is CAN to read.
        from can_signals.pipeline import SignalPipeline  # noqa: PLC0415
        from can_signals.sources import BusConfig  # noqa: PLC0415

        dbcs = [(d.bus, d.file) for d in can.dbc]
        try:
            if can.replay is not None:
                pipeline = SignalPipeline.from_files(
                    can.mapping,
                    dbcs,
                    vss=can.vss,
                    replay=can.replay,
                    speed=can.replay_speed,
                    capacity=can.queue_capacity,
                )
            else:
                buses = [
                    BusConfig(b.name, b.interface, b.channel, b.options, bcm=b.bcm)
                    for b in can.buses
                ]
                pipeline = SignalPipeline.from_files(
                    can.mapping, dbcs, vss=can.vss, buses=buses, capacity=can.queue_capacity
                )
        except (CanSignalsError, ValueError) as err:
            _log.error("CAN signals unavailable, running without them: %s", err)
            return None
        for warning in pipeline.binding.warnings:
            _log.warning("%s", warning)
        odometer = self.agent.vehicle.odometer_m
        if odometer is not None:
            pipeline.processor.seed_odometer(odometer)
        pipeline.supervisor.on_crash = self._loop_crashed
        return pipeline

    async def stop(self) -> None:
        """Stop the sources and loops, commit what is pending, close the store."""
        self._notifier.stopping()
        if self.dtc_poller is not None:
            await self.dtc_poller.stop()
        if self.cloud is not None:
            await self.cloud.stop()
        if self.bridge is not None:
            await self.bridge.stop()
        if self._pipeline is not None:
            await self._pipeline.stop()
        # The committer is never cancelled: it drains what is pending when closed.
        await self.supervisor.stop([n for n in self.supervisor.loops if n != "commit"])
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog_task
        if self._runner is not None:
            await self._runner.close()
        await self.supervisor.stop()
        self._write_health()
        self._executor.shutdown(wait=True)
        self._notifier.close()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            starting.cancel()  # SIGTERM while the store could not be opened
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        else:
            starting.result()  # a start that failed raises here
        try:
            await stop.wait()
        finally:
            _log.info("stopping")
            await self.stop()

    # -- inputs -------------------------------------------------------------------------

    def submit(self, output: Output) -> asyncio.Future[None]:
        """Queue an output for the next commit; the future resolves once it is durable."""
        return self.runner.submit(output)

    async def apply(self, step: Step) -> Output:
        """Run one input through the agent and wait until its output is durable.

        Errors the step raises reach the caller and change nothing.
        """
        return await self.runner.apply(step)

    async def settle(self) -> None:
        """Wait until everything submitted so far is committed and shown."""
        if self._runner is not None:
            await self._runner.settle()

    async def wipe(self, *, owner_change: bool) -> None:
        """Delete the driver's data in the car (or everything personal, for a new owner).

        The outbox is emptied and the personal state sections deleted (and vacuumed), in
        the store's thread after what is pending has been committed; then the agent's
        reset state is written in full, with the ``privacy.wiped`` event.
        """
        await self.settle()
        output = self.agent.wipe(
            owner_change=owner_change, wall=self._wall(), monotonic=self._monotonic()
        )
        keep = {*VEHICLE_SECTIONS, Section.RULES}
        if not owner_change:
            keep.add(Section.CONSENT)
        await self.in_store_thread(lambda store: store.wipe(keep_sections=keep))
        output.dirty |= set(state_codec.SECTIONS)
        await self.submit(output)

    async def _consume_signals(self) -> None:
        assert self._pipeline is not None
        batches = aiter(self._pipeline.batches(500))
        while True:
            with idle():  # a parked car's bus may be silent for hours
                batch = await anext(batches, None)
            if batch is None:
                break
            beat()
            for tap in self.signal_taps:
                tap(batch)
            self.submit(self.agent.on_signals(batch, self._wall(), self._monotonic()))
        _log.info("the signal source ended")
        self.signals_finished.set()

    async def _ntp(self) -> None:
        """The system clock as a time source, while the kernel says NTP keeps it in step."""
        while True:
            beat()
            if self._ntp_synchronised():
                wall, mono = self._wall(), self._monotonic()
                self.submit(self.agent.on_time(TimeSource.NTP, wall, wall, mono))
            with idle():
                await asyncio.sleep(NTP_CHECK_S)

    async def _tick(self) -> None:
        trimmed = self._monotonic()
        while True:
            beat()
            await asyncio.sleep(self.settings.tick_seconds)
            now = self._monotonic()
            self.submit(self.agent.on_tick(self._wall(), now))
            if now - trimmed >= HEAP_TRIM_S:
                _trim_heap()
                trimmed = now

    # -- health -------------------------------------------------------------------------

    def _supervisors(self) -> list[Supervisor]:
        found = [self.supervisor]
        if self.cloud is not None:
            found.append(self.cloud.supervisor)
        if self.bridge is not None:
            found.append(self.bridge.supervisor)
        if self._pipeline is not None:
            found.append(self._pipeline.supervisor)
        return found

    def _loop_crashed(self, record: LoopRecord, err: BaseException) -> None:
        """A supervised loop crashed (it is restarted): say so everywhere it is looked for."""
        if self._runner is not None:
            agent, wall, mono = self.agent, self._wall(), self._monotonic()
            payload: dict[str, JsonValue] = {
                "loop": record.name,
                "error": f"{type(err).__name__}: {err}"[:500],
                "crashes": record.crashes,
            }
            draft = EventDraft(
                EventType.LOOP_CRASHED, Category.VEHICLE_HEALTH, payload, Priority.NORMAL
            )
            agent.record(draft, agent.clock.read(wall, mono))
            self.submit(agent.on_tick(wall, mono))
        self._notifier.status(self._status())
        self._write_health()

    async def _watchdog(self, interval: float, *, feed: bool) -> None:
        """Feed systemd's watchdog (if it asks) while every loop lives; write the health."""
        while True:
            limit = max(STALL_S, 4 * interval)
            stalled = [n for s in self._supervisors() for n in s.stalled(limit)]
            if stalled:
                _log.error("loops not making progress: %s; withholding the watchdog", stalled)
            elif feed:
                self._notifier.watchdog()
            if feed:
                self._notifier.status(self._status())
            self._write_health(stalled)
            await asyncio.sleep(interval)

    def _write_health(self, stalled: Sequence[str] = ()) -> None:
        if self._health is None:
            return
        loops = {n: r for s in self._supervisors() for n, r in s.loops.items()}
        self._health.write(
            loops, stalled=stalled, status=self._status(), wall=self._wall(),
            problems={"cloud": self.cloud_problem, "can": self._can_trouble(),
                      "store": self._runner.store_problem if self._runner else None},
            counters=self._counters(),
        )  # fmt: skip

    def _counters(self) -> dict[str, Mapping[str, int]]:
        """The parts' figures for the health file (``touchpoint doctor`` reads them)."""
        counters: dict[str, Mapping[str, int]] = {}
        if self.bridge is not None:
            counters["dbus"] = self.bridge.stats()
        can = self.settings.can
        if self._pipeline is not None and can is not None and can.replay is None:
            stats = self._pipeline.stats()
            counters["can"] = {
                "frames": stats.processor.frames,
                "kernel_held_back": stats.kernel_held_back,
                "kernel_operations": stats.kernel_operations,
            }
        return counters

    def _can_trouble(self) -> str | None:
        """What keeps CAN signals out: buses that never opened, or were lost since."""
        pipeline = self._pipeline
        if self.can_problem or pipeline is None or not pipeline.lost:
            return self.can_problem
        return "; ".join(f"CAN bus {name} lost: {why}" for name, why in pipeline.lost.items())

    def _kernel_held_back(self) -> int | None:
        """Frames the kernel's broadcast manager kept from us; ``None`` when it is not asked."""
        pipeline = self._pipeline
        if pipeline is None:
            return None
        stats = pipeline.stats()
        return stats.kernel_held_back if stats.kernel_operations else None

    def _status(self) -> str:
        runner = self._runner
        agent = runner.agent if runner else None
        visible = len(agent.cards.visible) if agent else 0
        outbox = runner.store.outbox_count if runner else 0
        if self._pipeline is None:
            source = "no CAN"
        elif self.can_problem:
            source = "CAN not open (retrying)"
        elif self._pipeline.lost:
            source = f"CAN bus lost (reopening): {', '.join(self._pipeline.lost)}"
        else:
            held_back = self._kernel_held_back()
            source = (
                "CAN ok"
                if held_back is None
                else f"CAN ok ({held_back} frames held back in the kernel)"
            )
        driving = "driving" if agent and agent.vehicle.driving else "parked"
        status = f"{source}, {driving}, {visible} card(s) shown, {outbox} event(s) to send"
        if self.cloud_problem:
            status += "; cloud off (see the log or touchpoint doctor)"
        if runner is not None and runner.store_problem:
            status += f"; store failing: {runner.store_problem}"
        crashed = [r for s in self._supervisors() for r in s.troubled()]
        if crashed:
            status += "; restarted: " + ", ".join(f"{r.name} x{r.crashes}" for r in crashed)
        return status
