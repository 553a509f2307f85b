"""A bounded, thread-safe hand-off of updates from CAN threads to one asyncio consumer.

Frames are decoded where they are received (python-can's Notifier thread for buses
without a file descriptor, the event loop for socketcan), and only the resulting
updates cross to the loop. Crossing costs one ``call_soon_threadsafe`` per *batch*: the
producer only wakes the loop when the consumer is waiting, and a consumer that was
woken waits a few milliseconds (``coalesce``) before it drains, so a steady trickle of
updates wakes the loop once per period rather than once per update.

When the buffer is full a live bus cannot wait, so the oldest update is dropped and
counted; a replay can, so its producer blocks until there is room (``block=True``).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, Generic, TypeVar

T = TypeVar("T")

DEFAULT_CAPACITY: Final = 10_000


class UpdateStream(Generic[T]):
    """A bounded multi-producer, single-consumer queue from threads to an event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        capacity: int = DEFAULT_CAPACITY,
        coalesce: float = 0.0,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if coalesce < 0:
            raise ValueError("coalesce must be >= 0")
        # After a wake-up, wait this long before draining, so that a steady trickle of
        # updates costs one wake-up per period instead of one per update.
        self._coalesce = coalesce
        self._loop = loop
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0
        self.delivered = 0

    @property
    def capacity(self) -> int:
        """How many items the stream holds before it drops or blocks."""
        return self._capacity

    def put(self, item: T, *, block: bool = False) -> None:
        """Add an item from any thread.

        Args:
            item: The item.
            block: Wait for room instead of dropping the oldest item (for replays; never
                from the event loop's own thread).
        """
        with self._lock:
            if block:
                while len(self._items) >= self._capacity and not self._closed:
                    self._room.wait()
            if self._closed:
                return
            if len(self._items) >= self._capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._wake(waiter)

    def close(self) -> None:
        """No more items will come: the consumer ends after draining what is buffered."""
        with self._lock:
            self._closed = True
            self._room.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._wake(waiter)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _wake(self, waiter: asyncio.Future[None]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            if not waiter.done():
                waiter.set_result(None)
        else:
            self._loop.call_soon_threadsafe(_resolve, waiter)

    async def get_batch(self, max_items: int = 1000) -> list[T]:
        """Wait for at least one item and return up to ``max_items``.

        Returns:
            The items, oldest first; an empty list once the stream is closed and drained.
        """
        while True:
            with self._lock:
                if self._items:
                    count = min(max_items, len(self._items))
                    batch = [self._items.popleft() for _ in range(count)]
                    self.delivered += count
                    self._room.notify_all()
                    return batch
                if self._closed:
                    return []
                waiter = self._loop.create_future()
                self._waiter = waiter
            await waiter
            if self._coalesce and not self._closed:
                await asyncio.sleep(self._coalesce)

    async def __aiter__(self) -> AsyncIterator[T]:
        """Iterate over items until the stream is closed and drained."""
        while batch := await self.get_batch():
            for item in batch:
                yield item

    def __len__(self) -> int:
        return len(self._items)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
