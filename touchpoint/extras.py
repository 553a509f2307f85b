"""The optional extras: a command that needs one says which to install, not a traceback.

The daemon's install (``pip install touchpoint``) has none of them; ``make test``
installs them all.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Extra:
    """One extra of ``pyproject.toml``: its name and the library it brings."""

    name: str
    library: str
    what: str

    def installed(self) -> bool:
        """Whether its library can be imported (found, not imported)."""
        return importlib.util.find_spec(self.library) is not None

    def missing(self, command: str) -> str | None:
        """What to tell the user of ``command`` when the extra is not installed; else None."""
        if self.installed():
            return None
        return (
            f"error: {command} needs {self.what}, an optional extra:\n"
            f"       pip install 'touchpoint[{self.name}]'"
        )


#: The reference HMI (``touchpoint hmi``, ``touchpoint demo --interactive``).
HMI: Final = Extra("hmi", "textual", "the Textual terminal UI")
