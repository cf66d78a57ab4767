"""One client that stops reading among 1,000 that read: nobody waits for it, it is cut off.

Timeline: 1,000 readers and one stalled client connect; the server broadcasts 4 KiB frames,
never more than WINDOW frames ahead of the slowest *healthy* reader.  The stalled client's
kernel buffers (made small through SO_SNDBUF/SO_RCVBUF), uvicorn's 64 KiB buffer and then
roomcast's LIMIT fill up; the next frame overflows it and it is closed with 4008 while the
broadcast carries on.  When it finally reads, it finds the close code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import psutil
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from roomcast import CloseCode, ConnectionManager, OverflowPolicy
from tests.integration.test_manager import make_app
from tests.support import connect, eventually, running_server, seconds

HEALTHY = 1000
MESSAGES = 100
SIZE = 4096
WINDOW = 8
LIMIT = 64 * 1024


async def stalled_client(url: str) -> ClientConnection:
    """A client with tiny receive buffers that reads nothing until told to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    # max_queue=1: websockets stops reading the socket once one message waits unread.
    return await connect(url, sock=sock, max_queue=1)


@dataclasses.dataclass
class Outcome:
    manager: ConnectionManager
    received: list[int]
    """How many healthy clients received each sequence number."""
    stalled_got: int
    """Frames the stalled client read once it started reading."""
    stalled_close_code: int | None


async def run_scenario(policy: OverflowPolicy) -> Outcome:
    manager = ConnectionManager(send_buffer_limit=LIMIT, overflow=policy, close_timeout=60)
    received = [0] * MESSAGES
    progress = [asyncio.Event() for _ in range(MESSAGES)]
    order_errors = 0

    async def reader(client: ClientConnection) -> None:
        nonlocal order_errors
        expected = 0
        async for message in client:
            assert isinstance(message, bytes)
            seq = int.from_bytes(message[:4], "big")
            if seq != expected:
                order_errors += 1
            expected = seq + 1
            received[seq] += 1
            if received[seq] == HEALTHY:
                progress[seq].set()
            if expected == MESSAGES:
                return

    process = psutil.Process()
    async with running_server(make_app(manager), sndbuf=8192) as base:
        url = f"{base}/ws?room=r"
        healthy: list[ClientConnection] = []
        for start in range(0, HEALTHY, 100):
            healthy += await asyncio.gather(*(connect(url) for _ in range(start, start + 100)))
        stalled = await stalled_client(url)
        await eventually(lambda: manager.active_connections == HEALTHY + 1, timeout_units=30)
        readers = [asyncio.create_task(reader(client)) for client in healthy]
        rss_before = process.memory_info().rss
        peak_buffered = 0
        padding = bytes(SIZE - 4)
        for seq in range(MESSAGES):
            if seq >= WINDOW:
                async with asyncio.timeout(seconds(30)):
                    await progress[seq - WINDOW].wait()
            await manager.broadcast_to_room("r", seq.to_bytes(4, "big") + padding)
            peak_buffered = max(
                peak_buffered,
                *(c.transport.buffered_bytes for c in manager.get_room_members("r")),
            )
        async with asyncio.timeout(seconds(60)):
            await asyncio.gather(*readers)
        rss_growth = process.memory_info().rss - rss_before
        assert order_errors == 0
        assert peak_buffered <= LIMIT
        # 1,000 clients plus the server share this process; the stalled client's share is
        # bounded by LIMIT, so growth stays far below what an unbounded queue would take
        # (100 frames x 4 KiB x 1,001 connections = 400 MiB if everything were buffered).
        assert rss_growth < 150 * 2**20, rss_growth

        # Now the stalled client reads what reached it.
        stalled_got = 0
        try:
            async with asyncio.timeout(seconds(30)):
                async for _ in stalled:
                    stalled_got += 1
                    if (
                        policy is OverflowPolicy.DROP
                        and stalled_got + manager.stats.dropped_frames == MESSAGES
                    ):
                        break
        except ConnectionClosed:
            pass
        for client in healthy:
            await client.close()
        await stalled.close()
        await eventually(lambda: manager.active_connections == 0, timeout_units=30)
    return Outcome(manager, received, stalled_got, stalled.close_code)


@pytest.mark.slow
async def test_stalled_client_is_closed_and_blocks_nobody() -> None:
    """Every healthy client gets every frame in order; the stalled one is closed with 4008."""
    outcome = await run_scenario(OverflowPolicy.CLOSE)
    stats = outcome.manager.stats
    assert outcome.received == [HEALTHY] * MESSAGES
    assert stats.slow_consumer_closes == 1
    assert outcome.stalled_close_code == CloseCode.SLOW_CONSUMER
    assert 0 < outcome.stalled_got < MESSAGES
    # Frames accepted into the stalled client's buffer but never written were discarded at
    # the close: at most LIMIT's worth.
    accepted_by_stalled = stats.frames_sent - HEALTHY * MESSAGES
    assert outcome.stalled_got <= accepted_by_stalled <= outcome.stalled_got + LIMIT // SIZE


@pytest.mark.slow
async def test_drop_policy_keeps_the_stalled_client_and_counts_drops() -> None:
    """With OverflowPolicy.DROP the stalled client stays connected and misses frames."""
    outcome = await run_scenario(OverflowPolicy.DROP)
    stats = outcome.manager.stats
    assert outcome.received == [HEALTHY] * MESSAGES
    assert stats.slow_consumer_closes == 0
    assert stats.dropped_frames > 0
    assert outcome.stalled_got + stats.dropped_frames == MESSAGES
    assert outcome.stalled_close_code == 1000  # closed by the client itself, at the end
