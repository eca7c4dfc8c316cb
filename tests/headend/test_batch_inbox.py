"""The MQTT worker's inbox: batches of at most ``batch_size`` in arrival order, a full batch
without waiting, a partial one after ``wait_s``."""

from __future__ import annotations

import asyncio

import pytest

from headend.connectors.batching import BatchInbox

LONG_S = 30.0  # a wait no passing test reaches


async def test_a_full_batch_is_taken_without_waiting_for_more() -> None:
    inbox: BatchInbox[int] = BatchInbox(batch_size=3, wait_s=LONG_S)
    for n in range(3):
        inbox.put(n)
    assert await asyncio.wait_for(inbox.next_batch(), timeout=1) == [0, 1, 2]
    assert len(inbox) == 0


async def test_messages_beyond_the_batch_size_wait_for_the_next_batch_in_order() -> None:
    inbox: BatchInbox[int] = BatchInbox(batch_size=3, wait_s=0.01)
    for n in range(7):
        inbox.put(n)
    batches = [await asyncio.wait_for(inbox.next_batch(), timeout=1) for _ in range(3)]
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_partial_batch_is_taken_after_the_wait() -> None:
    inbox: BatchInbox[int] = BatchInbox(batch_size=500, wait_s=0.05)
    inbox.put(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(inbox.next_batch(), timeout=1) == [1]
    assert loop.time() - started >= 0.04


async def test_a_waiting_writer_is_woken_by_the_first_message_and_by_the_batch_filling() -> None:
    inbox: BatchInbox[int] = BatchInbox(batch_size=3, wait_s=LONG_S)
    batch = asyncio.create_task(inbox.next_batch())
    await asyncio.sleep(0)
    inbox.put(1)
    await asyncio.sleep(0)
    inbox.put(2)
    await asyncio.sleep(0)
    assert not batch.done()
    inbox.put(3)
    assert await asyncio.wait_for(batch, timeout=1) == [1, 2, 3]


async def test_a_cancelled_writer_leaves_the_messages_for_the_next_batch() -> None:
    inbox: BatchInbox[int] = BatchInbox(batch_size=3, wait_s=LONG_S)
    inbox.put(1)
    batch = asyncio.create_task(inbox.next_batch())
    await asyncio.sleep(0)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    inbox.put(2)
    inbox.put(3)
    assert await asyncio.wait_for(inbox.next_batch(), timeout=1) == [1, 2, 3]


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BatchInbox(batch_size=0, wait_s=0.05)
