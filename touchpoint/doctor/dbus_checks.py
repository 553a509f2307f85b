"""D-Bus: the bus, the owner of ``org.touchpoint.Agent1``, the policy, the limits' refusals.

When nobody owns the name, the doctor asks the bus for it (and gives it back at once)
to learn whether the policy lets this user own it: D-Bus has no other way to ask. An
HMI watching the name sees it come and go, as after an agent's crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from xml.etree import ElementTree as ET

from dbus_fast import DBusError, Message, MessageType, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag

from touchpoint.doctor.report import Check, fail, ok, warn
from touchpoint.health import FILE_NAME, STALE_AFTER_S, read_health
from ui_bridge.names import BUS_NAME, bus_arguments
from ui_bridge.settings import DbusSettings

#: Where dbus-daemon reads system bus policies: packages, then the administrator's.
POLICY_DIRS: Final = (Path("/usr/share/dbus-1/system.d"), Path("/etc/dbus-1/system.d"))
POLICY_FILE: Final = f"{BUS_NAME}.conf"
_DRIVER: Final = "org.freedesktop.DBus"
_DRIVER_PATH: Final = "/org/freedesktop/DBus"


@dataclass(frozen=True, slots=True)
class NameProbe:
    """What the bus said about the agent's name.

    Attributes:
        owner: The unique name of its owner, if it has one.
        pid: The owner's process id, if the bus knows it.
        uid: The owner's user id, if the bus knows it.
        may_own: For a name without an owner: whether this user could take it.
        refusal: Why the bus refused it, if it did.
    """

    owner: str | None
    pid: int | None = None
    uid: int | None = None
    may_own: bool | None = None
    refusal: str | None = None


def check_dbus(
    settings: DbusSettings | None,
    *,
    timeout: float = 3.0,
    policy_dirs: Sequence[Path] = POLICY_DIRS,
) -> Iterator[Check]:
    """``dbus.bus``, ``dbus.name`` and, for the system bus, ``dbus.policy``."""
    if settings is None:
        yield warn(
            "dbus",
            "no [dbus] section: cards are decided and recorded, but no HMI can show them",
            'add [dbus] address = "system"',
        )
        return
    address = settings.address
    described = _describe(address)
    try:
        probe = asyncio.run(asyncio.wait_for(probe_name(address), timeout))
    except (OSError, DBusError, ValueError, KeyError, TimeoutError, EOFError) as err:
        reason = str(err) or type(err).__name__
        yield fail(
            "dbus.bus",
            f"cannot connect to {described}: {reason}",
            "is dbus-daemon running (systemctl status dbus)? check [dbus] address",
        )
    else:
        yield ok("dbus.bus", f"{described} is reachable")
        yield _name_check(probe)
    if address == "system":
        yield _policy_check(policy_dirs)


def check_dbus_limits(database: Path, *, now: float | None = None) -> Iterator[Check]:
    """``dbus.limits``, from the running daemon's health file (nothing without one).

    The bridge counts what it refused to a client over its per-connection limits (calls
    waiting for the agent, consent changes a minute) and how often it reconnected.
    """
    health = read_health(database.parent / FILE_NAME)
    if health is None or (now or time.time()) - health.written_at > STALE_AFTER_S:
        return
    figures = health.counters.get("dbus")
    if not figures:
        return
    calls, consent = figures.get("calls_refused", 0), figures.get("consent_changes_refused", 0)
    reconnects = figures.get("reconnects", 0)
    said = (
        f"since the agent started: {calls} call(s) and {consent} consent change(s) refused "
        f"over the per-connection limits, {reconnects} reconnection(s) to the bus"
    )
    if calls or consent:
        yield warn(
            "dbus.limits",
            said,
            "a client sends calls without waiting for the answers, or changes consent in a "
            "loop: find it (busctl --system monitor org.touchpoint.Agent1) and fix it",
        )
    else:
        yield ok("dbus.limits", said)


def _describe(address: str) -> str:
    if address == "system":
        where = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
        return f"the system bus ({where})"
    if address == "session":
        return f"the session bus ({os.environ.get('DBUS_SESSION_BUS_ADDRESS', 'not set')})"
    return f"the bus at {address}"


async def probe_name(address: str) -> NameProbe:
    """Connect to the bus and find out about :data:`BUS_NAME` (put a timeout around it).

    Raises:
        OSError, DBusError, ValueError: If the bus cannot be reached.
    """
    bus = MessageBus(**bus_arguments(address))
    await bus.connect()
    try:
        return await _probe(bus)
    finally:
        bus.disconnect()
        with contextlib.suppress(Exception):  # whatever ended the connection is moot now
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


async def _probe(bus: MessageBus) -> NameProbe:
    owner = await _driver_call(bus, "GetNameOwner", BUS_NAME)
    if isinstance(owner, str):
        pid = await _driver_call(bus, "GetConnectionUnixProcessID", owner)
        uid = await _driver_call(bus, "GetConnectionUnixUser", owner)
        return NameProbe(
            owner, pid if isinstance(pid, int) else None, uid if isinstance(uid, int) else None
        )
    try:
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
    except DBusError as err:
        return NameProbe(None, may_own=False, refusal=f"{err.type}: {err.text}")
    if reply is RequestNameReply.PRIMARY_OWNER:
        await bus.release_name(BUS_NAME)
        return NameProbe(None, may_own=True)
    # Taken between the two calls: the agent has just started.
    return await _probe(bus) if reply is RequestNameReply.EXISTS else NameProbe(None)


async def _driver_call(bus: MessageBus, member: str, name: str) -> object:
    """A bus driver method with one string argument; its single result, or ``None``."""
    call = Message(
        destination=_DRIVER,
        path=_DRIVER_PATH,
        interface=_DRIVER,
        member=member,
        signature="s",
        body=[name],
    )
    reply = await bus.call(call)
    if reply is None or reply.message_type is MessageType.ERROR or not reply.body:
        return None
    return reply.body[0]


def _user(uid: int | None) -> str:
    if uid is None:
        return "an unknown user"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _name_check(probe: NameProbe) -> Check:
    if probe.owner is not None:
        pid = f"pid {probe.pid}, " if probe.pid is not None else ""
        return ok(
            "dbus.name",
            f"{BUS_NAME} is owned by {probe.owner} ({pid}user {_user(probe.uid)}): "
            "the agent serves the HMI",
        )
    me = _user(os.getuid())
    if probe.may_own:
        return warn(
            "dbus.name",
            f"nobody owns {BUS_NAME}: the agent is not running (or not "
            f"serving D-Bus); this user, {me}, may own it",
            "start the agent (systemctl start touchpoint) and look at its log",
        )
    if probe.may_own is False:
        return warn(
            "dbus.name",
            f"nobody owns {BUS_NAME}: the agent is not running; this user, {me}, may not own "
            f"it ({probe.refusal}), as the policy intends unless the agent runs as this user",
            "start the agent as the user the policy names (touchpoint: systemctl start "
            "touchpoint); if it runs as this user, install the policy for it",
        )
    return warn(
        "dbus.name", f"{BUS_NAME} changed hands while the doctor looked", "run the doctor again"
    )


def _policy_check(policy_dirs: Sequence[Path]) -> Check:
    found = [d / POLICY_FILE for d in policy_dirs if (d / POLICY_FILE).exists()]
    places = " or ".join(str(d / POLICY_FILE) for d in policy_dirs)
    if not found:
        return fail(
            "dbus.policy",
            f"the bus policy is not installed ({places}): the system bus lets nobody own "
            f"{BUS_NAME}",
            f"install systemd/{POLICY_FILE} as {policy_dirs[-1] / POLICY_FILE} (packages: "
            f"{policy_dirs[0] / POLICY_FILE}); dbus-daemon picks it up by itself",
        )
    for path in found:
        try:
            # The file is root's configuration, read here only to see whether the bus can.
            root = ET.parse(path).getroot()  # noqa: S314
        except (OSError, ET.ParseError) as err:
            return fail(
                "dbus.policy",
                f"{path} cannot be read as XML ({err}): dbus-daemon ignores it",
                f"reinstall it from systemd/{POLICY_FILE}",
            )
        owns = [e for e in root.iter("allow") if e.get("own") == BUS_NAME]
        if root.tag != "busconfig" or not owns:
            return fail(
                "dbus.policy",
                f"{path} does not allow anyone to own {BUS_NAME}",
                f"reinstall it from systemd/{POLICY_FILE}",
            )
    return ok("dbus.policy", f"installed: {', '.join(str(p) for p in found)}")
