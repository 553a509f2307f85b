"""``python -m bench``: run every benchmark and print its table; exit 1 if a target fails.

Adding a benchmark: a module with ``run() -> list[Section]``, listed in
:data:`BENCHMARKS`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Final

from bench import (
    agent_decisions,
    cloud_drain,
    cloud_fleet,
    daemon_figures,
    dbus_bridge,
    kernel_bcm,
    outbox,
    signal_pipeline,
)
from bench.report import DataMissingError, Section, format_table

#: The registry: a name for the progress line, and the module's ``run``.
BENCHMARKS: Final[tuple[tuple[str, Callable[[], list[Section]]], ...]] = (
    ("signal pipeline", signal_pipeline.run),
    ("agent core decisions", agent_decisions.run),
    ("outbox", outbox.run),
    ("daemon start-up and memory", daemon_figures.run),
    ("D-Bus bridge", dbus_bridge.run),
    ("cloud drain", cloud_drain.run),
    ("fleet capacity", cloud_fleet.run),
    ("SocketCAN raw vs CAN_BCM, in the test VM", kernel_bcm.run),
)


def main() -> int:
    """Run the benchmarks; 0 if every target is met, 1 if one fails, 2 without data."""
    failed: list[str] = []
    for name, benchmark in BENCHMARKS:
        print(f"# running {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            sections = benchmark()
        except DataMissingError as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            return 2
        for section in sections:
            print(format_table(section), end="\n\n", flush=True)
            failed += [f"{name}: {row.label}" for row in section.rows if row.passed is False]
        print(f"# {name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    if failed:
        print(f"{len(failed)} target(s) missed:", *failed, sep="\n  ")
        return 1
    print("every target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
