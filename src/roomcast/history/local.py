"""History for a hub that is the whole hub (no broker): positions assigned as it publishes.

A publish stores the message and fans out the positioned frame in one step.  A join with
``since`` replays from the store and joins, with nothing in between; a replay larger than
half the connection's send buffer goes out in parts, each once the client has read the one
before, and the connection joins with the last part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from roomcast.connection import Connection
from roomcast.frame import Frame
from roomcast.history.contract import Joined, JoinReply, Members, PublishReply, drained, within
from roomcast.history.memory import MemoryHistory
from roomcast.history.positions import HistoryLimits, Page, Position, positioned
from roomcast.tasks import TaskSet

__all__ = ["LocalHistory"]


class LocalHistory:
    """Rooms' histories in this process, kept as the hub publishes."""

    def __init__(self, store: MemoryHistory, members: Members) -> None:
        self.store = store
        self._members = members
        self._tasks = TaskSet()
        self._paced: dict[Connection, dict[str, asyncio.Task[None]]] = {}

    async def close(self) -> None:
        await self._tasks.cancel_all()

    def joining(self, connection: Connection) -> int:
        """Joins of ``connection`` whose replay goes out in parts."""
        return len(self._paced.get(connection, ()))

    def cancel(self, connection: Connection, room: str | None = None) -> bool:
        """Stop ``connection``'s paced join of ``room`` (of every room: None)."""
        joins = self._paced.get(connection)
        if joins is None:
            return False
        rooms = list(joins) if room is None else [room] if room in joins else []
        for name in rooms:
            joins.pop(name).cancel()
        if not joins:
            del self._paced[connection]
        return bool(rooms)

    def publish(
        self,
        room: str,
        limits: HistoryLimits,
        frame: Frame,
        exclude: Collection[str],
        done: PublishReply | None,
    ) -> int:
        position = self.store.append(room, frame.payload, limits)
        assert position is not None
        payload = positioned(frame.payload, position)
        assert payload is not None  # (the hub only gives JSON objects)
        delivered = self._members.fan_out_room(room, Frame.from_payload(payload, False), exclude)
        if done is not None:
            done(position, None)
        return delivered

    def join(
        self,
        connection: Connection,
        room: str,
        limits: HistoryLimits,
        since: Position | None,
        reply: JoinReply,
    ) -> None:
        if since is None:
            position = self.store.position(room, limits)
            self._members.enroll(connection, room)
            reply(Joined(position, recovered=False))
            return
        page = self.store.read(room, since, limits.size, limits)
        assert page is not None
        if not self._replay(connection, room, page, reply, 0):
            joins = self._paced.setdefault(connection, {})
            if room in joins:
                joins[room].cancel()
            joins[room] = self._tasks.spawn(self._in_parts(connection, room, limits, page, reply))

    def _replay(
        self, connection: Connection, room: str, page: Page, reply: JoinReply, replayed: int
    ) -> bool:
        """Send the page and join, if it fits the connection's send buffer (False: not)."""
        replay = frames(page)
        if within(self._members.headroom(connection) // 2, replay) < len(replay):
            return False
        self._members.enroll(connection, room)
        for frame in replay:
            self._members.send(connection, frame)
        end = Position(page.position.epoch, page.last if page.recovered else page.position.offset)
        reply(Joined(end, page.recovered, replayed + len(replay)))
        return True

    async def _in_parts(
        self, connection: Connection, room: str, limits: HistoryLimits, page: Page, reply: JoinReply
    ) -> None:
        replayed, epoch = 0, page.position.epoch
        try:
            while True:
                replay = frames(page)
                part = max(1, within(self._members.headroom(connection) // 2, replay))
                for frame in replay[:part]:
                    self._members.send(connection, frame)
                replayed += part
                await drained(self._members, connection)
                since = Position(epoch, page.first + part - 1)
                page = self.store.read(room, since, limits.size, limits)  # type: ignore[assignment]
                if page is None or not page.recovered or page.position.epoch != epoch:
                    self._forget(connection, room)
                    self._members.enroll(connection, room)
                    position = self.store.position(room, limits)
                    reply(Joined(position, False, replayed))
                    return
                rest = frames(page)
                if within(self._members.headroom(connection) // 2, rest) == len(rest):
                    self._forget(connection, room)  # (before the answer: it is no longer joining)
                    self._replay(connection, room, page, _ReplyOnce(reply, True), replayed)
                    return
        finally:
            self._forget(connection, room)

    def _forget(self, connection: Connection, room: str) -> None:
        joins = self._paced.get(connection)
        if joins is not None:
            joins.pop(room, None)
            if not joins:
                del self._paced[connection]

    async def read(
        self, room: str, since: Position | None, limit: int, limits: HistoryLimits
    ) -> Page:
        page = self.store.read(room, since, limit, limits)
        assert page is not None
        return page


class _ReplyOnce:
    """A join's answer after a replay in parts: it recovered everything."""

    def __init__(self, reply: JoinReply, recovered: bool) -> None:
        self._reply = reply
        self._recovered = recovered

    def __call__(self, joined: Joined) -> None:
        self._reply(Joined(joined.position, self._recovered, joined.replayed))


def frames(page: Page) -> list[Frame]:
    """The page's messages as positioned frames (payloads as the hub published them)."""
    epoch = page.position.epoch
    result = []
    for index, payload in enumerate(page.payloads):
        body = positioned(payload, Position(epoch, page.first + index))
        result.append(Frame.from_payload(payload if body is None else body, False))
    return result
