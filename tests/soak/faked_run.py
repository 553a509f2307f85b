"""``touchpoint`` as shipped, made to survive libfaketime (``python -m tests.soak.faked_run``).

libfaketime 0.9.10 with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` makes ``clock_nanosleep``
fail with EINVAL, so Python's ``time.sleep`` raises (``select`` timeouts, lock and
event waits and asyncio's sleeps are unaffected). Only the CAN reader thread's short
pause calls it; it gets a ``select``-based sleep of the same length here, on the real
monotonic clock as before. Nothing else differs from ``touchpoint``.
"""

from __future__ import annotations

import select
import sys
import time


def _sleep(seconds: float) -> None:
    """``time.sleep`` by ``select``'s relative timeout."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


def main() -> int:
    """Patch ``time.sleep``, then run the CLI with this process's arguments."""
    time.sleep = _sleep  # type: ignore[assignment]
    from touchpoint.cli import main as touchpoint  # noqa: PLC0415 - after the patch

    return touchpoint(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
