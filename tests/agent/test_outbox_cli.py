"""``touchpoint outbox``: what waits, by category, priority and state; the dead letters.

On real stores: events committed through :meth:`Store.commit`, some taken for sending
(in flight), one moved to the dead-letter table.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.consent import Category
from agent.events import Priority
from agent.store.readonly import open_readonly, read_outbox
from agent.store.store import Store
from tests.agent.doctor_helpers import event
from touchpoint.cli import main
from touchpoint.commands.outbox import follow

ALL = {c.value for c in Category}


pytestmark = pytest.mark.usefixtures("no_touchpoint_environment")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "touchpoint.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    """A store as a running daemon holds it: 6 analytics events, 2 requests (one in
    flight), a fault in flight, and a dead letter."""
    now = time.time()
    opened, _ = Store.open(db)
    analytics = [event(time=now - 7200 + n) for n in range(6)]
    requests = [
        event("request.booking", Priority.HIGH, time=now - 60 * n,
              category=Category.SERVICE_REQUESTS)
        for n in (1, 2)
    ]  # fmt: skip
    fault = event("fault.detected", Priority.HIGH, time=now - 30, category=Category.VEHICLE_HEALTH)
    opened.commit([*analytics, *requests, fault], {})
    taken, _ = opened.take(2, 1 << 20, ALL)  # the two oldest high-priority ones
    assert {r.id for r in taken} == {requests[1].id, requests[0].id}
    opened.dead_letter(analytics[0].id, "broker refused: 0x87 not authorised")
    yield opened
    opened.close()


def test_the_table_by_priority_category_and_state(
    db: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["outbox", "--db", str(db)])

    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0] == f"outbox of {db} (schema 2)"
    assert out[1].startswith("waiting: 8 events, ")
    assert out[1].endswith("(6 pending, 2 in flight)")
    header = out.index(next(line for line in out if line.startswith("priority")))
    rows = [line.split() for line in out[header + 1 : header + 4]]
    assert [r[:3] for r in rows] == [
        ["80", "service_requests", "in"],
        ["80", "vehicle_health", "pending"],
        ["50", "usage_analytics", "pending"],
    ]
    assert rows[0][4] == "2"  # events in flight
    assert rows[2][3] == "5"  # one analytics event is a dead letter now
    assert "1 h 59 min" in out[header + 3]  # the oldest analytics event left
    assert "dead letters: 1" in out
    dead = out[out.index("dead letters: 1") + 1]
    assert "card.shown (usage_analytics)" in dead
    assert dead.endswith("0 attempts: broker refused: 0x87 not authorised")


def test_json_for_machines(db: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["outbox", "--db", str(db), "--json"])

    document = json.loads(capsys.readouterr().out)
    assert status == 0
    assert document["schema_version"] == 2
    assert (document["events"], document["in_flight"]) == (8, 2)
    assert document["bytes"] == store.outbox_bytes
    groups = {(g["category"], g["state"]): g for g in document["groups"]}
    assert groups["service_requests", "in_flight"]["events"] == 2
    assert groups["service_requests", "in_flight"]["max_attempts"] == 1
    assert groups["usage_analytics", "pending"]["events"] == 5
    assert 7190 < groups["usage_analytics", "pending"]["oldest_age_s"] < 7300
    assert document["dead_letter_count"] == 1
    assert document["dead_letters"][0]["reason"] == "broker refused: 0x87 not authorised"


def test_the_settings_give_the_path_and_the_budget(
    tmp_path: Path, db: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "t.toml"
    config.write_text(f'[store]\npath = "{db}"\nmax_events = 100\n')

    status = main(["outbox", "--config", str(config)])

    out = capsys.readouterr().out
    assert status == 0
    assert "budget 100 events, 64.0 MiB: 8% used" in out


def test_reading_does_not_block_the_daemon(db: Path, store: Store) -> None:
    connection = open_readonly(db)
    try:
        connection.execute("BEGIN")
        before = read_outbox(connection)
        store.commit([event(time=time.time())], {})  # the writer is not blocked
        during = read_outbox(connection)  # a snapshot: the reader's transaction
        connection.execute("COMMIT")
        after = read_outbox(connection)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            connection.execute("DELETE FROM outbox")
    finally:
        connection.close()

    assert before.events == during.events == 8
    assert after.events == 9


def test_a_closed_store_is_read_without_leaving_files_behind(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opened, _ = Store.open(db)
    opened.commit([event(time=time.time())], {})
    opened.close()

    status = main(["outbox", "--db", str(db)])

    assert status == 0
    assert "waiting: 1 events" in capsys.readouterr().out
    assert sorted(p.name for p in db.parent.iterdir()) == ["touchpoint.db"]


def test_an_empty_outbox(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Store.open(db)[0].close()

    status = main(["outbox", "--db", str(db)])

    out = capsys.readouterr().out
    assert status == 0
    assert "nothing waits to be sent" in out
    assert "dead letters: 0" in out


def test_no_database_and_a_corrupt_one_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"\x00garbage" * 512)

    missing = main(["outbox", "--db", str(tmp_path / "none.db")])
    missing_err = capsys.readouterr().err
    broken = main(["outbox", "--db", str(corrupt)])
    broken_err = capsys.readouterr().err

    assert missing == 1
    assert "no database at" in missing_err
    assert broken == 1
    assert "cannot read" in broken_err
    assert "Traceback" not in missing_err + broken_err


def test_follow_shows_a_running_daemon_draining_the_outbox(tmp_path: Path) -> None:
    db_path = tmp_path / "drain.db"
    sent = threading.Event()

    def daemon_side() -> None:
        # The daemon's store in its own thread: 300 events, then acknowledged in
        # batches of 50, with 50 new ones recorded halfway (in a round of their own:
        # the outbox is polled, so only its net change is seen).
        store, _ = Store.open(db_path)
        try:
            store.commit([event(time=1000.0 + i) for i in range(300)], {})
            ready.set()
            for round_ in range(8):
                time.sleep(0.1)
                if round_ == 3:
                    store.commit([event(time=2000.0 + i) for i in range(50)], {})
                    continue
                rows, _ = store.take(50, 1 << 20, ALL, time.time())
                store.acknowledge(row.id for row in rows)
            sent.set()
        finally:
            store.close()

    ready = threading.Event()
    worker = threading.Thread(target=daemon_side)
    worker.start()
    assert ready.wait(10)
    out = io.StringIO()
    connection = open_readonly(db_path)
    try:
        assert follow(connection, out, poll_s=0.02, until=lambda: False) == 0
    finally:
        connection.close()
        worker.join()
    # Every event that left is counted, the 50 recorded meanwhile included.
    assert out.getvalue().splitlines()[-1].startswith("outbox: 350 events in ")
