"""The native transport: one picows listener per client, writing shared frame bytes directly.

picows (Cython, on uvloop) parses frames and does the handshake; roomcast writes outgoing
frames itself, straight to the socket transport, because that is the only way to put the *same*
bytes object on every recipient's socket: a frame is serialized once per broadcast, not once per
client.  Frames sent to one connection during one event-loop iteration are joined into a single
write at the end of that iteration, so a burst of broadcasts costs one system call per client,
not one per message.

Slow consumers: the socket transport's own buffer is the send buffer.  A frame that would take
it past the limit closes the client with 4008; the close frame is written after what is already
buffered, and if the client has not gone ``close_timeout`` seconds later, the socket is aborted
so that it cannot hold its memory any longer.

This module imports picows; ``import roomcast`` does not import this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from roomcast.connection import Connection, Delivery
from roomcast.frame import Frame

__all__ = ["FlushScheduler", "NativeTransport"]

_ACCEPTED = Delivery.ACCEPTED


class FlushScheduler:
    """Collects the connections that have frames waiting and writes them once per iteration."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[NativeTransport] = []
        self._scheduled = False

    def mark(self, transport: NativeTransport) -> None:
        self._dirty.append(transport)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every waiting connection's frames, one write per connection."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for transport in dirty:
            transport.flush()


class NativeTransport(WSListener):
    """picows listener of one client, and roomcast's ``Transport`` for it.

    One object per connection on purpose: at 50k connections, every object and every bound
    method kept per connection shows up in the server's memory.

    Args:
        on_open: Called once the WebSocket handshake is complete.
        on_message: Called with each complete message (text as ``str``, binary as ``bytes``)
            and its size in bytes.
        on_gone: Called once when the socket is closed, whoever closed it.
        scheduler: Where frames waiting to be written are flushed.
        limit: Most bytes that may wait in the socket transport's buffer for this client.
        close_timeout: Seconds a closing client gets before its socket is aborted.
        max_message_size: Largest incoming message (after reassembly), in bytes.
    """

    __slots__ = (
        "_close_timeout",
        "_closing",
        "_fragments",
        "_limit",
        "_max_message_size",
        "_on_gone",
        "_on_message",
        "_on_open",
        "_pending",
        "_pending_bytes",
        "_raw",
        "_scheduler",
        "_ws",
        "connection",
    )

    def __init__(
        self,
        *,
        on_open: Callable[[NativeTransport], None],
        on_message: Callable[[NativeTransport, str | bytes, int], None],
        on_gone: Callable[[NativeTransport], None],
        scheduler: FlushScheduler,
        limit: int,
        close_timeout: float,
        max_message_size: int,
    ) -> None:
        self._on_open = on_open
        self._on_message = on_message
        self._on_gone = on_gone
        self._scheduler = scheduler
        self._limit = limit
        self._close_timeout = close_timeout
        self._max_message_size = max_message_size
        self._closing = False
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0
        self._fragments: list[bytes] | None = None
        self._ws: WSTransport | None = None
        self._raw: Any = None
        self.connection: Connection | None = None

    # ------------------------------------------------------------------ picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._ws = transport
        self._raw = transport.underlying_transport
        self._on_open(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        opcode = frame.msg_type
        if opcode is WSMsgType.TEXT or opcode is WSMsgType.BINARY:
            if self._fragments is not None:
                self.close(1002, "new message inside a fragmented one")
            elif frame.fin:
                self._deliver_frame(opcode, frame.get_payload_as_bytes())
            else:
                self._start_fragments(opcode, frame)
        elif opcode is WSMsgType.CONTINUATION:
            self._continue_fragments(frame)
        elif opcode is WSMsgType.CLOSE:
            self._closing = True
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        # PING is answered by picows (enable_auto_pong); PONG needs nothing here.

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._closing = True
        self._pending = None
        self._on_gone(self)

    # ------------------------------------------------------------------ incoming messages

    def _deliver_frame(self, opcode: WSMsgType, payload: bytes) -> None:
        if len(payload) > self._max_message_size:
            self.close(1009, "message too big")
            return
        if opcode is WSMsgType.TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self.close(1007, "invalid UTF-8")
                return
            self._on_message(self, text, len(payload))
        else:
            self._on_message(self, payload, len(payload))

    def _start_fragments(self, opcode: WSMsgType, frame: WSFrame) -> None:
        # The first element remembers the opcode as one byte; the rest are payloads.
        self._fragments = [bytes((opcode.value,)), frame.get_payload_as_bytes()]
        self._check_fragment_size()

    def _continue_fragments(self, frame: WSFrame) -> None:
        fragments = self._fragments
        if fragments is None:
            self.close(1002, "continuation without a message to continue")
            return
        fragments.append(frame.get_payload_as_bytes())
        if not self._check_fragment_size():
            return
        if frame.fin:
            self._fragments = None
            opcode = WSMsgType(fragments[0][0])
            self._deliver_frame(opcode, b"".join(fragments[1:]))

    def _check_fragment_size(self) -> bool:
        assert self._fragments is not None
        if sum(len(part) for part in self._fragments) - 1 > self._max_message_size:
            self._fragments = None
            self.close(1009, "message too big")
            return False
        return True

    # ------------------------------------------------------------------ Transport

    @property
    def buffered_bytes(self) -> int:
        raw = self._raw
        written = raw.get_write_buffer_size() if raw is not None else 0
        return int(written) + self._pending_bytes

    def send(self, frame: Frame) -> Delivery:
        if self._closing:
            return Delivery.CLOSED
        wire = frame.wire
        queued = self._pending_bytes + len(wire)
        if queued + self._raw.get_write_buffer_size() > self._limit:
            return Delivery.OVERFLOW
        self._pending_bytes = queued
        pending = self._pending
        if pending is None:
            self._pending = [wire]
            self._scheduler.mark(self)
        else:
            pending.append(wire)
        return _ACCEPTED

    def flush(self) -> None:
        """Write the frames waiting for this client in one call."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._pending_bytes = 0
        self._raw.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self, code: int, reason: str = "") -> None:
        if self._closing:
            return
        self._closing = True
        self._pending = None
        self._pending_bytes = 0
        ws = self._ws
        if ws is None:
            return
        ws.send_close(code, reason.encode()[:123])  # type: ignore[arg-type]
        ws.disconnect(graceful=True)
        # A client that reads nothing would keep the socket (and its buffer) forever.
        asyncio.get_running_loop().call_later(self._close_timeout, self.abort)

    def abort(self) -> None:
        """Drop the socket now, without a close handshake."""
        ws = self._ws
        if ws is not None and not ws.is_disconnected:
            ws.disconnect(graceful=False)

    def detach(self) -> None:
        self._closing = True
        self._pending = None
        self._pending_bytes = 0
