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

The snapshot is this process's registry on an in-memory hub.  With Redis it comes from the
cluster-wide ``RoomRoster``: joins, leaves and snapshot reads go through one bounded queue, in
order (changes written up to 1,000 per round trip), so a snapshot read after a join includes
it.  A dead instance's members are purged by a survivor, which publishes their ``left``
events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from roomcast.brokers.envelope import Target
from roomcast.connection import Connection
from roomcast.errors import CloseCode
from roomcast.frame import encode
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.messages import ErrorMessage, preview
from roomcast.presence.roster import Member, RoomRoster, RosterChange
from roomcast.protocol import PresenceMessage
from roomcast.tasks import TaskSet

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
        roster: The cluster-wide roster (with Redis); None answers from ``manager``.
        queue_limit: Roster operations that may wait; beyond it they are dropped and
            counted (``dropped``), so a Redis stall cannot grow memory without bound.
    """

    def __init__(
        self,
        hub: Hub,
        events: EventLog,
        roster: RoomRoster | None = None,
        queue_limit: int = 100_000,
    ) -> None:
        self._hub = hub
        self._events = events
        self.roster = roster
        self._ops: asyncio.Queue[RosterChange | Read] = asyncio.Queue(queue_limit)
        self._tasks = TaskSet()
        self.dropped = 0
        """Roster operations dropped because the queue was full."""
        self.failed = 0
        """Roster operations that failed (Redis unreachable)."""
        self.written = 0
        """Roster changes written."""
        self.round_trips = 0
        """Batches those changes were written in."""
        self.coalesced = 0
        """Snapshot requests folded into a later snapshot (``SNAPSHOT_INTERVAL``)."""
        self._windows: dict[tuple[str, str], _Window] = {}

    async def start(self) -> None:
        if self.roster is None:
            return
        self._tasks.spawn(self._write(), name="roomcast-presence-writer")
        # The roster announces this instance; with Redis away, try again until it can.
        try:
            async with asyncio.timeout(2.0):
                await self.roster.start()
        except (Exception, TimeoutError) as exc:
            logger.warning("presence roster not reachable yet: %s", exc)
            self._tasks.spawn(self._start_later(), name="roomcast-presence-start")

    async def _start_later(self) -> None:
        assert self.roster is not None
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await self.roster.start()
                return

    async def stop(self) -> None:
        for window in self._windows.values():
            window.handle.cancel()
        self._windows.clear()
        await self._tasks.cancel_all()
        if self.roster is not None:
            await self.roster.stop()

    # ---------------------------------------------------------------- membership events

    # HubObserver: joins, leaves and departures of rooms that are not the server's.

    def joined(self, connection: Connection, room: str) -> None:
        """``connection`` became a member of ``room``."""
        if room.startswith(RESERVED_PREFIX):
            return
        self._announce(room, joined=_member(connection.connection_id, connection.user_id))
        if self.roster is not None:
            self._queue(RosterChange(True, room, connection.connection_id, connection.user_id))

    def left(self, connection: Connection, room: str) -> None:
        """``connection`` left ``room``."""
        if room.startswith(RESERVED_PREFIX):
            return
        self._announce(room, left=_member(connection.connection_id, connection.user_id))
        if self.roster is not None:
            self._queue(RosterChange(False, room, connection.connection_id, connection.user_id))

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
        if self.roster is None:
            members = [
                _member(member.connection_id, member.user_id)
                for member in self._hub.get_room_members(room)
            ]
            self._send(connection, room, members)
        else:
            self._queue(Read(connection, room))

    def _send(self, connection: Connection, room: str, members: list[dict[str, Any]]) -> None:
        if self._hub.get_connection(connection.connection_id) is connection:
            snapshot = PresenceMessage(room=room, members=members)
            self._hub.deliver_to(connection, encode(snapshot))

    def _unavailable(self, connection: Connection, room: str, why: str) -> None:
        """Say so rather than send a partial list; the client may watch again later."""
        if self._hub.get_connection(connection.connection_id) is connection:
            error = ErrorMessage(
                error=f"presence of {preview(room)} unavailable ({why})",
                code=CloseCode.TRY_AGAIN_LATER,
            )
            self._hub.deliver_to(connection, encode(error))

    # ---------------------------------------------------------------- the roster queue

    def _queue(self, op: RosterChange | Read) -> None:
        if isinstance(op, RosterChange):
            assert self.roster is not None
            self.roster.record(op)  # memory first: Redis can always be rebuilt from it
        try:
            self._ops.put_nowait(op)
        except asyncio.QueueFull:
            self.dropped += 1
            self._events.event("presence_dropped", "roster queue full; operation dropped")
            if isinstance(op, RosterChange):
                assert self.roster is not None
                self.roster.mark_dirty()
            else:
                self._unavailable(op.connection, op.room, "busy")

    async def _write(self) -> None:
        """Apply queued changes in batches (one round trip each); reads in their place, one
        per room however many watchers asked for it meanwhile."""
        while True:
            batch = [await self._ops.get()]
            while len(batch) < _BATCH and not self._ops.empty():
                batch.append(self._ops.get_nowait())
            changes: list[RosterChange] = []
            reads: dict[str, list[Connection]] = {}
            for op in batch:
                if isinstance(op, RosterChange):
                    if reads:  # reads see every change queued before them, no later one
                        await self._read(reads)
                        reads = {}
                    changes.append(op)
                else:
                    await self._apply(changes)
                    changes = []
                    reads.setdefault(op.room, []).append(op.connection)
            await self._apply(changes)
            await self._read(reads)

    async def _apply(self, changes: list[RosterChange]) -> None:
        if not changes:
            return
        assert self.roster is not None
        try:
            await self.roster.apply(changes)
            self.written += len(changes)
            self.round_trips += 1
        except Exception as exc:  # Redis away: rewritten from memory once it is back
            self._failed("roster write", len(changes), exc)

    async def _read(self, reads: dict[str, list[Connection]]) -> None:
        assert self.roster is not None
        for room, watchers in reads.items():
            try:
                found = await self.roster.members(room)
            except Exception as exc:
                self._failed("snapshot read", 1, exc)
                for connection in watchers:
                    self._unavailable(connection, room, "Redis unreachable")
                continue
            members = [_member(cid, user) for cid, user in found]
            for connection in watchers:
                self._send(connection, room, members)

    def _failed(self, what: str, count: int, exc: Exception) -> None:
        self.failed += count
        self._events.event("presence_failed", "%s failed (%d operations): %s", what, count, exc)


@dataclasses.dataclass(frozen=True, slots=True)
class Read:
    """A snapshot of ``room`` for ``connection``, read after the changes queued before it."""

    connection: Connection
    room: str


_BATCH = 1000
"""Most roster operations written in one round trip."""
