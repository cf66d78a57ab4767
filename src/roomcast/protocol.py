"""The client protocol of ``roomcast serve``: what clients may send, and what they get back.

Client -> server (JSON text frames; ``event_id`` optional, echoed in the answer)::

    {"type": "join",    "room": "lobby", "event_id": "e1"}
    {"type": "join",    "room": "lobby", "since": {"epoch": "...", "offset": 17}}   recover
    {"type": "history", "room": "lobby", "since": {...}, "limit": 50}            read history
    {"type": "leave",   "room": "lobby", "event_id": "e2"}
    {"type": "publish", "room": "lobby", "data": {...}, "event_id": "e3"}
    {"type": "ping",    "event_id": "e4"}
    {"type": "pong",    "ping_event_id": "..."}
    {"type": "auth",    "token": "...", "event_id": "e5"}   a fresh token (authenticated servers)

Server -> client::

    {"type": "ack",          "ack_event_id": "e1", ...}     the command was carried out
                             (+ "position", "recovered", "replayed" in rooms with history)
    {"type": "history",      "room": "lobby", "messages": [...], "position": {...}}
    {"type": "error",        "error": "...", "code": 1008, "ref_event_id": "e3", ...}
    {"type": "room_message", "room": "lobby", "sender": "alice", "data": {...}, ...}
                             (+ "offset", "epoch" in rooms with history)
    {"type": "pong",         "ping_event_id": "e4", ...}
    {"type": "error",        "code": 4001, ...}              the token expired: send a new one
    {"type": "presence",     "room": "lobby", "members": [...]}   (after joining $presence:lobby)
    {"type": "presence",     "room": "lobby", "joined": {...}}    or "left": one change
    {"type": "stats",        "instance": "...", "data": {...}}    (to members of $stats)

This module is pure: ``interpret`` turns one incoming frame into a ``Command`` or the
``ErrorMessage`` to send back, and never touches a socket.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from roomcast.errors import CloseCode, InvalidMessage
from roomcast.messages import ErrorMessage, PingMessage, PongMessage, WSMessage

__all__ = [
    "AuthMessage",
    "Command",
    "HistoryMessage",
    "JoinMessage",
    "LeaveMessage",
    "PresenceMessage",
    "PublishMessage",
    "RoomMessage",
    "StatsMessage",
    "interpret",
]


@dataclasses.dataclass(kw_only=True, slots=True)
class JoinMessage(WSMessage):
    """Client asks to join ``room`` (``since``: the last position it saw there, to be sent
    what it missed)."""

    TYPE: ClassVar[str] = "join"
    room: str
    since: Any = None


@dataclasses.dataclass(kw_only=True, slots=True)
class HistoryMessage(WSMessage):
    """Client reads ``room``'s history: after ``since``, or the latest ``limit`` messages."""

    TYPE: ClassVar[str] = "history"
    room: str
    since: Any = None
    limit: int | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class LeaveMessage(WSMessage):
    """Client asks to leave ``room``."""

    TYPE: ClassVar[str] = "leave"
    room: str


@dataclasses.dataclass(kw_only=True, slots=True)
class PublishMessage(WSMessage):
    """Client publishes ``data`` to the other members of ``room`` (it must be a member)."""

    TYPE: ClassVar[str] = "publish"
    room: str


@dataclasses.dataclass(kw_only=True, slots=True)
class AuthMessage(WSMessage):
    """Client presents a fresh token (same user) before or after the old one expires."""

    TYPE: ClassVar[str] = "auth"
    token: str

    def __repr__(self) -> str:  # never show the token in logs or tracebacks
        return f"AuthMessage(event_id={self.event_id!r}, token=<{len(self.token)} chars>)"


@dataclasses.dataclass(kw_only=True, slots=True)
class RoomMessage(WSMessage):
    """What members of a room receive when someone publishes to it.

    Attributes:
        room: The room the message was published to.
        sender: User id of the publisher (None for server-side publishes).
    """

    TYPE: ClassVar[str] = "room_message"
    room: str
    sender: str | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class PresenceMessage(WSMessage):
    """Who is in ``room``: a snapshot (``members``) or one change (``joined`` / ``left``),
    each member being ``{"connection_id": ..., "user_id": ...}``."""

    TYPE: ClassVar[str] = "presence"
    room: str
    members: Any = None
    joined: Any = None
    left: Any = None


@dataclasses.dataclass(kw_only=True, slots=True)
class StatsMessage(WSMessage):
    """One instance's figures (in ``data``), sent to the ``$stats`` room once a second.

    Counters are totals since the instance started, so a client computes rates from any two
    messages, even if it missed some in between."""

    TYPE: ClassVar[str] = "stats"
    instance: str


Command = (
    JoinMessage
    | LeaveMessage
    | PublishMessage
    | PingMessage
    | PongMessage
    | AuthMessage
    | HistoryMessage
)
"""Messages a client may send."""

_COMMANDS = (
    JoinMessage,
    LeaveMessage,
    PublishMessage,
    PingMessage,
    PongMessage,
    AuthMessage,
    HistoryMessage,
)


def interpret(raw: str | bytes | bytearray) -> Command | ErrorMessage:
    """Parse one frame from a client into a command, or the error to answer it with.

    A frame that is not valid gets an ``ErrorMessage`` with code 1003 (unsupported data);
    its ``ref_event_id`` is the frame's ``event_id`` when one could be read.
    """
    try:
        message = WSMessage.from_json(raw)
    except InvalidMessage as exc:
        return ErrorMessage(error=str(exc), code=CloseCode.UNSUPPORTED_DATA)
    if not isinstance(message, _COMMANDS):
        return ErrorMessage(
            error=f"clients cannot send {message.type!r} messages",
            code=CloseCode.UNSUPPORTED_DATA,
            ref_event_id=message.event_id,
        )
    return message
