"""Clients that never read lose their sockets, not just their registration, under uvicorn.

Timeline of the flood scenario: a healthy client and STALLED raw clients (tiny receive
buffers, handshake done, then never a recv) join one room; the server broadcasts 4 KiB frames,
never more than WINDOW ahead of the healthy client.  Each stalled client fills its kernel
buffers, uvicorn's 64 KiB buffer and then roomcast's LIMIT, and is closed with 4008; the close
frame cannot be written (uvicorn waits for the socket to drain), so CLOSE_TIMEOUT later the
socket must be reset.  Without that, uvicorn keeps such sockets ESTABLISHED indefinitely.

Sockets are observed from outside, as ``ss`` would: a TCP connection between the server's port
and a stalled client's port that is still ESTABLISHED at either end is a socket not yet gone.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import psutil
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection

from roomcast import ConnectionManager, MessageType
from tests.integration.test_manager import make_app
from tests.support import connect, eventually, running_server, seconds

STALLED = 8
MESSAGES = 100
SIZE = 4096
WINDOW = 8
LIMIT = 64 * 1024
CLOSE_TIMEOUT = seconds(1)
BOUND_UNITS = 5
"""Time units allowed on top of the close timeout for the sockets to go."""

PATHS = [
    pytest.param({}, {}, id="uvicorn-direct-writes"),
    pytest.param({"direct_writes": False}, {}, id="uvicorn-asgi-events"),
    pytest.param({}, {"ws": "wsproto"}, id="uvicorn-wsproto"),
    pytest.param(
        {},
        {"ws": "websockets"},
        id="uvicorn-legacy-websockets",
        marks=[
            pytest.mark.filterwarnings("ignore::uvicorn.config.UvicornDeprecationWarning"),
            pytest.mark.filterwarnings("ignore::DeprecationWarning"),
        ],
    ),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def stalled_client(base: str, path: str) -> socket.socket:
    """A raw client that completes the WebSocket handshake and then never reads again."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port_of(base)))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    response = b""
    async with asyncio.timeout(seconds(10)):
        while b"\r\n\r\n" not in response:
            chunk = await loop.sock_recv(sock, 1)  # byte by byte: leave every frame unread
            assert chunk, "connection closed during the handshake"
            response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def established(server_port: int, clients: list[socket.socket]) -> int:
    """TCP connections between the server's port and these clients still ESTABLISHED at
    either end (both ends live in this process)."""
    client_ports = {sock.getsockname()[1] for sock in clients}
    count = 0
    for conn in psutil.Process().net_connections(kind="tcp"):
        if not conn.raddr or conn.status != psutil.CONN_ESTABLISHED:
            continue
        ends = {conn.laddr.port, conn.raddr.port}
        if server_port in ends and ends & client_ports:
            count += 1
    return count


def counting_middleware(app: App) -> App:
    """A pure ASGI middleware that wraps ``send`` (to count events), as many do: it hides the
    server's transport from roomcast."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            await send(message)

        await app(scope, receive, counting_send)

    return wrapped


async def flood(manager: ConnectionManager, healthy: ClientConnection) -> list[int]:
    """Broadcast MESSAGES frames to room r at the healthy client's pace; returns the sequence
    numbers it received, in order."""
    received: list[int] = []
    progress = [asyncio.Event() for _ in range(MESSAGES)]

    async def read() -> None:
        while len(received) < MESSAGES:
            message = await healthy.recv()
            assert isinstance(message, bytes)
            seq = int.from_bytes(message[:4], "big")
            received.append(seq)
            progress[seq].set()

    reader = asyncio.create_task(read())
    padding = bytes(SIZE - 4)
    for seq in range(MESSAGES):
        if seq >= WINDOW:
            async with asyncio.timeout(seconds(30)):
                await progress[seq - WINDOW].wait()
        await manager.broadcast_to_room("r", seq.to_bytes(4, "big") + padding)
    async with asyncio.timeout(seconds(30)):
        await reader
    return received


@pytest.mark.parametrize(("manager_options", "server_options"), PATHS)
async def test_stalled_clients_sockets_are_reset_after_close_timeout(
    manager_options: dict[str, Any], server_options: dict[str, Any]
) -> None:
    """Clients that never read are closed as slow consumers and their sockets reset within
    close_timeout, under each of uvicorn's WebSocket implementations; a healthy neighbour
    gets every message."""
    manager = ConnectionManager(
        send_buffer_limit=LIMIT, close_timeout=CLOSE_TIMEOUT, **manager_options
    )
    async with running_server(make_app(manager), sndbuf=8192, **server_options) as base:
        healthy = await connect(f"{base}/ws?room=r")
        stalled = [await stalled_client(base, "/ws?room=r") for _ in range(STALLED)]
        try:
            await eventually(lambda: manager.active_connections == STALLED + 1)
            received = await flood(manager, healthy)
            assert received == list(range(MESSAGES))
            assert manager.stats.slow_consumer_closes == STALLED
            assert manager.active_connections == 1
            await eventually(
                lambda: established(port_of(base), stalled) == 0,
                timeout_units=CLOSE_TIMEOUT / seconds(1) + BOUND_UNITS,
                what="stalled clients' sockets gone",
            )
            assert manager.stats.unabortable_closes == 0
        finally:
            for sock in stalled:
                sock.close()
            await healthy.close()


async def test_close_written_but_never_answered_is_reset_after_close_timeout() -> None:
    """A client that never reads is closed while its close frame still fits in uvicorn's
    buffer; it never answers, and its socket is reset after close_timeout (uvicorn's own
    close timer, 10 s, only asks for a graceful close that waits for the buffer to drain)."""
    manager = ConnectionManager(send_buffer_limit=LIMIT, close_timeout=CLOSE_TIMEOUT)
    async with running_server(make_app(manager), sndbuf=8192) as base:
        stalled = [await stalled_client(base, "/ws?room=r") for _ in range(STALLED)]
        try:
            await eventually(lambda: manager.active_connections == STALLED)
            # More than the kernel buffers hold, far less than uvicorn's 64 KiB high-water
            # mark: the close frame is written behind frames the client never reads.
            for seq in range(8):
                await manager.broadcast_to_room("r", seq.to_bytes(4, "big") + bytes(SIZE - 4))
            await manager.broadcast_to_room("r", "bye", type=MessageType.CLOSE)
            assert manager.active_connections == 0
            assert manager.stats.slow_consumer_closes == 0
            await eventually(
                lambda: established(port_of(base), stalled) == 0,
                timeout_units=CLOSE_TIMEOUT / seconds(1) + BOUND_UNITS,
                what="sockets gone",
            )
        finally:
            for sock in stalled:
                sock.close()


async def test_wrapped_send_cannot_be_aborted_and_is_counted() -> None:
    """Behind a middleware that wraps send, roomcast cannot reach the socket: the closes that
    were not written within close_timeout are counted in unabortable_closes, and the sockets
    stay until the clients go."""
    manager = ConnectionManager(send_buffer_limit=LIMIT, close_timeout=CLOSE_TIMEOUT)
    app: FastAPI = make_app(manager)
    async with running_server(counting_middleware(app), sndbuf=8192) as base:
        healthy = await connect(f"{base}/ws?room=r")
        stalled = [await stalled_client(base, "/ws?room=r") for _ in range(STALLED)]
        try:
            await eventually(lambda: manager.active_connections == STALLED + 1)
            assert await flood(manager, healthy) == list(range(MESSAGES))
            assert manager.stats.slow_consumer_closes == STALLED
            await eventually(
                lambda: manager.stats.unabortable_closes == STALLED,
                timeout_units=CLOSE_TIMEOUT / seconds(1) + BOUND_UNITS,
            )
            assert established(port_of(base), stalled) == 2 * STALLED
        finally:
            for sock in stalled:
                sock.close()
            await healthy.close()
