"""The same rules through the FastAPI face: ``ConnectionConfig(rules=...)`` on real Redis,
behind real uvicorn servers, with real clients.

The app below is what a user writes: connect with the room of the path, then a few commands
of its own (join, publish after ``manager.check``, a token refresh) that answer in plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from roomcast import (
    AuthConnectionManager,
    AuthenticationError,
    ConnectionConfig,
    Identity,
    JWTAuthenticator,
    RoomRefused,
)
from roomcast.rules import Action, Namespaces, Rules
from tests.redis_support import RedisServer
from tests.support import connect, recv, running_server, seconds

SECRET = "room-rules-secret-room-rules-secret-room"
authenticator = JWTAuthenticator(SECRET, leeway=0)
RULES = Rules(
    Namespaces.from_mapping(
        {
            "chat": {"max_rooms_per_connection": 2},
            "news": {"publish": False},
            "stage": {"max_members": 2},
            "team": {"presence_for": "members"},
        }
    )
)


def token(user: str = "alice", rooms: Any = None) -> str:
    """A token for ``user``; ``rooms`` is the capability claim (None: no claim)."""
    claims: dict[str, Any] = {"sub": user, "exp": int(time.time()) + 60}
    if rooms is not None:
        claims["rooms"] = rooms
    return jwt.encode(claims, SECRET, algorithm="HS256")


def make_app(manager: AuthConnectionManager) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws/{room}")
    async def endpoint(websocket: WebSocket, room: str) -> None:
        try:
            conn_id, _ = await manager.connect(
                websocket=websocket, authenticator=authenticator, room=room
            )
        except AuthenticationError:
            return
        try:
            while True:
                command, _, argument = (await websocket.receive_text()).partition(" ")
                await websocket.send_text(await answer(manager, conn_id, command, argument))
        except WebSocketDisconnect:
            await manager.disconnect(conn_id)

    return app


async def answer(manager: AuthConnectionManager, conn_id: str, command: str, argument: str) -> str:
    """The app's own commands: what an endpoint does on a client's behalf."""
    try:
        if command == "join":
            return f"joined {argument}" if await manager.join_room(conn_id, argument) else "no"
        if command == "auth":
            await manager.refresh_token(conn_id, argument, authenticator)
            return "refreshed"
    except RoomRefused as exc:
        return f"refused {exc.cause}"
    except AuthenticationError as exc:
        return f"refused: {exc}"
    room, _, text = argument.partition(" ")
    refusal = manager.check(conn_id, room, Action(command))
    if refusal is not None:
        return f"refused {refusal.cause}"
    if command == "publish":
        await manager.broadcast_to_room(room, text)
    return "ok"


@contextlib.asynccontextmanager
async def instances(
    redis: RedisServer, count: int = 1, **options: Any
) -> AsyncIterator[tuple[list[AuthConnectionManager], list[str]]]:
    options.setdefault("rules", RULES)
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


async def members(manager: AuthConnectionManager, room: str, count: int) -> None:
    """Wait until Redis lists ``count`` connections in ``room``."""
    async with asyncio.timeout(seconds(5)):
        while len(await manager.get_room_members(room)) != count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def ask(client: ClientConnection, command: str) -> str:
    await client.send(command)
    return str(await recv(client))


# (room, user, claim, expected: "ok" or the cause of the 403)
CONNECT_CASES = [
    ("news", "alice", {"news": ["join"]}, "ok"),
    ("sports", "alice", {"news": ["join"]}, "not_granted"),
    ("chat:lobby", "alice", {"chat:*": ["join"]}, "ok"),
    ("chatroom", "alice", {"chat:*": ["join"]}, "not_granted"),
    ("anything", "alice", {"*": ["join"]}, "ok"),
    ("news", "alice", {"news": ["publish"]}, "not_granted"),
    ("lobby", "alice", None, "ok"),
    ("inbox#alice", "alice", {"news": ["join"]}, "ok"),
    ("inbox#bob", "alice", {"*": ["*"]}, "personal_room"),
    ("dm#alice,bob", "bob", None, "ok"),
]


async def test_joins_at_connect_follow_the_capability_claim(own_redis: RedisServer) -> None:
    """Exact names, ``chat:*`` (not ``chatroom``), ``*``, no claim (the namespace's allow),
    personal rooms (one's own without a grant, another's never): accepted or refused with
    403 whose body names the cause; nothing refused is registered."""
    async with instances(own_redis) as ((manager,), (base,)):
        for room, user, claim, expected in CONNECT_CASES:
            url = f"{base}/ws/{urllib.parse.quote(room)}?token={token(user, claim)}"
            if expected == "ok":
                client = await connect(url)
                assert await ask(client, "join " + room) == "no"  # a member already
                await client.close()
                continue
            with pytest.raises(InvalidStatus) as refused:
                await connect(url)
            response = refused.value.response
            assert (room, response.status_code) == (room, 403)
            assert f"({expected})" in response.body.decode()
            assert await manager.get_room_members(room) == set()


async def test_a_malformed_claim_is_refused_as_a_bad_token(own_redis: RedisServer) -> None:
    """A capability claim of the wrong shape gets 401 with the reason, as a bad token; a
    manager without rules never reads the claim."""
    async with instances(own_redis) as ((manager,), (base,)):
        for claim in ("chat", {"chat": "join"}, {"chat": ["fly"]}):
            with pytest.raises(InvalidStatus) as refused:
                await connect(f"{base}/ws/chat?token={token('alice', claim)}")
            assert refused.value.response.status_code == 401
            assert "'rooms' claim" in refused.value.response.body.decode()
        assert await manager.get_connection_count() == 0
    async with instances(own_redis, rules=None) as (_, (base,)):
        client = await connect(f"{base}/ws/inbox%23bob?token={token('alice', 'chat')}")
        assert await ask(client, "publish news hi") == "ok"
        await client.close()


async def test_join_room_limits_and_checks_for_the_app(own_redis: RedisServer) -> None:
    """join_room applies the grant and max_rooms_per_connection per namespace; check()
    answers publish (refused where the namespace forbids it or the claim lacks it), presence
    (members only where the namespace says so) and history."""
    claim = {"chat:*": ["*"], "lobby": ["join"], "news:*": ["*"], "team:a": ["*"]}
    async with instances(own_redis) as ((manager,), (base,)):
        client = await connect(f"{base}/ws/chat:a?token={token('alice', claim)}")
        assert await ask(client, "join chat:b") == "joined chat:b"
        assert await ask(client, "join chat:c") == "refused too_many_rooms"
        assert await ask(client, "join lobby") == "joined lobby"  # another namespace
        assert await ask(client, "join sports") == "refused not_granted"
        assert await ask(client, "join news:today") == "joined news:today"
        assert await ask(client, "publish news:today hi") == "refused namespace_forbids"
        assert await ask(client, "publish lobby hi") == "refused not_granted"
        assert await ask(client, "history lobby") == "refused not_granted"
        assert await ask(client, "history chat:a") == "ok"
        assert await ask(client, "presence team:a") == "refused namespace_forbids"
        assert await ask(client, "join team:a") == "joined team:a"
        assert await ask(client, "presence team:a") == "ok"
        assert await ask(client, "publish chat:a hi") == "hi"  # its own message, then
        assert await recv(client) == "ok"
        assert manager.check("unknown", "chat:a", Action.JOIN) is not None
        await client.close()


async def test_max_members_counts_members_on_every_instance(own_redis: RedisServer) -> None:
    """A room of a namespace with max_members = 2 holds two connections across two
    instances; a third, on either, is refused with room_full, by connect or join_room."""
    async with instances(own_redis, 2) as (managers, urls):
        first = await connect(f"{urls[0]}/ws/stage:x?token={token('ann')}")
        second = await connect(f"{urls[1]}/ws/stage:x?token={token('bob')}")
        await members(managers[0], "stage:x", 2)
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{urls[0]}/ws/stage:x?token={token('cid')}")
        assert "(room_full)" in refused.value.response.body.decode()
        third = await connect(f"{urls[1]}/ws/lobby?token={token('cid')}")
        assert await ask(third, "join stage:x") == "refused room_full"
        await second.close()
        await members(managers[0], "stage:x", 1)
        assert await ask(third, "join stage:x") == "joined stage:x"
        for client in (first, third):
            await client.close()


async def test_a_refresh_that_revokes_a_room_leaves_it_and_says_so(own_redis: RedisServer) -> None:
    """A refreshed token that no longer grants a room: the client is told in one revoked
    message, is out of the room here and in Redis, and hears nothing more from it; a token
    with a malformed claim is refused and the old grants stand."""
    async with instances(own_redis) as ((manager,), (base,)):
        client = await connect(f"{base}/ws/chat:a?token={token('alice', {'chat:*': ['*']})}")
        assert await ask(client, "join chat:b") == "joined chat:b"
        assert (await ask(client, f"auth {token('alice', 'chat')}")).startswith("refused: ")
        assert await ask(client, "publish chat:b still") == "still"
        assert await recv(client) == "ok"

        await client.send(f"auth {token('alice', {'chat:a': ['*']})}")
        assert json.loads(await recv(client)) == {
            "type": "revoked",
            "rooms": ["chat:b"],
            "cause": "not_granted",
            "reason": "the refreshed token no longer grants these rooms; they were left",
        }
        assert await recv(client) == "refreshed"
        (conn_id,) = await manager.get_user_connections("alice")
        assert await manager.get_room_members("chat:b") == set()
        assert await manager.get_room_members("chat:a") == {conn_id}
        assert await manager.broadcast_to_room("chat:b", "gone") == 0
        await manager.broadcast_to_room("chat:a", "still here")
        assert await recv(client) == "still here"
        assert await ask(client, "join chat:b") == "refused not_granted"
        await client.close()


async def test_rules_and_a_room_authorizer_both_decide(own_redis: RedisServer) -> None:
    """With both, a join needs both: the authorizer's refusal is a plain 403, the rules'
    a RoomRefused with its cause."""

    def no_secrets(identity: Identity, room: str) -> bool:
        return not room.endswith("secret")

    async with instances(own_redis, room_authorizer=no_secrets) as (_, (base,)):
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{base}/ws/chat:secret?token={token('alice', {'*': ['*']})}")
        assert refused.value.response.body.decode() == "not allowed in this room\n"
        client = await connect(f"{base}/ws/chat:a?token={token('alice', {'chat:*': ['join']})}")
        assert await ask(client, "join chat:secret") == "refused: not allowed in this room"
        assert await ask(client, "join news") == "refused not_granted"
        await client.close()


async def test_joins_racing_for_the_last_place_of_a_connection(own_redis: RedisServer) -> None:
    """Two join_room calls of one connection that both pass the checks before either joins
    (an async authorizer holds them): the per-connection cap is checked again just before
    joining, so only one gets in."""
    waiting: list[str] = []
    both = asyncio.Event()

    async def holds_two(identity: Identity, room: str) -> bool:
        if room != "chat:a":
            waiting.append(room)
            if len(waiting) == 2:
                both.set()
            await both.wait()
        return True

    async with instances(own_redis, room_authorizer=holds_two) as ((manager,), (base,)):
        client = await connect(f"{base}/ws/chat:a?token={token('alice', {'chat:*': ['*']})}")
        await members(manager, "chat:a", 1)
        (conn_id,) = await manager.get_user_connections("alice")
        async with asyncio.timeout(seconds(5)):
            results = await asyncio.gather(
                manager.join_room(conn_id, "chat:b"),
                manager.join_room(conn_id, "chat:c"),
                return_exceptions=True,
            )
        (refused,) = [r for r in results if isinstance(r, RoomRefused)]
        assert results.count(True) == 1
        assert (refused.cause, refused.status) == ("too_many_rooms", 403)
        assert len(await manager.get_room_members(refused.room)) == 0
        await client.close()
