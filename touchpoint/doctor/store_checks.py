"""The store: the file, its integrity and schema, the outbox against its budget, the clock.

Read-only throughout (:mod:`agent.store.readonly`): the doctor never migrates, recovers
or locks the database a running daemon writes.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from agent.errors import StoreError
from agent.settings import StoreSettings, TimeSettings
from agent.store.readonly import (
    OutboxReport,
    human_size,
    is_wal_file,
    last_write,
    open_readonly,
    read_outbox,
    read_section,
    schema_version,
)
from agent.store.schema import SCHEMA_VERSION
from agent.store.store import PAGE_HEADROOM
from touchpoint.doctor.clock_checks import clock_sources_check
from touchpoint.doctor.report import Check, fail, ok, shorten, warn

#: Share of the outbox budget beyond which the doctor warns (eviction is near).
BUDGET_WARNING: Final = 0.9
#: Events older than this still waiting mean the car has not synced for long.
STALE_OUTBOX_S: Final = 7 * 86_400
#: The clock may be this far behind the last trusted time before the doctor says so.
CLOCK_SLACK_S: Final = 60.0

_CORRUPT_FIX: Final = (
    "stop the daemon and copy the file for analysis; at its next start the daemon moves "
    "a corrupt store aside and starts a fresh one (what was in it is not sent)"
)


def check_store(
    settings: StoreSettings, now: float | None = None, time_settings: TimeSettings | None = None
) -> Iterator[Check]:
    """The database file, the outbox and the persisted clock.

    Yields ``store``, then (if the file can be read) ``outbox``, ``clock`` and
    ``clock.sources``.
    """
    stamp = time.time() if now is None else now
    path = settings.path
    if not path.exists():
        yield _missing(path)
        return
    if not path.is_file():
        yield fail("store", f"{path} is not a file", "point [store] path at a file")
        return
    wal = is_wal_file(path)
    if wal is None:
        yield fail("store", f"{path} is not an SQLite database (its header is wrong)", _CORRUPT_FIX)
        return
    try:
        connection = open_readonly(path)
    except StoreError as err:
        yield fail(
            "store", str(err), "check the file's owner and mode (the daemon's user reads it)"
        )
        return
    try:
        yield from _inspect(connection, settings, path, stamp, wal=wal, time_settings=time_settings)
    finally:
        connection.close()


def _missing(path: Path) -> Check:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return fail(
            "store",
            f"no database at {path}, and {parent} is not writable by this user "
            f"(uid {os.getuid()}): the daemon cannot create it if it runs as this user",
            f"create {path.parent} owned by the daemon's user (systemd-tmpfiles does, "
            "with the file in systemd/)",
        )
    return warn(
        "store",
        f"no database at {path} yet",
        "the daemon creates it at its first start (systemctl start touchpoint)",
    )


def _inspect(
    connection: sqlite3.Connection,
    settings: StoreSettings,
    path: Path,
    now: float,
    *,
    wal: bool,
    time_settings: TimeSettings | None = None,
) -> Iterator[Check]:
    try:
        result = [str(r[0]) for r in connection.execute("PRAGMA quick_check").fetchall()]
        version = schema_version(connection)
    except sqlite3.DatabaseError as err:
        yield fail("store", f"{path} cannot be read: {err}", _CORRUPT_FIX)
        return
    if result != ["ok"]:
        yield fail("store", f"{path} is corrupt: {shorten(result)}", _CORRUPT_FIX)
        return
    if version > SCHEMA_VERSION:
        yield fail(
            "store",
            f"{path} has schema version {version}, newer than this touchpoint's "
            f"({SCHEMA_VERSION}): the daemon refuses to touch it",
            "run the touchpoint version that wrote it, or move the file aside",
        )
        return
    try:
        report = read_outbox(connection, dead_letter_limit=3)
    except sqlite3.DatabaseError as err:
        yield fail(
            "store",
            f"{path} is not a touchpoint store: {err}",
            "point [store] path at the daemon's database, or move this file aside",
        )
        return
    yield _file_check(path, settings, version, wal=wal)
    yield _outbox_check(report, settings, now)
    yield _clock_check(connection, now)
    yield clock_sources_check(connection, now, time_settings or TimeSettings())


def _file_check(path: Path, settings: StoreSettings, version: int, *, wal: bool) -> Check:
    size = sum(
        Path(f"{path}{suffix}").stat().st_size
        for suffix in ("", "-wal")
        if Path(f"{path}{suffix}").exists()
    )
    # The daemon sets max_page_count to this multiple of the byte budget (store.py).
    ceiling = PAGE_HEADROOM * settings.max_bytes
    described = (
        f"{path}: intact (quick_check), schema {version}, {human_size(size)} on disk "
        f"(SQLite refuses writes at about {human_size(ceiling)})"
    )
    free = shutil.disk_usage(path.parent).free
    if version < SCHEMA_VERSION:
        return warn(
            "store",
            f"{described}; schema older than this touchpoint's ({SCHEMA_VERSION})",
            "nothing to do: the daemon migrates it at its next start",
        )
    if size > BUDGET_WARNING * ceiling:
        return fail(
            "store",
            f"{described}: nearly full",
            "let cloud sync drain it, or raise [store] max_bytes",
        )
    if free < settings.max_bytes:
        return warn(
            "store",
            f"{described}; only {human_size(free)} free on its file system, less than the outbox "
            f"budget ({human_size(settings.max_bytes)})",
            "free space on that file system, or lower [store] max_bytes",
        )
    if not wal and version > 0:
        return warn(
            "store",
            f"{described}; not in WAL mode",
            "nothing to do: the daemon sets WAL mode when it opens the store",
        )
    return ok("store", described)


def _outbox_check(report: OutboxReport, settings: StoreSettings, now: float) -> Check:
    share = max(report.events / settings.max_events, report.bytes / settings.max_bytes)
    oldest = report.oldest
    described = (
        f"{report.events:,} events waiting ({human_size(report.bytes)}, {share:.0%} of the budget; "
        f"{report.in_flight:,} in flight)"
    )
    if oldest is not None:
        described += f", the oldest from {_days(now - oldest)} ago"
    described += f"; {report.evicted:,} evicted, {report.dead_letter_count:,} dead letters"
    if share >= BUDGET_WARNING:
        return warn(
            "outbox",
            f"{described}: the oldest low-priority events are evicted next",
            "check the cloud checks above; `touchpoint outbox` shows what waits",
        )
    if report.dead_letter_count:
        reasons = shorten(sorted({d.reason for d in report.dead_letters if d.reason}), 2)
        return warn(
            "outbox",
            f"{described} (latest reasons: {reasons or 'none recorded'})",
            "`touchpoint outbox` lists them with their reasons; the broker or the cloud "
            "refused them",
        )
    if oldest is not None and now - oldest > STALE_OUTBOX_S:
        return warn(
            "outbox",
            f"{described}: not synced for days",
            "check the cloud checks above and the network",
        )
    return ok("outbox", described)


def _clock_check(connection: sqlite3.Connection, now: float) -> Check:
    try:
        found = read_section(connection, "clock")
    except ValueError as err:
        return warn(
            "clock",
            f"the persisted clock state is not JSON ({err})",
            "nothing to do: the daemon resets it (the last trusted time is lost)",
        )
    written = last_write(connection)
    last = found[0].get("last_trusted") if found and isinstance(found[0], dict) else None
    if last is not None and (
        isinstance(last, bool) or not isinstance(last, int | float) or not math.isfinite(last)
    ):
        return warn(
            "clock",
            f"the persisted last trusted time is malformed ({last!r})",
            "nothing to do: the daemon resets it",
        )
    behind = max(float(last) if last is not None else -math.inf, written or -math.inf) - now
    if behind > CLOCK_SLACK_S:
        mark = _when(float(last)) if last is not None else "none"
        return warn(
            "clock",
            f"the system clock ({_when(now)}) is {_days(behind)} behind what the store has "
            f"seen (last trusted time {mark}, last write {_when(written)}): it went "
            "backwards; until GNSS or the cloud sets it, time-based reminders wait",
            "set the clock (NTP, GNSS); on a head unit check the RTC's backup battery",
        )
    if last is None:
        return warn(
            "clock",
            "no trusted time recorded yet (neither GNSS nor the cloud has set the clock): "
            "time-based maintenance items wait for one",
            "let the car reach the cloud once, or get a GNSS fix",
        )
    return ok(
        "clock",
        f"last trusted time {_when(float(last))} ({_days(now - float(last))} "
        "ago); the system clock is not behind it",
    )


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(stamp))


def _days(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"
