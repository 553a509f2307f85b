"""``touchpoint doctor`` without network peers: settings, the store, the clock, CAN.

Real things throughout: the reference car's DBC and mapping, SQLite stores made with
:meth:`Store.open`, python-can's virtual bus with a second node sending frames. Only
sysfs is a directory of files written here (the machine has no CAN devices).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from agent.events import Priority
from agent.settings import StoreSettings
from agent.store.store import Store
from can_signals.binding import bind
from can_signals.dbc import load_dbc
from can_signals.mapping import load_mapping
from can_signals.settings import BusSettings, CanSettings, DbcSettings
from can_signals.simulator import reference_files
from tests.agent.doctor_helpers import event, make_store, only, statuses, toml_config
from touchpoint.cli import main
from touchpoint.doctor import Check, Status, diagnose, exit_status
from touchpoint.doctor.can_checks import check_can, listen_for_frames
from touchpoint.doctor.dbus_checks import POLICY_FILE, _policy_check
from touchpoint.doctor.report import guarded, tally
from touchpoint.doctor.store_checks import check_store

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("no_touchpoint_environment")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "touchpoint.db"


# -- the whole check-up ------------------------------------------------------------------


def test_a_sound_store_and_the_reference_car_pass(tmp_path: Path, db: Path) -> None:
    now = time.time()
    make_store(db, [event(time=now - 60) for _ in range(5)], last_trusted=now - 3600)
    config = toml_config(tmp_path / "t.toml", store=db)

    checks = diagnose(config)

    assert statuses(checks) == {
        "config": Status.OK,
        "store": Status.OK,
        "outbox": Status.OK,
        "clock": Status.OK,
        "clock.sources": Status.OK,
        "daemon.loops": Status.OK,  # no health file: the daemon has not run here
        "can.dbc": Status.OK,
        "can.mapping": Status.OK,
        "can.can0": Status.WARN,  # a virtual bus is a simulation
        "dbus": Status.WARN,  # no [dbus]
        "cloud": Status.WARN,  # no [cloud]
    }
    assert exit_status(checks) == 0
    assert "5 events waiting" in only(checks, "outbox").message
    assert "14 frame IDs" in only(checks, "can.mapping").message
    assert "a simulation" in only(checks, "can.can0").message
    assert only(checks, "can.can0").fix is not None


def test_the_command_prints_each_finding_with_a_fix_and_exits_1_on_a_fail(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is no database" * 100)
    config = toml_config(tmp_path / "t.toml", store=db)

    status = main(["doctor", "--config", str(config)])

    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert out[0] == f"touchpoint doctor: {config}"
    store = next(i for i, line in enumerate(out) if line.startswith("FAIL  store"))
    assert "not an SQLite database" in out[store]
    assert out[store + 1].lstrip().startswith("fix: stop the daemon")
    assert any(line.startswith("OK    can.mapping") for line in out)
    assert out[-1].endswith("1 FAIL")


def test_json_output(tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(db)
    config = toml_config(tmp_path / "t.toml", store=db)

    status = main(["doctor", "--config", str(config), "--json"])

    document = json.loads(capsys.readouterr().out)
    assert status == 0
    assert document["ok"] is True
    names = [c["name"] for c in document["checks"]]
    assert names[:2] == ["config", "store"]
    assert {c["status"] for c in document["checks"]} <= {"OK", "WARN"}


# -- settings ---------------------------------------------------------------------------


def test_a_file_that_is_not_toml_fails_as_the_daemon_would(
    tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOUCHPOINT_STORE__PATH", str(db))
    config = tmp_path / "t.toml"
    config.write_text("[vehicle\nid = 1\n")

    checks = diagnose(config)

    [configuration] = [c for c in checks if c.name == "config"]
    assert configuration.status is Status.FAIL
    assert "not valid TOML" in configuration.message
    assert "line 1" in configuration.message
    assert "will not start (exit 2)" in configuration.message
    # Nothing else is judged: the daemon would not get as far as the store.
    assert [c.name for c in checks] == ["config"]
    assert exit_status(checks) == 1


def test_a_missing_file_fails(tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHPOINT_STORE__PATH", str(db))

    checks = diagnose(tmp_path / "nowhere.toml")

    configuration = [c for c in checks if c.name == "config"]
    assert configuration[0].status is Status.FAIL
    assert "cannot be read" in configuration[0].message
    assert len([c for c in configuration if "cannot read" in c.message]) == 0  # said once


def test_a_wrong_value_fails_with_the_file_line_and_key(tmp_path: Path, db: Path) -> None:
    config = toml_config(tmp_path / "t.toml", "[policy]\nmax_visible = 99\n", store=db)

    checks = diagnose(config)

    problem = next(c for c in checks if c.name == "config")
    assert problem.status is Status.FAIL
    line = next(
        n for n, text in enumerate(config.read_text().splitlines(), 1) if "max_visible" in text
    )
    assert f"{config}:{line}: policy.max_visible" in problem.message
    assert "will not start" in problem.message


def test_settings_the_daemon_cannot_run_with_stop_the_check_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOUCHPOINT_TICK_SECONDS", "-1")

    checks = diagnose(None)

    assert [c.name for c in checks] == ["config"]
    assert checks[0].status is Status.FAIL
    assert "tick_seconds" in checks[0].message


def test_the_development_vehicle_id_is_a_warning(tmp_path: Path, db: Path) -> None:
    config = toml_config(tmp_path / "t.toml", store=db, vehicle_id="dev-vehicle")

    checks = diagnose(config)

    assert any(c.name == "config" and "development default" in c.message for c in checks)


# -- the store --------------------------------------------------------------------------


def test_a_corrupt_database_fails_and_is_left_alone(db: Path) -> None:
    db.parent.mkdir(parents=True)
    garbage = bytes(range(256)) * 64
    db.write_bytes(garbage)

    checks = list(check_store(StoreSettings(path=db)))

    assert [c.status for c in checks] == [Status.FAIL]
    assert checks[0].fix is not None
    assert db.read_bytes() == garbage  # not moved aside, not repaired: the daemon does that
    assert sorted(p.name for p in db.parent.iterdir()) == ["touchpoint.db"]


def test_a_damaged_page_fails_the_quick_check(db: Path) -> None:
    now = time.time()
    make_store(db, [event(time=now) for _ in range(300)])
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(page, len(data), page):
        data[start] = 0x42  # no b-tree page has this type
    db.write_bytes(bytes(data))

    checks = list(check_store(StoreSettings(path=db)))

    assert checks[0].status is Status.FAIL
    assert "corrupt" in checks[0].message or "cannot be read" in checks[0].message


def test_no_database_yet_is_a_warning(db: Path) -> None:
    checks = list(check_store(StoreSettings(path=db)))

    assert [(c.status, c.message) for c in checks] == [(Status.WARN, f"no database at {db} yet")]


def test_a_schema_newer_than_this_touchpoint_fails(db: Path) -> None:
    make_store(db)
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 99")
    raw.close()

    checks = list(check_store(StoreSettings(path=db)))

    assert checks[0].status is Status.FAIL
    assert "schema version 99" in checks[0].message


def test_a_sqlite_file_that_is_no_store_fails(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE other (x)")
    raw.close()

    checks = list(check_store(StoreSettings(path=db)))

    assert checks[0].status is Status.FAIL
    assert "not a touchpoint store" in checks[0].message


def test_an_outbox_near_its_budget_warns(db: Path) -> None:
    now = time.time()
    make_store(db, [event(time=now) for _ in range(95)])

    checks = list(check_store(StoreSettings(path=db, max_events=100)))

    outbox = only(checks, "outbox")
    assert outbox.status is Status.WARN
    assert "95% of the budget" in outbox.message
    assert "evicted next" in outbox.message


def test_dead_letters_warn_with_their_reasons(db: Path) -> None:
    now = time.time()
    events = [event(time=now), event("request.booking", Priority.HIGH, time=now)]
    store, _ = Store.open(db)
    store.commit(events, {})
    store.dead_letter(events[0].id, "PUBACK 0x87 not authorised")
    store.close()

    outbox = only(list(check_store(StoreSettings(path=db))), "outbox")

    assert outbox.status is Status.WARN
    assert "1 dead letters" in outbox.message
    assert "PUBACK 0x87 not authorised" in outbox.message
    assert "touchpoint outbox" in (outbox.fix or "")


def test_the_store_is_read_while_the_daemon_holds_it(db: Path) -> None:
    store, _ = Store.open(db)
    try:
        store.commit([event(time=time.time())], {})
        checks = list(check_store(StoreSettings(path=db)))
        store.commit([event(time=time.time())], {})  # the doctor locked nothing
    finally:
        store.close()

    assert statuses(checks)["store"] is Status.OK
    assert "1 events waiting" in only(checks, "outbox").message


def test_reading_a_closed_store_leaves_no_files_behind(db: Path) -> None:
    make_store(db)

    list(check_store(StoreSettings(path=db)))

    assert sorted(p.name for p in db.parent.iterdir()) == ["touchpoint.db"]


# -- the clock ---------------------------------------------------------------------------


def test_a_clock_behind_the_last_trusted_time_went_backwards(db: Path) -> None:
    now = time.time()
    make_store(db, last_trusted=now + 3 * 86_400)

    clock = only(list(check_store(StoreSettings(path=db), now=now)), "clock")

    assert clock.status is Status.WARN
    assert "went backwards" in clock.message
    assert "3.0 days behind" in clock.message
    assert "NTP" in (clock.fix or "")


def test_no_trusted_time_yet_is_a_warning(db: Path) -> None:
    make_store(db)

    clock = only(list(check_store(StoreSettings(path=db))), "clock")

    assert clock.status is Status.WARN
    assert "no trusted time" in clock.message


def test_a_trusted_time_in_the_past_is_fine(db: Path) -> None:
    now = time.time()
    make_store(db, last_trusted=now - 600)

    clock = only(list(check_store(StoreSettings(path=db), now=now)), "clock")

    assert clock.status is Status.OK
    assert "10 min ago" in clock.message


def test_a_malformed_clock_section_is_reported_not_raised(db: Path) -> None:
    store, _ = Store.open(db)
    store.commit([], {"clock": '{"last_trusted": "yesterday"}'})
    store.close()

    clock = only(list(check_store(StoreSettings(path=db))), "clock")

    assert clock.status is Status.WARN
    assert "malformed" in clock.message


# -- CAN: files ----------------------------------------------------------------------------


def _can(tmp_path: Path, *, mapping: Path | None = None, dbc: Path | None = None,
         buses: list[BusSettings] | None = None) -> CanSettings:  # fmt: skip
    files = reference_files()
    return CanSettings(
        mapping=mapping or files.mapping,
        dbc=[DbcSettings(file=dbc or files.dbc)],
        buses=buses if buses is not None else [],
    )


def test_a_mapping_with_problems_fails_with_file_and_line(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "Vehicle.Speed:\n  dbc2vss: {signal: NO_SUCH_SIGNAL}\n"
        "Vehicle.Sped:\n  dbc2vss: {signal: NO_SUCH_SIGNAL}\n"
    )

    checks = list(check_can(_can(tmp_path, mapping=mapping)))

    failed = only(checks, "can.mapping")
    assert failed.status is Status.FAIL
    assert f"{mapping}:line 1: Vehicle.Speed: unknown DBC signal 'NO_SUCH_SIGNAL'" in failed.message
    assert f"{mapping}:line 3: Vehicle.Sped: unknown VSS path" in failed.message


def test_a_broken_dbc_fails_with_file_and_line(tmp_path: Path) -> None:
    dbc = tmp_path / "broken.dbc"
    dbc.write_text("BO_ nonsense\n")

    checks = list(check_can(_can(tmp_path, dbc=dbc)))

    assert only(checks, "can.dbc").status is Status.FAIL
    assert f"{dbc}:line 1: not a valid DBC file" in only(checks, "can.dbc").message
    assert only(checks, "can.mapping").status is Status.WARN  # not checkable without the DBC


@pytest.mark.parametrize(
    ("name", "content", "status"),
    [
        ("corrupt.blf", b"LOGG" + bytes(200), Status.FAIL),  # the daemon would refuse it
        ("missing.log", None, Status.FAIL),
        ("drive.log", b"(1.0) vcan0 123#00\n", Status.WARN),  # readable: a development set-up
    ],
)
def test_a_replay_is_checked_as_the_daemon_opens_it(
    tmp_path: Path, name: str, content: bytes | None, status: Status
) -> None:
    log = tmp_path / name
    if content is not None:
        log.write_bytes(content)
    settings = _can(tmp_path).model_copy(update={"replay": log})

    checks = list(check_can(settings))

    assert only(checks, "can.replay").status is status


def test_the_diagnostics_bus_must_be_configured(tmp_path: Path) -> None:
    bus = {"name": "can0", "interface": "virtual", "channel": "doctor-diag"}
    settings = CanSettings.model_validate(
        {**_can(tmp_path).model_dump(), "buses": [bus], "diagnostics": {"bus": "can9"}}
    )

    checks = list(check_can(settings))

    assert only(checks, "can.diagnostics").status is Status.FAIL


# -- CAN: socketcan interfaces in sysfs -------------------------------------------------------


def _interface(sysfs: Path, name: str, *, kind: int, flags: str, state: str = "up") -> None:
    device = sysfs / name
    device.mkdir(parents=True)
    (device / "type").write_text(f"{kind}\n")
    (device / "flags").write_text(f"{flags}\n")
    (device / "operstate").write_text(f"{state}\n")


@pytest.mark.parametrize(
    ("kind", "flags", "status", "words"),
    [
        (280, "0x1", Status.OK, "up (operstate up)"),
        (280, "0x0", Status.FAIL, "down"),
        (1, "0x1", Status.FAIL, "not a CAN interface (type 1)"),
    ],
)
def test_a_socketcan_interface_is_looked_up_in_sysfs(
    tmp_path: Path, kind: int, flags: str, status: Status, words: str
) -> None:
    sysfs = tmp_path / "net"
    _interface(sysfs, "can0", kind=kind, flags=flags)
    bus = BusSettings(name="can0", interface="socketcan", channel="can0")

    found = only(list(check_can(_can(tmp_path, buses=[bus]), sysfs=sysfs)), "can.can0")

    assert found.status is status
    assert words in found.message


def test_a_missing_socketcan_interface_fails_with_how_to_make_one(tmp_path: Path) -> None:
    bus = BusSettings(name="can0", interface="socketcan", channel="vcan0")

    found = only(list(check_can(_can(tmp_path, buses=[bus]), sysfs=tmp_path)), "can.can0")

    assert found.status is Status.FAIL
    assert "ip link add dev vcan0 type vcan" in (found.fix or "")


def test_a_bus_without_a_dbc_warns(tmp_path: Path) -> None:
    files = reference_files()
    settings = CanSettings(
        mapping=files.mapping,
        dbc=[DbcSettings(file=files.dbc, bus="can0")],
        buses=[BusSettings(name="body", interface="virtual", channel="doctor-body")],
    )

    found = only(list(check_can(settings)), "can.body")

    assert found.status is Status.WARN
    assert "not decoded" in found.message


# -- CAN: listening ---------------------------------------------------------------------------


def _mapped_ids() -> list[tuple[int, bool]]:
    files = reference_files()
    binding = bind(load_mapping(files.mapping), [load_dbc(files.dbc)])
    return binding.frame_ids_for_bus("can0")


@pytest.fixture
def sender() -> Iterator[tuple[str, list[tuple[int, bool]]]]:
    """A second node on a virtual channel sending the IDs put in the yielded list."""
    channel = f"doctor-listen-{time.monotonic_ns()}"
    ids: list[tuple[int, bool]] = []
    stop = threading.Event()

    def send() -> None:
        with can.Bus(interface="virtual", channel=channel) as node:
            while not stop.wait(0.005):
                for frame_id, extended in ids.copy():  # the test adds to it
                    node.send(can.Message(arbitration_id=frame_id, is_extended_id=extended,
                                          data=bytes(8)))  # fmt: skip

    thread = threading.Thread(target=send)
    thread.start()
    try:
        yield channel, ids
    finally:
        stop.set()
        thread.join()


def _listen(tmp_path: Path, channel: str) -> list[Check]:
    files = reference_files()
    binding = bind(load_mapping(files.mapping), [load_dbc(files.dbc)])
    bus = BusSettings(name="can0", interface="virtual", channel=channel)
    return list(listen_for_frames([bus], binding, 0.3))


def test_listening_sees_every_mapped_frame(
    tmp_path: Path, sender: tuple[str, list[tuple[int, bool]]]
) -> None:
    channel, ids = sender
    ids += _mapped_ids()

    checks = _listen(tmp_path, channel)

    found = only(checks, "can.listen.can0")
    assert found.status is Status.OK
    assert f"{len(ids)} of {len(ids)} mapped frame IDs seen" in found.message


def test_listening_names_the_mapped_frames_not_seen(
    tmp_path: Path, sender: tuple[str, list[tuple[int, bool]]]
) -> None:
    channel, ids = sender
    mapped = _mapped_ids()
    ids += mapped[1:]

    found = only(_listen(tmp_path, channel), "can.listen.can0")

    assert found.status is Status.WARN
    frame_id, extended = mapped[0]
    assert (f"0x{frame_id:08X}" if extended else f"0x{frame_id:03X}") in found.message


def test_listening_to_other_traffic_fails(
    tmp_path: Path, sender: tuple[str, list[tuple[int, bool]]]
) -> None:
    channel, ids = sender
    ids.append((0x7FF, False))

    found = only(_listen(tmp_path, channel), "can.listen.can0")

    assert found.status is Status.FAIL
    assert "none of what the DBC and mapping read" in found.message


def test_listening_to_a_silent_bus_fails(tmp_path: Path) -> None:
    found = only(_listen(tmp_path, "doctor-silent"), "can.listen.can0")

    assert found.status is Status.FAIL
    assert "no frame in 0.3 s" in found.message


# -- the policy file and the safety net --------------------------------------------------------


def test_the_bus_policy_file_is_looked_for_where_dbus_reads_it(tmp_path: Path) -> None:
    packaged, local = tmp_path / "usr", tmp_path / "etc"
    packaged.mkdir()
    local.mkdir()

    missing = _policy_check([packaged, local])
    (local / POLICY_FILE).write_text("<busconfig><policy>")
    broken = _policy_check([packaged, local])
    (local / POLICY_FILE).write_bytes((REPO / "systemd" / POLICY_FILE).read_bytes())
    installed = _policy_check([packaged, local])

    assert missing.status is Status.FAIL
    assert f"as {local / POLICY_FILE}" in (missing.fix or "")
    assert broken.status is Status.FAIL
    assert "XML" in broken.message
    assert installed.status is Status.OK


def test_a_check_that_raises_becomes_a_fail_after_what_it_found() -> None:
    def broken() -> Iterator[Check]:
        yield from check_store(StoreSettings(path=Path("/dev/null/x.db")))
        raise RuntimeError("surprise")

    checks = guarded("thing", broken)

    assert [(c.name, c.status) for c in checks] == [
        ("store", Status.FAIL),  # /dev/null is no directory
        ("thing", Status.FAIL),
    ]
    assert "RuntimeError: surprise" in checks[1].message


def test_the_tally_counts_the_findings(tmp_path: Path) -> None:
    checks = [
        *guarded("a", list),
        *check_store(StoreSettings(path=tmp_path / "x.db")),
    ]

    assert tally(checks) == "0 OK, 1 WARN, 0 FAIL"


def test_the_clock_sources_and_their_disagreement_with_the_system_clock(
    tmp_path: Path, db: Path
) -> None:
    now = time.time()
    make_store(db, last_trusted=now - 60,
               readings={"cloud": [now - 60, -420.0], "gnss": [now - 30, 2.0]})  # fmt: skip
    checks = diagnose(toml_config(tmp_path / "t.toml", store=db))
    sources = only(checks, "clock.sources")
    assert sources.status is Status.FAIL  # 7 minutes off the cloud's time: over 5
    assert "-420 s off the cloud time" in sources.message
    assert "gnss" in sources.message
    tolerant = toml_config(tmp_path / "u.toml", "[time]\nmax_disagreement_s = 600\n", store=db)
    assert only(diagnose(tolerant), "clock.sources").status is Status.OK
