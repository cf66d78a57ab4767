"""RoomRoster against a real Redis: batched joins and leaves, cluster-wide reads, a dead
instance dropping out of every answer and being reported by a survivor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from roomcast.roster import Member, RoomRoster, RosterChange
from tests.redis_support import RedisServer
from tests.support import eventually


@pytest.fixture
async def client(shared_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(shared_redis.url)
    yield connection
    await connection.aclose()


def roster(client: redis.asyncio.Redis, prefix: str, name: str, **options: object) -> RoomRoster:
    return RoomRoster(client, name, prefix=prefix, **options)  # type: ignore[arg-type]


async def test_members_are_the_union_of_live_instances(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    one, two = roster(client, prefix, "one"), roster(client, prefix, "two")
    await one.start()
    await two.start()
    await one.apply(
        [
            RosterChange(True, "lobby", "c1", "ann"),
            RosterChange(True, "lobby", "c2", "bob"),
            RosterChange(True, "news", "c1", "ann"),
            RosterChange(False, "lobby", "c2", "bob"),
        ]
    )
    await two.apply([RosterChange(True, "lobby", "c3", None)])
    assert await two.members("lobby") == [("c1", "ann"), ("c3", None)]
    assert await one.members("news") == [("c1", "ann")]
    assert await one.members("nowhere") == []
    # The last member leaving a room takes the room off the instance's list.
    await one.apply([RosterChange(False, "news", "c1", "ann")])
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
    await victim.apply([RosterChange(True, "lobby", "c9", "zed")])
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
