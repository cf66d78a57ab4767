"""Lifecycle events: what a backend learns of clients and rooms, and their wire form.

Who is online and where, told to a backend that is not the roomcast process:

- ``connect`` / ``disconnect``: a user's online state, cluster-wide (the first connection of
  the user arrives / the last one is gone).  A user who reconnects within the debounce window
  emits neither: the brief gap is not a change of state.  ``disconnect`` carries the reason
  and close code of the connection that went last.
- ``join`` / ``leave``: a user's membership of a room (the user's first connection in the room
  / the last one left), debounced the same way.
- ``occupied`` / ``vacated``: a room's first member arrives / last member leaves, cluster-wide.
- ``publish``: a client published to a room (``data`` is its message).

Each event has an ``id`` unique across instances and time, and a ``seq`` that grows by one per
*subject* (the user for user events, the room for ``occupied``/``vacated``), so a consumer
that sees a ``seq`` lower than the last it applied for that subject drops the event as stale.
Events are delivered at least once: deduplicate by ``id``.  ``synthetic`` marks events a
survivor emitted for an instance that died (its connections' ``disconnect``, ``leave``,
``vacated``).  Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["Kind", "LifecycleEvent", "decode_events", "encode_events"]


class Kind(enum.StrEnum):
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    JOIN = "join"
    LEAVE = "leave"
    OCCUPIED = "occupied"
    VACATED = "vacated"
    PUBLISH = "publish"


USER_KINDS = frozenset({Kind.CONNECT, Kind.DISCONNECT, Kind.JOIN, Kind.LEAVE, Kind.PUBLISH})
ROOM_KINDS = frozenset({Kind.OCCUPIED, Kind.VACATED})


@dataclasses.dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One event.

    Attributes:
        kind: What happened.
        id: Unique across instances and restarts.
        time: When it happened, in Unix seconds.
        seq: Grows by one per subject (the user; the room for occupied/vacated).
        user: The user (every kind but occupied/vacated).
        room: The room (join, leave, occupied, vacated, publish).
        connection: The connection that caused it, where one did.
        reason: Why a connection ended (disconnect).
        code: The close code it ended with (disconnect).
        data: The message (publish), or what the connect hook returned (connect).
        instance: The instance that emitted it.
        synthetic: Emitted by a survivor for a dead instance's connections.
    """

    kind: Kind
    id: str
    time: float
    seq: int
    user: str | None = None
    room: str | None = None
    connection: str | None = None
    reason: str | None = None
    code: int | None = None
    data: Any = None
    instance: str | None = None
    synthetic: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON object: ``type`` first, absent fields left out."""
        out: dict[str, Any] = {"type": self.kind.value, "id": self.id, "time": self.time}
        out["seq"] = self.seq
        for name in ("user", "room", "connection", "reason", "code", "data", "instance"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.synthetic:
            out["synthetic"] = True
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LifecycleEvent:
        """The event of ``as_dict``'s object.

        Raises:
            ValueError: not such an object.
        """
        try:
            return cls(
                kind=Kind(raw["type"]),
                id=str(raw["id"]),
                time=float(raw["time"]),
                seq=int(raw["seq"]),
                user=raw.get("user"),
                room=raw.get("room"),
                connection=raw.get("connection"),
                reason=raw.get("reason"),
                code=raw.get("code"),
                data=raw.get("data"),
                instance=raw.get("instance"),
                synthetic=bool(raw.get("synthetic", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a lifecycle event: {exc!r}") from None


def encode_events(events: list[LifecycleEvent]) -> bytes:
    """A webhook body: ``{"events": [...]}``, compact UTF-8 JSON."""
    body = {"events": [event.as_dict() for event in events]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_events(body: bytes) -> list[LifecycleEvent]:
    """The events of a webhook body.

    Raises:
        ValueError: not such a body.
    """
    parsed = json.loads(body)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("events"), list):
        raise ValueError('expected {"events": [...]}')
    return [LifecycleEvent.from_dict(item) for item in parsed["events"]]
