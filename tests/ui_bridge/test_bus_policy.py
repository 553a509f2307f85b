"""The bus policy, ``systemd/org.touchpoint.Agent1.conf``, on a real bus with real users.

A private dbus-daemon runs with a system bus's configuration: the default policy of
the system bus (``system.conf``: deny owning names and method calls, allow signals and
requested replies), EXTERNAL authentication, and an ``<include>`` of the policy file as
it is in the repository, unchanged. The agent is ``touchpoint run``, run as the
``touchpoint`` user and fed a CAN recording of the reference car parked with a service
due soon, so that it shows a card. The clients are programs nobody here wrote
(``gdbus``, ``dbus-send``, ``dbus-monitor``), run with ``setpriv`` as a member of
``hmi``, a member of ``touchpoint-settings``, a user in neither, and root.

The test runs as root: it creates the users and groups it needs if they are missing and
removes what it created. dbus-daemon reads a connection's groups from the socket
(``SO_PEERGROUPS``) and falls back to the user database, so the clients are real users
started with their groups from that database (``--init-groups``), where both agree.
Two runs on one machine would share those accounts: a lock file serialises them.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final
from xml.etree import ElementTree as ET

import pytest

from can_signals.simulator import Phase, Scenario, VehicleState, record, reference_files
from ui_bridge.names import (
    BUS_NAME,
    CARD_INTERFACE,
    CARDS_PATH,
    CONSENT_INTERFACE,
    MANAGER_INTERFACE,
    ROOT_PATH,
)

POLICY: Final = Path(__file__).resolve().parents[2] / "systemd" / f"{BUS_NAME}.conf"

# The names the policy file uses (test_the_policy_names_these_accounts checks them).
AGENT_USER: Final = "touchpoint"
HMI_GROUP: Final = "hmi"
SETTINGS_GROUP: Final = "touchpoint-settings"
# Throwaway clients, one per kind of caller.
HMI_USER: Final = "tp-policy-hmi"
SETTINGS_USER: Final = "tp-policy-settings"
OUTSIDER: Final = "tp-policy-outsider"

ACCESS_DENIED: Final = "org.freedesktop.DBus.Error.AccessDenied"
PROPERTIES: Final = "org.freedesktop.DBus.Properties"
BUS_DRIVER: Final = ("org.freedesktop.DBus", "/org/freedesktop/DBus")
#: RequestName's flag DO_NOT_QUEUE and its reply EXISTS (the name has another owner).
DO_NOT_QUEUE: Final = 4
EXISTS: Final = 3

#: Generous: a call takes milliseconds, the agent starts in well under a second.
CALL_TIMEOUT_S: Final = 15.0
START_TIMEOUT_S: Final = 30.0
#: How long the recorded car stays parked (and talking): far longer than the tests take.
PARKED_MS: Final = 120_000

CLIENT_ENV: Final = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

#: The system bus's configuration (Debian's dbus 1.14 system.conf) without what a
#: private bus must not do (fork, switch user, write /run/dbus/pid, log to syslog,
#: activate services), listening in a directory every user can reach.
BUS_CONFIG: Final = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus" />
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Containers1"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


# -- accounts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Who:
    """Someone to run a program as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def of(cls, name: str) -> Who:
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid)

    def argv(self, command: Sequence[str], *extra: str) -> list[str]:
        """``command`` as this user, with the user's groups (root: as it is)."""
        if self.uid == 0:
            return list(command)
        return [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
            *extra, "--", *command,
        ]  # fmt: skip


ROOT: Final = Who("root", 0, 0)


def _admin(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")


@dataclass
class Accounts:
    """The users and groups of the test, and which of them it created."""

    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def group(self, name: str) -> int:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(name).gr_gid
        _admin("groupadd", "--system", name)
        self.groups.append(name)
        return grp.getgrnam(name).gr_gid

    def user(self, name: str, groups: Sequence[str] = ()) -> Who:
        try:
            who = Who.of(name)
        except KeyError:
            extra = ["--groups", ",".join(groups)] if groups else []
            _admin(
                "useradd", "--system", "--user-group", "--no-create-home",
                "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", *extra, name,
            )  # fmt: skip
            self.users.append(name)
            who = Who.of(name)
        return who

    def remove(self) -> None:
        for name in reversed(self.users):  # with the group of the same name useradd made
            _admin("userdel", name)
        for name in reversed(self.groups):
            _admin("groupdel", name)


def _check_membership(who: Who, member_of: Sequence[str]) -> None:
    """A client that already existed must be in exactly the groups the test means."""
    gids = set(os.getgrouplist(who.name, who.gid))
    for name in (HMI_GROUP, SETTINGS_GROUP):
        if (grp.getgrnam(name).gr_gid in gids) != (name in member_of):
            pytest.fail(f"{who.name} exists, but is {'not ' * (name in member_of)}in {name}")


def _preconditions() -> None:
    if os.geteuid() != 0:
        message = "needs root: it creates users and groups and runs programs as them"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    missing = [
        tool
        for tool in ("dbus-daemon", "dbus-send", "dbus-monitor", "gdbus", "setpriv", "useradd")
        if shutil.which(tool, path=CLIENT_ENV["PATH"]) is None
    ]
    if missing:
        pytest.fail(f"missing programs: {', '.join(missing)} (Debian: dbus, libglib2.0-bin)")


@dataclass(frozen=True, slots=True)
class Cast:
    """The agent's user and the clients."""

    agent: Who
    hmi: Who
    settings: Who
    outsider: Who

    def by_role(self, role: str) -> Who:
        """``root``, ``agent``, ``hmi``, ``settings`` or ``outsider``."""
        roles = {"agent": self.agent, "hmi": self.hmi, "settings": self.settings}
        return {"root": ROOT, "outsider": self.outsider, **roles}[role]


@pytest.fixture(scope="module")
def cast() -> Iterator[Cast]:
    _preconditions()
    lock_path = Path(tempfile.gettempdir()) / "touchpoint-bus-policy-test.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        accounts = Accounts()
        try:
            accounts.group(HMI_GROUP)
            accounts.group(SETTINGS_GROUP)
            result = Cast(
                agent=accounts.user(AGENT_USER),
                hmi=accounts.user(HMI_USER, [HMI_GROUP]),
                settings=accounts.user(SETTINGS_USER, [SETTINGS_GROUP]),
                outsider=accounts.user(OUTSIDER),
            )
            _check_membership(result.hmi, [HMI_GROUP])
            _check_membership(result.settings, [SETTINGS_GROUP])
            _check_membership(result.outsider, [])
            yield result
        finally:
            accounts.remove()


# -- processes -----------------------------------------------------------------------------


class Lines:
    """The lines a process writes on a pipe, read by a thread, waited for with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._stream = stream
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, found: Callable[[str], bool], timeout: float = CALL_TIMEOUT_S) -> bool:
        """Wait until ``found(text so far)``; False at the deadline or the end of output."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not found("\n".join(self.lines)):
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def close(self) -> None:
        """After the process has ended: collect the thread, close the pipe."""
        self._thread.join(timeout=CALL_TIMEOUT_S)
        self._stream.close()


@contextlib.contextmanager
def running(
    argv: Sequence[str], *, stdout: bool, env: dict[str, str], cwd: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """A process whose stdout (or else stderr) is read line by line; stopped on exit."""
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if stdout else subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    stream = process.stdout if stdout else process.stderr
    assert stream is not None
    lines = Lines(stream)
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=CALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        lines.close()


# -- the bus and the agent -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class World:
    """A running system-like bus with the agent on it, showing one card."""

    address: str
    bus_log: Path
    card: str
    cast: Cast


@pytest.fixture(scope="module")
def system_bus(cast: Cast) -> Iterator[tuple[str, Path]]:
    """The private system-like bus: its address and the file its messages go to."""
    directory = Path(tempfile.mkdtemp(prefix="tp-policy-bus-"))
    try:
        directory.chmod(0o755)  # the clients, as other users, must reach the socket
        config = directory / "system.conf"
        config.write_text(
            BUS_CONFIG.format(socket=directory / "system_bus_socket", policy=POLICY),
            encoding="utf-8",
        )
        log = directory / "dbus-daemon.log"
        with log.open("w") as errors, subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True,
        ) as bus:  # fmt: skip
            try:
                assert bus.stdout is not None
                address = bus.stdout.readline().strip()  # or "" if it exits
                assert address, f"dbus-daemon did not start: {log.read_text()}"
                yield address, log
            finally:
                bus.terminate()
                bus.wait(timeout=CALL_TIMEOUT_S)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _parked_car(log: Path) -> None:
    """A CAN log of the reference car parked at 9,100 km, where a service is due soon."""
    parked = VehicleState(utc_start_s=int(time.time()), odometer_km=9_100.0)
    record(
        Scenario("parked", "parked, service due soon", parked, (Phase("parked", PARKED_MS),)), log
    )


def _agent_config(directory: Path, address: str) -> Path:
    reference = reference_files()
    config = directory / "touchpoint.toml"
    config.write_text(
        f'[store]\npath = "{directory / "touchpoint.db"}"\n\n'
        f'[can]\nmapping = "{reference.mapping}"\n'
        f'replay = "{directory / "parked.log"}"\nreplay_speed = 1.0\n\n'
        f'[[can.dbc]]\nfile = "{reference.dbc}"\n\n'
        f'[dbus]\naddress = "{address}"\nlocale = "en"\n\n'
        "[policy]\nquiet_hours = [0, 0]  # none: the card shows whatever the time\n",
        encoding="utf-8",
    )
    return config


def _card_on_screen(address: str, hmi: Who) -> str:
    """The object path of the card the agent shows, once it shows one."""
    method = "org.freedesktop.DBus.ObjectManager.GetManagedObjects"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:  # each try is a process and a round trip: no pause needed between them
        reply = gdbus(address, hmi, ROOT_PATH, method)
        found = re.search(rf"'({CARDS_PATH}/c[0-9a-f]{{32}})'", reply.out)
        if found:
            return found.group(1)
        assert reply.error != ACCESS_DENIED, f"the HMI may not list the cards: {reply}"
        assert time.monotonic() < deadline, f"no card on the bus: {reply}"


@pytest.fixture(scope="module")
def world(cast: Cast, system_bus: tuple[str, Path]) -> Iterator[World]:
    """``touchpoint run`` as the agent's user, on the bus, showing a maintenance card.

    Its CAN input is a recording of the reference car, parked, played in real time: a
    silent bus would go stale, and the car would no longer count as parked.
    """
    address, bus_log = system_bus
    directory = Path(tempfile.mkdtemp(prefix="tp-policy-agent-"))
    try:
        _parked_car(directory / "parked.log")
        config = _agent_config(directory, address)
        for path in (directory, *directory.iterdir()):
            os.chown(path, cast.agent.uid, cast.agent.gid)
        # The interpreter may live where other users cannot read (a pyenv under /root on
        # the development machines): CAP_DAC_READ_SEARCH lets the agent's process read
        # it. The bus decides by uid and groups only, which this does not change.
        reader = ("--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
        command = [sys.executable, "-m", "touchpoint.cli", "run", "--config", str(config)]
        environment = {**CLIENT_ENV, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(directory)}
        with running(
            cast.agent.argv(command, *reader), stdout=False, env=environment, cwd=directory
        ) as (agent, log):
            serving = log.wait_for(lambda text: f"serving {BUS_NAME}" in text, START_TIMEOUT_S)
            assert serving, f"the agent did not take the name (exit {agent.poll()}):\n{log.text}"
            card = _card_on_screen(address, cast.hmi)
            yield World(address, bus_log, card, cast)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- clients -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What a command-line client printed: the reply, or the D-Bus error's name."""

    out: str
    error: str | None
    detail: str


_ERROR_NAME: Final = re.compile(r"(?:GDBus\.Error:|^Error )([A-Za-z_][\w.]*)", re.MULTILINE)


def _client(who: Who, command: Sequence[str]) -> Reply:
    result = subprocess.run(
        who.argv(command), capture_output=True, text=True, env=CLIENT_ENV,
        timeout=CALL_TIMEOUT_S, check=False,
    )  # fmt: skip
    if result.returncode == 0:
        return Reply(result.stdout.strip(), None, "")
    match = _ERROR_NAME.search(result.stderr)
    return Reply("", match.group(1) if match else "(no D-Bus error)", result.stderr.strip())


def gdbus(address: str, who: Who, path: str, method: str, *args: str) -> Reply:
    """``gdbus call`` to the agent: arguments in GVariant text (typed where not obvious)."""
    return _client(who, [
        "gdbus", "call", "--address", address, "--timeout", "10",
        "--dest", BUS_NAME, "--object-path", path, "--method", method, *args,
    ])  # fmt: skip


def bus_driver(address: str, who: Who, member: str, *args: str) -> Reply:
    """``dbus-send`` to the bus itself."""
    destination, path = BUS_DRIVER
    return _client(who, [
        "dbus-send", f"--bus={address}", "--print-reply=literal",
        f"--dest={destination}", path, f"{destination}.{member}", *args,
    ])  # fmt: skip


# -- the policy file -----------------------------------------------------------------------


def test_the_policy_names_these_accounts() -> None:
    """The file is a busconfig whose users and groups are the ones this test uses."""
    root = ET.parse(POLICY).getroot()
    assert root.tag == "busconfig"
    policies = root.findall("policy")
    assert {p.get("user") for p in policies} - {None} == {AGENT_USER}
    assert {p.get("group") for p in policies} - {None} == {HMI_GROUP, SETTINGS_GROUP}
    assert {p.get("context") for p in policies} - {None} == {"default"}
    owners = [p.get("user") for p in policies for rule in p if rule.get("own") == BUS_NAME]
    assert owners == [AGENT_USER, None]  # the agent's allow, and the default's deny


def test_the_bus_resolves_every_name_in_the_policy(world: World) -> None:
    """A user or group the bus does not know would drop its rules, with a warning."""
    warnings = world.bus_log.read_text()
    assert "Unknown" not in warnings, warnings


# -- owning the name -----------------------------------------------------------------------


def test_the_agent_owns_the_name_as_its_user(world: World) -> None:
    reply = bus_driver(world.address, ROOT, "GetConnectionUnixUser", f"string:{BUS_NAME}")
    assert (reply.error, reply.out) == (None, f"uint32 {world.cast.agent.uid}")


@pytest.mark.parametrize("role", ["root", "hmi", "settings", "outsider"])
def test_nobody_else_may_own_the_name(world: World, role: str) -> None:
    request = ("RequestName", f"string:{BUS_NAME}", f"uint32:{DO_NOT_QUEUE}")
    reply = bus_driver(world.address, world.cast.by_role(role), *request)
    assert reply.error == ACCESS_DENIED, reply
    assert "not allowed to own" in reply.detail


def test_the_agent_user_may_own_it_but_it_is_taken(world: World) -> None:
    """The policy lets the agent's user try; the bus then says the name has an owner."""
    request = ("RequestName", f"string:{BUS_NAME}", f"uint32:{DO_NOT_QUEUE}")
    reply = bus_driver(world.address, world.cast.agent, *request)
    assert (reply.error, reply.out) == (None, f"uint32 {EXISTS}")


# -- calling the agent ---------------------------------------------------------------------

CARD: Final = "<the card>"  # replaced by the card's object path

#: Each call: (object path, interface.method, arguments in GVariant text). None harmful:
#: the action does not exist and the dismiss reason is invalid, so the card stays.
CALLS: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    "ObjectManager.GetManagedObjects": (
        ROOT_PATH, "org.freedesktop.DBus.ObjectManager.GetManagedObjects", ()),
    "Introspectable.Introspect": (
        ROOT_PATH, "org.freedesktop.DBus.Introspectable.Introspect", ()),
    "Peer.Ping": (ROOT_PATH, "org.freedesktop.DBus.Peer.Ping", ()),
    "Peer.GetMachineId": (ROOT_PATH, "org.freedesktop.DBus.Peer.GetMachineId", ()),
    "Get(Manager.DrivingRestricted)": (
        ROOT_PATH, f"{PROPERTIES}.Get", (f"'{MANAGER_INTERFACE}'", "'DrivingRestricted'")),
    "GetAll(Card)": (CARD, f"{PROPERTIES}.GetAll", (f"'{CARD_INTERFACE}'",)),
    "Set(Manager.Locale)": (
        ROOT_PATH, f"{PROPERTIES}.Set", (f"'{MANAGER_INTERFACE}'", "'Locale'", "<'en'>")),
    "Set(Manager.DrivingRestricted)": (
        ROOT_PATH, f"{PROPERTIES}.Set", (f"'{MANAGER_INTERFACE}'", "'DrivingRestricted'",
                                         "<true>")),
    "Consent.GetCategories": (ROOT_PATH, f"{CONSENT_INTERFACE}.GetCategories", ()),
    "Manager.GetCapabilities": (ROOT_PATH, f"{MANAGER_INTERFACE}.GetCapabilities", ()),
    "Card.ReportShown": (CARD, f"{CARD_INTERFACE}.ReportShown", ()),
    "Card.Explain": (CARD, f"{CARD_INTERFACE}.Explain", ()),
    "Card.InvokeAction": (
        CARD, f"{CARD_INTERFACE}.InvokeAction", ("'no-such-action'", "@a{sv} {}")),
    "Card.Dismiss": (CARD, f"{CARD_INTERFACE}.Dismiss", ("@u 0",)),
    "Consent.SetConsent": (
        ROOT_PATH, f"{CONSENT_INTERFACE}.SetConsent", ("'usage_analytics'", "true", "@x 0")),
    "Consent.DeleteMyData": (ROOT_PATH, f"{CONSENT_INTERFACE}.DeleteMyData", ()),
}  # fmt: skip

OK: Final = "ok"
DENIED: Final = ACCESS_DENIED
#: What each caller gets. A name of an error other than AccessDenied is the agent's
#: answer: the bus let the call through. Calls left out for a role are not made (the
#: settings app's DeleteMyData would wipe the store under the other tests).
EXPECTED: Final[dict[str, dict[str, str]]] = {
    "hmi": {
        "ObjectManager.GetManagedObjects": OK,
        "Introspectable.Introspect": OK,
        "Peer.Ping": OK,
        "Peer.GetMachineId": OK,
        "Get(Manager.DrivingRestricted)": OK,
        "GetAll(Card)": OK,
        "Set(Manager.Locale)": OK,
        # The bus lets Properties.Set through whatever the property; the agent refuses.
        "Set(Manager.DrivingRestricted)": "org.freedesktop.DBus.Error.PropertyReadOnly",
        "Manager.GetCapabilities": OK,
        "Card.ReportShown": OK,
        "Card.Explain": OK,
        "Card.InvokeAction": "org.touchpoint.Agent1.Error.UnknownAction",
        "Card.Dismiss": "org.freedesktop.DBus.Error.InvalidArgs",
        "Consent.GetCategories": DENIED,
        "Consent.SetConsent": DENIED,
        "Consent.DeleteMyData": DENIED,
    },
    "settings": {
        # No Properties, no ObjectManager: the settings app cannot read the cards.
        "ObjectManager.GetManagedObjects": DENIED,
        "GetAll(Card)": DENIED,
        "Get(Manager.DrivingRestricted)": DENIED,
        "Introspectable.Introspect": OK,
        "Peer.Ping": OK,
        "Peer.GetMachineId": OK,
        "Consent.GetCategories": OK,
        "Set(Manager.Locale)": DENIED,
        "Consent.SetConsent": OK,
        "Manager.GetCapabilities": DENIED,
        "Card.ReportShown": DENIED,
        "Card.Explain": DENIED,
        "Card.InvokeAction": DENIED,
        "Card.Dismiss": DENIED,
    },
    "outsider": dict.fromkeys(CALLS, DENIED),
    "root": dict.fromkeys(CALLS, DENIED),
}


@pytest.mark.parametrize(
    ("role", "call"), [(role, call) for role, calls in EXPECTED.items() for call in calls]
)
def test_who_may_call_what(world: World, role: str, call: str) -> None:
    path, method, args = CALLS[call]
    who = world.cast.by_role(role)
    reply = gdbus(world.address, who, world.card if path == CARD else path, method, *args)
    assert (reply.error or OK) == EXPECTED[role][call], reply


def test_the_hmi_reads_the_card_and_the_restriction(world: World) -> None:
    """Not only let through: the answers are the agent's (a parked car, its card)."""
    hmi = world.cast.hmi
    args = (f"'{MANAGER_INTERFACE}'", "'DrivingRestricted'")
    restricted = gdbus(world.address, hmi, ROOT_PATH, f"{PROPERTIES}.Get", *args)
    assert restricted.out == "(<false>,)", restricted
    card = gdbus(world.address, hmi, world.card, f"{PROPERTIES}.GetAll", f"'{CARD_INTERFACE}'")
    assert "'Kind': <uint32 1>" in card.out, card  # maintenance
    assert "'Title': <'" in card.out, card


# -- hearing the agent ---------------------------------------------------------------------


def _unique_name(monitor: Lines) -> str:
    """A dbus-monitor's name on the bus, once its match rules are in place.

    dbus-monitor adds them with blocking calls before it dispatches anything, so the
    ``NameAcquired`` it prints comes after them.
    """
    pattern = re.compile(r'member=NameAcquired\n\s+string "(:[\d.]+)"')
    assert monitor.wait_for(lambda text: pattern.search(text) is not None), monitor.text
    found = pattern.search(monitor.text)
    assert found is not None
    return found.group(1)


def test_only_the_groups_hear_the_agents_signals(world: World) -> None:
    """The agent's broadcasts carry no personal data; still, only its clients get them."""
    match = f"type='signal',sender='{BUS_NAME}'"
    roles = ("hmi", "settings", "outsider")
    with contextlib.ExitStack() as stack:
        monitors: dict[str, Lines] = {}
        for role in roles:
            command = world.cast.by_role(role).argv(
                ["dbus-monitor", "--address", world.address, match]
            )
            _, monitors[role] = stack.enter_context(running(command, stdout=True, env=CLIENT_ENV))
        names = {role: _unique_name(monitor) for role, monitor in monitors.items()}
        # A change of language: PropertiesChanged from the manager (and from the card).
        # One of the two is a change, whatever the language was.
        for locale in ("zh-CN", "en"):
            args = (f"'{MANAGER_INTERFACE}'", "'Locale'", f"<'{locale}'>")
            reply = gdbus(world.address, world.cast.hmi, ROOT_PATH, f"{PROPERTIES}.Set", *args)
            assert reply.error is None, reply
        # The agent sent its signals before its replies, and the bus passes on one
        # sender's messages in order: now that the calls have returned, the signals are
        # on their way to whoever may hear them, and a message sent to each monitor now
        # arrives after them.
        for role, name in names.items():
            sentinel = [
                "dbus-send", f"--bus={world.address}", "--type=signal", f"--dest={name}",
                "/org/touchpoint/Test", "org.touchpoint.Test.Sentinel",
            ]  # fmt: skip
            assert _client(ROOT, sentinel).error is None
            heard = monitors[role].wait_for(lambda text: "member=Sentinel" in text)
            assert heard, f"{role}'s monitor missed the sentinel:\n{monitors[role].text}"
        heard_by = {r for r in roles if "member=PropertiesChanged" in monitors[r].text}
        assert heard_by == {"hmi", "settings"}, {r: monitors[r].text for r in roles}


# -- a client that floods the agent --------------------------------------------------------

RAW_PEER: Final = Path(__file__).resolve().parent / "rawpeer.py"
FLOOD: Final = 10_000


def _owner(address: str) -> str:
    reply = bus_driver(address, ROOT, "GetNameOwner", f"string:{BUS_NAME}")
    assert reply.error is None, reply
    return reply.out


@pytest.mark.parametrize("kind", ["GetManagedObjects", "Set Locale"])
def test_an_hmi_that_never_reads_does_not_cost_the_agent_its_name(world: World, kind: str) -> None:
    """10,000 calls from a member of ``hmi`` that reads none of the answers.

    Before the agent's writer waited for a full socket, the agent lost its connection
    and its name within seconds (dbus-fast took EAGAIN for the end of the connection).
    The flood ends on ``en``, the locale the other tests expect.
    """
    owner = _owner(world.address)
    reader = ("--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
    command = [sys.executable, str(RAW_PEER), world.address, kind, str(FLOOD), "3"]
    environment = {**CLIENT_ENV, "PYTHONDONTWRITEBYTECODE": "1"}
    latencies: list[float] = []
    as_hmi = world.cast.hmi.argv(command, *reader)
    with running(as_hmi, stdout=True, env=environment) as (flood, out):
        while flood.poll() is None:  # the other HMI's calls meanwhile
            started = time.monotonic()
            args = (f"'{MANAGER_INTERFACE}'", "'DrivingRestricted'")
            reply = gdbus(world.address, world.cast.hmi, ROOT_PATH, f"{PROPERTIES}.Get", *args)
            assert reply.error is None, reply
            latencies.append(time.monotonic() - started)
        assert flood.returncode == 0, out.text
        assert f"sent {FLOOD}" in out.text
    assert _owner(world.address) == owner, "the agent's name changed hands"
    assert latencies, "no call made while the flood ran"
    assert max(latencies) < CALL_TIMEOUT_S / 3, latencies
    card = gdbus(world.address, world.cast.hmi, world.card, f"{PROPERTIES}.GetAll",
                 f"'{CARD_INTERFACE}'")  # fmt: skip
    assert card.error is None, card
