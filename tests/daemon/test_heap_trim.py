"""The daemon gives the heap a burst of work freed back to the system, not only at start."""

from __future__ import annotations

import asyncio
import ctypes.util
from pathlib import Path

import pytest

from agent.settings import StoreSettings
from touchpoint import daemon as daemon_module
from touchpoint.daemon import Daemon
from touchpoint.settings import DaemonSettings

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("c") != "libc.so.6", reason="malloc_trim is glibc's"
)

#: What the burst allocates: blocks above pymalloc's 512 bytes come from glibc's malloc.
_BLOCK = 1000
_BLOCKS = 60_000
_MIB = 1024 * 1024


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_burst_freed_in_the_middle_of_the_heap_goes_back_to_the_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = DaemonSettings(store=StoreSettings(path=tmp_path / "t.db"), tick_seconds=0.02)
    monkeypatch.setattr(daemon_module, "HEAP_TRIM_S", 1e9)

    async def scenario() -> tuple[int, int, int]:
        daemon = Daemon(settings)
        await daemon.start()
        try:
            before = _rss()
            burst = [bytes(_BLOCK) for _ in range(_BLOCKS)]
            # One block in a hundred stays: the freed ones are holes glibc keeps
            # (free() only gives back the top of the heap).
            survivors = burst[::100]
            del burst
            await asyncio.sleep(0.3)
            held = _rss()
            monkeypatch.setattr(daemon_module, "HEAP_TRIM_S", 0.05)
            await asyncio.sleep(0.3)
            trimmed = _rss()
            assert len(survivors) == _BLOCKS // 100
            return before, held, trimmed
        finally:
            await daemon.stop()

    before, held, trimmed = asyncio.run(scenario())
    burst_size = _BLOCK * _BLOCKS
    # Without the periodic trim the holes stay resident ...
    assert held - before > burst_size * 0.6, (before / _MIB, held / _MIB)
    # ... with it, they are returned within an interval.
    assert held - trimmed > burst_size * 0.6, (held / _MIB, trimmed / _MIB)
