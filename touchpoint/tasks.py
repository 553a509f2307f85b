"""Stopping asyncio tasks: the one way every component of the daemon does it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


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
