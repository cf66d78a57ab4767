"""Lifecycle events on the Redis managers: cluster-wide, at least once, across a crash.

Two ``DistributedWebSocketManager`` instances on one redis-server, each behind its own real
uvicorn, with real clients; an ``AuthConnectionManager`` with callbacks; and an instance in a
subprocess killed with SIGKILL, whose users a survivor makes depart.  Windows and TTLs are
fractions of the time unit; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import jwt
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.exceptions import InvalidStatus

from roomcast import (
    AuthConnectionManager,
    AuthenticationError,
    CloseCode,
    ConnectionConfig,
    DistributedWebSocketManager,
    JWTAuthenticator,
    LifecycleEvent,
    LifecycleSettings,
    MemoryBroker,
    MemoryBus,
)
from tests.integration.test_manager_lifecycle import make_app, take
from tests.redis_support import RedisServer, free_port
from tests.support import connect, eventually, running_server, seconds

SETTINGS = LifecycleSettings(
    debounce=seconds(1), instance_ttl=seconds(2), refresh_interval=0.1, reclaim_after=0.5
)


@contextlib.asynccontextmanager
async def instances(
    redis: RedisServer, prefix: str, count: int = 2
) -> AsyncIterator[tuple[list[DistributedWebSocketManager], list[str]]]:
    managers = [
        DistributedWebSocketManager(redis.url, prefix=prefix, lifecycle=SETTINGS)
        for _ in range(count)
    ]
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(running_server(make_app(m))) for m in managers]
        for manager in managers:
            async with asyncio.timeout(seconds(10)):
                await manager.start()
            stack.push_async_callback(manager.stop)
        yield managers, urls


async def test_two_instances_count_users_and_rooms_cluster_wide(
    shared_redis: RedisServer, prefix: str
) -> None:
    """Events from both instances come out of one events(); a room occupied on both is
    occupied once and vacated once; a user who moves to the other instance within the window
    emits nothing; a loop that breaks gets its unfinished events again after reclaim_after."""
    async with instances(shared_redis, prefix) as ((a, b), (url_a, url_b)):
        async with contextlib.aclosing(a.events()) as events:
            ann = await connect(f"{url_a}/ws/lobby?user_id=ann")
            assert await take(events, 3) == ["connect:ann:", "occupied::lobby", "join:ann:lobby"]
            bob = await connect(f"{url_b}/ws/lobby?user_id=bob")
            assert await take(events, 2) == ["connect:bob:", "join:bob:lobby"]

            await ann.close()  # ann moves from a to b within the window
            await eventually(lambda: not a.get_user_connections("ann"))
            ann = await connect(f"{url_b}/ws/lobby?user_id=ann")
            carl = await connect(f"{url_a}/ws/games?user_id=carl")
            assert await take(events, 3) == ["connect:carl:", "occupied::games", "join:carl:games"]

            await bob.close()
            assert await take(events, 2) == ["leave:bob:lobby", "disconnect:bob:"]
            await ann.close()
            assert await take(events, 3) == ["leave:ann:lobby", "vacated::lobby", "disconnect:ann:"]

            await carl.close(4100, "later")
            assert await take(events, 1) == ["leave:carl:games"]
            assert await take(events, 1) == ["vacated::games"]  # the loop breaks on it
        async with contextlib.aclosing(b.events()) as again:
            assert await take(again, 2) == ["vacated::games", "disconnect:carl:"]
        assert b.lifecycle is not None
        names = {name for _, name, _, _ in b.lifecycle.samples()}
        assert "roomcast_events_handled" in names


async def test_a_killed_instances_users_depart_from_a_survivor(own_redis: RedisServer) -> None:
    """An instance killed with SIGKILL says nothing; once its liveness expired, the survivor
    purges it and its users' leave, vacated and disconnect (1006, "instance lost",
    synthetic) reach the survivor's events()."""
    port = free_port()
    victim = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.distributed_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={
            **os.environ,
            "ROOMCAST_TEST_REDIS_URL": own_redis.url,
            "ROOMCAST_TEST_LIFECYCLE": str(seconds(1)),
        },
    )
    try:
        async with (
            instances(own_redis, "ws", 1) as ((survivor,), _),
            contextlib.aclosing(survivor.events()) as events,
        ):
            remote = None
            async with asyncio.timeout(seconds(20)):
                while remote is None:
                    with contextlib.suppress(OSError, InvalidStatus):
                        remote = await connect(f"ws://127.0.0.1:{port}/ws/lobby?user_id=bob")
                    await asyncio.sleep(0.05)
            assert await take(events, 3) == ["connect:bob:", "occupied::lobby", "join:bob:lobby"]
            victim.kill()
            victim.wait()
            async with asyncio.timeout(seconds(10)):
                gone = [await anext(events) for _ in range(3)]
            assert [(e.kind.value, e.synthetic) for e in gone] == [
                ("leave", True),
                ("vacated", True),
                ("disconnect", True),
            ]
            assert (gone[2].user, gone[2].code, gone[2].reason) == ("bob", 1006, "instance lost")
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


SECRET = "lifecycle-secret-lifecycle-secret-lifecycle"
authenticator = JWTAuthenticator(SECRET, leeway=0)


def auth_app(manager: AuthConnectionManager) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws/{room}")
    async def endpoint(websocket: WebSocket, room: str) -> None:
        token = websocket.query_params.get("token")
        try:
            conn_id, _ = await manager.connect(
                websocket, token, authenticator, room, event_data={"plan": "pro"}
            )
        except AuthenticationError:
            return
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            await manager.disconnect(conn_id)

    return app


async def test_auth_manager_callbacks_hear_a_token_expire(own_redis: RedisServer) -> None:
    """With config.lifecycle, on_event callbacks get the connect (with the app's event_data)
    and, when the token expires and the grace passes, the disconnect with 4001."""
    config = ConnectionConfig(
        redis_url=own_redis.url,
        instance_ttl=seconds(1),
        refresh_interval=0.2,
        token_grace=seconds(0.3),
        lifecycle=LifecycleSettings(debounce=0, refresh_interval=0.1),
    )
    manager = AuthConnectionManager(config)
    seen: list[LifecycleEvent] = []

    @manager.on_event
    async def record(event: LifecycleEvent) -> None:
        seen.append(event)

    async with running_server(auth_app(manager)) as base:
        await manager.initialize()
        try:
            token = jwt.encode({"sub": "ann", "exp": int(time.time()) + 1}, SECRET)
            client = await connect(f"{base}/ws/lobby?token={token}")
            await eventually(lambda: len(seen) == 3)
            assert (seen[0].kind.value, seen[0].data) == ("connect", {"plan": "pro"})
            await eventually(lambda: len(seen) == 6, timeout_units=6)
            assert (seen[5].kind.value, seen[5].code, seen[5].reason) == (
                "disconnect",
                CloseCode.TOKEN_EXPIRED,
                "token expired",
            )
            await client.close()
        finally:
            await manager.close()


async def test_events_start_once_redis_is_back(own_redis: RedisServer) -> None:
    """Redis away at start(): the app's startup does not fail (the lifecycle's writer keeps
    trying), and events run once Redis is back."""
    own_redis.kill()
    manager = DistributedWebSocketManager(
        own_redis.url, broker=MemoryBroker(MemoryBus(), "p"), lifecycle=SETTINGS
    )
    async with running_server(make_app(manager)) as base:
        starting = asyncio.ensure_future(manager.start())
        await asyncio.sleep(seconds(0.3))  # a few attempts fail meanwhile
        own_redis.start()
        try:
            async with asyncio.timeout(seconds(10)):
                await starting
            async with contextlib.aclosing(manager.events()) as events:
                await connect(f"{base}/ws/lobby?user_id=ann")
                assert await take(events, 1) == ["connect:ann:"]
        finally:
            await manager.close_all()
            await manager.stop()
