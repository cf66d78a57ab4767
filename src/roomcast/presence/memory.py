"""Presence in one process: the hub's own registry is the roster.

Nothing is written anywhere: a snapshot is the hub's members of the room, read when asked.
"""

from __future__ import annotations

from roomcast.connection import Connection
from roomcast.hub import Hub
from roomcast.presence.roster import Member
from roomcast.presence.rosters import Answers

__all__ = ["MemoryRoster"]


class MemoryRoster:
    """The ``Roster`` of an in-memory hub (see ``roomcast.presence.rosters``)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._answers: Answers | None = None

    def answer_to(self, answers: Answers) -> None:
        self._answers = answers

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def joined(self, connection: Connection, room: str) -> None:
        pass  # the hub's registry already knows

    def left(self, connection: Connection, room: str) -> None:
        pass

    def read(self, connection: Connection, room: str) -> None:
        assert self._answers is not None
        members: list[Member] = [
            (member.connection_id, member.user_id) for member in self._hub.get_room_members(room)
        ]
        self._answers.members(connection, room, members)
