"""``touchpoint run`` that SIGKILLs itself at a chosen point: ``python -m tests.soak.killpoints``.

A kill from outside lands wherever the daemon happens to be, mostly waiting. The kill
loop (:mod:`tests.soak.killloop`) wants kills where losing the process costs the most,
so this wrapper patches the running daemon's own code (nothing else differs from
``touchpoint run``) to SIGKILL itself on the n-th time it reaches one of:

- ``mid-commit``: inside the store's write transaction, events inserted, no COMMIT yet;
- ``mid-send``: events taken from the outbox (marked in flight), not yet published;
- ``awaiting-ack``: the broker's PUBACK arrived, the cloud's acknowledgement has not;
- ``mid-call``: a D-Bus method was carried out and committed, its reply not yet sent.

Usage: ``python -m tests.soak.killpoints POINT N touchpoint-arguments...``.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Final

POINTS: Final = ("mid-commit", "mid-send", "awaiting-ack", "mid-call")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _on_nth(function: Callable[..., Any], nth: int, *, after: bool = False) -> Callable[..., Any]:
    """``function``, dying before (or after) its ``nth`` call."""
    calls = 0

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth and not after:
            _die()
        result = function(*args, **kwargs)
        if calls == nth and after:
            _die()
        return result

    return wrapper


def _on_nth_async(function: Callable[..., Any], nth: int) -> Callable[..., Any]:
    """The coroutine function ``function``, dying once its ``nth`` call is done.

    Done either way: carried out, or refused (an error reply is a reply not sent too).
    """
    calls = 0

    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        try:
            return await function(*args, **kwargs)
        finally:
            if calls == nth:
                _die()

    return wrapper


def arm(point: str, nth: int) -> None:
    """Patch the daemon's code to die at ``point`` the ``nth`` time it gets there."""
    from agent.store.store import Store  # noqa: PLC0415 - patched before the daemon runs
    from cloud_sync.sync import CloudSync  # noqa: PLC0415
    from ui_bridge.bridge import DbusBridge  # noqa: PLC0415

    if point == "mid-commit":
        # Called inside the open transaction, after the inserts, before COMMIT.
        Store._evict_to_budget = _on_nth(Store._evict_to_budget, nth)  # type: ignore[method-assign]
    elif point == "mid-send":
        # Called once the rows are taken (in flight), before anything is published.
        CloudSync._messages = _on_nth(CloudSync._messages, nth)  # type: ignore[method-assign]
    elif point == "awaiting-ack":
        CloudSync.on_published = _on_nth(CloudSync.on_published, nth)  # type: ignore[method-assign]
    elif point == "mid-call":
        DbusBridge._run = _on_nth_async(DbusBridge._run, nth)  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {point!r}; one of {', '.join(POINTS)}")


def main() -> int:
    """Arm the kill point, then run the CLI with the remaining arguments."""
    point, nth, *rest = sys.argv[1:]
    arm(point, int(nth))
    from tests.soak.faked_run import main as run  # noqa: PLC0415 - after arming

    sys.argv = [sys.argv[0], *rest]
    return run()


if __name__ == "__main__":
    sys.exit(main())
