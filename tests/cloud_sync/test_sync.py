"""Cloud sync end to end: a daemon, the private broker (mutual TLS, ACL), the reference cloud.

No mocks: the daemon's own store, the real paho thread, mosquitto with the shipped
configuration, and :class:`~cloud_sync.reference.cloud_sim.CloudSim` as the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from agent.clock import TimeSource
from agent.consent import Category
from agent.events import Event, Priority
from agent.settings import ConsentSettings, PolicySettings, StoreSettings, VehicleSettings
from agent.store.store import Store
from can_signals.update import SignalUpdate
from cloud_sync.contract import (
    Ack,
    DocumentKind,
    EventBatch,
    Status,
    Topics,
    WireEvent,
)
from cloud_sync.reference.cloud_sim import GROUP, CloudSim, Endpoint
from cloud_sync.reference.demo_content import demo_campaign
from cloud_sync.reference.pki import CLOUD_USER
from cloud_sync.settings import CloudSettings
from cloud_sync.signing import SigningKey
from tests.cloud_sync.conftest import Broker, new_vehicle_id
from tests.faketime import faked_environment
from touchpoint.daemon import Daemon
from touchpoint.settings import DaemonSettings

KEY: Final = SigningKey.generate("cloud-test")
CONSENTED: Final = dict.fromkeys(
    (Category.VEHICLE_HEALTH, Category.USAGE_ANALYTICS, Category.MARKETING), True
)
_instances = itertools.count(1)


def cloud_settings(broker: Broker, vehicle_id: str, **overrides: Any) -> CloudSettings:
    cert, key = broker.credentials(overrides.pop("common_name", vehicle_id))
    values: dict[str, Any] = {
        "host": broker.host, "port": broker.port, "ca_file": broker.pki.ca_cert,
        "cert_file": cert, "key_file": key, "signing_keys": {KEY.key_id: KEY.public_base64()},
        "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "keepalive_s": 10,
    }  # fmt: skip
    return CloudSettings(**(values | overrides))


def settings(store: Path, cloud: CloudSettings, vehicle_id: str) -> DaemonSettings:
    return DaemonSettings(
        vehicle=VehicleSettings(id=vehicle_id),
        store=StoreSettings(path=store),
        policy=PolicySettings(quiet_hours=None),
        consent=ConsentSettings(defaults=CONSENTED),
        cloud=cloud,
    )


@contextlib.contextmanager
def cloud(broker: Broker, **options: Any) -> Iterator[CloudSim]:
    cert, key = broker.credentials(CLOUD_USER)
    endpoint = Endpoint(broker.host, broker.cloud_port, broker.pki.ca_cert, cert, key)
    sim = CloudSim(endpoint, KEY, instance=f"test-{next(_instances)}", **options)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@contextlib.asynccontextmanager
async def car(store: Path, cloud_config: CloudSettings, vehicle_id: str) -> AsyncIterator[Daemon]:
    daemon = Daemon(settings(store, cloud_config, vehicle_id))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def make_events(count: int, *, start: float = 1_780_000_000.0) -> list[Event]:
    """Synthetic events of three priorities, interleaved (ids sort by time)."""
    priorities = (Priority.LOW, Priority.NORMAL, Priority.HIGH)
    return [
        Event(
            id=f"0190{i:028x}",
            type="drive.summary",
            category=Category.USAGE_ANALYTICS,
            time=start + i,
            time_trusted=True,
            boot_id="boot",
            seq=i,
            priority=priorities[i % 3],
            expires=None,
            payload={"n": i},
        )
        for i in range(count)
    ]


def prefill(store: Path, events: list[Event]) -> None:
    opened, _ = Store.open(store)
    try:
        for first in range(0, len(events), 1000):
            opened.commit(events[first : first + 1000], {})
    finally:
        opened.close()


def outbox_count(store: Path, ids: str = "%") -> int:
    with contextlib.closing(sqlite3.connect(store)) as db:
        query = "SELECT COUNT(*) FROM outbox WHERE id LIKE ?"
        return int(db.execute(query, (ids,)).fetchone()[0])


def test_events_queued_while_the_broker_is_down_arrive_in_priority_order_once(
    broker: Broker, tmp_path: Path
) -> None:
    vehicle = new_vehicle_id()
    events = make_events(300)
    store = tmp_path / "t.db"
    prefill(store, events)
    arrived: list[str] = []

    async def scenario() -> None:
        with cloud(broker, on_event=lambda _v, e: arrived.append(e.id)) as sim:
            broker.stop()
            # One message in flight: the order holds even if the car comes back before
            # the cloud's consumer has (mosquitto does not restore shared subscriptions
            # at a restart; the car then hears 0x10 and sends again later).
            config = cloud_settings(broker, vehicle, batch_events=50, window=1)
            async with car(store, config, vehicle) as d:
                await asyncio.sleep(1.0)  # offline: the car keeps trying
                assert d.cloud is not None
                assert not d.cloud.connected
                broker.start()
                ours = {e.id for e in events}
                await until(lambda: ours <= set(arrived), "every event at the cloud")
                # The car's own events are acknowledged too: count ours in the outbox.
                await until(lambda: outbox_count(store, "0190%") == 0, "the acks")
            assert sim.snapshot().duplicates == 0

    asyncio.run(scenario())
    mine = [i for i in arrived if i.startswith("0190")]
    assert len(mine) == len(set(mine)) == 300
    expected = sorted(events, key=lambda e: (-e.priority, e.time))
    assert mine == [e.id for e in expected]
    assert outbox_count(store, "0190%") == 0


def test_a_broker_stopped_mid_drain_and_a_killed_agent_lose_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    """Stop the broker in the middle of a large drain, SIGKILL the agent, restart both."""
    vehicle = new_vehicle_id()
    events = make_events(20_000)
    store = tmp_path / "t.db"
    prefill(store, events)
    config = tmp_path / "touchpoint.toml"
    cloud_config = cloud_settings(broker, vehicle, window=4)
    config.write_text(_toml(store, cloud_config, vehicle), encoding="utf-8")
    seen: set[str] = set()

    def start_daemon() -> subprocess.Popen[bytes]:
        log = (tmp_path / "daemon.log").open("ab")
        with log:
            return subprocess.Popen(
                [*_touchpoint(), "run", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    with cloud(broker, on_event=lambda _v, e: seen.add(e.id)) as sim:
        daemon = start_daemon()
        try:
            _wait(lambda: len(seen) >= 3_000, "the drain to get going", daemon)
            broker.stop()  # mid-drain: the car has messages in flight
            daemon.kill()
            daemon.wait(timeout=10)
            assert len(seen) < len(events), "the drain finished before the broker stopped"
            broker.start()
            daemon = start_daemon()
            ours = {e.id for e in events}
            _wait(
                lambda: ours <= seen and outbox_count(store, "0190%") == 0,
                "every event at the cloud and acknowledged",
                daemon,
                timeout=120,
            )
        finally:
            daemon.terminate()
            daemon.wait(timeout=20)
        stats = sim.snapshot()
    assert ours <= seen
    assert stats.by_vehicle[vehicle] == len(seen)  # each counted exactly once
    assert outbox_count(store, "0190%") == 0


def _touchpoint() -> list[str]:
    import sys  # noqa: PLC0415

    return [sys.executable, "-m", "touchpoint.cli"]


def _wait(
    condition: Callable[[], bool],
    what: str,
    process: subprocess.Popen[bytes],
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the daemon exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _toml(store: Path, cloud_config: CloudSettings, vehicle: str) -> str:
    def q(value: object) -> str:
        return json.dumps(str(value))

    keys = ", ".join(f"{q(k)} = {q(v)}" for k, v in cloud_config.signing_keys.items())
    return f"""
[vehicle]
id = {q(vehicle)}

[store]
path = {q(store)}

[consent.defaults]
usage_analytics = true
vehicle_health = true

[cloud]
host = {q(cloud_config.host)}
port = {cloud_config.port}
ca_file = {q(cloud_config.ca_file)}
cert_file = {q(cloud_config.cert_file)}
key_file = {q(cloud_config.key_file)}
window = {cloud_config.window}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
signing_keys = {{ {keys} }}
"""


def test_a_refused_publish_is_retried_then_dead_lettered_with_the_reason(
    broker: Broker, tmp_path: Path
) -> None:
    # The certificate names one car, the configuration another: the ACL refuses every
    # publish under the configured prefix (PUBACK 0x87, Not authorized).
    certified, configured = new_vehicle_id(), new_vehicle_id()
    store = tmp_path / "t.db"
    prefill(store, make_events(5))
    config = cloud_settings(broker, configured, common_name=certified, max_attempts=3)

    async def scenario() -> None:
        async with car(store, config, configured) as daemon:
            assert daemon.cloud is not None
            stats = daemon.cloud.stats
            await until(lambda: stats.events_dead_lettered >= 5, "dead letters")
            assert stats.events_refused >= 15  # 3 attempts each
            assert stats.events_acknowledged == 0
            assert "Not authorized" in (stats.last_refusal or "")

    asyncio.run(scenario())
    with contextlib.closing(sqlite3.connect(store)) as db:
        rows = db.execute("SELECT id, reason, attempts FROM dead_letter").fetchall()
    synthetic = [r for r in rows if r[0].startswith("0190")]
    assert len(synthetic) == 5
    assert all("Not authorized" in reason and attempts == 3 for _, reason, attempts in synthetic)


PARK: Final = (("Vehicle.Speed", 0.0), ("Vehicle.Powertrain.Transmission.SelectedGear", 126))
OIL_DUE_SOON: Final = (("Vehicle.TraveledDistance", 14_600_000),)


async def feed(daemon: Daemon, *pairs: tuple[str, object]) -> None:
    batch = [SignalUpdate(p, v, None, 0.0, "can0") for p, v in pairs]  # type: ignore[arg-type]
    await daemon.apply(lambda a, w, m: a.on_signals(batch, w, m))


def test_a_booking_made_offline_is_answered_after_the_reconnect(
    broker: Broker, tmp_path: Path
) -> None:
    vehicle = new_vehicle_id()

    async def scenario() -> None:
        with cloud(broker) as sim:
            async with car(tmp_path / "t.db", cloud_settings(broker, vehicle), vehicle) as d:
                # The cloud's documents arrive first (the history the card is built on).
                await until(lambda: "service_history" in d.agent.document_versions, "documents")
                broker.stop()
                await until(lambda: d.cloud is not None and not d.cloud.connected, "offline")
                await feed(d, *PARK, *OIL_DUE_SOON)
                card = d.agent.cards.by_key("maintenance")
                assert card is not None
                await d.apply(lambda a, w, m: a.on_action(card.id, "book", {}, w, m))
                await asyncio.sleep(0.5)
                assert d.agent.booking_slots(card.id) is None  # nobody to answer
                broker.start()
                await until(lambda: d.agent.booking_slots(card.id) is not None, "slots")
                slots = d.agent.booking_slots(card.id)
                assert slots
                await d.apply(lambda a, w, m: a.request_booking(card.id, slots[0].id, w, m))
                await until(lambda: d.agent.cards.by_key("booking:maintenance") is not None,
                            "the confirmation card")  # fmt: skip
                confirmed = d.agent.cards.by_key("booking:maintenance")
                assert confirmed is not None
                assert confirmed.title.en == "Service booked"
            assert sim.snapshot().answered >= 2

    asyncio.run(scenario())


def test_forged_and_replayed_documents_through_the_broker_change_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    vehicle = new_vehicle_id()
    forger = SigningKey.generate(KEY.key_id)  # same key id, different key

    async def scenario() -> None:
        with cloud(broker, documents=False) as sim:
            async with car(tmp_path / "t.db", cloud_settings(broker, vehicle), vehicle) as d:
                await until(lambda: d.cloud is not None and d.cloud.connected, "connected")
                sim.publish_document(vehicle, DocumentKind.WALLET, {"tier": "gold"}, version=5)
                await until(lambda: d.agent.document_versions.get("wallet") == 5, "wallet 5")
                # A forgery, an older version, and the same version again.
                real, sim.key = sim.key, forger
                sim.publish_document(vehicle, DocumentKind.WALLET, {"tier": "forged"}, version=9)
                sim.key = real
                sim.publish_document(vehicle, DocumentKind.WALLET, {"tier": "old"}, version=4)
                assert d.cloud is not None
                await until(lambda: d.cloud is not None and d.cloud.stats.documents_rejected >= 2,
                            "two rejections")  # fmt: skip
                assert d.agent.wallet is not None
                assert d.agent.wallet.tier == "gold"
                assert d.agent.document_versions["wallet"] == 5
                await until(lambda: sim.snapshot().by_type["downlink.rejected"] >= 2,
                            "the rejections reported to the cloud")  # fmt: skip

    asyncio.run(scenario())


def test_events_whose_consent_was_withdrawn_offline_are_not_sent(
    broker: Broker, tmp_path: Path
) -> None:
    vehicle = new_vehicle_id()
    store = tmp_path / "t.db"
    prefill(store, make_events(30))
    arrived: list[str] = []

    async def scenario() -> None:
        with cloud(broker, on_event=lambda _v, e: arrived.append(e.type)) as sim:
            broker.stop()
            async with car(store, cloud_settings(broker, vehicle), vehicle) as d:
                await d.apply(
                    lambda a, w, m: a.set_consent(
                        Category.USAGE_ANALYTICS, granted=False, valid_for=None, wall=w, monotonic=m
                    )
                )
                broker.start()
                await until(lambda: "consent.changed" in arrived, "the consent record")
                await until(lambda: d.store.outbox_count == 0, "an empty outbox")
                assert d.cloud is not None
                assert d.cloud.stats.events_withheld >= 30
            assert sim.snapshot().by_type["drive.summary"] == 0

    asyncio.run(scenario())


def test_mosquitto_sub_sees_the_events_as_the_contract_describes(
    broker: Broker, tmp_path: Path
) -> None:
    """Clients nobody here wrote, as the cloud: mosquitto_sub sees the car's events, and
    only once mosquitto_pub acknowledges their batch does the car delete them."""
    vehicle = new_vehicle_id()
    store = tmp_path / "t.db"
    prefill(store, make_events(20))
    cert, key = broker.credentials(CLOUD_USER)
    binary = Path(broker.binary).with_name("mosquitto_sub")
    if not binary.exists():
        binary = Path("/usr/bin/mosquitto_sub")
    tls = ["-h", broker.host, "-p", str(broker.cloud_port), "-V", "mqttv5",
           "--cafile", str(broker.pki.ca_cert), "--cert", str(cert), "--key", str(key)]  # fmt: skip
    topics = Topics(vehicle)
    sub = subprocess.Popen(
        [str(binary), *tls, "-i", f"sub-{vehicle}", "-t", f"{topics.root}/#", "-F", "%t\t%p",
         "-W", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)  # subscribed
    lines: list[list[str]] = []

    def first_batch() -> EventBatch:
        assert sub.stdout is not None
        for line in sub.stdout:
            topic, _, payload = line.rstrip("\n").partition("\t")
            lines.append([topic, payload])
            if topic == topics.events:
                return EventBatch.model_validate_json(payload)
        raise AssertionError("mosquitto_sub saw no batch")

    async def scenario() -> None:
        async with car(store, cloud_settings(broker, vehicle), vehicle):
            batch = await asyncio.get_running_loop().run_in_executor(None, first_batch)
            await asyncio.sleep(1.0)
            # The broker has them; the cloud said nothing: they stay.
            assert outbox_count(store, "0190%") == 20
            assert {e.id for e in batch.events} >= {e.id for e in make_events(20)}
            ack = Ack(batches=[batch.batch_id], sent_at=time.time()).model_dump_json()
            publish = [str(binary.with_name("mosquitto_pub")), *tls, "-i", f"pub-{vehicle}",
                       "-t", topics.ack, "-q", "1", "-m", ack]  # fmt: skip
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: subprocess.run(publish, check=True, timeout=10)
            )
            await until(lambda: outbox_count(store, "0190%") == 0, "the batch deleted")

    try:
        asyncio.run(scenario())
    finally:
        sub.terminate()
        out, err = sub.communicate(timeout=10)
    lines += [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
    assert lines, f"mosquitto_sub printed nothing: {err}"
    events = []
    for topic, payload in lines:
        if topic == topics.events:
            batch = EventBatch.model_validate_json(payload)
            assert batch.vehicle_id == vehicle
            events += batch.events
        elif topic == topics.status:
            Status.model_validate_json(payload)
    synthetic = [e for e in events if e.id.startswith("0190")]
    assert len({e.id for e in synthetic}) == 20
    assert {topics.status, topics.events} <= {t for t, _ in lines}


def test_the_car_takes_the_clouds_time_from_the_clock_exchange(
    broker: Broker, tmp_path: Path
) -> None:
    """The cloud's time (here 400 s ahead of this machine's) becomes the agent's clock."""
    vehicle = new_vehicle_id()

    async def scenario() -> None:
        with cloud(broker, clock_skew_s=400.0) as sim:
            async with car(tmp_path / "t.db", cloud_settings(broker, vehicle), vehicle) as d:
                await until(lambda: d.agent.clock.trusted, "a trusted clock")
                assert d.agent.clock.source is TimeSource.CLOUD
                now = d.agent.clock.read(time.time(), time.monotonic())
                assert abs(now.wall - (time.time() + 400.0)) < 2.0
                assert d.cloud is not None
                assert d.cloud.stats.clock_readings >= 1
        assert sim.snapshot().acks >= 1  # and what the car sent was acknowledged

    asyncio.run(scenario())


def test_a_batch_the_cloud_never_acknowledges_is_sent_again(broker: Broker, tmp_path: Path) -> None:
    """A consumer that takes events and never says it stored them: nothing is deleted,
    and after the ack timeout the same events go out again (the cloud drops duplicates)."""
    vehicle = new_vehicle_id()
    store = tmp_path / "t.db"
    prefill(store, make_events(30))
    received: list[str] = []

    async def scenario() -> None:
        with cloud(broker, on_event=lambda _v, e: received.append(e.id)) as sim:
            sim.acknowledge = False
            config = cloud_settings(broker, vehicle, ack_timeout_s=1.0)
            async with car(store, config, vehicle):
                await until(lambda: len(received) >= 30, "the events at the cloud")
                await asyncio.sleep(2.5)
                assert outbox_count(store, "0190%") == 30  # never acknowledged: all kept
                sim.acknowledge = True
                await until(lambda: outbox_count(store, "0190%") == 0, "the events acknowledged")
            stats = sim.snapshot()
        assert stats.duplicates >= 30  # they did come again
        assert len(set(received)) == len(received) >= 30  # handed on once each

    asyncio.run(scenario())


@pytest.mark.parametrize("fake", ["2099-01-01 00:00:00", "2014-03-01 00:00:00"])
def test_a_car_whose_clock_is_far_off_still_reaches_the_cloud_and_learns_the_time(
    broker: Broker, tmp_path: Path, fake: str
) -> None:
    """The daemon's system clock (and only the daemon's) says 2099, or 2014: OpenSSL
    would call the broker's certificate expired, or not yet valid. The car checks it
    against its clock floor instead, connects, and takes the cloud's time."""
    vehicle = new_vehicle_id()
    store = tmp_path / "t.db"
    config = tmp_path / "touchpoint.toml"
    config.write_text(_toml(store, cloud_settings(broker, vehicle), vehicle), encoding="utf-8")
    received: list[WireEvent] = []
    environment = faked_environment(fake)
    log = tmp_path / "daemon.log"
    with cloud(broker, on_event=lambda _v, e: received.append(e)) as sim, log.open("wb") as err:
        daemon = subprocess.Popen(
            [*_touchpoint(), "--log-level", "INFO", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err, env=environment,
        )  # fmt: skip
        try:
            _wait(lambda: any(e.time_trusted for e in received), "a trusted event", daemon)
        except AssertionError as failed:
            raise AssertionError(log.read_text(encoding="utf-8")) from failed
        finally:
            daemon.terminate()
            daemon.wait(timeout=20)
        assert sim.snapshot().acks >= 1
    trusted = [e for e in received if e.time_trusted]
    assert all(abs(e.time - time.time()) < 120 for e in trusted)
    assert any(e.type == "clock.trusted" for e in received)


def test_a_car_loses_nothing_and_resends_nothing_while_a_rogue_car_tries_the_clouds_group(
    broker: Broker, tmp_path: Path
) -> None:
    """The hijack replayed with a real car: 200 events in 20 batches while another car's
    certificate tries to join the reference cloud's shared group. Each batch is
    acknowledged at its first send, well inside the ack timeout: the broker handed none
    of them to the rogue (which acl_file did: half of the batches then waited 30 s to be
    sent again)."""
    vehicle, rogue = new_vehicle_id(), new_vehicle_id("rogue")
    store = tmp_path / "t.db"
    prefill(store, make_events(200))
    received: list[str] = []

    async def scenario() -> None:
        with cloud(broker, on_event=lambda _v, e: received.append(e.id)) as sim:
            with broker.client(rogue) as intruder:
                refusals = [
                    intruder.subscribe(f"$share/{GROUP}/tp/v2/+/{rest}")[0].value
                    for rest in ("events", "req/+", "clock")
                ]
                config = cloud_settings(broker, vehicle, batch_events=10)
                async with car(store, config, vehicle):
                    await until(lambda: outbox_count(store, "0190%") == 0, "200 acknowledged",
                                within=15)  # fmt: skip
                assert intruder.messages == []
            snapshot = sim.snapshot()
        assert refusals == [0x87] * 3
        assert snapshot.duplicates == 0  # nothing had to be sent again
        assert snapshot.by_vehicle[vehicle] >= 200

    asyncio.run(scenario())
    mine = [i for i in received if i.startswith("0190")]
    assert len(mine) == len(set(mine)) == 200
    assert outbox_count(store, "0190%") == 0


@pytest.mark.parametrize(
    ("column", "rotten"),
    [("payload", '{"n": 5'), ("time", -5.0), ("time", 1e300), ("type", "drive.sum\x00mary")],
    ids=["payload", "negative-time", "huge-time", "type"],
)
def test_a_rotten_row_is_a_dead_letter_and_the_rest_of_its_batch_goes_out(
    broker: Broker, tmp_path: Path, column: str, rotten: object
) -> None:
    """A payload a bad page turned to garbage passes quick_check: the batch it sits in
    must not be refused whole by the cloud (and then deleted, or sent for ever)."""
    vehicle = new_vehicle_id()
    store = tmp_path / "t.db"
    events = make_events(11)
    prefill(store, events)
    bad = events[5].id
    with contextlib.closing(sqlite3.connect(store)) as db:
        db.execute(f"UPDATE outbox SET {column} = ? WHERE id = ?", (rotten, bad))
        db.commit()
    arrived: list[str] = []

    async def scenario() -> None:
        with cloud(broker, on_event=lambda _v, e: arrived.append(e.id)):
            async with car(store, cloud_settings(broker, vehicle), vehicle):
                # Drained: the cloud acknowledged every batch, which it does only for a
                # batch it could parse and store (a malformed one it drops unacknowledged).
                await until(lambda: outbox_count(store, "0190%") == 0, "the outbox drained")

    asyncio.run(scenario())
    assert sorted(i for i in arrived if i.startswith("0190")) == sorted(
        e.id for e in events if e.id != bad
    )
    with contextlib.closing(sqlite3.connect(store)) as db:
        dead = db.execute("SELECT id, reason FROM dead_letter").fetchall()
    assert [i for i, _ in dead] == [bad]
    assert dead[0][1].startswith("corrupt row: ")


def test_a_cloud_instance_that_stops_while_its_connection_is_down_leaves_the_group(
    broker: Broker, tmp_path: Path
) -> None:
    """An instance that could not say goodbye (its connection had dropped, or its
    DISCONNECT was still queued when its network thread stopped) left its persistent
    session in the shared group: the broker queued a share of every car's events for it,
    and the cars waited 30 s to send them again. Stopping ends the session even then."""
    cert, key = broker.credentials(CLOUD_USER)
    endpoint = Endpoint(broker.host, broker.cloud_port, broker.pki.ca_cert, cert, key)
    gone = CloudSim(endpoint, KEY, instance=f"test-{next(_instances)}")
    gone.start()
    # Its network thread ends and its socket closes with no DISCONNECT sent, as when
    # loop_stop came before paho wrote the queued one.
    gone.client.loop_stop()
    connection = gone.client.socket()
    assert connection is not None
    connection.close()
    gone.stop()
    vehicle = new_vehicle_id()
    store = tmp_path / "t.db"
    prefill(store, make_events(60))

    async def scenario() -> None:
        with cloud(broker) as sim:
            async with car(store, cloud_settings(broker, vehicle, batch_events=5), vehicle):
                await until(lambda: outbox_count(store, "0190%") == 0, "60 acknowledged",
                            within=15)  # fmt: skip
            snapshot = sim.snapshot()
        assert snapshot.duplicates == 0  # each batch acknowledged at its first send

    asyncio.run(scenario())


def test_the_kill_switch_closes_a_campaign_in_one_message_and_a_new_rule_set_keeps_it_stopped(
    broker: Broker, tmp_path: Path
) -> None:
    vehicle = new_vehicle_id()
    campaign = "campaign.partner-chargers"
    soc = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
    took: list[float] = []

    def campaign_cards(d: Daemon) -> list[str]:
        return [c.id for c in d.agent.cards.visible if (c.rule or "").startswith(campaign)]

    async def scenario() -> None:
        with cloud(broker) as sim:
            async with car(tmp_path / "t.db", cloud_settings(broker, vehicle), vehicle) as d:
                await until(lambda: d.agent.rules.cloud_version is not None, "the campaign")
                await feed(d, *PARK, (soc, 30.0))
                await feed(d, (soc, 20.0))
                await until(lambda: bool(campaign_cards(d)), "the campaign's card")
                sent = time.monotonic()
                assert sim.stop_rules([campaign]) == 1
                await until(lambda: not campaign_cards(d), "the card withdrawn")
                took.append(time.monotonic() - sent)
                newer = demo_campaign(7).model_dump(mode="json", by_alias=True)
                sim.publish_document(vehicle, DocumentKind.RULES, newer, version=7)
                await until(lambda: d.agent.rules.cloud_version == 7, "the new rule set")
                assert d.agent.rules.stopped == {campaign}
                await feed(d, (soc, 30.0))
                await feed(d, (soc, 20.0))
                assert not campaign_cards(d)

    asyncio.run(scenario())
    assert took[0] < 5.0
