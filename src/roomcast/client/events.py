"""What the client hands the application: positions, answers and the events it reads.

Everything here is a frozen dataclass built from one decoded frame; nothing does I/O.  The
events an application reads from ``Client`` (``async for event in client``) are ``Message``,
``Rejoined``, ``Disconnected``, ``Reconnected`` and ``ServerMessage``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ClientState",
    "Disconnected",
    "Event",
    "History",
    "Joined",
    "Message",
    "Position",
    "Reconnected",
    "Rejoined",
    "ServerMessage",
]


class ClientState(enum.Enum):
    """Where a client is in its life; ``CLOSED`` is final."""

    IDLE = "idle"
    """Created, or its first connection attempt failed: ``connect()`` may be called."""
    CONNECTING = "connecting"
    OPEN = "open"
    """Connected, and back in every room it had joined."""
    RECONNECTING = "reconnecting"
    """The connection was lost; the client is waiting out its backoff or dialling again."""
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """Where a room's history stands: ``offset`` counts the room's messages within ``epoch``.

    Offsets are comparable only within one epoch; a new epoch means the server lost or reset
    the room's history.
    """

    epoch: str
    offset: int

    @classmethod
    def from_wire(cls, value: object) -> Position | None:
        """The position in a frame's ``position`` field (or a room_message's own fields);
        None when absent or malformed (a room without history)."""
        if not isinstance(value, Mapping):
            return None
        epoch, offset = value.get("epoch"), value.get("offset")
        if not isinstance(epoch, str) or not isinstance(offset, int) or isinstance(offset, bool):
            return None
        return cls(epoch, offset)

    def to_wire(self) -> dict[str, Any]:
        """The ``{"epoch", "offset"}`` object the protocol sends as ``since``."""
        return {"epoch": self.epoch, "offset": self.offset}


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A message published to a room the client is in (a ``room_message``).

    Attributes:
        room: The room it was published to.
        sender: The publisher's user id (None for a publish through the HTTP API).
        data: The payload, decoded from JSON.
        event_id: The publisher's id for it.
        timestamp: Seconds since the epoch, as the server stamped it (None if absent).
        position: Its place in the room's history (None in a room without history).
    """

    room: str
    sender: str | None
    data: Any
    event_id: str | None
    timestamp: float | None
    position: Position | None

    @classmethod
    def from_wire(cls, frame: Mapping[str, Any]) -> Message:
        """Build from a decoded ``room_message`` (whose ``room`` is a string)."""
        sender = frame.get("sender")
        event_id = frame.get("event_id")
        timestamp = frame.get("timestamp")
        return cls(
            room=frame["room"],
            sender=sender if isinstance(sender, str) else None,
            data=frame.get("data"),
            event_id=event_id if isinstance(event_id, str) else None,
            timestamp=float(timestamp) if isinstance(timestamp, int | float) else None,
            position=Position.from_wire(frame),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Joined:
    """The answer to ``Client.join``.

    Attributes:
        room: The room joined.
        position: The room's position: every later message reaches the client, none earlier
            (None: the room has no history).
        recovered: True when ``since`` was given and every message after it was replayed
            (before this answer); False otherwise.
        replayed: How many messages were replayed.
    """

    room: str
    position: Position | None
    recovered: bool
    replayed: int


@dataclasses.dataclass(frozen=True, slots=True)
class History:
    """The answer to ``Client.history``.

    Attributes:
        room: The room read.
        position: Where this page ends (ask again from here for more).
        recovered: With ``since``: False when the server no longer has what follows it
            (another epoch, or older than what it keeps); then ``messages`` is empty.
        messages: The messages, oldest first.
    """

    room: str
    position: Position | None
    recovered: bool
    messages: tuple[Message, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Rejoined:
    """After a reconnect, the outcome of rejoining one room.

    Comes after the messages it replayed and before any newer message of the room.

    Attributes:
        room: The room.
        recovered: True: every message missed while away was replayed, each once, in order.
            False: there may be a gap (no history, another epoch, or too long away); reload
            the room's state from the application's own store.
        replayed: How many missed messages were replayed.
        position: The room's position now.
        error: Why the server refused the rejoin (the client then forgets the room), or None.
    """

    room: str
    recovered: bool
    replayed: int
    position: Position | None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection was lost (or closed by the server).

    Attributes:
        code: The close code (1006 when the connection dropped without one; 4000 when the
            client gave up on a server that did not answer its ping).
        reason: The close reason, or what went wrong.
        will_reconnect: Whether the client will try again; False means it is now closed.
        delay: Seconds it waits before trying (None if it will not).
    """

    code: int
    reason: str
    will_reconnect: bool
    delay: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Reconnected:
    """The client is connected again and has rejoined its rooms (after their ``Rejoined``).

    Attributes:
        attempts: Connection attempts it took.
    """

    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class ServerMessage:
    """Any other frame from the server: presence, stats, a direct message from the HTTP API,
    or an error not tied to a request (a rate limit warning, a token expiry warning).

    Attributes:
        frame: The decoded JSON object.
    """

    frame: Mapping[str, Any]

    @property
    def type(self) -> str | None:
        """The frame's ``type`` field."""
        kind = self.frame.get("type")
        return kind if isinstance(kind, str) else None


Event = Message | Rejoined | Disconnected | Reconnected | ServerMessage
"""What ``Client.recv`` and ``async for event in client`` give."""
