"""The daemon's long-lived asyncio tasks: supervised, restarted, and watched for life.

Every loop that must run as long as the daemon does (the signal consumer, the store's
committer, the cloud's send, receive and timer loops, the D-Bus connection watch, the
pollers) runs under one :class:`Supervisor`:

- a crash is logged with its cause, counted, told to the daemon (its status, the health
  file ``touchpoint doctor`` reads, an event) and the loop restarted after a back-off
  (1 s, doubling, at most a minute) — a transient fault (a full disk) never stops a loop
  for good;
- a loop beats its heartbeat (:func:`beat`) as it makes progress, and says when it waits
  for work or for the network (``with idle():``); the systemd watchdog is fed only
  while no loop is neither beating nor waiting, so a loop that is stuck (a call that
  never returns) makes systemd restart the daemon, and one that waits for the broker
  does not;
- at shutdown every loop is cancelled and awaited; one that failed before does not stop
  the rest of the shutdown.

Loops call :func:`beat` and :func:`idle` without knowing the supervisor: the current
task's record is found through a context variable, and both do nothing in a task the
supervisor did not start (a test driving a component by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

_log = logging.getLogger(__name__)

#: The first restart waits this long; each further crash doubles it, up to the maximum.
BACKOFF_MIN_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0
#: A loop that ran this long without crashing starts again from the shortest back-off.
STABLE_S: Final = 300.0

Clock = Callable[[], float]


@dataclass
class LoopRecord:
    """What the supervisor knows of one loop (read by the status line and the doctor)."""

    name: str
    restart: bool
    state: str = "running"  # running, idle, backing off, finished, failed, stopped
    last_beat: float = 0.0
    started: float = 0.0
    crashes: int = 0
    last_error: str | None = None
    last_crash: float | None = None
    backoff_s: float = BACKOFF_MIN_S
    _idle_depth: int = field(default=0, repr=False)

    def as_json(self) -> dict[str, object]:
        """For the health file."""
        return {
            "state": self.state,
            "crashes": self.crashes,
            "last_error": self.last_error,
            "last_crash_wall": self.last_crash,
        }


_current: contextvars.ContextVar[LoopRecord | None] = contextvars.ContextVar(
    "touchpoint_loop", default=None
)
#: The clock heartbeats are stamped with (the supervisor's, set when a loop starts).
_clock: contextvars.ContextVar[Clock] = contextvars.ContextVar(
    "touchpoint_loop_clock", default=time.monotonic
)


def beat() -> None:
    """The current supervised loop made progress."""
    record = _current.get()
    if record is not None:
        record.last_beat = _clock.get()()


@contextlib.contextmanager
def idle() -> Iterator[None]:
    """The current supervised loop waits for work or the network: alive, not stuck."""
    record = _current.get()
    if record is None:
        yield
        return
    record._idle_depth += 1  # noqa: SLF001 - the record is this module's
    record.state = "idle"
    try:
        yield
    finally:
        record._idle_depth -= 1  # noqa: SLF001
        if record._idle_depth == 0:  # noqa: SLF001
            record.state = "running"
        record.last_beat = _clock.get()()


class Supervisor:
    """Starts loops, restarts the ones that crash, and knows which are alive.

    Args:
        on_crash: Told of each crash (the loop's record, the error), on the event loop;
            its own failures are logged and ignored.
        monotonic: For heartbeats and back-off.
        wall: For the time of a crash, as the doctor shows it.
    """

    def __init__(
        self,
        on_crash: Callable[[LoopRecord, BaseException], None] | None = None,
        *,
        monotonic: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        #: Told of each crash (settable: an owner may wire it after construction).
        self.on_crash = on_crash
        self._monotonic, self._wall = monotonic, wall
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.loops: dict[str, LoopRecord] = {}

    def start(
        self, name: str, loop: Callable[[], Awaitable[None]], *, restart: bool = True
    ) -> asyncio.Task[None]:
        """Run ``loop()`` as a supervised task; restarted after a crash unless told not.

        A loop that returns has finished (a replay that ended) and is not restarted.
        """
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"a loop named {name!r} is running")
        record = LoopRecord(name, restart)
        self.loops[name] = record
        task = asyncio.create_task(self._guard(record, loop), name=name)
        self._tasks[name] = task
        return task

    async def _guard(self, record: LoopRecord, loop: Callable[[], Awaitable[None]]) -> None:
        _current.set(record)
        _clock.set(self._monotonic)
        while True:
            record.state = "running"
            record.started = record.last_beat = self._monotonic()
            try:
                await loop()
            except asyncio.CancelledError:
                record.state = "stopped"
                raise
            except Exception as err:  # noqa: BLE001 - a crash of any kind is restarted
                if not self._crashed(record, err):
                    return
            else:
                record.state = "finished"
                return
            record.state = "backing off"
            await asyncio.sleep(record.backoff_s)
            record.backoff_s = min(record.backoff_s * 2, BACKOFF_MAX_S)

    def _crashed(self, record: LoopRecord, err: Exception) -> bool:
        """Count and report a crash; whether the loop is to be restarted."""
        now = self._monotonic()
        if now - record.started >= STABLE_S:
            record.backoff_s = BACKOFF_MIN_S
        record.crashes += 1
        record.last_error = f"{type(err).__name__}: {err}"
        record.last_crash = self._wall()
        again = f"restarting in {record.backoff_s:.0f} s" if record.restart else "not restarted"
        _log.error(
            "the %s loop crashed (%d so far): %s; %s",
            record.name,
            record.crashes,
            record.last_error,
            again,
            exc_info=err,
        )
        if self.on_crash is not None:
            try:
                self.on_crash(record, err)
            except Exception:  # noqa: BLE001 - telling of a crash must not cause another
                _log.exception("reporting the crash of %s failed", record.name)
        if not record.restart:
            record.state = "failed"
        return record.restart

    def stalled(self, limit_s: float) -> list[str]:
        """Loops that neither beat within ``limit_s`` nor wait for work: stuck."""
        now = self._monotonic()
        return [
            r.name
            for r in self.loops.values()
            if r.state == "running" and now - r.last_beat > limit_s
        ]

    def troubled(self) -> list[LoopRecord]:
        """Loops that crashed at least once (for the status line)."""
        return [r for r in self.loops.values() if r.crashes]

    async def stop(self, names: Iterable[str] | None = None) -> None:
        """Cancel the loops (``names``, or all) and wait for each; none stops the rest."""
        chosen = list(self._tasks) if names is None else [n for n in names if n in self._tasks]
        tasks = [self._tasks.pop(name) for name in chosen]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001 - shutdown goes on whatever a loop did
                _log.exception("the %s loop failed while stopping", task.get_name())


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel the tasks, then wait for each to finish (its cancellation is not an error).

    ``None`` entries (a task never started) are skipped. A task that failed with
    another exception raises it here, as awaiting it would.
    """
    started = [task for task in tasks if task is not None]
    for task in started:
        task.cancel()
    for task in started:
        with contextlib.suppress(asyncio.CancelledError):
            await task
