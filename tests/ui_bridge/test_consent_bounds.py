"""Consent validity from D-Bus is range-checked, and a stored bad value breaks nothing.

A validity of about 9.3e12 s used to be accepted: its expiry in microseconds did not fit
the ``x`` (int64) of ``GetCategories``, which failed from then on, across restarts.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Final

import pytest
from dbus_fast import DBusError

from agent.consent import MAX_VALIDITY_S
from tests.ui_bridge.conftest import serving
from tests.ui_bridge.test_bridge import Client, client
from ui_bridge.names import CONSENT_INTERFACE, INT64_MAX, ROOT_PATH

INVALID_ARGS: Final = "org.freedesktop.DBus.Error.InvalidArgs"


async def _set(settings: Client, category: str, valid_for_s: int) -> None:
    await settings.call(ROOT_PATH, CONSENT_INTERFACE, "SetConsent", "sbx",
                        [category, True, valid_for_s])  # fmt: skip


async def _categories(settings: Client) -> dict[str, tuple[bool, int, int]]:
    [rows] = await settings.call(ROOT_PATH, CONSENT_INTERFACE, "GetCategories")
    return {name: (granted, at, until) for name, _, granted, at, until in rows}


@pytest.mark.parametrize("valid_for_s", [9_300_000_000_000, MAX_VALIDITY_S + 1, INT64_MAX, -1])
def test_a_validity_out_of_range_is_refused_and_changes_nothing(
    tmp_path: Path, bus_address: str, valid_for_s: int
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address), client(bus_address) as settings:
            await _set(settings, "marketing_benefits", 3600)
            before = (await _categories(settings))["marketing_benefits"]
            with pytest.raises(DBusError) as refused:
                await _set(settings, "marketing_benefits", valid_for_s)
            assert refused.value.type == INVALID_ARGS
            # times are shown on the corrected clock: they may move by a microsecond
            granted, _, until = (await _categories(settings))["marketing_benefits"]
            assert granted == before[0]
            assert abs(until - before[2]) <= 1_000, "the expiry changed"

    asyncio.run(scenario())


def test_ten_years_is_accepted_and_shown(tmp_path: Path, bus_address: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "t.db", bus_address), client(bus_address) as settings:
            await _set(settings, "location", MAX_VALIDITY_S)
            granted, at, until = (await _categories(settings))["location"]
            assert granted
            assert abs(until - at - MAX_VALIDITY_S * 1_000_000) <= 1  # each rounded to the µs

    asyncio.run(scenario())


def test_a_stored_expiry_out_of_range_does_not_break_get_categories(
    tmp_path: Path, bus_address: str
) -> None:
    """A store written before the check (or damaged) still lets the settings app read."""
    store = tmp_path / "t.db"
    now = time.time()

    async def scenario(*, rewrite: bool) -> dict[str, tuple[bool, int, int]]:
        async with serving(store, bus_address), client(bus_address) as settings:
            if rewrite:
                await _set(settings, "marketing_benefits", 3600)
                await _set(settings, "location", 3600)
                await _set(settings, "usage_analytics", 3600)
            return await _categories(settings)

    asyncio.run(scenario(rewrite=True))
    with sqlite3.connect(store) as db:
        [text] = db.execute("SELECT value FROM state WHERE section = 'consent'").fetchone()
        consent = json.loads(text)
        consent["marketing_benefits"]["expires_at"] = now + 9.3e12  # µs beyond an int64
        consent["location"]["expires_at"] = float("inf")
        consent["usage_analytics"]["granted_at"] = 10**400  # no float can hold it
        db.execute("UPDATE state SET value = ? WHERE section = 'consent'", [json.dumps(consent)])
    db.close()

    shown = asyncio.run(scenario(rewrite=False))
    assert shown["marketing_benefits"][0]
    assert shown["marketing_benefits"][2] == INT64_MAX
    assert shown["location"][2] == 0  # read as no end
    assert shown["usage_analytics"][1] == 0
