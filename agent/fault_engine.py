"""The fault engine: DTCs and warning lamps, through a catalogue, to a severity and advice.

The catalogue maps a code (``P0301``), a pattern (``P030?``, ``P0*``) or a lamp
(``LAMP:OilPressure``) to a severity (information, service soon, stop safely), a short
title and an advice text in both locales. The most specific entry wins (an exact code,
then the pattern with the most fixed characters). The cloud can replace the catalogue;
a default one ships with the generic SAE J2012 powertrain codes and the reference car's
lamps.

A generic lamp (the check-engine light) says less than the code behind it: an entry can
name a prefix that ``explained_by`` it, and while such a code is active the lamp makes
no card of its own. Codes that tell of one problem share a ``group`` (a random misfire
and a cylinder's misfire): the driver gets one card for the group, listing its codes,
which closes when the last of them clears.

Pure: the engine compares the active set with what it announced and returns the faults
that appeared and cleared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from typing import Annotated, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.plan import LocalisedText

_PATTERN: Final = re.compile(r"^([PCBU][0-9A-F?]{0,3}\*|[PCBU][0-9A-F?]{4}|LAMP:[A-Za-z]{1,40})$")


class Severity(IntEnum):
    """How bad a fault is."""

    INFO = 1
    SERVICE_SOON = 2
    STOP_SAFELY = 3


_SEVERITIES: Final = {
    "info": Severity.INFO,
    "service_soon": Severity.SERVICE_SOON,
    "stop_safely": Severity.STOP_SAFELY,
}


class CatalogueEntry(BaseModel):
    """One code, pattern or lamp."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: Annotated[str, Field(max_length=48)]
    severity: Literal["info", "service_soon", "stop_safely"]
    #: At most 40 characters: a stop-safely title is shown to a moving driver.
    title: LocalisedText
    advice: LocalisedText
    explained_by: Annotated[str | None, Field(pattern=r"^[PCBU][0-9A-F]{0,4}$")] = None
    #: Codes with the same group make one card (default: each code its own).
    group: Annotated[str | None, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = None

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if not _PATTERN.match(self.match):
            raise ValueError(f"not a DTC, pattern or lamp: {self.match!r}")
        if max(len(self.title.zh_cn), len(self.title.en)) > 40:
            raise ValueError(f"{self.match}: titles are at most 40 characters")
        return self

    @property
    def level(self) -> Severity:
        """The severity as an enum."""
        return _SEVERITIES[self.severity]

    def specificity(self) -> int:
        """How many characters the entry fixes (exact codes and lamps rank highest)."""
        if "?" not in self.match and "*" not in self.match:
            return 100
        return sum(1 for ch in self.match if ch not in "?*")

    def matches(self, code: str) -> bool:
        """Whether ``code`` falls under this entry."""
        pattern = self.match
        if pattern.endswith("*"):
            head = pattern[:-1]
            return len(code) >= len(head) and all(
                p in ("?", c) for p, c in zip(head, code, strict=False)
            )
        return len(code) == len(pattern) and all(
            p in ("?", c) for p, c in zip(pattern, code, strict=True)
        )


class DtcCatalogue(BaseModel):
    """The catalogue document."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    version: Annotated[int, Field(ge=0)]
    entries: Annotated[tuple[CatalogueEntry, ...], Field(max_length=5000)]
    #: For codes no entry matches.
    fallback: CatalogueEntry

    def lookup(self, code: str) -> CatalogueEntry:
        """The most specific entry for ``code`` (the fallback if none matches)."""
        best: CatalogueEntry | None = None
        for entry in self.entries:
            if entry.matches(code) and (best is None or entry.specificity() > best.specificity()):
                best = entry
        return best or self.fallback


def default_catalogue() -> DtcCatalogue:
    """The catalogue shipped with touchpoint (``agent/data/dtc_catalogue.json``)."""
    text = resources.files("agent.data").joinpath("dtc_catalogue.json").read_text("utf-8")
    return DtcCatalogue.model_validate_json(text)


@dataclass(frozen=True, slots=True)
class Fault:
    """An active fault as the engine announces it."""

    code: str
    entry: CatalogueEntry

    @property
    def severity(self) -> Severity:
        """Its severity."""
        return self.entry.level

    @property
    def group(self) -> str:
        """The card it belongs to: its entry's group, or its own code."""
        return self.entry.group or self.code


def active_faults(catalogue: DtcCatalogue, listing: tuple[str, ...]) -> dict[str, Fault]:
    """The faults that deserve a card, from a ``DTCList`` (lamps explained by codes dropped)."""
    faults = {code: Fault(code, catalogue.lookup(code)) for code in listing}
    codes = [c for c in listing if not c.startswith("LAMP:")]
    return {
        code: fault
        for code, fault in faults.items()
        if fault.entry.explained_by is None
        or not any(c.startswith(fault.entry.explained_by) for c in codes)
    }


def diff(
    announced: Mapping[str, str], faults: Mapping[str, Fault]
) -> tuple[list[Fault], list[str]]:
    """New faults (or faults whose severity changed) and codes that cleared.

    Args:
        announced: Code -> severity name, as last announced.
        faults: The active faults now.
    """
    appeared = [f for code, f in sorted(faults.items()) if announced.get(code) != f.entry.severity]
    cleared = sorted(set(announced) - set(faults))
    return appeared, cleared
