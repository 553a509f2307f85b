"""Errors of the CAN signal layer."""

from __future__ import annotations

from dataclasses import dataclass

from touchpoint.errors import TouchpointError


class CanSignalsError(TouchpointError):
    """Base of the CAN signal layer's errors."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in an input file, with where it is.

    Attributes:
        file: The file the problem is in.
        where: A line (``"line 12"``) or a key path (``"Vehicle.Speed"``), or ``""``.
        message: What is wrong and, where we can tell, how to fix it.
    """

    file: str
    where: str
    message: str

    def __str__(self) -> str:
        location = f"{self.file}:{self.where}" if self.where else self.file
        return f"{location}: {self.message}"


class ConfigurationError(CanSignalsError):
    """A DBC file or a mapping file that cannot be used, with every problem found in it."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''} found"
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))


class DbcError(ConfigurationError):
    """A DBC file that does not load."""


class MappingError(ConfigurationError):
    """A mapping file that does not load or does not fit the DBC files and the catalogue.

    Attributes:
        warnings: What was found besides the problems (labels no message has, paths no
            catalogue has, ...), for the user to see with them.
    """

    def __init__(
        self,
        problems: list[Problem] | tuple[Problem, ...],
        warnings: list[Problem] | tuple[Problem, ...] = (),
    ) -> None:
        super().__init__(problems)
        self.warnings: tuple[Problem, ...] = tuple(warnings)


class ExpressionError(CanSignalsError):
    """A ``math`` transform that is not a safe arithmetic expression over ``x``."""


class SourceError(CanSignalsError):
    """A CAN bus or a log file that cannot be opened or read."""
