"""The agent's commit path: every input through the core, committed before it is shown.

An :class:`AgentRunner` owns one agent core and its store. Inputs run on the event loop;
their outputs queue up and go to SQLite in the store's thread, one transaction per batch
(group commit: what arrives while a commit runs goes in the next one). Only once a
batch is durable are its events announced (event taps: cloud sync wakes up) and its
card changes shown (card sinks: the D-Bus bridge), so nothing is shown that a crash
could forget, and nothing is forgotten that was shown.

The daemon runs one; fleet-sim runs one per simulated car, sharing store threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from agent import state_codec
from agent.cards import Card, CardChange, ChangeType
from agent.core import Agent, Output
from agent.errors import StoreError
from agent.events import Event
from agent.policy import moving_allowed
from agent.store.store import Store
from touchpoint.tasks import Supervisor, beat, idle

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: After a failed commit, wait this long before retrying.
COMMIT_RETRY_S: Final = 1.0
#: At shutdown, a store that keeps failing is given up on after this many tries.
CLOSING_RETRIES: Final = 3

Clock = Callable[[], float]
Step = Callable[[Agent, float, float], Output]


class CardSink(Protocol):
    """Something that shows cards (the HMI bridge); told of changes after they are durable."""

    async def apply(self, changes: Sequence[CardChange]) -> None:
        """Show the changes."""


@dataclass(slots=True)
class _Pending:
    output: Output
    sections: dict[str, str]
    done: asyncio.Future[None]
    driving: bool  # the vehicle's state when the output was made
    waiting: int  # cards held back by the limit on cards at once, then


class AgentRunner:
    """One agent core, its store, and the group commit between them.

    Args:
        agent: The core (used from the event loop's thread only).
        store: Its store (used from ``executor``'s thread only).
        executor: One thread for the store (several runners may share it).
        wall: The system clock.
        monotonic: The monotonic clock.
    """

    def __init__(
        self,
        agent: Agent,
        store: Store,
        executor: Executor,
        *,
        wall: Clock,
        monotonic: Clock,
    ) -> None:
        self.agent = agent
        self.store = store
        self.executor = executor
        self.wall, self.monotonic = wall, monotonic
        self.sinks: list[CardSink] = []
        #: Called (on the event loop) with the events of each commit once it is durable.
        self.event_taps: list[Callable[[Sequence[Event]], None]] = []
        #: Whether the car was driving as of the last commit the sinks were told of. The
        #: agent's own state runs ahead: driving may have begun in an input whose card
        #: withdrawals are still to be committed.
        self.driving = agent.vehicle.driving
        #: Cards held back by the limit on cards at once, as of that commit.
        self.waiting = agent.cards.waiting
        # A card restored as visible is not put back on the screen before the car is
        # known to be parked: until its first signals the agent counts it as driving
        # (an unknown car is not a parked one), and the screen must agree with the
        # restriction it announces. Such cards come back with the first parked commit.
        visible = agent.cards.visible
        self._shown: dict[str, Card] = {
            c.id: c for c in visible if not self.driving or moving_allowed(c)
        }
        self._withheld: dict[str, Card] = {c.id: c for c in visible if c.id not in self._shown}
        self.commits = 0
        #: Commits the store refused (each retried until it succeeds, or at shutdown
        #: given up on after :data:`CLOSING_RETRIES`).
        self.failures = 0
        #: Why commits fail right now (the disk is full, ...), or ``None``.
        self.store_problem: str | None = None
        self._trouble: asyncio.Future[None] | None = None
        self._pending: list[_Pending] = []
        self._last_done: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        #: Set by a caller while commits fail: try again now, space may be back.
        self._retry_now = asyncio.Event()
        self._closing = False
        self._committer: asyncio.Task[None] | None = None

    @property
    def shown(self) -> list[Card]:
        """The cards on screen as of the last commit the sinks were told of."""
        return list(self._shown.values())

    @property
    def pending(self) -> bool:
        """Whether outputs wait to be committed."""
        return bool(self._pending)

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start committing (on the running event loop), supervised if given one."""
        if supervisor is None:
            self._committer = asyncio.create_task(self._commit_loop(), name="commit")
        else:
            self._committer = supervisor.start("commit", self._commit_loop)

    async def close(self) -> None:
        """Commit what is pending (the committer is never cancelled), then close the store.

        A commit cut short would leave its batch unaccounted for, so the committer drains
        what is pending and returns.
        """
        self._closing = True
        self._wake.set()
        if self._committer is not None:
            await self._committer
            self._committer = None
        await self.in_store_thread(Store.close)

    async def in_store_thread(self, function: Callable[[Store], _T]) -> _T:
        """Run ``function(store)`` in the store's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, function, self.store)

    # -- inputs -------------------------------------------------------------------------

    def submit(self, output: Output) -> asyncio.Future[None]:
        """Queue an output for the next commit; the future resolves once it is durable."""
        sections = state_codec.encode(self.agent, output.dirty) if output.dirty else {}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(
            _Pending(output, sections, done, self.agent.vehicle.driving, output.waiting)
        )
        self._last_done = done
        self._wake.set()
        return done

    async def apply(self, step: Step) -> Output:
        """Run one input through the agent and wait until its output is durable.

        Errors the step raises reach the caller and change nothing.

        Raises:
            StoreError: If the store refuses commits (a full disk): the caller hears at
                once rather than waiting; the output stays queued and is committed, in
                order, when the store takes it again.
        """
        output = step(self.agent, self.wall(), self.monotonic())
        done = self.submit(output)
        if self._trouble is None:
            self._trouble = asyncio.get_running_loop().create_future()
        if self.store_problem is not None:
            # The committer retries now rather than at its next round: the caller hears
            # within one attempt whether the store takes commits again.
            self._retry_now.set()
        await asyncio.wait({done, self._trouble}, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            raise StoreError(
                f"not saved yet ({self.store_problem}); it will be once the store takes it"
            )
        return output

    async def settle(self) -> None:
        """Wait until everything submitted so far is committed and shown."""
        if self._last_done is not None:
            await asyncio.shield(self._last_done)

    # -- commits ------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while not (self._closing and not self._pending):
            beat()
            with idle():
                await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        failures = 0
        while self._pending:
            batch, self._pending = self._pending, []
            if not await self._commit(batch):
                failures += 1
                if self._closing and failures >= CLOSING_RETRIES:
                    _log.critical("giving up on a batch of %d steps at shutdown", len(batch))
                else:
                    self._pending[:0] = batch
                    with idle():  # waiting for space is not being stuck
                        self._retry_now.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._retry_now.wait(), COMMIT_RETRY_S)
                    continue
            await self._publish(batch)

    async def _commit(self, batch: list[_Pending]) -> bool:
        """Make one batch durable; False when the store refused it (to be retried)."""
        events = [e for p in batch for e in p.output.events]
        withdrawn = [r for p in batch for r in p.output.withdrawn]
        sections: dict[str, str] = {}
        for pending in batch:
            sections.update(pending.sections)
        store, now = self.store, self.wall()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self.executor, store.commit, events, sections, now, withdrawn
            )
        except StoreError as err:
            self.failures += 1
            self._failing(str(err))
            _log.error("commit of %d events failed: %s", len(events), err)
            return False
        except Exception:
            # A bug, not the store: the batch stays for the restarted loop, and its
            # callers still wait for it, rather than being forgotten.
            self._pending[:0] = batch
            raise
        self.commits += 1
        if self.store_problem is not None:
            _log.info("the store takes commits again")
            self.store_problem = None
        beat()
        if events:
            for tap in self.event_taps:
                tap(events)
        return True

    async def _publish(self, batch: list[_Pending]) -> None:
        """Tell the sinks what a settled batch changed and release its callers."""
        # Sinks hear of card changes, and of a change of the vehicle state behind them
        # (driving or parked) even without one.
        changes = self._showable([c for p in batch for c in p.output.changes])
        if self._withheld:
            changes = self._release_withheld(changes, driving=batch[-1].driving)
        driving_changed = batch[-1].driving != self.driving
        waiting_changed = batch[-1].waiting != self.waiting
        self.driving, self.waiting = batch[-1].driving, batch[-1].waiting
        self._remember(changes)
        if changes or driving_changed or waiting_changed:
            await self._show(changes)
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)

    def _failing(self, problem: str) -> None:
        """Commits fail: callers waiting in :meth:`apply` hear it now."""
        self.store_problem = problem
        trouble, self._trouble = self._trouble, None
        if trouble is not None and not trouble.done():
            trouble.set_result(None)

    def _showable(self, changes: list[CardChange]) -> list[CardChange]:
        """The changes to show now.

        A parked-only card posted just before the car moved off is durable, but the
        agent already knows the car is driving: its withdrawal is in this batch or the
        next. Such a card is not put on the screen for that moment (the distraction
        rule holds at the screen, not only in the agent); it comes back when parked.
        """
        if not self.agent.vehicle.driving:
            return changes
        return [
            c
            for c in changes
            if c.type is ChangeType.REMOVED or c.card.id in self._shown or moving_allowed(c.card)
        ]

    def _release_withheld(self, changes: list[CardChange], *, driving: bool) -> list[CardChange]:
        """Restored cards held back while the car was not known to be parked.

        A change of the agent's for one of them settles it (it was withdrawn, closed,
        or is shown by that change); once a commit finds the car parked, those left go
        on the screen as they were restored (durable: they came from the store).
        """
        for change in changes:
            self._withheld.pop(change.card.id, None)
        if driving or self.agent.vehicle.driving:
            return changes
        released = [CardChange(ChangeType.ADDED, card) for card in self._withheld.values()]
        self._withheld.clear()
        return changes + released

    def _remember(self, changes: Sequence[CardChange]) -> None:
        for change in changes:
            if change.type is ChangeType.REMOVED:
                self._shown.pop(change.card.id, None)
            else:
                self._shown[change.card.id] = change.card

    async def _show(self, changes: list[CardChange]) -> None:
        for sink in self.sinks:
            try:
                await sink.apply(changes)
            except Exception:  # noqa: BLE001 - one broken sink must not stop the others
                _log.exception("card sink %r failed", sink)
