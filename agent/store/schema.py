"""The database schema and its migrations (sqlite-utils), versioned by ``PRAGMA user_version``.

Each migration runs once, in order, in its own transaction. The hot path does not use
sqlite-utils: see :mod:`agent.store.store`. sqlite-utils is imported only when a
migration has to run: it is a large import (with its plugins, and numpy when that is
installed), and a daemon whose schema is current starts faster and smaller without it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    db["outbox"].create(  # type: ignore[union-attr]
        {
            "id": str,  # the event's UUIDv7
            "type": str,
            "category": str,
            "priority": int,
            "time": float,
            "time_trusted": int,
            "boot_id": str,
            "seq": int,
            "expires": float,
            "request_id": str,
            "payload": str,  # JSON
            "size": int,  # bytes of the event as sent, for the byte budget
            "evictable": int,
            "state": int,  # 0 pending, 1 in flight
            "attempts": int,
            "last_error": str,
        },
        pk="id",
        not_null={"type", "category", "priority", "time", "payload", "size", "state"},
        defaults={"state": 0, "attempts": 0, "evictable": 1},
    )
    # Sending order (priority, then age) and eviction order (lowest priority, oldest);
    # every SQLite index ends with the rowid, which is the insertion order.
    db["outbox"].create_index(["state", "priority"])  # type: ignore[union-attr]
    db["outbox"].create_index(["evictable", "priority"])  # type: ignore[union-attr]
    db["dead_letter"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "type": str,
            "category": str,
            "payload": str,
            "reason": str,
            "attempts": int,
            "failed_at": float,
        },
        pk="id",
    )
    db["state"].create({"section": str, "value": str, "updated": float}, pk="section")  # type: ignore[union-attr]
    db["meta"].create({"key": str, "value": str}, pk="key")  # type: ignore[union-attr]


def _v2(db: sqlite_utils.Database) -> None:
    # The sending order is priority descending, then insertion: an index in exactly that
    # order (the rowid ends every index, ascending) lets SQLite read the next batch
    # straight off it; the v1 index made it sort a whole priority's rows on every read.
    db.execute("DROP INDEX IF EXISTS idx_outbox_state_priority")
    db.execute("CREATE INDEX idx_outbox_send ON outbox (state, priority DESC)")
    # Few events expire (requests): a partial index finds them without a scan.
    db.execute("CREATE INDEX idx_outbox_expires ON outbox (expires) WHERE expires IS NOT NULL")


#: Migration n brings the schema from version n to n + 1.
MIGRATIONS: Final[tuple[Callable[[sqlite_utils.Database], None], ...]] = (_v1, _v2)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version it was at.

    Raises:
        sqlite3.DatabaseError: A database newer than this code (no downgrade).
    """
    current = int(connection.execute("PRAGMA user_version").fetchone()[0])
    if current > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"the database has schema version {current}, newer than this touchpoint "
            f"({SCHEMA_VERSION}); refusing to touch it"
        )
    if current == SCHEMA_VERSION:
        return current
    import sqlite_utils  # noqa: PLC0415 - see the module docstring

    db = sqlite_utils.Database(connection)
    for version in range(current, SCHEMA_VERSION):
        # The connection is in autocommit mode: an explicit transaction makes the
        # migration (DDL included) all or nothing.
        connection.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](db)
            connection.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back by itself
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    return current
