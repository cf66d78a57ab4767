"""From a hub to lifecycle events: the observer both faces attach, and the stores behind it.

``LifecycleFeed`` hears the hub (joins, leaves, departures) and the face (a connection
registered with what its connect hook returned, how it closed, a client's publish), turns what
it hears into ``Change``\\ s and records them in a store:

- ``MemoryLifecycle``: ``LifecycleState`` in this process, its events appended to a
  ``MemoryOutbox`` (one instance without Redis: what is lost on a crash is the outbox's);
- ``roomcast.brokers.redis_lifecycle.RedisLifecycle``: the same rules on cluster-wide counts,
  its events in a Redis Stream.

The server's own ``$`` rooms (presence, stats) are not rooms of the application: they make no
events.  ``iterate`` reads an outbox as an async iterator, acknowledging each event once the
consumer asked for the next (at least once: an event whose consumer died is read again).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any, Protocol

from roomcast.connection import Connection
from roomcast.events.lifecycle import Change, LifecycleState, Op
from roomcast.events.outbox import Outbox
from roomcast.events.schema import LifecycleEvent
from roomcast.tasks import TaskSet

__all__ = ["EventSink", "LifecycleFeed", "LifecycleStore", "MemoryLifecycle", "iterate"]

Sample = tuple[str, str, str, float]
"""``(kind, name, documentation, value)``, as ``roomcast.serve.metrics.Sample``."""

LOST = (1006, "connection lost")
"""How a connection ended when nobody said (its socket went away)."""
_RESERVED = "$"
MAX_CLOSING = 100_000
"""Close codes kept until their connections depart: a bound, should a face say ``closing``
of a connection the hub never registered (the oldest goes)."""


class EventSink(Protocol):
    """Where a ``MemoryLifecycle`` appends its events: a ``MemoryOutbox``, or anything that
    passes them on to several (one per kind of reader)."""

    def append(self, events: Iterable[LifecycleEvent]) -> object: ...


class LifecycleStore(Protocol):
    """Where changes are counted and turned into events (memory or Redis)."""

    def record(self, change: Change) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def samples(self) -> list[Sample]: ...


class LifecycleFeed:
    """A ``HubObserver`` (register it with ``hub.observe``) that also hears the face.

    Args:
        store: Where the changes go.
        publishes: Whether a client's publish is an event too.
    """

    def __init__(self, store: LifecycleStore, *, publishes: bool = True) -> None:
        self.store = store
        self._publishes = publishes
        self._closing: dict[str, tuple[int, str]] = {}

    def connected(self, connection: Connection, data: Any = None) -> None:
        """``connection`` was registered (``data``: what its connect hook returned)."""
        self.store.record(
            Change(Op.CONNECT, connection.connection_id, connection.user_id, data=data)
        )

    def closing(self, connection: Connection, code: int, reason: str = "") -> None:
        """``connection`` ends with ``code`` (said before the hub forgets it)."""
        if connection.connection_id not in self._closing:
            if len(self._closing) >= MAX_CLOSING:  # (one said of a connection never forgotten)
                del self._closing[next(iter(self._closing))]
            # A plain int: a CloseCode would reach Redis as its repr, not its number.
            self._closing[connection.connection_id] = (int(code), reason)

    def published(self, connection: Connection, room: str, data: Any) -> None:
        """A client published ``data`` to ``room``."""
        if self._publishes and not room.startswith(_RESERVED):
            change = Change(
                Op.PUBLISH, connection.connection_id, connection.user_id, room, data=data
            )
            self.store.record(change)

    # HubObserver

    def joined(self, connection: Connection, room: str) -> None:
        if not room.startswith(_RESERVED):
            self.store.record(Change(Op.JOIN, connection.connection_id, connection.user_id, room))

    def left(self, connection: Connection, room: str) -> None:
        if not room.startswith(_RESERVED):
            self.store.record(Change(Op.LEAVE, connection.connection_id, connection.user_id, room))

    def departed(self, connection: Connection) -> None:
        connection_id, user = connection.connection_id, connection.user_id
        for room in connection.rooms:
            if not room.startswith(_RESERVED):
                self.store.record(Change(Op.LEAVE, connection_id, user, room))
        code, reason = self._closing.pop(connection_id, LOST)
        self.store.record(Change(Op.DISCONNECT, connection_id, user, reason=reason, code=code))


class MemoryLifecycle:
    """The lifecycle rules in this process, into a ``MemoryOutbox``.

    Args:
        outbox: Where the events go (a ``MemoryOutbox``, or any ``EventSink``).
        debounce: See ``LifecycleState``.
        instance: This process's id in the events (default: random).
        clock: Unix seconds (a test passes its own).
    """

    def __init__(
        self,
        outbox: EventSink,
        *,
        debounce: float = 5.0,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.state = LifecycleState(instance or os.urandom(6).hex(), debounce)
        self._clock = clock
        self._tasks = TaskSet()
        self._wake = asyncio.Event()
        self.events = 0

    def record(self, change: Change) -> None:
        self._emit(self.state.apply(change, self._clock()))
        if self.state.waiting:
            self._wake.set()

    async def start(self) -> None:
        self._tasks.spawn(self._due_loop(), name="roomcast-lifecycle-due")

    async def stop(self) -> None:
        """Stop the timer; what waits for its window is emitted now (the process goes: its
        clients will not come back to it)."""
        await self._tasks.cancel_all()
        self._emit(self.state.due(self._clock(), all_of_them=True))

    def samples(self) -> list[Sample]:
        return [
            ("counter", "roomcast_lifecycle_events", "Lifecycle events emitted", self.events),
            (
                "gauge",
                "roomcast_lifecycle_waiting",
                "Departures waiting for the debounce window",
                self.state.waiting,
            ),
        ]

    def _emit(self, events: list[LifecycleEvent]) -> None:
        if events:
            self.events += len(events)
            self.outbox.append(events)

    async def _due_loop(self) -> None:
        while True:
            due = self.state.next_due()
            self._wake.clear()
            if due is None:
                await self._wake.wait()
                continue
            delay = due - self._clock()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            self._emit(self.state.due(self._clock()))


async def iterate(
    outbox: Outbox, *, batch: int = 100, wait: float = 5.0
) -> AsyncGenerator[LifecycleEvent, None]:
    """The outbox's events, oldest first, for ``async for``: each is acknowledged when the
    loop asks for the next one, so an event whose handling failed (the loop broke, the process
    died) is handed out again later.  Close it when done (``contextlib.aclosing``): a loop
    left with ``break`` acknowledges what came before only once the generator is closed."""
    done: list[str] = []
    try:
        while True:
            if done:
                await outbox.ack(done)
                done = []
            for entry_id, event in await outbox.claim(batch, wait):
                yield event
                done.append(entry_id)
    finally:
        if done:
            await asyncio.shield(outbox.ack(done))
