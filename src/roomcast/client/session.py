"""The client side of the protocol as a pure object: requests out, frames in, outcomes back.

A ``ClientSession`` writes the frames of requests (each with an ``event_id``), remembers what
each request was, and turns every frame from the server into outcomes: events for the
application (``Message``, ``Rejoined``, ``ServerMessage``), answers to requests (``Settled``),
frames to send back (``Reply``: the pong to a server's application ping) and ``TokenExpiring``.
It keeps the ``RoomBook`` up to date on the way, and drops duplicate room messages.  It does
no I/O, so it is tested by feeding it text (``tests/unit/test_client_session.py``); ``Client``
executes its outcomes.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Mapping
from typing import Any

from roomcast.client.errors import ClientError, RequestRefused
from roomcast.client.events import (
    History,
    Joined,
    Message,
    Position,
    Rejoined,
    ServerMessage,
)
from roomcast.client.rooms import RoomBook
from roomcast.errors import CloseCode
from roomcast.messages import dumps

__all__ = ["ClientSession", "Outcome", "Reply", "Settled", "TokenExpiring"]


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """The answer to request ``event_id``: its ``result``, or the ``error`` to raise."""

    event_id: str
    result: Any = None
    error: ClientError | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A frame to send back at once."""

    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class TokenExpiring:
    """The server says the token expired: send a fresh one within its grace period."""


Outcome = Message | Rejoined | ServerMessage | Settled | Reply | TokenExpiring


@dataclasses.dataclass(frozen=True, slots=True)
class _Request:
    kind: str
    """join, rejoin, leave, publish, history, ping or auth."""
    room: str | None = None
    was_joined: bool = False
    """For a join: the room was joined before it (a refusal does not forget it)."""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ClientSession:
    """Requests in flight and rooms, for one client across all its connections.

    Args:
        prefix: Start of every ``event_id`` (random unless given).
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.book = RoomBook()
        self.duplicates = 0
        """Room messages dropped because their offset was not above the last one seen."""
        self.malformed = 0
        """Frames from the server that were not JSON objects."""
        self._pending: dict[str, _Request] = {}
        self._prefix = prefix if prefix is not None else secrets.token_hex(3)
        self._sequence = 0

    # ------------------------------------------------------------------ requests

    def join(self, room: str, since: Position | None = None) -> tuple[str, str]:
        """A join the application asked for: its ``event_id`` and frame."""
        was_joined = self.book.joining(room, since)
        return self._request(_Request("join", room, was_joined), _join(room, since))

    def rejoin(self, room: str, since: Position | None) -> tuple[str, str]:
        """A join after a reconnect; its answer also gives a ``Rejoined`` event."""
        self.book.joining(room, since)
        return self._request(_Request("rejoin", room, was_joined=True), _join(room, since))

    def leave(self, room: str) -> tuple[str, str]:
        """A leave; the room is forgotten at once (it is not rejoined whatever the answer)."""
        self.book.forget(room)
        return self._request(_Request("leave", room), {"type": "leave", "room": room})

    def publish(self, room: str, data: Any) -> tuple[str, str]:
        """A publish of ``data`` (raises ``InvalidMessage`` if it is not JSON-encodable)."""
        return self._request(
            _Request("publish", room), {"type": "publish", "room": room, "data": data}
        )

    def history(self, room: str, since: Position | None, limit: int | None) -> tuple[str, str]:
        """A read of ``room``'s history."""
        frame: dict[str, Any] = {"type": "history", "room": room}
        if since is not None:
            frame["since"] = since.to_wire()
        if limit is not None:
            frame["limit"] = limit
        return self._request(_Request("history", room), frame)

    def ping(self) -> tuple[str, str]:
        """A ping whose pong settles it."""
        return self._request(_Request("ping"), {"type": "ping"})

    def heartbeat(self) -> str:
        """A ping nobody waits for: any frame that follows shows the server is alive."""
        return dumps({"type": "ping", "event_id": self._next_id()})

    def auth(self, token: str) -> tuple[str, str]:
        """A fresh token for the same user."""
        return self._request(_Request("auth"), {"type": "auth", "token": token})

    def abandon(self, event_id: str) -> None:
        """Stop waiting for ``event_id`` (timed out): a late answer is ignored, and a first
        join of a room is taken as failed."""
        request = self._pending.pop(event_id, None)
        if request is not None and request.kind == "join" and not request.was_joined:
            assert request.room is not None
            self.book.forget(request.room)

    def connection_lost(self) -> list[str]:
        """The connection ended: every request in flight is abandoned; returns their ids."""
        lost = list(self._pending)
        for event_id in lost:
            self.abandon(event_id)
        return lost

    def _next_id(self) -> str:
        self._sequence += 1
        return f"{self._prefix}-{self._sequence}"

    def _request(self, request: _Request, frame: dict[str, Any]) -> tuple[str, str]:
        event_id = self._next_id()
        text = dumps({**frame, "event_id": event_id})  # before registering: it may raise
        self._pending[event_id] = request
        return event_id, text

    # ------------------------------------------------------------------ frames

    def received(self, raw: str | bytes) -> list[Outcome]:
        """What one frame from the server means."""
        try:
            frame = json.loads(raw)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            self.malformed += 1
            return []
        kind = frame.get("type")
        if kind == "room_message" and isinstance(frame.get("room"), str):
            message = Message.from_wire(frame)
            if self.book.accept(message.room, message.position):
                return [message]
            self.duplicates += 1
            return []
        if kind == "ack":
            return self._answered(frame.get("ack_event_id"), frame)
        if kind == "pong":
            return self._answered(frame.get("ping_event_id"), frame)
        if kind == "history":
            return self._answered(frame.get("ref_event_id"), frame)
        if kind == "ping":
            return [Reply(dumps({"type": "pong", "ping_event_id": frame.get("event_id")}))]
        if kind == "error":
            return self._error(frame)
        return [ServerMessage(frame)]

    def _answered(self, event_id: object, frame: Mapping[str, Any]) -> list[Outcome]:
        request = self._pending.pop(event_id, None) if isinstance(event_id, str) else None
        if request is None or not isinstance(event_id, str):
            return []  # a late answer to an abandoned request, or a heartbeat's pong
        position = Position.from_wire(frame.get("position"))
        room = request.room
        if request.kind in ("join", "rejoin"):
            assert room is not None
            self.book.joined(room, position)
            recovered = frame.get("recovered") is True
            replayed = _int(frame.get("replayed"))
            settled = Settled(event_id, Joined(room, position, recovered, replayed))
            if request.kind == "join":
                return [settled]
            return [Rejoined(room, recovered, replayed, position), settled]
        if request.kind == "publish":
            assert room is not None
            self.book.advance(room, position)
            return [Settled(event_id, position)]
        if request.kind == "history":
            assert room is not None
            items = frame.get("messages")
            messages = tuple(
                Message.from_wire(item)
                for item in (items if isinstance(items, list) else ())
                if isinstance(item, dict) and isinstance(item.get("room"), str)
            )
            recovered = frame.get("recovered") is not False
            return [Settled(event_id, History(room, position, recovered, messages))]
        return [Settled(event_id)]

    def _error(self, frame: Mapping[str, Any]) -> list[Outcome]:
        ref = frame.get("ref_event_id")
        request = self._pending.pop(ref, None) if isinstance(ref, str) else None
        code = frame.get("code") if isinstance(frame.get("code"), int) else None
        if request is None or not isinstance(ref, str):
            if code == CloseCode.TOKEN_EXPIRED:
                return [TokenExpiring(), ServerMessage(frame)]
            return [ServerMessage(frame)]
        text = frame.get("error")
        why = text if isinstance(text, str) else "refused"
        error = RequestRefused(f"{request.kind} refused: {why}", code, frame)
        room = request.room
        if request.kind == "rejoin":
            assert room is not None
            self.book.forget(room)
            return [Rejoined(room, False, 0, None, error=why), Settled(ref, error=error)]
        if request.kind == "join" and not request.was_joined:
            assert room is not None
            self.book.forget(room)
        return [Settled(ref, error=error)]


def _join(room: str, since: Position | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "join", "room": room}
    if since is not None:
        frame["since"] = since.to_wire()
    return frame
