"""The per-room state of ``SharedHistory``: a room's delivery at this instance, the joins
catching up with it, and the publishes waiting for their position."""

from __future__ import annotations

import asyncio
import collections

from roomcast.brokers.base import BrokerStats
from roomcast.brokers.envelope import Envelope, InvalidEnvelope, unpack
from roomcast.connection import Connection
from roomcast.frame import Frame
from roomcast.history.contract import JoinReply, PublishReply
from roomcast.history.positions import Page, Position, positioned

__all__ = ["RECENT", "Ack", "CatchUp", "Stream", "positioned_frame", "unpacked"]

RECENT = 256
"""Frames kept per room, while joins read its history, for those the live stream went past
(beyond it, such a join reads the history again)."""


class CatchUp:
    __slots__ = (
        "connection",
        "position",
        "recovered",
        "replayed",
        "reply",
        "rereading",
        "rides",
        "since",
    )

    def __init__(self, connection: Connection, since: Position | None, reply: JoinReply) -> None:
        self.connection = connection
        self.since = since
        self.reply = reply
        self.position: Position | None = None
        """Set once the replay is sent: the connection is a member when live gets there."""
        self.recovered = False
        self.replayed = 0
        self.rereading = False
        self.rides = False
        """Waits for another join's read of the room (it needs only where the room is)."""


class Stream:
    """One room's delivery at this instance."""

    __slots__ = (
        "arrivals",
        "catching",
        "epoch",
        "expected",
        "held",
        "last",
        "overdue",
        "readers",
        "reads",
        "recent",
        "repairing",
        "timer",
    )

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.last: int | None = None
        self.held: dict[int, Envelope] = {}
        self.repairing = False
        self.recent: collections.deque[tuple[int, Frame]] | None = None
        """While joins read the history: the frames delivered meanwhile (the last RECENT)."""
        self.catching: dict[Connection, CatchUp] = {}
        self.arrivals = 0
        self.expected: Position | None = None
        """The furthest position known to exist and not delivered yet (a publish's reply, a
        join's read); ``timer`` fires if it does not arrive in time."""
        self.timer: asyncio.TimerHandle | None = None
        self.overdue = 0
        """Checks since ``expected`` was due."""
        self.reads: list[SharedRead] = []
        """History reads for joins under way: a join whose ``since`` one of them covers
        waits for it instead of reading again (a reconnect storm costs a read or two)."""
        self.readers = 0
        """Joins in ``catching`` that read (the others ride on their reads)."""
        """Messages that came from the broker: a read during which none came is the newest
        word on the room (its epoch wins over the stream's)."""

    def remember(self, offset: int, frame: Frame) -> None:
        if self.recent is None:
            self.recent = collections.deque(maxlen=RECENT)
        self.recent.append((offset, frame))

    def since_read(self, reached: int) -> list[Frame]:
        """The frames delivered after offset ``reached`` that are still remembered."""
        return [frame for offset, frame in self.recent or () if offset > reached]

    def stop_waiting(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class SharedRead:
    """One history read that several joins of a room wait for."""

    __slots__ = ("_frames", "arrivals", "done", "since")

    def __init__(self, since: Position | None, arrivals: int, done: asyncio.Future[Page | None]):
        self.since = since
        self.arrivals = arrivals
        """The stream's arrivals when the read started."""
        self.done = done
        self._frames: list[Frame] | None = None

    def covers(self, since: Position | None) -> bool:
        """Whether this read holds everything after ``since`` that a join needs."""
        mine = self.since
        if since is None or mine is None:
            return False
        return mine.epoch == since.epoch and mine.offset <= since.offset

    def frames(self, page: Page, stats: BrokerStats) -> list[Frame]:
        """The page's messages as positioned frames, made once for every join."""
        if self._frames is None:
            self._frames = [positioned_frame(envelope) for _, envelope in unpacked(page, stats)]
        return self._frames


class Ack:
    __slots__ = ("accepted", "done", "position", "room", "unsure")

    def __init__(self, room: str, done: PublishReply, accepted: bool) -> None:
        self.room = room
        self.done = done
        self.position: Position | None = None
        self.accepted = accepted
        """Handed to a connected broker: a failure may have come after Redis ran it."""
        self.unsure: Position | None = None
        """Its reply was lost with the connection: look for it after this, once back."""


def unpacked(page: Page, stats: BrokerStats) -> list[tuple[int, Envelope]]:
    """The page's envelopes with their offsets (what does not parse is counted, skipped)."""
    found = []
    for index, data in enumerate(page.payloads):
        offset = page.first + index
        try:
            found.append((offset, unpack(data, Position(page.position.epoch, offset))))
        except InvalidEnvelope:
            stats.malformed += 1
    return found


def positioned_frame(envelope: Envelope) -> Frame:
    assert envelope.position is not None
    payload = positioned(envelope.payload, envelope.position)
    return Frame.from_payload(envelope.payload if payload is None else payload, False)
