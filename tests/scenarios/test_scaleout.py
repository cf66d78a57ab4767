"""Several ``roomcast serve --redis-url`` processes on one real Redis: one logical hub.

Every test starts real server processes (uvloop, picows) and a redis-server of its own, and
talks to them only from outside: WebSocket clients, the HTTP API, /readyz and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.redis_support import RedisServer, free_port
from tests.support import connect, eventually, recv, seconds

API_KEY = "test-key"


class Instance:
    """One ``roomcast serve`` process."""

    def __init__(self, redis_url: str, *flags: str) -> None:
        self.port, self.api_port = free_port(), free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roomcast.serve.cli",
                "serve",
                "--port",
                str(self.port),
                "--api-port",
                str(self.api_port),
                "--redis-url",
                redis_url,
                "--log-level",
                "warning",
                "--shutdown-timeout",
                "3",
                *flags,
            ],
            env={**os.environ, "ROOMCAST_API_KEY": API_KEY},
        )
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api_port}", timeout=10)

    async def started(self) -> None:
        async def answers() -> bool:
            with contextlib.suppress(httpx.TransportError):
                return (await self.http.get("/readyz")).status_code == 200
            return False

        async with asyncio.timeout(seconds(20)):
            while not await answers():
                assert self.process.poll() is None, "server process exited"
                await asyncio.sleep(0.05)

    async def client(self, room: str, user: str) -> ClientConnection:
        return await connect(f"ws://127.0.0.1:{self.port}/ws/{room}?user_id={user}")

    async def ready(self) -> int:
        return (await self.http.get("/readyz")).status_code

    async def metric(self, name: str) -> float:
        text = (await self.http.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    async def publish(self, body: dict[str, object]) -> httpx.Response:
        return await self.http.post("/api/publish", json=body, headers={"X-API-Key": API_KEY})

    async def stop(self) -> None:
        await self.http.aclose()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.asynccontextmanager
async def instances(redis: RedisServer, count: int, *flags: str) -> AsyncIterator[list[Instance]]:
    started: list[Instance] = []
    try:
        for _ in range(count):
            started.append(Instance(redis.url, *flags))
        await asyncio.gather(*(instance.started() for instance in started))
        yield started
    finally:
        await asyncio.gather(*(instance.stop() for instance in started))


async def subscribed(redis: RedisServer, channels: set[str]) -> None:
    """Wait until Redis reports a subscriber on each of ``channels``."""
    await eventually(lambda: channels <= redis.channels(), what=f"subscribers on {channels}")


async def nothing_more(*clients: ClientConnection) -> None:
    for client in clients:
        with pytest.raises(TimeoutError):
            await recv(client, timeout_units=0.3)


def publish_command(room: str, data: str, event_id: str) -> str:
    return json.dumps({"type": "publish", "room": room, "data": data, "event_id": event_id})


async def test_three_processes_are_one_hub(own_redis: RedisServer) -> None:
    """A room message from a client on one process reaches the members on the other two
    once (not non-members); an API publish to a user reaches their devices on every process;
    Redis subscriptions follow where the members are."""
    async with instances(own_redis, 3) as (p0, p1, p2):
        ann = await p0.client("lobby", "ann")
        bob = await p1.client("lobby", "bob")
        ann_phone = await p2.client("games", "ann")
        cid = await p2.client("games", "cid")
        await subscribed(own_redis, {"ws:room:lobby", "ws:room:games", "ws:user:ann"})

        await ann.send(publish_command("lobby", "hello lobby", "e1"))
        assert json.loads(await recv(ann))["ack_event_id"] == "e1"
        message = json.loads(await recv(bob))
        assert (message["type"], message["data"], message["sender"]) == (
            "room_message",
            "hello lobby",
            "ann",
        )

        response = await p1.publish({"user_id": "ann", "data": "for ann"})
        assert response.status_code == 200
        for device in (ann, ann_phone):
            assert json.loads(await recv(device))["data"] == "for ann"
        await nothing_more(ann, bob, ann_phone, cid)

        await bob.close()
        await eventually(lambda: "ws:room:lobby" in own_redis.channels())  # ann still there
        await ann.close()
        await eventually(lambda: "ws:room:lobby" not in own_redis.channels())
        assert "ws:room:games" in own_redis.channels()
        assert await p0.metric("roomcast_broker_missed_total") == 0


async def test_kill_9_of_one_process_leaves_the_others_serving(own_redis: RedisServer) -> None:
    """After one process is killed without warning, the others still deliver to each other
    and stay ready."""
    async with instances(own_redis, 3) as (p0, p1, p2):
        a = await p0.client("lobby", "a")
        await p1.client("lobby", "b")
        c = await p2.client("lobby", "c")
        await eventually(
            lambda: int(own_redis.cli("PUBSUB", "NUMSUB", "ws:room:lobby").split()[-1]) == 3
        )
        p1.process.kill()
        p1.process.wait()
        await eventually(
            lambda: int(own_redis.cli("PUBSUB", "NUMSUB", "ws:room:lobby").split()[-1]) == 2
        )
        await a.send(publish_command("lobby", "still here", "e2"))
        assert json.loads(await recv(c))["data"] == "still here"
        assert await p0.ready() == 200 and await p2.ready() == 200


async def test_redis_restart_mid_stream(own_redis: RedisServer) -> None:
    """Rooms without history: Redis killed while one process publishes every 20 ms: both
    report not ready (503) and keep serving their own clients; within 2 s of Redis' return
    both are ready and delivering again; the loss is counted.  (With history, such publishes
    are refused instead: tests/integration/test_history.py.)"""
    async with instances(own_redis, 2, "--history-size", "0") as (p0, p1):
        local = await p0.client("lobby", "local")
        remote = await p1.client("lobby", "remote")
        await subscribed(own_redis, {"ws:room:lobby"})
        await eventually(
            lambda: int(own_redis.cli("PUBSUB", "NUMSUB", "ws:room:lobby").split()[-1]) == 2
        )

        stop = asyncio.Event()
        sent = [0]

        async def stream() -> None:
            while not stop.is_set():
                response = await p0.publish({"room": "lobby", "data": str(sent[0])})
                assert response.status_code == 200
                sent[0] += 1
                await asyncio.sleep(0.02)

        streaming = asyncio.ensure_future(stream())
        try:
            assert json.loads(await recv(remote))["data"] == "0"
            own_redis.kill()
            for instance in (p0, p1):
                await eventually_async(instance.ready, 503)
            during = sent[0]
            await eventually(lambda: sent[0] >= during + 3)  # published while Redis is away
            own_redis.start()
            began = asyncio.get_running_loop().time()
            for instance in (p0, p1):
                await eventually_async(instance.ready, 200)
            assert asyncio.get_running_loop().time() - began < 2 * seconds(1)
            await drain_until_remote_gets_new(remote)
        finally:
            stop.set()
            await streaming
        # The local client saw every message, in order, the whole time.
        seen = []
        with contextlib.suppress(TimeoutError):
            while True:
                seen.append(int(json.loads(await recv(local, timeout_units=0.3))["data"]))
        assert seen == list(range(len(seen)))
        failed = await p0.metric("roomcast_broker_publish_failures_total")
        missed = await p1.metric("roomcast_broker_missed_total")
        assert failed + missed > 0
        assert await p1.metric("roomcast_broker_reconnects_total") == 1


async def eventually_async(probe: Callable[[], Awaitable[object]], expected: object) -> None:
    """Poll an async ``probe()`` until it returns ``expected`` (10 units at most)."""
    async with asyncio.timeout(seconds(10)):
        while await probe() != expected:  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(0.02)


async def drain_until_remote_gets_new(remote: ClientConnection) -> None:
    """Read the remote client until messages published after Redis returned arrive."""
    first = None
    async with asyncio.timeout(seconds(5)):
        while True:
            number = int(json.loads(await recv(remote))["data"])
            if first is None:
                first = number
            elif number > first + 5:  # a steady flow again
                return


class AppInstance:
    """``tests/distributed_app.py`` under uvicorn, in its own process."""

    def __init__(self, redis_url: str, *flags: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.distributed_app:app",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env={**os.environ, "ROOMCAST_TEST_REDIS_URL": redis_url},
        )
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    async def settled(self) -> bool:
        with contextlib.suppress(httpx.TransportError):
            return bool((await self.http.get("/state")).json()["settled"])
        return False

    async def client(self, room: str, user: str) -> tuple[ClientConnection, str]:
        client = await connect(f"ws://127.0.0.1:{self.port}/ws/{room}?user_id={user}")
        return client, json.loads(await recv(client))["connection_id"]

    async def send(self, **body: object) -> int:
        response = await self.http.post("/send", json=body)
        assert response.status_code == 200, response.text
        return int(response.json()["local"])

    async def stop(self) -> None:
        await self.http.aclose()
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, 20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def test_library_paths_across_three_fastapi_processes(own_redis: RedisServer) -> None:
    """Three FastAPI processes on DistributedWebSocketManager: exclude names connections on
    other processes, send_to_connection and send_to_user reach other processes, nothing is
    delivered twice or to non-targets."""
    apps = [AppInstance(own_redis.url) for _ in range(3)]
    try:
        for app in apps:
            await eventually_async(app.settled, True)
        a, a_id = await apps[0].client("lobby", "ann")
        b, b_id = await apps[1].client("lobby", "bob")
        c, c_id = await apps[2].client("lobby", "cid")
        d, _ = await apps[2].client("games", "dan")
        for app in apps:
            await eventually_async(app.settled, True)

        assert await apps[0].send(op="room", room="lobby", data="not bob", exclude=[b_id]) == 1
        assert await recv(a) == "not bob" and await recv(c) == "not bob"
        assert await apps[1].send(op="all", data="b and d", exclude=[a_id, c_id]) == 1
        assert await recv(b) == "b and d" and await recv(d) == "b and d"
        assert await apps[2].send(op="connection", id=a_id, data="just ann") == 1
        assert await recv(a) == "just ann"
        assert await apps[0].send(op="user", user="dan", data="for dan") == 0
        assert await recv(d) == "for dan"
        await nothing_more(a, b, c, d)
    finally:
        await asyncio.gather(*(app.stop() for app in apps))


async def test_a_publish_naming_no_room_or_user_reaches_everyone(own_redis: RedisServer) -> None:
    """POST /api/publish with only ``data`` reaches every connection of the hub, on every
    process, in any room or none; naming both a room and a user is a 400."""
    async with instances(own_redis, 2) as (p0, p1):
        ann = await p0.client("lobby", "ann")
        bob = await p1.client("games", "bob")
        cid = await connect(f"ws://127.0.0.1:{p1.port}/ws?user_id=cid")
        await subscribed(own_redis, {"ws:broadcast", "ws:user:ann", "ws:user:bob", "ws:user:cid"})

        response = await p0.publish({"data": "to everyone"})
        assert (response.status_code, response.json()) == (200, {"delivered": 1})
        for client in (ann, bob, cid):
            message = json.loads(await recv(client))
            assert (message["type"], message["data"]) == ("message", "to everyone")

        response = await p1.publish({"batch": [1, 2]})
        assert (response.status_code, response.json()) == (200, {"delivered": 4})
        for client in (ann, bob, cid):
            assert [json.loads(await recv(client))["data"] for _ in range(2)] == [1, 2]

        response = await p0.publish({"room": "lobby", "user_id": "ann", "data": "which?"})
        assert response.status_code == 400
        assert response.json() == {
            "error": "give 'room' or 'user_id', not both (neither: every connection)"
        }
        await nothing_more(ann, bob, cid)
