"""Taps while the disk is full: answered "not saved yet", saved once space returns.

The store lives on a small tmpfs of its own, filled for real (ENOSPC). Needs root to
mount it, as CI has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest
from dbus_fast import DBusError

from tests.cloud_sync.test_disk_full import fill, small_disk
from tests.ui_bridge.conftest import serving
from tests.ui_bridge.test_bridge import _card_on_screen, _events, client
from ui_bridge.names import CARD_INTERFACE, ERROR_NOT_SAVED

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def test_taps_on_a_full_disk_are_not_saved_yet_then_saved_in_order(
    tmp_path: Path, bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with small_disk(tmp_path / "disk") as disk:
        store = disk / "t.db"

        async def scenario() -> None:
            async with serving(store, bus_address) as daemon, client(bus_address) as hmi:
                path, _ = await _card_on_screen(daemon, hmi)
                filler = fill(disk)
                for method, signature, body in (("ReportShown", "", []), ("Dismiss", "u", [2])):
                    with pytest.raises(DBusError) as refused:
                        await hmi.call(path, CARD_INTERFACE, method, signature, body)
                    assert refused.value.type == ERROR_NOT_SAVED
                    assert "not saved yet" in refused.value.text
                assert daemon.bridge is not None
                assert daemon.bridge.not_saved == 2
                filler.unlink()
                deadline = time.monotonic() + 30
                while daemon.runner.store_problem is not None or daemon.runner.pending:
                    assert time.monotonic() < deadline, "the store never took commits again"
                    await asyncio.sleep(0.1)

        asyncio.run(scenario())
        types = [e["type"] for e in _events(store)]
    # What the driver did while the disk was full is in the store, in order.
    assert types.index("card.shown") < types.index("card.dismissed")
    said = [r for r in caplog.records if "not saved yet" in r.getMessage()]
    assert [r.name for r in said if r.name == "ui_bridge.bridge"] == ["ui_bridge.bridge"]
    assert all(r.exc_info is None for r in said if r.name == "ui_bridge.bridge")
