"""``can.bcm``: whether the kernel's broadcast manager filters the running daemon's frames.

On socketcan the daemon hands the mapped frames to the kernel's broadcast manager
(``CAN_BCM``, :mod:`can_signals.bcm`), which keeps unchanged frames from waking it; the
health file carries how many it held back. Without the module every frame still
arrives (the raw path): nothing breaks, the head unit only spends more CPU, hence a
warning, never a failure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from can_signals.settings import CanSettings
from touchpoint.doctor.report import Check, ok, warn
from touchpoint.health import FILE_NAME, STALE_AFTER_S, read_health

NAME: Final = "can.bcm"


def check_kernel_filter(
    settings: CanSettings | None, database: Path, *, now: float | None = None
) -> Iterator[Check]:
    """``can.bcm`` for live socketcan buses, from the running daemon's health file."""
    if settings is None or settings.replay is not None:
        return
    socketcan = [bus for bus in settings.buses if bus.interface == "socketcan"]
    if not socketcan:
        return
    if not any(bus.bcm for bus in socketcan):
        yield ok(NAME, "off (bcm = false): every mapped frame reaches touchpoint")
        return
    health = read_health(database.parent / FILE_NAME)
    if health is None or (now or time.time()) - health.written_at > STALE_AFTER_S:
        return
    figures = health.counters.get("can")
    if figures is None:
        return
    frames = figures.get("frames", 0)
    held_back = figures.get("kernel_held_back", 0)
    operations = figures.get("kernel_operations", 0)
    if not operations:
        yield warn(
            NAME,
            "the kernel's broadcast manager filters none of the mapped frames: every one "
            f"wakes touchpoint ({frames} so far); the kernel has no CAN_BCM, the bus is not "
            "open, or no mapped frame qualifies (all its routes need on_change)",
            "modprobe can-bcm (and list it in /etc/modules-load.d/); the daemon uses it "
            "when it next opens the bus",
        )
    elif not held_back and frames:
        yield warn(
            NAME,
            f"the kernel's broadcast manager ({operations} operation(s)) held back none of "
            f"{frames} frame(s): every mapped frame carried a change, or it is not at work",
            "compare with candump: if values repeat on the bus, report it with this output",
        )
    else:
        yield ok(
            NAME,
            f"the kernel held back {held_back} frame(s) without a change, {frames} reached "
            f"touchpoint ({operations} broadcast-manager operation(s))",
        )
