"""A process on a wrong clock: libfaketime preloaded into it alone, the monotonic clock real.

The library is preloaded directly rather than through Debian's ``faketime`` wrapper:
the wrapper forks the program and waits for it, so terminating the wrapper left the
program running, orphaned; and its shared semaphores collide between parallel runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def libfaketime() -> str:
    """The library's path (Debian's ``faketime`` package installs it; make test does)."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is missing (Debian's package faketime; make test installs it)")
    return str(found[0])


def faked_environment(at: str) -> dict[str, str]:
    """``os.environ`` for a child whose wall clock starts at ``at`` ("2099-01-01 00:00:00")."""
    return os.environ | {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME": f"@{at}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
