"""What the running daemon says of itself: its loops and its parts (the health file)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from touchpoint.doctor.report import Check, fail, ok, warn
from touchpoint.health import FILE_NAME, STALE_AFTER_S, read_health

_LOG_FIX = "read the daemon's log (journalctl -u touchpoint) for the cause"


def check_health(database: Path, now: float | None = None) -> Iterator[Check]:
    """``daemon.loops`` and ``daemon.parts`` from the health file beside the database.

    No file is not a fault (the daemon has not run on this store); an old one says
    the daemon is not running or not writing.
    """
    stamp = time.time() if now is None else now
    path = database.parent / FILE_NAME
    health = read_health(path)
    if health is None:
        if path.exists():
            yield warn("daemon.loops", f"{path} cannot be read", "remove it; it is rewritten")
        else:
            yield ok("daemon.loops", "no health file: the daemon has not run on this store")
        return
    age = stamp - health.written_at
    if age > STALE_AFTER_S:
        yield warn(
            "daemon.loops",
            f"the daemon last wrote its health {age:.0f} s ago: it is not running, or stuck",
            "systemctl status touchpoint; " + _LOG_FIX,
        )
        return
    yield _loops_check(health.loops, health.stalled)
    if not health.problems:
        yield ok("daemon.parts", "every configured part is running")
    for part, problem in sorted(health.problems.items()):
        yield fail(f"daemon.{part}", f"{part} is off: {problem}", _LOG_FIX)


def _loops_check(records: Mapping[str, Mapping[str, Any]], stalled: Sequence[str]) -> Check:
    if stalled:
        return fail(
            "daemon.loops",
            f"not making progress: {', '.join(stalled)} (the watchdog is withheld)",
            "systemd restarts the daemon; if it recurs, " + _LOG_FIX,
        )
    failed = [n for n, r in records.items() if r.get("state") == "failed"]
    if failed:
        return fail("daemon.loops", f"stopped after a crash: {', '.join(failed)}", _LOG_FIX)
    crashed = {n: r for n, r in records.items() if r.get("crashes")}
    if crashed:
        said = "; ".join(
            f"{n} x{r['crashes']} (last: {r.get('last_error')})" for n, r in sorted(crashed.items())
        )
        return warn("daemon.loops", f"restarted after crashing: {said}", _LOG_FIX)
    return ok("daemon.loops", f"{len(records)} loops running, none crashed")
