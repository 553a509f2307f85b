"""Binding a mapping to DBC files and the signal catalogues: every problem, or a plan per frame.

``bind`` checks each mapping entry against the signal catalogues (:mod:`can_signals.vss`:
unknown VSS path, type and unit mismatches) and the DBC files (unknown signal, ambiguous
signal, labels, multiplexers, combined signals, expression names) and reports all
problems at once. The result compiles, per bus, into one
:class:`~can_signals.layout.FrameLayout` per mapped CAN ID (see :mod:`can_signals.layout`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from cantools.database.can import Message, Signal

from can_signals.catalogue import CATALOGUE, DTC_COUNT, DTC_LIST, LAMP_PREFIX, SignalSpec
from can_signals.convert import (
    SetupError,
    build_converter,
    label_value,
    number_text,
    reading_converter,
    signal_labels,
    type_family,
)
from can_signals.dbc import DbcSource, load_dbcs
from can_signals.errors import ExpressionError, MappingError, Problem
from can_signals.expression import compile_expression
from can_signals.layout import (
    EXTENDED_FLAG,
    Combination,
    FrameLayout,
    RouteKind,
    SignalBinding,
    build_layout,
    frame_key,
    is_fd_message,
    route_mask,
    signal_bits,
    stale_seconds,
)
from can_signals.mapping import MappingDocument, MappingEntry, read_mapping
from can_signals.not_available import unknown_labels
from can_signals.vss import Resolved, SignalTypeError, VssRelease, load_vss, resolve

_log = logging.getLogger(__name__)

__all__ = [
    "EXTENDED_FLAG",
    "Binding",
    "FrameLayout",
    "SignalBinding",
    "bind",
    "frame_key",
    "route_mask",
    "signal_bits",
]

Candidate = tuple[int, Message, Signal]  # (DBC file index, message, signal)


class Binding:
    """A mapping checked against DBC files and the signal catalogues."""

    def __init__(
        self,
        document: MappingDocument,
        sources: Sequence[DbcSource],
        bindings: Sequence[SignalBinding],
        warnings: Sequence[Problem],
    ) -> None:
        self.document = document
        self.sources = tuple(sources)
        self.bindings = tuple(bindings)
        self.warnings = tuple(warnings)
        self._layouts: dict[frozenset[int], dict[int, FrameLayout]] = {}

    def dbc_indexes_for_bus(self, bus: str) -> frozenset[int]:
        """The DBC files that describe ``bus``: those for every bus and those named for it."""
        return frozenset(i for i, s in enumerate(self.sources) if s.bus in (None, bus))

    def layouts_for_bus(self, bus: str) -> dict[int, FrameLayout]:
        """The frame layouts of one bus, by frame key (empty for a bus with no DBC)."""
        indexes = self.dbc_indexes_for_bus(bus)
        layouts = self._layouts.get(indexes)
        if layouts is None:
            layouts = self._build_layouts(indexes)
            self._layouts[indexes] = layouts
        return layouts

    def frame_ids_for_bus(self, bus: str) -> list[tuple[int, bool]]:
        """The mapped CAN IDs of a bus as ``(id, extended)``, for kernel filters."""
        return [
            (layout.message.frame_id, layout.message.is_extended_frame)
            for layout in self.layouts_for_bus(bus).values()
        ]

    def fd_for_bus(self, bus: str) -> bool:
        """Whether a mapped message of the bus travels in CAN FD frames."""
        return any(is_fd_message(layout.message) for layout in self.layouts_for_bus(bus).values())

    def _build_layouts(self, indexes: frozenset[int]) -> dict[int, FrameLayout]:
        by_key: dict[int, list[SignalBinding]] = defaultdict(list)
        for binding in self.bindings:
            if binding.dbc_index in indexes:
                by_key[binding.key].append(binding)
        layouts: dict[int, FrameLayout] = {}
        for key, group in by_key.items():
            first = group[0].message
            kept = [b for b in group if b.message is first]
            if len(kept) != len(group):
                _log.warning(
                    "CAN ID 0x%X is defined by several DBC files on one bus; using %s from %s",
                    first.frame_id, first.name, self.sources[group[0].dbc_index].path,
                )  # fmt: skip
            layouts[key] = build_layout(key, first, kept)
        return layouts


def bind(
    document: MappingDocument,
    sources: Sequence[DbcSource],
    earlier: Sequence[Problem] = (),
    vss: VssRelease | None = None,
) -> Binding:
    """Check a mapping against DBC files and the signal catalogues.

    Args:
        document: The mapping.
        sources: The DBC files.
        earlier: Problems already found in the mapping file (see
            :func:`can_signals.mapping.read_mapping`), reported together with these.
        vss: A VSS release, for the types and units of paths outside touchpoint's
            catalogue that the mapping does not declare.

    Returns:
        The binding; its ``warnings`` (for the caller to show or log) name what is
        ignored or guessed: ``vss2dbc`` blocks, paths no catalogue has, ambiguous
        signals, labels no message has.

    Raises:
        MappingError: With every problem found, each with its file and line or key.
    """
    binder = _Binder(document, sources, vss)
    for entry in document.entries:
        binder.add(entry)
    problems = [*earlier, *binder.problems]
    warnings = [*document.warnings, *binder.warnings]
    if binder.uncatalogued:
        warnings.append(_uncatalogued_warning(document.file, binder.uncatalogued, vss))
    if problems:
        raise MappingError(problems, warnings)
    return Binding(document, sources, binder.bindings, warnings)


def bind_files(
    mapping: str | Path,
    dbcs: Sequence[tuple[str | None, str | Path]],
    vss: str | Path | None = None,
) -> Binding:
    """Load the DBC files, the mapping and (if given) a VSS release, and bind them.

    Raises:
        DbcError: If a DBC file does not load.
        VssError: If the VSS release does not load.
        MappingError: If the mapping has problems, all of them listed.
    """
    release = load_vss(vss) if vss is not None else None
    sources = load_dbcs(dbcs)
    document, problems = read_mapping(mapping)
    return bind(document, sources, earlier=problems, vss=release)


class _Binder:
    """Binds entries one by one, collecting bindings, problems and warnings."""

    def __init__(
        self, document: MappingDocument, sources: Sequence[DbcSource], vss: VssRelease | None
    ) -> None:
        self.document = document
        self.vss = vss
        self.index = _SignalIndex(sources)
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.bindings: list[SignalBinding] = []
        self.uncatalogued: list[str] = []
        paths = {e.path for e in document.entries}
        self.derived = any(p == DTC_LIST or p.startswith(LAMP_PREFIX) for p in paths)

    def report(self, entry: MappingEntry, message: str) -> None:
        self.problems.append(Problem(self.document.file, entry.where, f"{entry.path}: {message}"))

    def warn(self, entry: MappingEntry, message: str) -> None:
        self.warnings.append(Problem(self.document.file, entry.where, f"{entry.path}: {message}"))

    def add(self, entry: MappingEntry) -> None:
        resolved = self._resolve(entry)
        candidates = self._candidates(entry) if resolved is not None else []
        if resolved is None or not candidates:
            return
        spec = resolved.spec
        combination: Combination | None = None
        parts: list[Candidate] | None = []
        if entry.combine is not None:
            parts = self._parts(entry)
            if parts is None:
                return
            combination = self._combination(entry, spec, candidates, parts)
            if combination is None:
                return
        kind: RouteKind = (
            "part" if combination is not None
            else "dtc" if entry.path == DTC_LIST
            else "lamp" if entry.path.startswith(LAMP_PREFIX)
            else "value"
        )  # fmt: skip
        failures: set[str] = set()
        for dbc_index, message, signal in candidates:
            try:
                selector = _selector(entry, message, signal)
                convert = (
                    reading_converter(signal)
                    if combination is not None
                    else build_converter(entry, spec, signal, message)
                )
            except SetupError as err:
                failures.add(str(err))
                continue
            for label in unknown_labels(entry, signal):
                failures.add(f"not_available: {signal.name} has no value labelled {label!r}")
            reads = _expression_reads(entry, message) if combination is None else frozenset()
            if selector is not None:
                reads |= {selector[0]}
            self.bindings.append(
                SignalBinding(
                    entry, spec, dbc_index, message, signal, convert, reads, kind,
                    selector, combination,
                )
            )  # fmt: skip
        for failure in sorted(failures):
            self.report(entry, failure)
        if failures:
            return
        if combination is not None and parts:
            self._add_parts(entry, spec, combination, parts)
        if resolved.origin == "mapping":
            self.uncatalogued.append(entry.path)

    def _resolve(self, entry: MappingEntry) -> Resolved | None:
        try:
            resolved = resolve(entry, self.vss)
        except SignalTypeError as err:
            known = [*CATALOGUE, *(self.vss.leaves if self.vss is not None else ())]
            self.report(entry, f"{err}{_suggest(entry.path, known)}")
            return None
        spec = resolved.spec
        if entry.path == DTC_COUNT and self.derived:
            self.report(
                entry,
                "duplicate target: DTCCount is derived from DTCList and the lamps; do not map it",
            )
            return None
        if entry.path == DTC_LIST and not (entry.transform and entry.transform.dtc):
            self.report(entry, "DTCList is fed one code per frame: use 'transform: {dtc: true}'")
            return None
        if entry.datatype is not None and type_family(entry.datatype) != type_family(spec.datatype):
            self.report(
                entry,
                f"type mismatch: declared {entry.datatype!r}, the catalogue has {spec.datatype}",
            )
            return None
        return resolved

    def _candidates(self, entry: MappingEntry) -> list[Candidate]:
        candidates = self.index.find(entry.signal, entry.message)
        if not candidates:
            where = f" in message {entry.message!r}" if entry.message else ""
            self.report(
                entry,
                f"unknown DBC signal {entry.signal!r}{where}{self.index.suggest(entry.signal)}",
            )
            return []
        if len({(i, m.name) for i, m, _ in candidates}) > 1:
            places = ", ".join(sorted({m.name for _, m, _ in candidates}))
            self.warn(
                entry,
                f"signal {entry.signal!r} is in several messages ({places}); all are mapped, "
                "add 'message' to pick one",
            )
        unknown = _unknown_labels(entry, [signal for _, _, signal in candidates])
        if unknown:
            self.warn(entry, unknown)
        return candidates

    def _parts(self, entry: MappingEntry) -> list[Candidate] | None:
        """The signals a ``combine`` entry reads besides its own, one message each."""
        assert entry.combine is not None
        parts: list[Candidate] = []
        for written in entry.combine.signals:
            message, _, name = written.rpartition(".")
            found = self.index.find(name, message or None)
            if len(found) == 1:
                parts.append(found[0])
                continue
            if not found:
                where = f" in message {message!r}" if message else ""
                self.report(
                    entry,
                    f"combine: unknown DBC signal {name!r}{where}{self.index.suggest(name)}",
                )
            else:
                places = ", ".join(sorted({m.name for _, m, _ in found}))
                self.report(
                    entry,
                    f"combine: signal {name!r} is in several messages ({places}); "
                    f"write MESSAGE.{name}",
                )
            return None
        return parts

    def _combination(
        self,
        entry: MappingEntry,
        spec: SignalSpec,
        candidates: Sequence[Candidate],
        parts: Sequence[Candidate],
    ) -> Combination | None:
        combine, transform = entry.combine, entry.transform
        assert combine is not None
        assert transform is not None
        assert transform.math is not None
        names = tuple(combine.part_name(i) for i in range(len(combine.signals)))
        try:
            compile_expression(transform.math, allowed_names={"x", *names})
        except ExpressionError as err:
            self.report(entry, f"combine: the expression may read x and {', '.join(names)}: {err}")
            return None
        _, message, signal = candidates[0]
        try:
            convert = build_converter(entry, spec, signal, message, extra_names=names)
        except SetupError as err:
            self.report(entry, str(err))
            return None
        stale = [stale_seconds(entry, m) for _, m, _ in (*candidates, *parts)]
        return Combination(entry, spec, convert, ("x", *names), combine.within_ms, max(stale))

    def _add_parts(
        self,
        entry: MappingEntry,
        spec: SignalSpec,
        combination: Combination,
        parts: Sequence[Candidate],
    ) -> None:
        for (dbc_index, message, signal), name in zip(parts, combination.names[1:], strict=True):
            self.bindings.append(
                SignalBinding(
                    entry, spec, dbc_index, message, signal, reading_converter(signal),
                    frozenset(), "part", None, combination, name,
                )
            )  # fmt: skip


def _selector(
    entry: MappingEntry, message: Message, signal: Signal
) -> tuple[str, float | int] | None:
    """The ``(selector signal, value)`` of a ``multiplexer`` entry on one message.

    Raises:
        SetupError: If the message has no such selector or value, or the signal is never
            sent with that value.
    """
    mux = entry.multiplexer
    if mux is None:
        return None
    name = mux.signal or signal.multiplexer_signal
    if name is None:
        tops = [s.name for s in message.signals if s.is_multiplexer and not s.multiplexer_signal]
        if len(tops) != 1:
            raise SetupError(
                f"multiplexer: message {message.name} has {'no' if not tops else 'several'} "
                f"multiplexer signals; name the selector: {{signal: NAME, value: {mux.value!r}}}"
            )
        name = tops[0]
    try:
        selector = message.get_signal_by_name(name)
    except KeyError:
        raise SetupError(f"multiplexer: no signal {name!r} in message {message.name}") from None
    value = label_value(selector, mux.value) if isinstance(mux.value, str) else mux.value
    if value is None:
        labels = ", ".join(sorted(signal_labels(selector))) or "none"
        raise SetupError(
            f"multiplexer: {mux.value!r} is not a value of {name} (its labels: {labels})"
        )
    ids = signal.multiplexer_ids
    if ids and signal.multiplexer_signal == name:
        sent = sorted(_scaled(selector, i) for i in ids)
        if value not in sent:
            raise SetupError(
                f"multiplexer: {signal.name} is only sent when {name} is "
                f"{', '.join(f'{v:g}' for v in sent)}, never {value:g}"
            )
    return name, value


def _scaled(signal: Signal, raw: int) -> float:
    value = signal.conversion.raw_to_scaled(raw, decode_choices=False)
    assert isinstance(value, int | float)
    return float(value)


def _uncatalogued_warning(file: str, paths: Sequence[str], vss: VssRelease | None) -> Problem:
    """One line for every path only the mapping declares (VSS 4.0's ``Vehicle.OBD.*``)."""
    where = f"nor in {vss.file}" if vss is not None else "and no VSS release is given (--vss)"
    shown = ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    return Problem(
        file,
        "",
        f"{len(paths)} path{'s are' if len(paths) != 1 else ' is'} not in touchpoint's signal "
        f"catalogue {where}: decoded with the datatype and unit the mapping declares ({shown})",
    )


def _unknown_labels(entry: MappingEntry, signals: Sequence[Signal]) -> str:
    """What to say of ``from`` labels no message carrying the signal has (``""``: none)."""
    if entry.transform is None or entry.transform.table is None:
        return ""
    labels = frozenset().union(*(signal_labels(s) for s in signals))
    missing = [
        source
        for source, _ in entry.transform.table
        if isinstance(source, str) and source not in labels and number_text(source) is None
    ]
    if not missing:
        return ""
    names = ", ".join(repr(m) for m in missing)
    known = ", ".join(sorted(labels)) or "none"
    return (
        f"mapping source{'s' if len(missing) > 1 else ''} {names} "
        f"{'are' if len(missing) > 1 else 'is'} not a label of DBC signal {signals[0].name} "
        f"(its labels: {known}): never matches"
    )


def _expression_reads(entry: MappingEntry, message: Message) -> frozenset[str]:
    if entry.transform is None or entry.transform.math is None:
        return frozenset()
    names = {"x", *(s.name for s in message.signals)}
    return frozenset(compile_expression(entry.transform.math, names).names - {"x"})


def _suggest(word: str, choices: Iterable[str]) -> str:
    import difflib  # noqa: PLC0415 - a mistake's suggestion; the daemon does not carry it

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _SignalIndex:
    """DBC signals by name, across every loaded file."""

    def __init__(self, sources: Sequence[DbcSource]) -> None:
        self._by_name: dict[str, list[tuple[int, Message, Signal]]] = defaultdict(list)
        for dbc_index, source in enumerate(sources):
            for message in source.database.messages:
                for signal in message.signals:
                    self._by_name[signal.name].append((dbc_index, message, signal))

    def find(self, name: str, message: str | None) -> list[tuple[int, Message, Signal]]:
        found = self._by_name.get(name, [])
        if message is not None:
            found = [c for c in found if c[1].name == message]
        return found

    def suggest(self, name: str) -> str:
        return _suggest(name, self._by_name)
