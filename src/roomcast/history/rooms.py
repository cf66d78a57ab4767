"""The hub's history: which engine keeps it, and the calls the hub and the faces make.

Without a broker, ``LocalHistory`` keeps the rooms' messages in this process; with one,
``SharedHistory`` has the broker keep them and orders, repairs and catches up deliveries.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from roomcast.brokers.base import Broker
from roomcast.brokers.envelope import Envelope, Target
from roomcast.connection import Connection
from roomcast.fanout import Fanout
from roomcast.frame import Frame
from roomcast.history.contract import Joined, JoinReply, Members, PublishReply
from roomcast.history.local import LocalHistory, frames
from roomcast.history.memory import MemoryHistory
from roomcast.history.positions import HistoryLimits, HistoryRule, Page, Position
from roomcast.history.shared import SharedHistory
from roomcast.interest import Interest
from roomcast.logbudget import EventLog
from roomcast.messages import preview
from roomcast.registry import Registry

__all__ = ["HubMembers", "RoomHistory"]


class HubMembers:
    """A hub's registry, fan-out and broker interest, as the history engines see them."""

    __slots__ = ("_enroll", "_fanout", "_interest", "_registry")

    def __init__(
        self,
        fanout: Fanout,
        registry: Registry,
        enroll: Callable[[Connection, str], object],
        interest: Interest | None,
    ) -> None:
        self._fanout = fanout
        self._registry = registry
        self._enroll = enroll
        self._interest = interest

    def fan_out_room(self, room: str, frame: Frame, exclude: Collection[str]) -> int:
        return self._fanout.send(frame, self._fanout.local(Target.ROOM, room, exclude))

    def count(self, room: str) -> int:
        return len(self._registry.room_members(room))

    def send(self, connection: Connection, frame: Frame) -> bool:
        return self._fanout.send(frame, (connection,)) == 1

    def enroll(self, connection: Connection, room: str) -> None:
        self._enroll(connection, room)

    def hold(self, room: str) -> None:
        if self._interest is not None:
            self._interest.hold(room)

    def release(self, room: str) -> None:
        if self._interest is not None:
            self._interest.release(room)


class RoomHistory:
    """Rooms' histories for one hub.

    Args:
        rule: Which rooms keep history, and how much.
        members: The hub's membership and fan-out.
        broker: The hub's broker (None: the history is kept here).
        events: Where losses and resets are logged, within the budget.
        max_bytes: Most bytes kept in this process (without a broker).
    """

    def __init__(
        self,
        rule: HistoryRule,
        members: Members,
        broker: Broker | None,
        events: EventLog,
        max_bytes: int,
    ) -> None:
        self.rule = rule
        self._engine: LocalHistory | SharedHistory
        if broker is None:
            self._engine = LocalHistory(MemoryHistory(rule, max_bytes=max_bytes), members)
        else:
            self._engine = SharedHistory(broker, rule, members, events)

    @property
    def shared(self) -> SharedHistory | None:
        """The broker-side engine, if the history is kept by a broker."""
        return self._engine if isinstance(self._engine, SharedHistory) else None

    async def close(self) -> None:
        if isinstance(self._engine, SharedHistory):
            await self._engine.close()

    def publish(
        self,
        room: str,
        limits: HistoryLimits,
        frame: Frame,
        exclude: Collection[str],
        done: PublishReply | None,
    ) -> int:
        """Store and deliver (see ``Hub.publish``); how many local connections took it now."""
        if isinstance(self._engine, LocalHistory):
            return self._engine.publish(room, limits, frame, exclude, done)
        self._engine.publish(room, limits, frame, exclude, done)
        return 0

    def join(
        self,
        connection: Connection,
        room: str,
        limits: HistoryLimits,
        since: Position | None,
        reply: JoinReply,
    ) -> None:
        self._engine.join(connection, room, limits, since, reply)

    def already_in(self, room: str, limits: HistoryLimits, reply: JoinReply) -> None:
        """A join of a room the connection is in: nothing to replay; where the room is."""
        if isinstance(self._engine, LocalHistory):
            position = self._engine.store.position(room, limits)
        else:
            position = self._engine.position(room)
        reply(Joined(position, recovered=False))

    async def read(self, room: str, since: Position | None, limit: int) -> Page:
        """Up to ``limit`` messages of ``room`` after ``since`` (or its latest), as positioned
        payloads ready for a client.

        Raises:
            LookupError: the room keeps no history.
            BrokerUnavailable: the broker could not be read.
        """
        limits = self.rule(room)
        if limits is None:
            raise LookupError(f"room {preview(room)} keeps no history")
        limit = max(0, min(limit, limits.size))
        page = await self._engine.read(room, since, limit, limits)
        if isinstance(self._engine, LocalHistory):
            payloads = [frame.payload for frame in frames(page)]
            return Page(page.position, payloads, page.first, page.recovered)
        return page

    def joining(self, connection: Connection) -> int:
        """Joins of ``connection`` waiting for a room's history."""
        return self._engine.joining(connection) if isinstance(self._engine, SharedHistory) else 0

    def arrived(self, envelope: Envelope) -> None:
        if isinstance(self._engine, SharedHistory):
            self._engine.arrived(envelope)
