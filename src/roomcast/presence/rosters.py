"""The roster contract of the presence feed: where room members are kept and read.

``PresenceFeed`` (``roomcast.presence.feed``) announces joins and leaves and answers snapshot
requests; what it asks of a roster is small: hear each join and leave, and read a room's
members (answering through ``Answers``, at once or after the writes queued before the read).
Two implementations: ``MemoryRoster`` (the hub's own registry, one process) and
``RedisRoster`` (``roomcast.presence.redis``: a cluster-wide ``RoomRoster`` behind one bounded,
ordered queue).
"""

from __future__ import annotations

from typing import Protocol

from roomcast.connection import Connection
from roomcast.presence.roster import Member

__all__ = ["Answers", "Roster"]


class Answers(Protocol):
    """Where a roster's reads are answered (the feed)."""

    def members(self, connection: Connection, room: str, members: list[Member]) -> None:
        """The members of ``room``, for ``connection``."""

    def unavailable(self, connection: Connection, room: str, why: str) -> None:
        """The members of ``room`` cannot be read now (``why``)."""


class Roster(Protocol):
    """Room members as the presence feed keeps and reads them."""

    def answer_to(self, answers: Answers) -> None:
        """Answer reads through ``answers`` (set once, by the feed)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def joined(self, connection: Connection, room: str) -> None:
        """``connection`` became a member of ``room``."""

    def left(self, connection: Connection, room: str) -> None:
        """``connection`` is no longer a member of ``room``."""

    def read(self, connection: Connection, room: str) -> None:
        """Answer ``connection`` with the members of ``room``, seeing every join and leave
        heard before."""
