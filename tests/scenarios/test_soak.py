"""Churn soak: thousands of clients joining, leaving, publishing and reconnecting against a
real ``roomcast serve`` process; afterwards its file descriptors, tasks and memory are back
near where they started, and room membership is exactly what the clients believe.

CI runs it short (2,000 clients, ~10 s of churn); ``ROOMCAST_SOAK_SECONDS=600`` runs it long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.serve_process import metric, start_serve, stop_serve
from tests.support import connect, eventually, seconds

CLIENTS = int(os.environ.get("ROOMCAST_SOAK_CLIENTS", "2000"))
CHURN_SECONDS = float(os.environ.get("ROOMCAST_SOAK_SECONDS", "10"))
ROOMS = [f"room{n}" for n in range(20)]


class Client:
    """One simulated user: what it believes it is in, and what it received."""

    def __init__(self, name: str, ws: ClientConnection) -> None:
        self.name = name
        self.ws = ws
        self.rooms: set[str] = set()
        self.inbox: list[dict[str, Any]] = []
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                message = json.loads(raw)
                waiter = self.pending.pop(message.get("ack_event_id") or "", None)
                if waiter is not None:
                    waiter.set_result(message)
                else:
                    self.inbox.append(message)

    async def command(self, **message: Any) -> dict[str, Any]:
        event_id = os.urandom(6).hex()
        waiter = asyncio.get_running_loop().create_future()
        self.pending[event_id] = waiter
        await self.ws.send(json.dumps({**message, "event_id": event_id}))
        async with asyncio.timeout(seconds(10)):
            answer: dict[str, Any] = await waiter
        return answer

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


def markers(client: Client) -> set[str]:
    """Rooms whose marker message this client received."""
    return {m["room"] for m in client.inbox if str(m.get("data", "")).startswith("marker")}


async def test_churn_soak_returns_to_baseline() -> None:
    """Join/leave/publish/reconnect churn by thousands of clients: no error, membership as
    believed, and fds, tasks and RSS back near the baseline once everyone left."""
    server, port, http = await start_serve("--rate-limit", "0")
    clients: list[Client] = []
    rng = random.Random(7)
    try:
        # Warm-up: the first connection starts the timers that live as long as the server.
        warm_up = await connect(f"ws://127.0.0.1:{port}/ws/warm-up?user_id=w")
        await warm_up.close()
        async with asyncio.timeout(seconds(10)):
            while await metric(http, "roomcast_connections") > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        process = psutil.Process(server.pid)
        base_fds, base_rss = process.num_fds(), process.memory_info().rss
        base_tasks = await metric(http, "roomcast_tasks")

        async def join_new(n: int) -> Client:
            room = rng.choice(ROOMS)
            ws = await connect(f"ws://127.0.0.1:{port}/ws/{room}?user_id=u{n}")
            client = Client(f"u{n}", ws)
            client.rooms.add(room)
            return client

        for start in range(0, CLIENTS, 200):
            clients += await asyncio.gather(
                *(join_new(n) for n in range(start, min(start + 200, CLIENTS)))
            )
        peak_rss = process.memory_info().rss

        loop = asyncio.get_running_loop()
        deadline = loop.time() + CHURN_SECONDS
        operations = 0
        next_name = CLIENTS
        while loop.time() < deadline:
            batch = []
            for _ in range(100):
                client = rng.choice(clients)
                action = rng.random()
                if action < 0.3:
                    room = rng.choice(ROOMS)
                    client.rooms.add(room)
                    batch.append(client.command(type="join", room=room))
                elif action < 0.55 and client.rooms:
                    room = rng.choice(sorted(client.rooms))
                    client.rooms.discard(room)
                    batch.append(client.command(type="leave", room=room))
                elif action < 0.9 and client.rooms:
                    room = rng.choice(sorted(client.rooms))
                    batch.append(client.command(type="publish", room=room, data="churn"))
            answers = await asyncio.gather(*batch)
            assert all(answer["type"] == "ack" for answer in answers), answers[:3]
            operations += len(batch)
            # A few clients leave and are replaced by new ones.
            for _ in range(10):
                index = rng.randrange(len(clients))
                await clients[index].close()
                clients[index] = await join_new(next_name)
                next_name += 1
        assert operations > 0

        # Membership check: a marker per room reaches exactly those who believe they are in.
        for client in clients:
            client.inbox.clear()  # markers are told apart from churn by their data
        for room in ROOMS:
            response = await http.post(
                "/api/publish",
                json={"room": room, "data": f"marker {room}"},
                headers={"X-API-Key": "k"},
            )
            assert response.status_code == 200
        # Each room's marker is written to all its members in one pass: once every client
        # has the markers it expects, a wrong one would have arrived by then too.
        await eventually(lambda: all(markers(c) >= c.rooms for c in clients), timeout_units=10)
        for client in clients:
            assert markers(client) == client.rooms, (client.name, markers(client), client.rooms)

        for client in clients:
            await client.close()
        async with asyncio.timeout(seconds(20)):
            while await metric(http, "roomcast_connections") > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await asyncio.sleep(seconds(0.5))
        fds, rss = process.num_fds(), process.memory_info().rss
        tasks = await metric(http, "roomcast_tasks")
        print(
            f"soak: {operations} operations; fds {base_fds}->{fds}; tasks {base_tasks}->{tasks};"
            f" RSS {base_rss >> 20}->{peak_rss >> 20} (peak)->{rss >> 20} MiB"
        )
        assert fds <= base_fds + 2
        assert tasks <= base_tasks
        assert await metric(http, "roomcast_rooms") == 0
        # Freed memory is not always given back to the OS; it must not grow with the churn.
        assert rss <= peak_rss + (16 << 20)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await stop_serve(server, http)


async def test_slow_consumer_among_many_at_1_khz() -> None:
    """8 KiB messages at ~1 kHz to 50 readers and one client that stops reading (enough to
    fill ~4 MiB of kernel buffers and the 1 MiB send buffer): the readers get every message,
    the slow one is closed with 4008, the server's RSS stays bounded."""
    import socket

    from roomcast import CloseCode

    server, port, http = await start_serve()
    readers: list[ClientConnection] = []
    try:
        process = psutil.Process(server.pid)
        readers = list(
            await asyncio.gather(
                *(connect(f"ws://127.0.0.1:{port}/ws/r?user_id=r{n}") for n in range(50))
            )
        )
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        slow = await connect(f"ws://127.0.0.1:{port}/ws/r?user_id=slow", sock=sock, max_queue=1)
        base_rss = process.memory_info().rss
        counts = [0] * len(readers)

        async def read(index: int) -> None:
            with contextlib.suppress(ConnectionClosed):
                async for _ in readers[index]:
                    counts[index] += 1

        reading = [asyncio.ensure_future(read(i)) for i in range(len(readers))]
        messages, payload = 600, "x" * 8192
        began = asyncio.get_running_loop().time()
        for n in range(0, messages, 5):  # 5 per request every 5 ms: 1 kHz on average
            response = await http.post(
                "/api/publish",
                json={"room": "r", "batch": [payload] * 5},
                headers={"X-API-Key": "k"},
            )
            assert response.status_code == 200
            next_send = began + (n + 5) / 1000
            await asyncio.sleep(max(0.0, next_send - asyncio.get_running_loop().time()))
        sent_in = asyncio.get_running_loop().time() - began
        async with asyncio.timeout(seconds(30)):
            while min(counts) < messages:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        peak_rss = process.memory_info().rss
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(seconds(30)):
                async for _ in slow:
                    pass
        print(
            f"slow consumer: {messages} x 8 KiB in {sent_in:.2f} s; readers got "
            f"{min(counts)}-{max(counts)} each; slow one closed {slow.close_code}; "
            f"server RSS {base_rss >> 20} -> {peak_rss >> 20} MiB"
        )
        assert min(counts) == messages
        assert slow.close_code == CloseCode.SLOW_CONSUMER
        assert peak_rss - base_rss < 64 << 20
        for task in reading:
            task.cancel()
    finally:
        for reader in readers:
            await reader.close()
        await stop_serve(server, http)
