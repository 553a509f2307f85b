"""``touchpoint fleet-sim``: many cars' sync clients against one broker (:mod:`.fleet_sim`).

It connects the cars, waits until they are online, records events for ``--duration``
(every car at ``--rate``), lets the outboxes drain, and prints what the fleet offered
and what the broker acknowledged, the backlog, reconnects and the CPU it took. Lines
``recording ...`` and ``stopped recording ...`` mark the measured window, for tools
that sample other processes over the same span.

A process takes a core's worth of cars (:data:`PER_PROCESS` by default); a larger fleet
is shared out to worker processes (``fleet-sim --worker``), which this one drives over
their standard input and output, one JSON line per answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from cloud_sync.link import client_tls_context
from cloud_sync.reference import dynsec
from cloud_sync.reference.fleet_sim import (
    DEFAULT_PREFIX,
    DEFAULT_RATE,
    Fleet,
    FleetError,
    FleetOptions,
    FleetSnapshot,
    vehicle_ids,
)
from cloud_sync.reference.pki import DevPki
from cloud_sync.settings import CloudSettings
from touchpoint.commands.cloud_sim import DEV_KEY_ID, host_port
from touchpoint.progress import Progress

#: The subcommand's one-line help (for ``touchpoint/cli.py``).
HELP: Final = "many simulated cars' cloud sync against one broker, to size a broker and cloud"
#: Cars per worker process when ``--processes`` is not given: at the default rate, about
#: what one core's worth of Python takes while the broker and the cloud keep theirs.
PER_PROCESS: Final = 250
#: How often the online count is looked at while the fleet connects.
_POLL_S: Final = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options."""
    parser.add_argument("--broker", default="127.0.0.1:8883", metavar="HOST:PORT",
                        help="the broker's vehicle listener (default: 127.0.0.1:8883)")  # fmt: skip
    parser.add_argument("--ca", type=Path,
                        help="CA certificate the broker's must chain to (default: "
                             "CERT_DIR/ca.crt)")  # fmt: skip
    parser.add_argument("--cert-dir", type=Path,
                        help="client-ID.crt and client-ID.key per vehicle; a development "
                             "PKI directory (with ca.key) issues the missing ones")  # fmt: skip
    parser.add_argument("--plain", action="store_true",
                        help="no TLS: a plain loopback listener, each car claiming its id "
                             "as user name")  # fmt: skip
    parser.add_argument("--vehicles", type=int, default=10, metavar="N",
                        help="how many cars (default: 10)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, metavar="EVENTS/S",
                        help=f"events a second per car, Poisson (default: {DEFAULT_RATE}, "
                             "a busy car)")  # fmt: skip
    parser.add_argument("--duration", type=float, metavar="S",
                        help="record for S seconds (default: until interrupted)")  # fmt: skip
    parser.add_argument("--drain", type=float, default=10.0, metavar="S",
                        help="after recording, wait up to S seconds for the outboxes to "
                             "empty (default: 10)")  # fmt: skip
    parser.add_argument("--store-dir", type=Path,
                        help="the cars' databases, one per car, kept between runs (default: "
                             "a temporary directory, removed)")  # fmt: skip
    parser.add_argument("--store-threads", type=int, default=1, metavar="N",
                        help="store threads per process (default: 1)")  # fmt: skip
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help="ids: PREFIX-00000, PREFIX-00001... (default: fleet)")  # fmt: skip
    parser.add_argument("--first", type=int, default=0, metavar="N",
                        help="the number of the first car (default: 0)")  # fmt: skip
    parser.add_argument("--cloud-key", metavar="[ID=]BASE64",
                        help="the cloud's public signing key, as cloud-sim prints it, for "
                             f"the cars to accept its documents (key id default: "
                             f"{DEV_KEY_ID})")  # fmt: skip
    parser.add_argument("--processes", type=int, default=0, metavar="N",
                        help=f"share the cars out to N processes (default: one per "
                             f"{PER_PROCESS} cars)")  # fmt: skip
    parser.add_argument("--connect-rate", type=float, default=200.0, metavar="CARS/S",
                        help="cars connecting a second at the start (default: 200)")  # fmt: skip
    parser.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                        help="record anyway after S seconds if not every car is online "
                             "(default: 60)")  # fmt: skip
    parser.add_argument("--interval", type=float, default=5.0, metavar="S",
                        help="print the counts every S seconds (default: 5)")  # fmt: skip
    parser.add_argument("--seed", type=int, help="for the random event times and types")
    parser.add_argument("--json", action="store_true",
                        help="also print the summary as one JSON line at the end")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Simulate the fleet; 0 if every event recorded was acknowledged, 1 if not, 2 on usage."""
    problem = _check(args)
    if problem is not None:
        print(f"fleet-sim: {problem}", file=sys.stderr)
        return 2
    try:
        if args.worker:
            return asyncio.run(_serve(args))
        return asyncio.run(_drive(args))
    except FleetError as err:
        print(f"fleet-sim: {err}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace) -> str | None:
    if host_port(args.broker) is None:
        return f"--broker must be HOST:PORT, not {args.broker!r}"
    if not args.plain and args.cert_dir is None:
        return "give --cert-dir (mutual TLS), or --plain"
    if args.vehicles < 1 or args.rate < 0 or args.processes < 0 or args.store_threads < 1:
        return "--vehicles and --store-threads must be positive, --rate not negative"
    return None


def _signing_key(text: str) -> tuple[str, str]:
    # Base64 ends in padding "=", never holds one inside: an inner "=" follows the id.
    key_id, _, public = text.partition("=") if "=" in text.rstrip("=") else ("", "", text)
    return (key_id or DEV_KEY_ID, public)


def settings_factory(args: argparse.Namespace) -> Callable[[str], CloudSettings]:
    """A car's ``[cloud]`` settings by vehicle id, issuing certificates that are missing.

    Raises:
        FleetError: (from the factory) A car has no certificate and none can be issued.
    """
    address = host_port(args.broker)
    assert address is not None  # checked by _check
    host, port = address
    keys = dict([_signing_key(args.cloud_key)]) if args.cloud_key else {}
    if args.plain:
        return lambda _vehicle_id: CloudSettings(host=host, port=port, tls=False, signing_keys=keys)
    cert_dir: Path = args.cert_dir
    ca: Path = args.ca or cert_dir / "ca.crt"
    issuer: list[DevPki] = []  # loaded on first need: most runs have every certificate

    def settings(vehicle_id: str) -> CloudSettings:
        cert, key = cert_dir / f"client-{vehicle_id}.crt", cert_dir / f"client-{vehicle_id}.key"
        if not (cert.exists() and key.exists()):
            if not (cert_dir / "ca.key").exists():
                raise FleetError(f"no certificate for {vehicle_id} in {cert_dir}, and no CA "
                                 "there to issue one")  # fmt: skip
            if not issuer:
                issuer.append(DevPki.load(cert_dir))
            cert, key = issuer[0].issue_client(vehicle_id)
        return CloudSettings(host=host, port=port, ca_file=ca, cert_file=cert, key_file=key,
                             signing_keys=keys)  # fmt: skip

    return settings


# -- the members of the fleet: this process, or worker processes --------------------------


class _Member(Protocol):
    """A share of the fleet: in this process, or in a worker."""

    async def snapshot(self) -> FleetSnapshot:
        """Its counters now."""

    async def record(self) -> FleetSnapshot:
        """Start recording; the counters just before."""

    async def pause(self) -> FleetSnapshot:
        """Stop recording; the counters just after."""

    async def stop(self) -> FleetSnapshot:
        """Disconnect and close; the last counters."""


class _Local:
    """The fleet in this process."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def snapshot(self) -> FleetSnapshot:
        return await self.fleet.snapshot()

    async def record(self) -> FleetSnapshot:
        before = await self.fleet.snapshot()
        self.fleet.start_recording()
        return before

    async def pause(self) -> FleetSnapshot:
        await self.fleet.stop_recording()
        return await self.fleet.snapshot()

    async def stop(self) -> FleetSnapshot:
        await self.fleet.stop_recording()
        last = await self.fleet.snapshot()
        await self.fleet.stop()
        return last


class _Worker:
    """A worker process, asked one line at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._lock = asyncio.Lock()

    @classmethod
    async def spawn(cls, argv: Sequence[str]) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "touchpoint.cli",
            f"--log-level={logging.getLevelName(logging.getLogger().getEffectiveLevel())}",
            "fleet-sim", *argv, "--worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        worker = cls(process)
        answer = await worker._read()
        if "error" in answer:
            await worker._end()
            raise FleetError(str(answer["error"]))
        return worker

    async def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            code = await self._process.wait()
            raise FleetError(f"a fleet worker process ended (exit status {code})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def _ask(self, command: str) -> FleetSnapshot:
        async with self._lock:
            assert self._process.stdin is not None
            self._process.stdin.write(f"{command}\n".encode())
            await self._process.stdin.drain()
            return FleetSnapshot(**await self._read())

    async def _end(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 30)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()

    async def snapshot(self) -> FleetSnapshot:
        return await self._ask("snapshot")

    async def record(self) -> FleetSnapshot:
        return await self._ask("record")

    async def pause(self) -> FleetSnapshot:
        return await self._ask("pause")

    async def stop(self) -> FleetSnapshot:
        last = await self._ask("stop")
        await self._end()
        return last


async def _serve(args: argparse.Namespace) -> int:
    """A worker: run a share of the fleet, as the driving process asks on stdin."""
    # The driving process decides when to stop (a Ctrl-C reaches the whole group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fleet = Fleet(_options(args, args.store_dir))
    try:
        await fleet.start()
    except FleetError as err:
        _answer({"error": str(err)})
        await fleet.stop()
        return 1
    _answer({"ready": True})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    local = _Local(fleet)
    commands: dict[str, Callable[[], Any]] = {
        "snapshot": local.snapshot, "record": local.record, "pause": local.pause,
    }  # fmt: skip
    try:
        while line := (await reader.readline()).decode().strip():
            if line == "stop":
                break
            _answer(dataclasses.asdict(await commands[line]()))
    finally:
        last = await local.stop()  # also when the driving process is gone (end of input)
    _answer(dataclasses.asdict(last))
    return 0


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _options(args: argparse.Namespace, store_dir: Path) -> FleetOptions:
    return FleetOptions(
        vehicles=args.vehicles, settings=settings_factory(args), store_dir=store_dir,
        rate=args.rate, prefix=args.prefix, first=args.first,
        store_threads=args.store_threads, connect_rate=args.connect_rate, seed=args.seed,
    )  # fmt: skip


# -- driving the fleet ------------------------------------------------------------------------


async def _drive(args: argparse.Namespace) -> int:
    processes = args.processes or math.ceil(args.vehicles / PER_PROCESS)
    processes = min(processes, args.vehicles)
    with _store_dir(args.store_dir) as store_dir:
        ids = vehicle_ids(args.prefix, args.first, args.vehicles)
        mode = "plain" if args.plain else "TLS"
        print(f"fleet-sim: {args.vehicles} cars ({ids[0]} .. {ids[-1]}) in {processes} "
              f"process(es), {args.rate:g} events/s each, broker {args.broker} ({mode}), "
              f"stores in {store_dir}", flush=True)  # fmt: skip
        if not args.plain and (args.cert_dir / "ca.key").exists():
            await asyncio.to_thread(_register, args, ids)
        members = await _start(args, store_dir, processes)
        try:
            return await _measure(args, members, processes)
        finally:
            await asyncio.gather(*(m.stop() for m in members), return_exceptions=True)


def _register(args: argparse.Namespace, ids: Sequence[str]) -> None:
    """Register the cars with the broker's access control, as provisioning would.

    Only with a development CA in ``--cert-dir``: it issues the administrator's
    certificate too. A broker without the dynamic-security plugin does not answer; the
    cars then run on whatever it grants them.
    """
    address = host_port(args.broker)
    assert address is not None  # checked by _check
    cert_dir: Path = args.cert_dir
    pki = DevPki.load(cert_dir)
    cert, key = pki.client_files(dynsec.ADMIN_USER)
    if not (cert.exists() and key.exists()):
        pki.issue_client(dynsec.ADMIN_USER)
    tls = client_tls_context(args.ca or cert_dir / "ca.crt", cert, key)
    try:
        registrar = dynsec.Registrar(*address, tls)
        try:
            registrar.register(ids)
        finally:
            registrar.close()
    except dynsec.DynsecError as err:
        print(f"fleet-sim: cars not registered with the broker: {err}", file=sys.stderr)


@contextlib.contextmanager
def _store_dir(given: Path | None) -> Any:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    made = Path(tempfile.mkdtemp(prefix="touchpoint-fleet-"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


async def _start(args: argparse.Namespace, store_dir: Path, processes: int) -> list[_Member]:
    if processes == 1:
        fleet = Fleet(_options(args, store_dir))
        try:
            await fleet.start()
        except BaseException:
            await fleet.stop()
            raise
        return [_Local(fleet)]
    shares = [args.vehicles // processes + (i < args.vehicles % processes)
              for i in range(processes)]  # fmt: skip
    firsts = [args.first + sum(shares[:i]) for i in range(processes)]
    argvs = [
        _worker_argv(args, store_dir, share=share, first=first, index=i, count=processes)
        for i, (share, first) in enumerate(zip(shares, firsts, strict=True))
    ]
    spawned = await asyncio.gather(*(_Worker.spawn(a) for a in argvs), return_exceptions=True)
    members: list[_Member] = [w for w in spawned if isinstance(w, _Worker)]
    errors = [e for e in spawned if isinstance(e, BaseException)]
    if errors:
        await asyncio.gather(*(m.stop() for m in members), return_exceptions=True)
        raise errors[0]
    return members


def _worker_argv(
    args: argparse.Namespace, store_dir: Path, *, share: int, first: int, index: int, count: int
) -> list[str]:
    argv = [
        "--broker", args.broker, "--vehicles", str(share), "--first", str(first),
        "--rate", repr(args.rate), "--prefix", args.prefix, "--store-dir", str(store_dir),
        "--store-threads", str(args.store_threads),
        "--connect-rate", repr(args.connect_rate / count),
    ]  # fmt: skip
    if args.plain:
        argv.append("--plain")
    else:
        argv += ["--cert-dir", str(args.cert_dir)]
        if args.ca is not None:
            argv += ["--ca", str(args.ca)]
    if args.cloud_key:
        argv += ["--cloud-key", args.cloud_key]
    if args.seed is not None:
        argv += ["--seed", str(args.seed + index)]
    return argv


def _total(snapshots: Sequence[FleetSnapshot], own_cpu: float | None) -> FleetSnapshot:
    """The fleet's counters: the members' summed (and this process's CPU, if not a member)."""
    fields = ("vehicles", "online", "recorded", "acknowledged", "backlog", "reconnects",
              "failures", "commit_failures")  # fmt: skip
    sums = {f: sum(getattr(s, f) for s in snapshots) for f in fields}
    cpu = sum(s.cpu_s for s in snapshots) + (own_cpu or 0.0)
    return FleetSnapshot(at=max(s.at for s in snapshots), cpu_s=cpu, **sums)


async def _measure(args: argparse.Namespace, members: list[_Member], processes: int) -> int:
    # Workers report their own CPU; the driving process then only coordinates.
    own: Callable[[], float | None] = time.process_time if processes > 1 else lambda: None

    async def total(step: Callable[[_Member], Any]) -> FleetSnapshot:
        return _total(await asyncio.gather(*(step(m) for m in members)), own())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    began = time.monotonic()
    now = await total(lambda m: m.snapshot())
    while now.online < now.vehicles and time.monotonic() - began < args.connect_timeout:
        if await _wait(stop, _POLL_S):
            break
        now = await total(lambda m: m.snapshot())
    print(f"online {now.online}/{now.vehicles} after {time.monotonic() - began:.1f} s",
          flush=True)  # fmt: skip
    start = await total(lambda m: m.record())
    length = "until interrupted" if args.duration is None else f"for {args.duration:g} s"
    print(f"recording {length}", flush=True)
    last = start
    while not stop.is_set():
        remaining = (
            math.inf if args.duration is None else start.at + args.duration - time.monotonic()
        )
        if remaining <= 0 or await _wait(stop, min(args.interval, remaining)):
            break
        now = await total(lambda m: m.snapshot())
        print(_progress(now, last, start), flush=True)
        last = now
    end = await total(lambda m: m.pause())
    window = end.at - start.at
    print(f"stopped recording after {window:.1f} s", flush=True)
    now = end
    if now.backlog:
        with Progress(now.backlog, unit="events", label="draining", stream=sys.stderr) as bar:
            while now.backlog and time.monotonic() - end.at < args.drain and not stop.is_set():
                await _wait(stop, 0.25)
                now = await total(lambda m: m.snapshot())
                bar.update(max(0, end.backlog - now.backlog))
    print(f"backlog {now.backlog} after draining {time.monotonic() - end.at:.1f} s", flush=True)
    summary = _summary(start, end, now, window, processes)
    print(_summary_line(summary), flush=True)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0 if now.backlog == 0 and now.commit_failures == 0 else 1


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; whether it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def _progress(now: FleetSnapshot, last: FleetSnapshot, start: FleetSnapshot) -> str:
    span = max(now.at - last.at, 1e-9)
    return (
        f"{now.at - start.at:7.1f} s  online {now.online}/{now.vehicles}  "
        f"offered {(now.recorded - last.recorded) / span:.1f}/s  "
        f"acknowledged {(now.acknowledged - last.acknowledged) / span:.1f}/s  "
        f"backlog {now.backlog}  reconnects {now.reconnects}  cpu {now.cpu_s:.1f} s"
    )


def _summary(
    start: FleetSnapshot, end: FleetSnapshot, last: FleetSnapshot, window: float, processes: int
) -> dict[str, Any]:
    span = max(window, 1e-9)
    return {
        "vehicles": last.vehicles,
        "processes": processes,
        "online": end.online,
        "window_s": round(window, 3),
        "recorded": last.recorded,
        "offered_per_s": round((end.recorded - start.recorded) / span, 3),
        "acknowledged": last.acknowledged,
        "acknowledged_per_s": round((end.acknowledged - start.acknowledged) / span, 3),
        "backlog": last.backlog,
        "reconnects": last.reconnects,
        "connect_failures": last.failures,
        "commit_failures": last.commit_failures,
        "cpu_s": round(last.cpu_s, 3),
        "window_cpu_s": round(end.cpu_s - start.cpu_s, 3),
    }


def _summary_line(s: dict[str, Any]) -> str:
    return (
        f"summary: {s['vehicles']} cars, {s['window_s']:.1f} s recording: offered "
        f"{s['offered_per_s']:.1f} events/s, acknowledged {s['acknowledged_per_s']:.1f}/s; "
        f"{s['recorded']} events recorded, {s['acknowledged']} acknowledged, backlog "
        f"{s['backlog']}; reconnects {s['reconnects']}, failed connection attempts "
        f"{s['connect_failures']}, failed commits {s['commit_failures']}; cpu {s['cpu_s']:.1f} s "
        f"({s['window_cpu_s']:.1f} s while recording)"
    )
