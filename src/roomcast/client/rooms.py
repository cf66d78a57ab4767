"""The rooms a client is in and the last position it saw in each: what it rejoins, and from
where, after a reconnect.  Pure bookkeeping: no I/O, no event loop."""

from __future__ import annotations

import dataclasses

from roomcast.client.events import Position

__all__ = ["RoomBook"]


@dataclasses.dataclass(slots=True)
class _Room:
    position: Position | None
    joined: bool
    """The server acknowledged a join (on some connection): the room is rejoined later."""


class RoomBook:
    """Rooms and positions, fed by room_messages, join acks and publish acks.

    The position of a room only moves forward within an epoch; a new epoch replaces it (the
    server reset the room's history, and said so in a join ack or a message).
    """

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}

    def __contains__(self, room: object) -> bool:
        return room in self._rooms

    def joined_rooms(self) -> list[str]:
        """Rooms whose join the server acknowledged, in the order they were first asked for."""
        return [room for room, entry in self._rooms.items() if entry.joined]

    def position(self, room: str) -> Position | None:
        """The last position seen in ``room`` (None: none yet, or not a room of the client)."""
        entry = self._rooms.get(room)
        return entry.position if entry is not None else None

    def joining(self, room: str, since: Position | None) -> bool:
        """A join of ``room`` is on its way (replayed messages may precede its ack); returns
        whether the room was joined already."""
        entry = self._rooms.get(room)
        if entry is None:
            self._rooms[room] = _Room(since, joined=False)
            return False
        if since is not None:
            entry.position = since
        return entry.joined

    def joined(self, room: str, position: Position | None) -> None:
        """The server acknowledged a join, at ``position`` (None: the room has no history)."""
        entry = self._rooms.setdefault(room, _Room(None, joined=True))
        entry.joined = True
        if position is not None:
            entry.position = position

    def forget(self, room: str) -> None:
        """The client left ``room``, or the server refused it."""
        self._rooms.pop(room, None)

    def accept(self, room: str, position: Position | None) -> bool:
        """Whether a message at ``position`` is new in ``room`` (and if so, move there).

        False only for a message at or below the last offset seen in the same epoch: a
        duplicate, which the server should never send.
        """
        entry = self._rooms.get(room)
        if entry is None or position is None:
            return True
        last = entry.position
        if last is not None and last.epoch == position.epoch and position.offset <= last.offset:
            return False
        entry.position = position
        return True

    def advance(self, room: str, position: Position | None) -> None:
        """The client's own publish to ``room`` was stored at ``position``: the server sent it
        every earlier message first, so the client is there now."""
        entry = self._rooms.get(room)
        if entry is None or position is None:
            return
        last = entry.position
        if last is None or last.epoch != position.epoch or position.offset > last.offset:
            entry.position = position

    def rejoins(self) -> list[tuple[str, Position | None]]:
        """What to rejoin after a reconnect: each joined room with its last position."""
        return [(room, entry.position) for room, entry in self._rooms.items() if entry.joined]
