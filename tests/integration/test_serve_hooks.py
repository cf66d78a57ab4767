"""``roomcast serve`` with backend hooks: a real server process, real WebSocket clients and a
real aiohttp backend (``tests/hook_backend.py``) deciding connects, joins and publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.hook_backend import Backend
from tests.serve_process import start_serve, stop_serve
from tests.support import connect, recv, seconds

SECRET = b"hook-secret"


@contextlib.asynccontextmanager
async def served(
    backend: Backend, *hooks: str, flags: tuple[str, ...] = ()
) -> AsyncIterator[tuple[int, httpx.AsyncClient]]:
    """A server whose ``hooks`` (connect, join, publish) go to ``backend``."""
    urls = [word for hook in hooks for word in (f"--{hook}-hook-url", backend.url(hook))]
    server, port, http = await start_serve(
        *urls, *flags, env={"ROOMCAST_HOOK_SECRET": SECRET.decode()}
    )
    try:
        yield port, http
    finally:
        await stop_serve(server, http)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    hooks = Backend(SECRET)
    await hooks.start()
    try:
        yield hooks
    finally:
        await hooks.stop()


async def ask(client: ClientConnection, **message: Any) -> dict[str, Any]:
    """Send ``message`` and return the answer that refers to it."""
    message.setdefault("event_id", f"e{id(message)}")
    await client.send(json.dumps(message))
    while True:
        answer: dict[str, Any] = json.loads(await recv(client))
        refers = (answer.get(key) for key in ("ack_event_id", "ref_event_id", "ping_event_id"))
        if message["event_id"] in refers:
            return answer


async def test_the_connect_hook_says_who_the_client_is(backend: Backend) -> None:
    """The backend sees the cookie, query and path (of a head longer than one read); its user
    id, rooms and data hold for the connection (a room it did not grant is refused; the join
    hook gets the data)."""
    backend.answers["connect"] = {
        "allow": True,
        "user": "alice",
        "rooms": {"chat:*": ["join", "publish"]},
        "data": {"plan": "pro"},
    }
    async with served(backend, "connect", "join") as (port, http):
        url = f"ws://127.0.0.1:{port}/ws?lang=en"
        async with await connect(
            url, additional_headers={"Cookie": "sid=4f1c", "X-Pad": "p" * 6000}
        ) as client:
            assert (await ask(client, type="join", room="chat:lobby"))["type"] == "ack"
            refused = await ask(client, type="join", room="news")
            assert refused["cause"] == "not_granted"
            async with await connect(url) as other:
                await ask(other, type="join", room="chat:lobby")
                await client.send(json.dumps({"type": "publish", "room": "chat:lobby", "data": 1}))
                message = json.loads(await recv(other))
                assert (message["sender"], message["data"]) == ("alice", 1)
        (asked, *_) = backend.requests["connect"]
        assert asked["headers"]["cookie"] == "sid=4f1c"
        assert (asked["query"], asked["path"]) == ({"lang": "en"}, "/ws")
        assert backend.requests["join"][0]["data"] == {"plan": "pro"}
        assert backend.requests["join"][0]["user"] == "alice"
        assert backend.unsigned == 0
        text = (await http.get("/metrics")).text
        assert 'roomcast_hook_calls_total{hook="connect",outcome="allowed"} 2.0' in text
        assert 'roomcast_hook_latency_seconds_count{hook="connect"} 2.0' in text


async def test_the_connect_hook_refuses_with_its_status_and_reason(backend: Backend) -> None:
    """A refusal is the backend's HTTP status with its reason as the body."""
    backend.answers["connect"] = {"allow": False, "reason": "log in first", "status": 401}
    async with served(backend, "connect") as (port, http):
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{port}/ws")
        assert refused.value.response.status_code == 401
        assert refused.value.response.body == b"log in first\n"
        assert (await http.get("/healthz")).status_code == 200


async def test_pages_and_tokens_do_not_ask_the_connect_hook(backend: Backend) -> None:
    """GET /healthz on the WebSocket port is answered without the hook; with --jwt-secret an
    upgrade that brings a token is the token's, one without is the hook's."""
    token = jwt.encode({"sub": "bob", "exp": time.time() + 600}, "s" * 32, algorithm="HS256")
    flags = ("--jwt-secret", "s" * 32)
    async with served(backend, "connect", flags=flags) as (port, _):
        async with httpx.AsyncClient() as plain:
            assert (await plain.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        headers = {"Authorization": f"Bearer {token}"}
        async with await connect(f"ws://127.0.0.1:{port}/ws", additional_headers=headers) as bob:
            await ask(bob, type="join", room="r")
        assert backend.requests["connect"] == []
        async with await connect(f"ws://127.0.0.1:{port}/ws"):
            pass
        assert len(backend.requests["connect"]) == 1


async def test_the_join_hook_allows_with_data_and_denies_with_a_cause(backend: Backend) -> None:
    """An allowed join's ack carries the backend's data; a refused one is an error with the
    cause hook_denied, code 1008 and the backend's reason."""
    backend.answers["join"] = lambda asked: (
        {"allow": True, "data": {"topic": "hi"}}
        if asked["room"] == "open"
        else {"allow": False, "reason": "subscribers only"}
    )
    async with served(backend, "join") as (port, _):
        async with await connect(f"ws://127.0.0.1:{port}/ws?user_id=u") as client:
            ack = await ask(client, type="join", room="open")
            assert (ack["type"], ack["data"]) == ("ack", {"topic": "hi"})
            refused = await ask(client, type="join", room="vip")
            assert refused["type"] == "error"
            assert (refused["cause"], refused["code"]) == ("hook_denied", 1008)
            assert refused["error"] == "subscribers only"
            again = await ask(client, type="join", room="open")  # a repeated join: no call
            assert again["type"] == "ack"
        assert [asked["room"] for asked in backend.requests["join"]] == ["open", "vip"]
        with pytest.raises(InvalidStatus) as refused_path:
            await connect(f"ws://127.0.0.1:{port}/ws/open?user_id=u")
        assert refused_path.value.response.status_code == 400


async def test_the_publish_hook_replaces_and_denies(backend: Backend) -> None:
    """The backend's data is published instead of the client's; a refusal reaches only the
    publisher, as an error."""
    backend.answers["publish"] = lambda asked: (
        {"allow": False, "reason": "you are muted"}
        if asked["data"] == "shout"
        else {"allow": True, "data": str(asked["data"]).replace("darn", "d**n")}
    )
    async with served(backend, "publish") as (port, _):
        async with (
            await connect(f"ws://127.0.0.1:{port}/ws?user_id=a") as sender,
            await connect(f"ws://127.0.0.1:{port}/ws?user_id=b") as reader,
        ):
            await ask(sender, type="join", room="r")
            await ask(reader, type="join", room="r")
            refused = await ask(sender, type="publish", room="r", data="shout")
            assert (refused["cause"], refused["error"]) == ("hook_denied", "you are muted")
            assert (await ask(sender, type="publish", room="r", data="oh darn"))["type"] == "ack"
            message = json.loads(await recv(reader))
            assert message["data"] == "oh d**n"
        assert backend.requests["publish"][0] == {
            "hook": "publish",
            "user": "a",
            "connection": backend.requests["publish"][0]["connection"],
            "room": "r",
            "data": "shout",
        }


async def test_a_connections_messages_wait_in_order_behind_a_hook(backend: Backend) -> None:
    """While a publish waits for a slow hook, the same client's later messages wait behind
    it (answers in order), and other clients are served at once."""
    async with (
        served(backend, "publish") as (port, _),
        await connect(f"ws://127.0.0.1:{port}/ws?user_id=a") as slow,
        await connect(f"ws://127.0.0.1:{port}/ws?user_id=b") as other,
    ):
        await ask(slow, type="join", room="r")
        backend.delay = seconds(0.3)
        for message in (
            {"type": "publish", "room": "r", "data": 1, "event_id": "p1"},
            {"type": "ping", "event_id": "q"},
            {"type": "publish", "room": "r", "data": 2, "event_id": "p2"},
        ):
            await slow.send(json.dumps(message))
        async with asyncio.timeout(seconds(0.2)):
            pong = await ask(other, type="ping")  # not held up by the slow hook
        assert pong["type"] == "pong"
        answers = [json.loads(await recv(slow)) for _ in range(3)]
        order = [a.get("ack_event_id") or a.get("ping_event_id") for a in answers]
        assert order == ["p1", "q", "p2"]


async def raw_answer(port: int, request: bytes, timeout_units: float = 5) -> bytes:
    """What the server answers ``request`` on a plain socket, until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(seconds(timeout_units)):
            return await reader.read()
    finally:
        writer.close()


UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


async def test_the_head_reader_answers_what_it_cannot_take(backend: Backend) -> None:
    """With a connect hook, roomcast reads the head itself: over 16 KiB is 431, a malformed
    head 400, a POST the usual 405, and a head that never ends is cut by the handshake
    timeout; none of these asks the hook."""
    flags = ("--handshake-timeout", str(seconds(1.5)))
    async with served(backend, "connect", flags=flags) as (port, http):
        huge = UPGRADE.format(path="/ws", extra=f"Cookie: {'x' * 17000}\r\n").encode()
        assert (await raw_answer(port, huge)).startswith(b"HTTP/1.1 431 ")
        assert (await raw_answer(port, b"GET /ws HTTP/1.1\r\nBad Header\r\n\r\n")).startswith(
            b"HTTP/1.1 400 "
        )
        posted = await raw_answer(
            port, b"POST /api/publish HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        )
        assert posted.startswith(b"HTTP/1.1 405 ")
        began = time.monotonic()
        assert await raw_answer(port, b"GET /ws HTTP/1.1\r\nHost: x\r\n") == b""
        assert time.monotonic() - began < seconds(4)
        assert backend.requests["connect"] == []
        assert (await http.get("/healthz")).status_code == 200


async def test_a_client_gone_while_its_connect_hook_runs_is_forgotten(backend: Backend) -> None:
    """A client that leaves while the backend decides frees its socket; the decision, when it
    comes, is dropped, and the server serves the next clients."""
    backend.delay = seconds(0.3)
    async with served(backend, "connect") as (port, http):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE.format(path="/ws", extra="").encode())
        await writer.drain()
        while not backend.in_flight:  # noqa: ASYNC110 - the backend signals nothing
            await asyncio.sleep(0.01)
        writer.transport.abort()
        await asyncio.sleep(seconds(0.5))
        backend.delay = 0
        async with await connect(f"ws://127.0.0.1:{port}/ws") as client:
            assert (await ask(client, type="join", room="r"))["type"] == "ack"
        text = (await http.get("/metrics")).text
        assert "roomcast_connections 0.0" in text or "roomcast_connections 1.0" in text
        assert 'roomcast_hook_in_flight{hook="connect"} 0.0' in text


async def test_a_connect_hooks_expiry_closes_the_connection(backend: Backend) -> None:
    """``expires_at`` closes the connection as a token's ``exp`` would: told (4001), then
    closed with 4001 after the grace."""
    backend.answers["connect"] = {"allow": True, "user": "eve", "expires_at": time.time() + 1}
    flags = ("--token-grace", str(seconds(0.5)))
    async with (
        served(backend, "connect", flags=flags) as (port, _),
        await connect(f"ws://127.0.0.1:{port}/ws") as client,
    ):
        warning = json.loads(await recv(client, 5))
        assert (warning["type"], warning["code"]) == ("error", 4001)
        async with asyncio.timeout(seconds(5)):
            await client.wait_closed()
        assert client.close_code == 4001
