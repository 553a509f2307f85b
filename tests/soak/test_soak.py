"""The soak and the kill loop, briefly (``make soak`` runs them for long).

Together they stay under two minutes of ``make test``: a random walk of
:data:`WALK_S` seconds with the simulator as the car, one with the real RAV4 drive
played back, and :data:`KILLS` kills of the kill loop with the cloud. The seed is
``TOUCHPOINT_SEED`` when set (to replay a failure), else random; it is printed.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
from pathlib import Path
from typing import Final

import pytest

from tests.invariants.checker import DISMISSED, DUPLICATED, INTEGRITY, LOST
from tests.soak import killloop, loop

WALK_S: Final = 40.0
RECORDING_S: Final = 20.0
KILLS: Final = 8


def _seed() -> int:
    seed = int(os.environ.get("TOUCHPOINT_SEED") or random.randrange(2**32))
    print(f"TOUCHPOINT_SEED={seed}")
    return seed


def test_a_short_random_walk_over_the_real_daemon_holds_every_invariant(tmp_path: Path) -> None:
    out = io.StringIO()
    status = asyncio.run(loop.soak(WALK_S, _seed(), tmp_path, out))
    report = out.getvalue()
    assert status == 0, report
    assert "result: every invariant held" in report, report


def test_the_real_rav4_drive_as_the_car_holds_every_invariant(tmp_path: Path) -> None:
    out = io.StringIO()
    status = asyncio.run(loop.soak(RECORDING_S, _seed(), tmp_path, out, source="rav4"))
    report = out.getvalue()
    assert status == 0, report
    assert "recording" in report, report


@pytest.mark.slow
def test_a_short_kill_loop_with_the_cloud_loses_and_repeats_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    status = asyncio.run(killloop.kill_loop(KILLS, _seed(), tmp_path, out))
    report = out.getvalue()
    assert status == 0, report
    assert f"{KILLS} SIGKILLs" in report, report
    for name in (INTEGRITY, LOST, DUPLICATED, DISMISSED):
        assert name in report
