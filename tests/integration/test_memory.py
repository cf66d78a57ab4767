"""Memory given back: after 5,000 rooms of long names come and go, roomcast keeps nothing.

tracemalloc attributes each live allocation to the code that made it; the test sums what
roomcast's own modules hold before, at the peak and after a crowd of clients joins many rooms
and leaves.  What it cannot see is the allocator's side: CPython's small-object arenas are
returned to the system only when wholly empty, so the process's RSS stays above where it
started (BENCHMARKS.md, hardening drills) even though no roomcast object is left.
"""

from __future__ import annotations

import gc
import json
import tracemalloc

from websockets.asyncio.client import ClientConnection

from roomcast.server import Server
from tests.integration.test_server import running, url
from tests.support import connect, eventually, recv

CLIENTS = 50
ROOMS_EACH = 100
NAME = "\U0001f600" * 60  # 240 bytes: four-byte characters, near the 256-byte limit


def roomcast_bytes() -> int:
    """Bytes held by live allocations with roomcast's source anywhere in their traceback."""
    snapshot = tracemalloc.take_snapshot()
    mine = snapshot.filter_traces([tracemalloc.Filter(True, "*/roomcast/*", all_frames=True)])
    return sum(stat.size for stat in mine.statistics("filename"))


async def fill(server: Server, tag: str) -> list[ClientConnection]:
    """CLIENTS clients each join ROOMS_EACH rooms of their own."""
    clients = [await connect(url(server, f"/ws?user_id={tag}{n}")) for n in range(CLIENTS)]
    for n, client in enumerate(clients):
        for r in range(ROOMS_EACH):
            await client.send(json.dumps({"type": "join", "room": f"{NAME}{tag}{n}-{r}"}))
    for client in clients:
        for _ in range(ROOMS_EACH):
            assert json.loads(await recv(client))["type"] == "ack"
    await eventually(lambda: len(server.hub.active_rooms) == CLIENTS * ROOMS_EACH)
    return clients


async def leave(server: Server, clients: list[ClientConnection]) -> None:
    for client in clients:
        await client.close()
    await eventually(lambda: server.hub.active_connections == 0, timeout_units=20)
    assert server.hub.active_rooms == []
    gc.collect()


async def test_nothing_roomcast_owns_stays_after_clients_leave() -> None:
    """5,000 rooms with 240-byte names opened by 50 clients: roomcast holds megabytes at the
    peak and, once they left, less than 32 KiB more than before they came (the per-connection
    indexes keep tables sized for the most connections seen, about 100 bytes a connection)."""
    async with running(max_rooms=20_000, rate_limit=0) as server:
        await leave(server, await fill(server, "warm"))  # caches reach their working size
        tracemalloc.start(6)
        try:
            before = roomcast_bytes()
            clients = await fill(server, "real")
            peak = roomcast_bytes()
            await leave(server, clients)
            after = roomcast_bytes()
        finally:
            tracemalloc.stop()
    assert peak - before > 2 * 1024 * 1024, f"the crowd cost only {peak - before} bytes"
    assert after - before < 32 * 1024, f"roomcast holds {after - before} bytes more"
