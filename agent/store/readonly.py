"""The store seen from outside the daemon: read-only, without disturbing it.

For the tools (``touchpoint outbox``, ``touchpoint doctor``) that look at a database a
running daemon may be writing. Nothing here writes, migrates, recovers or locks:

- With the daemon's ``-wal`` and ``-shm`` present (it runs, or it was killed), the file
  is opened ``mode=ro``: a WAL reader never blocks the writer, and sees its last
  commit.
- Without them (the daemon closed the store cleanly, everything is in the main file),
  it is opened ``immutable=1`` as well: a read-only connection would otherwise create
  a ``-wal`` and ``-shm`` it cannot delete, owned by whoever ran the tool (root, say),
  which the daemon's user could then not open.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.errors import StoreError
from agent.store.store import dead_letter_count, evicted_total

#: Byte 18 of an SQLite file header is 2 for a database in WAL mode.
_WAL_HEADER_VERSION: Final = 2
_HEADER_SIZE: Final = 100


@dataclass(frozen=True, slots=True)
class OutboxGroup:
    """Events waiting in the outbox, of one category, priority and state.

    Attributes:
        category: The consent category.
        priority: The upload priority (higher first).
        in_flight: Sent and not yet acknowledged (else pending).
        events: How many.
        bytes: Their size as sent.
        oldest: The time of the oldest (seconds since the epoch, as recorded).
        attempts: The most attempts any of them has had.
    """

    category: str
    priority: int
    in_flight: bool
    events: int
    bytes: int
    oldest: float
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the broker kept refusing, moved out of the outbox."""

    id: str
    type: str
    category: str
    reason: str
    attempts: int
    failed_at: float


@dataclass(frozen=True, slots=True)
class OutboxReport:
    """What waits in the outbox and what was given up on.

    Attributes:
        groups: By priority (highest first), category, then pending before in flight.
        dead_letters: The most recent first (at most the ``limit`` asked for).
        dead_letter_count: All of them.
        evicted: Events evicted to keep within the budget since the file was made.
    """

    groups: tuple[OutboxGroup, ...]
    dead_letters: tuple[DeadLetter, ...]
    dead_letter_count: int
    evicted: int

    @property
    def events(self) -> int:
        """Events waiting, pending and in flight."""
        return sum(g.events for g in self.groups)

    @property
    def bytes(self) -> int:
        """Their bytes."""
        return sum(g.bytes for g in self.groups)

    @property
    def in_flight(self) -> int:
        """Events sent and not yet acknowledged."""
        return sum(g.events for g in self.groups if g.in_flight)

    @property
    def oldest(self) -> float | None:
        """The time of the oldest waiting event."""
        return min((g.oldest for g in self.groups), default=None)

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """For ``--json``: every figure, ages in seconds at ``now``."""
        stamp = time.time() if now is None else now
        oldest = self.oldest
        return {
            "events": self.events,
            "bytes": self.bytes,
            "in_flight": self.in_flight,
            "oldest_age_s": None if oldest is None else round(stamp - oldest, 3),
            "evicted": self.evicted,
            "groups": [
                {
                    "category": g.category,
                    "priority": g.priority,
                    "state": "in_flight" if g.in_flight else "pending",
                    "events": g.events,
                    "bytes": g.bytes,
                    "oldest": g.oldest,
                    "oldest_age_s": round(stamp - g.oldest, 3),
                    "max_attempts": g.attempts,
                }
                for g in self.groups
            ],
            "dead_letter_count": self.dead_letter_count,
            "dead_letters": [
                {
                    "id": d.id,
                    "type": d.type,
                    "category": d.category,
                    "reason": d.reason,
                    "attempts": d.attempts,
                    "failed_at": d.failed_at,
                }
                for d in self.dead_letters
            ],
        }


def is_wal_file(path: Path) -> bool | None:
    """Whether the file's header says WAL mode; ``None`` if it is no SQLite file."""
    try:
        with path.open("rb") as handle:
            header = handle.read(_HEADER_SIZE)
    except OSError:
        return None
    if len(header) < _HEADER_SIZE or not header.startswith(b"SQLite format 3\x00"):
        return None
    return header[18] == _WAL_HEADER_VERSION


def open_readonly(path: str | Path, *, busy_timeout_ms: int = 2000) -> sqlite3.Connection:
    """Open the database at ``path`` for reading only (see the module docstring).

    Raises:
        StoreError: If there is no such file or SQLite cannot open it.
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise StoreError(f"no database at {file}")
    running = Path(f"{file}-wal").exists() and Path(f"{file}-shm").exists()
    uri = file.as_uri() + ("?mode=ro" if running else "?mode=ro&immutable=1")
    try:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open {file}: {err}") from err
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        connection.execute("PRAGMA query_only = 1")
    except sqlite3.Error as err:
        connection.close()
        raise StoreError(f"cannot read {file}: {err}") from err
    return connection


def schema_version(connection: sqlite3.Connection) -> int:
    """``PRAGMA user_version``: the schema the file is at."""
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def read_outbox(connection: sqlite3.Connection, dead_letter_limit: int = 20) -> OutboxReport:
    """The outbox by category, priority and state, and the dead letters.

    Raises:
        sqlite3.DatabaseError: If the file is not a touchpoint store (or is damaged).
    """
    groups = tuple(
        OutboxGroup(str(c), int(p), bool(s), int(n), int(b or 0), float(o), int(a or 0))
        for c, p, s, n, b, o, a in connection.execute(
            "SELECT category, priority, state, COUNT(*), SUM(size), MIN(time), MAX(attempts) "
            "FROM outbox GROUP BY category, priority, state "
            "ORDER BY priority DESC, category, state"
        ).fetchall()
    )
    dead = tuple(
        DeadLetter(str(i), str(t), str(c), str(r or ""), int(a or 0), float(f or 0.0))
        for i, t, c, r, a, f in connection.execute(
            "SELECT id, type, category, reason, attempts, failed_at FROM dead_letter "
            "ORDER BY failed_at DESC LIMIT ?",
            (max(0, dead_letter_limit),),
        ).fetchall()
    )
    return OutboxReport(groups, dead, dead_letter_count(connection), evicted_total(connection))


def read_section(connection: sqlite3.Connection, section: str) -> tuple[Any, float] | None:
    """A persisted state section, decoded from JSON, and when it was written.

    Returns:
        ``None`` if the section was never written.

    Raises:
        ValueError: If it is not JSON.
        sqlite3.DatabaseError: If the file is not a touchpoint store.
    """
    row = connection.execute(
        "SELECT value, updated FROM state WHERE section = ?", (section,)
    ).fetchone()
    if row is None:
        return None
    return json.loads(row[0]), float(row[1] or 0.0)


def last_write(connection: sqlite3.Connection) -> float | None:
    """When the daemon last wrote a state section (its wall clock then)."""
    row = connection.execute("SELECT MAX(updated) FROM state").fetchone()
    return None if row is None or row[0] is None else float(row[0])


def human_size(count: float) -> str:
    """Bytes for people: ``512 B``, ``1.5 KiB``, ``64.0 MiB``."""
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if count >= 1024**power:
            return f"{count / 1024**power:.1f} {unit}"
    return f"{count:.0f} B"
