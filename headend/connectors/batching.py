"""Received messages gathered into batches for one writer, on the event loop's thread.

The MQTT client hands over each message with ``put`` (an append, and a wake-up only when
the writer waits for exactly that message); the writer takes batches with ``next_batch``.
This replaces a queue with a task per message: at thousands of messages per second an
asyncio task, a future and their callbacks per message cost more than the message's own
decoding (see docs/performance.md, "Ingestion").
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchInbox(Generic[T]):
    """Messages received and not yet taken by a batch, in arrival order.

    Not thread-safe: ``put`` and ``next_batch`` run on one event loop's thread.
    """

    def __init__(self, batch_size: int, wait_s: float) -> None:
        """``batch_size``: most messages in a batch. ``wait_s``: how long a batch that is
        not full waits for more after its first message, in seconds."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._batch_size = batch_size
        self._wait_s = wait_s
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None
        self._wake_at = 1

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Keep ``item`` for the next batch, waking the writer if it waits for it."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and len(self._items) >= self._wake_at and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self) -> list[T]:
        """The oldest messages, at most ``batch_size``: waits for a first one, then up to
        ``wait_s`` for the batch to fill (not at all when enough are already here)."""
        if not self._items:
            await self._wait_for(1, None)
        if len(self._items) < self._batch_size:
            await self._wait_for(self._batch_size, self._wait_s)
        batch = self._items[: self._batch_size]
        del self._items[: self._batch_size]
        return batch

    async def _wait_for(self, count: int, timeout_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter, self._wake_at = waiter, count
        timer = None if timeout_s is None else loop.call_later(timeout_s, _settle, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
