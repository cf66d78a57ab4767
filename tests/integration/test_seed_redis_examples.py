"""The seed's "Distributed Setup (Redis)" and "Redis Pub/Sub for Multi-Worker" examples, run
as written through the seed's import path (only the Redis URL points at the test's own
redis-server), with real uvicorn servers and real clients."""

from __future__ import annotations

import contextlib
import json
import warnings
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from library.components.realtime.websocket_manager import ConnectionManager
from tests.redis_support import RedisServer
from tests.support import connect, eventually, recv, running_server


def distributed_app(redis_url: str) -> tuple[FastAPI, Any]:
    app = FastAPI()

    @app.websocket("/ws/{room_id}")
    async def endpoint(websocket: WebSocket, room_id: str, user_id: str) -> None:
        await manager.connect(websocket, room_id, user_id)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            manager.disconnect(websocket)

    # --- "Distributed Setup (Redis)", verbatim but for the URL ------------------------
    from library.components.realtime.websocket_manager import (
        DistributedWebSocketManager,
    )

    # Use distributed manager
    manager = DistributedWebSocketManager(redis_url)

    with warnings.catch_warnings():  # FastAPI deprecates on_event in favour of lifespan
        warnings.simplefilter("ignore", DeprecationWarning)

        @app.on_event("startup")
        async def startup():  # type: ignore[no-untyped-def]
            await manager.start()

        @app.on_event("shutdown")
        async def shutdown():  # type: ignore[no-untyped-def]
            await manager.stop()
    # -------------------------------------------------------------------------------------

    return app, manager


async def test_distributed_setup_example(own_redis: RedisServer) -> None:
    """Two apps started by on_event handlers are one hub: broadcast_to_room on one reaches a
    room member on the other."""
    first, first_manager = distributed_app(own_redis.url)
    second, second_manager = distributed_app(own_redis.url)
    async with (
        running_server(first, lifespan="on"),
        running_server(second, lifespan="on") as second_url,
    ):
        client = await connect(f"{second_url}/ws/global?user_id=u1")
        await eventually(lambda: second_manager.active_rooms and second_manager.broker.settled)
        manager = first_manager
        # Broadcasting now works across all instances
        await manager.broadcast_to_room("global", "Hello from any server!")
        assert await recv(client) == "Hello from any server!"
        await client.close()
    assert not first_manager.ready  # the shutdown handler stopped it


async def test_redis_pubsub_example(own_redis: RedisServer) -> None:
    """The RedisPubSub walkthrough: a broadcast handler feeding a local manager, a user
    handler, the three publish calls, close."""
    manager = ConnectionManager()
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        await manager.connect(websocket)
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    user_messages: list[dict[str, Any]] = []

    async def handle_user_message(data: dict[str, Any]) -> None:
        user_messages.append(data)

    user_id = "user123"
    message = {"type": "notice", "text": "to everyone"}
    msg = {"type": "direct", "text": "to user123"}

    async with running_server(app) as base:
        client = await connect(f"{base}/ws")
        await eventually(lambda: manager.active_connections == 1)

        # --- "Redis Pub/Sub for Multi-Worker", verbatim but for the URL ----------------
        from library.components.realtime.websocket_manager import RedisPubSub

        # Initialize pub/sub
        pubsub = RedisPubSub(own_redis.url)
        await pubsub.initialize()

        # Subscribe to channels
        async def handle_broadcast(data: dict):  # type: ignore[no-untyped-def,type-arg]
            await manager.broadcast(data)

        await pubsub.subscribe("ws:broadcast", handle_broadcast)
        await pubsub.subscribe(f"ws:user:{user_id}", handle_user_message)

        # Publish messages
        await pubsub.publish_broadcast(message)  # All connections
        await pubsub.publish_to_user("user123", msg)  # Specific user
        await pubsub.publish_to_room("room1", msg)  # Room subscribers
        # ---------------------------------------------------------------------------------

        assert json.loads(await recv(client)) == message
        await eventually(lambda: user_messages == [msg])

        # Cleanup
        await pubsub.close()
        await client.close()
