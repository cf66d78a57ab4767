"""Who is in a room, told to the clients that ask: ``roomcast serve``'s presence feed.

A client watches room R's presence by joining the reserved room ``$presence:R`` (it must be a
member of R).  It then gets one snapshot of R's members and, from then on, an event whenever a
connection joins or leaves R::

    {"type": "presence", "room": "lobby", "members": [{"connection_id": "…", "user_id": "ann"}]}
    {"type": "presence", "room": "lobby", "joined": {"connection_id": "…", "user_id": "bob"}}
    {"type": "presence", "room": "lobby", "left":   {"connection_id": "…", "user_id": "bob"}}

Events travel as ordinary room messages of ``$presence:R``, so with Redis they reach watchers
on every instance.  On one process an event nobody watches is not even encoded; with Redis
every join and leave is published, since watchers elsewhere are not known here (which is why
presence is off by default with Redis).  Members are keyed by connection id (a user with two
tabs is two members), which makes applying a snapshot and events idempotent.

A client may ask for a fresh snapshot by joining ``$presence:R`` again, but at most one is sent
per connection and room each ``SNAPSHOT_INTERVAL``: further requests within it are coalesced
into one snapshot at its end.  (A snapshot of a big room is large; re-asking in a loop would
otherwise turn a client's 100 messages a second into megabytes a second.)

Where members are kept and read is the roster's job (one contract,
``roomcast.presence.rosters``): the hub's own registry on one process (``MemoryRoster``), a
cluster-wide roster in Redis behind one ordered queue otherwise (``RedisRoster``).  A dead
instance's members are purged by a survivor, which publishes their ``left`` events.
"""

from __future__ import annotations

import asyncio
import logging

from roomcast.brokers.envelope import Target
from roomcast.connection import Connection
from roomcast.errors import CloseCode
from roomcast.frame import encode
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.messages import ErrorMessage, preview
from roomcast.presence.memory import MemoryRoster
from roomcast.presence.roster import Member
from roomcast.presence.rosters import Roster
from roomcast.protocol import PresenceMessage

__all__ = [
    "PRESENCE_PREFIX",
    "RESERVED_PREFIX",
    "STATS_ROOM",
    "PresenceFeed",
    "presence_room",
    "watched_room",
]

logger = logging.getLogger("roomcast.presence.feed")

RESERVED_PREFIX = "$"
"""Room ids starting with it belong to the server: clients may join only the ones below,
and never publish to them."""
STATS_ROOM = "$stats"
"""Every instance publishes its figures here once a second (the demo page's dashboard)."""
PRESENCE_PREFIX = "$presence:"


def presence_room(room: str) -> str:
    """The reserved room whose members watch ``room``'s presence."""
    return PRESENCE_PREFIX + room


def watched_room(room: str) -> str | None:
    """``R`` for ``$presence:R``; None for any other room."""
    return room[len(PRESENCE_PREFIX) :] if room.startswith(PRESENCE_PREFIX) else None


SNAPSHOT_INTERVAL = 1.0
"""Seconds between two snapshots of one room to one connection."""


class _Window:
    """A snapshot was sent recently; ``pending``: another was asked for meanwhile."""

    __slots__ = ("handle", "pending")

    def __init__(self, handle: asyncio.TimerHandle) -> None:
        self.handle = handle
        self.pending = False


def _member(connection_id: str, user_id: str | None) -> dict[str, str | None]:
    return {"connection_id": connection_id, "user_id": user_id}


class PresenceFeed:
    """Presence events and snapshots for one server.

    Args:
        hub: The hub (its deliveries spread events over Redis when it has a broker); the feed
            observes it (``hub.observe(feed)``) to hear of joins, leaves and departures.
        events: Where refused work is logged, with a budget.
        roster: Where members are kept and read (``roomcast.presence.rosters``): the hub's
            own registry if omitted (``MemoryRoster``), else e.g. a ``RedisRoster``.
    """

    def __init__(
        self,
        hub: Hub,
        events: EventLog,
        roster: Roster | None = None,
    ) -> None:
        self._hub = hub
        self._events = events
        self.roster: Roster = roster if roster is not None else MemoryRoster(hub)
        self.roster.answer_to(self)
        self.coalesced = 0
        """Snapshot requests folded into a later snapshot (``SNAPSHOT_INTERVAL``)."""
        self._windows: dict[tuple[str, str], _Window] = {}

    async def start(self) -> None:
        await self.roster.start()

    async def stop(self) -> None:
        for window in self._windows.values():
            window.handle.cancel()
        self._windows.clear()
        await self.roster.stop()

    # ---------------------------------------------------------------- membership events

    # HubObserver: joins, leaves and departures of rooms that are not the server's.

    def joined(self, connection: Connection, room: str) -> None:
        """``connection`` became a member of ``room``."""
        if room.startswith(RESERVED_PREFIX):
            return
        self._announce(room, joined=_member(connection.connection_id, connection.user_id))
        self.roster.joined(connection, room)

    def left(self, connection: Connection, room: str) -> None:
        """``connection`` left ``room``."""
        if room.startswith(RESERVED_PREFIX):
            return
        self._announce(room, left=_member(connection.connection_id, connection.user_id))
        self.roster.left(connection, room)

    def departed(self, connection: Connection) -> None:
        """``connection`` went, however it went: its rooms hear it left."""
        for room in connection.rooms:
            self.left(connection, room)

    def purged(self, room: str, members: list[Member]) -> None:
        """A dead instance's members of ``room`` were purged: its watchers hear they left."""
        for connection_id, user_id in members:
            self._announce(room, left=_member(connection_id, user_id))

    def restored(self, room: str, members: list[Member]) -> None:
        """This instance was purged while alive and wrote its members back: the watchers,
        who heard they left, hear they are here."""
        for connection_id, user_id in members:
            self._announce(room, joined=_member(connection_id, user_id))

    def _announce(
        self,
        room: str,
        joined: dict[str, str | None] | None = None,
        left: dict[str, str | None] | None = None,
    ) -> None:
        watchers = presence_room(room)
        if self._hub.reaches(Target.ROOM, watchers):  # no encoding where nobody watches
            event = PresenceMessage(room=room, joined=joined, left=left)
            self._hub.deliver(Target.ROOM, watchers, encode(event))

    # ---------------------------------------------------------------- snapshots

    def request_snapshot(self, connection: Connection, room: str) -> None:
        """Send ``connection`` a snapshot of ``room`` now, or at the end of the current
        ``SNAPSHOT_INTERVAL`` if it had one within it (however often it asks meanwhile)."""
        key = (connection.connection_id, room)
        window = self._windows.get(key)
        if window is None:
            self._send_and_wait(key, connection, room)
        else:
            window.pending = True
            self.coalesced += 1

    def _send_and_wait(self, key: tuple[str, str], connection: Connection, room: str) -> None:
        handle = asyncio.get_running_loop().call_later(SNAPSHOT_INTERVAL, self._window_over, key)
        self._windows[key] = _Window(handle)
        self.snapshot(connection, room)

    def _window_over(self, key: tuple[str, str]) -> None:
        window = self._windows.pop(key)
        if not window.pending:
            return
        connection_id, room = key
        connection = self._hub.get_connection(connection_id)
        if connection is not None and presence_room(room) in connection.rooms:
            self._send_and_wait(key, connection, room)

    def snapshot(self, connection: Connection, room: str) -> None:
        """Send ``connection`` the members of ``room`` (now, or after the queued writes)."""
        self.roster.read(connection, room)

    # Answers: the roster's reads come back here.

    def members(self, connection: Connection, room: str, members: list[Member]) -> None:
        if self._hub.get_connection(connection.connection_id) is connection:
            listed = [_member(cid, user) for cid, user in members]
            snapshot = PresenceMessage(room=room, members=listed)
            self._hub.deliver_to(connection, encode(snapshot))

    def unavailable(self, connection: Connection, room: str, why: str) -> None:
        """Say so rather than send a partial list; the client may watch again later."""
        if self._hub.get_connection(connection.connection_id) is connection:
            error = ErrorMessage(
                error=f"presence of {preview(room)} unavailable ({why})",
                code=CloseCode.TRY_AGAIN_LATER,
            )
            self._hub.deliver_to(connection, encode(error))
