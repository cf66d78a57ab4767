"""A minimal WebSocket client over a plain socket, and the frames it sends, built by hand.

For drills that play a hostile or broken client: ``client_frame`` builds any masked frame
(FIN=0, empty continuations, pings by the thousand), and ``WsClient`` sends exactly the bytes
it is given, counts what arrives, can stop reading after the handshake, answers pings and
close frames.  The load-generating client is ``clients.py``'s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from harness.limits import bound_socket
from harness.raw_http import status_of

__all__ = [
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "TEXT",
    "Refused",
    "WsClient",
    "abort_all",
    "client_frame",
    "connect",
    "connect_many",
    "text_frame",
    "upgrade_request",
]

CONTINUATION, TEXT, CLOSE, PING, PONG = 0x0, 0x1, 0x8, 0x9, 0xA
"""Opcodes (RFC 6455)."""


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One masked client frame, built by hand so that it can be anything a hostile client
    sends."""
    key = os.urandom(4)
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    if size:
        repeated = (key * (size // 4 + 1))[:size]
        masked = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
        payload = masked.to_bytes(size, "big")
    return head + key + payload


def text_frame(message: dict[str, Any]) -> bytes:
    """A text frame holding ``message`` as JSON (UTF-8, not ASCII-escaped)."""
    return client_frame(TEXT, json.dumps(message, ensure_ascii=False).encode())


def upgrade_request(port: int, path: str) -> bytes:
    """The HTTP request that asks 127.0.0.1:``port`` to upgrade ``path`` to a WebSocket."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Refused(Exception):
    """The upgrade was answered with another status than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upgrade answered {status}")
        self.status = status


class WsClient(asyncio.Protocol):
    """A WebSocket client over a plain socket: sends exactly the bytes it is given; counts what
    arrives, hands text frames to ``on_text``, answers pings and close frames.

    ``stall``: stop reading right after the handshake (a client that never reads again);
    ``parse=False``: only count the bytes.
    """

    def __init__(
        self,
        *,
        parse: bool = True,
        stall: bool = False,
        on_text: Callable[[bytes], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[int] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        """Done when a close frame arrived or the connection was lost."""
        self.ended_at = 0.0
        self.close_code: int | None = None
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self._parse, self._stall, self._on_text = parse, stall, on_text
        self._buffer = bytearray()
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._upgraded:
            self._buffer += data
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = bytes(self._buffer[:end]), bytes(self._buffer[end + 4 :])
            self._buffer.clear()
            status = status_of(head)
            self._upgraded = status == 101
            if not self.handshake.done():
                self.handshake.set_result(status)
            if not self._upgraded:
                return
            if self._stall and self.transport is not None:
                self.transport.pause_reading()
            if not data:
                return
        self.received += len(data)
        if self._parse:
            self._buffer += data
            self._frames()

    def _frames(self) -> None:
        buffer, position = self._buffer, 0
        while len(buffer) - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            size, start = second & 0x7F, position + 2
            if size == 126:
                if len(buffer) < start + 2:
                    break
                size, start = int.from_bytes(buffer[start : start + 2], "big"), start + 2
            elif size == 127:
                if len(buffer) < start + 8:
                    break
                size, start = int.from_bytes(buffer[start : start + 8], "big"), start + 8
            if len(buffer) < start + size:
                break
            payload = bytes(buffer[start : start + size])
            position = start + size
            opcode = first & 0x0F
            if opcode == TEXT and self._on_text is not None:
                self._on_text(payload)
            elif opcode == PING:
                self.send(client_frame(PONG, payload))
            elif opcode == CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send(client_frame(CLOSE, payload[:2]))
                self._end()
        del buffer[:position]

    def _end(self) -> None:
        if not self.ended.done():
            self.ended_at = time.monotonic()
            self.ended.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during the handshake"))
        self._end()

    def how_it_ended(self, since: float) -> str:
        """How the connection ended: its close code (or that none came) and the seconds since
        ``since`` (a ``time.monotonic()``), or "still open"."""
        if not self.ended.done():
            return "still open"
        code = f"closed {self.close_code}" if self.close_code else "closed without a close frame"
        return f"{code} after {self.ended_at - since:.2f} s"


async def connect(
    port: int,
    path: str,
    *,
    source: str = "127.0.0.1",
    rcvbuf: int = 0,
    parse: bool = True,
    stall: bool = False,
    on_text: Callable[[bytes], None] | None = None,
    limit: float = 10.0,
) -> WsClient:
    """A client of 127.0.0.1:``port`` that completed the upgrade of ``path``, from
    ``source`` (``rcvbuf``: a small ``SO_RCVBUF`` set before connecting).

    Raises:
        Refused: the answer was not 101.
    """
    loop = asyncio.get_running_loop()
    sock = bound_socket(source, rcvbuf)
    client: WsClient | None = None
    try:
        async with asyncio.timeout(limit):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            _, client = await loop.create_connection(
                lambda: WsClient(parse=parse, stall=stall, on_text=on_text), sock=sock
            )
            client.send(upgrade_request(port, path))
            status = await client.handshake
    except BaseException:
        if client is not None:
            client.abort()
        else:
            sock.close()
        raise
    if status != 101:
        client.abort()
        raise Refused(status)
    return client


async def connect_many(
    port: int,
    paths: Sequence[str],
    sources: Sequence[str],
    on_text: Callable[[bytes], None] | None = None,
) -> list[WsClient]:
    """Clients for ``paths``, the n-th from ``sources[n % len(sources)]``, at most 200
    handshakes in flight."""
    gate = asyncio.Semaphore(200)

    async def one(n: int, path: str) -> WsClient:
        async with gate:
            return await connect(port, path, source=sources[n % len(sources)], on_text=on_text)

    return list(await asyncio.gather(*(one(n, path) for n, path in enumerate(paths))))


def abort_all(clients: Sequence[WsClient]) -> None:
    """Drop every connection at once (no close frame)."""
    for client in clients:
        client.abort()
