"""CAN: the DBC files and the mapping, each configured bus, and (on request) live traffic.

The DBC files and the mapping go through the daemon's own loaders, which name the file
and line of every problem. A socketcan interface is looked up in sysfs (it exists, it
is a CAN device, it is up). With ``listen`` seconds, every live bus is opened and the
frame IDs the mapping reads are looked for in its traffic.
"""

from __future__ import annotations

import socket
import time
import urllib.parse
from collections.abc import Generator, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Final

import can

from can_signals.binding import Binding, bind
from can_signals.dbc import DbcSource, load_dbcs
from can_signals.errors import DbcError, MappingError, SourceError
from can_signals.mapping import read_mapping
from can_signals.settings import BusSettings, CanSettings
from can_signals.sources import check_log
from can_signals.vss import VssError, VssRelease, load_vss
from touchpoint.doctor.report import Check, fail, ok, shorten, warn

SYSFS_NET: Final = Path("/sys/class/net")
#: ``/sys/class/net/<if>/type`` of a CAN device (ARPHRD_CAN).
ARPHRD_CAN: Final = 280
#: ``IFF_UP`` in ``/sys/class/net/<if>/flags``.
IFF_UP: Final = 0x1
#: The MTU of a CAN FD capable interface (``struct canfd_frame``); classic CAN has 16.
CANFD_MTU: Final = 72
_HOW_TO_FIX_A_FILE: Final = (
    "fix the file at the line named; `touchpoint signals --dbc ... --mapping ... "
    "--replay LOG` reports the same problems"
)


def check_can(
    settings: CanSettings | None,
    *,
    listen: float = 0.0,
    timeout: float = 3.0,
    sysfs: Path = SYSFS_NET,
) -> Iterator[Check]:
    """The CAN set-up: ``can.dbc``, ``.vss``, ``.mapping``, ``.<bus>``, ``.listen.<bus>``."""
    if settings is None:
        yield warn(
            "can",
            "no [can] section: the agent gets no signals (no reminders from the car's state)",
            "add [can] with mapping, dbc and buses (README: `touchpoint run`)",
        )
        return
    sources: list[DbcSource] = []
    try:
        sources = load_dbcs([(d.bus, d.file) for d in settings.dbc])
    except DbcError as err:
        yield fail("can.dbc", shorten([str(p) for p in err.problems]), _HOW_TO_FIX_A_FILE)
    else:
        messages = sum(len(s.database.messages) for s in sources)
        files = ", ".join(f"{s.path}{f' (bus {s.bus})' if s.bus else ''}" for s in sources)
        yield ok("can.dbc", f"{len(sources)} DBC file(s), {messages} messages: {files}")
    release: VssRelease | None = None
    if settings.vss is not None:
        try:
            release = load_vss(settings.vss)
        except VssError as err:
            yield fail(
                "can.vss",
                shorten([str(p) for p in err.problems]),
                "set [can] vss to a VSS release's JSON export (vspec export json), or remove it",
            )
        else:
            yield ok("can.vss", f"{settings.vss}: {len(release.leaves)} VSS signals")
    binding = yield from _check_mapping(settings.mapping, sources, release)
    if settings.replay is not None:
        yield _check_replay(settings.replay)
    elif not settings.buses:
        yield warn(
            "can",
            "no buses and no replay: the agent gets no signals",
            "add [[can.buses]] (name, interface, channel)",
        )
    for bus in settings.buses:
        yield _check_bus(bus, binding, sysfs, timeout)
    diagnostics = settings.diagnostics
    if diagnostics is not None and diagnostics.bus not in {b.name for b in settings.buses}:
        yield fail(
            "can.diagnostics",
            f"[can.diagnostics] bus {diagnostics.bus!r} is not one of the configured buses",
            "set it to the name of a [[can.buses]] entry",
        )
    if listen > 0 and settings.buses and settings.replay is None:
        yield from listen_for_frames(settings.buses, binding, listen)


def _check_mapping(
    mapping: Path, sources: Sequence[DbcSource], release: VssRelease | None
) -> Generator[Check, None, Binding | None]:
    document, problems = read_mapping(mapping)
    if not sources:  # the DBC files failed: only the file's own shape can be checked
        if problems:
            yield fail("can.mapping", shorten([str(p) for p in problems]), _HOW_TO_FIX_A_FILE)
        else:
            yield warn(
                "can.mapping",
                f"{mapping}: {len(document.entries)} entries read; not "
                "checked against the DBC files, which did not load",
                "fix the DBC files first",
            )
        return None
    try:
        binding = bind(document, sources, earlier=problems, vss=release)
    except MappingError as err:
        yield fail("can.mapping", shorten([str(p) for p in err.problems]), _HOW_TO_FIX_A_FILE)
        return None
    paths = len({b.entry.path for b in binding.bindings})
    frames = len({(b.dbc_index, b.key) for b in binding.bindings})
    described = f"{mapping}: {paths} VSS paths from {frames} frame IDs"
    if binding.warnings:
        yield warn(
            "can.mapping",
            f"{described}; {shorten([str(w) for w in binding.warnings])}",
            "pin the message with 'message:' where a signal is in several; declare "
            "'datatype' and 'unit', or set [can] vss, for paths outside the catalogue",
        )
    else:
        yield ok("can.mapping", described)
    return binding


def _check_replay(path: Path) -> Check:
    try:
        check_log(path)  # what the daemon does before replaying it
    except SourceError as err:
        return fail(
            "can.replay", str(err), "fix [can] replay: a readable candump .log, .asc, .blf or .trc"
        )
    return warn(
        "can.replay",
        f"the agent replays {path}, not a live bus (a development set-up)",
        "for a car, remove [can] replay and configure [[can.buses]]",
    )


def _check_bus(bus: BusSettings, binding: Binding | None, sysfs: Path, timeout: float) -> Check:
    name = f"can.{bus.name}"
    coverage = ""
    fd = binding is not None and binding.fd_for_bus(bus.name)
    if binding is not None:
        ids = binding.frame_ids_for_bus(bus.name)
        if not ids:
            return warn(
                name,
                f"{bus.interface} {bus.channel}: no DBC file or no mapped signal "
                "for this bus: its frames are not decoded",
                "give a DBC file for it (dbc = [{file = ..., bus = ...}]) or remove the bus",
            )
        coverage = f"; {len(ids)} mapped frame IDs"
    if bus.interface == "socketcan":
        return _check_socketcan(name, bus.channel, sysfs, coverage, fd=fd)
    if bus.interface == "virtual":
        return warn(
            name,
            f"virtual bus {bus.channel!r}: a simulation; only frames sent inside "
            f"the agent's own process arrive{coverage}",
            'for a car use interface = "socketcan" and the CAN device\'s name',
        )
    if bus.interface == "remote":
        return _check_remote(name, bus.channel, timeout, coverage)
    return ok(name, f"{bus.interface} {bus.channel}: not checked without --listen{coverage}")


def _check_socketcan(
    name: str, channel: str, sysfs: Path, coverage: str, *, fd: bool = False
) -> Check:
    device = sysfs / channel
    if not device.exists():
        return fail(
            name,
            f"socketcan {channel}: no such network interface",
            f"load the CAN driver (ip -details link show); for a test bus: modprobe vcan && "
            f"ip link add dev {channel} type vcan && ip link set up {channel}",
        )
    kind = _read_int(device / "type")
    if kind is not None and kind != ARPHRD_CAN:
        return fail(
            name,
            f"socketcan {channel}: not a CAN interface (type {kind})",
            "set [[can.buses]] channel to the CAN device (ip -details link)",
        )
    flags = _read_int(device / "flags", base=16)
    state = _read_text(device / "operstate") or "unknown"
    if flags is None or not flags & IFF_UP:
        return fail(
            name,
            f"socketcan {channel}: down (operstate {state})",
            f"ip link set {channel} up type can bitrate 500000 (vcan: ip link set up "
            f"{channel}); usually a systemd-networkd .network file does this",
        )
    mtu = _read_int(device / "mtu")
    if fd and mtu is not None and mtu < CANFD_MTU:
        return fail(
            name,
            f"socketcan {channel}: classic CAN (mtu {mtu}), but the mapping reads CAN FD "
            "messages: their frames never arrive",
            f"ip link set {channel} up type can bitrate 500000 dbitrate 2000000 fd on "
            f"(vcan: ip link set {channel} mtu {CANFD_MTU})",
        )
    return ok(name, f"socketcan {channel}: up (operstate {state}){coverage}")


def _check_remote(name: str, channel: str, timeout: float, coverage: str) -> Check:
    url = urllib.parse.urlsplit(channel)
    host, port = url.hostname, url.port or (443 if url.scheme == "wss" else 80)
    if host is None:
        return fail(name, f"remote {channel}: not a ws://host:port/ URL", "fix the channel")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return fail(
            name,
            f"remote {channel}: the python-can-remote server does not answer ({err})",
            f"start it: python -m can_remote -i virtual -c NAME -H 127.0.0.1 -p {port}",
        )
    return warn(
        name,
        f"remote {channel}: a python-can-remote server answers (a development bridge){coverage}",
        'for a car use interface = "socketcan"',
    )


def listen_for_frames(
    buses: Sequence[BusSettings], binding: Binding | None, seconds: float
) -> Iterator[Check]:
    """Listen on every bus for ``seconds``; which mapped frame IDs went by, per bus."""
    seen: dict[str, dict[tuple[int, bool], int]] = {b.name: {} for b in buses}
    opened: dict[str, can.BusABC] = {}
    with ExitStack() as stack:
        for bus in buses:
            try:
                live = can.Bus(interface=bus.interface, channel=bus.channel, **bus.options)
            except (can.CanError, OSError, ValueError, ImportError, NotImplementedError) as err:
                yield fail(
                    f"can.listen.{bus.name}",
                    f"cannot open {bus.interface} {bus.channel}: {err}",
                    "check the interface, channel and options; is the device there and up?",
                )
                continue
            stack.callback(live.shutdown)
            opened[bus.name] = live
        deadline = time.monotonic() + seconds
        slice_s = min(0.05, seconds / max(1, len(opened))) if opened else 0.0
        while opened and time.monotonic() < deadline:
            for name, live in opened.items():
                try:
                    message = live.recv(slice_s)
                except can.CanError:
                    continue
                while message is not None:
                    key = (message.arbitration_id, message.is_extended_id)
                    seen[name][key] = seen[name].get(key, 0) + 1
                    message = live.recv(0)
    for name in opened:
        wanted = binding.frame_ids_for_bus(name) if binding is not None else []
        yield _listen_result(name, seen[name], wanted, seconds)


def _listen_result(
    name: str, seen: dict[tuple[int, bool], int], wanted: list[tuple[int, bool]], seconds: float
) -> Check:
    check = f"can.listen.{name}"
    frames = sum(seen.values())
    if not frames:
        return fail(
            check,
            f"no frame in {seconds:g} s",
            "is the ignition on? check the wiring, "
            "the bitrate and the termination; `candump` should show traffic",
        )
    if not wanted:
        return ok(
            check,
            f"{frames:,} frames of {len(seen)} IDs in {seconds:g} s (nothing mapped on this bus)",
        )
    found = [w for w in wanted if w in seen]
    missing = sorted(_hex(w) for w in wanted if w not in seen)
    described = (
        f"{len(found)} of {len(wanted)} mapped frame IDs seen in {seconds:g} s "
        f"({frames:,} frames of {len(seen)} IDs)"
    )
    if not found:
        return fail(
            check,
            f"{described}: this bus carries none of what the DBC and mapping read",
            "check that the DBC file describes this car and this bus "
            "(touchpoint signals on a recording shows what decodes)",
        )
    if missing:
        return warn(
            check,
            f"{described}; not seen: {shorten(missing, 8)}",
            "some frames are "
            "sent only on events (faults, charging): listen longer or in that "
            "situation; otherwise check the DBC",
        )
    return ok(check, described)


def _hex(key: tuple[int, bool]) -> str:
    frame_id, extended = key
    return f"0x{frame_id:08X}" if extended else f"0x{frame_id:03X}"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path, base: int = 10) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None
