"""A connection as the hub sees it, and the Transport contract that carries its frames.

``Connection`` holds the documented fields and nothing that does I/O; the transport it points to is
the thin shell around one socket.  Keeping the two apart lets the pure registry index
connections without knowing whether they live on uvicorn, on the native server, or in a test.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from datetime import UTC, datetime
from typing import Any, Protocol

from roomcast.frame import Frame

__all__ = ["Connection", "Delivery", "ManagerStats", "OverflowPolicy", "Transport"]


class Delivery(enum.Enum):
    """What a transport did with a frame handed to it; never involves waiting."""

    ACCEPTED = "accepted"
    """Written to the socket or queued in the connection's bounded send buffer."""
    OVERFLOW = "overflow"
    """The send buffer is full; the frame was not queued."""
    CLOSED = "closed"
    """The connection is gone or closing; the frame was not queued."""


class OverflowPolicy(enum.Enum):
    """What happens to a connection whose send buffer cannot take another frame."""

    CLOSE = "close"
    """Close it with ``CloseCode.SLOW_CONSUMER`` (4008); it reconnects and resyncs."""
    DROP = "drop"
    """Keep it, and drop the frames that do not fit (counted in ``dropped_frames``)."""


@dataclasses.dataclass(slots=True)
class ManagerStats:
    """Counters since the hub was created; cheap enough to update on every send."""

    frames_sent: int = 0
    """Frames accepted by a connection's transport (one broadcast to N clients counts N)."""
    bytes_sent: int = 0
    """Payload bytes of those frames."""
    slow_consumer_closes: int = 0
    """Connections closed because their send buffer overflowed."""
    dropped_frames: int = 0
    """Frames not delivered to a connection because its buffer was full (DROP policy)."""
    lost_connections: int = 0
    """Connections found gone while sending (client vanished before it was unregistered)."""
    heartbeat_timeouts: int = 0
    """Connections closed because they stopped answering pings (``ping_interval``)."""
    unabortable_closes: int = 0
    """Closes (of any kind) not written within ``close_timeout`` to a socket that roomcast
    cannot abort: an ASGI server other than uvicorn, or a middleware wrapping ``send``.  Such
    a socket stays open, holding its buffers, until the server's own timeouts or the client
    end it."""


class Transport(Protocol):
    """Carries frames to one client: ASGI (``roomcast.fastapi.asgi``) or the native server's.

    ``send`` and ``close`` are synchronous on purpose: the hub fans a frame out to thousands of
    connections in one loop, and no single client may make that loop wait.  Anything that has to
    wait (a paused socket, a close handshake) happens in a task owned by the transport's owner.
    """

    @property
    def buffered_bytes(self) -> int:
        """Bytes of frames accepted but not yet handed to the socket layer."""
        ...

    def send(self, frame: Frame) -> Delivery:
        """Write or queue ``frame``; say which, or why not."""
        ...

    def close(self, code: int, reason: str = "") -> None:
        """Drop anything queued and start closing with ``code``; returns at once."""
        ...

    def detach(self) -> None:
        """Stop sending and free the send buffer without closing (the peer is already gone)."""
        ...


class _Unattached:
    """The transport of a connection that has none (yet): it refuses every frame."""

    buffered_bytes = 0

    def send(self, frame: Frame) -> Delivery:
        return Delivery.CLOSED

    def close(self, code: int, reason: str = "") -> None:
        pass

    def detach(self) -> None:
        pass


UNATTACHED: Transport = _Unattached()


def _new_connection_id() -> str:
    # 128 random bits as hex, like uuid4().hex without the UUID object.
    return os.urandom(16).hex()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(eq=False, slots=True)
class Connection:
    """One client connection registered with a manager.

    Equality is identity: two connections are the same only if they are the same object.

    Attributes:
        websocket: The framework's WebSocket object (e.g. Starlette's) for this client.
        user_id: Who the client is, if known; used by ``send_to_user``.
        rooms: Rooms the connection is in.  Maintained by the manager: read it, but change
            membership with ``join_room``/``leave_room``.
        connected_at: When the connection was registered (UTC).
        metadata: Anything the application wants to keep with the connection.
    """

    websocket: Any
    user_id: str | None = None
    rooms: set[str] = dataclasses.field(default_factory=set)
    connected_at: datetime = dataclasses.field(default_factory=_now)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    _connection_id: str = dataclasses.field(
        default_factory=_new_connection_id, init=False, repr=False
    )
    transport: Transport = dataclasses.field(default=UNATTACHED, repr=False)
    """Carries frames to the client; set by whoever accepted the socket."""

    @property
    def connection_id(self) -> str:
        """Unique, stable id of this connection (random hex; unique across instances)."""
        return self._connection_id
