"""Lifecycle events on the FastAPI managers, handed to the application itself.

``roomcast serve`` tells a backend who is online and where with webhooks; an application that
*is* the backend wants the same events in-process.  A manager made with
``lifecycle=LifecycleSettings(...)`` owns a ``ManagerLifecycle`` that feeds the events' rules and
hands their results out three ways:

- ``events()``: an async iterator; each event is acknowledged when the loop asks for the
  next, so an event whose handling failed (the loop broke, the process died) is handed out
  again (at once in memory, after ``reclaim_after`` with Redis);
- ``on_event(callback)``: async callbacks, run one event at a time by a task of its own;
- a signed webhook per batch (``webhook_url``), by the ``Dispatcher`` of ``roomcast serve``.

Where the rules run: ``ConnectionManager`` applies them in this process (``MemoryLifecycle``,
events in bounded ``MemoryOutbox``\\ es, one per group of readers, lost with the process).
The Redis managers apply them cluster-wide (``RedisLifecycle`` under the broker's instance id,
events in a Redis Stream read by consumer group), so a user moving between instances within
``debounce`` stays online, and a survivor makes a dead instance's users depart
(``synthetic``).

What feeds them: ``connect`` (``connected``), the hub's joins, leaves and departures (the feed
is a hub observer), and how each connection ended, whoever said it first: roomcast's own
closes (4001 token expired, 4002 heartbeat, 4008 slow consumer... through the transport's
``on_close``), the client's close frame, or the application's ``websocket.close(code)``
(``roomcast.fastapi.incoming``); a connection nobody closed ends as 1006 "connection lost".

Both readers deliver at least once; callbacks that raise are retried a bounded number of
times, then the event is skipped for them (``roomcast.fastapi.lifecycle_readers``).

Every task is owned (one ``TaskSet``) and cancelled by ``stop()``; every queue is bounded
(``max_events``).  This module imports neither Redis nor aiohttp unless used.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from roomcast.connection import Connection
from roomcast.events.feed import LifecycleFeed, LifecycleStore, MemoryLifecycle, Sample
from roomcast.events.memory import MemoryOutbox
from roomcast.events.outbox import Outbox
from roomcast.events.schema import LifecycleEvent
from roomcast.fastapi.incoming import watch_closes
from roomcast.fastapi.lifecycle_readers import EventCallback, EventReaders, EventStats
from roomcast.fastapi.lifecycle_settings import LifecycleSettings
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.tasks import TaskSet

if TYPE_CHECKING:
    from roomcast.events.dispatcher import Dispatcher

__all__ = ["EventCallback", "EventStats", "LifecycleSettings", "ManagerLifecycle", "require"]

logger = logging.getLogger("roomcast.events")

_WEBHOOKS = "webhooks"
_DRAIN = 5.0
"""Seconds ``stop()`` lets the callbacks take what is left before their task is cancelled."""
_REDIS_CONNECTIONS = 16
_START_WAIT = 5.0


class _State(enum.Enum):
    IDLE = "idle"
    """Not started, or stopped (a connect starts it again)."""
    RUNNING = "running"
    STOPPING = "stopping"
    """The callbacks take what is left, claiming without waiting."""


class _Fanout:
    """Memory: passes each event to the outbox of every group of readers there is."""

    def __init__(self) -> None:
        self.outboxes: list[MemoryOutbox] = []

    def append(self, events: Iterable[LifecycleEvent]) -> None:
        batch = list(events)
        for outbox in self.outboxes:
            outbox.append(batch)


class ManagerLifecycle:
    """The lifecycle events of one manager (see the module's docstring); made by the
    managers from their ``lifecycle=`` settings, reached as ``manager.lifecycle``.

    Args:
        settings: What to do.
        hub: The manager's hub (the feed observes it).
        store: Where the rules run (``MemoryLifecycle`` or ``RedisLifecycle``).
        outbox: Makes a reader's outbox for a consumer group.
        redis: The Redis client to close at ``stop()`` (None in memory).
    """

    def __init__(
        self,
        settings: LifecycleSettings,
        hub: Hub,
        store: LifecycleStore,
        outbox: Callable[[str], Outbox],
        redis: Any = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.feed = LifecycleFeed(store, publishes=settings.publishes)
        """Hears the hub and the face; ``published(connection, room, data)`` is the app's."""
        hub.observe(self.feed)
        self._hub = hub
        self._outbox = outbox
        self._redis = redis
        self.readers = EventReaders(settings.callback_retries, settings.callback_timeout)
        """The callbacks, and what the readers counted (``readers.stats``)."""
        self._tasks = TaskSet()
        self._log = EventLog(logger)  # (the start's failures)
        self._state = _State.IDLE
        self._stops = 0  # an iterator ends when this changes
        self._runner: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._dispatcher: Dispatcher | None = None
        if settings.webhook_url is not None:
            outbox(_WEBHOOKS)  # in memory, the webhooks' outbox keeps events from now on

    @classmethod
    def in_memory(cls, settings: LifecycleSettings, hub: Hub) -> ManagerLifecycle:
        """The rules in this process (one instance, no Redis)."""
        fanout = _Fanout()
        groups: dict[str, MemoryOutbox] = {}

        def outbox(group: str) -> Outbox:
            if group not in groups:  # created when a reader asks: nobody reads, nothing kept
                groups[group] = MemoryOutbox(
                    settings.max_events, reclaim_after=settings.reclaim_after
                )
                fanout.outboxes.append(groups[group])
            return groups[group]

        store = MemoryLifecycle(fanout, debounce=settings.debounce)
        return cls(settings, hub, store, outbox)

    @classmethod
    def over_redis(
        cls, settings: LifecycleSettings, hub: Hub, redis_url: str, instance_id: str, prefix: str
    ) -> ManagerLifecycle:
        """The rules cluster-wide in Redis at ``redis_url``, as instance ``instance_id``."""
        import redis.asyncio

        from roomcast.brokers.redis_lifecycle import RedisLifecycle
        from roomcast.brokers.redis_outbox import RedisStreamOutbox

        # Bounded: readers block on a connection each (XREADGROUP); more wait for one.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            redis_url, max_connections=_REDIS_CONNECTIONS, timeout=10
        )
        client = redis.asyncio.Redis.from_pool(pool)
        store = RedisLifecycle(
            client,
            instance_id,
            prefix=prefix,
            debounce=settings.debounce,
            instance_ttl=settings.instance_ttl,
            refresh_interval=settings.refresh_interval,
            max_events=settings.max_events,
        )

        def outbox(group: str) -> Outbox:
            return RedisStreamOutbox(
                client,
                prefix=prefix,
                group=group,
                consumer=instance_id,
                reclaim_after=settings.reclaim_after,
            )

        return cls(settings, hub, store, outbox, client)

    # ---------------------------------------------------------------- what the face says

    def connected(self, connection: Connection, websocket: Any, data: Any = None) -> None:
        """``connection`` (of ``websocket``) was registered; ``data`` goes in its
        ``connect`` event.  Starts the readers on first use (a ``ConnectionManager`` has no
        ``start()``)."""
        self._begin()
        self.feed.connected(connection, data)
        watch_closes(websocket, self.closing_of(connection))

    def closing_of(self, connection: Connection) -> Callable[[int, str], None]:
        """``closing`` for ``connection``: its transport's ``on_close``."""
        return functools.partial(self.closing, connection)

    def closing(self, connection: Connection, code: int, reason: str) -> None:
        """``connection`` ends with ``code`` (the first one said wins)."""
        if self._hub.get_connection(connection.connection_id) is connection:
            self.feed.closing(connection, code, reason)

    def published(self, connection: Connection, room: str, data: Any) -> None:
        """A client published ``data`` to ``room`` (an event with ``publishes``)."""
        self.feed.published(connection, room, data)

    # ---------------------------------------------------------------- start and stop

    async def start(self) -> None:
        """Start the rules' timers (Redis: take over this instance's part), the callbacks
        and the webhooks.  Returns once the rules run, or after 5 s if Redis is away (then
        they start when it is back; meanwhile changes queue, within their bound)."""
        self._begin()
        assert self._starting is not None
        await asyncio.wait((self._starting,), timeout=_START_WAIT)

    def _begin(self) -> None:
        if self._state is not _State.IDLE:
            return
        self._state = _State.RUNNING
        if self.readers.callbacks:
            self._run_callbacks()
        self._starting = self._tasks.spawn(self._start_parts(), name="roomcast-lifecycle-start")

    async def _start_parts(self) -> None:
        if self.settings.webhook_url is not None:
            from roomcast.events.dispatcher import Dispatcher

            outbox, url = self._outbox(_WEBHOOKS), self.settings.webhook_url
            self._dispatcher = Dispatcher(outbox, url, self.settings.secrets())
            await self._dispatcher.start()
        failures = 0
        while True:
            try:
                await self.store.start()
                return
            except Exception as exc:  # Redis away: try again, the changes wait in the queue
                failures += 1
                self._log.event("lifecycle start failed", "%r", exc)
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))

    async def stop(self) -> None:
        """Emit what waits for its window (memory: now; Redis: this instance's users depart,
        reason "instance stopped"), let the callbacks take it (up to 5 s), stop every task,
        end the iterators and close Redis."""
        if self._state is not _State.RUNNING:
            return
        self._state = _State.STOPPING
        try:
            self._stops += 1
            if self._starting is not None and not self._starting.done():
                self._starting.cancel()
                await asyncio.wait((self._starting,))
            self._starting = None
            await self.store.stop()
            if self._runner is not None:
                await asyncio.wait((self._runner,), timeout=_DRAIN)
            await self._tasks.cancel_all()
            self._runner = None
            if self._dispatcher is not None:  # (kept for its samples; a start makes another)
                await self._dispatcher.stop()
            if self._redis is not None:
                await self._redis.aclose()
        finally:
            self._state = _State.IDLE

    # ---------------------------------------------------------------- readers

    def events(self) -> AsyncGenerator[LifecycleEvent, None]:
        """The events of ``settings.group``, oldest first, for ``async for``; see
        ``ConnectionManager.events``."""
        stops = self._stops
        outbox = self._outbox(self.settings.group)
        return self.readers.iterate(outbox, lambda: self._stops != stops)

    def on_event(self, callback: EventCallback) -> EventCallback:
        """Call ``callback(event)`` for every event of ``settings.group`` (see the module's
        docstring for retries); returns it, so it works as a decorator."""
        self.readers.callbacks.append(callback)
        self._outbox(self.settings.group)  # in memory: keep events from now on
        if self._state is _State.RUNNING and self._runner is None:
            self._run_callbacks()
        return callback

    def _run_callbacks(self) -> None:
        outbox = self._outbox(self.settings.group)
        loop = self.readers.run_callbacks(outbox, lambda: self._state is not _State.RUNNING)
        self._runner = self._tasks.spawn(loop, name="roomcast-on-event")

    def samples(self) -> list[Sample]:
        """Metric samples: the rules' (events emitted, waiting...), the callbacks', and the
        webhooks' (shape of ``roomcast.serve.metrics.Sample``, for the app's /metrics)."""
        out = [*self.store.samples(), *self.readers.samples()]
        if self._dispatcher is not None:
            out += self._dispatcher.samples()
        return out


def require(lifecycle: ManagerLifecycle | None) -> ManagerLifecycle:
    """``lifecycle``, or a ``RuntimeError`` that says how to get one."""
    if lifecycle is None:
        raise RuntimeError(
            "lifecycle events are off: make the manager with lifecycle=LifecycleSettings()"
        )
    return lifecycle
