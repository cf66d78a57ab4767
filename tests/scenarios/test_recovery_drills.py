"""Recovery drills: several ``roomcast serve`` processes and one Redis, clients of
``roomcast.client`` in worker processes, real faults (sockets reset through a proxy that then
sends the clients to another process, a server killed with SIGKILL).  Every client must end
with every message of the room exactly once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from roomcast.testing import RedisServer
from tests.serve_process import start_serve, stop_serve
from tests.support import seconds

pytestmark = pytest.mark.slow

Served = tuple[subprocess.Popen[bytes], int, httpx.AsyncClient]


@contextlib.asynccontextmanager
async def cluster(redis: RedisServer, count: int) -> AsyncIterator[list[Served]]:
    started: list[Served] = []
    try:
        for _ in range(count):
            started.append(
                # (2 s away at 200 messages/s: the history must hold 400 and more)
                await start_serve(
                    "--redis-url",
                    redis.url,
                    "--rate-limit",
                    "0",
                    "--history-size",
                    "2000",
                    log_level="warning",
                )
            )
        yield started
    finally:
        for process, _, http in started:
            if process.poll() is None:
                await stop_serve(process, http)
            else:
                await http.aclose()


class Worker:
    """One process of drill clients (``tests/scenarios/recovery_worker.py``)."""

    def __init__(self, **config: Any) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.scenarios.recovery_worker", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    async def line(self, within: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), within)
        assert raw, "the worker ended early"
        answer = json.loads(raw)
        assert isinstance(answer, dict)
        return answer

    async def command(self, *words: object, within: float = 30) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write((" ".join(map(str, words)) + "\n").encode())
        self.process.stdin.flush()
        return await self.line(within)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class Publisher:
    """Publishes ``{"n": ...}`` through the API ports at a steady rate, round robin over
    the servers still alive; remembers the last position."""

    def __init__(self, servers: list[Served], rate: float) -> None:
        self.servers = list(servers)
        self.rate = rate
        self.sent = 0
        self.refused = 0
        self.last: dict[str, Any] | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not self._stop.is_set():
            _, _, http = self.servers[self.sent % len(self.servers)]
            body = {"room": "drill", "data": {"n": self.sent}}
            answer = await http.post("/api/publish", json=body, headers={"X-API-Key": "k"})
            if answer.status_code == 200:
                self.last = answer.json()["position"]
            else:  # refused (503: not stored): nobody got it, it is not in the history
                self.refused += 1
            self.sent += 1
            await asyncio.sleep(max(0.0, began + self.sent / self.rate - loop.time()))


def check(report: dict[str, Any], last: dict[str, Any]) -> None:
    """Every client saw offsets 1..last, each once, in order, in last's epoch."""
    wanted = [[last["epoch"], offset] for offset in range(1, last["offset"] + 1)]
    for n, seen in enumerate(report["offsets"]):
        if seen != wanted:
            got = [offset for _, offset in seen]
            duplicates = len(got) - len(set(got))
            missing = sorted(set(range(1, last["offset"] + 1)) - set(got))
            raise AssertionError(
                f"client {n}: {len(seen)} messages, {duplicates} twice, missing {missing[:10]}"
                f" ({len(missing)}), in order: {got == sorted(got)}, rejoins (recovered):"
                f" {report['rejoined'][n]}"
            )
    for recoveries in report["rejoined"]:
        assert all(recoveries), report["rejoined"]


async def test_a_third_of_300_clients_cut_for_2_s_recover_on_another_process(
    own_redis: RedisServer,
) -> None:
    """3 processes, 300 clients in one room, 200 messages/s for 20 s; 100 of them lose their
    sockets (reset, no close frame) for 2 s and come back through another process."""
    async with cluster(own_redis, 3) as servers:
        ports = [port for _, port, _ in servers]
        workers = [
            Worker(
                name=f"w{n}",
                room="drill",
                ports=ports,
                direct=100,
                proxied=50,
                proxied_port=ports[n],
            )
            for n in range(2)
        ]
        try:
            for worker in workers:
                assert (await worker.line(seconds(60)))["ready"] == 150
            publisher = Publisher(servers, rate=200)
            publisher.start()
            await asyncio.sleep(5)
            for n, worker in enumerate(workers):  # to the process after the one they were on
                await worker.command("cut", ports[(n + 1) % 3])
            await asyncio.sleep(2)
            for worker in workers:
                await worker.command("restore")
            await asyncio.sleep(13)
            await publisher.stop()
            assert publisher.last is not None and publisher.refused == 0
            reports = [
                await worker.command(
                    "report", publisher.last["offset"], seconds(60), within=seconds(90)
                )
                for worker in workers
            ]
        finally:
            for worker in workers:
                worker.stop()
        assert publisher.last["offset"] == publisher.sent
        for report in reports:
            check(report, publisher.last)
        assert sum(len(r["rejoined"]) for r in reports) >= 300  # (each proxied one rejoined)


async def test_clients_of_a_killed_process_recover_on_another(own_redis: RedisServer) -> None:
    """A process killed with SIGKILL mid-stream: its clients reconnect to another and
    recover; nobody loses anything."""
    async with cluster(own_redis, 3) as servers:
        ports = [port for _, port, _ in servers]
        victim = servers[2]
        worker = Worker(
            name="k", room="drill", ports=ports[:2], direct=40, proxied=40, proxied_port=ports[2]
        )
        try:
            assert (await worker.line(seconds(60)))["ready"] == 80
            publisher = Publisher(servers[:2], rate=100)
            publisher.start()
            await asyncio.sleep(3)
            await worker.command("cut", ports[0])  # (the proxy refuses while it is down)
            victim[0].send_signal(signal.SIGKILL)
            victim[0].wait()
            await worker.command("restore")
            await asyncio.sleep(5)
            await publisher.stop()
            assert publisher.last is not None and publisher.refused == 0
            report = await worker.command(
                "report", publisher.last["offset"], seconds(60), within=seconds(90)
            )
        finally:
            worker.stop()
        check(report, publisher.last)
