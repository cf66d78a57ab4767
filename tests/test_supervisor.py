"""``roomcast serve --workers N``: worker processes sharing the ports, one hub through Redis,
restarted when they die, drained together on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import httpx
import psutil
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from roomcast import CloseCode
from roomcast.cli import main
from tests.redis_support import RedisServer, free_port
from tests.support import connect, eventually, recv, seconds


def workers_of(supervisor: subprocess.Popen[bytes]) -> list[psutil.Process]:
    children: list[psutil.Process] = psutil.Process(supervisor.pid).children()
    return children


def clients_of(worker: psutil.Process, port: int) -> int:
    """Established client sockets a worker holds on ``port``."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return sum(
            1
            for conn in worker.net_connections("tcp")
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port
        )
    return 0


async def test_workers_share_the_port_are_one_hub_and_are_restarted(own_redis: RedisServer) -> None:
    """Three workers take connections on one port and deliver as one hub; a worker killed
    with SIGKILL is replaced; SIGTERM drains every client with 1001 and exits 0."""
    port, api_port = free_port(), free_port()
    supervisor = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block; psutil reads it
        [
            sys.executable,
            "-m",
            "roomcast.cli",
            "serve",
            "--workers",
            "3",
            "--port",
            str(port),
            "--api-port",
            str(api_port),
            "--log-level",
            "warning",
            "--shutdown-timeout",
            "5",
        ],
        env={**os.environ, "ROOMCAST_API_KEY": "k", "ROOMCAST_REDIS_URL": own_redis.url},
    )
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
    clients: list[ClientConnection] = []
    try:
        await eventually(lambda: len(workers_of(supervisor)) == 3, timeout_units=20)
        # The secrets reached the workers through the environment, not their command line.
        for worker in workers_of(supervisor):
            assert own_redis.url not in " ".join(worker.cmdline())
        await eventually(
            lambda: int(own_redis.cli("PUBSUB", "NUMSUB", "ws:broadcast").split()[-1]) == 3,
            timeout_units=20,
        )
        for n in range(30):
            clients.append(await connect(f"ws://127.0.0.1:{port}/ws/lobby?user_id=u{n}"))
        await eventually(lambda: sum(clients_of(w, port) for w in workers_of(supervisor)) == 30)
        holding = [clients_of(w, port) for w in workers_of(supervisor)]
        assert sum(1 for count in holding if count) >= 2, holding  # the kernel spread them
        await eventually(
            lambda: (
                int(own_redis.cli("PUBSUB", "NUMSUB", "ws:room:lobby").split()[-1])
                == sum(1 for count in holding if count)
            )
        )

        response = await api.post(
            "/api/publish", json={"room": "lobby", "data": "one"}, headers={"X-API-Key": "k"}
        )
        assert response.status_code == 200
        for client in clients:
            assert '"one"' in str(await recv(client))

        victim = max(workers_of(supervisor), key=lambda w: clients_of(w, port))
        lost = clients_of(victim, port)
        victim.kill()
        # The kernel closes the dead worker's sockets: exactly its clients see a close.
        await eventually(lambda: sum(c.state is State.CLOSED for c in clients) == lost)
        survivors = [client for client in clients if client.state is State.OPEN]
        assert len(survivors) == 30 - lost
        await eventually(
            lambda: (
                len(workers_of(supervisor)) == 3
                and victim.pid not in {w.pid for w in workers_of(supervisor)}
            ),
            timeout_units=20,
        )
        await eventually(
            lambda: int(own_redis.cli("PUBSUB", "NUMSUB", "ws:broadcast").split()[-1]) == 3,
            timeout_units=20,
        )
        response = await api.post(
            "/api/publish", json={"room": "lobby", "data": "two"}, headers={"X-API-Key": "k"}
        )
        for client in survivors:
            assert '"two"' in str(await recv(client))

        supervisor.send_signal(signal.SIGTERM)
        for client in survivors:
            with pytest.raises(ConnectionClosed):
                await recv(client, timeout_units=10)
            assert client.close_code == CloseCode.GOING_AWAY
        assert await asyncio.to_thread(supervisor.wait, seconds(20)) == 0
    finally:
        await api.aclose()
        if supervisor.poll() is None:
            for worker in workers_of(supervisor):
                worker.kill()
            supervisor.kill()
            supervisor.wait()


def test_workers_without_redis_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--workers 2 without --redis-url would be two separate hubs on one port: refused."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--workers", "2"])
    assert exit_info.value.code == 2
    assert "needs --redis-url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--workers", "0"])
