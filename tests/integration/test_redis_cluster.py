"""Sharded pub/sub on a real 3-master Redis Cluster that the test starts itself."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Iterator

import prometheus_client
import pytest
from redis.crc import key_slot

from roomcast import DistributedWebSocketManager
from roomcast.history import HistoryLimits, Position
from tests.integration.test_distributed import make_app, nothing_more
from tests.redis_support import RedisServer, redis_cluster
from tests.support import connect, eventually, recv, running_server


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RedisServer]]:
    with redis_cluster(3) as nodes:
        yield nodes


def slot_owners(nodes: list[RedisServer]) -> dict[int, int]:
    """Port of the master serving each hash slot, from ``CLUSTER NODES``."""
    owners: dict[int, int] = {}
    for line in nodes[0].cli("CLUSTER", "NODES").splitlines():
        fields = line.split()
        if "master" not in fields[2]:
            continue
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for part in fields[8:]:
            start, _, end = part.partition("-")
            for slot in range(int(start), int(end or start) + 1):
                owners[slot] = port
    return owners


def rooms_on_every_shard(nodes: list[RedisServer]) -> dict[int, str]:
    """One room name per master (by port) whose channel hashes to that master."""
    owners = slot_owners(nodes)
    rooms: dict[int, str] = {}
    for n in range(1000):
        room = f"room{n}"
        rooms.setdefault(owners[key_slot(f"ws:room:{room}".encode())], room)
        if len(rooms) == len(nodes):
            return rooms
    raise AssertionError("could not place a room on every shard")


@contextlib.asynccontextmanager
async def two_instances(
    url: str,
) -> AsyncIterator[tuple[list[DistributedWebSocketManager], list[str]]]:
    managers = [DistributedWebSocketManager(url) for _ in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(running_server(make_app(m))) for m in managers]
        for manager in managers:
            await manager.start()
            stack.push_async_callback(manager.stop)
        yield managers, urls


async def test_rooms_on_different_shards_all_work(cluster: list[RedisServer]) -> None:
    """Given one node's URL, instances find every master, subscribe each room's channel on
    the shard that owns it (SSUBSCRIBE), and room, user and broadcast messages cross over."""
    rooms = rooms_on_every_shard(cluster)
    async with two_instances(cluster[0].url) as (managers, urls):
        assert all(manager.pubsub.shards == 3 for manager in managers)
        members = {
            port: await connect(f"{urls[1]}/ws/{room}?user_id=u{port}")
            for port, room in rooms.items()
        }
        await eventually(lambda: managers[1].active_connections == 3 and managers[1].broker.settled)
        for node in cluster:
            shard_channels = set(node.cli("PUBSUB", "SHARDCHANNELS", "ws:room:*").splitlines())
            assert shard_channels == {f"ws:room:{rooms[node.port]}"}
            assert node.cli("PUBSUB", "CHANNELS") == ""  # nothing on classic pub/sub

        for port, room in rooms.items():
            await managers[0].broadcast_to_room(room, f"to {room}")
            assert await recv(members[port]) == f"to {room}"
        for port in rooms:
            await managers[0].send_to_user(f"u{port}", "to user")
            assert await recv(members[port]) == "to user"
        await managers[0].broadcast("to all")
        for client in members.values():
            assert await recv(client) == "to all"
        await nothing_more(*members.values())
        assert managers[1].broker_stats.missed == 0


async def test_churn_on_a_shard_does_not_look_like_a_moved_slot(cluster: list[RedisServer]) -> None:
    """Leaving and rejoining a room faster than its shard confirms the SUNSUBSCRIBE is not
    mistaken for a slot migration (which would restart every link)."""
    async with two_instances(cluster[0].url) as (managers, urls):
        client = await connect(f"{urls[1]}/ws/churn?user_id=u")
        await eventually(lambda: managers[1].active_connections == 1 and managers[1].broker.settled)
        (connection,) = managers[1].get_user_connections("u")
        for _ in range(20):
            managers[1].hub.leave(connection, "churn")
            await asyncio.sleep(0)
            managers[1].hub.join(connection, "churn")
            await asyncio.sleep(0)
        await eventually(lambda: managers[1].broker.settled)
        assert managers[1].ready and managers[1].broker_stats.reconnects == 0
        await managers[0].broadcast_to_room("churn", "still subscribed")
        assert await recv(client) == "still subscribed"


async def test_rooms_with_history_on_every_shard(cluster: list[RedisServer]) -> None:
    """On a cluster, a room's history keys live in the slot of its channel: the script that
    stores and publishes (SPUBLISH) runs on the room's shard, for rooms on every shard, and
    the history reads back from there."""
    rooms = rooms_on_every_shard(cluster)
    limits = HistoryLimits(size=10, ttl=60)
    managers = [DistributedWebSocketManager(cluster[0].url, history=limits) for _ in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(running_server(make_app(m))) for m in managers]
        for manager in managers:
            await manager.start()
            stack.push_async_callback(manager.stop)
        members = {
            port: await connect(f"{urls[1]}/ws/{room}?user_id=u{port}")
            for port, room in rooms.items()
        }
        await eventually(lambda: managers[1].active_connections == 3 and managers[1].broker.settled)
        for port, room in rooms.items():
            for n in (1, 2):
                await managers[0].broadcast_to_room(room, {"n": n})
            got = [json.loads(await recv(members[port])) for _ in (1, 2)]
            assert [(m["n"], m["offset"]) for m in got] == [(1, 1), (2, 2)]
            page = await managers[0].room_history(room, Position(got[0]["epoch"], 0))
            assert page.recovered and [json.loads(p)["n"] for p in page.payloads] == [1, 2]
        for node in cluster:  # each shard holds the histories of its own rooms
            keys = node.cli("--scan", "--pattern", "*ws:history:*").split()
            assert keys and all(rooms[node.port] in key for key in keys), keys
        await nothing_more(*members.values())


async def test_worker_snapshots_on_a_cluster(cluster: list[RedisServer]) -> None:
    """Workers of ``--workers`` on a Redis Cluster see each other: their keys share a slot
    (a hash tag), and the exchange follows the slot to its node whichever node the URL
    names."""
    from roomcast.serve.worker_sync import exchange_snapshots
    from roomcast.serve.workers import WorkerIdentity, WorkerView
    from roomcast.tasks import TaskSet

    views = [WorkerView(WorkerIdentity(slot, 2, "c"), stale_after=1.0) for slot in range(2)]
    tasks = TaskSet()
    for view, node in zip(views, cluster, strict=False):  # (each through another node)
        own = functools.partial(view.snapshot, prometheus_client.CollectorRegistry(), None)
        tasks.spawn(exchange_snapshots(view, node.url, "ws", own, interval=0.05, ttl=1.0))
    try:
        await eventually(lambda: all(view.unready() is None for view in views))
        assert all(view.sync_failures == 0 for view in views)
    finally:
        await tasks.cancel_all()
