"""Hook drills: a backend that hangs, fails, answers garbage or is gone, under each failure
policy.  A real ``roomcast serve`` process, real WebSocket clients, a real aiohttp backend in
the test.  Every client must get its answer within the hook timeout and a margin, nobody
hangs, and the server keeps serving: ``/healthz``, pings, and messages to clients that wait
for nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.hook_backend import Backend, Trouble
from tests.serve_process import start_serve, stop_serve
from tests.support import connect, recv, seconds

TIMEOUT = seconds(0.5)
"""The hook timeout of the drills' servers."""
MARGIN = seconds(1.0)
"""How much later than the hook timeout an answer may come (a loaded machine)."""

FAILURES = {
    Trouble.HANG: "timeout",
    Trouble.FAIL: "status",
    Trouble.GARBAGE: "invalid",
    None: "unreachable",
}


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    hooks = Backend()
    await hooks.start()
    try:
        yield hooks
    finally:
        await hooks.stop()


async def answer_to(client: ClientConnection, event_id: str) -> dict[str, Any]:
    """The answer that refers to ``event_id`` (other messages are skipped)."""
    while True:
        answer: dict[str, Any] = json.loads(await recv(client, 10))
        refers = (answer.get(key) for key in ("ack_event_id", "ref_event_id", "ping_event_id"))
        if event_id in refers:
            return answer


async def timed(what: Any) -> tuple[Any, float]:
    """What the awaitable gave (or raised), and how long it took."""
    began = time.monotonic()
    try:
        result = await what
    except Exception as exc:
        result = exc
    return result, time.monotonic() - began


@pytest.mark.parametrize("policy", ["deny", "allow"])
@pytest.mark.parametrize(
    "trouble", [Trouble.HANG, Trouble.FAIL, Trouble.GARBAGE, None], ids=lambda t: str(t)
)
async def test_a_failing_backend_decides_by_the_policy_and_nobody_hangs(
    backend: Backend, trouble: Trouble | None, policy: str
) -> None:
    """Each of a connect, a join and a publish is decided by the policy within the timeout
    (deny: HTTP 503, errors with the cause hook_unavailable and code 1013; allow: admitted,
    acked), while /healthz, pings and deliveries to other clients go on (None: the backend
    refuses connections)."""
    flags = [f"--{hook}-hook-url={backend.url(hook)}" for hook in ("connect", "join", "publish")]
    server, port, http = await start_serve(
        *flags, f"--hook-timeout={TIMEOUT}", f"--hook-failure-policy={policy}", "--no-presence"
    )
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        async with await connect(url) as client, await connect(url) as watcher:
            for member in (client, watcher):
                await member.send(json.dumps({"type": "join", "room": "r", "event_id": "j"}))
                assert (await answer_to(member, "j"))["type"] == "ack"
            if trouble is None:
                await backend.stop()  # (the port now refuses connections)
            else:
                backend.answers = dict.fromkeys(backend.answers, trouble)
            await client.send(json.dumps({"type": "join", "room": "s", "event_id": "j2"}))
            await client.send(
                json.dumps({"type": "publish", "room": "r", "data": 1, "event_id": "p"})
            )
            newcomer, join, healthz = await asyncio.gather(
                timed(connect(url)),
                timed(answer_to(client, "j2")),
                timed(_meanwhile(http, watcher)),
            )
            publish = await timed(answer_to(client, "p"))  # (it waited behind the join)
            assert healthz[0] is None, healthz[0]
            assert newcomer[1] < TIMEOUT + MARGIN
            assert join[1] < TIMEOUT + MARGIN
            assert publish[1] + join[1] < 2 * TIMEOUT + MARGIN
            if policy == "deny":
                assert isinstance(newcomer[0], InvalidStatus), newcomer[0]
                assert newcomer[0].response.status_code == 503
                for refused in (join[0], publish[0]):
                    assert refused["type"] == "error", refused
                    assert (refused["cause"], refused["code"]) == ("hook_unavailable", 1013)
            else:
                assert isinstance(newcomer[0], ClientConnection), newcomer[0]
                await newcomer[0].close()
                assert join[0]["type"] == "ack"
                assert publish[0]["type"] == "ack"
        text = (await http.get("/metrics")).text
        kind = FAILURES[trouble]
        for hook in ("connect", "join", "publish"):
            line = f'roomcast_hook_failures_total{{hook="{hook}",kind="{kind}"}} 1.0'
            assert line in text, (line, [n for n in text.splitlines() if "failures_total{" in n])
    finally:
        await stop_serve(server, http)


async def _meanwhile(http: httpx.AsyncClient, watcher: ClientConnection) -> None:
    """While hooks are in trouble: /healthz answers, a message published over the API
    reaches a client that waits for nothing, and that client's ping is answered; each within
    a short bound (None: all went well)."""
    async with asyncio.timeout(seconds(0.4)):
        assert (await http.get("/healthz")).status_code == 200
        published = await http.post(
            "/api/publish", json={"room": "r", "data": "flow"}, headers={"X-API-Key": "k"}
        )
        assert published.status_code < 300, published.text
        await watcher.send(json.dumps({"type": "ping", "event_id": "w"}))
        seen: list[str] = []
        while len(seen) < 2:
            message = json.loads(await recv(watcher))
            if message.get("data") == "flow" or message.get("ping_event_id") == "w":
                seen.append(message["type"])
