"""The native transport: one picows listener per client, writing shared frame bytes directly.

picows (Cython, on uvloop) parses frames and does the handshake; roomcast writes outgoing
frames itself, straight to the socket transport, because that is the only way to put the *same*
bytes object on every recipient's socket: a frame is serialized once per broadcast, not once per
client.  Frames sent to one connection during one event-loop iteration are joined into a single
write at the end of that iteration, so a burst of broadcasts costs one system call per client,
not one per message.

Slow consumers: the socket transport's own buffer is the send buffer.  A frame that would take
it past the limit closes the client with 4008; the close frame is written after what is already
buffered, and if the client has not gone ``close_timeout`` seconds later, the socket is reset.

Incoming frames are hostile until proven otherwise: a fragmented message is accounted in O(1)
per frame and capped in size and in fragments (``fragment_cap``), and pings, pongs and
continuation frames are charged to the client's rate limit like messages, because an empty
frame is cheap to send and not free to receive.  Pings are answered here, not by picows, so
that a client that sends pings and never reads cannot grow its send buffer without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy
from picows import WSFrame, WSListener, WSMsgType, WSTransport

from roomcast.connection import Connection, Delivery
from roomcast.frame import Frame

__all__ = [
    "EchoTransport",
    "FlushScheduler",
    "NativeTransport",
    "TransportOwner",
    "close_reply",
    "fragment_cap",
]

_ACCEPTED = Delivery.ACCEPTED
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: the close sends a reset and drops what is unsent."""
_NO_HEADERS: Any = CIMultiDictProxy(CIMultiDict())


class FlushScheduler:
    """Collects the connections that have frames waiting and writes them once per iteration."""

    __slots__ = ("_dirty", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[NativeTransport] = []
        self._scheduled = False

    def mark(self, transport: NativeTransport) -> None:
        """Queue ``transport`` for the flush at the end of this loop iteration."""
        self._dirty.append(transport)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write every waiting connection's frames, one write per connection."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for transport in dirty:
            transport.flush()


class TransportOwner(Protocol):
    """What a ``NativeTransport`` reports to, and the limits it reads (shared by all of them).

    One owner reference per connection instead of three bound methods and three limits: at
    50k connections each saved object is ~3 MiB.
    """

    @property
    def scheduler(self) -> FlushScheduler: ...

    @property
    def send_buffer_limit(self) -> int: ...

    @property
    def close_timeout(self) -> float: ...

    @property
    def max_message_size(self) -> int: ...

    def opened(self, transport: NativeTransport) -> None:
        """The WebSocket handshake completed."""

    def received(self, transport: NativeTransport, message: str | bytes, size: int) -> None:
        """A complete message (text as ``str``, binary as ``bytes``) of ``size`` bytes."""

    def gone(self, transport: NativeTransport) -> None:
        """The socket closed, whoever closed it."""

    def ponged(self, transport: NativeTransport) -> None:
        """A PONG frame arrived (the answer to ``NativeTransport.ping``)."""

    def admit_frame(self, transport: NativeTransport, opcode: WSMsgType) -> bool:
        """Charge a control or continuation frame to the client's rate limit; False: drop it
        (the owner may have closed the client)."""


def fragment_cap(max_message_size: int) -> int:
    """Most frames one fragmented message may arrive in.

    Each frame costs the server a callback whatever its size, so a message may not be cut into
    crumbs: at least 128 fragments are allowed, and one more per 512 bytes of the size limit
    (a 16 MiB limit allows 32,768).  Real clients send one frame, or a few of several KiB.
    """
    return max(128, max_message_size // 512)


class _Fragments:
    """A fragmented message being received: its opcode, its parts so far and their size.

    Made only while a client is between the first fragment and the last, so that the common
    connection (which never fragments) carries one empty slot for it.
    """

    __slots__ = ("opcode", "parts", "size")

    def __init__(self, opcode: WSMsgType, first: bytes) -> None:
        self.opcode = opcode
        self.parts = [first]
        self.size = len(first)

    def add(self, part: bytes) -> None:
        self.parts.append(part)
        self.size += len(part)


class NativeTransport(WSListener):
    """picows listener of one client, and roomcast's ``Transport`` for it.

    One object per connection on purpose: at 50k connections, every object and every bound
    method kept per connection shows up in the server's memory.

    Args:
        owner: Receives the connection's events and sets its limits.
        connection: The hub's record of this client, registered once the handshake completes.
        room: A room to join at that moment, if any.
    """

    __slots__ = (
        "_closing",
        "_fragments",
        "_owner",
        "_pending",
        "_pending_bytes",
        "_raw",
        "_ws",
        "connection",
        "initial_room",
        "rate_state",
    )

    def __init__(
        self, owner: TransportOwner, connection: Connection, room: str | None = None
    ) -> None:
        self._owner = owner
        self.connection = connection
        self.initial_room = room
        self._closing = False
        self._pending: bytes | list[bytes] | None = None
        self._pending_bytes = 0
        self._fragments: _Fragments | None = None
        self._ws: WSTransport | None = None
        self._raw: Any = None
        self.rate_state: tuple[float, float, int] | None = None
        """The server's rate-limit bookkeeping for this client (tokens, time, strikes)."""

    # ------------------------------------------------------------------ picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._ws = transport
        self._raw = transport.underlying_transport
        # The upgrade's header objects (~2 KiB) were read while routing; keeping them for
        # the life of the connection would cost more than everything else roomcast keeps.
        transport.request.headers = _NO_HEADERS
        transport.response.headers = _NO_HEADERS
        self._owner.opened(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self._closing:
            return  # closed by us (limit, bad data) or by the client: nothing more to read
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            # No extension is negotiated, so no reserved bit may be set (RFC 6455 5.2).
            self.close(1002, "reserved bits set")
            return
        opcode = frame.msg_type
        if opcode is WSMsgType.TEXT or opcode is WSMsgType.BINARY:
            if self._fragments is not None:
                self.close(1002, "new message inside a fragmented one")
            elif frame.fin:
                self._deliver_frame(opcode, frame.get_payload_as_bytes())
            else:
                self._fragments = _Fragments(opcode, frame.get_payload_as_bytes())
                self._check_fragments(self._fragments)
        elif opcode is WSMsgType.CONTINUATION:
            # Charged like a message: empty continuations cost the server a callback each.
            if self._owner.admit_frame(self, opcode):
                self._continue_fragments(frame)
            elif not self._closing:
                self.close(1008, "rate limit exceeded")
        elif opcode is WSMsgType.CLOSE:
            # Answer the close and hang up; nothing may follow a close frame.
            self._closing = True
            self._pending = None
            self._pending_bytes = 0
            code, reason = close_reply(frame.get_payload_as_bytes())
            transport.send_close(code, reason)  # type: ignore[arg-type]
            transport.disconnect()
        elif opcode is WSMsgType.PING:
            # Answered here rather than by picows, so that pings are rate limited and a
            # client that never reads cannot pile pongs up in its send buffer.
            if not self._owner.admit_frame(self, opcode):
                return
            if self._raw.get_write_buffer_size() > self._owner.send_buffer_limit:
                self.close(4008, "slow consumer")
                return
            transport.send_pong(frame.get_payload_as_bytes())
        elif opcode is WSMsgType.PONG and self._owner.admit_frame(self, opcode):
            self._owner.ponged(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._closing = True
        self._pending = None
        self._owner.gone(self)

    # ------------------------------------------------------------------ incoming messages

    def _deliver_frame(self, opcode: WSMsgType, payload: bytes) -> None:
        if len(payload) > self._owner.max_message_size:
            self.close(1009, "message too big")
            return
        if opcode is WSMsgType.TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self.close(1007, "invalid UTF-8")
                return
            self._owner.received(self, text, len(payload))
        else:
            self._owner.received(self, payload, len(payload))

    def _continue_fragments(self, frame: WSFrame) -> None:
        fragments = self._fragments
        if fragments is None:
            self.close(1002, "continuation without a message to continue")
            return
        fragments.add(frame.get_payload_as_bytes())
        if not self._check_fragments(fragments):
            return
        if frame.fin:
            self._fragments = None
            self._deliver_frame(fragments.opcode, b"".join(fragments.parts))

    def _check_fragments(self, fragments: _Fragments) -> bool:
        """Close the client when its fragmented message grows past a limit (O(1) per frame)."""
        max_size = self._owner.max_message_size
        if fragments.size > max_size:
            reason = "message too big"
        elif len(fragments.parts) > fragment_cap(max_size):
            reason = "message split into too many fragments"
        else:
            return True
        self._fragments = None
        self.close(1009, reason)
        return False

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
        if queued + self._raw.get_write_buffer_size() > self._owner.send_buffer_limit:
            return Delivery.OVERFLOW
        self._pending_bytes = queued
        pending = self._pending
        # One frame waiting is kept as is; a list appears only for the second one, so a
        # single broadcast allocates nothing per recipient.
        if pending is None:
            self._pending = wire
            self._owner.scheduler.mark(self)
        elif isinstance(pending, bytes):
            self._pending = [pending, wire]
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
        self._raw.write(pending if isinstance(pending, bytes) else b"".join(pending))

    def close(self, code: int, reason: str = "") -> None:
        if self._closing:
            return
        self._closing = True
        self._pending = None
        self._pending_bytes = 0
        ws = self._ws
        if ws is None:
            return
        # A close reason may take 123 bytes; cut at a character boundary.
        message = reason.encode()[:123].decode(errors="ignore").encode()
        ws.send_close(code, message)  # type: ignore[arg-type]
        ws.disconnect(graceful=True)
        # A client that reads nothing would keep the socket (and its buffer) forever.
        asyncio.get_running_loop().call_later(self._owner.close_timeout, self.abort)

    def ping(self) -> None:
        """Send a protocol PING (browsers and WebSocket libraries answer it by themselves)."""
        ws = self._ws
        if ws is not None and not self._closing:
            ws.send_ping()

    def abort(self) -> None:
        """Drop the socket now, without a close handshake.

        With a reset (SO_LINGER 0): a plain close would leave the kernel holding the unsent
        bytes, and the connection open at the client, until TCP gives up on it minutes later.
        """
        ws = self._ws
        if ws is not None and not ws.is_disconnected:
            sock = self._raw.get_extra_info("socket") if self._raw is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            ws.disconnect(graceful=False)

    def detach(self) -> None:
        self._closing = True
        self._pending = None
        self._pending_bytes = 0


class EchoTransport(NativeTransport):
    """A connection that sends every message back as it came (``roomcast serve --echo``):
    what protocol test suites such as Autobahn talk to."""

    __slots__ = ()

    def _deliver_frame(self, opcode: WSMsgType, payload: bytes) -> None:
        if len(payload) > self._owner.max_message_size:
            self.close(1009, "message too big")
        elif opcode is WSMsgType.BINARY:
            self.send(Frame(data=payload))
        else:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self.close(1007, "invalid UTF-8")
                return
            self.send(Frame(text=text))


_VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


def close_reply(payload: bytes) -> tuple[int, bytes]:
    """The close frame to answer a client's close with (RFC 6455 section 7.4).

    An empty close is answered with 1000; a well-formed one with its own code; a one-byte
    payload, a code no endpoint may send (1004-1006, 1015, unassigned ranges) with 1002; a
    reason that is not UTF-8 with 1007.
    """
    if not payload:
        return 1000, b""
    if len(payload) < 2:
        return 1002, b"malformed close frame"
    code = int.from_bytes(payload[:2], "big")
    if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
        return 1002, b"invalid close code"
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        return 1007, b"close reason is not UTF-8"
    return code, b""
