"""Positions in a room's history, and the rules that say which rooms keep one.

A room with history numbers its messages: ``offset`` 1, 2, 3... assigned once, at publish.
Offsets are only comparable within one ``epoch``, a short string that changes whenever the
room's stored history is lost or reset, so a client that remembers ``(epoch, offset)`` can
ask for exactly what it missed, and learns that it cannot when the epoch moved on.

The client sees positions inside the messages themselves: ``positioned`` appends
``"offset"`` and ``"epoch"`` to a JSON object's encoded bytes, without decoding it, so a
message is still encoded once whatever its position.  Everything here is pure.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "EMPTY",
    "HistoryLimits",
    "HistoryRule",
    "Page",
    "Position",
    "history_for_all",
    "history_rule",
    "new_epoch",
    "positioned",
]

_EPOCH = re.compile(r"[0-9A-Za-z_-]{1,32}")


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """Where a room's history stands (or a client is in it): the ``offset`` of the last
    message, 0 before the first, within ``epoch``."""

    epoch: str
    offset: int

    def as_dict(self) -> dict[str, Any]:
        """The protocol's ``{"epoch": ..., "offset": ...}``."""
        return {"epoch": self.epoch, "offset": self.offset}

    @classmethod
    def parse(cls, value: object) -> Position:
        """A position sent by a client (``{"epoch": str, "offset": int >= 0}``).

        Raises:
            ValueError: anything else (with what is wrong).
        """
        if not isinstance(value, dict):
            raise ValueError("'since' must be an object with 'epoch' and 'offset'")
        epoch, offset = value.get("epoch"), value.get("offset")
        if not isinstance(epoch, str) or len(epoch) > 64:
            raise ValueError("'since.epoch' must be a string (at most 64 characters)")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError("'since.offset' must be a non-negative integer")
        return cls(epoch, offset)


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryLimits:
    """How much of a room's history is kept: at most ``size`` messages, none older than
    ``ttl`` seconds (and a room silent for ``ttl`` seconds forgets its history: a new epoch).
    """

    size: int = 100
    ttl: float = 300.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("history size must be at least 1")
        if not self.ttl > 0:
            raise ValueError("history ttl must be positive")


HistoryRule = Callable[[str], HistoryLimits | None]
"""Which rooms keep history, and how much: ``rule(room)`` -> limits, or None for none."""


def history_for_all(limits: HistoryLimits, *, reserved_prefix: str = "$") -> HistoryRule:
    """A rule that gives every room ``limits``, except the server's own ``$`` rooms."""

    def rule(room: str) -> HistoryLimits | None:
        return None if room.startswith(reserved_prefix) else limits

    return rule


def history_rule(history: HistoryLimits | HistoryRule | None) -> HistoryRule | None:
    """A rule from what a caller gave: limits for every room, a rule, or nothing."""
    return history_for_all(history) if isinstance(history, HistoryLimits) else history


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """What a read of a room's history found.

    Attributes:
        position: The room's latest position when it was read.
        payloads: Stored message payloads (without positions), oldest first...
        first: ...the first having this offset (the others follow, +1 each).
        recovered: Whether the read could start where it was asked to (always True for a
            read without ``since``); False: nothing in ``payloads``.
    """

    position: Position
    payloads: list[bytes]
    first: int
    recovered: bool

    @property
    def last(self) -> int:
        """Offset of the last payload (``first - 1`` when there is none)."""
        return self.first + len(self.payloads) - 1


EMPTY = Position("", 0)
"""The position of a room with no stored message (none yet, or its history expired): any
epoch's offset 0 may recover from it."""


def new_epoch() -> str:
    """A fresh epoch: 8 random hex digits (a new one per history, never reused in practice)."""
    return os.urandom(4).hex()


def valid_epoch(epoch: str) -> bool:
    """Whether ``epoch`` can be spliced into a message as it is (no JSON escaping needed)."""
    return _EPOCH.fullmatch(epoch) is not None


def positioned(payload: bytes, position: Position) -> bytes | None:
    """``payload`` (an encoded JSON object) with ``"offset"`` and ``"epoch"`` appended;
    None if it is not a JSON object's text (such messages carry no position).

    The epoch must pass ``valid_epoch`` (the stores only make such epochs).
    """
    if not payload.endswith(b"}") or not payload.startswith(b"{"):
        return None
    head = payload[:-1].rstrip()
    separator = b"" if head == b"{" else b","
    return b'%s%s"offset":%d,"epoch":"%s"}' % (
        head,
        separator,
        position.offset,
        position.epoch.encode(),
    )


def recoverable(since: Position, current: Position, oldest: int) -> bool:
    """Whether every message after ``since`` is still kept, given the room's ``current``
    position and the offset of its ``oldest`` kept message (``current.offset + 1`` if none).

    Offset 0 means "nothing seen": it is recoverable in any epoch while the room still keeps
    its first message (or has none).
    """
    if since.offset == 0:
        return oldest <= 1
    return (
        since.epoch == current.epoch
        and since.offset <= current.offset
        and since.offset >= oldest - 1
    )
