"""The bounded hand-off from CAN threads to the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from can_signals.stream import UpdateStream


async def _wait_for(condition: object, what: str, limit: float = 5.0) -> None:
    """Poll ``condition()`` on the loop until true, failing after ``limit`` seconds."""
    assert callable(condition)
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def test_capacity_must_be_positive() -> None:
    async def run() -> None:
        with pytest.raises(ValueError, match="capacity"):
            UpdateStream[int](asyncio.get_running_loop(), capacity=0)

    asyncio.run(run())


def test_a_full_stream_drops_the_oldest_and_counts_it() -> None:
    async def run() -> tuple[list[int], int]:
        stream = UpdateStream[int](asyncio.get_running_loop(), capacity=3)
        for item in range(5):
            stream.put(item)
        return await stream.get_batch(), stream.dropped

    batch, dropped = asyncio.run(run())

    assert batch == [2, 3, 4]
    assert dropped == 2


def test_get_batch_returns_at_most_max_items_oldest_first() -> None:
    async def run() -> list[list[int]]:
        stream = UpdateStream[int](asyncio.get_running_loop(), capacity=10)
        for item in range(7):
            stream.put(item)
        return [await stream.get_batch(3), await stream.get_batch(3), await stream.get_batch(3)]

    assert asyncio.run(run()) == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_blocking_producer_waits_for_room_and_loses_nothing() -> None:
    async def run() -> tuple[list[int], int, bool]:
        stream = UpdateStream[int](asyncio.get_running_loop(), capacity=2)

        def produce() -> None:
            for item in range(50):
                stream.put(item, block=True)

        producer = threading.Thread(target=produce)
        producer.start()
        # The producer fills the stream and then waits: it is still running, the stream full.
        await _wait_for(lambda: len(stream) == 2, "the stream to fill")
        was_waiting = producer.is_alive()
        received: list[int] = []
        while len(received) < 50:
            received.extend(await stream.get_batch())
        await asyncio.to_thread(producer.join)
        return received, stream.dropped, was_waiting

    received, dropped, was_waiting = asyncio.run(run())

    assert was_waiting
    assert received == list(range(50))
    assert dropped == 0


def test_items_from_another_thread_wake_a_waiting_consumer() -> None:
    async def run() -> list[int]:
        stream = UpdateStream[int](asyncio.get_running_loop())
        consumer = asyncio.create_task(stream.get_batch())
        await asyncio.sleep(0)  # the consumer is now waiting
        thread = threading.Thread(target=stream.put, args=(42,))
        thread.start()
        batch = await asyncio.wait_for(consumer, timeout=5)
        thread.join()
        return batch

    assert asyncio.run(run()) == [42]


def test_close_drains_then_ends_and_ignores_later_items() -> None:
    async def run() -> tuple[list[int], list[int], bool]:
        stream = UpdateStream[int](asyncio.get_running_loop())
        for item in range(3):
            stream.put(item)
        stream.close()
        stream.put(99)  # after close: ignored
        drained = [item async for item in stream]
        return drained, await stream.get_batch(), stream.closed

    drained, after, closed = asyncio.run(run())

    assert drained == [0, 1, 2]
    assert after == []
    assert closed


def test_close_wakes_a_waiting_consumer() -> None:
    async def run() -> list[int]:
        stream = UpdateStream[int](asyncio.get_running_loop())
        consumer = asyncio.create_task(stream.get_batch())
        await asyncio.sleep(0)
        threading.Thread(target=stream.close).start()
        return await asyncio.wait_for(consumer, timeout=5)

    assert asyncio.run(run()) == []


def test_close_releases_a_blocked_producer() -> None:
    async def run() -> list[int]:
        stream = UpdateStream[int](asyncio.get_running_loop(), capacity=1)
        stream.put(0)
        producer = threading.Thread(target=stream.put, args=(1,), kwargs={"block": True})
        producer.start()
        stream.close()
        await asyncio.to_thread(producer.join, 5)
        assert not producer.is_alive()
        return await stream.get_batch()

    # The item that was there; the waiting one was refused, not swapped in.
    assert asyncio.run(run()) == [0]


def test_many_producers_one_consumer_count_everything() -> None:
    async def run() -> tuple[int, int, int]:
        stream = UpdateStream[int](asyncio.get_running_loop(), capacity=100)

        def produce() -> None:
            for item in range(2000):
                stream.put(item)

        threads = [threading.Thread(target=produce) for _ in range(4)]
        for thread in threads:
            thread.start()
        received = 0

        def finished() -> bool:
            return not any(t.is_alive() for t in threads)

        while not finished() or len(stream):
            if len(stream):
                received += len(await stream.get_batch())
            else:
                await asyncio.sleep(0.001)
        for thread in threads:
            thread.join()
        return received, stream.dropped, stream.delivered

    received, dropped, delivered = asyncio.run(run())

    assert received + dropped == 4 * 2000
    assert delivered == received
