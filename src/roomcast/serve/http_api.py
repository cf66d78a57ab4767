"""The small HTTP/1.1 server of the API port (``POST /api/publish`` and the GETs; see
``publish_api``).

The WebSocket port can only answer bodiless GETs (picows serves the upgrade), so requests with
a body come here.  httptools parses; each connection carries one request and is closed after
the answer (``Connection: close``), which is all an API for backends needs.

The port shares the process's file descriptors with the WebSocket port, so a client must not
be able to hold one for long: the request head must arrive within ``header_timeout`` of the
accept and the body within ``body_timeout`` of the head (absolute deadlines, so a client
trickling one byte a second gains nothing), a declared body over ``MAX_BODY`` is refused before
it is sent, and at ``max_connections`` a new connection takes the place of the oldest one that
holds no request in progress.  ``ApiStats`` counts what these limits did, for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import cast

import httptools

from roomcast.serve.api_messages import Answer, ApiRequest, ApiResponse
from roomcast.serve.listener import Acceptor, listening_sockets

__all__ = ["Answer", "ApiRequest", "ApiResponse", "ApiStats", "serve_api"]

logger = logging.getLogger("roomcast.api")

MAX_BODY = 1 << 20
MAX_HEADERS = 64
MAX_HEAD_BYTES = 16 * 1024
LINGER_SECONDS = 2.0
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
MAX_CONNECTIONS = 256
API_REFUSAL_HEADROOM = 16
"""Sockets accepted past ``max_connections`` at once, each answered 503 and closed."""


@dataclasses.dataclass(slots=True)
class ApiStats:
    """What the API port's limits did, for the server to render in ``/metrics``.

    The caller creates it and passes it to ``serve_api``, which only ever updates it in place,
    so the server can read it at any time without asking the listener.

    Attributes:
        open_connections: accepted connections whose socket is still open, from the accept to
            its close; this is the API port's share of the process's file descriptors.  A
            connection refused over the cap counts too, for the moment its socket exists.
        timeouts: connections answered 408 because their request head or body did not arrive
            in time (counter).
        refused_connections: connections answered 503 because ``max_connections`` were open
            and none of them could make room (counter).
        evicted_connections: connections dropped to make room for a new one at the cap: the
            oldest of those that were only lingering or still waiting for their request head
            (counter).  So idle or slow clients cannot lock callers out of the port.
    """

    open_connections: int = 0
    timeouts: int = 0
    refused_connections: int = 0
    evicted_connections: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Limits:
    """The limits of one listener, shared by all its connections."""

    header_timeout: float
    body_timeout: float
    max_connections: int
    linger: float


class _Phase(enum.Enum):
    """Where a connection is, and so what its one timer (if any) is waiting for.

    ======= ============================================ ====================================
    phase   meaning                                      timer
    ======= ============================================ ====================================
    HEAD    reading the request line and headers         408 at accept + header_timeout
    BODY    head complete, reading the body              408 at head end + body_timeout
    LINGER  answered before the request ended: half-     abort at answer + linger
            closed, the client's bytes read and dropped
    CLOSING answered after the request (or refused):     abort at answer + linger, only if
            close() called, the answer being flushed     the answer is still buffered
    CLOSED  the socket is closed (connection_lost)       none
    ======= ============================================ ====================================

    HEAD -> BODY -> CLOSING is a served request; HEAD or BODY -> LINGER an early answer (400,
    408, 413, 431); HEAD -> CLOSING a refusal over the cap; any phase -> CLOSED.
    """

    HEAD = enum.auto()
    BODY = enum.auto()
    LINGER = enum.auto()
    CLOSING = enum.auto()
    CLOSED = enum.auto()


class _HttpConnection(asyncio.Protocol):
    """One request per connection, answered by ``handler``, within the listener's limits.

    Each connection has at most one timer (a ``call_later`` handle, see ``_Phase``) and no
    task; the timer is replaced on every phase change and cancelled when the socket closes.
    """

    _transport: asyncio.Transport  # from connection_made on; nothing happens before it

    def __init__(
        self,
        handler: Callable[[ApiRequest], Answer],
        limits: _Limits,
        stats: ApiStats,
        released: Callable[[asyncio.BaseProtocol], None] = lambda _: None,
        evictable: dict[_HttpConnection, None] | None = None,
    ) -> None:
        self._handler = handler
        # The listener's connections that hold no request in progress (waiting for their head,
        # or lingering after an answer), oldest first: the ones to drop at the cap.
        self._evictable = {} if evictable is None else evictable
        self._released = released
        self._limits = limits
        self._stats = stats
        self._parser = httptools.HttpRequestParser(self)
        self._phase = _Phase.HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._pending: asyncio.Future[ApiResponse] | None = None

    @property
    def timer_pending(self) -> bool:
        """Whether a timer of this connection is still scheduled (for leak checks)."""
        return self._timer is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not necessarily an asyncio.Transport subclass (uvloop's is
        # not), so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        stats = self._stats
        stats.open_connections += 1
        if stats.open_connections > self._limits.max_connections and not self._make_room():
            # Closed at once rather than lingering: the point is to give the descriptor back.
            # A client that had already sent its request may see a reset instead of the 503.
            stats.refused_connections += 1
            self._answer(ApiResponse.json(503, {"error": "too many API connections"}), linger=False)
            return
        self._evictable[self] = None
        self._schedule(self._limits.header_timeout, self._expire)

    def _make_room(self) -> bool:
        """Drop a connection that holds no request in progress, one that only lingers after
        its answer first, else the oldest still waiting for its head; False if none."""
        if not self._evictable:
            return False
        victim = next(
            (c for c in self._evictable if c._phase is _Phase.LINGER), next(iter(self._evictable))
        )
        self._stats.evicted_connections += 1
        victim._evict()
        return True

    def _evict(self) -> None:
        del self._evictable[self]
        if self._phase is _Phase.LINGER:
            self._cancel_timer()
            self._abort()
        else:
            self._answer(ApiResponse.json(503, {"error": "server busy; retry"}), linger=False)
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._evictable.pop(self, None)
        self._cancel_timer()
        self._phase = _Phase.CLOSED
        self._stats.open_connections -= 1
        self._released(self)

    def data_received(self, data: bytes) -> None:
        if self._phase is not _Phase.HEAD and self._phase is not _Phase.BODY:
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

    def on_headers_complete(self) -> None:
        if self._phase is not _Phase.HEAD:
            return
        declared = self._headers.get("content-length", "")
        # llhttp has checked that it is a number; the length test keeps int() off huge ones.
        if declared.isdigit() and (len(declared) > 9 or int(declared) > MAX_BODY):
            # Refused before the body is sent: waiting for it would hold the connection open
            # for as long as the client cares to take.
            self._answer(ApiResponse.json(413, {"error": f"body over {MAX_BODY} bytes"}))
            return
        self._phase = _Phase.BODY
        self._evictable.pop(self, None)  # a request in progress is not dropped for another
        self._schedule(self._limits.body_timeout, self._expire)

    def on_body(self, body: bytes) -> None:
        if self._phase is not _Phase.BODY:
            return
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY:
            self._answer(ApiResponse.json(413, {"error": f"body over {MAX_BODY} bytes"}))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._phase is not _Phase.BODY:
            return
        method = self._parser.get_method().decode("latin-1")
        url = httptools.parse_url(self._url)
        path = url.path.decode("latin-1")
        query = (url.query or b"").decode("latin-1")
        request = ApiRequest(method, path, self._headers, b"".join(self._body), query)
        try:
            response = self._handler(request)
        except Exception:
            logger.exception("API handler failed for %s %s", method, path[:100])
            response = ApiResponse.json(500, {"error": "internal error"})
        if isinstance(response, ApiResponse):
            self._answer(response, linger=False)
            return
        # An answer that needs I/O (a history read): the body deadline still runs (408).
        self._pending = asyncio.ensure_future(response)
        self._pending.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Future[ApiResponse]) -> None:
        self._pending = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.error("API handler failed", exc_info=error)
            self._answer(ApiResponse.json(500, {"error": "internal error"}), linger=False)
        else:
            self._answer(task.result(), linger=False)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._answer(ApiResponse.json(431, {"error": "request head too large"}))

    def _expire(self) -> None:
        """The head or the body did not arrive in time."""
        self._timer = None
        self._stats.timeouts += 1
        self._answer(ApiResponse.json(408, {"error": "request not received in time"}))

    def _abort(self) -> None:
        """The linger is over: close the socket even if the client neither reads nor closes."""
        self._timer = None
        self._transport.abort()

    def _schedule(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _answer(self, response: ApiResponse, *, linger: bool = True) -> None:
        """Send ``response`` and close; ``linger`` if the request may not have ended."""
        if self._phase is not _Phase.HEAD and self._phase is not _Phase.BODY:
            return
        transport = self._transport
        reason = HTTPStatus(response.status).phrase
        head = (
            f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        transport.write(head + response.body)
        self._evictable.pop(self, None)
        if not linger:
            self._phase = _Phase.CLOSING
            transport.close()
            # close() waits for the answer to be flushed, which a client that does not read
            # could make last for ever; a small answer normally left already.
            if transport.get_write_buffer_size():
                self._schedule(self._limits.linger, self._abort)
            else:
                self._cancel_timer()
            return
        # Answered before the request ended (too large, malformed, too slow): closing now, with
        # the client's bytes unread, would make the kernel reset the connection and destroy the
        # answer in flight.  Half-close, drop the rest, and abort after a bounded grace period
        # (close() could wait for ever on a client that does not read).
        self._phase = _Phase.LINGER
        self._evictable[self] = None  # nothing left to serve: the first to go at the cap
        if transport.can_write_eof():
            transport.write_eof()
        self._schedule(self._limits.linger, self._abort)


async def serve_api(
    handler: Callable[[ApiRequest], Answer],
    host: str,
    port: int,
    reuse_port: bool = False,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    linger: float = LINGER_SECONDS,
    stats: ApiStats | None = None,
    on_accept_error: Callable[[OSError], None] | None = None,
) -> Acceptor:
    """Listen for API requests; each is answered by ``handler`` (synchronous, non-blocking).

    Args:
        handler: answers one request; called once the whole body has arrived.
        host: the address to listen on.
        port: the port to listen on (0: any free port).
        reuse_port: share the port with other processes (SO_REUSEPORT), as workers do.
        header_timeout: seconds from the accept within which the request line and headers
            must have arrived, else 408 and close.  Absolute, not reset by each byte, so a
            client trickling bytes (slowloris) holds a descriptor no longer than an idle one.
        body_timeout: seconds from the end of the head within which the whole body must have
            arrived, else 408 and close.
        max_connections: API connections open at once (lingering ones included).  At the cap a
            new connection takes the place of the oldest one that holds no request in progress
            (lingering after its answer, or still waiting for its head: it gets 503 and is
            closed), so idle or slow clients cannot lock callers out; only when every open
            connection is sending a body is the newcomer answered 503 and closed at once.
            Each request is answered within one event-loop
            iteration of its last byte, so even thousands of publishes a second keep only a
            few connections open; 256 leaves room for a large fleet of backends while holding
            the API port to a quarter of a 1,024-descriptor process, so that idle or slow
            clients there cannot starve the WebSocket port.
        linger: seconds an answer sent before the request ended (400, 408, 413, 431) is given
            to reach the client over a half-closed connection before the socket is aborted;
            also the bound on flushing any answer to a client that does not read.
        stats: updated in place with open connections, timeouts and refusals; pass one to
            expose them (one per listener).

        on_accept_error: hears accepts that failed for want of descriptors (the port then
            waits 0.1 s); a warning is logged if omitted.

    Returns:
        What accepts the connections (``sockets``, ``close()``); see ``roomcast.serve.listener``
        for why it is not ``loop.create_server``.

    Raises:
        ValueError: a timeout, the linger or ``max_connections`` is not positive.
    """
    if min(header_timeout, body_timeout, linger) <= 0 or max_connections < 1:
        raise ValueError("API timeouts, linger and max_connections must be positive")
    limits = _Limits(header_timeout, body_timeout, max_connections, linger)
    evictable: dict[_HttpConnection, None] = {}
    counters = stats if stats is not None else ApiStats()
    sockets = listening_sockets(host, port, backlog=1024, reuse_port=reuse_port)
    acceptor: Acceptor | None = None

    def released(protocol: asyncio.BaseProtocol) -> None:
        if acceptor is not None:
            acceptor.released(protocol)

    # The acceptor stops accepting a little above the cap: the sockets past it are the ones
    # being answered 503, and they go at once.
    acceptor = Acceptor(
        sockets,
        lambda: _HttpConnection(handler, limits, counters, released, evictable),
        max_connections + API_REFUSAL_HEADROOM,
        on_accept_error or (lambda exc: logger.warning("API accept failed: %s", exc)),
    )
    return acceptor
