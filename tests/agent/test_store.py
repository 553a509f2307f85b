"""The SQLite store, on real files in tmp_path: outbox, state, budget, recovery."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agent.consent import Category
from agent.errors import StoreError
from agent.events import Event, JsonValue, OutboxRow, Priority
from agent.store.readonly import read_outbox
from agent.store.schema import SCHEMA_VERSION
from agent.store.store import EVENT_OVERHEAD, Store, StoreLimits
from tests.agent.conftest import T0

_seq = itertools.count(1)


def event(
    kind: str = "card.shown",
    priority: Priority = Priority.NORMAL,
    *,
    payload: dict[str, JsonValue] | None = None,
    expires: float | None = None,
    time: float = T0,
) -> Event:
    seq = next(_seq)
    return Event(
        id=f"ev-{seq:08d}",
        type=kind,
        category=Category.SERVICE_REQUESTS
        if kind.startswith("request.")
        else Category.USAGE_ANALYTICS,
        time=time,
        time_trusted=True,
        boot_id="b",
        seq=seq,
        priority=priority,
        expires=expires,
        payload=payload if payload is not None else {"n": seq},
        request_id=f"rq-{seq}" if kind.startswith("request.") else None,
    )


def size_of(e: Event) -> int:
    return len(e.payload_json().encode()) + EVENT_OVERHEAD


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "touchpoint.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    opened, _ = Store.open(db)
    yield opened
    opened.close()


def ids(rows: Sequence[OutboxRow]) -> list[str]:
    return [r.id for r in rows]


def test_a_new_store(db: Path) -> None:
    store, report = Store.open(db)
    try:
        assert report.path == db
        assert report.recovered_from is None
        assert report.problem is None
        assert report.schema_from == 0
        assert store.outbox_count == 0
        assert store.integrity_check() == "ok"
    finally:
        store.close()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()
    again, report = Store.open(db)
    again.close()
    assert report.schema_from == SCHEMA_VERSION


def test_commit_and_load(db: Path) -> None:
    store, _ = Store.open(db)
    events = [event(), event(priority=Priority.HIGH)]
    result = store.commit(events, {"cards": '{"a":1}', "vehicle": "{}"}, now=T0)
    assert (result.inserted, result.evicted) == (2, 0)
    assert store.outbox_count == 2
    assert store.outbox_bytes == sum(size_of(e) for e in events)
    assert store.load_sections() == {"cards": '{"a":1}', "vehicle": "{}"}
    store.commit([], {"cards": '{"a":2}'}, now=T0)
    assert store.load_sections()["cards"] == '{"a":2}'
    # A batch replayed after a crash inserts nothing twice.
    result = store.commit(events, {}, now=T0)
    assert result.inserted == 0
    assert store.outbox_count == 2
    row = store.pending(now=T0)[0]
    assert row.to_json() == {**events[1].to_json(), "payload": dict(events[1].payload)}
    store.close()
    reopened, _ = Store.open(db)
    try:
        assert reopened.outbox_count == 2
        assert reopened.load_sections()["cards"] == '{"a":2}'
    finally:
        reopened.close()


def test_pending_is_priority_then_age(store: Store) -> None:
    low1, normal1, high1, low2, high2, normal2 = (
        event(priority=Priority.LOW),
        event(priority=Priority.NORMAL),
        event("request.booking", Priority.HIGH),
        event(priority=Priority.LOW),
        event("fault.detected", Priority.HIGH),
        event(priority=Priority.NORMAL),
    )
    store.commit([low1, normal1, high1], {}, now=T0)
    store.commit([low2, high2, normal2], {}, now=T0)
    order = [high1, high2, normal1, normal2, low1, low2]
    assert ids(store.pending(now=T0)) == [e.id for e in order]
    assert ids(store.pending(limit=2, now=T0)) == [high1.id, high2.id]
    budget = size_of(high1) + size_of(high2)
    assert ids(store.pending(max_bytes=budget, now=T0)) == [high1.id, high2.id]
    assert ids(store.pending(max_bytes=1, now=T0)) == [high1.id]


def test_eviction_by_count_lowest_priority_oldest_first(db: Path) -> None:
    store, _ = Store.open(db, StoreLimits(max_events=4, max_bytes=10**9))
    try:
        request = event("request.booking", Priority.HIGH)
        first = [event(priority=Priority.LOW), request, event(priority=Priority.NORMAL)]
        second = [
            event(priority=Priority.LOW),
            event(priority=Priority.HIGH),
            event(priority=Priority.NORMAL),
        ]
        store.commit(first, {}, now=T0)
        result = store.commit(second, {}, now=T0)
        assert result.evicted == 2
        kept = set(ids(store.pending(now=T0)))
        assert kept == {request.id, second[1].id, first[2].id, second[2].id}
        assert store.outbox_count == 4
        assert store.evicted_total() == 2
        # Priority beats age: a new LOW event goes before an old NORMAL one.
        result = store.commit([event(priority=Priority.LOW)], {}, now=T0)
        assert result.evicted == 1
        assert set(ids(store.pending(now=T0))) == kept
        assert store.evicted_total() == 3
    finally:
        store.close()


def test_eviction_by_bytes(db: Path) -> None:
    small = [event(payload={"x": "y" * 100}) for _ in range(10)]
    budget = 1024 * 1024
    big = [event(payload={"blob": "z" * (budget // 4)}, priority=Priority.LOW) for _ in range(5)]
    store, _ = Store.open(db, StoreLimits(max_events=10**6, max_bytes=budget))
    try:
        store.commit(small, {}, now=T0)
        result = store.commit(big, {}, now=T0)
        assert result.evicted >= 2
        assert store.outbox_bytes <= budget
        rows = store.pending(limit=100, max_bytes=10**9, now=T0)
        assert store.outbox_bytes == sum(r.size for r in rows)
        assert store.outbox_count == len(rows)
        # The oldest low-priority events went first: every NORMAL one is still there.
        assert {e.id for e in small} <= set(ids(rows))
    finally:
        store.close()


def test_requests_are_never_evicted(db: Path) -> None:
    store, _ = Store.open(db, StoreLimits(max_events=3, max_bytes=10**9))
    try:
        requests = [event("request.redemption", Priority.HIGH) for _ in range(6)]
        result = store.commit([event(priority=Priority.HIGH), *requests[:3]], {}, now=T0)
        assert result.evicted == 1  # the one evictable event, though it is HIGH
        result = store.commit(requests[3:], {}, now=T0)
        assert result.evicted == 0
        assert store.evicted_total() == 1
        assert set(ids(store.pending(now=T0))) == {e.id for e in requests}
        assert store.outbox_count == 6  # over budget: requests stay whatever it says
    finally:
        store.close()


def test_expired_events_are_dropped(store: Store) -> None:
    stale = event(expires=T0 + 10)
    fresh = event(expires=T0 + 100)
    forever = event()
    store.commit([stale, fresh, forever], {}, now=T0)
    assert len(store.pending(now=T0 + 10)) == 3
    assert set(ids(store.pending(now=T0 + 11))) == {fresh.id, forever.id}
    assert store.outbox_count == 2
    assert store.outbox_bytes == size_of(fresh) + size_of(forever)


def test_in_flight_acknowledge_release_dead_letter(db: Path) -> None:
    store, _ = Store.open(db)
    a, b, c, d = event(), event(), event(), event()
    store.commit([a, b, c, d], {}, now=T0)
    taken, _ = store.take(3, 1_000_000, {a.category}, now=T0)
    assert ids(taken) == [a.id, b.id, c.id]
    assert ids(store.pending(now=T0)) == [d.id]
    store.acknowledge([a.id, "unknown"])
    assert store.outbox_count == 3
    store.release([b.id], "timeout")
    assert set(ids(store.pending(now=T0))) == {b.id, d.id}
    [row] = [r for r in store.pending(now=T0) if r.id == b.id]
    assert row.attempts == 1
    store.dead_letter(d.id, "rejected by the cloud: schema", now=T0)
    store.dead_letter("unknown", "nothing")
    assert store.outbox_count == 2
    with sqlite3.connect(db) as check:
        dead = check.execute("SELECT id, reason, attempts FROM dead_letter").fetchall()
    check.close()
    assert dead == [(d.id, "rejected by the cloud: schema", 0)]
    # c is still in flight: a restart sends it again.
    store.close()
    reopened, _ = Store.open(db)
    try:
        assert set(ids(reopened.pending(now=T0))) == {b.id, c.id}
    finally:
        reopened.close()


def test_a_garbage_file_is_moved_aside(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database, it is a cat picture " * 200)
    Path(f"{db}-wal").write_bytes(b"wal junk")
    Path(f"{db}-shm").write_bytes(b"shm junk")
    store, report = Store.open(db)
    try:
        assert report.recovered_from is not None
        assert report.problem is not None
        assert report.recovered_from.exists()
        assert report.recovered_from.read_bytes().startswith(b"this is not a database")
        assert Path(f"{report.recovered_from}-wal").read_bytes() == b"wal junk"
        assert Path(f"{report.recovered_from}-shm").exists()  # SQLite's index: rewritten
        assert not db.with_name(f"{db.name}-wal").read_bytes().startswith(b"wal junk")
        assert report.schema_from == 0
        store.commit([event()], {"vehicle": "{}"}, now=T0)
        assert store.integrity_check() == "ok"
    finally:
        store.close()


def test_a_damaged_database_is_moved_aside(db: Path) -> None:
    store, _ = Store.open(db)
    store.commit([event(payload={"blob": "x" * 3000}) for _ in range(200)], {"cards": "{}"}, now=T0)
    store.close()
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    for offset in range(2 * page, len(data) - page, 3 * page):
        data[offset : offset + 64] = b"\xde\xad\xbe\xef" * 16  # trash b-tree page headers
    db.write_bytes(bytes(data))
    store, report = Store.open(db)
    try:
        assert report.recovered_from is not None
        assert report.problem
        assert store.outbox_count == 0
        assert store.load_sections() == {}
        assert store.integrity_check() == "ok"
    finally:
        store.close()


def test_a_damaged_database_keeps_its_wal_when_moved_aside(db: Path, tmp_path: Path) -> None:
    first, _ = Store.open(db)
    first.commit([event(payload={"blob": "x" * 3000}) for _ in range(200)], {}, now=T0)
    first.close()  # checkpointed into the main file
    live, _ = Store.open(db)
    live.commit([event()], {"cards": "{}"}, now=T0)  # in the WAL only
    crashed = tmp_path / "crashed" / "touchpoint.db"
    crashed.parent.mkdir()
    # A power loss: the files as they are on disk, the WAL not yet checkpointed.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{crashed}{suffix}").write_bytes(Path(f"{db}{suffix}").read_bytes())
    live.close()
    wal = Path(f"{crashed}-wal").read_bytes()
    assert len(wal) > 0
    data = bytearray(crashed.read_bytes())
    for offset in range(8 * 4096, len(data) - 4096, 4 * 4096):
        data[offset : offset + 64] = b"\xde\xad\xbe\xef" * 16  # trash b-tree pages
    crashed.write_bytes(bytes(data))
    store, report = Store.open(crashed)
    try:
        assert report.recovered_from is not None
        assert Path(f"{report.recovered_from}-wal").read_bytes() == wal
        assert store.outbox_count == 0
    finally:
        store.close()


def test_a_schema_newer_than_the_code_is_refused(db: Path) -> None:
    store, _ = Store.open(db)
    store.close()
    with sqlite3.connect(db) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="newer than this touchpoint"):
        Store.open(db)
    assert db.exists()  # refused, not moved or touched
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    raw.close()


def test_an_unwritable_directory_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"cannot create the store at .*Not a directory"):
        Store.open(blocker / "sub" / "touchpoint.db")


def test_a_full_database_ends_in_eviction_or_a_store_error(db: Path) -> None:
    # The smallest byte budget allows max(1000 pages, 4 x budget): 4 MB of pages.
    # Requests are never evicted, so they fill the file until SQLite refuses.
    store, _ = Store.open(db, StoreLimits(max_events=10**6, max_bytes=1024 * 1024))
    outcomes: list[str] = []
    try:
        store.commit(
            [event(priority=Priority.LOW, payload={"b": "l" * 800}) for _ in range(500)], {}, now=T0
        )
        for _ in range(30):
            batch = [
                event("request.booking", Priority.HIGH, payload={"b": "r" * 20_000})
                for _ in range(10)
            ]
            try:
                result = store.commit(batch, {"cards": "{}"}, now=T0)
            except StoreError as err:
                outcomes.append(f"error: {err}")
                break
            outcomes.append(f"evicted {result.evicted}")
        assert outcomes[-1].startswith("error: store full")
        assert any(o != "evicted 0" for o in outcomes[:-1])  # evictable events went first
        # The store still works: what was committed is intact and can be sent.
        assert store.integrity_check() == "ok"
        rows = store.pending(limit=10_000, max_bytes=10**9, now=T0)
        assert store.outbox_count == len(rows)
        store.acknowledge(r.id for r in rows)
        assert store.outbox_count == 0
        store.commit([event()], {"cards": "{}"}, now=T0)
    finally:
        store.close()


def test_a_full_database_with_huge_state_is_a_store_error(db: Path) -> None:
    store, _ = Store.open(db, StoreLimits(max_events=100, max_bytes=1024 * 1024))
    try:
        store.commit([event()], {"cards": "{}"}, now=T0)
        with pytest.raises(StoreError):
            store.commit([event()], {"cards": "x" * (8 * 1024 * 1024)}, now=T0)
        assert store.load_sections() == {"cards": "{}"}  # all or nothing
        assert store.outbox_count == 1
        store.commit([event()], {"cards": "{}"}, now=T0)
        assert store.outbox_count == 2
    finally:
        store.close()


def test_summary_and_wipe(store: Store, db: Path) -> None:
    store.commit(
        [event(), event(), event("request.booking", Priority.HIGH)],
        {"vehicle": "{}", "consent": "{}", "wallet": "{}"},
        now=T0,
    )
    with contextlib.closing(sqlite3.connect(db)) as reader:
        groups = read_outbox(reader).groups
    assert (groups[0].category, groups[0].priority, groups[0].events) == (
        "service_requests",
        int(Priority.HIGH),
        1,
    )
    assert (groups[1].category, groups[1].priority, groups[1].events) == (
        "usage_analytics",
        int(Priority.NORMAL),
        2,
    )
    store.wipe(keep_sections=["vehicle"])
    assert store.outbox_count == 0
    assert store.pending(now=T0) == []
    assert store.load_sections() == {"vehicle": "{}"}
    store.wipe()
    assert store.load_sections() == {}


def test_take_marks_a_batch_in_flight_and_deletes_what_consent_no_longer_allows(
    store: Store,
) -> None:
    analytics = [event(priority=Priority.LOW) for _ in range(3)]
    request = event("request.booking", Priority.HIGH)
    store.commit([*analytics, request], {}, now=T0)
    allowed = {Category.SERVICE_REQUESTS.value}
    rows, withheld = store.take(10, 1 << 20, allowed, now=T0)
    assert ids(rows) == [request.id]
    assert withheld == 3
    assert store.outbox_count == 1
    assert store.pending(now=T0) == []  # in flight
    store.release([request.id], None, count=False)
    [again] = store.pending(now=T0)
    assert again.attempts == 0  # a lost connection is not an attempt


def test_the_next_batch_is_read_off_an_index_in_sending_order(store: Store, db: Path) -> None:
    # No sort of the whole outbox per batch (the v1 schema made SQLite do one).
    with sqlite3.connect(db) as check:
        plan = check.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM outbox WHERE state = 0 "
            "ORDER BY priority DESC, rowid ASC LIMIT 10"
        ).fetchall()
        expired = check.execute(
            "EXPLAIN QUERY PLAN DELETE FROM outbox WHERE expires IS NOT NULL AND expires < 1 "
            "AND +state = 0"
        ).fetchall()
    check.close()
    details = " ".join(str(row[-1]) for row in plan)
    assert "idx_outbox_send" in details
    assert "TEMP B-TREE" not in details
    assert "idx_outbox_expires" in " ".join(str(row[-1]) for row in expired)


def test_a_version_1_database_is_migrated(db: Path) -> None:
    import sqlite_utils  # noqa: PLC0415

    from agent.store.schema import MIGRATIONS  # noqa: PLC0415

    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as old:
        MIGRATIONS[0](sqlite_utils.Database(old))
        old.execute("PRAGMA user_version = 1")
        old.execute(
            "INSERT INTO outbox (id, type, category, priority, time, payload, size, state) "
            "VALUES ('kept', 'card.shown', 'usage_analytics', 50, 0, '{}', 210, 0)"
        )
    old.close()
    store, report = Store.open(db)
    try:
        assert report.schema_from == 1
        assert ids(store.pending(now=T0)) == ["kept"]
    finally:
        store.close()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        names = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    check.close()
    assert {"idx_outbox_send", "idx_outbox_expires"} <= names
    assert "idx_outbox_state_priority" not in names


def test_a_withdrawn_request_leaves_only_if_still_unsent(store: Store) -> None:
    sent, unsent, other = event("request.booking"), event("request.booking"), event()
    store.commit([sent, unsent, other], {}, T0)
    taken, _ = store.take(1, 1 << 20, {"service_requests", "usage_analytics"}, T0)
    assert [r.id for r in taken] == [sent.id]  # in flight now
    assert sent.request_id is not None
    assert unsent.request_id is not None
    store.commit([], {}, T0, withdrawn=[sent.request_id, unsent.request_id])
    left = {r.id for r in store.pending(100)} | {sent.id}
    assert left == {sent.id, other.id}
    assert store.outbox_count == 2  # the one in flight stays: the cloud may have it
