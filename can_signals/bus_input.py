"""Where a bus's frames enter the processor: the listener of one named bus.

One thread feeds one bus (its Notifier's reader, or the replay), so the counters here
need no lock, and neither does the table look-up that ends an unmapped frame. A replay
that parses a log itself skips the python-can message: it looks the frame key up in
:attr:`BusInput.table` and calls :meth:`BusInput.skip` or :meth:`BusInput.feed`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import can

from can_signals.routes import Plan, Route

if TYPE_CHECKING:
    from can_signals.processor import FrameProcessor

_log = logging.getLogger(__name__)
_EXTENDED: int = 0x8000_0000


class BusInput:
    """Receives the frames of one named bus; a python-can listener (callable).

    Attributes:
        name: The bus's name.
        table: The mapped frame keys of the bus (see :func:`can_signals.binding.frame_key`)
            and their plans; read-only for callers.
        frames: Frames received.
        unmapped: Frames of IDs the mapping does not read.
        without_dbc: Frames of a bus no DBC file describes.
        error_or_remote: Error and remote frames of mapped IDs.
    """

    __slots__ = (
        "_processor", "error_or_remote", "frames", "name", "table", "unmapped", "without_dbc",
    )  # fmt: skip

    def __init__(self, processor: FrameProcessor, name: str, table: dict[int, Plan]) -> None:
        self._processor = processor
        self.table = table
        self.name = name
        self.frames = 0
        self.unmapped = 0
        self.without_dbc = 0
        self.error_or_remote = 0

    def __call__(self, msg: can.Message) -> None:
        """Process one frame (the python-can ``Listener`` protocol)."""
        key = msg.arbitration_id | _EXTENDED if msg.is_extended_id else msg.arbitration_id
        plan = self.table.get(key)
        if plan is None:
            self.skip(msg.timestamp)
        elif msg.is_remote_frame or msg.is_error_frame:
            self.frames += 1
            self.error_or_remote += 1
        else:
            self.feed(plan, msg.timestamp, msg.data)

    @property
    def processor(self) -> FrameProcessor:
        """The processor it feeds (whose lock guards the plans)."""
        return self._processor

    def skip(self, timestamp: float) -> bool:
        """Count a frame of an unmapped ID; it still moves the clock (mapped IDs go stale).

        Returns:
            Whether it looked for stale signals (and so may have emitted updates).
        """
        self.frames += 1
        if self.table:
            self.unmapped += 1
        else:
            self.without_dbc += 1
        processor = self._processor
        processor.latest_timestamp = timestamp
        if timestamp < processor.next_stale_check:
            return False
        with processor.lock:
            processor.advance_clock(timestamp)
        return True

    @property
    def stale_check_at(self) -> float:
        """The frame time of the processor's next look for stale signals.

        Until then a frame of an unmapped ID changes nothing but the counters (and the
        latest timestamp): a replay may count such frames with :meth:`count_skipped`.
        """
        return self._processor.next_stale_check

    def count_skipped(self, count: int, latest: float) -> None:
        """Count ``count`` frames of unmapped IDs before :attr:`stale_check_at`.

        Args:
            count: How many.
            latest: The timestamp of the last of them.
        """
        self.frames += count
        if self.table:
            self.unmapped += count
        else:
            self.without_dbc += count
        processor = self._processor
        if processor.latest_timestamp is None or latest > processor.latest_timestamp:
            processor.latest_timestamp = latest

    def feed(self, plan: Plan, timestamp: float, data: bytes | bytearray) -> None:
        """Process a data frame of a mapped ID, ``plan`` being its entry in :attr:`table`."""
        self.frames += 1
        processor = self._processor
        # The common case, decided without the lock: nothing due, nothing watched changed.
        # Only this bus's thread writes these fields; another thread may reset them (a
        # stale signal), and this frame then simply takes the full path below or the next.
        if (
            timestamp < plan.next_due
            and timestamp < processor.next_stale_check
            and len(data) == plan.last_len == plan.length
            and int.from_bytes(data, "little") & plan.watch_mask == plan.watch_bits
        ):
            plan.last_seen = processor.latest_timestamp = timestamp
            return
        with processor.lock:
            processor.frame(plan, timestamp, data)

    def feed_routes(
        self, plan: Plan, routes: tuple[Route, ...], timestamp: float, data: bytes | bytearray
    ) -> None:
        """Process a frame the kernel passed for ``routes``, some of ``plan``'s (CAN_BCM)."""
        self.frames += 1
        processor = self._processor
        with processor.lock:
            processor.frame_for(plan, routes, timestamp, data)

    def on_error(self, exc: Exception) -> None:
        """python-can calls this when the bus fails under a Notifier thread."""
        _log.error("CAN bus %s: receive failed: %s", self.name, exc)
