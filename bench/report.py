"""What the benchmarks share: result rows, the printed table, repeats and the data's place."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Each figure is the median of this many runs: one slow run (a page fault storm, another
#: engineer's test suite on the other core) must not decide a PASS or a FAIL.
REPEATS: Final = 5

_REPO_ROOT: Final = Path(__file__).resolve().parents[1]


class DataMissingError(RuntimeError):
    """The shared recordings a benchmark runs on are not where CI puts them."""


def realdata_dir() -> Path:
    """The shared real-data directory (``../shared/realdata`` beside the checkout).

    Raises:
        DataMissingError: If it is not there, with where it was looked for.
    """
    path = (_REPO_ROOT / ".." / "shared" / "realdata").resolve()
    if not path.is_dir():
        raise DataMissingError(
            f"the real CAN recordings are missing: expected {path} "
            "(CI checks out shared/ beside the project; see shared/realdata/README.md)"
        )
    return path


def median_of(measure: Callable[[], float], repeats: int = REPEATS) -> float:
    """Run ``measure`` ``repeats`` times and return the median of its results."""
    return statistics.median(measure() for _ in range(repeats))


@dataclass(frozen=True, slots=True)
class Row:
    """One printed figure.

    Attributes:
        label: What was measured.
        value: The measured figure.
        unit: Its unit, printed after it (``µs``, ``%``, ``x``, ``MiB``).
        target: The target, or ``None`` for a figure shown for information.
        at_least: The target is a floor (ratios), not a ceiling (costs).
        digits: Decimals to print.
    """

    label: str
    value: float
    unit: str
    target: float | None = None
    at_least: bool = False
    digits: int = 2

    @property
    def passed(self) -> bool | None:
        """Whether the target is met (``None`` when there is none)."""
        if self.target is None:
            return None
        return self.value >= self.target if self.at_least else self.value <= self.target

    @property
    def verdict(self) -> str:
        """``PASS``, ``FAIL`` or ``info``."""
        passed = self.passed
        return "info" if passed is None else "PASS" if passed else "FAIL"

    def measured_text(self) -> str:
        """The figure with its unit."""
        return f"{self.value:,.{self.digits}f} {self.unit}".rstrip()

    def target_text(self) -> str:
        """The target with its direction, or a dash."""
        if self.target is None:
            return "-"
        sign = ">=" if self.at_least else "<="
        return f"{sign} {self.target:,g} {self.unit}".rstrip()


@dataclass(frozen=True, slots=True)
class Section:
    """A titled group of rows, with notes on how they were measured."""

    title: str
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()


def format_table(section: Section) -> str:
    """A plain-text table: figure, measured, target, result; then the notes."""
    rows, notes = section.rows, section.notes
    header = ("figure", "measured", "target", "result")
    cells = [(r.label, r.measured_text(), r.target_text(), r.verdict) for r in rows]
    widths = [max(len(line[i]) for line in (header, *cells)) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        label, measured, target, verdict = values
        return (
            f"{label:<{widths[0]}}  {measured:>{widths[1]}}  {target:>{widths[2]}}  "
            f"{verdict:<{widths[3]}}"
        ).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [section.title, rule, line(header), rule, *(line(c) for c in cells), rule]
    out += [f"  {note}" for note in notes]
    return "\n".join(out)
