"""What a mapped VSS path's values are: the catalogue, the mapping's own word, a VSS release.

Three sources, in this order:

1. touchpoint's built-in catalogue (:mod:`can_signals.catalogue`): the paths the engines
   act on. Its datatype and unit win; a unit the mapping declares is what the mapping's
   values are in, and they are converted (a VSS 4.0 odometer in km becomes metres).
2. the mapping's own declarations: a ``vss_dbc.json`` tree carries ``datatype`` and
   ``unit`` on every node, an overlay ``type`` and ``datatype`` on the nodes it adds.
   They are the truth for the paths outside the catalogue.
3. a VSS release's JSON export (``--vss FILE``, ``[can] vss``; what the KUKSA databroker
   takes as ``--vss``), for the units, types and limits the mapping leaves out.

A path outside all three is an error that names what to add; a path only the mapping
declares (VSS 4.0's ``Vehicle.OBD.*``, gone from VSS 6.0) is decoded and published with
its declared type, and :func:`can_signals.binding.bind` warns about it in one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar

from can_signals.catalogue import CATALOGUE, DataType, SignalSpec
from can_signals.errors import CanSignalsError, ConfigurationError, Problem
from can_signals.mapping import MappingEntry

Origin = Literal["catalogue", "vss", "mapping"]
#: The datatypes one CAN signal can feed (arrays only through the DTC transform).
_SCALAR_TYPES: Final = frozenset(t.value for t in DataType if t != DataType.STRING_ARRAY)
_LEAF_TYPES: Final = frozenset({"sensor", "actuator", "attribute"})
_T = TypeVar("_T")


class VssError(ConfigurationError):
    """A VSS release file that cannot be read."""


class SignalTypeError(CanSignalsError):
    """A mapped path whose datatype nothing declares, or one a CAN signal cannot feed."""


@dataclass(frozen=True, slots=True)
class VssLeaf:
    """What a VSS release says about one signal (its ``datatype``, ``unit`` and limits)."""

    datatype: str
    unit: str | None
    minimum: float | None
    maximum: float | None
    allowed: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class VssRelease:
    """A VSS release's JSON export, as ``vspec export json`` writes it.

    Attributes:
        file: The file it was read from.
        leaves: Every signal (sensor, actuator, attribute) by its dotted path.
    """

    file: str
    leaves: Mapping[str, VssLeaf]


@dataclass(frozen=True, slots=True)
class Resolved:
    """The VSS datatype and unit a mapped path's values take, and where they come from."""

    spec: SignalSpec
    origin: Origin


def load_vss(path: str | Path) -> VssRelease:
    """Read a VSS release's JSON export.

    Raises:
        VssError: If the file cannot be read, is not JSON, or holds no VSS signal.
    """
    file = str(path)
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise VssError([Problem(file, "", f"cannot read the VSS file: {err}")]) from err
    except json.JSONDecodeError as err:
        raise VssError([Problem(file, f"line {err.lineno}", f"not valid JSON: {err.msg}")]) from err
    leaves = dict(_leaves(document)) if isinstance(document, dict) else {}
    if not leaves:
        raise VssError(
            [Problem(file, "", "holds no VSS signal (expected the JSON export of a VSS tree)")]
        )
    return VssRelease(file, MappingProxyType(leaves))


def _leaves(document: Mapping[str, Any]) -> Iterator[tuple[str, VssLeaf]]:
    stack: list[tuple[str, Any]] = list(document.items())
    while stack:
        path, node = stack.pop()
        if not isinstance(node, dict):
            continue
        children = node.get("children")
        if isinstance(children, dict):
            stack.extend((f"{path}.{name}", child) for name, child in children.items())
            continue
        datatype = node.get("datatype")
        if node.get("type") not in _LEAF_TYPES or not isinstance(datatype, str):
            continue
        yield (
            path,
            VssLeaf(
                datatype=datatype,
                unit=_text(node.get("unit")),
                minimum=_number(node.get("min")),
                maximum=_number(node.get("max")),
                allowed=_strings(node.get("allowed")),
            ),
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: object) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _strings(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def resolve(entry: MappingEntry, release: VssRelease | None) -> Resolved:
    """The datatype, unit and limits of a mapped path's values.

    Raises:
        SignalTypeError: If nothing declares the path's datatype, or the declared one
            is not something a CAN signal can feed; the message says what to add.
    """
    builtin = CATALOGUE.get(entry.path)
    if builtin is not None:
        return Resolved(builtin, "catalogue")
    declared = entry.declared
    leaf = release.leaves.get(entry.path) if release is not None else None
    datatype = declared.datatype or (leaf.datatype if leaf is not None else None)
    if datatype is None:
        where = f"nor in {release.file}" if release is not None else "and no VSS release is given"
        raise SignalTypeError(
            f"unknown VSS path: not in touchpoint's signal catalogue {where}; add 'datatype' "
            "(and 'unit') to the entry, or give the VSS release's JSON export (--vss, "
            "[can] vss)"
        )
    if datatype not in _SCALAR_TYPES:
        raise SignalTypeError(
            f"datatype {datatype!r} cannot be fed by one CAN signal "
            f"(one of {', '.join(sorted(_SCALAR_TYPES))})"
        )
    # The release fills in what the mapping leaves out, unless the two disagree on the type.
    fill = leaf if leaf is not None and _kind(leaf.datatype) == _kind(datatype) else None
    spec = SignalSpec(
        path=entry.path,
        datatype=DataType(datatype),
        unit=_first(declared.unit, fill.unit if fill else None),
        description=f"declared by {'the VSS release' if leaf else 'the mapping'}",
        minimum=_first(declared.minimum, fill.minimum if fill else None),
        maximum=_first(declared.maximum, fill.maximum if fill else None),
        allowed=_first(declared.allowed, fill.allowed if fill else None),
        standard=leaf is not None,
    )
    return Resolved(spec, "vss" if leaf is not None else "mapping")


def _first(value: _T | None, fallback: _T | None) -> _T | None:
    return value if value is not None else fallback


def _kind(datatype: str) -> str:
    if datatype in ("boolean", "string"):
        return datatype
    return "number" if datatype in _SCALAR_TYPES else datatype
