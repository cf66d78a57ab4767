"""DistributedWebSocketManager: three instances of one hub, every cross-instance path.

The same suite runs over both brokers: ``MemoryBroker`` (instances share a bus in this
process) and ``RedisPubSub`` (each instance has its own connections to a real redis-server).
Each instance serves a FastAPI app on its own real uvicorn; clients are real websockets
clients.  The test calls the managers' methods directly, as an application would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from roomcast import DistributedWebSocketManager, MemoryBroker, MemoryBus, MessageType
from tests.redis_support import RedisServer
from tests.support import connect, eventually, recv, running_server


def make_app(manager: DistributedWebSocketManager) -> FastAPI:
    """The seed's endpoint shape: connect with a room and a user, read until the client goes."""
    app = FastAPI()

    @app.websocket("/ws/{room}")
    async def endpoint(websocket: WebSocket, room: str, user_id: str) -> None:
        await manager.connect(websocket, room, user_id)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            manager.disconnect(websocket)

    return app


@dataclasses.dataclass
class Hub:
    """Three instances of one logical hub, and a view of the broker's subscriptions."""

    managers: list[DistributedWebSocketManager]
    urls: list[str]
    channels: Callable[[], set[str]]

    async def client(self, instance: int, room: str, user: str) -> tuple[ClientConnection, str]:
        """A client of ``instance`` in ``room`` as ``user``, and its connection id; returns
        once every instance's subscriptions are in place."""
        manager = self.managers[instance]
        before = {c.connection_id for c in manager.get_user_connections(user)}
        client = await connect(f"{self.urls[instance]}/ws/{room}?user_id={user}")
        await eventually(lambda: len(manager.get_user_connections(user)) > len(before))
        (connection_id,) = {c.connection_id for c in manager.get_user_connections(user)} - before
        await self.settle()
        return client, connection_id

    async def settle(self) -> None:
        await eventually(lambda: all(m.broker.settled for m in self.managers))


@pytest.fixture(params=["memory", "redis"])
async def hub(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Hub]:
    if request.param == "memory":
        bus = MemoryBus()
        managers = [DistributedWebSocketManager(broker=MemoryBroker(bus, prefix)) for _ in "abc"]

        def channels() -> set[str]:
            return set(bus.channels())
    else:
        redis: RedisServer = request.getfixturevalue("shared_redis")
        managers = [DistributedWebSocketManager(redis.url, prefix=prefix) for _ in "abc"]

        def channels() -> set[str]:
            return redis.channels(f"{prefix}:*")

    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(running_server(make_app(m))) for m in managers]
        for manager in managers:
            await manager.start()
            stack.push_async_callback(manager.stop)
        yield Hub(managers, urls, channels)


async def nothing_more(*clients: ClientConnection) -> None:
    """None of ``clients`` receives anything else (no duplicates, nothing for non-members)."""
    for client in clients:
        with pytest.raises(TimeoutError):
            await recv(client, timeout_units=0.3)


async def test_every_send_reaches_its_targets_on_every_instance_exactly_once(hub: Hub) -> None:
    """broadcast, broadcast_to_room, send_to_user and send_to_connection from one instance
    reach exactly their targets on all three, once each."""
    a, _ = await hub.client(0, "lobby", "ann")
    b, _ = await hub.client(1, "lobby", "bob")
    c, c_id = await hub.client(2, "games", "cid")
    ann_phone, _ = await hub.client(2, "games", "ann")
    sender = hub.managers[0]

    assert await sender.broadcast("to all") == 1  # local deliveries only
    for client in (a, b, c, ann_phone):
        assert await recv(client) == "to all"

    assert await sender.broadcast_to_room("games", {"n": 1}) == 0  # no local member
    for client in (c, ann_phone):
        assert json.loads(await recv(client)) == {"n": 1}

    assert await sender.send_to_user("ann", b"\x00bin", MessageType.BYTES) == 1
    assert await recv(a) == b"\x00bin"
    assert await recv(ann_phone) == b"\x00bin"

    assert await sender.send_to_connection(c_id, "just you") is True
    assert await recv(c) == "just you"
    await nothing_more(a, b, c, ann_phone)


async def test_exclude_applies_to_connections_on_any_instance(hub: Hub) -> None:
    """Connection ids in ``exclude`` are left out wherever they live."""
    a, a_id = await hub.client(0, "lobby", "ann")
    b, b_id = await hub.client(1, "lobby", "bob")
    c, _ = await hub.client(2, "lobby", "cid")
    await hub.managers[0].broadcast_to_room("lobby", "not for bob", exclude={b_id})
    assert await recv(a) == "not for bob"
    assert await recv(c) == "not for bob"
    await hub.managers[2].broadcast("not for ann or bob", exclude={a_id, b_id})
    assert await recv(c) == "not for ann or bob"
    await nothing_more(a, b, c)


async def test_messages_from_one_instance_arrive_in_order(hub: Hub) -> None:
    """Many sends from one instance reach a remote client in the order they were made."""
    client, _ = await hub.client(1, "lobby", "bob")
    for n in range(200):
        await hub.managers[0].broadcast_to_room("lobby", str(n))
    assert [await recv(client) for _ in range(200)] == [str(n) for n in range(200)]


async def test_subscriptions_follow_local_interest(hub: Hub, prefix: str) -> None:
    """An instance is subscribed to a room's and a user's channel only while it has a local
    member there; the broadcast channel always."""
    instance = hub.managers[1]
    client, connection_id = await hub.client(1, "lobby", "bob")
    expected = {
        f"{prefix}:broadcast",
        f"{prefix}:room:lobby",
        f"{prefix}:user:bob",
        f"{prefix}:connection:{connection_id}",
    }
    assert hub.channels() == expected
    connection = instance.get_connection(connection_id)
    assert connection is not None
    instance.hub.join(connection, "extra")
    await hub.settle()
    assert f"{prefix}:room:extra" in hub.channels()
    instance.hub.leave(connection, "extra")
    await hub.settle()
    assert hub.channels() == expected
    await client.close()
    await eventually(lambda: instance.active_connections == 0)
    await hub.settle()
    assert hub.channels() == {f"{prefix}:broadcast"}


async def test_close_reaches_remote_members(hub: Hub) -> None:
    """MessageType.CLOSE sent to a room closes its members on other instances (code 1000)."""
    a, _ = await hub.client(0, "lobby", "ann")
    b, _ = await hub.client(1, "lobby", "bob")
    other, _ = await hub.client(1, "games", "cid")
    assert await hub.managers[2].broadcast_to_room("lobby", "closing", MessageType.CLOSE) == 0
    for client in (a, b):
        with pytest.raises(ConnectionClosed):
            await recv(client)
        assert client.close_code == 1000
        assert client.close_reason == "closing"
    await nothing_more(other)


async def test_native_paths_publish_too(hub: Hub) -> None:
    """Hub.deliver of encoded frames (the native server's path) reaches other instances."""
    from roomcast import encode
    from roomcast.brokers.envelope import Target

    b, _ = await hub.client(1, "lobby", "bob")
    assert hub.managers[0].hub.deliver(Target.ROOM, "lobby", encode("room frame")) == 0
    assert await recv(b) == "room frame"
    assert hub.managers[0].hub.deliver(Target.USER, "bob", encode("user frame")) == 0
    assert await recv(b) == "user frame"
    assert hub.managers[0].broker_stats.published >= 2


async def test_a_stopped_broker_fails_publishes_but_local_delivery_goes_on(hub: Hub) -> None:
    """With its broker stopped an instance still serves its own clients; what it could not
    publish is counted."""
    a, _ = await hub.client(0, "lobby", "ann")
    b, _ = await hub.client(1, "lobby", "bob")
    await hub.managers[0].stop()
    assert not hub.managers[0].ready
    assert await hub.managers[0].broadcast_to_room("lobby", "local only") == 1
    assert await recv(a) == "local only"
    await nothing_more(b)
    assert hub.managers[0].broker_stats.publish_failures == 1


async def test_leaving_and_rejoining_at_once_keeps_the_subscription(hub: Hub) -> None:
    """A room emptied and reopened before the broker confirmed the unsubscribe ends up
    subscribed, without the broker connection being restarted."""
    client, connection_id = await hub.client(1, "lobby", "bob")
    instance = hub.managers[1]
    connection = instance.get_connection(connection_id)
    assert connection is not None
    for _ in range(20):
        instance.hub.leave(connection, "lobby")
        await asyncio.sleep(0)
        instance.hub.join(connection, "lobby")
        await asyncio.sleep(0)
    await hub.settle()
    assert instance.ready and instance.broker_stats.reconnects == 0
    await hub.managers[0].broadcast_to_room("lobby", "still subscribed")
    assert await recv(client) == "still subscribed"


async def test_a_stopped_manager_says_it_cannot_start_again() -> None:
    """start() after stop() raises a RuntimeError that says what to do, instead of leaving a
    manager that silently publishes nothing."""
    from roomcast import DistributedWebSocketManager, MemoryBroker, MemoryBus

    manager = DistributedWebSocketManager(broker=MemoryBroker(MemoryBus()))
    await manager.start()
    await manager.stop()
    with pytest.raises(RuntimeError, match="cannot start again"):
        await manager.start()
