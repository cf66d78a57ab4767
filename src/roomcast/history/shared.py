"""History for a hub spread over instances: positions assigned by the broker, and every
instance delivering each room's messages in offset order, without holes.

The broker stores and publishes a message in one step; every instance, its origin included,
delivers it when it comes back on the room's channel, so it knows the last offset it
delivered per room (``Stream.last``).  An offset that skips ahead is held back while the
missing range is read from the history (**repair**; only what the history lost is counted as
missed; after a broker reconnect every room is checked).  A join with ``since`` reads the
history while live messages go on, and the connection becomes a member only once level with
the live stream (**catch-up**: the replay, then the recent frames the read missed).  The
origin acknowledges a publish with its position when the message comes back, in the room's
order for its sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from roomcast.brokers.base import Broker, BrokerStats
from roomcast.brokers.envelope import Envelope
from roomcast.connection import Connection
from roomcast.errors import BrokerUnavailable
from roomcast.frame import Frame
from roomcast.history.contract import Members, PublishReply
from roomcast.history.joins import Joins
from roomcast.history.positions import HistoryLimits, HistoryRule, Page, Position, positioned
from roomcast.history.streams import (
    Ack,
    CatchUp,
    Stream,
    positioned_frame,
    unpacked,
)
from roomcast.logbudget import EventLog
from roomcast.tasks import TaskSet

__all__ = ["SharedHistory"]

logger = logging.getLogger("roomcast.history")

_HELD = 1000
"""Most messages held back per room while a hole is repaired; beyond, the hole is given up."""
_OVERDUE = 0.5
"""Seconds to wait for a message known to exist before reading it from the history."""
_OVERDUE_CHECKS = 10
"""Checks (each ``_OVERDUE`` apart, each reading the history) before a message known to
exist is given up as lost."""
_READS = 64
"""History reads in flight at once (after a reconnect, every room is checked)."""


class SharedHistory(Joins):
    """Ordered, repaired delivery of rooms with history, and recovery, over a broker."""

    def __init__(
        self,
        broker: Broker,
        rule: HistoryRule,
        members: Members,
        events: EventLog,
    ) -> None:
        self._broker = broker
        self._rule = rule
        self._members = members
        self._events = events
        self._stats: BrokerStats = broker.stats
        self._origin = broker.instance_id
        self._streams: dict[str, Stream] = {}
        self._acks: dict[tuple[int, int], Ack] = {}
        self._joining: dict[Connection, dict[str, CatchUp]] = {}
        self._waiting_joins = 0
        self._tasks = TaskSet()
        self._reads = asyncio.Semaphore(_READS)
        broker.on_resubscribed(self._check_all)

    async def close(self) -> None:
        for stream in self._streams.values():
            stream.stop_waiting()
        await self._tasks.cancel_all()

    def position(self, room: str) -> Position | None:
        """The last position delivered here in ``room``, if any."""
        stream = self._streams.get(room)
        if stream is None or stream.epoch is None or stream.last is None:
            return None
        return Position(stream.epoch, stream.last)

    def joining(self, connection: Connection) -> int:
        """Joins of ``connection`` under way."""
        return len(self._joining.get(connection, ()))

    # ---------------------------------------------------------------- publishing

    def publish(
        self,
        room: str,
        limits: HistoryLimits,
        frame: Frame,
        exclude: Collection[str],
        done: PublishReply | None,
    ) -> None:
        key: list[tuple[int, int]] = []  # (known once published; the reply comes later)
        reply = lambda position: self._stored(key[0], room, position)  # noqa: E731
        key.append(
            self._broker.publish_positioned(
                room, frame.payload, limits, exclude=exclude, reply=reply
            )
        )
        if done is not None:
            self._acks[key[0]] = Ack(room, done, accepted=self._broker.ready)

    def _stored(self, key: tuple[int, int], room: str, position: Position | None) -> None:
        ack = self._acks.get(key)
        if ack is None:
            return  # no one waits, or the message came back first
        stream = self._streams.get(room)
        if position is None and ack.accepted and stream is not None and stream.last is not None:
            # The connection broke with it queued or in flight: Redis may have run it (a
            # lost reply is not a lost message).  Once resubscribed, look for it.
            assert stream.epoch is not None
            ack.unsure = Position(stream.epoch, stream.last)
            return
        if position is None or stream is None or stream.epoch != position.epoch:
            del self._acks[key]
            failure = "the message could not be stored (broker unavailable)"
            ack.done(position, failure if position is None else None)
            return
        if stream.last is not None and stream.last >= position.offset:
            del self._acks[key]
            ack.done(position, None)
            return
        ack.position = position
        self._expect(room, position)

    def _expect(self, room: str, position: Position) -> None:
        """``position`` exists: if it has not arrived soon, read it from the history (one
        timer per room, however many messages it waits for)."""
        stream = self._streams.get(room)
        if stream is None:
            return
        if stream.expected is None or position.offset > stream.expected.offset:
            stream.expected = position
        if stream.timer is None:
            loop = asyncio.get_running_loop()
            stream.timer = loop.call_later(_OVERDUE, self._overdue, room, stream)

    def _overdue(self, room: str, stream: Stream) -> None:
        stream.timer = None
        expected, stream.expected = stream.expected, None
        if self._streams.get(room) is not stream or expected is None:
            return
        if stream.last is None:
            if stream.catching:  # nothing live since the join's read: take it from there
                stream.epoch, stream.last = expected.epoch, expected.offset
                self._drain(room, stream)
                self._graduate_level(room, stream)
            return
        if stream.epoch != expected.epoch or stream.last >= expected.offset:
            stream.overdue = 0
            return
        stream.overdue += 1
        if stream.overdue > _OVERDUE_CHECKS:  # neither live nor in the history: gone
            stream.overdue = 0
            self._give_up(room, stream, expected.offset)
            self._drain(room, stream)
            if stream.catching:
                self._graduate_level(room, stream)
            return
        if not stream.repairing:
            self._repair(room, stream)
        self._expect(room, expected)  # (until it is there)

    # ---------------------------------------------------------------- arrivals

    def arrived(self, envelope: Envelope) -> None:
        """A message of a room with history, from the broker (any origin, this one too)."""
        position = envelope.position
        assert position is not None
        room = envelope.target_id
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = Stream()
        stream.arrivals += 1
        if stream.epoch != position.epoch:
            if stream.epoch:  # (not a room that had no history yet)
                self._events.event(
                    "history_reset", "room %s: history reset (new epoch %s)", room, position.epoch
                )
            stream.epoch, stream.last = position.epoch, None
            stream.held.clear()
        offset = position.offset
        if stream.last is None or offset == stream.last + 1:
            self._deliver(room, stream, offset, envelope)
            self._drain(room, stream)
        elif offset <= stream.last:
            self._stats.duplicates += 1
        else:
            stream.held[offset] = envelope
            if len(stream.held) > _HELD:
                self._drain(room, stream, gone_upto=max(stream.held))
            elif not stream.repairing:
                self._repair(room, stream)

    def _deliver(self, room: str, stream: Stream, offset: int, envelope: Envelope) -> None:
        assert stream.epoch is not None
        position = Position(stream.epoch, offset)
        payload = positioned(envelope.payload, position)
        frame = Frame.from_payload(envelope.payload if payload is None else payload, False)
        self._members.fan_out_room(room, frame, envelope.exclude)
        stream.last = offset
        if stream.catching:  # (kept only while a join reads the history: it may need them)
            stream.remember(offset, frame)
        if envelope.origin == self._origin:
            ack = self._acks.pop((envelope.stream, envelope.seq), None)
            if ack is not None:
                ack.done(position, None)
        if stream.catching:
            self._graduate_level(room, stream)

    def _drain(self, room: str, stream: Stream, gone_upto: int | None = None) -> None:
        """Deliver what was held back, in order; a hole up to ``gone_upto`` is given up (the
        history no longer has it), a later one is repaired."""
        while stream.held:
            assert stream.last is not None
            offset = min(stream.held)
            if offset <= stream.last:
                del stream.held[offset]
            elif offset == stream.last + 1:
                self._deliver(room, stream, offset, stream.held.pop(offset))
            elif gone_upto is not None and stream.last < gone_upto:
                self._give_up(room, stream, min(offset - 1, gone_upto))
            else:
                if not stream.repairing:
                    self._repair(room, stream)
                return

    def _give_up(self, room: str, stream: Stream, upto: int) -> None:
        """Messages after ``stream.last`` up to ``upto`` are lost: count them, go past."""
        assert stream.last is not None
        self._stats.missed += upto - stream.last
        self._events.event(
            "history_missed",
            "room %s: %d message(s) lost and no longer in the history",
            room,
            upto - stream.last,
        )
        stream.last = upto
        self._settle_skipped(room, upto)

    def _settle_skipped(self, room: str, upto: int) -> None:
        for key, ack in list(self._acks.items()):
            if ack.room == room and ack.position is not None and ack.position.offset <= upto:
                del self._acks[key]
                ack.done(ack.position, None)

    # ---------------------------------------------------------------- repair

    def _repair(self, room: str, stream: Stream) -> None:
        limits = self._rule(room)
        if limits is None or stream.epoch is None or stream.last is None:
            return
        stream.repairing = True
        since = Position(stream.epoch, stream.last)
        self._tasks.spawn(self._read_missing(room, stream, since, limits), name="roomcast-repair")

    async def _read_missing(
        self, room: str, stream: Stream, since: Position, limits: HistoryLimits
    ) -> None:
        arrivals = stream.arrivals
        page = await self._read(room, since, limits)
        stream.repairing = False
        if self._streams.get(room) is not stream or stream.epoch != since.epoch:
            return
        if page is not None and page.position.epoch != since.epoch and not stream.held:
            if stream.arrivals == arrivals:  # the history was reset meanwhile: start from it
                stream.epoch, stream.last = page.position.epoch, page.position.offset
            return
        if page is None or not page.recovered or page.position.epoch != since.epoch:
            # Gone from the history (or unreadable): give up what is held back's holes.
            self._drain(room, stream, gone_upto=max(stream.held, default=0))
            return
        for offset, envelope in unpacked(page, self._stats):
            if stream.last is not None and offset == stream.last + 1:
                if stream.held.pop(offset, None) is None:
                    self._stats.repaired += 1
                self._deliver(room, stream, offset, envelope)
        self._drain(room, stream, gone_upto=page.position.offset)

    async def _read(self, room: str, since: Position | None, limits: HistoryLimits) -> Page | None:
        try:
            async with self._reads:
                return await self._broker.read_history(room, since, limits.size, limits)
        except BrokerUnavailable as exc:
            self._events.event("history_read", "room %s: history not readable: %s", room, exc)
            return None

    def _check_all(self) -> None:
        """After a reconnect: anything published meanwhile is in the histories, and so are
        this instance's publishes whose replies the lost connection took along, if Redis ran
        them."""
        for room, stream in self._streams.items():
            if not stream.repairing and stream.last is not None:
                self._repair(room, stream)
        for key, ack in list(self._acks.items()):
            if ack.unsure is not None:
                self._tasks.spawn(self._find(key, ack, ack.unsure), name="roomcast-find")
                ack.unsure = None

    async def _find(self, key: tuple[int, int], ack: Ack, since: Position) -> None:
        """Ack a publish whose reply was lost with its position if it is in the history
        after ``since``; refuse it (it reached nobody) if it is not."""
        limits = self._rule(ack.room)
        page = None if limits is None else await self._read(ack.room, since, limits)
        found = None
        if page is not None and page.recovered:
            for offset, envelope in unpacked(page, self._stats):
                if envelope.origin == self._origin and (envelope.stream, envelope.seq) == key:
                    found = Position(page.position.epoch, offset)
        ack.accepted = False  # (known now: stored at ``found``, or not at all)
        self._stored(key, ack.room, found)

    def dropped(self, room: str) -> None:
        """The hub stopped listening to ``room``: its stream ends here."""
        stream = self._streams.pop(room, None)
        if stream is not None:
            stream.stop_waiting()
        if stream is not None and stream.last is not None:
            self._settle_skipped(room, stream.last + len(stream.held) + _HELD)

    async def read(
        self, room: str, since: Position | None, limit: int, limits: HistoryLimits
    ) -> Page:
        """Read ``room``'s history for a client; the page's payloads are positioned frames'."""
        async with self._reads:
            page = await self._broker.read_history(room, since, limit, limits)
        payloads = [
            positioned_frame(envelope).payload for _, envelope in unpacked(page, self._stats)
        ]
        return Page(page.position, payloads, page.first, page.recovered)
