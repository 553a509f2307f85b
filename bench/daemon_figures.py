"""The running daemon: time from start to ``READY=1``, and resident memory after a long drive.

Both figures come from ``touchpoint run --config FILE`` in a subprocess, as systemd runs
it, on a car that has been in use: the reference car's DBC and mapping, a store on a
real disk (:mod:`bench.scratch`) holding 100,000 events no cloud has drained (the
default budget) and the agent's state with 50 cloud campaign rules active.

- Start-up: ``$NOTIFY_SOCKET`` points at a datagram socket the benchmark binds; the
  figure is the wall time from spawning the process to receiving ``READY=1``, on a live
  (silent) python-can ``virtual`` bus. It is split into the interpreter's own start,
  the imports (found with ``-X importtime``, timed without it), and the daemon's
  ``start()`` (which it logs).
- Memory: the daemon replays the whole simulated drive (:mod:`bench.drive`) at speed 0;
  once it logs that the signal source ended and its commits have settled, ``VmRSS`` and
  ``VmHWM`` (the peak) are read from ``/proc/PID/status``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent import state_codec
from bench import import_shares
from bench.agent_setup import TYPICAL_RULES, bench_agent
from bench.drive import CHANNEL, Drive, recorded_drive
from bench.installed import Interpreter, development, installed
from bench.outbox import FULL_OUTBOX, prefill, quiet_store
from bench.processes import daemon_environment, status_bytes, stop, tail
from bench.report import REPEATS, Row, Section
from bench.rulesets import cloud_rules
from bench.scratch import disk_dir
from can_signals.simulator import reference_files
from touchpoint.commands.run import uses_tls
from touchpoint.daemon import HEAP_TRIM_S
from touchpoint.settings import load_settings

#: The issue's targets.
READY_TARGET_S: Final = 1.0
RSS_TARGET_MB: Final = 50.0
#: Runs of the long drive (each replays about 640,000 frames).
MEMORY_REPEATS: Final = 3
#: Give up on a daemon that has not said READY, or finished the drive, by then.
READY_TIMEOUT_S: Final = 30.0
DRIVE_TIMEOUT_S: Final = 300.0
#: After the replay ends: time for the last commits and one heap release of the daemon's.
SETTLE_S: Final = HEAP_TRIM_S + 2.0
#: What the daemon logs (at INFO, which ``touchpoint run`` uses) at these moments.
_STARTED: Final = re.compile(r"touchpoint started in (\d+) ms")
_SOURCE_ENDED: Final = "the signal source ended"
_IMPORT_LINE: Final = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")
_KIB: Final = 1024
_MB: Final = 1_000_000


def _command(python: Interpreter, config: Path, *interpreter_options: str) -> list[str]:
    """``touchpoint run --config FILE`` as ``python`` runs it."""
    return [str(python.python), *interpreter_options, *python.entry, "run", "--config", str(config)]


def _write_config(path: Path, store: Path, *, replay: Path | None) -> None:
    """A TOML config: the reference car, a live virtual bus or a replay at speed 0."""
    files = reference_files()
    source = (
        f'replay = "{replay}"\nreplay_speed = 0\n'
        if replay is not None
        else (
            "[[can.buses]]\n"
            f'name = "{CHANNEL}"\ninterface = "virtual"\nchannel = "bench-{os.getpid()}"\n'
        )
    )
    path.write_text(
        f'[vehicle]\nid = "bench-car"\n\n'
        f'[store]\npath = "{store}"\n\n'
        f'[can]\nmapping = "{files.mapping}"\n{source}\n'
        f'[[can.dbc]]\nfile = "{files.dbc}"\n',
        encoding="utf-8",
    )


def _seed_store(path: Path, drive: Drive) -> None:
    """The store of a car in use: a full outbox and the agent's state, rules included."""
    start = drive.updates[0].timestamp
    agent = bench_agent(cloud_rules(TYPICAL_RULES, start), start)
    with quiet_store():
        prefill(path, FULL_OUTBOX, start - FULL_OUTBOX, state_codec.encode(agent))


@contextlib.contextmanager
def _notify_socket(directory: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = directory / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        yield sock, path
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def _await_ready(sock: socket.socket, process: subprocess.Popen[bytes], log: Path) -> float:
    """Block until ``READY=1`` arrives; its ``perf_counter`` time.

    Raises:
        RuntimeError: If the daemon exits or stays silent past the timeout.
    """
    deadline = time.perf_counter() + READY_TIMEOUT_S
    sock.settimeout(0.05)
    while time.perf_counter() < deadline:
        try:
            message = sock.recv(4096)
        except TimeoutError:
            if process.poll() is not None:
                raise RuntimeError(f"the daemon exited before READY:\n{tail(log)}") from None
            continue
        arrived = time.perf_counter()
        if b"READY=1" in message.split(b"\n"):
            return arrived
    raise RuntimeError(f"no READY=1 within {READY_TIMEOUT_S} s:\n{tail(log)}")


# --- start-up --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Start:
    """One start: spawn to READY, and what the daemon said its ``start()`` took."""

    ready_s: float
    start_method_s: float


def _start_once(command: Sequence[str], directory: Path, sock: socket.socket) -> _Start:
    log = directory / "daemon.log"
    with log.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=daemon_environment(directory / "notify.sock"),
            cwd=directory,
        )
        try:
            ready = _await_ready(sock, process, log) - started
        finally:
            stop(process)
    text = log.read_text(encoding="utf-8", errors="replace")
    match = _STARTED.search(text)
    method = int(match.group(1)) / 1000 if match else float("nan")
    if process.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(f"the daemon exited with {process.returncode}:\n{tail(log)}")
    return _Start(ready, method)


def _top_level_imports(stderr: str) -> list[str]:
    """The modules ``-X importtime`` lists at the top level (imported by code, not by
    another module's import), in order.
    """
    names = []
    for line in stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match and not match.group(3):
            names.append(match.group(4))
    return names


def _daemon_imports(
    python: Interpreter, config: Path, directory: Path, sock: socket.socket
) -> list[str]:
    """What a start of the daemon imports up to READY, bare interpreter's own imports left out.

    ``-X importtime`` slows every import down by its bookkeeping, so its times are not
    used: only the names, which :func:`_import_seconds` then imports again, untraced.
    """
    _start_once(_command(python, config, "-X", "importtime"), directory, sock)
    daemon = _top_level_imports((directory / "daemon.log").read_text(encoding="utf-8"))
    bare = subprocess.run(
        [str(python.python), "-X", "importtime", "-c", "pass"],
        check=True,
        capture_output=True,
        text=True,
        env=daemon_environment(None),
        cwd=directory,
    )
    startup = set(_top_level_imports(bare.stderr))
    return [name for name in daemon if name not in startup]


#: Imports the modules named in argv[2:] in order (without ``ssl`` if argv[1] is
#: ``no-tls``, as ``touchpoint run`` leaves it out); prints the seconds it took and VmRSS (KiB).
_TIME_IMPORTS: Final = (
    "import importlib, pathlib, sys, time\n"
    "if sys.argv[1] == 'no-tls':\n"
    "    sys.modules['ssl'] = None\n"
    "began = time.perf_counter()\n"
    "for name in sys.argv[2:]:\n"
    "    importlib.import_module(name)\n"
    "took = time.perf_counter() - began\n"
    "status = pathlib.Path('/proc/self/status').read_text().splitlines()\n"
    "rss = [line.split()[1] for line in status if line.startswith('VmRSS:')][0]\n"
    "print(took, rss)\n"
)


def _import_figures(
    python: Interpreter, modules: Sequence[str], directory: Path, *, tls: bool
) -> tuple[float, int]:
    """Seconds a fresh interpreter takes to import ``modules`` (the daemon's), untraced,
    and its resident set afterwards in bytes.
    """
    flag = "tls" if tls else "no-tls"
    result = subprocess.run(
        [str(python.python), "-c", _TIME_IMPORTS, flag, *modules],
        check=True,
        capture_output=True,
        text=True,
        env=daemon_environment(None),
        cwd=directory,
    )
    took, rss = result.stdout.split()[-2:]
    return float(took), int(rss) * _KIB


def _bare_interpreter_s(python: Interpreter, directory: Path) -> float:
    """Wall time of ``python -c pass`` (spawn to exit): the interpreter's own start."""
    started = time.perf_counter()
    subprocess.run(
        [str(python.python), "-c", "pass"], check=True, env=daemon_environment(None), cwd=directory
    )
    return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class _Startup:
    """One interpreter's start-up figures (medians), in seconds; RSS after imports in bytes."""

    ready: float
    interpreter: float
    imported: float
    method: float
    modules: tuple[str, ...]
    imports_rss: float


def _measure_startup(python: Interpreter, directory: Path, seed: Path) -> _Startup:
    store = directory / "startup.db"
    shutil.copyfile(seed, store)
    config = directory / "startup.toml"
    _write_config(config, store, replay=None)
    command = _command(python, config)
    with _notify_socket(directory) as (sock, _):
        _start_once(command, directory, sock)  # warm-up: page cache, .pyc files, WAL
        starts = [_start_once(command, directory, sock) for _ in range(REPEATS)]
        modules = _daemon_imports(python, config, directory, sock)
    tls = uses_tls(load_settings(config, environ={}))
    samples = [_import_figures(python, modules, directory, tls=tls) for _ in range(REPEATS)]
    return _Startup(
        ready=statistics.median(s.ready_s for s in starts),
        interpreter=statistics.median(_bare_interpreter_s(python, directory) for _ in range(3)),
        imported=statistics.median(s[0] for s in samples),
        method=statistics.median(s.start_method_s for s in starts),
        modules=tuple(modules),
        imports_rss=statistics.median(s[1] for s in samples),
    )


def _startup_section(
    main: tuple[Interpreter, _Startup],
    other: tuple[Interpreter, _Startup] | None,
    notes: Sequence[str],
) -> Section:
    python, figures = main
    ms = 1000
    rest = figures.ready - figures.interpreter - figures.imported - figures.method
    rows = [
        Row("touchpoint run: spawn to READY=1", figures.ready * ms, "ms", READY_TARGET_S * ms),
        Row(
            "  of which the interpreter's own start (python -c pass)",
            figures.interpreter * ms,
            "ms",
        ),
        Row("  of which imports (touchpoint.daemon & co, untraced)", figures.imported * ms, "ms"),
        Row("  of which Daemon.start() (store, agent, pipeline)", figures.method * ms, "ms"),
        Row("  of which the rest (settings, asyncio, logging; by difference)", rest * ms, "ms"),
    ]
    if other is not None:
        rows.append(Row(f"spawn to READY=1, {other[0].label}", other[1].ready * ms, "ms"))
    return Section(
        f"Daemon start-up: spawn to READY=1 (wall clock), {python.label}",
        tuple(Row(r.label, r.value, "ms", r.target, digits=0) for r in rows),
        (
            (
                f"median of {REPEATS} starts after one warm-up (warm page cache); reference car "
                "DBC and mapping, a live silent virtual bus, 50 cloud rules in the stored state; "
                f"1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall "
                "time: load counts)."
            ),
            (
                f"the store holds {FULL_OUTBOX:,} events (a full outbox): opening it runs "
                "quick_check and counts the outbox."
            ),
            (
                "imports: the modules a start imports (found with -X importtime, minus a bare "
                "interpreter's), imported again untraced in a fresh interpreter: "
                f"{', '.join(figures.modules)}."
            ),
            *notes,
        ),
    )


# --- memory ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Memory:
    """Resident set figures of one drive, in bytes."""

    at_ready: int
    after: int
    peak: int
    anon: int
    files: int
    drive_s: float


def _drive_once(
    python: Interpreter, directory: Path, seed: Path, drive: Drive, index: int
) -> _Memory:
    store = directory / f"memory-{index}.db"
    shutil.copyfile(seed, store)
    config = directory / "memory.toml"
    _write_config(config, store, replay=drive.log)
    log = directory / "daemon.log"
    with _notify_socket(directory) as (sock, notify), log.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            _command(python, config),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=daemon_environment(notify),
            cwd=directory,
        )
        try:
            _await_ready(sock, process, log)
            at_ready = status_bytes(process.pid)["VmRSS"]
            deadline = time.perf_counter() + DRIVE_TIMEOUT_S
            while _SOURCE_ENDED not in log.read_text(encoding="utf-8", errors="replace"):
                if process.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"the drive did not finish:\n{tail(log)}")
                time.sleep(0.2)
            drive_s = time.perf_counter() - started
            time.sleep(SETTLE_S)
            status = status_bytes(process.pid)
        finally:
            stop(process)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    return _Memory(
        at_ready, status["VmRSS"], status["VmHWM"], status["RssAnon"], status["RssFile"], drive_s
    )


def _measure_memory(python: Interpreter, directory: Path, seed: Path, drive: Drive) -> _Memory:
    """Medians of :data:`MEMORY_REPEATS` drives."""
    runs = [_drive_once(python, directory, seed, drive, i) for i in range(MEMORY_REPEATS)]

    def median(field: str) -> int:
        return int(statistics.median(getattr(r, field) for r in runs))

    return _Memory(
        median("at_ready"),
        median("after"),
        median("peak"),
        median("anon"),
        median("files"),
        statistics.median(r.drive_s for r in runs),
    )


def _memory_section(
    main: tuple[Interpreter, _Memory, _Startup],
    other: tuple[Interpreter, _Memory] | None,
    drive: Drive,
    notes: Sequence[str],
) -> Section:
    python, figures, startup = main
    rows = [
        Row("RSS after the drive (VmRSS)", figures.after / _MB, "MB", RSS_TARGET_MB),
        Row("  of which anonymous (heap: objects, code)", figures.anon / _MB, "MB"),
        Row("  of which file-backed (shared libraries)", figures.files / _MB, "MB"),
        Row("peak RSS during the drive (VmHWM)", figures.peak / _MB, "MB", RSS_TARGET_MB),
        Row("RSS at READY=1 (drive just starting)", figures.at_ready / _MB, "MB"),
        Row(
            "RSS of a bare interpreter after the daemon's imports alone",
            startup.imports_rss / _MB,
            "MB",
        ),
    ]
    if other is not None:
        compared, theirs = other
        rows += [
            Row(f"RSS after the drive, {compared.label}", theirs.after / _MB, "MB"),
            Row("  of which file-backed (shared libraries)", theirs.files / _MB, "MB"),
        ]
    return Section(
        f"Daemon memory: resident set after a long drive, 100,000 events buffered, {python.label}",
        tuple(Row(r.label, r.value, r.unit, r.target, digits=1) for r in rows),
        (
            (
                f"median of {MEMORY_REPEATS} runs of touchpoint run replaying the whole drive at "
                f"speed 0: {drive.frames:,} frames, {drive.seconds / 60:.0f} min of driving and "
                f"charging, {len(drive.updates):,} signal updates; "
                f"{figures.drive_s:.1f} s per run."
            ),
            (
                f"read {SETTLE_S:.0f} s after the replay ends (the last commits, and one round of "
                f"the heap release the daemon does every {HEAP_TRIM_S:.0f} s)."
            ),
            (
                f"store pre-filled with {FULL_OUTBOX:,} events and no cloud connected: the "
                "drive's events evict the oldest low-priority ones. MB = 10^6 bytes."
            ),
            *notes,
        ),
    )


def run() -> list[Section]:
    """Start the daemon again and again, then let it drive; return both tables.

    Measured on the installed form (what the target is about) and on the development
    venv; with only the latter when the installed form cannot be built.
    """
    drive = recorded_drive()
    develop = development()
    with disk_dir("daemon") as directory:
        seed = directory / "seed.db"
        _seed_store(seed, drive)
        built = installed(directory / "install")
        if isinstance(built, str):
            main, compared = develop, None
            notes: tuple[str, ...] = (f"measured in the {develop.label} only: {built}.",)
        else:
            main, compared = built, develop
            notes = (
                (
                    "the target is checked on the installed form, as the systemd unit runs it "
                    "(docs/systemd.md); the development venv differs by its interpreter (a "
                    "pyenv build with a shared libpython) and its editable install."
                ),
            )
        main_start = _measure_startup(main, directory, seed)
        main_memory = _measure_memory(main, directory, seed, drive)
        other_start = other_memory = None
        if compared is not None:
            other_start = (compared, _measure_startup(compared, directory, seed))
            other_memory = (compared, _measure_memory(compared, directory, seed, drive))
        configuration = "CAN, no D-Bus, no cloud (the drive)"
        return [
            _startup_section((main, main_start), other_start, notes),
            _memory_section((main, main_memory, main_start), other_memory, drive, notes),
            Section(
                f"Daemon memory by imported library: {configuration}",
                import_shares.rows(configuration),
                ("VmRSS added by importing each library in turn, in a fresh interpreter",),
            ),
        ]
