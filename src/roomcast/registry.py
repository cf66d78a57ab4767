"""The local index of connections by id, room and user: pure, synchronous, I/O-free.

Every mutation returns what changed at the edges that matter to a broker: a room that gained
its first local member or lost its last one, a user whose first local connection arrived or
whose last one left.  The Redis layer subscribes and unsubscribes on exactly those transitions,
so an instance listens only to channels it has local interest in.

Invariants (checked by the property-based tests):

* a connection is in ``room``'s member map iff ``room`` is in ``connection.rooms``;
* a connection with a ``user_id`` is in that user's map iff it is registered;
* no room and no user maps to an empty member map: empty entries are deleted at once.

Memory is given back: a Python dict never shrinks its table when entries are deleted, so
after 200,000 rooms came and went the index would keep a table sized for 200,000.  Once the
indexes have had more deletions than twice their live entries (and at least
``COMPACT_AFTER``, or they are empty), they are copied into right-sized dicts: O(1) amortised
per deletion.

Because nothing here awaits, a caller on the event loop can check and change the index without
a lock: no other task runs between the two.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, KeysView, ValuesView
from typing import Protocol

from roomcast.connection import Connection
from roomcast.errors import ConnectionStateError

__all__ = ["COMPACT_AFTER", "Departure", "Registry", "RoomChange"]

COMPACT_AFTER = 4096
"""Deletions from the indexes before they may be copied into right-sized tables."""


class RoomChange(enum.Enum):
    """The effect of a join or leave on one room."""

    UNCHANGED = "unchanged"
    """Already a member (join) or not a member (leave); nothing changed."""
    JOINED = "joined"
    """Joined a room that already had local members."""
    OPENED = "opened"
    """Joined a room that had no local member: the room now exists here."""
    LEFT = "left"
    """Left a room that still has local members."""
    EMPTIED = "emptied"
    """Left a room as its last local member: the room no longer exists here."""


@dataclasses.dataclass(frozen=True, slots=True)
class Departure:
    """What removing a connection changed.

    Attributes:
        connection: The connection that was removed (its ``rooms`` are left unchanged, so the
            caller can still see where it was).
        emptied_rooms: Rooms that lost their last local member.
        user_gone: True if the connection was its user's last local one.
    """

    connection: Connection
    emptied_rooms: tuple[str, ...]
    user_gone: bool


class HubObserver(Protocol):
    """Hears membership changes as they happen (synchronously, after the change)."""

    def joined(self, connection: Connection, room: str) -> None:
        """``connection`` became a member of ``room``."""

    def left(self, connection: Connection, room: str) -> None:
        """``connection`` left ``room`` by a leave (departures are reported on their own)."""

    def departed(self, connection: Connection) -> None:
        """``connection`` was forgotten, however it went; its ``rooms`` say where it was."""


class Registry:
    """Connections indexed by id, room and user."""

    __slots__ = ("_by_id", "_deleted", "_rooms", "_users")

    def __init__(self) -> None:
        self._deleted = 0
        self._by_id: dict[str, Connection] = {}
        # Member maps are dicts keyed by connection id: ordered (stable fan-out order), O(1)
        # removal, and the key makes `exclude` checks cheap.
        self._rooms: dict[str, dict[str, Connection]] = {}
        self._users: dict[str, dict[str, Connection]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._by_id

    def __iter__(self) -> Iterator[Connection]:
        return iter(self._by_id.values())

    def get(self, connection_id: str) -> Connection | None:
        """The connection with this id, if registered."""
        return self._by_id.get(connection_id)

    def connections(self) -> ValuesView[Connection]:
        """A live view of all connections (copy it before mutating the registry)."""
        return self._by_id.values()

    def rooms(self) -> KeysView[str]:
        """A live view of the rooms with at least one local member."""
        return self._rooms.keys()

    def room_members(self, room: str) -> dict[str, Connection]:
        """Members of ``room`` by connection id; an empty dict if the room does not exist.

        The returned dict is the registry's own when the room exists: read it, do not change it.
        """
        return self._rooms.get(room, {})

    def user_connections(self, user_id: str) -> dict[str, Connection]:
        """Connections of ``user_id`` by connection id (empty if none); read-only as above."""
        return self._users.get(user_id, {})

    def add(self, connection: Connection) -> bool:
        """Register ``connection``; it joins rooms afterwards, through ``join``.

        Returns:
            True if this is the first local connection of its user (False without a user).

        Raises:
            ConnectionStateError: a connection with the same id is already registered, or
                ``connection.rooms`` is not empty (room transitions are reported by ``join``).
        """
        cid = connection.connection_id
        if cid in self._by_id:
            raise ConnectionStateError(f"connection {cid} is already registered")
        if connection.rooms:
            raise ConnectionStateError("a connection joins rooms after it is added")
        self._by_id[cid] = connection
        if connection.user_id is None:
            return False
        devices = self._users.get(connection.user_id)
        if devices is None:
            self._users[connection.user_id] = {cid: connection}
            return True
        devices[cid] = connection
        return False

    def remove(self, connection_id: str) -> Departure | None:
        """Unregister a connection from every index; None if it was not registered."""
        connection = self._by_id.pop(connection_id, None)
        if connection is None:
            return None
        emptied: list[str] = []
        for room in connection.rooms:
            members = self._rooms[room]
            del members[connection_id]
            if not members:
                del self._rooms[room]
                emptied.append(room)
        user_gone = False
        self._deleted += 1 + len(emptied)
        if connection.user_id is not None:
            devices = self._users[connection.user_id]
            del devices[connection_id]
            if not devices:
                del self._users[connection.user_id]
                user_gone = True
        self._compact_if_sparse()
        return Departure(connection, tuple(emptied), user_gone)

    def join(self, connection_id: str, room: str) -> RoomChange:
        """Add a registered connection to ``room``.

        Raises:
            ConnectionStateError: the connection is not registered.
        """
        connection = self._require(connection_id)
        if room in connection.rooms:
            return RoomChange.UNCHANGED
        connection.rooms.add(room)
        members = self._rooms.get(room)
        if members is None:
            self._rooms[room] = {connection_id: connection}
            return RoomChange.OPENED
        members[connection_id] = connection
        return RoomChange.JOINED

    def leave(self, connection_id: str, room: str) -> RoomChange:
        """Remove a registered connection from ``room``.

        Raises:
            ConnectionStateError: the connection is not registered.
        """
        connection = self._require(connection_id)
        if room not in connection.rooms:
            return RoomChange.UNCHANGED
        connection.rooms.discard(room)
        members = self._rooms[room]
        del members[connection_id]
        if members:
            return RoomChange.LEFT
        del self._rooms[room]
        self._deleted += 1
        self._compact_if_sparse()
        return RoomChange.EMPTIED

    def _compact_if_sparse(self) -> None:
        """Copy the indexes into right-sized dicts once deletions dwarf what is left."""
        deleted, live = self._deleted, len(self._by_id) + len(self._rooms)
        if deleted < 2 * live or (deleted < COMPACT_AFTER and live):
            return
        self._by_id = dict(self._by_id)
        self._rooms = dict(self._rooms)
        self._users = dict(self._users)
        self._deleted = 0

    def _require(self, connection_id: str) -> Connection:
        connection = self._by_id.get(connection_id)
        if connection is None:
            raise ConnectionStateError(f"connection {connection_id} is not registered")
        return connection
