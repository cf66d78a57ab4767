"""Running out of file descriptors: planned for at start-up, answered, counted, survived.

A process may hold only so many descriptors (1,024 is a common default); every client
socket, API connection, Redis link and log file takes one.  These tests run ``roomcast serve``
under a 1,024-descriptor limit and check that it says so at start-up, answers every upgrade of
a connect burst (101 or 503, never silence), keeps answering ``/healthz`` on both ports, and
that an accept failing with EMFILE is counted and does not stop the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
from collections import Counter

import httpx
import pytest

from roomcast.limits import RESERVED_DESCRIPTORS, DescriptorBudget
from roomcast.serve.listener import Acceptor, listening_sockets
from tests.serve_process import metric, start_serve, stop_serve
from tests.support import connect, eventually, recv, seconds

LIMIT = 1024


def test_the_budget_keeps_a_reserve_and_headroom() -> None:
    """Under 1,024 descriptors, 18,000 connections are lowered to what fits beside the
    reserve, the API port and the headroom for refusals; a roomy limit changes nothing."""
    tight = DescriptorBudget.plan(1024, 18_000, api_connections=272)
    assert tight.sockets == 1024 - RESERVED_DESCRIPTORS - 272
    assert tight.connections == tight.sockets - max(16, tight.sockets // 20)
    assert tight.lowered
    roomy = DescriptorBudget.plan(20_000, 18_000, api_connections=272)
    assert roomy.connections == 18_000 and not roomy.lowered
    small_cap = DescriptorBudget.plan(1024, 900, api_connections=0)
    assert small_cap.connections == 900 and small_cap.sockets == 960
    with pytest.raises(ValueError, match="ulimit"):
        DescriptorBudget.plan(100, 10, api_connections=272)


async def _start_limited(*flags: str) -> tuple[subprocess.Popen[bytes], int, httpx.AsyncClient]:
    """``roomcast serve`` under a hard limit of ``LIMIT`` descriptors (it cannot raise it)."""
    return await start_serve(*flags, open_files=LIMIT, log_level="warning")


async def _upgrade(port: int, source: str) -> tuple[str, asyncio.StreamWriter | None]:
    """Ask for a WebSocket upgrade; the answer's status ("101", "503"), or how it failed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError as exc:
        return f"connect failed: {exc.errno}", None
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        async with asyncio.timeout(seconds(30)):
            head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return "closed without an answer", None
    except TimeoutError:
        writer.close()
        return "no answer", None
    status = head.split()[1].decode()
    if status != "101":
        writer.close()
        return status, None
    return status, writer


@pytest.mark.parametrize(
    ("max_connections", "api_connections", "lowered"), [(18_000, 256, True), (800, 16, False)]
)
async def test_a_connect_burst_under_1024_descriptors_is_answered(
    max_connections: int, api_connections: int, lowered: bool
) -> None:
    """1,500 upgrades at once under a 1,024-descriptor limit: each gets 101 or 503 (none
    is dropped unanswered), the admitted ones stay served, and /healthz answers on both
    ports meanwhile; with 18,000 configured, start-up warns and lowers the cap."""
    server, port, http = await _start_limited(
        "--max-connections", str(max_connections), "--api-max-connections", str(api_connections)
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        cap = int(await metric(http, "roomcast_max_connections"))
        assert cap <= LIMIT - RESERVED_DESCRIPTORS
        assert (cap < max_connections) == lowered
        sources = [f"127.0.0.{2 + n % 4}" for n in range(1500)]
        results = await asyncio.gather(*(_upgrade(port, source) for source in sources))
        statuses = Counter(status for status, _ in results)
        writers = [writer for _, writer in results if writer is not None]
        assert set(statuses) <= {"101", "503"}, statuses
        assert statuses["101"] == cap, statuses
        health = await http.get("/healthz")
        assert health.status_code == 200
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as ws_http:
            assert (await ws_http.get("/healthz")).status_code == 200
        assert await metric(http, "roomcast_connections") == cap
        assert await metric(http, "roomcast_accept_errors_total") == 0
        # The admitted clients are still served: a new one after the burst is refused
        # (503), and one that leaves makes room for the next.
        status, _ = await _upgrade(port, "127.0.0.6")
        assert status == "503"
        writers.pop().close()
        async with asyncio.timeout(seconds(10)):
            while await metric(http, "roomcast_connections") >= cap:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        client = await connect(f"ws://127.0.0.1:{port}/ws?user_id=late")
        await client.send(json.dumps({"type": "ping"}))
        assert json.loads(await recv(client))["type"] == "pong"
        await client.close()
    finally:
        for writer in writers:
            writer.close()
        await stop_serve(server, http)
        assert server.stderr is not None
        with server.stderr:
            stderr = server.stderr.read().decode()
    if lowered:
        assert "open-file limit (1024) holds at most" in stderr
        assert "--max-connections 18000" in stderr
    else:
        assert "open-file limit" not in stderr


async def test_an_accept_that_fails_with_emfile_is_counted_and_the_port_recovers() -> None:
    """With the process out of descriptors, accept() fails with EMFILE: the failure is
    reported, the port waits instead of dying, and once descriptors are free again the
    clients that waited in the backlog are accepted."""
    errors: list[OSError] = []
    accepted: list[asyncio.Transport] = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)  # type: ignore[arg-type]

        def connection_lost(self, exc: Exception | None) -> None:
            acceptor.released(self)

    acceptor = Acceptor(listening_sockets("127.0.0.1", 0, 128), Keep, 1000, errors.append)
    port = acceptor.sockets[0].getsockname()[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    clients: list[socket.socket] = []
    try:
        # Every descriptor this process may open is taken: the next accept has none.
        opened = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (opened + 12, hard))
        for _ in range(10):  # the clients' sockets take the remaining descriptors
            client = socket.socket()
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(("127.0.0.1", port))
            clients.append(client)
        await eventually(lambda: bool(errors), what="an accept failed with EMFILE")
        assert errors[0].errno in {24, 23}  # EMFILE, ENFILE
        assert acceptor.paused, "the port waits after an accept error"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        await eventually(lambda: len(accepted) == 10, what="the waiting clients accepted")
        await eventually(lambda: not acceptor.paused, what="the port accepting again")
    finally:
        for client in clients:
            client.close()
        acceptor.close()
    await eventually(lambda: acceptor.held == 0, what="every accepted socket released")


def test_port_0_gives_every_address_the_same_port() -> None:
    """Listening on every address of a host with port 0 picks one free port for all."""
    sockets = listening_sockets("", 0, 16)
    try:
        assert len({sock.getsockname()[1] for sock in sockets}) == 1
    finally:
        for sock in sockets:
            sock.close()
