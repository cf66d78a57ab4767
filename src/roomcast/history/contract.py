"""What the history engines need from the hub, and what they answer.

``LocalHistory`` (one process) and ``SharedHistory`` (many, through a broker) both deliver
through the hub's registry and fan-out; this is the narrow view of the hub they get.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import Protocol

from roomcast.connection import Connection
from roomcast.frame import Frame
from roomcast.history.positions import Position

__all__ = ["JoinReply", "Joined", "Members", "PublishReply"]


class Members(Protocol):
    """The hub's side: membership and fan-out."""

    def fan_out_room(self, room: str, frame: Frame, exclude: Collection[str]) -> int:
        """Hand ``frame`` to the room's local members but ``exclude``; how many took it."""

    def count(self, room: str) -> int:
        """Local members of ``room``."""

    def send(self, connection: Connection, frame: Frame) -> bool:
        """Hand ``frame`` to one connection."""

    def enroll(self, connection: Connection, room: str) -> None:
        """Make ``connection`` a member of ``room`` (from now on it gets the room's frames)."""

    def hold(self, room: str) -> None:
        """Keep listening to ``room``'s channel even while it has no member (a join is on
        its way)."""

    def release(self, room: str) -> None:
        """Undo one ``hold``."""


@dataclasses.dataclass(frozen=True, slots=True)
class Joined:
    """How a join of a room with history went.

    Attributes:
        position: From here on the connection gets every message of the room.
        recovered: Whether everything after the join's ``since`` was replayed.
        replayed: How many messages were replayed before the connection became a member.
        failure: Why the join could not be done (then the connection is not a member).
    """

    position: Position | None
    recovered: bool
    replayed: int = 0
    failure: str | None = None


JoinReply = Callable[[Joined], None]
"""Told how a join ended: at once, or once the history was read."""

PublishReply = Callable[[Position | None, str | None], None]
"""Told a published message's position once it reached its room (in the room's order), or
why it could not be published."""
