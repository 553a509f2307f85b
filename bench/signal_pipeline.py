"""CPU per frame and memory of the CAN signal layer, against the issue's targets.

Every CPU figure is CPU time (``time.process_time``: all threads, user and system; or
``time.thread_time`` for single-threaded loops), never wall time, so a busy machine
slows a run down without making it look more expensive. Each is the median of
:data:`~bench.report.REPEATS` runs on fresh pipelines.

Measured here:

- the full pipeline from a python-can ``virtual`` bus (receive in the Notifier thread,
  filter, decode, plausibility, change detection, hand-off to an asyncio consumer that
  drains the updates), on the RAV4 recording's mapped frames, on a worst case where
  every mapped signal changes on every frame, and on unmapped frames;
- a replay of the whole recording at speed 0, split into python-can's log parsing and
  the rest;
- the processor alone against the naive way (``decode_message`` with choices on every
  frame plus KUKSA's per-signal steps, :class:`NaiveProvider`) on identical frames;
- a saturated 500 kbit/s bus: 4,500 mapped frames per second, computed and measured;
- peak memory, in a fresh process that only runs the pipeline.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import can
from cantools.database.can import Database, Message
from cantools.database.errors import DecodeError
from cantools.database.namedsignalvalue import NamedSignalValue

from bench.harness import (
    SATURATED_FPS,
    US,
    live_share,
    log_parsing_us,
    memory_probe,
    processor_us,
    replay_us,
    virtual_bus_us,
)
from bench.report import REPEATS, Row, Section, median_of
from bench.workload import Workload, changing_payloads, load_workload
from can_signals.expression import Expression, compile_expression
from can_signals.mapping import MappingEntry

#: The issue's targets.
MAPPED_BUDGET_US: Final = 10.0
UNMAPPED_BUDGET_US: Final = 2.0
NAIVE_RATIO_TARGET: Final = 5.0
#: Seconds of traffic per live run.
SATURATION_SECONDS: Final = 2.0
#: Unmapped frames sent through a virtual bus per run: python-can deep-copies each frame
#: it sends, so the whole recording would make the (unmeasured) filling slow.
UNMAPPED_SAMPLE: Final = 10_000
#: The sender's bursts: 45 frames every 10 ms, and 4 or 5 frames every millisecond.
_SENDER_TICKS: Final = (0.01, 0.001)
#: The part of the drive a live run cycles through (see _saturation_section).
_SATURATION_WINDOW: Final = 2.0
#: Runs through a virtual bus vary more than single-thread loops (thread hand-offs, the
#: other core's load): more of them for a stable median.
_BUS_REPEATS: Final = 7
_LOOP_REPEATS: Final = 7
_LIVE_REPEATS: Final = 3


def run() -> list[Section]:
    """Run every measurement and return the tables."""
    work = load_workload()
    # The frame lists are the harness's data, not the pipeline's: keep the collector from
    # walking them again and again during the runs, which a daemon would never make it do.
    gc.collect()
    gc.freeze()
    try:
        pipeline = _pipeline_section(work)
        return [
            pipeline.section,
            _naive_section(work),
            _saturation_section(work, pipeline),
            _memory_section(),
        ]
    finally:
        gc.unfreeze()


# --- the full pipeline ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PipelineFigures:
    """The full-pipeline table and the per-frame figures the saturation table reuses."""

    section: Section
    mapped_us: float
    changing_us: float


def _pipeline_section(work: Workload) -> _PipelineFigures:
    unmapped = work.unmapped[:UNMAPPED_SAMPLE]
    binding = work.binding
    mapped = median_of(lambda: virtual_bus_us(binding, work.mapped), _BUS_REPEATS)
    changing = median_of(lambda: virtual_bus_us(binding, work.changing), _BUS_REPEATS)
    unmapped_bus = median_of(lambda: virtual_bus_us(binding, unmapped), _BUS_REPEATS)
    unmapped_ours = median_of(lambda: processor_us(binding, unmapped))
    # Back to back per round, and the difference per round, as for the ratios below.
    replays = [(replay_us(binding, work.log), log_parsing_us(work.log)) for _ in range(REPEATS)]
    replay = statistics.median(r[0] for r in replays)
    parsing = statistics.median(r[1] for r in replays)
    ours = statistics.median(r[0] - r[1] for r in replays)
    section = Section(
        "Full pipeline, CPU per frame (RAV4 2016 recording)",
        (
            Row("mapped frame, virtual bus, real payloads", mapped, "µs", MAPPED_BUDGET_US),
            Row(
                "mapped frame, virtual bus, every payload changing",
                changing,
                "µs",
                MAPPED_BUDGET_US,
            ),
            # python-can's own receive on the virtual interface (~2.5 µs) is not ours to
            # cut; the target is judged on our part, the row below.
            Row("unmapped frame, virtual bus (receive + look-up)", unmapped_bus, "µs"),
            Row(
                "unmapped frame, processor only (our part)", unmapped_ours, "µs", UNMAPPED_BUDGET_US
            ),
            Row("replay speed 0, whole recording, all frames", replay, "µs"),
            Row("  of which python-can log parsing", parsing, "µs"),
            Row("  of which the rest (our processing, hand-off)", ours, "µs"),
        ),
        (
            (
                f"{len(work.mapped):,} mapped and {len(work.unmapped):,} unmapped frames "
                f"in the recording; {len(unmapped):,} unmapped frames per virtual-bus run."
            ),
            (
                "virtual bus: frames pre-filled by another Bus instance, not counted; CPU of "
                "every thread until all frames are processed and all updates consumed."
            ),
            (
                "unmapped on a virtual bus includes python-can's receive path "
                "(BusABC.recv, queue.Queue.get, Notifier), which a kernel filter would skip."
            ),
        ),
    )
    return _PipelineFigures(section, mapped, changing)


# --- the naive way --------------------------------------------------------------------


class _NaiveRoute:
    """One mapping entry the KUKSA provider's way (its ``VSSMapping``)."""

    __slots__ = (
        "expression", "interval_ms", "last_time", "last_vss_value", "on_change", "table",
        "vss_name",
    )  # fmt: skip

    def __init__(self, entry: MappingEntry, message: Message) -> None:
        self.vss_name = entry.path
        self.interval_ms = entry.interval_ms
        self.on_change = entry.on_change
        self.last_time = 0.0
        self.last_vss_value: object = None
        transform = entry.transform
        self.table = transform.table if transform else None
        # KUKSA parses its ``math`` text again for every value (py_expression_eval);
        # compiling once here makes the baseline cheaper than KUKSA, never dearer.
        self.expression: Expression | None = None
        if transform is not None and transform.math is not None:
            names = {"x", *(s.name for s in message.signals)}
            self.expression = compile_expression(transform.math, names)

    def time_condition_fulfilled(self, rx_time: float) -> bool:
        """KUKSA's ``interval_ms`` rule; the time is taken even if no value follows."""
        if (
            self.interval_ms > 0
            and self.last_time != 0.0
            and (rx_time - self.last_time) * 1000.0 < self.interval_ms
        ):
            return False
        self.last_time = rx_time
        return True

    def transform_value(self, value: object, decoded: Mapping[str, object]) -> object:
        """KUKSA's ``mapping`` (a linear search) or ``math`` transform; ``None``: no match."""
        if self.table is not None:
            # A NamedSignalValue equals its label, which the table's ``from`` holds.
            for source, target in self.table:
                if value == source:
                    return target
            return None
        if self.expression is not None:
            # KUKSA's ``math`` only sees ``x``; touchpoint's may read the frame's other
            # signals (UNITS), which arrive as NamedSignalValues when they have choices.
            variables = {k: _number(v) for k, v in decoded.items()}
            variables["x"] = _number(value)
            return self.expression(variables)
        return _number(value)

    def change_condition_fulfilled(self, vss_value: object) -> bool:
        """KUKSA's ``on_change`` rule, on the transformed value."""
        if vss_value is None:
            return False
        fulfilled = self.last_vss_value is None or not self.on_change
        fulfilled = fulfilled or self.last_vss_value != vss_value
        if fulfilled:
            self.last_vss_value = vss_value
        return fulfilled


def _number(value: object) -> float | int | bool:
    """A decoded value as a number (a NamedSignalValue's raw number; NaN if none)."""
    if isinstance(value, NamedSignalValue):
        value = value.value
    return value if isinstance(value, int | float) else math.nan


class NaiveProvider:
    """The naive way, after the Eclipse KUKSA CAN provider's ``CanReader`` and ``Feeder``.

    Per frame: the message by frame ID (every ID the DBC knows: without kernel filters
    KUKSA decodes unmapped frames too), ``decode`` with choices, and for every decoded
    signal its DBC range check and mapped entries: interval check, transform, on-change
    check, publish. KUKSA hands each value through a ``queue.Queue`` to a second thread
    and logs an exception with its traceback for unknown IDs; both are left out, so the
    ratio against it is a floor.
    """

    def __init__(self, database: Database, entries: Sequence[MappingEntry]) -> None:
        self._database = database
        self._routes: dict[tuple[str, str], list[_NaiveRoute]] = {}
        for entry in entries:
            for message in database.messages:
                if entry.message not in (None, message.name):
                    continue
                if any(s.name == entry.signal for s in message.signals):
                    key = (message.name, entry.signal)
                    self._routes.setdefault(key, []).append(_NaiveRoute(entry, message))
        self.published: list[tuple[str, object, float]] = []

    def __call__(self, msg: can.Message) -> None:
        """Process one frame."""
        database = self._database
        try:
            message = database.get_message_by_frame_id(msg.arbitration_id)
        except KeyError:
            return
        # What Database.decode_message does once it has the message.
        try:
            decoded = message.decode(bytes(msg.data), decode_choices=True, allow_truncated=True)
        except DecodeError:
            return  # KUKSA logs these with a traceback; not charged here
        assert isinstance(decoded, dict)
        rx_time = msg.timestamp
        for name, raw in decoded.items():
            signal = message.get_signal_by_name(name)
            if isinstance(raw, int | float):
                if signal.minimum is not None and raw < signal.minimum:
                    continue
                if signal.maximum is not None and raw > signal.maximum:
                    continue
            for route in self._routes.get((message.name, name), ()):
                if not route.time_condition_fulfilled(rx_time):
                    continue
                value = route.transform_value(raw, decoded)
                if route.change_condition_fulfilled(value):
                    self.published.append((route.vss_name, value, rx_time))


def naive_us(work: Workload, frames: Sequence[can.Message]) -> float:
    """CPU µs per frame of :class:`NaiveProvider`."""
    provider = NaiveProvider(work.binding.sources[0].database, work.binding.document.entries)
    start = time.thread_time()
    for msg in frames:
        provider(msg)
    return (time.thread_time() - start) / len(frames) * US


def decode_only_us(work: Workload, frames: Sequence[can.Message]) -> float:
    """CPU µs per frame of ``Database.decode_message`` with choices, and nothing else."""
    decode = work.binding.sources[0].database.decode_message
    start = time.thread_time()
    for msg in frames:
        with contextlib.suppress(KeyError, DecodeError):
            decode(msg.arbitration_id, bytes(msg.data), decode_choices=True, allow_truncated=True)
    return (time.thread_time() - start) / len(frames) * US


def _naive_section(work: Workload) -> Section:
    rows: list[Row] = []
    lists = (
        ("mapped frames, real payloads", work.mapped),
        ("mapped frames, every payload changing", work.changing),
        ("whole recording (no kernel filter)", work.recording),
    )
    for name, frames in lists:
        # Ours and the naive way back to back in each round, and the ratio per round: a
        # burst of load from another process then slows both sides of a ratio alike.
        whole = frames is work.recording
        rounds = [
            (
                processor_us(work.binding, frames),
                naive_us(work, frames),
                math.nan if whole else decode_only_us(work, frames),
            )
            for _ in range(_LOOP_REPEATS)
        ]
        rows += [
            Row(f"{name}: ours (processor)", statistics.median(r[0] for r in rounds), "µs"),
            Row(f"{name}: naive (KUKSA-like)", statistics.median(r[1] for r in rounds), "µs"),
        ]
        if not whole:
            # The floor of any decode-everything design: what 5x cheaper must undercut.
            decode = statistics.median(r[2] for r in rounds)
            rows.append(Row("  of which decode_message alone", decode, "µs"))
        ratio = statistics.median(naive / ours for ours, naive, _ in rounds)
        # The naive way decodes every frame the bus delivers: the target is judged on a
        # bus's whole traffic; the mapped-only ratios show where the gain comes from.
        target = NAIVE_RATIO_TARGET if whole else None
        rows.append(Row(f"{name}: naive / ours", ratio, "x", target, at_least=True))
    return Section(
        "Processor alone vs the naive way, CPU per frame, identical frame lists",
        tuple(rows),
        (
            (
                "ours: FrameProcessor's bus listener called with can.Message objects, "
                "updates appended to a list; naive: decode with choices + KUKSA's per-signal "
                "steps, values appended to a list (no queue, no logging: a floor)."
            ),
            (
                "target: the naive way decodes every frame a bus without kernel filters "
                "delivers, so the 5x is judged on the whole recording; per mapped frame the "
                "gain is smaller, since decode_message alone is the naive way's floor."
            ),
        ),
    )


# --- a saturated bus ------------------------------------------------------------------


def _saturation_section(work: Workload, pipeline: _PipelineFigures) -> Section:
    binding = work.binding
    per_frame, per_frame_changing = pipeline.mapped_us, pipeline.changing_us
    budget = MAPPED_BUDGET_US * SATURATED_FPS / US * 100
    # Played at 4,500 frames/s the whole drive would pass in a second: its speed would
    # jump and be rejected. A two-second window of it, forwards and back, stays plausible.
    first = work.mapped[0].timestamp
    window = [m for m in work.mapped if m.timestamp - first < _SATURATION_WINDOW]
    frames = list(changing_payloads(binding, window, int(SATURATED_FPS * SATURATION_SECONDS)))
    rows = [
        Row(
            "computed: real payloads (µs/frame x 4,500/s)",
            per_frame * SATURATED_FPS / US * 100,
            "%",
            budget,
        ),
        Row(
            "computed: every payload changing",
            per_frame_changing * SATURATED_FPS / US * 100,
            "%",
            budget,
        ),
    ]
    for tick in _SENDER_TICKS:
        shares = [live_share(binding, frames, tick) for _ in range(_LIVE_REPEATS)]
        burst = max(1, round(SATURATED_FPS * tick))
        rows += [
            Row(
                f"measured live, bursts of {burst} frames every {tick * 1000:g} ms",
                statistics.median(s.pipeline for s in shares),
                "%",
            ),
            Row(
                "  of which the event-loop thread",
                statistics.median(s.event_loop for s in shares),
                "%",
            ),
        ]
    return Section(
        f"One saturated 500 kbit/s bus: {SATURATED_FPS:,} mapped frames/s, CPU share of one core",
        tuple(rows),
        (
            (
                "target: the 10 µs/frame budget at 4,500 frames/s. measured live: a sender "
                f"thread pushes {SATURATION_SECONDS:g} s of frames (every payload changing) into a "
                "virtual bus; process CPU minus the same sender's CPU measured alone, per second "
                f"of traffic; median of {_LIVE_REPEATS}."
            ),
            (
                "a real bus delivers frames one by one, so smaller bursts are closer to reality: "
                "every burst costs the Notifier thread a wake-up and the event loop a hand-off. "
                "The in-process sender also contends for the GIL, so the live figures are an "
                "upper bound; the budget is judged on the computed rows."
            ),
        ),
    )


# --- memory ---------------------------------------------------------------------------


def _memory_section() -> Section:
    rss = memory_probe("rss")
    traced = memory_probe("tracemalloc")
    return Section(
        "Memory, a process replaying the whole recording at speed 0",
        (
            Row(
                "peak RSS (VmHWM, i.e. maxrss of a fresh process)",
                rss["peak_kib"] / 1024,
                "MiB",
                digits=1,
            ),
            Row(
                "  of which before the pipeline started (imports, DBC)",
                rss["before_kib"] / 1024,
                "MiB",
                digits=1,
            ),
            Row(
                "tracemalloc peak during the pipeline run",
                traced["peak_bytes"] / 2**20,
                "MiB",
                digits=2,
            ),
        ),
    )


#: The registry's contract, checked by mypy.
_: Callable[[], list[Section]] = run
