"""``touchpoint doctor`` against real peers: a private dbus-daemon and a private Mosquitto.

The broker runs the shipped reference configuration with a development PKI made for
this module (certificates valid for a year, so that none is near its expiry); the bus
is a private session-like dbus-daemon. Nothing touches the machine's own bus or broker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag

from cloud_sync.reference.pki import DevPki
from cloud_sync.reference.private_broker import PrivateBroker, free_ports, running_broker
from cloud_sync.settings import CloudSettings
from tests.agent.doctor_helpers import event, make_store, only, statuses, toml_config
from touchpoint.cli import main
from touchpoint.doctor import Check, Status, diagnose, exit_status
from touchpoint.doctor.cloud_checks import check_cloud, check_plain
from touchpoint.doctor.dbus_checks import check_dbus
from ui_bridge.names import BUS_NAME
from ui_bridge.reference.private_bus import private_bus
from ui_bridge.settings import DbusSettings

VEHICLE = "veh-doctor"
YEAR = dt.timedelta(days=365)


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TOUCHPOINT_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    pki = DevPki.create(tmp_path_factory.mktemp("doctor-pki"), validity=YEAR)
    pki.issue_client(VEHICLE, validity=YEAR)
    return pki


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: DevPki) -> Iterator[PrivateBroker]:
    with running_broker(tmp_path_factory.mktemp("doctor-broker"), pki) as running:
        yield running


@pytest.fixture(scope="module")
def bus_address() -> Iterator[str]:
    with private_bus() as address:
        yield address


def cloud(
    broker: PrivateBroker, pki: DevPki, name: str = VEHICLE, **changes: object
) -> CloudSettings:
    cert, key = pki.client_files(name)
    values: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "ca_file": pki.ca_cert,
        "cert_file": cert,
        "key_file": key,
        **changes,
    }
    return CloudSettings.model_validate(values)


def _cloud_section(settings: CloudSettings) -> str:
    return (
        f'[cloud]\nhost = "{settings.host}"\nport = {settings.port}\n'
        f'ca_file = "{settings.ca_file}"\ncert_file = "{settings.cert_file}"\n'
        f'key_file = "{settings.key_file}"\n'
    )


# -- everything at once --------------------------------------------------------------------


def test_a_complete_setup_passes_against_real_peers(
    tmp_path: Path, pki: DevPki, broker: PrivateBroker, bus_address: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    now = time.time()
    db = make_store(tmp_path / "state" / "t.db", [event(time=now)], last_trusted=now - 60)
    config = toml_config(
        tmp_path / "t.toml",
        f'[dbus]\naddress = "{bus_address}"\n',
        _cloud_section(cloud(broker, pki)),
        store=db,
    )

    checks = diagnose(config)
    status = main(["doctor", "--config", str(config)])

    assert statuses(checks) == {
        "config": Status.OK,
        "store": Status.OK,
        "outbox": Status.OK,
        "clock": Status.OK,
        "clock.sources": Status.OK,
        "daemon.loops": Status.OK,  # no health file: the daemon has not run here
        "can.dbc": Status.OK,
        "can.mapping": Status.OK,
        "can.can0": Status.WARN,  # virtual: a simulation
        "dbus.bus": Status.OK,
        "dbus.name": Status.WARN,  # the agent is not running
        "cloud.broker": Status.OK,
        "tls.ca": Status.OK,
        "tls.cert": Status.OK,
        "tls.key": Status.OK,
        "tls.handshake": Status.OK,
    }
    assert exit_status(checks) == 0
    assert status == 0
    out = capsys.readouterr().out
    assert "OK    tls.handshake" in out
    assert out.splitlines()[-1] == "14 OK, 2 WARN, 0 FAIL"


# -- D-Bus -------------------------------------------------------------------------------------


def test_a_free_name_that_this_user_may_own(bus_address: str) -> None:
    checks = list(check_dbus(DbusSettings(address=bus_address)))

    assert only(checks, "dbus.bus").status is Status.OK
    name = only(checks, "dbus.name")
    assert name.status is Status.WARN
    assert "the agent is not running" in name.message
    assert "may own it" in name.message
    assert "dbus.policy" not in statuses(checks)  # a private bus has its own policy


@pytest.fixture
def name_owner(bus_address: str) -> Iterator[None]:
    """Another process-like owner of the agent's name, on a loop of its own."""
    loop = asyncio.new_event_loop()
    owned, release = threading.Event(), asyncio.Event()

    async def own() -> None:
        bus = await MessageBus(bus_address=bus_address).connect()
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        assert reply is RequestNameReply.PRIMARY_OWNER
        owned.set()
        await release.wait()
        bus.disconnect()
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    thread = threading.Thread(target=loop.run_until_complete, args=(own(),))
    thread.start()
    try:
        assert owned.wait(10)
        yield
    finally:
        loop.call_soon_threadsafe(release.set)
        thread.join()
        loop.close()


@pytest.mark.usefixtures("name_owner")
def test_an_owned_name_names_its_process(bus_address: str) -> None:
    name = only(list(check_dbus(DbusSettings(address=bus_address))), "dbus.name")

    assert name.status is Status.OK
    assert f"pid {os.getpid()}" in name.message
    assert "the agent serves the HMI" in name.message


def test_an_unreachable_bus_fails(tmp_path: Path) -> None:
    address = f"unix:path={tmp_path / 'no-bus'}"

    checks = list(check_dbus(DbusSettings(address=address), timeout=2))

    assert [(c.name, c.status) for c in checks] == [("dbus.bus", Status.FAIL)]
    assert "dbus-daemon running" in (checks[0].fix or "")


# -- the broker and TLS -----------------------------------------------------------------------


def test_missing_tls_files_fail_with_a_fix(tmp_path: Path, broker: PrivateBroker) -> None:
    settings = CloudSettings(
        host=broker.host,
        port=broker.port,
        ca_file=tmp_path / "ca.crt",
        cert_file=tmp_path / "car.crt",
        key_file=tmp_path / "car.key",
    )

    checks = list(check_cloud(settings, VEHICLE))

    assert statuses(checks) == {
        "cloud.broker": Status.OK,
        "tls.ca": Status.FAIL,
        "tls.cert": Status.FAIL,
        "tls.key": Status.FAIL,
    }  # and no handshake is tried with files that are not there
    cert = only(checks, "tls.cert")
    assert cert.message == f"{tmp_path / 'car.crt'}: no such file"
    assert cert.fix == (
        f"provision the car's certificate (CN '{VEHICLE}') to {tmp_path / 'car.crt'}, "
        "or fix the path in [cloud]"
    )


def test_a_certificate_for_another_vehicle_fails(pki: DevPki, broker: PrivateBroker) -> None:
    pki.issue_client("veh-other", validity=YEAR)

    cert = only(list(check_cloud(cloud(broker, pki, "veh-other"), VEHICLE)), "tls.cert")

    assert cert.status is Status.FAIL
    assert "CN 'veh-other'" in cert.message
    assert "[vehicle] id is 'veh-doctor'" in cert.message
    assert cert.fix is not None
    assert "set [vehicle] id = 'veh-other'" in cert.fix


def test_an_expired_certificate_fails(pki: DevPki, broker: PrivateBroker) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    pki.issue_client("veh-expired", validity=dt.timedelta(days=1), not_before=start)

    checks = list(check_cloud(cloud(broker, pki, "veh-expired"), "veh-expired"))

    cert = only(checks, "tls.cert")
    assert cert.status is Status.FAIL
    assert f"expired on {start + dt.timedelta(days=1):%Y-%m-%d}" in cert.message
    assert "tls.handshake" not in statuses(checks)


def test_a_certificate_expiring_soon_warns(pki: DevPki, broker: PrivateBroker) -> None:
    pki.issue_client("veh-soon", validity=dt.timedelta(days=10))

    cert = only(list(check_cloud(cloud(broker, pki, "veh-soon"), "veh-soon")), "tls.cert")

    assert cert.status is Status.WARN
    assert "renew it soon" in (cert.fix or "")


def test_a_key_that_does_not_match_fails(pki: DevPki, broker: PrivateBroker) -> None:
    pki.issue_client("veh-other-key", validity=YEAR)
    _, other_key = pki.client_files("veh-other-key")

    checks = list(check_cloud(cloud(broker, pki, key_file=other_key), VEHICLE))

    key = only(checks, "tls.key")
    assert key.status is Status.FAIL
    assert "does not match the certificate" in key.message


def test_a_certificate_of_another_ca_fails(
    tmp_path: Path, pki: DevPki, broker: PrivateBroker
) -> None:
    stranger = DevPki.create(tmp_path / "other-ca", validity=YEAR)
    cert, key = stranger.issue_client(VEHICLE, validity=YEAR)

    checks = list(check_cloud(cloud(broker, pki, cert_file=cert, key_file=key), VEHICLE))

    assert only(checks, "tls.cert").status is Status.FAIL
    assert "not issued by the CA" in only(checks, "tls.cert").message


def test_a_revoked_certificate_fails_the_handshake(pki: DevPki, broker: PrivateBroker) -> None:
    cert, _ = pki.issue_client("veh-revoked", validity=YEAR)
    pki.revoke(cert)
    broker.reload()

    checks = list(check_cloud(cloud(broker, pki, "veh-revoked"), "veh-revoked"))

    assert only(checks, "tls.cert").status is Status.OK  # the file itself is fine
    handshake = only(checks, "tls.handshake")
    assert handshake.status is Status.FAIL
    assert "revoked" in (handshake.fix or "") + handshake.message


def test_a_broker_that_is_not_there_fails(pki: DevPki, broker: PrivateBroker) -> None:
    (port,) = free_ports(1)

    checks = list(check_cloud(cloud(broker, pki, port=port), VEHICLE, timeout=2))

    broker_check = only(checks, "cloud.broker")
    assert broker_check.status is Status.FAIL
    assert "does not accept connections" in broker_check.message
    assert "tls.handshake" not in statuses(checks)


def test_plain_mqtt_is_for_loopback_only(broker: PrivateBroker) -> None:
    settings = CloudSettings(host=broker.host, port=broker.port, tls=False)

    checks: list[Check] = list(check_cloud(settings, VEHICLE))
    # Not connected to: nothing may leave this machine.
    remote = check_plain("broker.example.com")

    assert statuses(checks) == {"cloud.broker": Status.OK, "tls": Status.OK}
    assert remote.status is Status.WARN
    assert "in clear" in remote.message
