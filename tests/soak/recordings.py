"""The recordings the soak can use as its car, and how to read the truth from their frames.

The real RAV4 drive (comma2k19, with opendbc's DBC) lives in the shared data beside the
repository, as the test fixtures expect it; the car it needs is its DBC and the
mapping in ``docs/cars/rav4_2016``. A simulator recording is made for the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import can
import cantools.database

from can_signals.simulator import load_reference_database
from tests.conftest import REALDATA_DIR, REPO_ROOT
from tests.soak.stack import CanSetup

RAV4_DIR: Final = (REALDATA_DIR / "rav4_2016").resolve()
#: Above this speed (km/h) the car moves.
MOVING_KMH: Final = 0.5

Decoder = Callable[[can.Message], tuple[bool | None, float | None]]


def rav4_setup() -> CanSetup:
    """The RAV4's DBC and mapping."""
    return CanSetup(
        RAV4_DIR / "toyota_new_mc_pt.dbc",
        REPO_ROOT / "docs" / "cars" / "rav4_2016" / "mapping.yaml",
    )


def _decoder(database: cantools.database.Database, speed: str, odometer: str | None) -> Decoder:
    frames: dict[int, str] = {}
    for message in database.messages:
        names = {s.name for s in message.signals}
        if speed in names or (odometer is not None and odometer in names):
            frames[message.frame_id] = message.name

    def decode(frame: can.Message) -> tuple[bool | None, float | None]:
        if frame.arbitration_id not in frames:
            return None, None
        try:
            decoded = database.decode_message(frame.arbitration_id, bytes(frame.data))
        except (ValueError, KeyError, cantools.database.DecodeError):
            return None, None
        values = decoded if isinstance(decoded, dict) else {}
        moving = None
        reading = None
        raw_speed = values.get(speed)
        if isinstance(raw_speed, int | float):
            moving = float(raw_speed) > MOVING_KMH
        raw_odometer = None if odometer is None else values.get(odometer)
        if isinstance(raw_odometer, int | float):
            reading = float(raw_odometer)
        return moving, reading

    return decode


def reference_decoder() -> Decoder:
    """Speed and odometer from the reference car's frames."""
    return _decoder(load_reference_database(), "VEHICLE_SPEED", "ODOMETER")


def rav4_decoder() -> Decoder:
    """Speed from the RAV4's frames (its odometer's unit depends on another signal:
    the soak checks it only for never going backwards)."""
    database = cantools.database.load_file(str(RAV4_DIR / "toyota_new_mc_pt.dbc"), strict=False)
    assert isinstance(database, cantools.database.Database)
    return _decoder(database, "SPEED", None)
