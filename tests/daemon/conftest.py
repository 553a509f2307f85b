"""Daemon fixtures: settings pointing at tmp_path and the real RAV4 recording."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agent.cards import CardChange
from agent.consent import Category
from agent.settings import ConsentSettings, StoreSettings
from can_signals.settings import CanSettings, DbcSettings
from touchpoint.settings import DaemonSettings


class RecordingSink:
    """A card sink that keeps every change it is shown, in order."""

    def __init__(self) -> None:
        self.changes: list[CardChange] = []

    async def apply(self, changes: Sequence[CardChange]) -> None:
        self.changes.extend(changes)


@pytest.fixture
def rav4_settings(tmp_path: Path, realdata_dir: Path, repo_root: Path) -> DaemonSettings:
    rav4 = realdata_dir / "rav4_2016"
    return DaemonSettings(
        store=StoreSettings(path=tmp_path / "touchpoint.db"),
        can=CanSettings(
            mapping=repo_root / "docs" / "cars" / "rav4_2016" / "mapping.yaml",
            dbc=[DbcSettings(file=rav4 / "toyota_new_mc_pt.dbc")],
            replay=rav4 / "drive_seg40_excerpt.log",
            replay_speed=0,
        ),
        consent=ConsentSettings(
            defaults={Category.VEHICLE_HEALTH: True, Category.USAGE_ANALYTICS: True}
        ),
    )


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A real datagram socket standing in for systemd's ``$NOTIFY_SOCKET``."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()
