"""History for a hub that is the whole hub (no broker): positions assigned as it publishes.

Everything happens in one step: a publish stores the message and fans out the positioned
frame; a join with ``since`` replays from the store and joins, with nothing in between.
"""

from __future__ import annotations

from collections.abc import Collection

from roomcast.connection import Connection
from roomcast.frame import Frame
from roomcast.history.contract import Joined, JoinReply, Members, PublishReply
from roomcast.history.memory import MemoryHistory
from roomcast.history.positions import HistoryLimits, Page, Position, positioned

__all__ = ["LocalHistory"]


class LocalHistory:
    """Rooms' histories in this process, kept as the hub publishes."""

    def __init__(self, store: MemoryHistory, members: Members) -> None:
        self.store = store
        self._members = members

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
        self._members.enroll(connection, room)
        for frame in frames(page):
            self._members.send(connection, frame)
        replayed = len(page.payloads)
        end = Position(page.position.epoch, page.last if page.recovered else page.position.offset)
        reply(Joined(end, page.recovered, replayed))

    async def read(
        self, room: str, since: Position | None, limit: int, limits: HistoryLimits
    ) -> Page:
        page = self.store.read(room, since, limit, limits)
        assert page is not None
        return page


def frames(page: Page) -> list[Frame]:
    """The page's messages as positioned frames (payloads as the hub published them)."""
    epoch = page.position.epoch
    result = []
    for index, payload in enumerate(page.payloads):
        body = positioned(payload, Position(epoch, page.first + index))
        result.append(Frame.from_payload(payload if body is None else body, False))
    return result
