"""The HTTP API port: publishing from backends, plus health and metrics.

The WebSocket port can only answer bodiless GETs (picows serves the upgrade), so requests with
a body go to this small HTTP/1.1 server.  httptools parses; each connection carries one request
and is closed after the answer (``Connection: close``), which is all an API for backends needs.

Routes::

    POST /api/publish   {"room": "lobby", "data": ...} or {"user_id": "alice", "data": ...}
                        with header X-API-Key: KEY  ->  200 {"delivered": N}
                        ("batch": [...] instead of "data" sends several messages in order,
                        in one event-loop iteration; N counts deliveries)
    GET  /healthz, /readyz, /metrics

A missing or wrong key gets 401 and nothing is sent; keys are compared in constant time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any, cast

import httptools

__all__ = ["ApiRequest", "ApiResponse", "serve_api"]

logger = logging.getLogger("roomcast.api")

MAX_BODY = 1 << 20
MAX_HEADERS = 64
MAX_HEAD_BYTES = 16 * 1024
LINGER_SECONDS = 2.0


@dataclasses.dataclass(slots=True)
class ApiRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, value: Any) -> ApiResponse:
        return cls(status, json.dumps(value).encode() + b"\n")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def key_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; no key configured means nobody matches."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class _HttpConnection(asyncio.Protocol):
    """One request per connection, answered by ``handler``."""

    def __init__(self, handler: Callable[[ApiRequest], ApiResponse]) -> None:
        self._handler = handler
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._answered = False
        self._complete = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not necessarily an asyncio.Transport subclass (uvloop's is
        # not), so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._answer(ApiResponse.json(400, {"error": "malformed HTTP request"}))

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        if len(self._headers) >= MAX_HEADERS:
            self._answer(ApiResponse.json(431, {"error": "too many headers"}))
            return
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY:
            self._answer(ApiResponse.json(413, {"error": f"body over {MAX_BODY} bytes"}))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        if self._answered:
            return
        method = self._parser.get_method().decode("latin-1")
        path = httptools.parse_url(self._url).path.decode("latin-1")
        request = ApiRequest(method, path, self._headers, b"".join(self._body))
        try:
            response = self._handler(request)
        except Exception:
            logger.exception("API handler failed for %s %s", method, path[:100])
            response = ApiResponse.json(500, {"error": "internal error"})
        self._answer(response)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._answer(ApiResponse.json(431, {"error": "request head too large"}))

    def _answer(self, response: ApiResponse) -> None:
        if self._answered or self._transport is None:
            return
        self._answered = True
        reason = _REASONS.get(response.status, "Error")
        head = (
            f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        self._transport.write(head + response.body)
        if self._complete:
            self._transport.close()
            return
        # Answered before the request ended (too large, malformed): closing now, with the
        # client's bytes unread, would make the kernel reset the connection and destroy the
        # answer in flight.  Half-close, ignore the rest, and close after a grace period.
        if self._transport.can_write_eof():
            self._transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self._transport.close)


async def serve_api(
    handler: Callable[[ApiRequest], ApiResponse], host: str, port: int, reuse_port: bool = False
) -> asyncio.Server:
    """Listen for API requests; each is answered by ``handler`` (synchronous, non-blocking).

    ``reuse_port``: share the port with other processes (SO_REUSEPORT), as workers do.
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _HttpConnection(handler),
        host,
        port,
        reuse_address=True,
        reuse_port=reuse_port or None,
        backlog=1024,
    )
