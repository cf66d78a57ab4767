"""Every form of ``exp`` that a token may pass the connect check with also ends the live
connection: a real ``roomcast serve`` process, and an ``AuthConnectionManager`` on Redis.

PyJWT checks ``exp`` with ``int()``, so ``"exp": "1700000000"`` (a numeric string) is a valid
expiry; roomcast once armed its expiry clock only for numbers, and such a token, on connect or
sent as a refresh, never expired.  Tokens carry whole seconds, so the expiries here are a few
real seconds ahead; the grace is in scaled time units.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from roomcast import CloseCode
from tests.redis_support import RedisServer, free_port
from tests.support import connect, recv, seconds

SECRET = "exp-forms-secret-exp-forms-secret-xx"


def token(user: str, exp: Any, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": exp, **claims}, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def serving(*options: str) -> AsyncIterator[int]:
    """``roomcast serve --jwt-secret`` as a real process; yields its port."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast.serve.cli",
        "serve",
        "--port",
        str(port),
        "--api-port",
        "-1",
        "--no-demo",
        *options,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ROOMCAST_JWT_SECRET": SECRET},
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(seconds(20)):
            while b"WebSocket clients:" not in await process.stderr.readline():
                if process.stderr.at_eof():
                    raise AssertionError("roomcast serve exited before listening")
        # Keep reading its log, so that a full pipe can never stall the server.
        drain = asyncio.create_task(process.stderr.read())
        yield port
        drain.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def call(client: ClientConnection, **message: Any) -> dict[str, Any]:
    await client.send(json.dumps(message))
    answer = json.loads(await recv(client))
    assert isinstance(answer, dict)
    return answer


async def warned_then_closed(client: ClientConnection) -> None:
    """The client gets the expiry error (4001), then the close (4001) after the grace."""
    warning = json.loads(await recv(client, timeout_units=10))
    assert warning["type"] == "error" and warning["code"] == CloseCode.TOKEN_EXPIRED
    with pytest.raises(ConnectionClosed):
        await recv(client, timeout_units=10)
    assert client.close_code == CloseCode.TOKEN_EXPIRED


async def test_a_numeric_string_exp_expires_on_a_live_serve_process() -> None:
    """A token whose exp is a numeric string a few seconds ahead, presented at connect or
    sent as a refresh, is warned with 4001 at that time and closed with 4001 after the
    grace; a string exp far ahead sent as a refresh keeps its connection open."""
    # Timeline (exp in whole seconds): now+3 the connect and refresh tokens expire, the
    # clients are warned; one grace later they are closed; the far-ahead one stays.
    soon = int(time.time()) + 3
    # (--jwt-leeway 0: expiry comes at exp itself; the leeway would move it by as much.)
    async with serving("--token-grace", str(seconds(1)), "--jwt-leeway", "0") as port:
        base = f"ws://127.0.0.1:{port}/ws/r"
        at_connect = await connect(f"{base}?token={token('ann', str(soon))}")
        refreshed = await connect(f"{base}?token={token('bob', int(time.time()) + 60)}")
        renewed = await connect(f"{base}?token={token('cid', soon)}")
        reply = await call(refreshed, type="auth", token=token("bob", str(soon)))
        assert reply["type"] == "ack"
        reply = await call(renewed, type="auth", token=token("cid", str(soon + 600)))
        assert reply["type"] == "ack"
        await asyncio.gather(warned_then_closed(at_connect), warned_then_closed(refreshed))
        # Still connected: it answers, and no warning came first.
        assert (await call(renewed, type="join", room="later"))["type"] == "ack"
        await renewed.close()


async def test_a_numeric_string_exp_expires_on_the_auth_connection_manager(
    own_redis: RedisServer,
) -> None:
    """AuthConnectionManager (the FastAPI path) arms the same expiry for a numeric-string
    exp, at connect and on refresh_token: warned with 4001, then closed with 4001."""
    from tests.integration.test_auth_manager import instances
    from tests.integration.test_auth_manager import token as audience_token

    soon = int(time.time()) + 3
    async with instances(own_redis, 1, token_grace=seconds(1)) as (_, (base,)):
        at_connect = await connect(f"{base}/ws/lobby?token={audience_token('ann', exp=str(soon))}")
        refreshed = await connect(f"{base}/ws/lobby?token={audience_token('bob')}")
        await refreshed.send(f"auth {audience_token('bob', exp=str(soon))}")
        assert await recv(refreshed) == "refreshed"
        await asyncio.gather(warned_then_closed(at_connect), warned_then_closed(refreshed))
