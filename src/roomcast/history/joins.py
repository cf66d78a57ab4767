"""Joins of rooms with history over a broker: the catch-up half of ``SharedHistory``.

A join with ``since`` reads the room's history while the room's live messages go on.  The
joining connection becomes a member only once it is level with the live stream: first the
replay, then the live messages that went past the read (from the recent frames kept per
room, or read again), then live delivery.  Joins without ``since`` that arrive while a read
of the room is under way ride on it: a storm of joins costs one read.
"""

from __future__ import annotations

import abc
import asyncio

from roomcast.brokers.base import BrokerStats
from roomcast.connection import Connection
from roomcast.frame import Frame
from roomcast.history.contract import Joined, JoinReply, Members, drained, within
from roomcast.history.positions import HistoryLimits, Page, Position
from roomcast.history.streams import CatchUp, SharedRead, Stream, positioned_frame, unpacked
from roomcast.tasks import TaskSet

__all__ = ["MAX_WAITING_JOINS", "Joins"]

MAX_WAITING_JOINS = 10_000
"""Joins that may wait for a history read at once, in the whole process; more are refused
(1013, "retry"): each holds a task, and a client's rooms alone do not bound them."""


class Joins(abc.ABC):
    """The join side of ``SharedHistory`` (which provides the streams, reads and timers)."""

    _streams: dict[str, Stream]
    _joining: dict[Connection, dict[str, CatchUp]]
    _members: Members
    _tasks: TaskSet
    _stats: BrokerStats
    _waiting_joins: int
    """Joins in every room's ``catching``: bounded by ``MAX_WAITING_JOINS``."""

    @abc.abstractmethod
    async def _read(
        self, room: str, since: Position | None, limits: HistoryLimits
    ) -> Page | None: ...

    @abc.abstractmethod
    def _expect(self, room: str, position: Position) -> None: ...

    @abc.abstractmethod
    def position(self, room: str) -> Position | None: ...

    # ---------------------------------------------------------------- joins

    def join(
        self,
        connection: Connection,
        room: str,
        limits: HistoryLimits,
        since: Position | None,
        reply: JoinReply,
    ) -> None:
        if room in self._joining.get(connection, ()):
            reply(Joined(None, False, failure="a join of this room is already under way"))
            return
        if self._waiting_joins >= MAX_WAITING_JOINS:  # (each one holds a task and a read)
            reply(Joined(None, False, failure="too many joins waiting for history; retry"))
            return
        joins = self._joining.setdefault(connection, {})
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = Stream()
        catch = CatchUp(connection, since, reply)
        if since is None and stream.last is not None and not stream.held:
            catch.position = Position(stream.epoch or "", stream.last)
            joins[room] = catch
            self._graduate(room, stream, catch)
            return
        reading = bool(stream.catching)
        joins[room] = stream.catching[connection] = catch
        self._waiting_joins += 1
        self._members.hold(room)
        if since is None and reading:
            catch.rides = True  # one read of where the room is serves a storm of joins
            return
        stream.readers += 1
        self._tasks.spawn(self._catch_up(room, stream, catch, limits), name="roomcast-catch-up")

    async def _catch_up(
        self, room: str, stream: Stream, catch: CatchUp, limits: HistoryLimits
    ) -> None:
        read = next((read for read in stream.reads if read.covers(catch.since)), None)
        if read is None:
            done: asyncio.Future[Page | None] = asyncio.get_running_loop().create_future()
            read = SharedRead(catch.since, stream.arrivals, done)
            stream.reads.append(read)
            self._tasks.spawn(self._read_for_joins(room, stream, read, limits))
        page = await asyncio.shield(read.done)
        try:
            if stream.catching.get(catch.connection) is catch:  # (not left or gone meanwhile)
                newest = stream.arrivals == read.arrivals and not stream.held
                self._caught_up(room, stream, catch, limits, page, newest, read)
        finally:
            self._let_riders_in(room, stream)

    async def _read_for_joins(
        self, room: str, stream: Stream, read: SharedRead, limits: HistoryLimits
    ) -> None:
        page = None
        try:
            page = await self._read(room, read.since, limits)
        finally:  # (cancelled: the joins waiting for it go on without the history)
            stream.reads.remove(read)
            if not read.done.done():
                read.done.set_result(page)

    def _let_riders_in(self, room: str, stream: Stream) -> None:
        """The joins that waited for a read of the room join where the room now is."""
        if stream.readers > 0 or not stream.catching:
            return  # (another read is still under way: they wait for it)
        riders = [catch for catch in stream.catching.values() if catch.rides]
        for catch in riders:
            catch.position, catch.recovered = self.position(room), False
            self._graduate(room, stream, catch)

    def _caught_up(
        self,
        room: str,
        stream: Stream,
        catch: CatchUp,
        limits: HistoryLimits,
        page: Page | None,
        newest: bool = False,
        read: SharedRead | None = None,
    ) -> None:
        if page is None:
            # The history cannot be read (the broker is down): join without it, and say so.
            catch.position, catch.recovered = self.position(room), False
            self._graduate(room, stream, catch)
            return
        epoch, top = page.position.epoch, page.position.offset
        replay: list[Frame] = []
        if catch.since is not None and page.recovered:
            if not catch.rereading:
                catch.recovered = True
            if read is None:
                replay = [positioned_frame(env) for _, env in unpacked(page, self._stats)]
            else:  # (a read shared with other joins: its frames from this one's since on)
                replay = read.frames(page, self._stats)[catch.since.offset + 1 - page.first :]
            reached = max(page.last, catch.since.offset)
        else:
            catch.recovered = False
            reached = top
        if stream.last is None:
            if self._members.count(room) == 0:
                stream.epoch, stream.last = epoch, reached  # this instance's start in the room
        elif stream.epoch != epoch:
            replay, catch.recovered = [], False
            if newest:  # the history was reset since the stream's last message: start from it
                stream.epoch, stream.last = epoch, top
                reached = top
            else:  # the stream moved on past the read: start from the stream
                reached, epoch = stream.last, stream.epoch or ""
        elif stream.last > reached:
            # The live stream went past the read: the recent frames fill the space between.
            tail = stream.since_read(reached)
            if len(tail) != stream.last - reached:  # not all of it: read again from there
                if self._send(catch, replay, Position(epoch, reached)):
                    catch.since, catch.rereading = Position(epoch, reached), True
                    self._tasks.spawn(self._catch_up(room, stream, catch, limits))
                else:
                    self._tasks.spawn(self._paced(room, stream, catch, limits))
                return
            replay += tail
            reached = stream.last
        if not self._send(catch, replay, Position(epoch, reached)):
            self._tasks.spawn(self._paced(room, stream, catch, limits))
            return
        catch.position = Position(epoch, reached)
        if stream.last is not None and reached <= stream.last:
            self._graduate(room, stream, catch)
        else:
            self._expect(room, catch.position)  # live is behind the read: wait for it

    def _send(self, catch: CatchUp, frames: list[Frame], end: Position) -> bool:
        """Send the replay ``frames`` (the last at ``end``), as many as the connection's send
        buffer takes with half of it to spare; False if some are left for later (``since``
        then says where the next read starts)."""
        fits = within(self._members.headroom(catch.connection) // 2, frames)
        for frame in frames[:fits]:
            self._members.send(catch.connection, frame)
        catch.replayed += fits
        if fits == len(frames):
            return True
        catch.since = Position(end.epoch, end.offset - len(frames) + fits)
        catch.rereading = True
        return False

    async def _paced(
        self, room: str, stream: Stream, catch: CatchUp, limits: HistoryLimits
    ) -> None:
        """Wait until the connection has read half its send buffer, then read on."""
        await drained(self._members, catch.connection)
        if stream.catching.get(catch.connection) is catch:
            await self._catch_up(room, stream, catch, limits)

    def _graduate(self, room: str, stream: Stream, catch: CatchUp) -> None:
        connection = catch.connection
        if stream.catching.pop(connection, None) is not None:
            self._waiting_joins -= 1
            self._members.release(room)
            if not catch.rides:
                stream.readers -= 1
            if not stream.catching:
                stream.recent = None
        self._forget_join(connection, room)
        self._members.enroll(connection, room)
        catch.reply(Joined(catch.position, catch.recovered, catch.replayed))
        if not catch.rides:
            self._let_riders_in(room, stream)

    def _abandon(self, room: str, stream: Stream, catch: CatchUp) -> None:
        if stream.catching.pop(catch.connection, None) is not None:
            self._waiting_joins -= 1
            self._members.release(room)
            if not catch.rides:
                stream.readers -= 1
            if not stream.catching:
                stream.recent = None
        self._forget_join(catch.connection, room)

    def _forget_join(self, connection: Connection, room: str) -> None:
        joins = self._joining.get(connection)
        if joins is not None:
            joins.pop(room, None)
            if not joins:
                del self._joining[connection]

    def cancel(self, connection: Connection, room: str | None = None) -> bool:
        """Stop ``connection``'s join of ``room`` (every join: None); True if one was under
        way."""
        joins = self._joining.get(connection)
        if joins is None:
            return False
        rooms = list(joins) if room is None else [room] if room in joins else []
        for name in rooms:
            stream = self._streams.get(name)
            if stream is not None:
                self._abandon(name, stream, joins[name])
            else:
                self._forget_join(connection, name)
        return bool(rooms)

    def _graduate_level(self, room: str, stream: Stream) -> None:
        assert stream.last is not None
        for catch in list(stream.catching.values()):
            if catch.position is not None and catch.position.offset <= stream.last:
                self._graduate(room, stream, catch)
