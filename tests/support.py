"""Shared test machinery: a real uvicorn server in the test's event loop, and real clients.

The server runs in the same loop as the test so that tests can look at the manager's state
directly; everything between the clients and the server still crosses real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

UNIT = float(os.environ.get("ROOMCAST_TEST_TIME_UNIT", "1.0"))
"""Seconds per time unit in real-time tests; raise it on a slow or loaded machine."""


def seconds(units: float) -> float:
    """``units`` time units in seconds."""
    return units * UNIT


class _QuietServer(uvicorn.Server):
    """uvicorn without signal handlers: pytest owns the signals in a test run."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listening_socket(sndbuf: int | None = None) -> socket.socket:
    """A TCP socket listening on a free loopback port.

    ``sndbuf`` sets SO_SNDBUF; Linux copies it to every accepted socket, which makes a slow
    client's kernel buffers (and so the time to overflow roomcast's buffer) small and
    predictable.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running_server(
    app: Any, *, sndbuf: int | None = None, **config: Any
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free port; yields ``ws://127.0.0.1:PORT``."""
    sock = listening_socket(sndbuf)
    port = sock.getsockname()[1]
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "off"}
    options.update(config)
    server = _QuietServer(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(seconds(10)):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(seconds(30)):
            await task
        sock.close()


async def connect(url: str, **kwargs: Any) -> ClientConnection:
    """A real websockets client, without compression so frames are what the server wrote."""
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", seconds(10))
    return await websockets.connect(url, **kwargs)


async def recv(client: ClientConnection, timeout_units: float = 5) -> str | bytes:
    """The next message, or TimeoutError after ``timeout_units``."""
    async with asyncio.timeout(seconds(timeout_units)):
        return await client.recv()


async def eventually(condition: Any, timeout_units: float = 5, what: str = "") -> None:
    """Wait until ``condition()`` is true; fail the test after ``timeout_units``.

    For state that changes when the server processes an event it cannot report back (a
    disconnect seen by the server); a condition, not a fixed sleep.
    """
    try:
        async with asyncio.timeout(seconds(timeout_units)):
            while not condition():  # noqa: ASYNC110 - polls state nobody signals
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"condition not met in time: {what or condition}") from None
