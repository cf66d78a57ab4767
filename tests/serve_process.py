"""A real ``roomcast serve`` process for tests, and a raw WebSocket client that can misbehave.

The server runs in its own process so that a test measures that process's event loop: a stall
there shows up as a late answer to a neighbour, as it would in production.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import resource
import signal
import subprocess
import sys

import httpx

from tests.redis_support import free_port
from tests.support import seconds


async def metric(http: httpx.AsyncClient, name: str) -> float:
    """One sample of the server's /metrics (the unlabelled series ``name``)."""
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


async def start_serve(
    *flags: str,
    env: dict[str, str] | None = None,
    open_files: int | None = None,
    log_level: str = "error",
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], int, httpx.AsyncClient]:
    """A ``roomcast serve`` process with an API port (key "k"), once it answers /readyz.

    ``open_files``: its RLIMIT_NOFILE, soft and hard (it cannot raise it); then its stderr is
    a pipe for the test to read.  ``port``: the WebSocket port (a free one unless given; give
    the last one's to restart a server where its clients will look for it).
    """
    port, api_port = port or free_port(), free_port()
    command = ["serve", "--port", str(port), "--api-port", str(api_port), "--log-level", log_level]
    server = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
        [sys.executable, "-m", "roomcast.serve.cli", *command, *flags],
        env={**os.environ, "ROOMCAST_API_KEY": "k", **(env or {})},
        stderr=subprocess.PIPE if open_files is not None else None,
        preexec_fn=None if open_files is None else functools.partial(_limit_files, open_files),
    )
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
    async with asyncio.timeout(seconds(20)):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/readyz")).status_code == 200:
                    return server, port, http
            assert server.poll() is None, "roomcast serve exited"
            await asyncio.sleep(0.05)


def _limit_files(limit: int) -> None:  # pragma: no cover - runs in the child process
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


async def stop_serve(server: subprocess.Popen[bytes], http: httpx.AsyncClient) -> None:
    """SIGTERM, then SIGKILL if it has not exited after 20 s."""
    await http.aclose()
    server.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(server.wait, 20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One masked client frame, built by hand so that it can be anything a hostile client
    sends (websockets refuses to send some of these)."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


TEXT, CONTINUATION, PING = 0x1, 0x0, 0x9


class RawClient:
    """A WebSocket client over a plain stream: it sends exactly the bytes a test gives it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str = "/ws", host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        async with asyncio.timeout(seconds(10)):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write ``data``; a server that hung up mid-way is not an error here."""
        with contextlib.suppress(ConnectionError):
            self.writer.write(data)
            await self.writer.drain()

    async def close_code(self, timeout_units: float = 10) -> int | None:
        """Read until the server's close frame and return its code (None: closed without
        one)."""
        async with asyncio.timeout(seconds(timeout_units)):
            while True:
                try:
                    first = await self.reader.readexactly(2)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return None
                size = first[1] & 0x7F
                if size == 126:
                    size = int.from_bytes(await self.reader.readexactly(2), "big")
                elif size == 127:
                    size = int.from_bytes(await self.reader.readexactly(8), "big")
                payload = await self.reader.readexactly(size)
                if first[0] & 0x0F == 0x8:
                    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005

    def abort(self) -> None:
        self.writer.transport.abort()
