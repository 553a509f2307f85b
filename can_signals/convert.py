"""Value converters: from a decoded DBC value to a VSS value in the catalogue's type and unit.

A converter is built once per mapped signal, when the mapping is bound, and runs on
every decoded value. Everything that can be decided from the files is decided then (a
value table's labels are turned into numbers, its targets into VSS values, the unit
conversion is chosen), so the per-value work is a few arithmetic steps. Problems that
only a value can reveal (out of range, no table entry, a failing expression) raise
:class:`Rejected`, which the processor counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Final

from cantools.database.can import Message, Signal

from can_signals.catalogue import DataType, SignalSpec
from can_signals.dtc import NO_DTC, dtc_to_text
from can_signals.errors import CanSignalsError, ExpressionError
from can_signals.expression import compile_expression
from can_signals.mapping import MappingEntry, Scalar
from can_signals.units import UnitError, canonical_unit, converter
from can_signals.update import SignalValue

Frame = Mapping[str, float | int]
Converter = Callable[[float | int, Frame], SignalValue]


class Rejected(CanSignalsError):  # noqa: N818 - reads as "value rejected"
    """A value the converter refuses, with the counted reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class SetupError(CanSignalsError):
    """A mapping entry that cannot work with its DBC signal and catalogue entry."""


# Rejection reasons, counted per reason and path.
OUT_OF_DBC_RANGE: Final = "out_of_dbc_range"
OUT_OF_RANGE: Final = "out_of_range"
NO_TABLE_ENTRY: Final = "no_table_entry"
TRANSFORM_FAILED: Final = "transform_failed"
NOT_A_NUMBER: Final = "not_a_number"

_NUMERIC_TYPES: Final = frozenset(t for t in DataType if t.is_numeric)


def type_family(datatype: str) -> str:
    """Group VSS datatypes into what can be converted into each other."""
    if datatype == DataType.BOOLEAN:
        return "boolean"
    if datatype in (DataType.STRING, DataType.STRING_ARRAY):
        return str(datatype)
    if datatype in _NUMERIC_TYPES or datatype in ("int64", "uint64"):
        return "number"
    return "unknown"


def build_converter(
    entry: MappingEntry,
    spec: SignalSpec,
    signal: Signal,
    message: Message,
    extra_names: Collection[str] = (),
) -> Converter:
    """Build the converter for one mapping entry on one DBC signal.

    Args:
        entry: The mapping entry.
        spec: The VSS datatype, unit and limits of its path.
        signal: The DBC signal (``x``).
        message: The DBC message carrying it (a ``math`` expression may read its signals).
        extra_names: Further names a ``math`` expression may read (combined signals).

    Raises:
        SetupError: If the entry cannot produce values of the catalogue's type and unit.
    """
    transform = entry.transform
    check_dbc_range = _dbc_range_check(signal)
    finish = _finisher(spec)
    if transform is not None and transform.dtc:
        return _dtc_converter(spec, signal, check_dbc_range)
    if transform is not None and transform.table is not None:
        table = _build_table(entry, spec, signal, finish)
        return _table_converter(table, check_dbc_range)
    if transform is not None and transform.math is not None:
        names = {"x", *(s.name for s in message.signals), *extra_names}
        try:
            expression = compile_expression(transform.math, allowed_names=names)
        except ExpressionError as err:
            raise SetupError(f"bad expression: {err}") from err
        unit = _unit_step(entry.unit or spec.unit, spec, f"the unit {entry.unit!r} declared here")
        return _math_converter(expression, unit, finish, check_dbc_range)
    return _plain_converter(entry, spec, signal, finish, check_dbc_range)


def reading_converter(signal: Signal) -> Converter:
    """The converter of a combined value's input: the DBC range check, nothing else."""
    check_dbc_range = _dbc_range_check(signal)

    def convert(raw: float | int, _frame: Frame) -> SignalValue:
        check_dbc_range(raw)
        return raw

    return convert


def _plain_converter(
    entry: MappingEntry,
    spec: SignalSpec,
    signal: Signal,
    finish: Callable[[object], SignalValue],
    check_dbc_range: Callable[[float | int], None],
) -> Converter:
    if spec.datatype == DataType.STRING and spec.unit != "iso8601":
        labels = _labels(signal)
        if not labels:
            raise SetupError(
                f"type mismatch: {spec.path} is a string but DBC signal {signal.name} has no "
                "value table; add a 'mapping' transform"
            )
        refused = sorted(set(labels.values()) - set(spec.allowed or labels.values()))
        if refused:
            raise SetupError(
                f"type mismatch: DBC signal {signal.name}'s labels {', '.join(refused)} are not "
                f"values of {spec.path} ({', '.join(spec.allowed or ())}); "
                "add a 'mapping' transform"
            )
        return _table_converter({k: finish(v) for k, v in labels.items()}, check_dbc_range)
    if spec.datatype == DataType.STRING_ARRAY:
        raise SetupError(f"{spec.path} can only be fed by a 'dtc' transform")
    dbc_unit = canonical_unit(signal.unit)
    source_unit = signal.unit if dbc_unit else (entry.unit or spec.unit)
    unit = _unit_step(source_unit, spec, f"DBC signal {signal.name}'s unit {signal.unit!r}")

    def convert(raw: float | int, _frame: Frame) -> SignalValue:
        check_dbc_range(raw)
        return finish(unit(raw) if unit else raw)

    return convert


def _unit_step(source: str | None, spec: SignalSpec, what: str) -> Callable[[float], float] | None:
    if spec.datatype == DataType.BOOLEAN or source is None or spec.unit is None:
        return None
    if spec.unit == "iso8601":
        return None
    try:
        return converter(source, spec.unit)
    except UnitError as err:
        raise SetupError(f"type mismatch: {what} does not fit {spec.path} ({err})") from err


def _math_converter(
    expression: Callable[[Frame], float | int | bool],
    unit: Callable[[float], float] | None,
    finish: Callable[[object], SignalValue],
    check_dbc_range: Callable[[float | int], None],
) -> Converter:
    def convert(raw: float | int, frame: Frame) -> SignalValue:
        check_dbc_range(raw)
        variables = {**frame, "x": raw}
        try:
            value = expression(variables)
        except (ArithmeticError, ValueError, KeyError, TypeError) as err:
            raise Rejected(TRANSFORM_FAILED, f"transform failed for x={raw!r}: {err!r}") from err
        return finish(unit(value) if unit else value)

    return convert


def _table_converter(
    table: Mapping[float | int, SignalValue], check_dbc_range: Callable[[float | int], None]
) -> Converter:
    def convert(raw: float | int, _frame: Frame) -> SignalValue:
        check_dbc_range(raw)
        try:
            return table[raw]
        except KeyError:
            raise Rejected(NO_TABLE_ENTRY, f"no mapping entry for value {raw!r}") from None

    return convert


def _dtc_converter(
    spec: SignalSpec, signal: Signal, check_dbc_range: Callable[[float | int], None]
) -> Converter:
    if spec.datatype != DataType.STRING_ARRAY:
        raise SetupError(f"the 'dtc' transform feeds Vehicle.Diagnostics.DTCList, not {spec.path}")
    if signal.length < 16:
        raise SetupError(f"DBC signal {signal.name} has {signal.length} bits; a DTC needs 16")

    def convert(raw: float | int, _frame: Frame) -> SignalValue:
        check_dbc_range(raw)
        code = int(raw)
        if code != raw or not 0 <= code <= 0xFFFFFF:
            raise Rejected(OUT_OF_RANGE, f"not a DTC: {raw!r}")
        # A three-byte (UDS) DTC carries the failure type in its low byte.
        two_byte = code >> 8 if signal.length > 16 else code
        return () if two_byte == NO_DTC else (dtc_to_text(two_byte),)

    return convert


def _labels(signal: Signal) -> dict[float | int, str]:
    """The signal's value table as physical value -> label."""
    if not signal.choices:
        return {}
    labels: dict[float | int, str] = {}
    for raw, label in signal.choices.items():
        scaled = signal.conversion.raw_to_scaled(raw, decode_choices=False)
        if isinstance(scaled, int | float):
            labels[_number_key(scaled)] = str(label)
    return labels


def _build_table(
    entry: MappingEntry,
    spec: SignalSpec,
    signal: Signal,
    finish: Callable[[object], SignalValue],
) -> dict[float | int, SignalValue]:
    assert entry.transform is not None
    assert entry.transform.table is not None
    by_label = {label: value for value, label in _labels(signal).items()}
    unit = None
    if spec.datatype.is_numeric and entry.unit:
        unit = _unit_step(entry.unit, spec, f"the unit {entry.unit!r} declared here")
    table: dict[float | int, SignalValue] = {}
    for source, target in entry.transform.table:
        key = _table_key(source, by_label)
        if key is None:
            # A label of the same signal name in another message, or of none: it never
            # matches here (KUKSA's rule; bind() warns when no message has it).
            continue
        if isinstance(target, str) and spec.datatype.is_numeric:
            raise SetupError(f"type mismatch: mapping target {target!r} is not a number")
        try:
            value = finish(unit(float(target)) if unit and not isinstance(target, str) else target)
        except Rejected as err:
            raise SetupError(f"type mismatch: mapping target {target!r}: {err}") from err
        # KUKSA picks any of several entries for one value; keeping the first is predictable.
        table.setdefault(key, value)
    return table


def _table_key(source: Scalar, by_label: Mapping[str, float | int]) -> float | int | None:
    """The decoded value a ``from`` stands for; ``None`` for a label this signal lacks."""
    if isinstance(source, str):
        if source in by_label:
            return by_label[source]
        number = number_text(source)
        return None if number is None else _number_key(number)
    return _number_key(source)


def number_text(text: str) -> float | None:
    """The number a ``from`` written as text stands for (``"3"``), or ``None`` for a label."""
    try:
        return float(text)
    except ValueError:
        return None


def signal_labels(signal: Signal) -> frozenset[str]:
    """The labels of a DBC signal's value table."""
    return frozenset(_labels(signal).values())


def label_value(signal: Signal, text: str) -> float | int | None:
    """The decoded value a label (or a number written as text) stands for, else ``None``."""
    by_label = {label: value for value, label in _labels(signal).items()}
    return _table_key(text, by_label)


def _number_key(value: float) -> float | int:
    """Normalise a number for table lookup: decoded 1.0 and written 1 must meet."""
    number = float(value)
    return int(number) if number.is_integer() else number


def _dbc_range_check(signal: Signal) -> Callable[[float | int], None]:
    low, high = signal.minimum, signal.maximum
    if low is None and high is None:
        return _accept
    # Half a scale step of slack: DBC ranges are written as rounded physical values.
    slack = abs(float(signal.scale)) / 2
    lowest = -math.inf if low is None else float(low) - slack
    highest = math.inf if high is None else float(high) + slack

    def check(raw: float | int) -> None:
        if not lowest <= raw <= highest:
            raise Rejected(OUT_OF_DBC_RANGE, f"{raw!r} is outside the DBC range [{low}, {high}]")

    return check


def _accept(_raw: float | int) -> None:
    return None


def _finisher(spec: SignalSpec) -> Callable[[object], SignalValue]:
    """Coerce a value to the catalogue's datatype and check the catalogue's range."""
    datatype = spec.datatype
    lowest = -math.inf if spec.minimum is None else spec.minimum
    highest = math.inf if spec.maximum is None else spec.maximum
    int_range = datatype.integer_range
    if int_range is not None:
        lowest, highest = max(lowest, int_range[0]), min(highest, int_range[1])

    def number(value: object) -> float:
        if isinstance(value, str) or not isinstance(value, int | float):
            raise Rejected(NOT_A_NUMBER, f"{value!r} is not a number")
        result = float(value)
        if not math.isfinite(result):
            raise Rejected(NOT_A_NUMBER, f"{value!r} is not a finite number")
        if not lowest <= result <= highest:
            raise Rejected(
                OUT_OF_RANGE, f"{value!r} is outside [{lowest}, {highest}] of {spec.path}"
            )
        return result

    if int_range is not None:

        def finish_int(value: object) -> SignalValue:
            return round(number(value))

        return finish_int
    if datatype.is_numeric:
        return number
    if datatype == DataType.BOOLEAN:

        def finish_bool(value: object) -> SignalValue:
            if isinstance(value, str):
                raise Rejected(NOT_A_NUMBER, f"{value!r} is not a boolean")
            return bool(number(value) if not isinstance(value, bool) else value)

        return finish_bool
    if spec.unit == "iso8601":

        def finish_time(value: object) -> SignalValue:
            if isinstance(value, str):
                return value
            try:
                moment = datetime.fromtimestamp(number(value), tz=UTC)
            except (OverflowError, OSError, ValueError) as err:
                raise Rejected(OUT_OF_RANGE, f"{value!r} is not a time") from err
            return moment.isoformat().replace("+00:00", "Z")

        return finish_time
    allowed = spec.allowed

    def finish_str(value: object) -> SignalValue:
        if not isinstance(value, str):
            raise Rejected(NOT_A_NUMBER, f"{value!r} is not a string")
        if allowed is not None and value not in allowed:
            raise Rejected(OUT_OF_RANGE, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return finish_str
