"""Room history kept in this process: what one hub without a broker remembers.

Each room with history keeps its newest messages (at most ``size``, none older than ``ttl``)
with its epoch and latest offset.  The whole store is bounded in bytes: when a publish would
go over ``max_bytes``, the rooms published to least recently lose their history first (their
next message starts a new epoch, so their clients learn that they cannot recover).  A room
silent for its ``ttl`` forgets its history the same way.

Pure: the clock is injected; nothing here awaits.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from roomcast.history.positions import (
    EMPTY,
    HistoryLimits,
    HistoryRule,
    Page,
    Position,
    new_epoch,
    recoverable,
)

__all__ = ["MemoryHistory"]

_ROOM_COST = 200
"""Bytes charged per room on top of its messages (its state and the store's tables)."""
_ENTRY_COST = 80
"""Bytes charged per kept message on top of its payload."""


class _Room:
    __slots__ = ("entries", "epoch", "last_publish", "limits", "size_bytes", "top")

    def __init__(self, limits: HistoryLimits, epoch: str, now: float) -> None:
        self.limits = limits
        self.epoch = epoch
        self.top = 0
        # (offset, time, payload), oldest first; offsets are consecutive.
        self.entries: collections.deque[tuple[int, float, bytes]] = collections.deque()
        self.size_bytes = _ROOM_COST
        self.last_publish = now


class MemoryHistory:
    """The history of every room of one process.

    Args:
        rule: Which rooms keep history, and how much.
        max_bytes: Most bytes of history kept at once (payloads plus a fixed cost per message
            and per room).
        clock: Seconds, monotonic (injected for tests).
        epochs: Makes a new epoch (injected for tests).
    """

    def __init__(
        self,
        rule: HistoryRule,
        *,
        max_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
        epochs: Callable[[], str] = new_epoch,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.rule = rule
        self._max_bytes = max_bytes
        self._clock = clock
        self._epochs = epochs
        # Least recently published first: eviction and expiry take from the front.
        self._rooms: collections.OrderedDict[str, _Room] = collections.OrderedDict()
        self.size_bytes = 0
        self.evicted_rooms = 0
        """Rooms whose history was dropped to stay within ``max_bytes``."""

    def __len__(self) -> int:
        """Rooms with a history kept."""
        return len(self._rooms)

    def append(
        self, room: str, payload: bytes, limits: HistoryLimits | None = None
    ) -> Position | None:
        """Store one message published to ``room``; its position, or None if the room keeps
        no history.  ``limits``, when given, stand in for the rule's (a shared bus takes
        each publisher's word for them)."""
        now = self._clock()
        self._expire(now)
        state = self._room(room, now, limits)
        if state is None:
            return None
        state.top += 1
        state.last_publish = now
        self._rooms.move_to_end(room)
        cost = len(payload) + _ENTRY_COST
        state.entries.append((state.top, now, payload))
        state.size_bytes += cost
        self.size_bytes += cost
        while len(state.entries) > state.limits.size:
            self._drop_oldest(state)
        self._prune(state, now)
        self._evict(keep=room)
        return Position(state.epoch, state.top)

    def position(self, room: str, limits: HistoryLimits | None = None) -> Position | None:
        """The room's latest position (``EMPTY`` before its first message), or None if it
        keeps no history."""
        state = self._room(room, self._clock(), limits, create=False)
        if state is None:
            return EMPTY if (limits or self.rule(room)) is not None else None
        return Position(state.epoch, state.top)

    def read(
        self,
        room: str,
        since: Position | None,
        limit: int,
        limits: HistoryLimits | None = None,
    ) -> Page | None:
        """Up to ``limit`` messages after ``since`` (or the latest ``limit`` without it);
        None if the room keeps no history."""
        now = self._clock()
        state = self._room(room, now, limits, create=False)
        if state is None:
            if (limits or self.rule(room)) is None:
                return None
            recovered = since is None or since.offset == 0
            return Page(EMPTY, [], 1, recovered)
        self._prune(state, now)
        current = Position(state.epoch, state.top)
        entries = state.entries
        oldest = entries[0][0] if entries else state.top + 1
        if since is None:
            count = min(limit, len(entries))
            start = len(entries) - count
            first = state.top - count + 1
        elif not recoverable(since, current, oldest):
            return Page(current, [], current.offset + 1, recovered=False)
        else:
            start = since.offset + 1 - oldest if entries else 0
            count = min(limit, len(entries) - start)
            first = since.offset + 1
        payloads = [entries[index][2] for index in range(start, start + count)]
        return Page(current, payloads, first, recovered=True)

    # ---------------------------------------------------------------- bookkeeping

    def _room(
        self, room: str, now: float, limits: HistoryLimits | None, create: bool = True
    ) -> _Room | None:
        state = self._rooms.get(room)
        if state is not None:
            if now - state.last_publish < state.limits.ttl:
                if limits is not None:
                    state.limits = limits
                return state
            self._forget(room, state)  # silent for its ttl: its history is over
        if not create:
            return None
        if limits is None:
            limits = self.rule(room)
        if limits is None:
            return None
        state = _Room(limits, self._epochs(), now)
        self._rooms[room] = state
        self.size_bytes += state.size_bytes
        self._evict(keep=room)
        return state

    def _expire(self, now: float) -> None:
        """Forget rooms silent for their ttl, from the least recently published on (the
        others are checked when next used)."""
        while self._rooms:
            room, state = next(iter(self._rooms.items()))
            if now - state.last_publish < state.limits.ttl:
                return
            self._forget(room, state)

    def _prune(self, state: _Room, now: float) -> None:
        horizon = now - state.limits.ttl
        while state.entries and state.entries[0][1] <= horizon:
            self._drop_oldest(state)

    def _drop_oldest(self, state: _Room) -> None:
        _, _, payload = state.entries.popleft()
        cost = len(payload) + _ENTRY_COST
        state.size_bytes -= cost
        self.size_bytes -= cost

    def _evict(self, keep: str) -> None:
        while self.size_bytes > self._max_bytes and len(self._rooms) > 1:
            room, state = next(iter(self._rooms.items()))
            if room == keep:
                self._rooms.move_to_end(room)
                continue
            self._forget(room, state)
            self.evicted_rooms += 1
        if self.size_bytes > self._max_bytes:  # one room alone over the budget
            kept = self._rooms.get(keep)
            while kept is not None and kept.entries and self.size_bytes > self._max_bytes:
                self._drop_oldest(kept)

    def _forget(self, room: str, state: _Room) -> None:
        del self._rooms[room]
        self.size_bytes -= state.size_bytes
