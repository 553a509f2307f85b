"""The SQLite store: the outbox and the agent's persistent state, durable per batch.

- WAL mode, ``synchronous=FULL``: a committed batch survives a power loss.
- One transaction per batch (group commit): the events a batch of inputs produced and
  the state sections it changed are written together, so after a crash the state and
  the outbox always agree (no event lost, none produced twice).
- A size budget (rows and bytes, plus ``max_page_count`` as the last line): when full,
  the lowest-priority, oldest events are evicted and counted; requests the driver made
  (``request.*``) are never evicted.
- ``quick_check`` at start: a corrupt database is moved aside with its ``-wal`` and
  ``-shm``, reported, and a fresh one started.

The hot path uses the stdlib ``sqlite3`` with constant SQL. A store is used from one
thread at a time (the daemon gives it a thread of its own, so fsyncs never block the
event loop).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, Final, ParamSpec, TypeVar

from agent.errors import StoreError
from agent.events import MAX_EPOCH_S, TYPE_MAX_LENGTH, TYPE_PATTERN, Event, OutboxRow
from agent.store.schema import migrate
from touchpoint.ratelimit import RateLimitedLog

_log = logging.getLogger(__name__)
_TYPE: Final = re.compile(TYPE_PATTERN)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _store_errors(
    method: Callable[Concatenate[Store, _P], _R],
) -> Callable[Concatenate[Store, _P], _R]:
    """Raise :class:`StoreError`, never a raw ``sqlite3`` error (a full disk, I/O errors)."""

    @functools.wraps(method)
    def translated(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as err:
            raise StoreError(f"{method.__name__}: {err}") from err

    return translated


#: Bytes an event takes on the wire besides its payload (ids, type, times, category).
EVENT_OVERHEAD: Final = 200
#: SQLite's page cache, in KiB.
CACHE_KIB: Final = 512
#: The database may grow to this multiple of the byte budget before SQLite refuses.
PAGE_HEADROOM: Final = 4

_INSERT: Final = (
    "INSERT OR IGNORE INTO outbox (id, type, category, priority, time, time_trusted, "
    "boot_id, seq, expires, request_id, payload, size, evictable, state, attempts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)"
)
_EVICT: Final = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE evictable = 1 AND state = 0 "
    "ORDER BY priority ASC, rowid ASC LIMIT ?) RETURNING size"
)
#: Evicts, in the same order, the fewest rows that free at least ``?`` bytes.
_EVICT_BYTES: Final = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM (SELECT id, size, SUM(size) OVER "
    "(ORDER BY priority ASC, rowid ASC) AS running FROM outbox WHERE evictable = 1 AND "
    "state = 0) WHERE running - size < ?) RETURNING size"
)
_UPSERT_STATE: Final = (
    "INSERT INTO state (section, value, updated) VALUES (?, ?, ?) "
    "ON CONFLICT(section) DO UPDATE SET value = excluded.value, updated = excluded.updated"
)


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """The outbox budget: rows and bytes (evict beyond either)."""

    max_events: int = 100_000
    max_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class OpenReport:
    """What happened when the store opened.

    Attributes:
        path: The database file.
        recovered_from: Where a corrupt database was moved, if one was.
        problem: What was wrong with it (also for an empty file, which is not moved).
        schema_from: The schema version found (0 for a new file).
    """

    path: Path
    recovered_from: Path | None
    problem: str | None
    schema_from: int

    @property
    def recovered(self) -> bool:
        """The store lost what it held: nothing in it can vouch for the driver's choices."""
        return self.problem is not None


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What a commit did."""

    inserted: int
    evicted: int


class Store:
    """The SQLite store. Create it with :meth:`open`."""

    def __init__(self, connection: sqlite3.Connection, path: Path, limits: StoreLimits) -> None:
        self._db = connection
        self.path = path
        self.limits = limits
        # Once at its budget the outbox evicts on every commit: say so once a minute.
        self._evictions_log = RateLimitedLog(_log)
        self._count, self._bytes = self._totals()
        #: Rows found corrupt while assembling batches (moved to the dead letters).
        self.corrupt_rows = 0

    @classmethod
    def open(cls, path: str | Path, limits: StoreLimits | None = None) -> tuple[Store, OpenReport]:
        """Open (creating, migrating or recovering) the database at ``path``.

        Raises:
            StoreError: If the directory is not writable or a fresh database cannot be made.
        """
        limits = limits or StoreLimits()
        path = Path(path)
        try:
            # The driver's data: only the daemon's user reads it, whatever the umask
            # (the unit sets UMask=0077; a developer's shell does not).
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                created = True
            else:
                created = False
                _keep_private(path)
        except FileExistsError:
            created = False
        except OSError as err:
            raise StoreError(f"cannot create the store at {path}: {err}") from err
        recovered: Path | None = None
        problem: str | None = None
        connection: sqlite3.Connection | None = None
        # SQLite takes an empty file for a new database; to us it is a store that lost
        # everything (a crash while it was truncated, a tool that emptied it).
        empty = not created and _is_empty_file(path)
        try:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            _configure(connection, path, limits)
            problem = _check(connection)
        except sqlite3.DatabaseError as err:
            problem = f"cannot open: {err}"
        if problem is None and empty:
            problem = "the database file was empty"
            _log.error("store %s was an empty file: starting fresh, as after a recovery", path)
        elif problem is not None:
            # Moved while still open, then closed: closing first lets SQLite checkpoint
            # into the damaged file and delete its -wal, the evidence to keep; and a
            # handle left open would later delete the fresh store's -wal by name.
            recovered = _move_aside(path)
            if connection is not None:
                connection.close()
            _log.error(
                "store %s is corrupt (%s); moved to %s, starting fresh", path, problem, recovered
            )
            try:
                connection = _connect(path, limits)
            except sqlite3.DatabaseError as err:
                raise StoreError(f"cannot create a fresh store at {path}: {err}") from err
        assert connection is not None
        try:
            schema_from = migrate(connection)
        except sqlite3.DatabaseError as err:
            connection.close()
            raise StoreError(f"cannot migrate the store {path}: {err}") from err
        store = cls(connection, path, limits)
        store._release_in_flight()
        return store, OpenReport(path, recovered, problem, schema_from)

    def close(self) -> None:
        """Checkpoint and close."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError as err:
            _log.warning("checkpoint on close failed: %s", err)
        self._db.close()

    # -- the hot path -------------------------------------------------------------------

    @_store_errors
    def commit(
        self,
        events: Sequence[Event],
        sections: Mapping[str, str],
        now: float | None = None,
        withdrawn: Sequence[str] = (),
    ) -> CommitResult:
        """Write a batch of events and state sections in one durable transaction.

        ``withdrawn``: request ids whose rows leave the outbox in the same transaction,
        if they are still unsent (a request its flow gave up on).

        When the budget is exceeded, the lowest-priority oldest events are evicted in the
        same transaction. When the disk (or ``max_page_count``) is full, more is evicted
        and the commit retried once.

        Raises:
            StoreError: If the batch cannot be written even after eviction.
        """
        rows = [_row(e) for e in events]
        stamp = time.time() if now is None else now
        try:
            return self._commit(rows, sections, stamp, extra_evict=0, withdrawn=withdrawn)
        except sqlite3.OperationalError as err:
            if "full" not in str(err).lower():
                raise StoreError(f"commit failed: {err}") from err
            _log.warning("store full (%s): evicting a tenth of the outbox and retrying", err)
            try:
                return self._commit(
                    rows,
                    sections,
                    stamp,
                    extra_evict=max(1, self._count // 10),
                    withdrawn=withdrawn,
                )
            except sqlite3.OperationalError as again:
                raise StoreError(f"store full even after eviction: {again}") from again

    def _commit(
        self,
        rows: list[tuple[object, ...]],
        sections: Mapping[str, str],
        stamp: float,
        *,
        extra_evict: int,
        withdrawn: Sequence[str] = (),
    ) -> CommitResult:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            evicted_rows, evicted_bytes = self._evict(extra_evict) if extra_evict else (0, 0)
            taken = self._withdraw(withdrawn) if withdrawn else []
            before = db.total_changes
            db.executemany(_INSERT, rows)
            inserted = db.total_changes - before
            if inserted == len(rows):
                added = sum(int(r[11]) for r in rows)  # type: ignore[call-overload]
                count = self._count + inserted - evicted_rows - len(taken)
                size = self._bytes + added - evicted_bytes - sum(taken)
            else:  # some ids were already there (a replayed batch): count afresh
                count, size = self._totals()
            n, b = self._evict_to_budget(count, size)
            evicted_rows, count, size = evicted_rows + n, count - n, size - b
            if sections:
                db.executemany(_UPSERT_STATE, [(k, v, stamp) for k, v in sections.items()])
            if evicted_rows:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('evicted', ?) ON CONFLICT(key) "
                    "DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
                    (evicted_rows,),
                )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._count, self._bytes = count, size
        if evicted_rows:
            self._evictions_log.warning(
                "evicted", "outbox full: evicted %d low-priority events", evicted_rows
            )
        return CommitResult(inserted, evicted_rows)

    def _withdraw(self, request_ids: Sequence[str]) -> list[int]:
        """Delete unsent rows of these requests (inside the open transaction); their sizes."""
        sizes: list[int] = []
        for request_id in request_ids:
            sizes += [
                int(r[0])
                for r in self._db.execute(
                    "DELETE FROM outbox WHERE request_id = ? AND state = 0 RETURNING size",
                    (request_id,),
                ).fetchall()
            ]
        return sizes

    def _totals(self) -> tuple[int, int]:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
        ).fetchone()
        return int(count), int(size)

    def _evict_to_budget(self, count: int, size: int) -> tuple[int, int]:
        limits = self.limits
        evicted, freed = 0, 0
        while count - evicted > limits.max_events or size - freed > limits.max_bytes:
            over_rows = count - evicted - limits.max_events
            if over_rows > 0:
                n, b = self._evict(over_rows)
            else:
                # By the bytes actually needed: guessing a row count from an average
                # size evicted every evictable event when events were large.
                n, b = self._evict_bytes(size - freed - limits.max_bytes)
            if n == 0:
                break  # only requests left: they stay, whatever the budget says
            evicted, freed = evicted + n, freed + b
        return evicted, freed

    def _evict(self, limit: int) -> tuple[int, int]:
        sizes = [int(r[0]) for r in self._db.execute(_EVICT, (limit,)).fetchall()]
        return len(sizes), sum(sizes)

    def _evict_bytes(self, need: int) -> tuple[int, int]:
        sizes = [int(r[0]) for r in self._db.execute(_EVICT_BYTES, (need,)).fetchall()]
        return len(sizes), sum(sizes)

    @_store_errors
    def load_sections(self) -> dict[str, str]:
        """Every persisted state section."""
        return dict(self._db.execute("SELECT section, value FROM state").fetchall())

    # -- the outbox, for cloud sync -----------------------------------------------------

    @_store_errors
    def pending(
        self, limit: int = 500, max_bytes: int = 256 * 1024, now: float | None = None
    ) -> list[OutboxRow]:
        """Events to send next: highest priority first, then oldest; expired ones are dropped."""
        stamp = time.time() if now is None else now
        self._drop_expired(stamp)
        rows = self._db.execute(
            "SELECT id, type, category, priority, time, time_trusted, boot_id, seq, request_id, "
            "payload, size, attempts, expires FROM outbox WHERE state = 0 "
            "ORDER BY priority DESC, rowid ASC LIMIT ?",
            (limit,),
        ).fetchall()
        batch: list[OutboxRow] = []
        total = 0
        corrupt: list[tuple[str, str]] = []
        for row in rows:
            problem = _row_problem(row)
            if problem is not None:
                corrupt.append((str(row[0]), problem))
                continue
            if batch and total + int(row[10]) > max_bytes:
                break
            total += int(row[10])
            batch.append(
                OutboxRow(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    bool(row[5]),
                    row[6],
                    row[7],
                    row[8],
                    row[9],
                    row[10],
                    row[11],
                    row[12],
                )
            )
        for event_id, problem in corrupt:
            # One rotten row must not take its batch with it: the cloud would refuse
            # the whole message, and the car delete what it acknowledged.
            _log.error("outbox row %r is corrupt (%s): now a dead letter", event_id, problem)
            self.dead_letter(event_id, f"corrupt row: {problem}", stamp)
        self.corrupt_rows += len(corrupt)
        return batch

    @_store_errors
    def take(
        self,
        limit: int,
        max_bytes: int,
        allowed: Collection[str],
        now: float | None = None,
    ) -> tuple[list[OutboxRow], int]:
        """The next batch to send, marked in flight, in one transaction (one sync).

        Rows whose category is not in ``allowed`` (consent withdrawn since they were
        recorded) are deleted instead of sent; their number is returned with the batch.
        """
        withheld = 0
        while True:
            rows = self.pending(limit, max_bytes, now)
            keep = [r for r in rows if r.category in allowed]
            gone = [r.id for r in rows if r.category not in allowed]
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                freed = self._delete(gone)
                db.executemany(
                    "UPDATE outbox SET state = 1, attempts = attempts + 1 WHERE id = ?",
                    [(r.id,) for r in keep],
                )
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            self._forget(freed)
            withheld += len(freed)
            if keep or not rows:
                return keep, withheld

    def _drop_expired(self, now: float) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            gone = db.execute(
                "DELETE FROM outbox WHERE expires IS NOT NULL AND expires < ? AND +state = 0 "
                "RETURNING size",
                (now,),
            ).fetchall()
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._forget([int(r[0]) for r in gone])

    @_store_errors
    def acknowledge(self, ids: Iterable[str]) -> None:
        """Events the cloud acknowledged: they leave the outbox."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            sizes = self._delete(ids)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._forget(sizes)

    def _delete(self, ids: Iterable[str]) -> list[int]:
        """Delete outbox rows inside the open transaction; the sizes of those that were there."""
        rows = [
            self._db.execute("DELETE FROM outbox WHERE id = ? RETURNING size", (i,)).fetchone()
            for i in ids
        ]
        return [int(row[0]) for row in rows if row is not None]

    def _forget(self, sizes: Sequence[int]) -> None:
        """Count deleted rows out, once their transaction has committed."""
        self._count -= len(sizes)
        self._bytes -= sum(sizes)

    @_store_errors
    def release(self, ids: Iterable[str], error: str | None = None, *, count: bool = True) -> None:
        """Events that were not delivered go back to pending (for a retry).

        ``count=False``: the send did not count as an attempt (the connection went, the
        broker did not refuse), so it does not bring the event closer to dead letters.
        """
        sql = (
            "UPDATE outbox SET state = 0, last_error = ? WHERE id = ?"
            if count
            else "UPDATE outbox SET state = 0, last_error = ?, "
            "attempts = MAX(attempts - 1, 0) WHERE id = ?"
        )
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(sql, [(error, i) for i in ids])
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _release_in_flight(self) -> None:
        # After a restart nothing is in flight any more: those events are sent again.
        self._db.execute("UPDATE outbox SET state = 0 WHERE state = 1")

    @_store_errors
    def dead_letter(self, event_id: str, reason: str, now: float | None = None) -> None:
        """Move an event that keeps failing to the dead-letter table, with the reason."""
        stamp = time.time() if now is None else now
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "DELETE FROM outbox WHERE id = ? "
                "RETURNING id, type, category, payload, attempts, size",
                (event_id,),
            ).fetchone()
            if row is not None:
                db.execute(
                    "INSERT OR REPLACE INTO dead_letter (id, type, category, payload, reason, "
                    "attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row[0], row[1], row[2], row[3], reason, row[4], stamp),
                )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._forget([int(row[5])] if row is not None else [])

    # -- tooling ------------------------------------------------------------------------

    @property
    def outbox_count(self) -> int:
        """Events in the outbox."""
        return self._count

    @property
    def outbox_bytes(self) -> int:
        """Bytes of events in the outbox."""
        return self._bytes

    @_store_errors
    def dead_letter_count(self) -> int:
        """Events moved to the dead-letter table (refused for good by the cloud)."""
        return dead_letter_count(self._db)

    @_store_errors
    def evicted_total(self) -> int:
        """Events evicted since the database was created."""
        return evicted_total(self._db)

    @_store_errors
    def integrity_check(self) -> str:
        """``ok``, or what ``PRAGMA integrity_check`` found."""
        rows = self._db.execute("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)

    @_store_errors
    def wipe(self, *, keep_sections: Iterable[str] = ()) -> None:
        """Delete the outbox, dead letters and every state section not in ``keep_sections``."""
        keep = list(keep_sections)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM outbox")
            db.execute("DELETE FROM dead_letter")
            marks = ",".join("?" * len(keep)) or "''"
            db.execute(f"DELETE FROM state WHERE section NOT IN ({marks})", keep)  # noqa: S608 - placeholders only
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._count = self._bytes = 0
        # Deleted rows stay in free pages until vacuumed, and in the WAL until it is
        # checkpointed: personal data must really go.
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _row_problem(row: Sequence[object]) -> str | None:
    """What is wrong with an outbox row as read back (``None``: nothing).

    ``quick_check`` vouches for the file's structure, not for what a rotted page turned
    a payload into: every row is checked as its batch is assembled.
    """
    event_id, kind, category, _, stamp, _, boot_id, seq, request_id, payload = row[:10]
    checks = (
        (isinstance(event_id, str) and bool(event_id), "no id"),
        (
            isinstance(kind, str) and len(kind) <= TYPE_MAX_LENGTH and _TYPE.match(kind),
            "the type is not an event type",
        ),
        (isinstance(category, str) and category.isidentifier(), "the category is not a name"),
        (
            isinstance(stamp, int | float) and 0 <= stamp <= MAX_EPOCH_S,
            "the time is not a time",
        ),
        # (None in rows a version 1 database kept)
        (
            isinstance(boot_id, str | None) and isinstance(seq, int | None),
            "the boot id or sequence is wrong",
        ),
        (request_id is None or isinstance(request_id, str), "the request id is not text"),
        (isinstance(payload, str), "the payload is not text"),
    )
    for ok, problem in checks:
        if not ok:
            return problem
    try:
        decoded = json.loads(str(payload))
    except ValueError as err:
        return f"the payload is not JSON ({err})"
    return None if isinstance(decoded, dict) else "the payload is not a JSON object"


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not done so already.

    After SQLITE_FULL (and some I/O errors) SQLite may roll back by itself; a second
    ROLLBACK would then raise "no transaction is active" and hide the real error.
    """
    if db.in_transaction:
        db.execute("ROLLBACK")


def _row(event: Event) -> tuple[object, ...]:
    payload = event.payload_json()
    return (
        event.id,
        event.type,
        event.category.value,
        int(event.priority),
        event.time,
        int(event.time_trusted),
        event.boot_id,
        event.seq,
        event.expires,
        event.request_id,
        payload,
        len(payload.encode()) + EVENT_OVERHEAD,
        int(event.evictable),
    )


def _connect(path: Path, limits: StoreLimits) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _configure(connection, path, limits)
    except sqlite3.DatabaseError:
        connection.close()
        raise
    return connection


def _configure(connection: sqlite3.Connection, path: Path, limits: StoreLimits) -> None:
    connection.execute("PRAGMA busy_timeout = 5000")
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        _log.warning("store %s: journal mode is %s, not WAL", path, mode)
    connection.execute("PRAGMA synchronous = FULL")
    # The hot path appends and reads the head of an index: a small page cache does
    # (SQLite's default is 2 MiB, a head unit has better uses for it).
    connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
    pages = max(1000, PAGE_HEADROOM * limits.max_bytes // page_size)
    connection.execute(f"PRAGMA max_page_count = {pages}")


def _check(connection: sqlite3.Connection) -> str | None:
    rows = connection.execute("PRAGMA quick_check").fetchall()
    result = "; ".join(str(r[0]) for r in rows)
    return None if result == "ok" else result


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target


def dead_letter_count(connection: sqlite3.Connection) -> int:
    """Events in the dead-letter table (a store's own connection or a read-only one)."""
    return int(connection.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0])


def evicted_total(connection: sqlite3.Connection) -> int:
    """Events evicted since the database was created."""
    row = connection.execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()
    return int(row[0]) if row and str(row[0]).isdigit() else 0


def _is_empty_file(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _keep_private(path: Path) -> None:
    """An existing database others may read is made the owner's alone.

    SQLite gives its -wal and -shm files the database's mode.
    """
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            path.chmod(mode & 0o700)
        except OSError as err:
            _log.warning("store %s is readable by others (%o) and cannot be changed: %s",
                         path, mode, err)  # fmt: skip
        else:
            _log.info("store %s was mode %o: now %o", path, mode, mode & 0o700)
