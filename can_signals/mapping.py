"""Mapping files: which DBC signal feeds which VSS path, in the KUKSA ``dbc2vss`` format.

Both layouts the Eclipse KUKSA CAN provider reads are accepted, in JSON or YAML:

- a VSS tree (``{"Vehicle": {"children": {"Speed": {"dbc2vss": {...}}}}}``), as
  ``vspec2json`` writes it, and
- a flat overlay keyed by dotted paths (``Vehicle.Speed: {dbc2vss: {...}}``).

A node maps a signal with a ``dbc2vss`` block (``dbc`` is the old synonym) holding
``signal``, optional ``interval_ms`` and ``on_change`` (KUKSA's defaults: neither given
means every 1000 ms; only ``on_change: true`` means every change) and an optional
``transform`` with ``math`` (an expression over ``x``) or ``mapping`` (a list of
``from``/``to`` pairs). ``vss2dbc`` blocks (writing to CAN) are ignored with one warning:
touchpoint reads the bus and never writes signals to the car.

A node's own VSS declarations (``datatype``, ``unit``, ``min``, ``max``, ``allowed``, as a
``vss_dbc.json`` tree carries them on every node and an overlay on the nodes it adds)
are kept with the entry: :mod:`can_signals.signal_types` decides with them what the path's
values are.

touchpoint extensions, which KUKSA would not understand but which never change the
meaning of a KUKSA file: ``message`` (pins the DBC message when a signal name occurs in
several), ``stale_ms`` (how long without the signal before it is reported stale; 0
never), the ``dtc`` transform (a two-byte DTC slot, see :mod:`can_signals.faults`),
``multiplexer`` and ``combine`` (see :mod:`can_signals.mapping_extensions`), and
``not_available`` (the raw values, or value-table labels, that mean "no value": by
default a DBC's SNA labels and, for unsigned integer signals of 8 bits or more, the
all-ones value; ``[]`` keeps only the labels).

This module only reads the file and checks its shape; :mod:`can_signals.binding` checks
it against the DBC files and the catalogue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from can_signals.errors import ExpressionError, MappingError, Problem
from can_signals.expression import compile_expression
from can_signals.mapping_extensions import Combine, Multiplexer, read_combine, read_multiplexer

Scalar = bool | int | float | str

DEFAULT_INTERVAL_MS: Final = 1000
_MAPPING_KEYS: Final = ("dbc2vss", "dbc")
_ENTRY_KEYS: Final = frozenset(
    {
        "signal", "interval_ms", "on_change", "transform", "message", "stale_ms",
        "multiplexer", "combine", "not_available",
    }
)  # fmt: skip
_SEGMENT: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Transform:
    """How a DBC value becomes a VSS value; exactly one of the fields is set.

    Attributes:
        math: A ``math`` expression.
        table: The ``mapping`` pairs, ``(from, to)`` as written.
        dtc: ``True`` for a two-byte DTC slot (touchpoint extension).
    """

    math: str | None = None
    table: tuple[tuple[Scalar, Scalar], ...] | None = None
    dtc: bool = False


@dataclass(frozen=True, slots=True)
class Declared:
    """What a mapping node declares about its VSS signal (each ``None`` when it does not).

    Attributes:
        datatype: The VSS datatype (``float``, ``uint32``, ...).
        unit: The VSS unit the value (after the transform) is in.
        minimum: The lowest allowed value (``min``).
        maximum: The highest allowed value (``max``).
        allowed: The values an enumerated string may take (``allowed``).
    """

    datatype: str | None = None
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class MappingEntry:
    """One VSS path fed by one DBC signal.

    Attributes:
        path: The VSS path.
        signal: The DBC signal name.
        interval_ms: Minimum time between two updates, on the frames' clock.
        on_change: Only forward a value that differs from the last one forwarded.
        transform: The transform, or ``None`` to take the value as decoded.
        message: The DBC message name, when the file pins it.
        declared: What the node declares about its VSS signal (datatype, unit, limits).
        stale_ms: Time without the signal before it is stale (``None``: the default).
        where: Where in the file the entry is, for messages.
        multiplexer: Only frames whose multiplexer has this value feed the path.
        combine: Other signals the value is computed from, and how fresh they must be.
        not_available: Raw values or labels that mean "no value", replacing the all-ones
            default (``None``: the default).
    """

    path: str
    signal: str
    interval_ms: int
    on_change: bool
    transform: Transform | None
    message: str | None
    declared: Declared
    stale_ms: int | None
    where: str
    multiplexer: Multiplexer | None = None
    combine: Combine | None = None
    not_available: tuple[int | str, ...] | None = None

    @property
    def datatype(self) -> str | None:
        """The VSS datatype the file declares, if it does."""
        return self.declared.datatype

    @property
    def unit(self) -> str | None:
        """The VSS unit the file declares (the unit the transform's result is in)."""
        return self.declared.unit


@dataclass(frozen=True, slots=True)
class MappingDocument:
    """A loaded mapping file.

    Attributes:
        file: The file it was read from.
        entries: One per mapped VSS path.
        warnings: What the file holds that touchpoint ignores (``vss2dbc`` blocks).
    """

    file: str
    entries: tuple[MappingEntry, ...]
    warnings: tuple[Problem, ...] = ()


def load_mapping(path: str | Path) -> MappingDocument:
    """Read a mapping file and check its shape.

    Raises:
        MappingError: With every problem found, each with its file and line or key.
    """
    document, problems = read_mapping(path)
    if problems:
        raise MappingError(problems)
    return document


def read_mapping(path: str | Path) -> tuple[MappingDocument, tuple[Problem, ...]]:
    """Read a mapping file: its well-formed entries, and the problems of the rest.

    The entries can still be checked against the DBC files (``bind(..., earlier=...)``),
    so that one run reports every problem of the file.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return MappingDocument(file, ()), (
            Problem(file, "", f"cannot read the mapping file: {err}"),
        )
    return check_mapping(text, file)


def parse_mapping(text: str, file: str = "<mapping>") -> MappingDocument:
    """Parse mapping text; JSON if the file name ends in ``.json``, else YAML (JSON included).

    Raises:
        MappingError: With every problem found.
    """
    document, problems = check_mapping(text, file)
    if problems:
        raise MappingError(problems)
    return document


def check_mapping(
    text: str, file: str = "<mapping>"
) -> tuple[MappingDocument, tuple[Problem, ...]]:
    """Parse mapping text: its well-formed entries, and the problems of the rest."""
    reader = _Reader(file, text)
    document = reader.read()
    problems = reader.problems
    entries: list[MappingEntry] = []
    writes: list[str] = []
    if document is not None:
        if not isinstance(document, dict):
            problems.append(reader.problem((), "the top level must be a mapping of VSS paths"))
        else:
            seen: dict[str, str] = {}
            for key_path, path, node in _walk(document):
                if "vss2dbc" in node:
                    writes.append(path)
                entry = _entry(reader, key_path, path, node)
                if entry is None:
                    continue
                if entry.path in seen:
                    problems.append(
                        reader.problem(
                            key_path,
                            f"duplicate target {entry.path!r}: "
                            f"already mapped at {seen[entry.path]}",
                        )
                    )
                    continue
                seen[entry.path] = entry.where
                entries.append(entry)
    if not entries and not problems:
        problems.append(Problem(file, "", "maps no signal (no dbc2vss block found)"))
    warnings: tuple[Problem, ...] = ()
    if writes:
        shown = ", ".join(writes[:3]) + (f" and {len(writes) - 3} more" if len(writes) > 3 else "")
        blocks = f"{len(writes)} 'vss2dbc' block{'s' if len(writes) != 1 else ''}"
        warnings = (
            Problem(file, "", f"{blocks} ignored ({shown}): touchpoint never writes to the car"),
        )
    return MappingDocument(file, tuple(entries), warnings), tuple(problems)


KeyPath = tuple[str, ...]


class _Invalid:
    """Marks a value whose problem has been reported already."""


_INVALID: Final = _Invalid()


def _walk(document: Mapping[str, Any]) -> Iterator[tuple[KeyPath, str, Mapping[str, Any]]]:
    """Yield ``(key path in the file, VSS path, node)`` for every node that may map a signal."""
    stack: list[tuple[KeyPath, str, Any]] = [((k,), k, v) for k, v in document.items()]
    stack.reverse()
    while stack:
        key_path, path, node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield key_path, path, node
        children = node.get("children")
        if isinstance(children, dict):
            nested = [
                ((*key_path, "children", name), f"{path}.{name}", child)
                for name, child in children.items()
            ]
            stack.extend(reversed(nested))


def _entry(
    reader: _Reader, key_path: KeyPath, path: str, node: Mapping[str, Any]
) -> MappingEntry | None:
    present = [k for k in _MAPPING_KEYS if k in node]
    if not present:
        return None
    if len(present) > 1:
        reader.add(key_path, "has both 'dbc2vss' and its synonym 'dbc': keep one")
        return None
    block_key = present[0]
    block_path = (*key_path, block_key)
    block = node[block_key]
    if not all(_SEGMENT.match(part) for part in path.split(".")):
        reader.add(key_path, f"{path!r} is not a VSS path (dot-separated names)")
        return None
    if not isinstance(block, dict):
        reader.add(block_path, f"{path}: '{block_key}' must be a mapping with at least 'signal'")
        return None
    ok = True
    for unknown in sorted(set(block) - _ENTRY_KEYS):
        reader.add((*block_path, unknown), f"{path}: unknown key {unknown!r} in '{block_key}'")
        ok = False
    signal = block.get("signal")
    if not isinstance(signal, str) or not signal.strip():
        reader.add(block_path, f"{path}: 'signal' (the DBC signal name) is missing or empty")
        ok = False
    on_change = block.get("on_change", False)
    if not isinstance(on_change, bool):
        reader.add((*block_path, "on_change"), f"{path}: 'on_change' must be true or false")
        ok = False
    interval = _non_negative_int(reader, block, "interval_ms", block_path, path)
    stale = _non_negative_int(reader, block, "stale_ms", block_path, path)
    message = block.get("message")
    if message is not None and (not isinstance(message, str) or not message):
        reader.add((*block_path, "message"), f"{path}: 'message' must be a DBC message name")
        ok = False
    not_available = _not_available(reader, block, block_path, path)
    transform = _transform(reader, block, block_path, path)
    declared = _declared(reader, node, key_path, path)
    extensions = _extensions(reader, block, block_path, path, transform)
    if (
        not ok
        or isinstance(interval, _Invalid)
        or isinstance(stale, _Invalid)
        or isinstance(not_available, _Invalid)
        or isinstance(transform, _Invalid)
        or isinstance(declared, _Invalid)
        or isinstance(extensions, _Invalid)
    ):
        return None
    multiplexer, combine = extensions
    if interval is None:
        interval = 0 if on_change else DEFAULT_INTERVAL_MS
    return MappingEntry(
        path=path,
        signal=str(signal).strip(),
        interval_ms=interval,
        on_change=bool(on_change),
        transform=transform,
        message=message,
        declared=declared,
        stale_ms=stale,
        where=reader.where(key_path),
        multiplexer=multiplexer,
        combine=combine,
        not_available=not_available,
    )


def _not_available(
    reader: _Reader, block: Mapping[str, Any], block_path: KeyPath, path: str
) -> tuple[int | str, ...] | _Invalid | None:
    """The ``not_available`` key: a list of raw integers and labels."""
    if "not_available" not in block:
        return None
    values = block["not_available"]
    if not isinstance(values, list) or not all(
        (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
        or (isinstance(v, str) and v.strip())
        for v in values
    ):
        reader.add(
            (*block_path, "not_available"),
            f"{path}: 'not_available' must be a list of raw values (integers >= 0) or labels",
        )
        return _INVALID
    return tuple(v.strip() if isinstance(v, str) else v for v in values)


def _extensions(
    reader: _Reader,
    block: Mapping[str, Any],
    block_path: KeyPath,
    path: str,
    transform: Transform | _Invalid | None,
) -> tuple[Multiplexer | None, Combine | None] | _Invalid:
    """The ``multiplexer`` and ``combine`` keys; :data:`_INVALID` after reporting a problem."""
    multiplexer = read_multiplexer(block["multiplexer"]) if "multiplexer" in block else None
    combine = read_combine(block["combine"]) if "combine" in block else None
    ok = True
    for key, parsed in (("multiplexer", multiplexer), ("combine", combine)):
        if isinstance(parsed, str):
            reader.add((*block_path, key), f"{path}: {parsed}")
            ok = False
    if isinstance(combine, Combine) and (
        not isinstance(transform, Transform) or transform.math is None
    ):
        reader.add((*block_path, "combine"), f"{path}: 'combine' needs a 'math' transform")
        ok = False
    if not ok or isinstance(multiplexer, str) or isinstance(combine, str):
        return _INVALID
    return multiplexer, combine


def _declared(
    reader: _Reader, node: Mapping[str, Any], key_path: KeyPath, path: str
) -> Declared | _Invalid:
    """The node's VSS declarations; :data:`_INVALID` after reporting a malformed one."""
    ok = True
    texts: dict[str, str | None] = {}
    for key in ("datatype", "unit"):
        value = node.get(key)
        if value is not None and not isinstance(value, str):
            reader.add((*key_path, key), f"{path}: '{key}' must be a string")
            ok = False
        texts[key] = value
    limits: dict[str, float | None] = {}
    for key in ("min", "max"):
        value = node.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            reader.add((*key_path, key), f"{path}: '{key}' must be a number")
            ok = False
            value = None
        limits[key] = value
    allowed = node.get("allowed")
    if allowed is not None and (
        not isinstance(allowed, list) or not all(isinstance(a, Scalar) for a in allowed)
    ):
        reader.add((*key_path, "allowed"), f"{path}: 'allowed' must be a list of values")
        ok = False
    if not ok:
        return _INVALID
    # Only strings are checked against 'allowed' (VSS enumerates strings).
    strings = tuple(allowed) if allowed and all(isinstance(a, str) for a in allowed) else None
    return Declared(
        datatype=texts["datatype"],
        unit=texts["unit"],
        minimum=limits["min"],
        maximum=limits["max"],
        allowed=strings,
    )


def _non_negative_int(
    reader: _Reader, block: Mapping[str, Any], key: str, block_path: KeyPath, path: str
) -> int | _Invalid | None:
    """Return the value, ``None`` if absent, :data:`_INVALID` after reporting a problem."""
    if key not in block:
        return None
    value = block[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        reader.add((*block_path, key), f"{path}: {key!r} must be a whole number >= 0")
        return _INVALID
    return value


def _transform(  # noqa: PLR0911 - one early return per malformed shape
    reader: _Reader, block: Mapping[str, Any], block_path: KeyPath, path: str
) -> Transform | _Invalid | None:
    """Return the transform, ``None`` if absent, :data:`_INVALID` after reporting a problem."""
    if "transform" not in block:
        return None
    where = (*block_path, "transform")
    spec = block["transform"]
    kinds = [k for k in ("math", "mapping", "dtc") if isinstance(spec, dict) and k in spec]
    if not isinstance(spec, dict) or len(kinds) != 1 or len(spec) != 1:
        reader.add(where, f"{path}: 'transform' needs exactly one of 'math', 'mapping', 'dtc'")
        return _INVALID
    kind = kinds[0]
    value = spec[kind]
    if kind == "math":
        if not isinstance(value, str):
            reader.add((*where, "math"), f"{path}: 'math' must be an expression string")
            return _INVALID
        try:
            # Names other than x are checked against the DBC when the mapping is bound.
            compile_expression(value, allowed_names=_AnyName())
        except ExpressionError as err:
            reader.add((*where, "math"), f"{path}: bad expression: {err}")
            return _INVALID
        return Transform(math=value)
    if kind == "dtc":
        if value not in (True, "j2012"):
            reader.add((*where, "dtc"), f"{path}: 'dtc' must be true (two-byte J2012 codes)")
            return _INVALID
        return Transform(dtc=True)
    return _table(reader, value, (*where, "mapping"), path)


def _table(reader: _Reader, value: Any, where: KeyPath, path: str) -> Transform | _Invalid:
    if not isinstance(value, list) or not value:
        reader.add(where, f"{path}: 'mapping' must be a non-empty list of from/to pairs")
        return _INVALID
    pairs: list[tuple[Scalar, Scalar]] = []
    ok = True
    for index, item in enumerate(value):
        item_where = (*where, str(index))
        if not isinstance(item, dict) or set(item) != {"from", "to"}:
            reader.add(item_where, f"{path}: mapping item {index} needs exactly 'from' and 'to'")
            ok = False
            continue
        source, target = item["from"], item["to"]
        if not isinstance(source, Scalar) or not isinstance(target, Scalar):
            reader.add(item_where, f"{path}: mapping item {index}: from/to must be plain values")
            ok = False
            continue
        pairs.append((source, target))
    return Transform(table=tuple(pairs)) if ok else _INVALID


class _AnyName(frozenset[str]):
    """Accepts every name: used to check an expression's syntax before the DBC is known."""

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str)


class _Reader:
    """Parses the document and turns key paths into line numbers for messages."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.problems: list[Problem] = []
        self._lines: dict[KeyPath, int] | None = None

    def read(self) -> Any:
        if self.file.endswith(".json"):
            try:
                return json.loads(self.text, object_pairs_hook=self._json_object)
            except json.JSONDecodeError as err:
                self.problems.append(
                    Problem(self.file, f"line {err.lineno}", f"not valid JSON: {err.msg}")
                )
                return None
        # PyYAML is imported only for YAML files: a daemon reading a JSON mapping (KUKSA's
        # own form) does without it.
        from can_signals.yaml_reader import YamlProblem, read_yaml  # noqa: PLC0415

        try:
            document, duplicates = read_yaml(self.text)
        except YamlProblem as err:
            self.problems.append(Problem(self.file, err.where, err.message))
            return None
        self.problems.extend(
            Problem(self.file, f"line {line}", f"duplicate key {key!r}") for key, line in duplicates
        )
        return document

    def _json_object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                self.problems.append(Problem(self.file, repr(key), "duplicate key"))
            result[key] = value
        return result

    def add(self, key_path: KeyPath, message: str) -> None:
        self.problems.append(self.problem(key_path, message))

    def problem(self, key_path: KeyPath, message: str) -> Problem:
        return Problem(self.file, self.where(key_path), message)

    def where(self, key_path: KeyPath) -> str:
        line = self._line_of(key_path)
        return f"line {line}" if line else ".".join(key_path)

    def _line_of(self, key_path: KeyPath) -> int | None:
        if self._lines is None:
            from can_signals.yaml_reader import index_lines  # noqa: PLC0415 - problems only

            self._lines = index_lines(self.text)
        # The deepest ancestor that has a line: a missing key is reported at its parent.
        for end in range(len(key_path), 0, -1):
            line = self._lines.get(key_path[:end])
            if line is not None:
                return line
        return None
