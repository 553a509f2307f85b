"""``touchpoint outbox``: what waits to be sent to the cloud, and what was given up on.

Reads the store without disturbing a running daemon (see :mod:`agent.store.readonly`).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from agent.errors import StoreError
from agent.store.readonly import (
    OutboxReport,
    human_size,
    open_readonly,
    read_outbox,
    schema_version,
)
from touchpoint.progress import Progress
from touchpoint.settings import ConfigError, load_settings

#: How often ``--follow`` looks at the outbox.
FOLLOW_POLL_S: Final = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help="the daemon's TOML settings, for the store's path and budget",
    )  # fmt: skip
    parser.add_argument(
        "--db", type=Path, metavar="FILE",
        help="the database file (default: [store] path of the settings)",
    )  # fmt: skip
    parser.add_argument(
        "--dead-letters", type=int, default=20, metavar="N",
        help="show at most N dead letters, the latest first (default: 20)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON document, for machines")
    parser.add_argument(
        "--follow", action="store_true",
        help="watch the daemon send what waits: a progress bar (plain lines when not on a "
             "terminal) with the rate and the time left, until the outbox is empty (Ctrl-C "
             "stops watching)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Show the outbox; 0 if it could be read, 1 if not, 2 for unusable settings."""
    max_events: int | None = None
    max_bytes: int | None = None
    path: Path | None = args.db
    if path is None or args.config is not None:
        try:
            settings = load_settings(args.config)
        except ConfigError as err:
            print(f"touchpoint outbox: unusable settings: {err}", file=sys.stderr)
            return 2
        path = path or settings.store.path
        max_events, max_bytes = settings.store.max_events, settings.store.max_bytes
    try:
        connection = open_readonly(path)
    except StoreError as err:
        print(f"touchpoint outbox: {err}", file=sys.stderr)
        return 1
    if args.follow:
        try:
            return follow(connection, sys.stderr)
        except sqlite3.DatabaseError as err:
            print(f"touchpoint outbox: cannot read {path}: {err}", file=sys.stderr)
            return 1
        finally:
            connection.close()
    try:
        version = schema_version(connection)
        report = read_outbox(connection, args.dead_letters)
    except sqlite3.DatabaseError as err:
        print(f"touchpoint outbox: cannot read {path}: {err}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    now = time.time()
    if args.json:
        document: dict[str, Any] = {
            "path": str(path),
            "schema_version": version,
            "budget": {"max_events": max_events, "max_bytes": max_bytes},
            **report.to_json(now),
        }
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        show(report, path, version, now, sys.stdout, budget=(max_events, max_bytes))
    return 0


def follow(
    connection: sqlite3.Connection,
    stream: TextIO,
    *,
    poll_s: float = FOLLOW_POLL_S,
    until: Callable[[], bool] = lambda: False,
) -> int:
    """Show the outbox draining until it is empty (or ``until()``, or Ctrl-C); 0.

    Events the daemon records meanwhile join the total; what leaves the outbox counts
    as sent (acknowledged, expired or evicted alike: what no longer waits).
    """
    last = _count(connection)
    with Progress(last, unit="events", label="outbox", stream=stream) as progress:
        try:
            while last > 0 and not until():
                time.sleep(poll_s)
                now = _count(connection)
                if now > last:
                    progress.set_total((progress.total or 0) + now - last)
                else:
                    progress.advance(last - now)
                last = now
        except KeyboardInterrupt:
            pass
    return 0


def _count(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def show(
    report: OutboxReport,
    path: Path,
    version: int,
    now: float,
    out: TextIO,
    *,
    budget: tuple[int | None, int | None] = (None, None),
) -> None:
    """The report as a table for people."""
    lines = [f"outbox of {path} (schema {version})"]
    waiting = (
        f"waiting: {report.events:,} events, {human_size(report.bytes)}"
        f" ({report.events - report.in_flight:,} pending, {report.in_flight:,} in flight)"
    )
    max_events, max_bytes = budget
    if max_events and max_bytes:
        share = max(report.events / max_events, report.bytes / max_bytes)
        waiting += f"; budget {max_events:,} events, {human_size(max_bytes)}: {share:.0%} used"
    lines.append(waiting)
    if report.oldest is not None:
        lines.append(f"oldest: {age(now - report.oldest)} ago")
    lines.append(f"evicted since the store was made: {report.evicted:,}")
    if report.groups:
        header = ("priority", "category", "state", "events", "bytes", "oldest", "attempts")
        rows = [
            (
                str(g.priority),
                g.category,
                "in flight" if g.in_flight else "pending",
                f"{g.events:,}",
                human_size(g.bytes),
                age(now - g.oldest),
                str(g.attempts),
            )
            for g in report.groups
        ]
        lines += _table(header, rows, right=(0, 3, 4, 5, 6))
    else:
        lines.append("nothing waits to be sent")
    lines.append(f"dead letters: {report.dead_letter_count:,}")
    for dead in report.dead_letters:
        failed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dead.failed_at))
        lines.append(
            f"  {failed}  {dead.type} ({dead.category}) {dead.id}, "
            f"{dead.attempts} attempts: {dead.reason or '(no reason recorded)'}"
        )
    if report.dead_letter_count > len(report.dead_letters):
        lines.append(f"  … and {report.dead_letter_count - len(report.dead_letters):,} more")
    out.write("".join(f"{line}\n" for line in lines))


def _table(
    header: tuple[str, ...], rows: Sequence[tuple[str, ...]], right: tuple[int, ...]
) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(r) for r in rows)]


def age(seconds: float) -> str:
    """An age for people: ``42 s``, ``5 min``, ``3 h 12 min``, ``4 d 2 h``."""
    if seconds < 0:
        return f"{age(-seconds)} in the future"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, hours, days = whole // 60, whole // 3600, whole // 86_400
    if hours < 1:
        return f"{minutes} min"
    if days < 1:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"
