"""Frame floods against a real ``roomcast serve`` process: a neighbour stays served.

Each case is one hostile client that sends cheap frames as fast as the socket takes them,
while a neighbour on the same process pings and measures how long its answers take.  The
neighbour's worst answer time is the figure that matters: it is how long the event loop was
held by the attacker.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from roomcast.errors import CloseCode
from tests.serve_process import (
    CONTINUATION,
    PING,
    TEXT,
    RawClient,
    client_frame,
    metric,
    start_serve,
    stop_serve,
)
from tests.support import connect, recv, seconds

FLOOD_FRAMES = 100_000


async def worst_ping_time(port: int, pinging: asyncio.Event, done: asyncio.Event) -> float:
    """Ping the server from a well-behaved client until ``done`` (``pinging`` is set at the
    first answer); the slowest answer."""
    neighbour = await connect(f"ws://127.0.0.1:{port}/ws?user_id=neighbour")
    worst = 0.0
    try:
        while not done.is_set():
            started = time.monotonic()
            await neighbour.send(json.dumps({"type": "ping"}))
            try:
                answer = json.loads(await recv(neighbour, timeout_units=30))
            except TimeoutError:
                return float("inf")
            assert answer["type"] == "pong"
            worst = max(worst, time.monotonic() - started)
            pinging.set()
            await asyncio.sleep(0.02)
    finally:
        await neighbour.close()
    return worst


@pytest.mark.parametrize(
    ("flags", "flood", "close_code"),
    [
        # The rate limit counts continuations: the first fragments pass, then the cap or
        # the limit ends the message and the connection.
        ((), CONTINUATION, CloseCode.MESSAGE_TOO_BIG),
        # Without a rate limit, the cap on fragments per message alone ends it.
        (("--rate-limit", "0"), CONTINUATION, CloseCode.MESSAGE_TOO_BIG),
        # Pings are counted too: a flood of them is cut off like a flood of messages.
        ((), PING, CloseCode.POLICY_VIOLATION),
    ],
    ids=["continuations", "continuations-no-rate-limit", "pings"],
)
async def test_a_flood_of_empty_frames_does_not_stall_the_server(
    flags: tuple[str, ...], flood: int, close_code: int
) -> None:
    """100,000 empty continuation (or ping) frames: the sender is closed, and a neighbour's
    pings are answered within 1 s throughout."""
    server, port, http = await start_serve(*flags)
    try:
        attacker = await RawClient.connect(port, "/ws?user_id=attacker")
        frames = client_frame(flood, fin=True) * FLOOD_FRAMES
        if flood == CONTINUATION:
            frames = client_frame(TEXT, b"{", fin=False) + client_frame(flood, fin=False) * (
                FLOOD_FRAMES - 1
            )
        pinging, done = asyncio.Event(), asyncio.Event()
        measuring = asyncio.create_task(worst_ping_time(port, pinging, done))
        async with asyncio.timeout(seconds(10)):
            await pinging.wait()
        await attacker.send(frames)
        code = await attacker.close_code()
        await asyncio.sleep(seconds(0.5))  # and the server still answers after it went
        done.set()
        async with asyncio.timeout(seconds(60)):
            worst = await measuring
        # The ping flood is cut off while its pings still arrive: the server's socket then
        # resets, which may destroy the close frame in flight (None) but never leaves the
        # attacker connected (close_code() would time out).
        assert code == close_code or (flood == PING and code is None)
        assert worst < 1.0, f"a neighbour waited {worst:.2f} s for a pong"
        if flood == PING:
            assert await metric(http, "roomcast_rate_limited_total") > 0
        attacker.abort()
    finally:
        await stop_serve(server, http)
