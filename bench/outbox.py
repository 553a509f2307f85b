"""Outbox throughput: ``Store.commit`` with group commit against one event per commit.

Every commit is durable (WAL, ``synchronous=FULL``: SQLite syncs the WAL before the
commit returns), so the figures are bounded by the disk's sync latency, not by CPU:
they are wall-clock throughputs (``time.perf_counter``), on a directory on a real disk
(:mod:`bench.scratch`), never on a tmpfs where a sync costs nothing.

The events are copies of those the agent makes on the simulated drive (card life,
drive summaries, maintenance, charging), with fresh ids, sequence numbers and times,
so the rows have real sizes and a real mix of priorities. Two outboxes:

- empty: a fresh database;
- full: 100,000 events waiting (the default budget), as after weeks offline, so every
  commit also evicts as many low-priority events as it adds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final

from agent.events import Event
from agent.ids import IdFactory
from agent.store.store import Store, StoreLimits
from bench.agent_setup import drive_events
from bench.report import REPEATS, Row, Section
from bench.scratch import disk_dir

#: The issue's target, events per second with group commit.
TARGET_EPS: Final = 20_000.0
#: Group-commit batch sizes measured (the daemon commits whatever queued meanwhile).
BATCH_SIZES: Final = (100, 500, 1_000)
#: Events per group-commit run, and commits per single-row run (sync-bound: fewer).
GROUP_EVENTS: Final = 10_000
SINGLE_COMMITS: Final = 200
#: Events in the full outbox: the default budget, StoreLimits.max_events.
FULL_OUTBOX: Final = StoreLimits().max_events
#: The batch size the pre-fill commits with (only its result matters).
_FILL_BATCH: Final = 2_000


def realistic_events(count: int, start: float, *, seed_ms: int = 0) -> list[Event]:
    """``count`` events cycled from the drive's, with fresh ids, sequence numbers and times.

    The times are spread a second apart from ``start`` (a car that keeps producing while
    offline); ids are UUIDv7s of those times, as the agent makes them.
    """
    templates = drive_events()
    ids = IdFactory()
    events: list[Event] = []
    for seq in range(1, count + 1):
        stamp = start + seq + seed_ms / 1000
        template = templates[seq % len(templates)]
        events.append(replace(template, id=ids.new(stamp), seq=seq, time=stamp))
    return events


def prefill(
    path: Path, count: int, start: float, sections: Mapping[str, str] | None = None
) -> None:
    """Create the store at ``path`` with ``count`` events waiting (and the agent's state
    ``sections``, if given), and close it.
    """
    store, _ = Store.open(path)
    try:
        events = realistic_events(count, start)
        for first in range(0, count, _FILL_BATCH):
            store.commit(
                events[first : first + _FILL_BATCH], (sections or {}) if first == 0 else {}
            )
    finally:
        store.close()


@contextlib.contextmanager
def quiet_store() -> Iterator[None]:
    """Silence the store's "outbox full: evicted" warning, logged on every commit to a full
    outbox (thousands of lines here), while the benchmark fills and commits.
    """
    store_log = logging.getLogger(Store.__module__)
    level = store_log.level
    store_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        store_log.setLevel(level)


def _copy_synced(source: Path, target: Path) -> None:
    """Copy a closed database and sync it, so no dirty page of the copy is left for the
    measured commits' checkpoints to write back.
    """
    shutil.copyfile(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _throughput(path: Path, events: Sequence[Event], batch: int) -> float:
    """Events per second committing ``events`` in batches of ``batch`` to the store at
    ``path`` (opening is not timed).
    """
    store, _ = Store.open(path)
    try:
        batches = [events[i : i + batch] for i in range(0, len(events), batch)]
        started = time.perf_counter()
        for chunk in batches:
            store.commit(chunk, {})
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    return len(events) / elapsed


def _synchronous_level(path: Path) -> int:
    """``PRAGMA synchronous`` on the connection the store itself uses (2 is FULL)."""
    store, _ = Store.open(path)
    try:
        # The setting is per connection: only the store's own one can tell.
        return int(store._db.execute("PRAGMA synchronous").fetchone()[0])  # noqa: SLF001
    finally:
        store.close()


def _journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


def fsync_ms(directory: Path, rounds: int = 50) -> float:
    """Median milliseconds of a 4 KiB write and fsync on the disk ``directory`` is on."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    samples = []
    try:
        for _ in range(rounds):
            os.pwrite(fd, os.urandom(4096), 0)
            started = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples) * 1000


def run() -> list[Section]:
    """Measure group and single-row commits on an empty and on a full outbox."""
    start = drive_events()[0].time
    with disk_dir("outbox") as directory, quiet_store():
        full_source = directory / "full-source.db"
        prefill(full_source, FULL_OUTBOX, start - FULL_OUTBOX)
        group_events = realistic_events(GROUP_EVENTS, start, seed_ms=1)
        single_events = group_events[:SINGLE_COMMITS]
        rows: list[Row] = []
        figures: dict[tuple[str, int], float] = {}
        for outbox in ("empty", "full"):
            for batch in (1, *BATCH_SIZES):
                events = single_events if batch == 1 else group_events
                samples = []
                for index in range(REPEATS):
                    path = directory / f"{outbox}-{batch}-{index}.db"
                    if outbox == "full":
                        _copy_synced(full_source, path)
                    samples.append(_throughput(path, events, batch))
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{path}{suffix}").unlink(missing_ok=True)
                figures[(outbox, batch)] = statistics.median(samples)
            single = figures[(outbox, 1)]
            rows.append(Row(f"{outbox} outbox: one event per commit", single, "ev/s", digits=0))
            rows.extend(
                Row(
                    f"{outbox} outbox: group commit, {batch:,} events per commit",
                    figures[(outbox, batch)],
                    "ev/s",
                    TARGET_EPS,
                    at_least=True,
                    digits=0,
                )
                for batch in BATCH_SIZES
            )
            ratio = figures[(outbox, BATCH_SIZES[0])] / single
            rows.append(Row(f"{outbox} outbox: group commit (100) / single-row", ratio, "x"))
        probe = directory / "probe.db"
        sync_level = _synchronous_level(probe)
        journal = _journal_mode(probe)
        rows.append(Row("PRAGMA synchronous of the store (2 = FULL)", sync_level, "", 2, True, 0))
        rows.append(Row("fsync of a 4 KiB write on this disk", fsync_ms(directory), "ms"))
        where = str(directory.parent)
    return [
        Section(
            "Outbox: durable commits, events per second (wall clock)",
            tuple(rows),
            (
                (
                    f"store on {where} (a real disk, not tmpfs); journal_mode={journal}; "
                    f"median of {REPEATS} runs on fresh copies of the database."
                ),
                (
                    f"group runs commit {GROUP_EVENTS:,} events; single-row runs {SINGLE_COMMITS} "
                    f"commits; full outbox: {FULL_OUTBOX:,} events waiting, each commit evicts "
                    "as many low-priority events as it adds."
                ),
                (
                    f"events: copies of the {len(drive_events())} the agent made on the drive "
                    f"(mean payload {_mean_payload():.0f} bytes), fresh ids and times."
                ),
            ),
        )
    ]


def _mean_payload() -> float:
    events = drive_events()
    return sum(len(e.payload_json()) for e in events) / len(events)
