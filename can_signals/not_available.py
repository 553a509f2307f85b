"""Values a DBC signal uses to say "no value": they are absent, never numbers.

ECUs fill a signal they cannot measure with a marker: a value-table label such as
``SNA`` ("signal not available") or ``INVALID``, or, by the common convention, the
all-ones raw value. Decoded as a number, the marker is usually inside the DBC range (a
24-bit odometer's 0xFFFFFF is 1,677,721.5 km), so a range check does not catch it; a
value taken as real would then hold wherever it went (maintenance run on 1.6 million
km). A frame whose value is such a marker is treated as a frame without the signal.

Which values: the labels that say so, and for an unsigned integer signal of 8 bits or
more the all-ones raw value, unless the value table names it otherwise. A label says so
when it has the word ``SNA``, or when what sets it apart from the signal's other labels
is only ``INVALID``, ``N/A`` or ``SIGNAL_NOT_AVAILABLE`` (``DI_GEAR_INVALID`` among
``DI_GEAR_P``, ``DI_GEAR_D``). Not ``NA`` (Model 3's ``GTW_rearLightType`` says NA for
North America), nor ``UNAVAILABLE``: in real DBCs it is mostly the state of a feature
(``DAS_NAV_UNAVAILABLE``), a value like any other. An entry with a ``mapping`` table is
left to its table: the integrator said what each label means (KUKSA's Model 3 mapping
turns ``LIGHT_SNA`` into "off"), and a label the table does not list is not published
anyway (KUKSA's rule). A mapping entry's ``not_available`` list replaces the all-ones
default (``[]``: labels only) for a signal whose full range is real.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Final

from cantools.database.can import Signal

from can_signals.mapping import MappingEntry

#: What a label says beyond the signal's other labels, when it means "no value".
#: Not UNAVAILABLE: in real DBCs it is mostly a feature's state (DAS_NAV_UNAVAILABLE,
#: DI_SYS_UNAVAILABLE), a value worth publishing.
#: Nor NA: Model 3's GTW_rearLightType says NA for North America.
_MARKERS: Final = frozenset({"INVALID", "SIGNAL_NOT_AVAILABLE", "N_A"})
#: Below this many bits, all ones is an ordinary value (a 2-bit state's 3).
ALL_ONES_MIN_BITS: Final = 8


def _words(label: str) -> list[str]:
    return [w for w in re.split(r"[^A-Z0-9]+", label.upper()) if w]


def marker_labels(labels: Collection[str]) -> frozenset[str]:
    """The labels of one value table that say the signal has no value."""
    split = {label: _words(label) for label in labels}
    common = 0
    if len(split) > 1:
        # The words every label starts with (DI_GEAR_ of DI_GEAR_P, DI_GEAR_INVALID).
        for column in zip(*split.values(), strict=False):
            if len(set(column)) > 1:
                break
            common += 1
    markers = set()
    for label, words in split.items():
        rest = "_".join(words[common:]) or "_".join(words)
        if "SNA" in words or rest in _MARKERS:
            markers.add(label)
    return frozenset(markers)


def not_available_values(
    entry: MappingEntry, signal: Signal, *, own: bool = True
) -> frozenset[float | int]:
    """The decoded (scaled) values of ``signal`` that mean "no value" for ``entry``.

    ``own=False`` for another signal the entry reads (a ``combine`` input): the entry's
    ``not_available`` list speaks of its own signal only.
    """
    if entry.transform is not None and entry.transform.table is not None:
        return frozenset()
    choices = {int(raw): str(label) for raw, label in (signal.choices or {}).items()}
    markers = marker_labels(choices.values())
    raws: set[int] = {raw for raw, label in choices.items() if label in markers}
    override = entry.not_available if own else None
    if override is None:
        if not signal.is_signed and not signal.is_float and signal.length >= ALL_ONES_MIN_BITS:
            all_ones = (1 << signal.length) - 1
            if all_ones not in choices or choices[all_ones] in markers:
                raws.add(all_ones)
    else:
        by_label = {label: raw for raw, label in choices.items()}
        for value in override:
            raw = by_label.get(value) if isinstance(value, str) else value
            if raw is not None:
                raws.add(raw)
    values: set[float | int] = set()
    for raw in raws:
        scaled = signal.conversion.raw_to_scaled(raw, decode_choices=False)
        if isinstance(scaled, int | float):
            values.add(scaled)
    return frozenset(values)


def unknown_labels(entry: MappingEntry, signal: Signal) -> list[str]:
    """The labels of the entry's ``not_available`` list that the signal does not have."""
    labels = {str(label) for label in (signal.choices or {}).values()}
    return [v for v in entry.not_available or () if isinstance(v, str) and v not in labels]
