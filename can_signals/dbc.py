"""Loading DBC files (and the other formats cantools reads) with clear errors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cantools
import cantools.database
import cantools.errors
from cantools.database.can import Database
from cantools.database.errors import UnsupportedDatabaseFormatError

from can_signals.errors import DbcError, Problem

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DbcSource:
    """A loaded DBC file and the bus it describes.

    Attributes:
        path: The file it was loaded from.
        bus: The bus it applies to, or ``None`` for every bus.
        database: The parsed database.
    """

    path: str
    bus: str | None
    database: Database


def parse_dbc_argument(argument: str) -> tuple[str | None, str]:
    """Split a ``[BUS=]FILE`` command-line argument into ``(bus, file)``."""
    bus, sep, file = argument.partition("=")
    if sep and bus and "/" not in bus and not Path(argument).exists():
        return bus, file
    return None, argument


def load_dbc(path: str | Path, bus: str | None = None) -> DbcSource:
    """Load one DBC (or KCD, ARXML, SYM) file.

    DBC files in the wild have overlapping signals and other sins cantools' strict
    mode refuses, so they are loaded with ``strict=False``, as the KUKSA provider does.

    Raises:
        DbcError: If the file cannot be read or parsed, or defines no messages.
    """
    file = str(path)
    try:
        database = cantools.database.load_file(file, strict=False)
    except UnsupportedDatabaseFormatError as err:
        # cantools tries every format; the DBC parser's complaint carries the line.
        detail = err.e_dbc or err.e_kcd or err.e_arxml or err.e_sym or err
        line = getattr(detail, "line", None)  # textparser's ParseError has it
        where = f"line {line}" if isinstance(line, int) else ""
        raise DbcError([Problem(file, where, f"not a valid DBC file: {detail}")]) from err
    except (OSError, UnicodeDecodeError) as err:
        raise DbcError([Problem(file, "", f"cannot read the DBC file: {err}")]) from err
    except (cantools.errors.Error, ValueError, KeyError, IndexError, TypeError) as err:
        # Semantic errors after parsing (an 11-bit id too large, a broken attribute).
        raise DbcError([Problem(file, "", f"not a usable DBC file: {err}")]) from err
    if not isinstance(database, Database):
        raise DbcError([Problem(file, "", "is a diagnostics database, not a CAN database")])
    if not database.messages:
        raise DbcError([Problem(file, "", "defines no CAN messages")])
    _log.debug("loaded %s: %d messages", file, len(database.messages))
    return DbcSource(file, bus, database)


def load_dbcs(files: Sequence[tuple[str | None, str | Path]]) -> list[DbcSource]:
    """Load several files, ``(bus or None, path)`` each, reporting every broken one.

    Raises:
        DbcError: With one problem per file that did not load.
    """
    sources: list[DbcSource] = []
    problems: list[Problem] = []
    for bus, path in files:
        try:
            sources.append(load_dbc(path, bus))
        except DbcError as err:
            problems.extend(err.problems)
    if problems:
        raise DbcError(problems)
    return sources
