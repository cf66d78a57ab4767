"""AuthConnectionManager on a real Redis, behind real uvicorn servers, with real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from roomcast import (
    AuthConnectionManager,
    AuthenticationError,
    CloseCode,
    ConnectionConfig,
    Identity,
    JWTAuthenticator,
)
from roomcast.presence.connection_registry import StaleConnection
from tests.redis_support import RedisServer
from tests.support import connect, eventually, recv, running_server, seconds

SECRET = "auth-manager-secret-auth-manager-secret"
# (leeway 0: the expiry tests expect a token to expire at its exp, not a leeway later)
authenticator = JWTAuthenticator(SECRET, audience="chat", leeway=0)


def token(user: str = "alice", **claims: Any) -> str:
    payload = {"sub": user, "aud": "chat", "exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


async def registered(manager: AuthConnectionManager, user: str, count: int) -> None:
    """Wait until Redis lists ``count`` connections of ``user``."""
    async with asyncio.timeout(seconds(5)):
        while len(await manager.get_user_connections(user)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def make_app(manager: AuthConnectionManager) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws/{room}")
    async def endpoint(websocket: WebSocket, room: str) -> None:
        try:
            conn_id, _ = await manager.connect(
                websocket=websocket,
                token=websocket.query_params.get("token"),
                authenticator=authenticator,
                room=room,
            )
        except AuthenticationError:
            return
        try:
            while True:
                text = await websocket.receive_text()
                if text.startswith("auth "):  # the app's own way to pass a fresh token
                    try:
                        await manager.refresh_token(conn_id, text[5:], authenticator)
                        await websocket.send_text("refreshed")
                    except AuthenticationError as exc:
                        await websocket.send_text(f"refused: {exc}")
        except WebSocketDisconnect:
            await manager.disconnect(conn_id)

    return app


@contextlib.asynccontextmanager
async def instances(
    redis: RedisServer, count: int = 2, **options: Any
) -> AsyncIterator[tuple[list[AuthConnectionManager], list[str]]]:
    config = ConnectionConfig(
        redis_url=redis.url, instance_ttl=0.6, refresh_interval=0.2, **options
    )
    managers = [AuthConnectionManager(config) for _ in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(running_server(make_app(m))) for m in managers]
        for manager in managers:
            await manager.initialize()
            stack.push_async_callback(manager.close)
        yield managers, urls


async def test_seed_walkthrough(own_redis: RedisServer) -> None:
    """The seed's example: initialize, connect with a token, send_to_user(message, user_id),
    broadcast, disconnect(conn_id), close."""
    config = ConnectionConfig(
        redis_url=own_redis.url,
        connection_ttl=3600,
        max_redis_connections=100,
    )
    manager = AuthConnectionManager(config)
    await manager.initialize()
    accepted: list[tuple[str, str]] = []
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(ws: WebSocket) -> None:
        conn_id, user_id = await manager.connect(
            websocket=ws, token=ws.query_params["token"], authenticator=authenticator
        )
        accepted.append((conn_id, user_id))
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive_text()

    try:
        async with running_server(app) as base:
            client = await connect(f"{base}/ws?token={token('user123')}")
            await eventually(lambda: len(accepted) == 1)
            conn_id, user_id = accepted[0]
            assert user_id == "user123"
            await manager.send_to_user("for you", user_id)
            await manager.broadcast("for all")
            assert [await recv(client), await recv(client)] == ["for you", "for all"]
            assert await manager.is_user_online("user123")
            assert await manager.get_connection_count() == 1
            await manager.disconnect(conn_id)
            assert not await manager.is_user_online("user123")
            await client.close()
    finally:
        await manager.close()


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "garbage",
        token(exp=int(time.time()) - 600),
        token(aud="billing"),
        jwt.encode(
            {"sub": "eve", "aud": "chat", "exp": 2**31}, "wrong-secret-wrong-secret-wrong-secret"
        ),
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJldmUiLCJhdWQiOiJjaGF0IiwiZXhwIjo5OTk5OTk5OTk5fQ.",
    ],
    ids=["missing", "malformed", "expired", "wrong-audience", "forged", "alg-none"],
)
async def test_bad_tokens_are_refused_with_401_and_nothing_registered(
    own_redis: RedisServer, bad: str | None
) -> None:
    """Every bad token gets HTTP 401 on the handshake; nothing is registered, here or in
    Redis."""
    async with instances(own_redis, 1) as ((manager,), (base,)):
        query = "" if bad is None else f"?token={bad}"
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{base}/ws/lobby{query}")
        assert refused.value.response.status_code == 401
        assert manager.hub.active_connections == 0
        assert await manager.get_connection_count() == 0
        assert await manager.get_room_members("lobby") == set()


async def test_room_hook_user_cap_and_origin_hold_across_instances(
    own_redis: RedisServer,
) -> None:
    """The room authorizer refuses (403) a room the user may not enter; the per-user cap
    counts connections on both instances; a foreign Origin is refused (403)."""

    def may_join(identity: Identity, room: str) -> bool:
        return room != "staff" or identity.claims.get("role") == "staff"

    async with instances(
        own_redis,
        max_connections_per_user=2,
        room_authorizer=may_join,
        allowed_origins=frozenset({"https://chat.example"}),
    ) as (managers, urls):
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{urls[0]}/ws/staff?token={token()}")
        assert refused.value.response.status_code == 403
        staff = await connect(f"{urls[0]}/ws/staff?token={token('bob', role='staff')}")

        first = await connect(f"{urls[0]}/ws/lobby?token={token()}")
        second = await connect(f"{urls[1]}/ws/lobby?token={token()}")
        await registered(managers[0], "alice", 2)
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{urls[1]}/ws/lobby?token={token()}")
        assert refused.value.response.status_code == 403
        assert len(await managers[0].get_user_connections("alice")) == 2

        with pytest.raises(InvalidStatus) as refused:
            await connect(
                f"{urls[0]}/ws/lobby?token={token('carol')}",
                origin="https://evil.example",
            )
        assert refused.value.response.status_code == 403
        assert not await managers[0].is_user_online("carol")
        for client in (staff, first, second):
            await client.close()


async def test_cluster_wide_queries_and_purge_of_a_dead_instance(own_redis: RedisServer) -> None:
    """Room members, online users and counts span instances; when an instance dies without
    cleaning up, a survivor purges its records within the instance TTL, reports each purged
    connection, and the queries are right again."""
    stale: list[StaleConnection] = []

    async def on_stale(connection: StaleConnection) -> None:
        stale.append(connection)

    async with instances(own_redis, on_stale=on_stale) as (managers, urls):
        survivor, victim = managers
        ann = await connect(f"{urls[0]}/ws/lobby?token={token('ann')}")
        bob = await connect(f"{urls[1]}/ws/lobby?token={token('bob')}")
        for manager in managers:  # until each connect() has returned (registered in Redis)
            await eventually(lambda m=manager: len(m._identities) == 1)
        assert len(await survivor.get_room_members("lobby")) == 2
        assert await survivor.is_user_online("bob")
        assert await survivor.get_connection_count() == 2

        # A crash: the victim stops refreshing and never cleans up.
        await victim.presence._tasks.cancel_all()
        victim.presence._local.clear()
        began = asyncio.get_running_loop().time()
        await eventually(lambda: len(stale) == 1, timeout_units=10)
        assert asyncio.get_running_loop().time() - began < 0.6 + 0.2 + 2
        assert stale[0].user_id == "bob" and stale[0].rooms == ("lobby",)
        assert not await survivor.is_user_online("bob")
        assert await survivor.get_room_members("lobby") == {
            c.connection_id for c in survivor.hub.get_room_members("lobby")
        }
        assert await survivor.get_connection_count() == 1
        assert survivor.presence.purged == 1
        await ann.close()
        await bob.close()


def staff_only(identity: Identity, room: str) -> bool:
    return room != "staff" or identity.claims.get("role") == "staff"


async def test_join_and_leave_keep_the_registry_in_step(own_redis: RedisServer) -> None:
    """join_room asks the authorizer and records the room in Redis; leave_room removes it;
    unknown connections are refused quietly."""
    async with instances(own_redis, 1, room_authorizer=staff_only) as ((manager,), (base,)):
        client = await connect(f"{base}/ws/lobby?token={token('bob')}")
        await eventually(lambda: manager.hub.active_connections == 1)
        (connection,) = manager.hub.get_user_connections("bob")
        conn_id = connection.connection_id
        await eventually(lambda: manager.identity(conn_id) is not None)  # connect() returned
        assert await manager.join_room(conn_id, "games")
        assert await manager.get_room_members("games") == {conn_id}
        with pytest.raises(AuthenticationError, match="not allowed"):
            await manager.join_room(conn_id, "staff")
        assert await manager.leave_room(conn_id, "games")
        assert not await manager.leave_room(conn_id, "games")
        assert await manager.get_room_members("games") == set()
        assert not await manager.join_room("unknown", "games")
        assert await manager.broadcast_to_room("lobby", "hi") == 1
        assert await recv(client) == "hi"
        assert not await manager.disconnect("unknown")
        await client.close()


async def test_expiring_tokens_are_announced_closed_or_refreshed(own_redis: RedisServer) -> None:
    """At expiry the client is told (error 4001); without a fresh token it is closed with
    4001 after the grace; with one (same user) it stays; another user's token is refused."""
    soon = int(time.time()) + 2
    async with instances(own_redis, 1, token_grace=seconds(0.5)) as ((manager,), (base,)):
        lapsing = await connect(f"{base}/ws/lobby?token={token('ann', exp=soon)}")
        renewing = await connect(f"{base}/ws/lobby?token={token('bob', exp=soon)}")
        await registered(manager, "bob", 1)
        await renewing.send(f"auth {token('eve')}")
        assert str(await recv(renewing)).startswith("refused: the token is for another user")
        warning = json.loads(await recv(renewing, timeout_units=5))
        assert warning["code"] == CloseCode.TOKEN_EXPIRED
        await renewing.send(f"auth {token('bob')}")
        assert await recv(renewing) == "refreshed"
        assert json.loads(await recv(lapsing, timeout_units=5))["code"] == 4001
        with pytest.raises(ConnectionClosed):
            await recv(lapsing, timeout_units=5)
        assert lapsing.close_code == CloseCode.TOKEN_EXPIRED
        await asyncio.sleep(seconds(1))
        assert manager.hub.get_user_connections("bob")
        await renewing.close()


async def test_kill_9_of_an_instance_leaves_no_registry_entries(own_redis: RedisServer) -> None:
    """An instance process killed with SIGKILL cleans nothing up; a survivor purges its
    entries within instance_ttl + refresh_interval (+ slack), reports each as stale, and its
    queries show only the live members."""
    import os
    import subprocess
    import sys

    from tests.redis_support import free_port

    stale: list[StaleConnection] = []
    port = free_port()
    victim = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.auth_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={
            **os.environ,
            "ROOMCAST_TEST_REDIS_URL": own_redis.url,
            "ROOMCAST_TEST_JWT_SECRET": SECRET,
        },
    )
    try:
        async with instances(own_redis, 1, on_stale=stale.append) as ((survivor,), (base,)):
            local = await connect(f"{base}/ws/lobby?token={token('ann')}")
            remote = None
            # The victim's authenticator expects no audience.
            plain = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, SECRET)
            async with asyncio.timeout(seconds(20)):
                while remote is None:
                    with contextlib.suppress(OSError, InvalidStatus):
                        remote = await connect(f"ws://127.0.0.1:{port}/ws/lobby?token={plain}")
                    await asyncio.sleep(0.05)
            await registered(survivor, "bob", 1)
            await registered(survivor, "ann", 1)
            assert len(await survivor.get_room_members("lobby")) == 2
            assert len(await survivor.presence.instances()) == 2

            victim.kill()
            victim.wait()
            began = asyncio.get_running_loop().time()
            await eventually(lambda: len(stale) == 1, timeout_units=10)
            assert asyncio.get_running_loop().time() - began < 1.0 + 0.3 + 2
            assert (stale[0].user_id, stale[0].rooms) == ("bob", ("lobby",))
            assert not await survivor.is_user_online("bob")
            (ann,) = survivor.hub.get_user_connections("ann")
            assert await survivor.get_room_members("lobby") == {ann.connection_id}
            assert await survivor.presence.instances() == {survivor.presence.instance_id}
            await local.close()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


async def test_token_taken_from_the_request_as_a_browser_sends_it(own_redis: RedisServer) -> None:
    """connect(token=None) reads the token from the bearer subprotocol (and selects
    "bearer", which browsers require) or from the Authorization header."""
    async with instances(own_redis, 1) as ((manager,), _):
        app = FastAPI()

        @app.websocket("/ws")
        async def endpoint(websocket: WebSocket) -> None:
            try:
                await manager.connect(websocket=websocket, authenticator=authenticator)
            except AuthenticationError:
                return
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    await websocket.receive_text()

        async with running_server(app) as base:
            browser = await connect(f"{base}/ws", subprotocols=["bearer", token("ann")])
            assert browser.subprotocol == "bearer"
            service = await connect(
                f"{base}/ws", additional_headers={"Authorization": f"Bearer {token('bob')}"}
            )
            await registered(manager, "ann", 1)
            await registered(manager, "bob", 1)
            with pytest.raises(InvalidStatus) as refused:
                await connect(f"{base}/ws")
            assert refused.value.response.status_code == 401
            await browser.close()
            await service.close()


async def test_an_endpoint_that_dies_leaves_no_registry_record(own_redis: RedisServer) -> None:
    """An endpoint that raises after connect (and never calls disconnect) still has its
    connection removed from Redis when it ends."""
    async with instances(own_redis, 1) as ((manager,), _):
        app = FastAPI()

        @app.websocket("/ws")
        async def endpoint(websocket: WebSocket) -> None:
            await manager.connect(websocket=websocket, authenticator=authenticator)
            await websocket.receive_text()
            raise RuntimeError("endpoint bug")

        async with running_server(app) as base:
            client = await connect(f"{base}/ws?token={token('ann')}")
            await registered(manager, "ann", 1)
            await client.send("boom")
            async with asyncio.timeout(seconds(5)):
                while await manager.is_user_online("ann"):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            assert manager.hub.active_connections == 0
            with contextlib.suppress(Exception):
                await client.close()
