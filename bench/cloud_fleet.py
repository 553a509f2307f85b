"""Fleet capacity: how many busy cars one mosquitto and one cloud-sim take on this machine.

One private mosquitto with the shipped configuration (mutual TLS, ACL, persistence) and
one reference cloud, ``touchpoint cloud-sim``, as a subprocess of its own so that its
CPU is measured apart. Against them ``touchpoint fleet-sim`` runs the cars' real sync
clients (each its own MQTT 5 connection with a client certificate and its own SQLite
outbox), every car a Poisson process of :data:`~cloud_sync.reference.fleet_sim.DEFAULT_RATE`
events a second: a busy car, 20-30 times the reference drive (see
:mod:`cloud_sync.reference.fleet_sim`), so the figure errs on the side of fewer cars.

The fleet grows by steps (:func:`steps`: 100, 250, 500, 1,000, 2,000 cars by default;
``TOUCHPOINT_BENCH_FLEET_MAX`` for more, ``TOUCHPOINT_BENCH_FLEET_SECONDS`` for a longer
recording), each a fresh ``fleet-sim`` and ``cloud-sim``, and stops at the first step
not sustained. Sustained means: every car online, the cars offered their rate (the load
generator kept up), the broker acknowledged at least :data:`SUSTAINED_SHARE` of the
events offered while recording, the outboxes empty after the drain window, at most one
car in a hundred reconnected, and cloud-sim received every event recorded.

CPU is read from ``/proc/PID/stat`` (user + system) when fleet-sim prints ``recording``
and ``stopped recording``, for mosquitto, cloud-sim, fleet-sim with its worker
processes, and the whole machine (``/proc/stat``), in per cent of one core. The
bottleneck is whichever saturates first: mosquitto or cloud-sim at one core (each is
in effect single-threaded), or both cores. On two cores the simulated cars compete with
the broker for CPU, so the capacity is a lower bound for the broker; the CPU per 1,000
events of mosquitto and cloud-sim is printed so that a reader can extrapolate.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.processes import MIB, read, status_bytes, stop, tail, wait_for_text
from bench.report import Row, Section
from bench.scratch import disk_dir
from cloud_sync.reference.fleet_sim import DEFAULT_PREFIX, DEFAULT_RATE, vehicle_ids
from cloud_sync.reference.pki import CLOUD_USER, DevPki
from cloud_sync.reference.private_broker import PrivateBroker, running_broker

#: Busy cars the machine must take: a floor that a regression (a reconnect storm, a
#: broker limit, a slower client) falls through, well below what it measures.
TARGET_CARS: Final = 1_000
#: The fleet sizes stepped through, up to the largest :data:`LADDER_START` and then
#: doubling (see :func:`steps`).
LADDER_START: Final = (100, 250, 500, 1_000, 2_000)
#: Cars in the largest step by default: with the recording, about four minutes in all.
DEFAULT_MAX: Final = 2_000
MAX_ENV: Final = "TOUCHPOINT_BENCH_FLEET_MAX"
#: Seconds each step records for.
DEFAULT_RECORD_S: Final = 20.0
SECONDS_ENV: Final = "TOUCHPOINT_BENCH_FLEET_SECONDS"
#: Seconds fleet-sim waits after recording for the outboxes to empty.
DRAIN_S: Final = 10.0
#: Share of the offered events the broker must acknowledge within the window.
SUSTAINED_SHARE: Final = 0.97
#: More reconnects than one car in this many is a storm.
RECONNECT_STORM: Final = 100
#: A process (or the machine) this busy, in share of its cores, is saturated.
SATURATED: Final = 0.90
#: After fleet-sim ends: time for cloud-sim to take in what the broker still holds.
CLOUD_SETTLE_S: Final = 2.0
#: Cars connecting a second (fleet-sim's default).
CONNECT_RATE: Final = 200.0
_CORES: Final = os.cpu_count() or 1
_TICK: Final = os.sysconf("SC_CLK_TCK")
_KIB: Final = 1024
_POLL_S: Final = 0.02
_CLOUD_TOTALS: Final = re.compile(r"^events (\d+), duplicates dropped (\d+)", re.MULTILINE)
_LATENCY: Final = re.compile(r"latency p50 (n/a|[\d.]+ s) p99 (n/a|[\d.]+ s)")


def steps(maximum: int) -> list[int]:
    """The fleet sizes up to ``maximum``: the ladder below it, then ``maximum`` itself."""
    ladder = itertools.chain(LADDER_START, (LADDER_START[-1] * 2**k for k in itertools.count(1)))
    below = list(itertools.takewhile(lambda n: n < maximum, ladder))
    return [*below, maximum]


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    value = float(text.replace("_", ""))
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {text!r}")
    return value


# -- CPU and memory from /proc ---------------------------------------------------------------


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, ``None`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15)


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _machine_s() -> tuple[float, float]:
    """CPU seconds all cores have spent busy since boot (not idle, not waiting for I/O),
    and of those in interrupts (hard and soft: the kernel's side of the loopback network).
    """
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(f) for f in Path("/proc/stat").read_text(encoding="ascii").split()[1:9]
    )
    busy = user + nice + system + irq + softirq + steal
    return busy / _TICK, (irq + softirq) / _TICK


@dataclass(frozen=True, slots=True)
class _Sample:
    """CPU seconds of the processes measured, and of the machine, at one moment."""

    at: float
    mosquitto: float
    cloud: float
    cars: dict[int, float]  # fleet-sim and its workers, by pid
    machine: float
    interrupts: float
    own: float

    @classmethod
    def take(cls, mosquitto: int, cloud: int, fleet: int) -> _Sample:
        cars = {pid: _cpu_s(pid) for pid in (fleet, *_children(fleet))}
        machine, interrupts = _machine_s()
        return cls(
            at=time.monotonic(),
            mosquitto=_cpu_s(mosquitto) or 0.0,
            cloud=_cpu_s(cloud) or 0.0,
            cars={pid: s for pid, s in cars.items() if s is not None},
            machine=machine,
            interrupts=interrupts,
            own=time.process_time(),
        )


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU used over a recording window, in seconds.

    Attributes:
        window_s: The window's length.
        mosquitto: The broker.
        cloud: cloud-sim.
        cars: fleet-sim and its worker processes.
        busiest_cars: The busiest of those processes.
        machine: Every core, every process (other users' too), interrupts included.
        interrupts: Hard and soft interrupts (mostly the loopback network's).
        others: The rest: other processes (other users'), the kernel's own threads.
        processes: fleet-sim's processes that hold cars.
    """

    window_s: float
    mosquitto: float
    cloud: float
    cars: float
    busiest_cars: float
    machine: float
    interrupts: float
    others: float
    processes: int

    @classmethod
    def between(cls, first: _Sample, last: _Sample) -> Cpu:
        spent = {pid: last.cars[pid] - first.cars.get(pid, 0.0) for pid in last.cars}
        mosquitto, cloud = last.mosquitto - first.mosquitto, last.cloud - first.cloud
        cars, machine = sum(spent.values()), last.machine - first.machine
        interrupts = last.interrupts - first.interrupts
        ours = mosquitto + cloud + cars + (last.own - first.own) + interrupts
        return cls(
            window_s=last.at - first.at,
            mosquitto=mosquitto,
            cloud=cloud,
            cars=cars,
            busiest_cars=max(spent.values(), default=0.0),
            machine=machine,
            interrupts=interrupts,
            others=max(0.0, machine - ours),
            # Several processes: the first only drives the workers, which hold the cars.
            processes=max(1, len(spent) - 1),
        )

    def percent(self, seconds: float) -> float:
        """``seconds`` of CPU over the window, in per cent of one core."""
        return 100.0 * seconds / max(self.window_s, 1e-9)


# -- one step ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One fleet size, measured.

    Attributes:
        vehicles: Cars in the fleet.
        summary: fleet-sim's JSON summary (empty if it printed none).
        cpu: CPU over the recording window (``None`` if the window was never seen).
        cloud_events: Events cloud-sim received (after de-duplication).
        latency_p50_s: cloud-sim's median end-to-end latency, if it had trusted times.
        latency_p99_s: Its 99th percentile.
        mosquitto_rss_mib: The broker's resident memory at the end of the window.
        problems: Why the step was not sustained (empty: it was).
    """

    vehicles: int
    summary: dict[str, Any]
    cpu: Cpu | None
    cloud_events: int | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    mosquitto_rss_mib: float
    problems: tuple[str, ...]

    @property
    def sustained(self) -> bool:
        """Whether the broker and the cloud kept up with this fleet."""
        return not self.problems

    @property
    def offered_per_s(self) -> float:
        return float(self.summary.get("offered_per_s", 0.0))

    @property
    def acknowledged_per_s(self) -> float:
        return float(self.summary.get("acknowledged_per_s", 0.0))

    @property
    def window_events(self) -> float:
        """Events the broker acknowledged in the recording window."""
        return self.acknowledged_per_s * float(self.summary.get("window_s", 0.0))

    def ms_per_1000(self, seconds: float) -> float | None:
        """``seconds`` of CPU in the window per 1,000 events acknowledged, milliseconds."""
        events = self.window_events
        return None if events <= 0 else 1e6 * seconds / events


class _Cloud:
    """``touchpoint cloud-sim`` in a subprocess, consuming from the broker's cloud listener."""

    def __init__(self, broker: PrivateBroker, directory: Path, instance: str) -> None:
        cert, key = broker.credentials(CLOUD_USER)
        self.output = directory / f"cloud-{instance}.out"
        argv = [
            sys.executable, "-m", "touchpoint.cli", "cloud-sim",
            "--broker", f"{broker.host}:{broker.cloud_port}", "--ca", str(broker.pki.ca_cert),
            "--cert", str(cert), "--key", str(key),
            "--signing-key", str(directory / "cloud-signing.key"),
            "--instance", instance, "--no-documents",
        ]  # fmt: skip
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory
            )
        if not wait_for_text(self.output, "consuming from", self.process, 30.0, _POLL_S):
            self.stop()
            raise RuntimeError(f"cloud-sim did not start:\n{tail(self.output)}")

    def stop(self) -> str:
        """Stop it (SIGTERM: it prints its counts) and return what it printed."""
        stop(self.process)
        return read(self.output)


def _run_step(
    broker: PrivateBroker, mosquitto: int, directory: Path, vehicles: int, record_s: float
) -> Step:
    stores = directory / f"stores-{vehicles}"
    output = directory / f"fleet-{vehicles}.out"
    errors = directory / f"fleet-{vehicles}.err"
    cloud = _Cloud(broker, directory, f"bench-{vehicles}")
    argv = [
        sys.executable, "-m", "touchpoint.cli", "fleet-sim",
        "--broker", f"{broker.host}:{broker.port}", "--cert-dir", str(broker.pki.directory),
        "--vehicles", str(vehicles), "--rate", repr(DEFAULT_RATE),
        "--duration", repr(record_s), "--drain", repr(DRAIN_S), "--store-dir", str(stores),
        "--connect-rate", repr(CONNECT_RATE), "--interval", "5", "--seed", str(vehicles),
        "--json",
    ]  # fmt: skip
    cpu: Cpu | None = None
    rss = 0.0
    try:
        with output.open("wb") as out, errors.open("wb") as err:
            # A group of its own: if it must be ended, its workers are ended with it.
            fleet = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            # Connecting (and issuing missing certificates) takes a while for a large fleet.
            setup_s = 60.0 + vehicles / CONNECT_RATE + vehicles / 50
            if wait_for_text(output, "recording for", fleet, setup_s, _POLL_S):
                first = _Sample.take(mosquitto, cloud.process.pid, fleet.pid)
                if wait_for_text(output, "stopped recording", fleet, record_s + 60.0, _POLL_S):
                    cpu = Cpu.between(first, _Sample.take(mosquitto, cloud.process.pid, fleet.pid))
                    rss = status_bytes(mosquitto).get("VmRSS", 0) / MIB
            with contextlib.suppress(subprocess.TimeoutExpired):
                fleet.wait(timeout=DRAIN_S + 60.0 + vehicles / 20)
        finally:
            if fleet.poll() is None:
                os.killpg(fleet.pid, signal.SIGKILL)
                fleet.wait()
        time.sleep(CLOUD_SETTLE_S)
    finally:
        cloud_text = cloud.stop()
        shutil.rmtree(stores, ignore_errors=True)
    summary = _last_json(output)
    totals = _CLOUD_TOTALS.search(cloud_text)
    latency = _LATENCY.search(cloud_text)
    cloud_events = int(totals.group(1)) if totals else None
    return Step(
        vehicles=vehicles,
        summary=summary,
        cpu=cpu,
        cloud_events=cloud_events,
        latency_p50_s=_seconds(latency.group(1)) if latency else None,
        latency_p99_s=_seconds(latency.group(2)) if latency else None,
        mosquitto_rss_mib=rss,
        problems=_problems(vehicles, summary, cpu, cloud_events, fleet.returncode, errors),
    )


def _problems(
    vehicles: int,
    summary: dict[str, Any],
    cpu: Cpu | None,
    cloud_events: int | None,
    returncode: int,
    errors: Path,
) -> tuple[str, ...]:
    if not summary:
        last = (tail(errors, 1) or f"exit status {returncode}").strip()
        return (f"fleet-sim printed no summary ({last})",)
    found = []
    if cpu is None:
        found.append("the recording window was not seen")
    if summary["online"] < vehicles:
        found.append(f"{summary['online']}/{vehicles} online")
    offered, acknowledged = summary["offered_per_s"], summary["acknowledged_per_s"]
    # The events a Poisson fleet offers in the window, less four standard deviations.
    expected = vehicles * DEFAULT_RATE * summary["window_s"]
    if offered * summary["window_s"] < expected - 4 * expected**0.5:
        found.append(
            f"the cars offered {offered:.1f}/s of {vehicles * DEFAULT_RATE:.1f}/s "
            "(the load generator fell behind)"
        )
    if acknowledged < SUSTAINED_SHARE * offered:
        found.append(f"acknowledged {acknowledged:.1f}/s of {offered:.1f}/s offered")
    if summary["backlog"]:
        found.append(f"backlog {summary['backlog']} after {DRAIN_S:g} s")
    if summary["reconnects"] > max(1, vehicles // RECONNECT_STORM):
        found.append(f"{summary['reconnects']} reconnects")
    if summary["commit_failures"]:
        found.append(f"{summary['commit_failures']} failed commits")
    if cloud_events is None:
        found.append("cloud-sim printed no counts")
    elif cloud_events < summary["recorded"]:
        found.append(f"cloud-sim received {cloud_events} of {summary['recorded']} events")
    return tuple(found)


def _last_json(path: Path) -> dict[str, Any]:
    for line in reversed(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                parsed: dict[str, Any] = json.loads(line)
                return parsed
    return {}


def _seconds(text: str) -> float | None:
    return None if text == "n/a" else float(text.removesuffix(" s"))


# -- the run and its table -------------------------------------------------------------------


@contextlib.contextmanager
def _broker(directory: Path, maximum: int) -> Iterator[tuple[PrivateBroker, int]]:
    pki = DevPki.create(directory / "pki")
    # The cars fleet-sim will run (its default prefix), registered in the broker's access
    # control before it starts: one by one through $CONTROL the plugin would rewrite its
    # file for each, which takes minutes for thousands.
    cars = vehicle_ids(DEFAULT_PREFIX, 0, maximum)
    with running_broker(directory / "broker", pki, vehicles=cars) as broker:
        assert broker.pid is not None  # running_broker waits until it listens
        yield broker, broker.pid


def measure(maximum: int, record_s: float) -> list[Step]:
    """Step the fleet up to ``maximum`` cars; stop after the first step not sustained."""
    measured: list[Step] = []
    with disk_dir("fleet") as directory, _broker(directory, maximum) as (broker, mosquitto):
        for vehicles in steps(maximum):
            print(f"# fleet capacity: {vehicles} cars ...", file=sys.stderr, flush=True)
            step = _run_step(broker, mosquitto, directory, vehicles, record_s)
            measured.append(step)
            if not step.sustained:
                break
    if not any(s.summary for s in measured):
        raise RuntimeError(f"fleet-sim never ran: {measured[0].problems}")
    return measured


def run() -> list[Section]:
    """The capacity of one broker and one cloud-sim, stepping the fleet up."""
    maximum = int(_env_number(MAX_ENV, DEFAULT_MAX))
    record_s = _env_number(SECONDS_ENV, DEFAULT_RECORD_S)
    return sections(measure(maximum, record_s), maximum)


def sections(measured: Sequence[Step], maximum: int) -> list[Section]:
    """The headline table and its notes (one line per step)."""
    sustained = [s for s in measured if s.sustained]
    best = sustained[-1] if sustained else None
    failed = next((s for s in measured if not s.sustained), None)
    baseline = measured[0]
    rows = [
        Row(
            f"busy cars sustained ({DEFAULT_RATE:g} events/s each), largest step",
            best.vehicles if best else 0,
            "cars",
            target=TARGET_CARS,
            at_least=True,
            digits=0,
        ),
    ]
    if best is not None:
        rows.append(Row("  events acknowledged a second at that step", best.acknowledged_per_s,
                        "events/s", digits=0))  # fmt: skip
    if failed is not None:
        rows.append(Row("first step not sustained", failed.vehicles, "cars", digits=0))
    reference = best or baseline
    rows += _cpu_rows(reference, baseline)
    rows += _cost_rows(reference)
    if reference.latency_p50_s is not None and reference.latency_p99_s is not None:
        rows += [
            Row(
                f"cloud-sim end-to-end latency p50, {reference.vehicles:,} cars",
                1000 * reference.latency_p50_s,
                "ms",
                digits=0,
            ),
            Row("  p99", 1000 * reference.latency_p99_s, "ms", digits=0),
        ]
    notes = [
        f"bottleneck: {bottleneck(measured, maximum)}",
        (
            "one private mosquitto 2.0 (shipped configuration: mutual TLS, ACL, persistence) "
            "and one touchpoint cloud-sim (no documents sent), each a process of its own;"
        ),
        (
            "the cars are touchpoint fleet-sim (real sync clients, one MQTT connection and "
            f"one SQLite outbox each, Poisson events) on the same {_CORES} cores: the "
            "capacity is a lower bound for the broker"
        ),
        (
            "sustained: all online, the cars offered their rate, >= "
            f"{SUSTAINED_SHARE:.0%} of it acknowledged, backlog 0 after {DRAIN_S:g} s, "
            "reconnects <= 1 %, cloud-sim got every event"
        ),
        "CPU in % of one core over the recording window (user + system, /proc)",
    ]
    if reference.latency_p50_s is None:
        notes.append("latency: cloud-sim reported none (the events' times were not trusted)")
    notes += _step_lines(measured)
    return [
        Section(
            f"Cloud sync: busy cars one mosquitto (TLS) and one cloud-sim take on {_CORES} cores",
            tuple(rows),
            tuple(notes),
        )
    ]


def _cpu_rows(reference: Step, baseline: Step) -> list[Row]:
    if reference.cpu is None:
        return []
    cpu, n = reference.cpu, reference.vehicles
    rows = [
        Row(f"CPU at {n:,} cars: mosquitto", cpu.percent(cpu.mosquitto), "% of a core", digits=1),
        Row("  cloud-sim", cpu.percent(cpu.cloud), "% of a core", digits=1),
        Row(
            f"  the simulated cars ({cpu.processes} process{'es' if cpu.processes > 1 else ''})",
            cpu.percent(cpu.cars),
            "% of a core",
            digits=0,
        ),
        Row(
            f"  whole machine, other users included ({_CORES * 100} % = all cores)",
            cpu.percent(cpu.machine),
            "%",
            digits=0,
        ),
        Row(f"mosquitto RSS at {n:,} cars", reference.mosquitto_rss_mib, "MiB", digits=1),
    ]
    if baseline is not reference and baseline.cpu is not None:
        base, b = baseline.cpu, baseline.vehicles
        rows += [
            Row(
                f"baseline, same run, {b:,} cars: mosquitto",
                base.percent(base.mosquitto),
                "% of a core",
                digits=1,
            ),
            Row("  cloud-sim", base.percent(base.cloud), "% of a core", digits=1),
            Row("  the simulated cars", base.percent(base.cars), "% of a core", digits=0),
            Row(f"  mosquitto RSS, {b:,} cars", baseline.mosquitto_rss_mib, "MiB", digits=1),
        ]
        if reference.vehicles > baseline.vehicles:
            per_car = (reference.mosquitto_rss_mib - baseline.mosquitto_rss_mib) / (
                reference.vehicles - baseline.vehicles
            )
            rows.append(Row("mosquitto memory per connected car (between the two)",
                            per_car * _KIB, "KiB", digits=0))  # fmt: skip
    return rows


def _cost_rows(step: Step) -> list[Row]:
    if step.cpu is None:
        return []
    rows = []
    for label, seconds in (
        ("mosquitto", step.cpu.mosquitto),
        ("cloud-sim", step.cpu.cloud),
        ("the simulated cars", step.cpu.cars),
    ):
        cost = step.ms_per_1000(seconds)
        if cost is None:
            continue
        rows.append(Row(f"CPU per 1,000 events, {label} ({step.vehicles:,} cars)", cost,
                        "ms", digits=0 if cost >= 100 else 1))  # fmt: skip
        if label != "the simulated cars" and cost > 0:
            # A core's second over the CPU each event takes, in busy cars.
            cars = 1e6 / cost / DEFAULT_RATE
            rows.append(Row(f"  busy cars a whole core of {label} would take (linear)",
                            cars, "cars", digits=0))  # fmt: skip
    return rows


def bottleneck(measured: Sequence[Step], maximum: int) -> str:
    """What saturated at the deciding step (the first not sustained, else the largest)."""
    deciding = next((s for s in measured if not s.sustained), measured[-1])
    n = f"{deciding.vehicles:,} cars"
    if deciding.cpu is None:
        return f"none measured at {n}: " + "; ".join(deciding.problems)
    cpu = deciding.cpu
    split = (
        f"{cpu.percent(cpu.machine):.0f} % of {_CORES * 100}: cars "
        f"{cpu.percent(cpu.cars):.0f}, mosquitto {cpu.percent(cpu.mosquitto):.0f}, cloud-sim "
        f"{cpu.percent(cpu.cloud):.0f}, interrupts {cpu.percent(cpu.interrupts):.0f}, the "
        f"rest {cpu.percent(cpu.others):.0f}"
    )
    if deciding.sustained:
        return f"none reached: sustained up to the maximum asked, {maximum:,} cars ({split})"
    why = "; ".join(deciding.problems)
    share = {
        "mosquitto": cpu.mosquitto / cpu.window_s,
        "cloud-sim": cpu.cloud / cpu.window_s,
        "a fleet-sim process (the load generator)": cpu.busiest_cars / cpu.window_s,
    }
    saturated = [name for name, used in share.items() if used >= SATURATED]
    if saturated:
        return f"{', '.join(saturated)} at one full core at {n}: {why} ({split})"
    if cpu.machine / cpu.window_s / _CORES >= SATURATED:
        return f"the machine, every core busy at {n}: {why} ({split})"
    return f"no process and not the machine saturated at {n}, yet: {why} ({split})"


def _step_lines(measured: Sequence[Step]) -> list[str]:
    header = (
        f"{'cars':>6} {'offered/s':>9} {'acked/s':>8} {'backlog':>7} {'reconn':>6} "
        f"{'mosq %':>6} {'cloud %':>7} {'cars %':>6} {'irq %':>5} {'rest %':>6} {'mach %':>6} "
        f"{'mosq ms/1k':>10} {'mosq MiB':>8} {'conn fail':>9}  sustained"
    )
    lines = [
        "per step: CPU in % of one core (irq: interrupts, the loopback network's; rest: other",
        "users' processes and kernel threads; mach: all of it), mosquitto's CPU per 1,000",
        "events and resident memory, failed connection attempts while connecting:",
        header,
    ]
    for step in measured:
        s, cpu = step.summary, step.cpu
        verdict = "yes" if step.sustained else "no: " + "; ".join(step.problems)
        if not s or cpu is None:
            lines.append(f"{step.vehicles:>6,} {'-':>9}{'':>84}  {verdict}")
            continue
        cost = step.ms_per_1000(cpu.mosquitto)
        lines.append(
            f"{step.vehicles:>6,} {s['offered_per_s']:>9.1f} {s['acknowledged_per_s']:>8.1f} "
            f"{s['backlog']:>7} {s['reconnects']:>6} {cpu.percent(cpu.mosquitto):>6.1f} "
            f"{cpu.percent(cpu.cloud):>7.1f} {cpu.percent(cpu.cars):>6.0f} "
            f"{cpu.percent(cpu.interrupts):>5.0f} {cpu.percent(cpu.others):>6.0f} "
            f"{cpu.percent(cpu.machine):>6.0f} {'-' if cost is None else f'{cost:.0f}':>10} "
            f"{step.mosquitto_rss_mib:>8.1f} {s['connect_failures']:>9}  {verdict}"
        )
    return lines


if __name__ == "__main__":
    from bench.report import format_table

    for section in run():
        print(format_table(section), end="\n\n")
