"""RoomRoster against a real Redis: batched joins and leaves, cluster-wide reads, a dead
instance dropping out of every answer and being reported by a survivor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from roomcast.presence.roster import Member, RoomRoster, RosterChange
from tests.redis_support import RedisServer
from tests.support import eventually


@pytest.fixture
async def client(shared_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(shared_redis.url)
    yield connection
    await connection.aclose()


def roster(client: redis.asyncio.Redis, prefix: str, name: str, **options: object) -> RoomRoster:
    return RoomRoster(client, name, prefix=prefix, **options)  # type: ignore[arg-type]


async def write(roster: RoomRoster, *changes: RosterChange) -> None:
    """What the presence feed does: record in memory at once, write to Redis in a batch."""
    for change in changes:
        roster.record(change)
    await roster.apply(changes)


async def test_members_are_the_union_of_live_instances(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    one, two = roster(client, prefix, "one"), roster(client, prefix, "two")
    await one.start()
    await two.start()
    await write(
        one,
        RosterChange(True, "lobby", "c1", "ann"),
        RosterChange(True, "lobby", "c2", "bob"),
        RosterChange(True, "news", "c1", "ann"),
        RosterChange(False, "lobby", "c2", "bob"),
    )
    await write(two, RosterChange(True, "lobby", "c3", None))
    assert await two.members("lobby") == [("c1", "ann"), ("c3", None)]
    assert await one.members("news") == [("c1", "ann")]
    assert await one.members("nowhere") == []
    # The last member leaving a room takes the room off the instance's list.
    await write(one, RosterChange(False, "news", "c1", "ann"))
    assert await client.smembers(f"{prefix}:roster:rooms:one") == {b"lobby"}
    await one.stop()  # a clean exit removes the instance's part at once
    assert await two.members("lobby") == [("c3", None)]
    await two.stop()
    assert not await client.keys(f"{prefix}:roster:*")


async def test_a_dead_instance_drops_out_and_a_survivor_reports_its_members(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    departed: list[tuple[str, list[Member]]] = []
    options = {"instance_ttl": 0.6, "refresh_interval": 0.2}
    victim = roster(client, prefix, "victim", **options)
    survivor = roster(
        client, prefix, "survivor", on_departed=lambda r, m: departed.append((r, m)), **options
    )
    await victim.start()
    await survivor.start()
    await write(victim, RosterChange(True, "lobby", "c9", "zed"))
    assert await survivor.members("lobby") == [("c9", "zed")]
    await victim._tasks.cancel_all()  # dies: no more refreshes, nothing cleaned up
    await eventually(lambda: bool(departed), timeout_units=5, what="the victim purged")
    assert departed == [("lobby", [("c9", "zed")])]
    assert await survivor.members("lobby") == []
    assert survivor.purged == 1
    assert await client.smembers(f"{prefix}:roster:instances") == {b"survivor"}
    await survivor.stop()


async def test_refresh_must_come_before_expiry(client: redis.asyncio.Redis) -> None:
    with pytest.raises(ValueError, match="shorter"):
        RoomRoster(client, "x", instance_ttl=1, refresh_interval=1)


async def test_an_instance_taken_for_dead_writes_itself_back_and_says_so(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    """A stall longer than the liveness TTL gets a live instance purged (its members
    reported gone); at its next refresh it rewrites its part and re-announces them."""
    restored: list[tuple[str, list[Member]]] = []
    departed: list[tuple[str, list[Member]]] = []
    options = {"instance_ttl": 1.0, "refresh_interval": 0.2}
    stalled = roster(
        client, prefix, "stalled", on_restored=lambda r, m: restored.append((r, m)), **options
    )
    survivor = roster(
        client, prefix, "survivor", on_departed=lambda r, m: departed.append((r, m)), **options
    )
    await stalled.start()
    await write(stalled, RosterChange(True, "lobby", "c1", "ann"))
    await client.delete(f"{prefix}:roster:alive:stalled")  # as if its refreshes stopped
    assert await survivor.purge_dead() == 1
    assert departed == [("lobby", [("c1", "ann")])]
    assert await survivor.members("lobby") == []
    await eventually(lambda: bool(restored), timeout_units=5, what="the stalled one restored")
    assert restored == [("lobby", [("c1", "ann")])]
    assert await survivor.members("lobby") == [("c1", "ann")]
    await stalled.stop()


async def test_a_failed_write_is_repaired_from_memory(own_redis: RedisServer, prefix: str) -> None:
    connection = redis.asyncio.Redis.from_url(own_redis.url, socket_timeout=0.5)
    one = roster(connection, prefix, "one", instance_ttl=3.0, refresh_interval=0.2)
    await one.start()
    own_redis.freeze()
    change = RosterChange(True, "lobby", "c1", "ann")
    one.record(change)
    with pytest.raises(Exception):  # noqa: B017 - whatever redis-py raises for a timeout
        await one.apply([change])
    own_redis.thaw()
    await eventually(lambda: not one._dirty, timeout_units=5, what="a rewrite")
    assert await one.members("lobby") == [("c1", "ann")]
    await one.stop()
    await connection.aclose()
