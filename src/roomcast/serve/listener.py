"""Accepting sockets within a descriptor budget, for ``roomcast serve``'s ports.

Why not ``loop.create_server``: under uvloop (libuv) an ``accept()`` that fails with EMFILE
makes libuv accept and close every pending connection without a word, and uvloop then closes
the listening socket for good: the port stops answering, ``/healthz`` included, while the
clients already connected are still served.  The asyncio loop's own accept loop retries, but
it too has no way to stop short of the limit.

So roomcast accepts by itself: a non-blocking listening socket watched with ``add_reader``,
at most ``batch`` accepts per wake-up (a connect storm cannot hold the loop), a count of the
sockets it holds, and no accept at all while that count is at the budget (the kernel's
backlog keeps the next clients waiting, nobody is dropped).  Each accepted socket is handed to
the event loop's ``connect_accepted_socket``, whose transport is the one ``create_server``
would have made.  An accept that fails anyway (descriptors taken by something else) is
counted, logged within the log budget, and retried after a short pause.

``server_protocols`` makes picows' server protocol for these sockets.  The protocol of every
accepted socket must call ``released(protocol)`` when its connection is
lost (a second call is harmless); a socket that fails before its protocol is connected is
released here.  picows answers any method but GET with a bare 400 before roomcast sees the
request, so ``FirstRequest`` stands in front of it until the method is known, to answer a POST
(PUT, PATCH, DELETE) itself; from a GET on, picows reads the socket alone.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from picows import WSAutoPingStrategy
from picows.picows import WSProtocol  # type: ignore[attr-defined]

__all__ = ["Acceptor", "FirstRequest", "Front", "listening_sockets", "server_protocols"]

logger = logging.getLogger("roomcast.listener")

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RETRY_AFTER_ERROR = 0.1
"""Seconds without accepting after an accept failed for want of descriptors or memory."""


def listening_sockets(
    host: str, port: int, backlog: int, reuse_port: bool = False
) -> list[socket.socket]:
    """Non-blocking sockets listening on every address ``host`` resolves to, as
    ``loop.create_server`` would bind them (an IPv6 socket does not take IPv4 too)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(backlog)
            sock.setblocking(False)
            port = port or sock.getsockname()[1]  # port 0: the same free port for all
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Acceptor:
    """Accepts connections on ``sockets`` while it holds fewer than ``limit`` of them.

    Args:
        sockets: Listening sockets (non-blocking), owned from now on: ``close`` closes them.
        protocol_factory: Makes the protocol of each accepted socket; that protocol calls
            ``released()`` when its connection is lost.
        limit: Most accepted sockets held at once.
        on_accept_error: Called with each accept error that left the port waiting (EMFILE,
            ENFILE, ...), for the owner to count and log.
        batch: Most sockets accepted per wake-up.
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        limit: int,
        on_accept_error: Callable[[OSError], None],
        batch: int = 128,
    ) -> None:
        self.sockets = sockets
        self._protocol_factory = protocol_factory
        self.limit = limit
        self._on_accept_error = on_accept_error
        self._batch = batch
        self._loop = asyncio.get_running_loop()
        self._held: set[asyncio.BaseProtocol] = set()
        self._watching = False
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._watch()

    @property
    def held(self) -> int:
        """Accepted sockets whose connection is not lost yet."""
        return len(self._held)

    @property
    def paused(self) -> bool:
        """True while the port does not accept (at the limit, or after an accept error)."""
        return not self._watching

    def released(self, protocol: asyncio.BaseProtocol) -> None:
        """The socket of ``protocol`` is gone; accept again if the limit was holding us."""
        self._held.discard(protocol)
        if not self._watching and self._retry is None and len(self._held) < self.limit:
            self._watch()

    def close(self) -> None:
        """Stop accepting and close the listening sockets (accepted ones live on)."""
        self._closed = True
        self._unwatch()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self.sockets:
            sock.close()

    def _watch(self) -> None:
        if self._closed or self._watching:
            return
        self._watching = True
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _unwatch(self) -> None:
        if not self._watching:
            return
        self._watching = False
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())

    def _resume_after_error(self) -> None:
        self._retry = None
        if len(self._held) < self.limit:
            self._watch()

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(self._batch):
            if len(self._held) >= self.limit:
                self._unwatch()  # the backlog holds the next ones until a socket goes
                return
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._unwatch()
                self._retry = self._loop.call_later(_RETRY_AFTER_ERROR, self._resume_after_error)
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._on_accept_error(exc)
                else:
                    logger.error("accept failed on %s: %r", listening.getsockname(), exc)
                return
            self._connect(sock)

    def _connect(self, sock: socket.socket) -> None:
        """Give ``sock`` a transport and a protocol, without a task for it.

        ``connect_accepted_socket`` does all its work before it waits for the protocol's
        ``connection_made``; the coroutine is run that far here and finished by a callback
        on what it waits for (the same technique as ``roomcast.fastapi.asgi``).
        """
        protocol = self._protocol_factory()
        self._held.add(protocol)
        coro: Coroutine[Any, Any, Any] = self._loop.connect_accepted_socket(
            functools.partial(_given, protocol), sock
        )
        self._resume(coro, protocol)

    def _resume(self, coro: Coroutine[Any, Any, Any], protocol: asyncio.BaseProtocol) -> None:
        """Run ``coro`` until it waits on something unfinished, or ends."""
        try:
            while True:
                waiting_on = coro.send(None)
                if waiting_on is None:  # pragma: no cover - a bare yield
                    self._loop.call_soon(self._resume, coro, protocol)
                    return
                if not waiting_on.done():
                    waiting_on.add_done_callback(lambda _: self._resume(coro, protocol))
                    return
        except StopIteration:
            return
        except Exception as exc:
            # The socket failed before it was served (the client left at once): the loop
            # closed it, and its protocol will never hear of it.
            logger.debug("accepted socket failed before it was served: %r", exc)
            sock_protocol_connected = getattr(protocol, "transport", None) is not None
            if not sock_protocol_connected:
                self.released(protocol)


def _given(protocol: asyncio.BaseProtocol) -> asyncio.BaseProtocol:
    return protocol


Front = Callable[
    [asyncio.BufferedProtocol, asyncio.Transport, Callable[[bytes], bytes]],
    asyncio.BufferedProtocol,
]
"""Makes the protocol in front of picows' for a new socket: (picows' protocol, the
transport, the answer to a request with a body)."""

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
_LONGEST_METHOD = 8  # bytes enough to see "DELETE " (and any method picows knows)


class FirstRequest(asyncio.BufferedProtocol):
    """In front of picows' protocol until a connection's first bytes show its method.

    The bytes go to picows' own buffer all along.  A GET (or anything but a method that
    carries a body) hands the transport back to picows, which carries on as if it had read
    them itself; a POST, PUT, PATCH or DELETE gets ``answer(method)`` (a whole HTTP response),
    then the write side is shut and whatever else the client sends is read and dropped, so that
    it reads the answer before the close (picows' handshake timeout ends it if the client does
    not).

    Args:
        inner: picows' protocol, already connected to ``transport``.
        transport: The connection's transport.
        answer: The response to a request with a body, by method.
    """

    __slots__ = ("_answer", "_buffer", "_inner", "_refused", "_seen", "_transport")

    def __init__(
        self,
        inner: asyncio.BufferedProtocol,
        transport: asyncio.Transport,
        answer: Callable[[bytes], bytes],
    ) -> None:
        self._inner = inner
        self._transport = transport
        self._answer = answer
        self._buffer = memoryview(b"")
        self._seen = b""
        self._refused = False

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._refused:
            return memoryview(bytearray(4096))
        self._buffer = memoryview(self._inner.get_buffer(sizehint))
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._refused:
            return
        self._seen = (self._seen + bytes(self._buffer[:nbytes]))[:_LONGEST_METHOD]
        method, space, _ = self._seen.partition(b" ")
        if method in _BODY_METHODS and space:
            self._refused = True
            self._transport.write(self._answer(method))
            if self._transport.can_write_eof():
                self._transport.write_eof()
            return
        if space or len(self._seen) >= _LONGEST_METHOD:  # picows' business from here
            self._transport.set_protocol(self._inner)
        self._inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)


def server_protocols(
    route: Callable[[Any], Any],
    released: Callable[[Any], None],
    *,
    handshake_timeout: float,
    max_frame_size: int,
    logger: logging.LoggerAdapter[logging.Logger],
    with_body: Callable[[bytes], bytes],
    front: Front | None = None,
) -> Callable[[], Any]:
    """A factory of picows' server protocol for sockets accepted by ``roomcast.serve.listener``.

    ``ws_create_server`` would make these itself, but it accepts through the event loop's
    ``create_server`` (see ``roomcast.serve.listener`` for why roomcast does not).  The arguments
    are those ``ws_create_server`` passes, in picows' order (pinned to picows 2.3.x in
    ``pyproject.toml``): ``route`` answers each upgrade request, pings are answered by
    ``NativeTransport`` (rate limited), and the read buffer starts at its minimum.
    ``released`` hears every lost connection, upgraded or not.  ``with_body`` answers a
    request whose method carries a body (see ``FirstRequest``).  ``front`` makes the protocol
    that stands in front of picows' until the request is read (default: ``FirstRequest``; a
    server with a connect hook: ``connect_hook.HeadReader``).
    """
    make_front: Front = front or FirstRequest

    class CountedProtocol(WSProtocol):  # type: ignore[misc]
        __slots__ = ()

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            transport.set_protocol(make_front(self, transport, with_body))

        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                released(self)

    def make() -> Any:
        return CountedProtocol(
            None,  # host and port: a client's
            None,  # path: a client's
            False,  # is_client_side
            route,
            logger,
            True,  # disconnect_on_exception
            handshake_timeout,
            False,  # enable_auto_ping: the heartbeat pings
            20.0,  # auto_ping_idle_timeout (unused)
            20.0,  # auto_ping_reply_timeout (unused)
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,  # enable_auto_pong: NativeTransport answers pings
            max_frame_size,
            None,  # extra_headers
            1024,  # read_buffer_init_size (picows' minimum is 2048)
        )

    return make
