"""``roomcast serve --workers 2`` is one server to the outside: every scrape of ``/metrics``
holds every worker's figures, and ``/readyz`` is ready only while every worker is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from tests.integration.test_supervisor import clients_of, workers_of
from tests.redis_support import RedisServer, free_port
from tests.support import connect, eventually, seconds


async def scrape(http: httpx.AsyncClient) -> dict[str, dict[str, float]]:
    """One ``GET /metrics``: each series of interest, by worker."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[sample.labels["worker"]] = sample.value
    return found


async def answer(http: httpx.AsyncClient, path: str) -> tuple[int, str] | None:
    """Status and body of ``GET path``; None if nobody answered (yet: no worker listens; or
    in time: a frozen worker holds the connections the kernel gives it)."""
    try:
        response = await http.get(path)
    except httpx.TransportError:
        return None
    return response.status_code, response.text.strip()


async def until(condition: Callable[[], Awaitable[bool]], timeout_units: float) -> None:
    """Ask again until ``condition()`` holds; TimeoutError after ``timeout_units``.  (Each
    answer comes from whichever worker the kernel picks: there is nothing to wait on.)"""
    async with asyncio.timeout(seconds(timeout_units)):
        while not await condition():  # noqa: ASYNC110 - asks processes nobody signals
            await asyncio.sleep(0.05)


async def readyz_is(http: httpx.AsyncClient, expected: tuple[int, str]) -> bool:
    return await answer(http, "/readyz") == expected


async def test_every_scrape_is_the_whole_server_and_readiness_is_every_workers(
    own_redis: RedisServer,
) -> None:
    """Clients on both workers; six scrapes in a row each hold both workers' figures, whose
    sum is the true count; /readyz is 503 naming the worker while that worker is frozen
    (SIGSTOP), ready again once it runs."""
    port = free_port()
    supervisor = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block; psutil reads it
        [
            sys.executable,
            "-m",
            "roomcast.serve.cli",
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
            "--api-port",
            "-1",
            "--log-level",
            "warning",
            "--shutdown-timeout",
            "3",
        ],
        env={**os.environ, "ROOMCAST_REDIS_URL": own_redis.url},
    )
    # A new connection per request, so the kernel picks a worker for each one.
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=seconds(2),
        limits=httpx.Limits(max_keepalive_connections=0),
    )
    clients: list[ClientConnection] = []
    frozen: psutil.Process | None = None
    try:
        # (Two children, each past its exec: a child just forked still has the supervisor's
        # environment, without its slot.)
        await eventually(
            lambda: (
                len(workers := workers_of(supervisor)) == 2
                and all("ROOMCAST_WORKER_SLOT" in w.environ() for w in workers)
            ),
            timeout_units=20,
        )
        slots = {w.environ()["ROOMCAST_WORKER_SLOT"]: w for w in workers_of(supervisor)}
        # Several answers in a row, so both workers see each other.
        ready = [0]

        async def ready_in_a_row() -> bool:
            ready[0] = ready[0] + 1 if await readyz_is(http, (200, "ready")) else 0
            return ready[0] >= 4

        await until(ready_in_a_row, 20)

        # Clients on both workers: the kernel spreads them; open more if it did not.
        while len(clients) < 200 and min(clients_of(w, port) for w in slots.values()) == 0:
            for n in range(40 if not clients else 10):
                clients.append(await connect(f"ws://127.0.0.1:{port}/ws/lobby?user_id=u{n}"))
            await eventually(
                lambda: sum(clients_of(w, port) for w in slots.values()) == len(clients)
            )
        truth = {slot: clients_of(worker, port) for slot, worker in slots.items()}
        assert min(truth.values()) > 0, truth

        async def agrees() -> bool:
            return (await scrape(http))["roomcast_connections"] == truth

        await until(agrees, 10)
        # Timeline: each worker writes its figures and reads the other's once a second, so
        # 3 s after one scrape agreed, the other worker's agrees too.
        await asyncio.sleep(seconds(3))
        for _ in range(6):
            figures = await scrape(http)
            assert figures["roomcast_worker_up"] == {"0": 1, "1": 1}
            assert figures["roomcast_connections"] == truth
            assert sum(figures["roomcast_connections"].values()) == len(clients)
            assert set(figures["roomcast_messages_in_total"]) == {"0", "1"}

        frozen = slots["1"]
        frozen.suspend()  # SIGSTOP: alive to the supervisor, silent to everyone else
        # Timeline: its snapshot expires in Redis within 5 s; worker 0 reads that within 1 s.
        await until(lambda: readyz_is(http, (503, "worker 1 not reporting")), 20)
        live: list[dict[str, dict[str, float]]] = []

        async def scraped_live() -> bool:
            with contextlib.suppress(httpx.TimeoutException):  # (the frozen worker got it)
                live.append(await scrape(http))
            return bool(live)

        await until(scraped_live, 10)
        assert live[0]["roomcast_worker_up"] == {"0": 1, "1": 0}
        assert live[0]["roomcast_connections"] == {"0": truth["0"]}
        frozen.resume()
        frozen = None
        await until(lambda: readyz_is(http, (200, "ready")), 20)
    finally:
        if frozen is not None:
            frozen.resume()
        await http.aclose()
        supervisor.send_signal(signal.SIGTERM)
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        try:
            await asyncio.to_thread(supervisor.wait, seconds(20))
        except subprocess.TimeoutExpired:
            for worker in workers_of(supervisor):
                worker.kill()
            supervisor.kill()
            supervisor.wait()
