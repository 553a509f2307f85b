"""``touchpoint sim``: play a simulated drive of the reference car on a CAN bus or into a log.

Examples::

    touchpoint sim --list
    touchpoint sim --scenario commute --record commute.log          # as fast as possible
    touchpoint sim --scenario fault --interface virtual --channel demo --speed 10
    touchpoint sim --scenario park_charge --interface remote --channel ws://127.0.0.1:54701/
    touchpoint sim --scenario highway_service --start 2024-05-06T08:00:00Z --record old.log

Progress (one line per phase) goes to stderr.

Recordings carry the scenario clock, so they are the same at any speed. A live bus
stamps frames with the receiver's clock instead: at a speed other than 1, the signal
layer's plausibility guards see a car that accelerates that much faster and may reject
some speed readings.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Final, TextIO

import can

from can_signals.errors import CanSignalsError
from can_signals.simulator import (
    SCENARIOS,
    BusSink,
    FrameEncoder,
    FrameSink,
    LogSink,
    Phase,
    RunResult,
    ScenarioOptions,
    ScenarioRunner,
    SimulatorError,
    VehicleState,
    at_rest,
    build_scenario,
    load_reference_database,
)
from can_signals.simulator.runner import Observer

INTERFACES: Final = ("virtual", "socketcan", "remote")
DEFAULT_LOG_CHANNEL: Final = "can0"
#: How long ``--stay-awake`` keeps the parked car awake unless stopped first: a day.
AWAKE_MS: Final = 86_400_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="the scenario to play")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--interface", choices=INTERFACES, help="a live python-can interface")
    parser.add_argument(
        "--channel",
        help="the live channel (vcan0, a virtual channel name, ws://127.0.0.1:PORT/ for remote); "
        f"with --record only, the channel name written in the log (default {DEFAULT_LOG_CHANNEL})",
    )
    parser.add_argument("--record", metavar="FILE.log", help="write the frames to a log file")
    parser.add_argument(
        "--speed", type=float,
        help="1 real time (default on a bus), 2 twice as fast, 0 as fast as possible "
        "(default with --record only)",
    )  # fmt: skip
    parser.add_argument("--short", action="store_true",
                        help="the short variant of the scenario (a minute or two)")  # fmt: skip
    parser.add_argument("--start-odometer", type=float, metavar="KM",
                        help="odometer at the start, in km (default: the scenario's)")  # fmt: skip
    parser.add_argument(
        "--start", type=iso_time, metavar="ISO8601",
        help="when the drive starts, e.g. 2024-05-06T08:00:00Z (without a zone: UTC): the "
        "recording's timestamps and the car's GNSS time (default: 2024-05-06T07:30:00Z, "
        "so recordings are reproducible)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=ScenarioOptions().seed,
                        help="seed of the scenario's random parts")  # fmt: skip
    parser.add_argument(
        "--stay-awake", action="store_true",
        help="on a live bus, after the drive keep the parked car's ECUs sending (real time) "
        "until stopped; without it the bus goes silent, which the agent takes as 'state "
        "unknown'",
    )  # fmt: skip
    parser.add_argument(
        "--ecu", action="store_true",
        help="on a live bus, also answer OBD-II stored-DTC requests with the model's codes",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; exit status 0 when done, 2 for unusable input, 130 if stopped."""
    if args.list:
        _print_list(sys.stdout)
        return 0
    problem = _check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except CanSignalsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def iso_time(text: str) -> int:
    """An ISO 8601 date and time (UTC unless it says otherwise) as whole UNIX seconds."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date and time: {text!r} (e.g. 2024-05-06T08:00:00Z)"
        ) from err
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    seconds = when.timestamp()
    # The GNSS time is a 32-bit count of seconds, and 0xFFFFFFFF means "no time".
    if not 0 <= seconds < 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 1970..2106 (GNSS time)")
    return int(seconds)


def _check(args: argparse.Namespace) -> str | None:
    if not args.scenario:
        return "--scenario is required (see --list)"
    if args.interface and not args.channel:
        return "--interface needs --channel"
    if not args.interface and not args.record:
        return "nothing to do: give --interface and --channel, or --record FILE"
    if args.speed is not None and args.speed < 0:
        return "--speed must be 0 or more"
    for option, given in (("--ecu", args.ecu), ("--stay-awake", args.stay_awake)):
        if given and not args.interface:
            return f"{option} needs a live bus (--interface)"
    return None


def _run(args: argparse.Namespace) -> int:
    options = ScenarioOptions(
        short=args.short,
        start_odometer_km=args.start_odometer,
        seed=args.seed,
        utc_start_s=args.start,
    )
    scenario = build_scenario(args.scenario, options)
    speed = args.speed if args.speed is not None else (1.0 if args.interface else 0.0)
    log_channel = args.channel if args.channel and not args.interface else DEFAULT_LOG_CHANNEL
    encoder = FrameEncoder(load_reference_database(), log_channel)
    count = len(scenario.phases)

    def progress(index: int, phase: Phase, state: VehicleState) -> None:
        print(_progress_line(index, count, phase, state), file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        sinks: list[FrameSink] = []
        observers: list[Observer] = []
        if args.interface:
            bus = stack.enter_context(_open_bus(args.interface, args.channel))
            sinks.append(BusSink(bus))
            if args.ecu:
                observers.append(stack.enter_context(_ecu_sync(args.interface, args.channel)))
        if args.record:
            sinks.append(LogSink(args.record))
        runner = ScenarioRunner(
            scenario, encoder, sinks, speed=speed, on_phase=progress, observers=observers
        )
        runners = [runner]
        stopped = stack.enter_context(_stop_on_signals(runners))
        where = " and ".join(
            part
            for part in (
                f"{args.interface} {args.channel}" if args.interface else "",
                args.record or "",
            )
            if part
        )
        pace = f"speed x{speed:g}" if speed else "as fast as possible"
        print(f"scenario {scenario.name} ({scenario.description}) to {where}, {pace}",
              file=sys.stderr)  # fmt: skip
        result = runner.run()
        _print_summary(result, sys.stderr)
        if not (args.stay_awake and result.completed):
            return 0 if result.completed else 130
        print("parked, the ECUs still awake: Ctrl-C stops", file=sys.stderr, flush=True)
        # The log (if any) is closed: the rest goes to the bus alone.
        buses = [sink for sink in sinks if isinstance(sink, BusSink)]
        fresh = FrameEncoder(load_reference_database(), log_channel)
        rest = ScenarioRunner(
            at_rest(result.final, AWAKE_MS), fresh, buses, speed=1.0, observers=observers
        )
        runners.append(rest)
        if stopped.is_set():  # a stop between the two runs is not lost
            rest.stop()
        rested = rest.run()
    print(f"stopped after {rested.clock_ms / 1000:.0f} s awake", file=sys.stderr)
    return 0


def _progress_line(index: int, count: int, phase: Phase, state: VehicleState) -> str:
    seconds = state.clock_ms // 1000
    return (
        f"[{seconds // 60:3d}:{seconds % 60:02d}] {index + 1}/{count} {phase.name} "
        f"(odometer {state.odometer_km:,.1f} km, {state.speed_kmh:.0f} km/h, "
        f"{state.ignition}, gear {state.gear}, SoC {state.soc_pct:.1f} %)"
    )


def _print_summary(result: RunResult, out: TextIO) -> None:
    state = result.final
    ending = "done" if result.completed else "stopped"
    out.write(
        f"{ending}: {result.frames} frames, {result.clock_ms / 1000:.1f} s of scenario time, "
        f"odometer {state.odometer_km:,.1f} km\n"
    )


def _print_list(out: TextIO) -> None:
    for name in SCENARIOS:
        scenario = build_scenario(name)
        short = build_scenario(name, ScenarioOptions(short=True))
        minutes = scenario.duration_ms / 60_000
        short_minutes = short.duration_ms / 60_000
        out.write(
            f"{name:16} {scenario.description} "
            f"({minutes:.0f} min; --short {short_minutes:.1f} min)\n"
        )


@contextlib.contextmanager
def _open_bus(interface: str, channel: str) -> Iterator[can.BusABC]:
    # A virtual bus passes the scenario clock on with each frame, so a receiver sees
    # the car's own time at any --speed (its plausibility checks depend on it).
    options: dict[str, Any] = {"preserve_timestamps": True} if interface == "virtual" else {}
    try:
        bus = can.Bus(interface=interface, channel=channel, **options)
    except (can.CanError, OSError, ValueError, ImportError, NotImplementedError) as err:
        raise SimulatorError(f"cannot open CAN bus {interface} {channel}: {err}") from err
    try:
        yield bus
    finally:
        bus.shutdown()


@contextlib.contextmanager
def _ecu_sync(interface: str, channel: str) -> Iterator[Observer]:
    # Imported here: only --ecu needs ISO-TP. The emulator gets its own bus connection,
    # as a separate node would, so the simulator's sends and its ISO-TP stack never share one.
    from can_signals.simulator.ecu_emulator import EcuEmulator  # noqa: PLC0415
    from can_signals.simulator.ecu_sync import EcuDtcSync  # noqa: PLC0415

    with _open_bus(interface, channel) as bus, EcuEmulator(bus) as emulator:
        yield EcuDtcSync(emulator)


@contextlib.contextmanager
def _stop_on_signals(runners: list[ScenarioRunner]) -> Iterator[threading.Event]:
    """SIGINT and SIGTERM stop the runners (those added later too); the event tells."""
    stopped = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()
        for runner in runners:
            runner.stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
