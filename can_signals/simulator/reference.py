"""Where the reference car's files are: its DBC and its VSS mapping, shipped as package data."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Final

import cantools.database
from cantools.database.can import Database
from cantools.database.errors import UnsupportedDatabaseFormatError

from can_signals.simulator.errors import SimulatorError

DBC_NAME: Final = "touchpoint_ref.dbc"
MAPPING_NAME: Final = "touchpoint_ref.mapping.yaml"


@dataclass(frozen=True, slots=True)
class ReferenceFiles:
    """The reference car's files.

    Attributes:
        dbc: The DBC file.
        mapping: The KUKSA ``dbc2vss`` mapping of the DBC's signals to VSS paths.
    """

    dbc: Path
    mapping: Path


def reference_files() -> ReferenceFiles:
    """Return the paths of the reference car's DBC and mapping.

    Raises:
        SimulatorError: If the package is installed in a way that has no files on
            disk (a zip), which the DBC loader and the log tools need.
    """
    return ReferenceFiles(dbc=_path(DBC_NAME), mapping=_path(MAPPING_NAME))


def _path(name: str) -> Path:
    resource = files("can_signals").joinpath("reference", name)
    # cantools and the mapping loader read paths, not importlib resources.
    if not isinstance(resource, Path) or not resource.is_file():
        raise SimulatorError(f"the reference file {name} is not on disk ({resource})")
    return resource


@cache
def load_reference_database() -> Database:
    """Load the reference DBC with cantools, strictly (it is ours: no sins to forgive).

    The database is loaded once and shared; treat it as read-only.

    Raises:
        SimulatorError: If the file is missing or does not load.
    """
    path = reference_files().dbc
    try:
        database = cantools.database.load_file(path, strict=True)
    except (OSError, UnsupportedDatabaseFormatError) as err:
        raise SimulatorError(f"cannot load {path}: {err}") from err
    if not isinstance(database, Database):
        raise SimulatorError(f"{path} is not a CAN database")
    return database
