"""The Redis Stream outbox against a real Redis: claim and ack, a dead reader's entries
reclaimed, trimmed entries counted, the group recreated after Redis lost it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from roomcast.brokers.redis_lifecycle import RedisLifecycle
from roomcast.brokers.redis_outbox import RedisStreamOutbox
from roomcast.events.lifecycle import Change, Op
from roomcast.events.outbox import Outbox
from roomcast.events.schema import Kind
from tests.redis_support import RedisServer


@pytest.fixture
async def client(shared_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(shared_redis.url)
    yield connection
    await connection.aclose()


async def publishes(client: Any, prefix: str, count: int, **options: Any) -> RedisLifecycle:
    """``count`` publish events in the stream (a store that is not left running)."""
    lifecycle = RedisLifecycle(client, "one", prefix=prefix, debounce=0, **options)
    await lifecycle.start()
    for n in range(count):
        lifecycle.record(Change(Op.PUBLISH, "c1", "alice", "r", data=n))
    assert await lifecycle.flush()
    await lifecycle.stop()
    return lifecycle


async def test_claim_ack_and_backlog(client: Any, prefix: str) -> None:
    """Entries come oldest first with their events; acknowledged ones never come again."""
    outbox: Outbox = RedisStreamOutbox(client, prefix=prefix, consumer="a")
    assert await outbox.claim(10, wait=0.01) == []
    await publishes(client, prefix, 5)
    first = await outbox.claim(3, wait=0.5)
    assert [event.data for _, event in first] == [0, 1, 2]
    assert all(event.kind is Kind.PUBLISH for _, event in first)
    assert outbox.backlog == 5
    await outbox.ack([entry for entry, _ in first])
    rest = await outbox.claim(10, wait=0.5)
    assert [event.data for _, event in rest] == [3, 4]
    await outbox.ack([entry for entry, _ in rest])
    assert await outbox.claim(10, wait=0.01) == []
    assert outbox.backlog == 0 and outbox.dropped == 0


async def test_a_dead_readers_entries_are_reclaimed(client: Any, prefix: str) -> None:
    """Claimed and never acknowledged, entries go to another reader after reclaim_after,
    with the same ids (so it can deduplicate)."""
    dead = RedisStreamOutbox(client, prefix=prefix, consumer="dead", reclaim_after=0.2)
    alive = RedisStreamOutbox(client, prefix=prefix, consumer="alive", reclaim_after=0.2)
    await publishes(client, prefix, 3)
    taken = await dead.claim(10, wait=0.5)
    assert len(taken) == 3
    assert await alive.claim(10, wait=0.05) == []  # not idle long enough yet
    again = await alive.claim(10, wait=0.3)
    again += await alive.claim(10, wait=0.01)
    assert [(entry, event.id) for entry, event in again] == [
        (entry, event.id) for entry, event in taken
    ]
    await alive.ack([entry for entry, _ in again])
    await alive.ack([])
    assert await alive.claim(10, wait=0.3) == []


async def test_claimed_entries_trimmed_before_their_ack_are_dropped(
    client: Any, prefix: str
) -> None:
    """An entry deleted while claimed and unacknowledged is reported by XAUTOCLAIM: counted
    as dropped, not handed out."""
    dead = RedisStreamOutbox(client, prefix=prefix, consumer="dead", reclaim_after=0.1)
    alive = RedisStreamOutbox(client, prefix=prefix, consumer="alive", reclaim_after=0.1)
    await publishes(client, prefix, 2)
    taken = await dead.claim(10, wait=0.5)
    await client.xdel(dead.stream, taken[0][0])
    await asyncio.sleep(0.15)
    again = await alive.claim(10, wait=0.01)
    assert [entry for entry, _ in again] == [taken[1][0]] and alive.dropped == 1


async def test_trimmed_entries_are_counted_as_dropped(client: Any, prefix: str) -> None:
    """A stream capped at 10 (MAXLEN ~ trims whole nodes of 100) drops the oldest: the
    reader counts what it never saw."""
    lifecycle = await publishes(client, prefix, 350, max_events=10)
    outbox = RedisStreamOutbox(client, prefix=prefix, consumer="a")
    info = await client.xinfo_stream(lifecycle.keys["events"])
    trimmed = info["entries-added"] - info["length"]
    assert trimmed > 0
    claimed = await outbox.claim(1000, wait=0.5)
    assert outbox.dropped == trimmed
    assert len(claimed) == info["length"] and claimed[-1][1].data == 349


async def test_undecodable_entries_are_skipped(client: Any, prefix: str) -> None:
    """An entry that is not an event (written by someone else) is acknowledged and counted."""
    outbox = RedisStreamOutbox(client, prefix=prefix, consumer="a", delete_acked=True)
    await client.xadd(outbox.stream, {"e": "not json"})
    await publishes(client, prefix, 1)
    found = await outbox.claim(10, wait=0.5)
    assert [event.data for _, event in found] == [0] and outbox.undecodable == 1
    await outbox.ack([entry for entry, _ in found])
    assert await client.xlen(outbox.stream) == 0  # delete_acked: XDEL too


async def test_the_group_comes_back_after_redis_lost_it(client: Any, prefix: str) -> None:
    """Redis restarted empty (the group is gone): the next claim creates it again."""
    outbox = RedisStreamOutbox(client, prefix=prefix, consumer="a")
    assert await outbox.claim(10, wait=0.01) == []
    await client.delete(outbox.stream)
    await publishes(client, prefix, 2)
    assert [event.data for _, event in await outbox.claim(10, wait=0.5)] == [0, 1]
