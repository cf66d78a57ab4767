"""Presence over Redis: a cluster-wide ``RoomRoster`` behind one bounded, ordered queue.

Joins, leaves and snapshot reads go through one queue, in order: changes are written up to
``BATCH`` per round trip, and a read waits for the changes queued before it, so a snapshot read
after a join includes it; reads of one room asked meanwhile are answered by one read.  The
roster keeps its own part in memory first, so a dropped or failed write is repaired by
rewriting that part once Redis answers again.  A full queue drops (counted) rather than grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from roomcast.connection import Connection
from roomcast.logbudget import EventLog
from roomcast.presence.roster import RoomRoster, RosterChange
from roomcast.presence.rosters import Answers
from roomcast.tasks import TaskSet

__all__ = ["BATCH", "RedisRoster"]

logger = logging.getLogger("roomcast.presence.feed")

BATCH = 1000
"""Most roster operations written in one round trip."""


class RedisRoster:
    """The ``Roster`` of a hub spread over Redis (see ``roomcast.presence.rosters``).

    Args:
        roster: The cluster-wide roster in Redis.
        events: Where dropped and failed work is logged, with a budget.
        queue_limit: Operations that may wait; beyond it they are dropped and counted
            (``dropped``), so a Redis stall cannot grow memory without bound.
    """

    def __init__(self, roster: RoomRoster, events: EventLog, queue_limit: int = 100_000) -> None:
        self.roster = roster
        self._events = events
        self._answers: Answers | None = None
        self._ops: asyncio.Queue[RosterChange | Read] = asyncio.Queue(queue_limit)
        self._tasks = TaskSet()
        self.dropped = 0
        """Operations dropped because the queue was full."""
        self.failed = 0
        """Operations that failed (Redis unreachable)."""
        self.written = 0
        """Roster changes written."""
        self.round_trips = 0
        """Batches those changes were written in."""

    def answer_to(self, answers: Answers) -> None:
        self._answers = answers

    async def start(self) -> None:
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
        await self._tasks.cancel_all()
        await self.roster.stop()

    def joined(self, connection: Connection, room: str) -> None:
        self._queue(RosterChange(True, room, connection.connection_id, connection.user_id))

    def left(self, connection: Connection, room: str) -> None:
        self._queue(RosterChange(False, room, connection.connection_id, connection.user_id))

    def read(self, connection: Connection, room: str) -> None:
        self._queue(Read(connection, room))

    def _queue(self, op: RosterChange | Read) -> None:
        if isinstance(op, RosterChange):
            self.roster.record(op)  # memory first: Redis can always be rebuilt from it
        try:
            self._ops.put_nowait(op)
        except asyncio.QueueFull:
            self.dropped += 1
            self._events.event("presence_dropped", "roster queue full; operation dropped")
            if isinstance(op, RosterChange):
                self.roster.mark_dirty()
            else:
                assert self._answers is not None
                self._answers.unavailable(op.connection, op.room, "busy")

    async def _write(self) -> None:
        """Apply queued changes in batches (one round trip each); reads in their place, one
        per room however many watchers asked for it meanwhile."""
        while True:
            batch = [await self._ops.get()]
            while len(batch) < BATCH and not self._ops.empty():
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
        try:
            await self.roster.apply(changes)
            self.written += len(changes)
            self.round_trips += 1
        except Exception as exc:  # Redis away: rewritten from memory once it is back
            self._failed("roster write", len(changes), exc)

    async def _read(self, reads: dict[str, list[Connection]]) -> None:
        assert self._answers is not None
        for room, watchers in reads.items():
            try:
                found = await self.roster.members(room)
            except Exception as exc:
                self._failed("snapshot read", 1, exc)
                for connection in watchers:
                    self._answers.unavailable(connection, room, "Redis unreachable")
                continue
            for connection in watchers:
                self._answers.members(connection, room, found)

    def _failed(self, what: str, count: int, exc: Exception) -> None:
        self.failed += count
        self._events.event("presence_failed", "%s failed (%d operations): %s", what, count, exc)


@dataclasses.dataclass(frozen=True, slots=True)
class Read:
    """A snapshot of ``room`` for ``connection``, read after the changes queued before it."""

    connection: Connection
    room: str
