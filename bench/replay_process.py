"""One whole process replaying a log, for :mod:`bench.replay_compare` to measure.

``python -m bench.replay_process touchpoint|kuksa LOG DBC MAPPING`` starts, loads the DBC
and the mapping, replays the log as fast as it can and prints ``{"frames": N, "updates":
M}``. ``touchpoint`` is the signal pipeline as the daemon runs it (a replay thread, the
processor, the hand-off to an asyncio consumer); ``kuksa`` is python-can's ``LogReader``
feeding :class:`bench.kuksa_baseline.KuksaLikeProvider`. The parent takes the process's
CPU time from the kernel (``RUSAGE_CHILDREN``), start-up included.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence


def _touchpoint(log: str, dbc: str, mapping: str) -> dict[str, int]:
    import asyncio  # noqa: PLC0415 - what each side imports is part of what it costs

    from can_signals.pipeline import SignalPipeline  # noqa: PLC0415

    pipeline = SignalPipeline.from_files(mapping, [(None, dbc)], replay=log, speed=0)

    async def drain() -> int:
        count = 0
        async with pipeline:
            async for batch in pipeline.batches():
                count += len(batch)
        return count

    updates = asyncio.run(drain())
    return {"frames": pipeline.processor.frames, "updates": updates}


def _kuksa(log: str, dbc: str, mapping: str) -> dict[str, int]:
    import can  # noqa: PLC0415
    import cantools  # noqa: PLC0415

    from bench.kuksa_baseline import KuksaLikeProvider  # noqa: PLC0415
    from can_signals.mapping import load_mapping  # noqa: PLC0415

    database = cantools.database.load_file(dbc, strict=False)
    provider = KuksaLikeProvider(database, load_mapping(mapping).entries)  # type: ignore[arg-type]
    frames = 0
    reader = can.LogReader(log)
    try:
        for msg in reader:
            frames += 1
            provider(msg)
    finally:
        reader.stop()
    return {"frames": frames, "updates": len(provider.published)}


def main(argv: Sequence[str]) -> int:
    """Run one replay; exit status 2 for a wrong command line."""
    if len(argv) != 4 or argv[0] not in ("touchpoint", "kuksa"):
        print("usage: python -m bench.replay_process touchpoint|kuksa LOG DBC MAPPING")
        return 2
    run = _touchpoint if argv[0] == "touchpoint" else _kuksa
    print(json.dumps(run(*argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
