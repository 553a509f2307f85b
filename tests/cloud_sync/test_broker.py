"""The reference broker configuration, against a real Mosquitto: TLS, identities, ACL.

These pin what Mosquitto 2.0 really does, since the cloud-sync code relies on it: on
the cars' listener (the dynamic-security plugin) a subscription outside the car's own
downlink is refused with SUBACK 0x87, the cloud's listener lets no car certificate in,
a refused QoS 1 publish gets PUBACK 0x87, a refused QoS 0 publish vanishes without a
word.
"""

from __future__ import annotations

import datetime as dt
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync.contract import (
    CHANNELS,
    RESERVED_IDS,
    DocumentKind,
    EventBatch,
    RequestName,
    Topics,
    WireEvent,
    channel_filter,
)
from cloud_sync.reference import dynsec
from cloud_sync.reference.cloud_sim import GROUP, CloudSim, Endpoint
from cloud_sync.reference.pki import (
    CLOUD_USER,
    DevPki,
    ServerFiles,
    render_acl,
    render_broker_config,
)
from cloud_sync.signing import SigningKey
from tests.cloud_sync.conftest import Broker, MqttPeer, Will, new_vehicle_id, running_broker

Peers = Callable[..., MqttPeer]

GRANTED_QOS_1 = 1
SUCCESS = 0x00
#: What a QoS 1 PUBACK says when the publish was accepted but nobody subscribes.
NO_MATCHING_SUBSCRIBERS = 0x10
NOT_AUTHORIZED = 0x87


def code(reason: ReasonCode | None) -> int | None:
    """The numeric value of a reason code."""
    return None if reason is None else reason.value


# -- TLS and identities ------------------------------------------------------------------


def test_mutual_tls_carries_events_up_and_documents_down(peers: Peers) -> None:
    car = new_vehicle_id()
    topics = Topics(car)
    cloud = peers(CLOUD_USER)
    assert code(cloud.subscribe("tp/v2/+/events")[0]) == GRANTED_QOS_1
    vehicle = peers(car)
    assert code(vehicle.subscribe(topics.config_filter)[0]) == GRANTED_QOS_1

    assert code(vehicle.publish(topics.events, b'{"n": 1}')) == SUCCESS
    assert (
        code(cloud.publish(topics.config(DocumentKind.RULES), b'{"doc": 1}', retain=True))
        == SUCCESS
    )

    [up] = cloud.wait_for_messages(1)
    assert (up.topic, up.payload) == (topics.events, b'{"n": 1}')
    [down] = vehicle.wait_for_messages(1)
    assert (down.topic, down.payload) == (topics.config(DocumentKind.RULES), b'{"doc": 1}')


def test_the_client_id_is_the_certificates_name_on_the_vehicles_listener(peers: Peers) -> None:
    victim, intruder = new_vehicle_id(), new_vehicle_id()
    cloud = peers(CLOUD_USER)
    real = peers(victim)
    real.subscribe(Topics(victim).cards)

    # Without use_username_as_clientid this would take over the victim's session and
    # disconnect it.
    peers(intruder, client_id=victim)

    assert real.wait_for_disconnect(0.5) is None
    cloud.publish(Topics(victim).cards, b"card")
    assert [m.payload for m in real.wait_for_messages(1)] == [b"card"]


def test_a_vehicle_certificate_cannot_reach_the_clouds_listener(broker: Broker) -> None:
    """There a car could pick any client id (a session takeover) or join the cloud's
    shared group, which acl_file cannot refuse: the listener trusts the cloud's CA only."""
    car = new_vehicle_id()
    context = broker.tls_context(car)

    assert broker.tls_refusal(context, port=broker.cloud_port) == "TLSV1_ALERT_UNKNOWN_CA"
    assert not broker.attempt(context, port=broker.cloud_port, client_id=car).accepted
    # ...while the same certificate gets in on the cars' listener.
    assert broker.attempt(context).accepted


def test_tls_1_2_is_accepted(broker: Broker) -> None:
    context = broker.tls_context(new_vehicle_id())
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert broker.attempt(context).accepted


@pytest.mark.parametrize("listener", ["vehicles", "cloud"])
def test_a_client_without_a_certificate_is_refused(broker: Broker, listener: str) -> None:
    port = broker.port if listener == "vehicles" else broker.cloud_port
    context = broker.tls_context(None)

    assert broker.tls_refusal(context, port=port) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    attempt = broker.attempt(context, port=port)
    assert not attempt.accepted
    assert attempt.connack is None


def test_plain_tcp_gets_no_mqtt_session_on_a_tls_listener(broker: Broker) -> None:
    attempt = broker.attempt(None, username=new_vehicle_id(), timeout=1.0)
    assert attempt.connack is None
    assert not attempt.accepted


def test_a_certificate_from_another_ca_is_refused(broker: Broker, tmp_path: Path) -> None:
    rogue = DevPki.create(tmp_path / "rogue")
    car = new_vehicle_id()
    context = broker.tls_context(None, certificate=rogue.issue_client(car))

    assert broker.tls_refusal(context) == "TLSV1_ALERT_UNKNOWN_CA"
    assert broker.tls_refusal(context, port=broker.cloud_port) == "TLSV1_ALERT_UNKNOWN_CA"
    assert not broker.attempt(context).accepted
    # ...while the same name from the right CA is let in.
    assert broker.attempt(broker.tls_context(car)).accepted


def test_an_expired_certificate_is_refused(broker: Broker) -> None:
    car = new_vehicle_id()
    two_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    files = broker.pki.issue_client(car, validity=dt.timedelta(hours=1), not_before=two_hours_ago)

    refusal = broker.tls_refusal(broker.tls_context(None, certificate=files))

    assert refusal == "SSLV3_ALERT_CERTIFICATE_EXPIRED"


def test_a_revoked_certificate_is_refused_after_a_reload(broker: Broker) -> None:
    stolen, other = new_vehicle_id("stolen"), new_vehicle_id()
    context = broker.tls_context(stolen)
    assert broker.attempt(context).accepted

    broker.pki.revoke(broker.credentials(stolen)[0])
    broker.reload()

    assert broker.tls_refusal(context) == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert not broker.attempt(context).accepted
    assert broker.attempt(broker.tls_context(other)).accepted


def test_the_servers_certificate_cannot_log_in_as_a_client(broker: Broker) -> None:
    # Its extended key usage is serverAuth only. OpenSSL sends no alert for this one,
    # it just closes.
    context = broker.tls_context(None, certificate=(broker.pki.server_cert, broker.pki.server_key))
    assert not broker.attempt(context).accepted


# -- ACL: publishing ----------------------------------------------------------------------

CAR, OTHER = "{car}", "{other}"
#: Nobody subscribes to these fresh topics, so an accepted publish gets 0x10, not 0x00.
ALLOWED = NO_MATCHING_SUBSCRIBERS
PUBLISH_CASES = [
    # A vehicle writes its own uplink...
    (CAR, "tp/v2/{car}/events", ALLOWED),
    (CAR, "tp/v2/{car}/status", ALLOWED),
    (CAR, "tp/v2/{car}/req/booking", ALLOWED),
    # ...but not its downlink (no forged documents, replies or cards)...
    (CAR, "tp/v2/{car}/config/rules", NOT_AUTHORIZED),
    (CAR, "tp/v2/{car}/res/booking", NOT_AUTHORIZED),
    (CAR, "tp/v2/{car}/cards", NOT_AUTHORIZED),
    # ...and nothing of another vehicle's, nor outside its prefix.
    (CAR, "tp/v2/{other}/events", NOT_AUTHORIZED),
    (CAR, "tp/v2/{other}/status", NOT_AUTHORIZED),
    (CAR, "tp/v2/{other}/req/booking", NOT_AUTHORIZED),
    (CAR, "tp/v2/{car}", NOT_AUTHORIZED),
    (CAR, "tp/v2/{car}/other", NOT_AUTHORIZED),
    (CAR, "elsewhere", NOT_AUTHORIZED),
    # The cloud writes every vehicle's downlink...
    (CLOUD_USER, "tp/v2/{car}/config/rules", ALLOWED),
    (CLOUD_USER, "tp/v2/{car}/res/booking", ALLOWED),
    (CLOUD_USER, "tp/v2/{car}/cards", ALLOWED),
    # ...but cannot pose as a vehicle, not even one called "cloud".
    (CLOUD_USER, "tp/v2/{car}/events", NOT_AUTHORIZED),
    (CLOUD_USER, "tp/v2/{car}/status", NOT_AUTHORIZED),
    (CLOUD_USER, "tp/v2/{car}/req/booking", NOT_AUTHORIZED),
    (CLOUD_USER, "tp/v2/cloud/events", NOT_AUTHORIZED),
    (CLOUD_USER, "tp/v2/cloud/config/rules", NOT_AUTHORIZED),
]


@pytest.mark.parametrize(("who", "topic", "expected"), PUBLISH_CASES)
def test_a_qos_1_publish_is_acknowledged_with_the_acl_verdict(
    peers: Peers, who: str, topic: str, expected: int
) -> None:
    car, other = new_vehicle_id(), new_vehicle_id()
    publisher = peers(car if who == CAR else who)

    reason = publisher.publish(topic.format(car=car, other=other), b"x", qos=1)

    assert code(reason) == expected


@pytest.mark.parametrize("qos", [0, 1])
def test_a_publish_under_another_vehicles_prefix_is_not_delivered(peers: Peers, qos: int) -> None:
    attacker, victim = new_vehicle_id(), new_vehicle_id()
    cloud = peers(CLOUD_USER)
    for topic_filter in ("tp/v2/+/events", "tp/v2/+/status", "tp/v2/+/req/#"):
        cloud.subscribe(topic_filter)
    car = peers(attacker)
    victims = Topics(victim)

    reasons = [
        car.publish(topic, b"forged", qos=qos)
        for topic in (victims.events, victims.status, victims.request(RequestName.BOOKING))
    ]
    # One allowed message after the forged ones: once it arrives, they would have too.
    car.publish(Topics(attacker).events, b"sentinel", qos=1)

    [arrived] = cloud.wait_for_messages(1)
    time.sleep(0.1)
    assert [m.payload for m in cloud.messages] == [b"sentinel"]
    assert arrived.topic == Topics(attacker).events
    # QoS 0 has no acknowledgement to carry the refusal: the client cannot tell.
    assert [code(r) for r in reasons] == ([None] * 3 if qos == 0 else [NOT_AUTHORIZED] * 3)


# -- ACL: subscribing and reading ---------------------------------------------------------


def test_a_vehicle_may_subscribe_to_its_own_downlink_only(peers: Peers) -> None:
    snoop, victim = new_vehicle_id(), new_vehicle_id()
    spy = peers(snoop)
    mine = Topics(snoop)
    own = [mine.config_filter, mine.response_filter, mine.cards, mine.ack, mine.clock_reply]
    foreign = [
        f"tp/v2/{victim}/config/#", f"tp/v2/{victim}/res/#", f"tp/v2/{victim}/cards",
        f"tp/v2/{victim}/events", f"tp/v2/{snoop}/events", f"tp/v2/{snoop}/#", "tp/v2/#", "#",
        "$SYS/#", "$CONTROL/dynamic-security/v1/response",
    ]  # fmt: skip
    # The plugin judges the SUBSCRIBE itself (acl_file granted every one of these).
    assert [code(spy.subscribe(f)[0]) for f in own] == [GRANTED_QOS_1] * len(own)
    assert [code(spy.subscribe(f)[0]) for f in foreign] == [NOT_AUTHORIZED] * len(foreign)
    target = peers(victim)
    target.subscribe(f"tp/v2/{victim}/#")  # refused too: the victim gets nothing this way
    for topic_filter in Topics(victim).config_filter, Topics(victim).cards:
        assert code(target.subscribe(topic_filter)[0]) == GRANTED_QOS_1
    cloud = peers(CLOUD_USER)
    victims = Topics(victim)

    sent = [victims.config(DocumentKind.RULES), victims.cards]
    for topic in sent:
        assert code(cloud.publish(topic, b"private")) == SUCCESS
    # A message the snoop may read, sent after the others by the same publisher: the
    # broker delivers one publisher's messages in order, so nothing else came before.
    cloud.publish(mine.cards, b"sentinel")

    assert sorted(m.topic for m in target.wait_for_messages(2)) == sorted(sent)
    spy.wait_for_messages(1)
    time.sleep(0.1)
    assert [m.payload for m in spy.messages] == [b"sentinel"]


def test_a_certificate_the_broker_does_not_know_connects_but_may_do_nothing(
    broker: Broker,
) -> None:
    """A car is registered when it is provisioned; a certificate alone grants no topic."""
    stranger = new_vehicle_id("unregistered")
    files = broker.pki.issue_client(stranger)  # issued, but never registered
    own = Topics(stranger)
    with broker.client(stranger, certificate=files) as client:
        assert code(client.subscribe(own.cards)[0]) == NOT_AUTHORIZED
        assert code(client.publish(own.events, b"x")) == NOT_AUTHORIZED


def test_a_will_on_another_vehicles_status_is_accepted_but_never_published(
    peers: Peers, broker: Broker
) -> None:
    attacker, victim = new_vehicle_id(), new_vehicle_id()
    peers(victim).publish(Topics(victim).status, b"online", retain=True)
    cloud = peers(CLOUD_USER)
    cloud.subscribe("tp/v2/+/status")
    cloud.wait_for_messages(1)  # the retained "online"

    # Mosquitto checks a will's topic when it sends it, not at CONNECT.
    forger = peers(attacker, will=Will(Topics(victim).status, b"offline"))
    forger.close(with_will=True)
    honest = peers(attacker, will=Will(Topics(attacker).status, b"offline"))
    honest.close(with_will=True)

    cloud.wait_for_messages(2)
    time.sleep(0.1)
    assert [(m.topic, m.payload) for m in cloud.messages[1:]] == [
        (Topics(attacker).status, b"offline")
    ]
    with broker.client(CLOUD_USER) as fresh:
        fresh.subscribe(Topics(victim).status)
        assert [m.payload for m in fresh.wait_for_messages(1)] == [b"online"]


# -- shared subscriptions ----------------------------------------------------------------


def _publish_events(peers: Peers, cars: int, each: int) -> set[bytes]:
    sent = set()
    for _ in range(cars):
        car = new_vehicle_id()
        vehicle = peers(car)
        for n in range(each):
            payload = f"{car}/{n}".encode()
            assert code(vehicle.publish(Topics(car).events, payload)) == SUCCESS
            sent.add(payload)
    return sent


def test_cloud_consumers_share_the_load_of_a_shared_subscription(peers: Peers) -> None:
    consumers = [peers(CLOUD_USER) for _ in range(2)]
    for consumer in consumers:
        assert code(consumer.subscribe("$share/cloud/tp/v2/+/events")[0]) == GRANTED_QOS_1

    sent = _publish_events(peers, cars=2, each=10)

    _wait_for_total(consumers, len(sent))
    received = [[m.payload for m in c.messages] for c in consumers]
    assert all(received), "both consumers get a share"
    assert sorted(received[0] + received[1]) == sorted(sent), "each event exactly once"


def test_a_vehicle_subscribing_to_the_clouds_shared_group_is_refused_and_gets_nothing(
    peers: Peers,
) -> None:
    """Under acl_file the broker granted this and then dropped the intruder's turns of the
    round robin: the cloud lost a third of the events here (pinned until this fix)."""
    group = f"cloud-{new_vehicle_id('group')}"
    consumers = [peers(CLOUD_USER) for _ in range(2)]
    for consumer in consumers:
        assert code(consumer.subscribe(f"$share/{group}/tp/v2/+/events")[0]) == GRANTED_QOS_1
    rogue = new_vehicle_id("rogue")
    intruder = peers(rogue)
    attempts = [
        f"$share/{group}/tp/v2/+/events",
        f"$share/{group}/tp/v2/{rogue}/events",  # even its own events, shared
        f"$share/{group}/tp/v2/#",
        f"$share/{group}-guess/tp/v2/+/events",
        f"$share/{group}/{Topics(rogue).cards}",
    ]
    refusals = [code(intruder.subscribe(f)[0]) for f in attempts]

    sent = _publish_events(peers, cars=1, each=30)

    _wait_for_total(consumers, len(sent))
    time.sleep(0.2)
    assert sum(len(c.messages) for c in consumers) == len(sent), "no event lost"
    assert intruder.messages == []
    assert refusals == [NOT_AUTHORIZED] * len(attempts)


def _batch(vehicle_id: str, n: int) -> bytes:
    event = WireEvent(
        id=f"{vehicle_id}-{n:04d}", type="drive.summary", category="usage_analytics",
        time=1_780_000_000.0 + n, time_trusted=True, boot_id="boot", seq=n, payload={"n": n},
    )  # fmt: skip
    batch = EventBatch(vehicle_id=vehicle_id, batch_id=f"b-{n}", sent_at=time.time(),
                       events=[event])  # fmt: skip
    return batch.model_dump_json().encode()


def test_the_shared_group_hijack_replayed_loses_no_event(broker: Broker, peers: Peers) -> None:
    """The tester's attack: a car sends 200 events to the reference cloud while another
    car's certificate tries to join the cloud's shared group (whose name is in the docs),
    on the cars' listener and on the cloud's. Every PUBACK says success, as before; now
    the cloud stores all 200 (it stored 100 of 200 then) and acknowledges each."""
    car, rogue = new_vehicle_id(), new_vehicle_id("rogue")
    cert, key = broker.credentials(CLOUD_USER)
    endpoint = Endpoint(broker.host, broker.cloud_port, broker.pki.ca_cert, cert, key)
    sim = CloudSim(endpoint, SigningKey.generate("hijack"), instance=f"hijack-{car}",
                   documents=False)  # fmt: skip
    sim.start()
    try:
        intruder = peers(rogue)
        shared = [f"$share/{GROUP}/tp/v2/+/{rest}" for rest in ("events", "req/+", "clock")]
        refusals = [code(intruder.subscribe(f)[0]) for f in shared]
        on_cloud_listener = broker.tls_refusal(broker.tls_context(rogue), port=broker.cloud_port)
        sender = peers(car)
        assert code(sender.subscribe(Topics(car).ack)[0]) == GRANTED_QOS_1

        pubacks = [code(sender.publish(Topics(car).events, _batch(car, n))) for n in range(200)]

        deadline = time.monotonic() + 10
        while sim.snapshot().acks < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # anything more (a duplicate, a late drop) would show by now
        stats = sim.snapshot()
        acks = sender.messages
    finally:
        sim.stop()
    assert pubacks == [SUCCESS] * 200
    # (Other tests' retained statuses may reach this cloud too: only this car counts.)
    assert (stats.by_vehicle[car], stats.duplicates) == (200, 0), "0 of 200 lost"
    assert len(acks) == stats.acks == 200  # the car hears the cloud store each one
    assert intruder.messages == []
    assert refusals == [NOT_AUTHORIZED] * len(shared)
    assert on_cloud_listener == "TLSV1_ALERT_UNKNOWN_CA"


def _wait_for_total(consumers: list[MqttPeer], total: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(c.messages) for c in consumers) < total:
        assert time.monotonic() < deadline, f"fewer than {total} messages in {timeout} s"
        time.sleep(0.01)


# -- the fixture itself: restarts, persistence ----------------------------------------------


def test_a_restart_keeps_the_port_sessions_queued_and_retained_messages(
    broker: Broker, peers: Peers
) -> None:
    car = new_vehicle_id()
    topics = Topics(car)
    with broker.client(car, clean_start=False, session_expiry=300) as vehicle:
        vehicle.subscribe(topics.cards)
    cloud = peers(CLOUD_USER)
    cloud.publish(topics.cards, b"queued while offline")
    cloud.publish(topics.config(DocumentKind.RULES), b"retained", retain=True)
    cloud.close()
    port = broker.port

    broker.restart()

    assert broker.port == port
    with broker.client(car, clean_start=False, session_expiry=300) as vehicle:
        assert vehicle.session_present
        assert [m.payload for m in vehicle.wait_for_messages(1)] == [b"queued while offline"]
        vehicle.subscribe(topics.config_filter)
        assert vehicle.wait_for_messages(2)[1].payload == b"retained"


def test_a_client_reconnects_by_itself_after_a_restart(broker: Broker, peers: Peers) -> None:
    car = new_vehicle_id()
    vehicle = peers(car, clean_start=False, session_expiry=300)
    vehicle.subscribe(Topics(car).cards)

    broker.stop()
    assert vehicle.wait_for_disconnect() is not None
    broker.start()
    peers(CLOUD_USER).publish(Topics(car).cards, b"after the restart")

    assert [m.payload for m in vehicle.wait_for_messages(1, timeout=8)] == [b"after the restart"]


def test_the_broker_comes_back_on_the_same_port_after_a_crash(broker: Broker) -> None:
    port = broker.port

    broker.restart(crash=True)

    assert broker.port == port
    assert broker.attempt(broker.tls_context(new_vehicle_id())).accepted


def test_the_plain_listener_is_off_by_default_and_believes_usernames_when_on(
    broker: Broker, tmp_path: Path
) -> None:
    assert broker.plain_port is None
    assert "allow_anonymous true" not in broker.config.config.read_text()
    with running_broker(tmp_path, broker.pki, plain=True) as bench:
        car, other = new_vehicle_id(), new_vehicle_id()
        with bench.client(car, tls=False) as claimed:
            # The ACL goes by the claimed name, as it would by a certificate's.
            assert code(claimed.publish(Topics(car).events, b"x")) == NO_MATCHING_SUBSCRIBERS
            assert code(claimed.publish(Topics(other).events, b"x")) == NOT_AUTHORIZED
        # Without a name the connection is accepted, but the ACL grants it nothing.
        with bench.client(None, tls=False) as anonymous:
            assert code(anonymous.publish(Topics(car).events, b"x")) == NOT_AUTHORIZED
        # TLS stays as strict as ever on the same broker.
        assert bench.tls_refusal(bench.tls_context(None)) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


# -- the PKI and the rendered configuration ---------------------------------------------------


def test_private_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    pki = DevPki.create(tmp_path)
    _, client_key = pki.issue_client("car-1")
    for key in (pki.ca_key, pki.server_key, client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_a_loaded_pki_issues_certificates_the_broker_trusts(broker: Broker) -> None:
    again = DevPki.load(broker.pki.directory)
    car = new_vehicle_id()
    files = again.issue_client(car)
    assert broker.attempt(broker.tls_context(None, certificate=files)).accepted


@pytest.mark.parametrize("name", ["", "a/b", "car+", "#", "-car", "x" * 65])
def test_a_common_name_that_is_no_vehicle_id_is_refused(tmp_path: Path, name: str) -> None:
    pki = DevPki.create(tmp_path)
    with pytest.raises(ValueError, match="common name"):
        pki.issue_client(name)


def test_the_rendered_configuration_is_the_shipped_one_filled_in(tmp_path: Path) -> None:
    files = ServerFiles(*(tmp_path / n for n in ("ca.crt", "s.crt", "s.key", "ca.crl")))
    rendered = render_broker_config(
        tmp_path / "conf", files, port=8883, cloud_port=8884, data_dir=tmp_path / "data"
    )
    text = rendered.config.read_text()
    assert "{" not in text
    assert "listener 8883 127.0.0.1\n" in text
    # The cars' listener: the plugin, no acl_file (which grants every subscription).
    cars = text[text.index("listener 8883") : text.index("listener 8884")]
    assert f"plugin {dynsec.plugin_path()}\n" in cars
    assert f"plugin_opt_config_file {rendered.dynsec}\n" in cars
    assert "\nacl_file" not in cars
    assert f"acl_file {rendered.acl}\n" in text
    assert "require_certificate true" in text
    assert "allow_anonymous true" not in text
    assert rendered.acl.read_text().startswith("# Access control")
    assert stat.S_IMODE(rendered.dynsec.stat().st_mode) == 0o600


def test_the_rules_are_the_contracts_channels(tmp_path: Path) -> None:
    acl = render_acl()
    role = {(a["acltype"], a["topic"]) for a in dynsec.vehicle_role("car-1")["acls"]}
    for channel in CHANNELS:
        car_topic = channel_filter(channel, "car-1")
        if channel.direction == "up":
            assert f"pattern write {channel_filter(channel, '%u')}\n" in acl
            assert f"topic read {channel_filter(channel, '+')}\n" in acl
            assert ("publishClientSend", car_topic) in role
        else:
            assert f"pattern read {channel_filter(channel, '%u')}\n" in acl
            assert f"topic write {channel_filter(channel, '+')}\n" in acl
            assert {("subscribePattern", car_topic), ("publishClientReceive", car_topic)} <= role
    assert len(role) == len(CHANNELS) + sum(c.direction == "down" for c in CHANNELS)
    for reserved in RESERVED_IDS:
        with pytest.raises(ValueError, match="vehicle id"):
            dynsec.vehicle_role(reserved)


def test_rendering_again_keeps_the_cars_registered_since(tmp_path: Path) -> None:
    files = ServerFiles(*(tmp_path / n for n in ("ca.crt", "s.crt", "s.key", "ca.crl")))
    options: dict[str, Any] = {"port": 8883, "cloud_port": 8884, "data_dir": tmp_path / "d"}
    first = render_broker_config(tmp_path / "conf", files, vehicles=["car-1"], **options)
    dynsec.add_to_file(first.dynsec, ["car-2"])

    again = render_broker_config(tmp_path / "conf", files, **options)

    assert dynsec.registered(again.dynsec) == {"car-1", "car-2"}


def test_registrations_outlive_a_restart_and_may_be_made_while_stopped(broker: Broker) -> None:
    online, offline = new_vehicle_id(), new_vehicle_id()
    broker.credentials(online)  # registered through $CONTROL
    broker.stop()
    broker.credentials(offline)  # registered in the plugin's file
    broker.start()

    for car in (online, offline):
        with broker.client(car) as client:
            assert code(client.subscribe(Topics(car).cards)[0]) == GRANTED_QOS_1
            assert code(client.publish(Topics(car).events, b"x")) == NO_MATCHING_SUBSCRIBERS


@pytest.mark.parametrize(
    "change",
    [{"port": 0}, {"cloud_port": 70000}, {"data_dir": Path("/tmp/x\nallow_anonymous true")}],
)
def test_rendering_refuses_values_that_would_break_the_file(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    options: dict[str, Any] = {"port": 8883, "cloud_port": 8884, "data_dir": tmp_path}
    options |= change
    files = ServerFiles(*(tmp_path / n for n in ("ca.crt", "s.crt", "s.key", "ca.crl")))
    with pytest.raises(ValueError, match=r"port|line"):
        render_broker_config(tmp_path / "conf", files, **options)


def test_a_loaded_pki_keeps_earlier_revocations(tmp_path: Path) -> None:
    pki = DevPki.create(tmp_path)
    first, _ = pki.issue_client("car-1")
    pki.revoke(first)
    again = DevPki.load(tmp_path)
    second, _ = again.issue_client("car-2")

    again.revoke(second)

    crl = x509.load_pem_x509_crl(again.crl.read_bytes())
    serials = {
        x509.load_pem_x509_certificate(p.read_bytes()).serial_number for p in (first, second)
    }
    assert {r.serial_number for r in crl} == serials


def test_the_clouds_certificate_comes_from_the_clouds_own_ca(tmp_path: Path) -> None:
    pki = DevPki.create(tmp_path)
    cloud_cert, _ = pki.issue_client(CLOUD_USER)
    car_cert, _ = pki.issue_client("car-1")
    issuer = x509.load_pem_x509_certificate(cloud_cert.read_bytes()).issuer

    pki.revoke(cloud_cert)
    again = DevPki.load(tmp_path)

    assert issuer == again.cloud.subject != again.subject
    assert again.client_files(CLOUD_USER)[0] == cloud_cert
    assert again.cloud_server_files.ca_cert == again.cloud.ca_cert
    assert again.cloud_server_files.server_cert == again.server_cert  # one broker identity
    # The revocation went to the CA that issued it.
    assert len(list(x509.load_pem_x509_crl(again.cloud.crl.read_bytes()))) == 1
    assert list(x509.load_pem_x509_crl(again.crl.read_bytes())) == []
    assert x509.load_pem_x509_certificate(car_cert.read_bytes()).issuer == again.subject


def test_a_second_administrator_takes_over_and_the_first_does_not_fight_back(
    broker: Broker,
) -> None:
    """Client ids are forced to the name on the cars' listener: two administrators (the
    test broker's and fleet-sim's) share one. The one thrown out stays out."""
    first_car, second_car, third_car = new_vehicle_id(), new_vehicle_id(), new_vehicle_id()
    broker.credentials(first_car)  # the broker's own administrator connects
    admin = broker.tls_context(dynsec.ADMIN_USER)
    other = dynsec.Registrar(broker.host, broker.port, admin)
    try:
        other.register([second_car])
        time.sleep(2.5)  # paho would have reconnected the first one by now
        assert other.alive
        other.register([new_vehicle_id()])
    finally:
        other.close()
    broker.credentials(third_car)  # the broker's administrator comes back when needed
    for car in (second_car, third_car):
        with broker.client(car) as client:
            assert code(client.subscribe(Topics(car).cards)[0]) == GRANTED_QOS_1
