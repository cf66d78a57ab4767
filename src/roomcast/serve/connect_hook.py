"""The connect hook in ``roomcast serve``: the backend decides who a client is, before picows
reads the client's upgrade.

picows calls roomcast's upgrade callback (``Gate.admit``) synchronously, from inside its own
``buffer_updated``, and takes a response or a listener back at once: nothing there can await
a backend.  So the question is asked before picows sees a byte.  ``HeadReader`` stands in front
of picows' protocol (as ``listener.FirstRequest`` does on a server without a connect hook),
reads the whole request head into a buffer of its own (at most ``MAX_HEAD`` bytes: a longer
head is answered 431), parses it with httptools and, for a request to ``/ws`` or ``/ws/ROOM``,
stops reading the socket and asks the hook.  Then either:

- the hook refused (or failed under the deny policy): the HTTP refusal is written here (the
  backend's 401/403 and reason, 503 on failure), and the socket is drained until the client
  closes or picows' handshake timeout (armed when the socket was accepted) closes it;
- it admitted the client: the transport goes back to picows with the buffered bytes, fed
  synchronously while ``HandOver`` holds the decision, so that ``Gate.admit``, which picows
  calls from within that feeding, finds it (``HandOver.take``) without any key or lookup.

Nothing waits unbounded: a hook call ends within ``--hook-timeout`` (less than the handshake
timeout), the calls at the backend are capped by ``--hook-max-in-flight``, and every socket
waiting for its decision holds one of the port's socket budget, so the budget bounds how many
wait.  A socket lost meanwhile drops its decision when it comes.  Without a connect hook none
of this runs: the upgrade path is the one it always was.
"""

from __future__ import annotations

import asyncio
import enum
import http
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import httptools

from roomcast.hooks.decisions import ConnectAllowed, ConnectDecision, Denied

__all__ = ["MAX_HEAD", "ConnectAsker", "ConnectHook", "HandOver", "HeadReader"]

MAX_HEAD = 16 * 1024
"""Bytes a request head may take (cookies included) on a server with a connect hook."""

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
_FIRST_READ = 2048
"""The buffer a head is read into at first: most upgrade requests fit (a waiting client holds
its buffer: 2 KiB each, not 16)."""
_DRAIN = bytearray(4096)  # where the bytes of a refused client go (never read)


class ConnectAsker(Protocol):
    """What asks the backend (``HookClient`` has it)."""

    async def connect(
        self, headers: Iterable[tuple[str, str]], query: str, path: str, remote: str | None
    ) -> ConnectDecision: ...


class HandOver:
    """The connect decision of the upgrade picows is reading right now, for the gate."""

    __slots__ = ("decision",)

    def __init__(self) -> None:
        self.decision: ConnectAllowed | None = None

    def take(self) -> ConnectAllowed | None:
        """The decision, once (None: the listener handed this request over undecided)."""
        decision, self.decision = self.decision, None
        return decision


class ConnectHook:
    """Puts a ``HeadReader`` in front of each new socket, and asks the backend for it.

    Args:
        asker: Calls the backend (its own timeout and in-flight cap).
        spawn: Runs a call in the background, owned by the server.
        refused: Counts and logs an upgrade refused here (status, reason).
        has_token: Whether the request brings a token the server verifies itself (with
            ``--jwt-*``: a token wins, the hook decides the rest); None: never.
    """

    def __init__(
        self,
        asker: ConnectAsker,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        refused: Callable[[int, str], None],
        has_token: Callable[[list[tuple[str, str]], str], bool] | None = None,
    ) -> None:
        self.handover = HandOver()
        self._asker = asker
        self._spawn = spawn
        self._refused = refused
        self._has_token = has_token

    def front(
        self,
        inner: asyncio.BufferedProtocol,
        transport: asyncio.Transport,
        with_body: Callable[[bytes], bytes],
    ) -> HeadReader:
        """The protocol to stand in front of picows' ``inner`` (``listener.server_protocols``'
        ``front``)."""
        return HeadReader(self, inner, transport, with_body)

    def wants(self, path: str, query: str, headers: list[tuple[str, str]]) -> bool:
        """Whether the hook decides this request: an upgrade path, and no token to verify."""
        if path != "/ws" and not path.startswith("/ws/"):
            return False  # (pages and /echo: picows and the pages answer them)
        return self._has_token is None or not self._has_token(headers, query)

    def ask(
        self, reader: HeadReader, headers: list[tuple[str, str]], query: str, path: str
    ) -> None:
        peer = reader.transport.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._spawn(self._decide(reader, headers, query, path, remote))

    async def _decide(
        self,
        reader: HeadReader,
        headers: list[tuple[str, str]],
        query: str,
        path: str,
        remote: str | None,
    ) -> None:
        decision = await self._asker.connect(headers, query, path, remote)
        reader.decided(decision)

    def refuse(self, reader: HeadReader, status: int, reason: str) -> None:
        self._refused(status, reason)
        reader.answer(_response(status, reason))


class _State(enum.Enum):
    READING = "reading"  # the head is arriving
    ASKING = "asking"  # the hook is asked; the socket is not read
    REFUSED = "refused"  # answered here; the client's bytes are dropped until it goes
    HANDED = "handed"  # picows' from here
    LOST = "lost"


class HeadReader(asyncio.BufferedProtocol):
    """A socket's protocol until its request head is read and the connect hook decided."""

    __slots__ = ("_buffer", "_hook", "_inner", "_size", "_state", "_with_body", "transport")

    def __init__(
        self,
        hook: ConnectHook,
        inner: asyncio.BufferedProtocol,
        transport: asyncio.Transport,
        with_body: Callable[[bytes], bytes],
    ) -> None:
        self._hook = hook
        self._inner = inner
        self.transport = transport
        self._with_body = with_body
        self._buffer = bytearray(_FIRST_READ)  # (grown as the head needs, up to MAX_HEAD)
        self._size = 0
        self._state = _State.READING

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state is _State.REFUSED or self._size >= MAX_HEAD:
            return memoryview(_DRAIN)
        if self._size == len(self._buffer):  # a new buffer, never a resize of one lent out
            grown = bytearray(min(2 * self._size, MAX_HEAD))
            grown[: self._size] = self._buffer
            self._buffer = grown
        return memoryview(self._buffer)[self._size :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._state is not _State.READING:
            if self._state is _State.ASKING:  # (read before the pause took effect: kept)
                self._size = min(self._size + nbytes, MAX_HEAD)
            return
        start = max(0, self._size - 3)
        self._size += nbytes
        end = self._buffer.find(b"\r\n\r\n", start, self._size)
        if end >= 0:
            self._read_head(bytes(self._buffer[: end + 4]))
        elif self._size >= MAX_HEAD:
            self._hook.refuse(self, 431, "request head too large")

    def _read_head(self, head: bytes) -> None:
        parsed = _Head()
        parser = httptools.HttpRequestParser(parsed)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # (an upgrade request: what is expected)
        except httptools.HttpParserError:
            self._hook.refuse(self, 400, "malformed HTTP request")
            return
        method = parser.get_method()
        if method in _BODY_METHODS:
            self.answer(self._with_body(method))
            return
        path, _, query = parsed.url.decode("latin-1").partition("?")
        if not self._hook.wants(path, query, parsed.headers):
            self._hand(None)
            return
        self._state = _State.ASKING
        self.transport.pause_reading()
        self._hook.ask(self, parsed.headers, query, path)

    def decided(self, decision: ConnectDecision) -> None:
        """The hook's decision (dropped if the socket went meanwhile)."""
        if self._state is not _State.ASKING:
            return
        if isinstance(decision, Denied):
            self._hook.refuse(self, decision.status, decision.reason)
        else:
            self._hand(decision)
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def answer(self, response: bytes) -> None:
        """Answer the request here, then drop whatever the client sends until it goes."""
        self._state = _State.REFUSED
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def _hand(self, decision: ConnectAllowed | None) -> None:
        """Give the socket to picows with what was read, the decision held for the gate."""
        self._state = _State.HANDED
        inner, transport = self._inner, self.transport
        transport.set_protocol(inner)
        handover = self._hook.handover
        handover.decision = decision
        try:
            read = memoryview(self._buffer)[: self._size]
            offset = 0
            while offset < len(read) and not transport.is_closing():
                target = memoryview(inner.get_buffer(len(read) - offset))
                count = min(len(target), len(read) - offset)
                target[:count] = read[offset : offset + count]
                inner.buffer_updated(count)
                offset += count
        finally:
            handover.decision = None  # (the gate took it, or picows refused the request)
            self._buffer = bytearray()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _State.LOST
        self._inner.connection_lost(exc)


class _Head:
    """httptools' callbacks: the request target and the headers."""

    __slots__ = ("headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))


def _response(status: int, reason: str) -> bytes:
    """A whole HTTP refusal: the status, and the reason as the plain-text body."""
    body = f"{reason}\n".encode()
    phrase = http.HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"X-Content-Type-Options: nosniff\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
