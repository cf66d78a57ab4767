"""The bounded queue between the client's reader and the application."""

from __future__ import annotations

import asyncio

import pytest

from roomcast.client.inbox import Inbox, InboxClosed


async def test_a_full_inbox_makes_the_writer_wait_until_the_reader_reads() -> None:
    inbox: Inbox[int] = Inbox(2)
    await inbox.put(1)
    await inbox.put(2)
    assert inbox.full and len(inbox) == 2
    third = asyncio.create_task(inbox.put(3))
    await asyncio.sleep(0)
    assert not third.done()
    assert await inbox.get() == 1
    async with asyncio.timeout(5):
        await third
    assert [await inbox.get(), await inbox.get()] == [2, 3]


async def test_closing_lets_readers_drain_then_stops_them() -> None:
    inbox: Inbox[int] = Inbox(1)
    await inbox.put(1)
    waiting_writer = asyncio.create_task(inbox.put(2))
    await asyncio.sleep(0)
    inbox.close()
    async with asyncio.timeout(5):
        await waiting_writer  # released; its item is dropped
    await inbox.put(3)  # dropped too
    assert inbox.closed
    assert await inbox.get() == 1
    with pytest.raises(InboxClosed):
        await inbox.get()


async def test_a_waiting_reader_is_woken_by_an_item_or_by_close() -> None:
    inbox: Inbox[str] = Inbox(4)
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    await inbox.put("x")
    async with asyncio.timeout(5):
        assert await reader == "x"
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.close()
    with pytest.raises(InboxClosed):
        async with asyncio.timeout(5):
            await reader


def test_an_inbox_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Inbox(0)
