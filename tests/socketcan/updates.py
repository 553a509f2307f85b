"""Comparing update sequences of a live pipeline and a replay (SocketCAN suite helper)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

#: candump writes microseconds; python-can reads the same kernel stamp in nanoseconds.
STAMP_TOLERANCE_S = 2e-6

ByPath = dict[str, list[tuple[object, float]]]


def by_path(updates: Iterable[tuple[str, object, float]]) -> ByPath:
    """(value, timestamp) per path, in order, stale markers (``None``) left out.

    The live side's silence watcher runs on the wall clock after the last frame, which a
    replay has no notion of.
    """
    paths: ByPath = defaultdict(list)
    for path, value, timestamp in updates:
        if value is not None:
            paths[path].append((value, timestamp))
    return dict(paths)


def assert_same_updates(live: ByPath, replay: ByPath) -> None:
    """The same paths, the same values in the same order, at the same instants."""
    assert live.keys() == replay.keys()
    for path, updates in live.items():
        assert [v for v, _ in updates] == [v for v, _ in replay[path]], path
        skews = [abs(a - b) for (_, a), (_, b) in zip(updates, replay[path], strict=True)]
        assert max(skews, default=0.0) < STAMP_TOLERANCE_S, path
