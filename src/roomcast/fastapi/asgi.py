"""The Starlette/FastAPI transport: frames to an ASGI WebSocket without awaiting any one client.

ASGI only offers ``await send(event)``.  Awaiting it per recipient makes a broadcast as slow as
its slowest client, and a task per recipient per message costs more than the send itself.  So
this adapter *drives the send coroutine by hand*: it runs it up to its first suspension point.
An ASGI server with room in its socket buffer (uvicorn: under the 64 KiB high-water mark)
finishes without suspending, which costs no task switch at all.  Only a connection whose socket
is applying back-pressure gets a writer task; that task owns the suspended coroutine, drains
the connection's bounded backlog, and ends when the backlog is empty.

What the limit covers: roomcast's own backlog for the connection, counted in payload bytes,
including the frame held by a suspended send.  The ASGI server's socket buffer comes on top
(uvicorn pauses at 64 KiB).  A frame that does not fit means the client is too slow.

Closing under ASGI is a ``websocket.close`` event, which the server can only write once the
client reads again, and ASGI has no event for dropping a socket.  roomcast detaches the client
at once (nothing more is queued for it) and gives the close ``close_timeout`` seconds: if by
then the close frame could not be written, or the client has not completed the closing
handshake, the socket is aborted with a TCP reset, which also frees what the kernel holds for
it.  That needs the socket's transport, which only uvicorn's WebSocket protocols expose
(``roomcast.fastapi.uvicorn_direct.find_uvicorn_transport``).  Behind any other ASGI server, or a
middleware that wraps ``send``, a close that was not written in time is counted in
``ManagerStats.unabortable_closes`` and the socket stays until the server's own timeouts (or
the client) end it.  The native server aborts such sockets the same way.

Under uvicorn's default WebSocket protocol the fast path is shorter still: the frame's bytes,
built once, are written straight to the socket (``roomcast.fastapi.uvicorn_direct``); the ASGI path
here takes over whenever uvicorn would not write at once.

This module imports nothing from Starlette: it needs only ``send(event)``, ``close(code,
reason)``, ``accept()`` and ``application_state``, which Starlette's and FastAPI's WebSocket
both have.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from roomcast.connection import Delivery
from roomcast.fastapi.uvicorn_direct import (
    SocketTransport,
    find_uvicorn_protocol,
    find_uvicorn_transport,
)
from roomcast.frame import Frame
from roomcast.tasks import TaskSet

__all__ = ["AsgiTransport", "AsgiWebSocket"]

_ACCEPTED = Delivery.ACCEPTED


class _State(enum.Enum):
    """The sending side of an ``AsgiTransport``::

    OPEN --back-pressure--> DRAINING --backlog written--> OPEN
    OPEN, DRAINING --close, detach, send failed--> CLOSING (for good)
    """

    OPEN = "open"
    """Frames are written (or handed to the ASGI send) at once."""
    DRAINING = "draining"
    """A writer task owns the sending; frames queue in the bounded backlog."""
    CLOSING = "closing"
    """Closed, closing or gone: frames are refused."""


_OPEN, _DRAINING, _CLOSING = _State.OPEN, _State.DRAINING, _State.CLOSING

logger = logging.getLogger("roomcast")

# SO_LINGER on with a zero timeout: closing the socket sends a reset and discards unsent
# data, instead of leaving the kernel to deliver it to a client that is not reading.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class AsgiWebSocket(Protocol):
    """The part of Starlette's ``WebSocket`` that this transport uses."""

    @property
    def application_state(self) -> Any: ...

    def send(self, message: Any) -> Awaitable[None]: ...

    def accept(self, subprotocol: str | None = None) -> Awaitable[None]: ...

    def close(self, code: int = 1000, reason: str | None = None) -> Awaitable[None]: ...


async def _resume(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
    """Finish a coroutine that was started by hand and suspended on ``waiting_on``.

    ``waiting_on`` is whatever the coroutine yielded: an asyncio future, or None for a bare
    ``yield`` (``asyncio.sleep(0)``).  The future's outcome is delivered by resuming the
    coroutine, whose own ``await`` then reads the result or raises, exactly as under a task.
    """
    try:
        while True:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                # wait() neither consumes the future's exception nor cancels the future if
                # this task is cancelled: the coroutine stays the only owner of both.
                await asyncio.wait((waiting_on,))
            waiting_on = coro.send(None)
    except StopIteration:
        return
    finally:
        # Cancelled while suspended: close the coroutine so its finally blocks run and it
        # never writes the frame it was holding.
        coro.close()


class AsgiTransport:
    """Transport over an ASGI WebSocket with a bounded, byte-counted backlog.

    Args:
        websocket: Starlette/FastAPI WebSocket (already accepted, or accepted by ``open``).
        tasks: Owner of the writer and closer tasks this transport starts.
        on_lost: Called once when a send fails because the client is gone.
        limit: Most payload bytes roomcast holds for this client before it counts as slow.
        close_timeout: Seconds from the decision to close until the socket is aborted if the
            close has not completed (frame written and answered) by then.
        on_unabortable: Called when a close could not be written within ``close_timeout``
            and the ASGI server offers no way to abort the socket.
        on_close: Called with the code and reason of the close that roomcast decided (once,
            at the decision), for the lifecycle event of the connection's end.
    """

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_close_timeout",
        "_direct",
        "_direct_writes",
        "_limit",
        "_on_close",
        "_on_lost",
        "_on_unabortable",
        "_send",
        "_socket",
        "_state",
        "_tasks",
        "_websocket",
        "_writer",
    )

    def __init__(
        self,
        websocket: AsgiWebSocket,
        *,
        tasks: TaskSet,
        on_lost: Callable[[], None],
        limit: int,
        close_timeout: float,
        direct_writes: bool = True,
        on_unabortable: Callable[[], None] | None = None,
        on_close: Callable[[int, str], None] | None = None,
    ) -> None:
        self._websocket = websocket
        # Starlette's WebSocket.send only checks its state machine before calling the raw
        # ASGI send; data events do not change that state, so roomcast calls the raw send
        # directly (a measured ~1 us per recipient, ~8% of a delivery).  Anything else, and
        # every close, goes through the public methods.
        raw_send = getattr(websocket, "_send", None)
        self._send: Callable[[Any], Any] = raw_send if callable(raw_send) else websocket.send
        self._tasks = tasks
        self._on_lost = on_lost
        self._on_unabortable = on_unabortable
        self._on_close = on_close
        self._limit = limit
        self._close_timeout = close_timeout
        # OPEN: frames go straight out; the one attribute the per-recipient fast path reads.
        self._state = _OPEN
        self._direct_writes = direct_writes
        # uvicorn's protocol object when frames may be written to it directly (see
        # roomcast.fastapi.uvicorn_direct); found after the handshake.
        self._direct: Any = None
        # The socket's transport, to abort a close that does not complete; found after the
        # handshake, whatever direct_writes says.
        self._socket: SocketTransport | None = None
        self._writer: asyncio.Task[None] | None = None
        # Created on the first back-pressure only: most connections never need one, and an
        # empty deque costs ~600 bytes.
        self._backlog: collections.deque[Frame] | None = None
        self._backlog_bytes = 0

    @property
    def buffered_bytes(self) -> int:
        return self._backlog_bytes

    async def open(self, subprotocol: str | None = None) -> None:
        """Accept the WebSocket (selecting ``subprotocol``) unless the application already
        did."""
        if getattr(self._websocket.application_state, "name", None) == "CONNECTING":
            if subprotocol is None:
                await self._websocket.accept()
            else:
                await self._websocket.accept(subprotocol=subprotocol)
        self._socket = find_uvicorn_transport(self._send)
        if self._direct_writes:
            protocol = find_uvicorn_protocol(self._send)
            if protocol is not None and protocol.handshake_complete:
                self._direct = protocol

    def send(self, frame: Frame) -> Delivery:
        if self._state is not _OPEN:
            return self._enqueue(frame)
        direct = self._direct
        # Direct write while uvicorn would write at once; when it is paused or has sent a
        # close, the ASGI path below waits or reports it properly.
        if direct is not None and direct.writable.is_set() and not direct.close_sent:
            if direct.transport.is_closing():
                self._state = _CLOSING
                return Delivery.CLOSED
            direct.transport.write(frame.wire)
            return _ACCEPTED
        coro = self._send(frame.asgi_event)
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return _ACCEPTED
        except Exception as exc:
            # The server refused the event: the client is gone or the socket is closed.
            logger.debug("send failed, connection lost: %r", exc)
            self._state = _CLOSING
            return Delivery.CLOSED
        # The server applies back-pressure: hand the half-done send to a writer task.
        if self._backlog is None:
            self._backlog = collections.deque()
        self._backlog_bytes = frame.size
        self._state = _DRAINING
        self._writer = self._tasks.spawn(self._drain(coro, waiting_on, frame.size))
        return _ACCEPTED

    def _enqueue(self, frame: Frame) -> Delivery:
        if self._state is _CLOSING:
            return Delivery.CLOSED
        if self._backlog_bytes + frame.size > self._limit:
            return Delivery.OVERFLOW
        assert self._backlog is not None
        self._backlog.append(frame)
        self._backlog_bytes += frame.size
        return _ACCEPTED

    async def _drain(self, coro: Any, waiting_on: Any, in_flight: int) -> None:
        try:
            await _resume(coro, waiting_on)
            self._backlog_bytes -= in_flight
            backlog = self._backlog
            assert backlog is not None
            while backlog:
                frame = backlog[0]
                await self._send(frame.asgi_event)
                backlog.popleft()
                self._backlog_bytes -= frame.size
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("send failed, connection lost: %r", exc)
            self._writer = None  # so that _discard_backlog does not cancel this very task
            self._discard_backlog()
            if self._state is not _CLOSING:
                self._state = _CLOSING
                self._on_lost()
        finally:
            self._writer = None
            if self._state is _DRAINING:
                self._state = _OPEN

    def _discard_backlog(self) -> asyncio.Task[None] | None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
        if self._backlog is not None:
            self._backlog.clear()
        self._backlog_bytes = 0
        return writer

    def close(self, code: int, reason: str = "") -> None:
        if self._state is _CLOSING:
            return
        self._state = _CLOSING
        if self._on_close is not None:
            self._on_close(code, reason)
        writer = self._discard_backlog()
        deadline = asyncio.get_running_loop().time() + self._close_timeout
        self._tasks.spawn(self._close(writer, code, reason, deadline), name="roomcast-close")

    async def _close(
        self, writer: asyncio.Task[None] | None, code: int, reason: str, deadline: float
    ) -> None:
        timed_out = False
        try:
            async with asyncio.timeout_at(deadline):
                if writer is not None:
                    # Let the cancelled writer unwind first, so no data frame follows the close.
                    await asyncio.wait((writer,))
                await self._websocket.close(code, reason)
        except TimeoutError:
            timed_out = True
        except Exception as exc:  # already closed or gone: the deadline check below is moot
            logger.debug("close failed: %r", exc)
        transport = self._socket
        if transport is not None:
            # A timer, not this task: close_all() waits for close tasks, and a client that
            # answers the close promptly should not make it wait for the deadline.
            asyncio.get_running_loop().call_at(deadline, _abort_unless_gone, transport, code)
        elif timed_out:
            logger.info(
                "close %d not written within %.1fs: the client is not reading, and the ASGI "
                "server offers no way to abort its socket",
                code,
                self._close_timeout,
            )
            if self._on_unabortable is not None:
                self._on_unabortable()

    def detach(self) -> None:
        self._state = _CLOSING
        self._discard_backlog()


def _abort_unless_gone(transport: SocketTransport, code: int) -> None:
    """Reset a socket whose close has not completed by its deadline.

    Gone means closed, or closing with nothing left to write (the server's own close is under
    way).  Anything else is a client that did not read the close frame or did not answer it;
    uvicorn would wait for it indefinitely (its close timer only asks for a graceful close,
    which waits for the write buffer to drain).
    """
    if transport.is_closing() and not transport.get_write_buffer_size():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    transport.abort()
    logger.info("close %d did not complete in time: socket aborted", code)
