"""``touchpoint signals``: decode a live bus or a recorded log to VSS updates on stdout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, TextIO

import can
from can.io.blf import BLFParseError

from can_signals.dbc import parse_dbc_argument
from can_signals.errors import CanSignalsError, MappingError
from can_signals.pipeline import PipelineStats, SignalPipeline
from can_signals.sources import BusConfig
from can_signals.update import SignalUpdate
from touchpoint.progress import REFRESH_S, Progress

#: Text logs larger than this are not counted up front: the progress has no total then.
COUNT_LIMIT_BYTES: Final = 512 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "--dbc", action="append", required=True, metavar="[BUS=]FILE",
        help="a DBC file; BUS= limits it to one bus (default: every bus). Repeatable.",
    )  # fmt: skip
    parser.add_argument("--mapping", required=True, metavar="FILE",
                        help="the VSS mapping (KUKSA dbc2vss format, JSON or YAML)")  # fmt: skip
    parser.add_argument(
        "--vss", metavar="FILE",
        help="a VSS release's JSON export, for the types and units of mapped paths outside "
        "touchpoint's catalogue that the mapping leaves out",
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--replay", metavar="LOG",
                        help="a recorded log: candump .log, .asc, .blf or .trc")  # fmt: skip
    source.add_argument("--interface", help="a live python-can interface (socketcan, virtual, …)")
    parser.add_argument("--channel", help="the live interface's channel, e.g. vcan0")
    parser.add_argument("--bus-name", help="name of the live bus (default: the channel)")
    parser.add_argument(
        "--speed", type=float, default=1.0,
        help="replay speed: 1 real time (default), 2 twice as fast, 0 as fast as possible",
    )  # fmt: skip
    parser.add_argument(
        "--no-bcm", action="store_true",
        help="on socketcan, read every mapped frame (no filtering by content in the kernel's "
        "broadcast manager)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    parser.add_argument(
        "--no-progress", action="store_true",
        help="no replay progress on stderr (a bar on a terminal, a line every 5 s otherwise)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; exit status 0 on success, 2 for unusable input."""
    if args.interface and not args.channel:
        print("error: --interface needs --channel", file=sys.stderr)
        return 2
    if args.speed < 0:
        print("error: --speed must be 0 or more", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, sys.stdout))
    except CanSignalsError as err:
        if isinstance(err, MappingError):  # what else was found, with the problems
            for warning in err.warnings:
                print(f"warning: {warning}", file=sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    dbcs = [parse_dbc_argument(a) for a in args.dbc]
    if args.replay:
        pipeline = SignalPipeline.from_files(
            args.mapping, dbcs, vss=args.vss, replay=args.replay, speed=args.speed
        )
    else:
        bus = BusConfig(
            args.bus_name or args.channel, args.interface, args.channel, bcm=not args.no_bcm
        )
        pipeline = SignalPipeline.from_files(args.mapping, dbcs, vss=args.vss, buses=[bus])
    for warning in pipeline.binding.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    printer: Callable[[SignalUpdate], str] = _print_json if args.json else _print_text
    progress = (
        Progress(estimate_frames(Path(args.replay)), unit="frames", label="replay",
                 stream=sys.stderr)
        if args.replay and not args.no_progress
        else None
    )  # fmt: skip
    async with pipeline:
        consumer = asyncio.create_task(_consume(pipeline, printer, out))
        stopper = asyncio.create_task(stopping.wait())
        watcher = asyncio.create_task(_follow(pipeline, progress)) if progress else None
        await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    await consumer  # drains what was decoded before the stop
    with contextlib.suppress(BrokenPipeError):
        out.flush()
    if progress is not None and watcher is not None:
        watcher.cancel()
        progress.update(pipeline.processor.frames)
        progress.close()
    _print_summary(pipeline.stats(), sys.stderr)
    return 1 if pipeline.stats().replay_error else 0


async def _consume(
    pipeline: SignalPipeline, printer: Callable[[SignalUpdate], str], out: TextIO
) -> None:
    async for batch in pipeline.batches():
        try:
            out.write("".join(printer(u) for u in batch))
        except BrokenPipeError:  # `| head` closed the pipe: stop quietly
            return


async def _follow(pipeline: SignalPipeline, progress: Progress) -> None:
    """Feed the replay's frame count to the progress display (it throttles its output)."""
    while True:
        await asyncio.sleep(REFRESH_S)
        progress.update(pipeline.processor.frames)


def estimate_frames(path: Path) -> int | None:
    """About how many frames a log holds, cheaply; ``None`` if it cannot tell.

    A BLF file says how many objects it has in its header; a text log is counted line
    by line (frames only: not the header of an ``.asc`` or the comments of a ``.trc``).
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".blf":
            with path.open("rb") as handle:
                reader = can.BLFReader(handle)
                count = int(reader.object_count)
                reader.stop()
            return count or None
        if suffix not in (".log", ".asc", ".trc") or path.stat().st_size > COUNT_LIMIT_BYTES:
            return None
        with path.open("rb") as handle:
            return sum(1 for line in handle if _is_frame_line(line, suffix))
    except (OSError, ValueError, EOFError, struct.error, can.CanError, BLFParseError):
        return None  # the replay itself reports a file it cannot read


def _is_frame_line(line: bytes, suffix: str) -> bool:
    if suffix == ".log":
        return line.startswith(b"(")
    if suffix == ".trc":
        stripped = line.strip()
        return bool(stripped) and not stripped.startswith(b";")
    # .asc: a frame line is a timestamp, then a channel number (or CANFD), not an event.
    words = line.split(maxsplit=2)
    return (
        len(words) == 3  # timestamp, channel, the rest
        and words[0].replace(b".", b"", 1).isdigit()
        and (words[1].isdigit() or words[1] == b"CANFD")
    )


def _print_json(update: SignalUpdate) -> str:
    return json.dumps(update.to_json_dict(), ensure_ascii=False) + "\n"


def _print_text(update: SignalUpdate) -> str:
    value = update.value
    if value is None:
        shown = "(stale)"
    elif isinstance(value, tuple):
        shown = "[" + ", ".join(value) + "]"
    elif isinstance(value, float):
        shown = f"{value:.6g}"
    else:
        shown = str(value)
    unit = f" {update.unit}" if update.unit and value is not None else ""
    return f"{update.timestamp:.3f} {update.bus} {update.path} = {shown}{unit}\n"


def _print_summary(stats: PipelineStats, out: TextIO) -> None:
    p = stats.processor
    lines = [
        (
            f"frames: {p.frames} ({p.mapped_frames} mapped, {p.unmapped_frames} unmapped, "
            f"{p.frames_without_dbc} on buses without a DBC)"
        ),
        (
            f"frames shorter than their DBC length: {p.short_frames}, longer: {p.long_frames}, "
            f"error/remote: {p.error_or_remote_frames}"
        ),
        f"decoded: {p.decodes}, updates: {p.updates}, dropped: {stats.dropped_updates}",
        f"malformed log lines skipped: {stats.bad_log_lines}",
    ]
    if stats.kernel_held_back:
        lines.append(f"frames the kernel held back (CAN_BCM): {stats.kernel_held_back}")
    if stats.replay_error:
        lines.append(f"replay error: {stats.replay_error}")
    truncated = {k: v for k, v in p.rejections.items() if k[0] == "truncated"}
    rejected = {k: v for k, v in p.rejections.items() if k[0] != "truncated"}
    lines.append(f"rejected: {sum(rejected.values())}")
    lines += [f"  {reason} {path}: {count}" for (reason, path), count in sorted(rejected.items())]
    if p.not_available:
        lines.append("absent (the bus said 'no value': SNA, all ones):")
        lines += [f"  {path}: {count}" for path, count in sorted(p.not_available.items())]
    if p.odometer_unconfirmed or p.odometer_corrections:
        lines.append(
            f"odometer: {p.odometer_unconfirmed} first readings waited to be confirmed, "
            f"{p.odometer_corrections} wrong value(s) replaced by agreeing readings"
        )
    if truncated:
        lines.append("absent (bits missing from short frames):")
        lines += [f"  {path}: {count}" for (_, path), count in sorted(truncated.items())]
    out.write("".join(f"# {line}\n" for line in lines))
