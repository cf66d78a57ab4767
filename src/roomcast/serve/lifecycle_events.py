"""Lifecycle events of ``roomcast serve``: the store, the outbox and the webhook dispatcher,
wired from the ``lifecycle events`` options, and what the server tells them.

Without ``--redis-url`` the rules run in this process (``MemoryLifecycle``) and the events
wait in a ``MemoryOutbox`` (lost if the process dies: ``docs/events.md``); with it, the
cluster-wide ``RedisLifecycle`` writes them to the Redis stream and a ``RedisStreamOutbox``
reads them back in the group ``webhooks`` (every instance's dispatcher reads the same group,
so each event is delivered by one of them, again by another if that one dies before the
receiver acknowledged it).

The server reports three things beyond what the hub's observer hears: a connection was
attached (``connected``, with what the connect hook answered, if a hook did), how it ends
(``closing``: the client's close frame, a close the server sends, a heartbeat timeout; a socket
that just went is 1006), and a client's publish once accepted (``published``, which the
session calls).  Close codes are learnt by a transport class of its own (``transport``), used
only while events are on: with events off the server's transports, hub and session run
exactly as without this module, and each method here returns at once.

Shutdown (``stop``), after the server closed its clients: the store stops (the memory store
emits what waited for its window; the Redis store writes what is queued and retires this
instance, whose remaining subjects depart after the window), then the dispatcher, given up to
``--webhook-timeout`` to deliver what the memory outbox still holds, since nothing else will.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

from picows import WSFrame, WSMsgType, WSTransport

from roomcast.connection import Connection
from roomcast.events.feed import LifecycleFeed, LifecycleStore, MemoryLifecycle
from roomcast.events.memory import MemoryOutbox
from roomcast.events.outbox import Outbox
from roomcast.events.stats import figures
from roomcast.figures import Figure
from roomcast.hub import Hub
from roomcast.serve.config import ServerConfig, lifecycle_enabled, webhook_secrets
from roomcast.serve.native import NativeTransport
from roomcast.tasks import TaskSet

__all__ = [
    "CONNECT_DATA",
    "INSTANCE_TTL_VARIABLE",
    "LifecycleEvents",
    "client_close",
    "reporting_transport",
]

CONNECT_DATA = "roomcast.connect_data"
"""The key of ``Connection.metadata`` under which the connect hook's answer waits for the
``connect`` event."""

INSTANCE_TTL_VARIABLE = "ROOMCAST_TEST_INSTANCE_TTL"
"""Seconds a Redis instance counts as alive without a refresh (default 15).  Not an option: a
knob for drills, which kill a process and should not wait 15 s for its purge."""

BACKLOG_REFRESH = 2.0
"""Seconds between reads of the Redis stream's backlog for ``/metrics`` (two XINFO calls)."""

GROUP = "webhooks"
"""The consumer group of the instances' dispatchers in the lifecycle stream."""


class LifecycleEvents:
    """The lifecycle events of one server, or nothing when they are off.

    Args:
        config: The options (``lifecycle_enabled`` says whether events are on).
        hub: The server's hub: the feed observes it, and a Redis hub lends its broker's
            instance id, so that an event's ``instance`` names the same process as its
            messages do.
        instance_id: The server's id, for a hub without a broker.
    """

    def __init__(self, config: ServerConfig, hub: Hub, instance_id: str) -> None:
        self.feed: LifecycleFeed | None = None
        self.transport: type[NativeTransport] = NativeTransport
        """The class of the server's client transports (one that reports closes while
        events are on)."""
        self.published: Callable[[Connection, str, Any], None] | None = None
        """What the session calls with a client's publish once it is accepted (None: off)."""
        self._config = config
        self._redis: Any = None
        self._store: LifecycleStore | None = None
        self._outbox: Outbox | None = None
        self._dispatcher: Any = None  # a Dispatcher (imported only when a URL is given)
        self._tasks = TaskSet()
        if not lifecycle_enabled(config):
            return
        broker_id = getattr(hub.broker, "instance_id", None)
        instance = broker_id.hex() if isinstance(broker_id, bytes) else instance_id
        if config.redis_url is None:
            memory = MemoryOutbox(config.events_max)
            self._outbox = memory
            debounce = config.events_debounce
            self._store = MemoryLifecycle(memory, debounce=debounce, instance=instance)
        else:
            self._store = self._redis_store(config, instance)
        if config.webhook_url is not None:
            from roomcast.events.dispatcher import Dispatcher

            assert self._outbox is not None
            self._dispatcher = Dispatcher(
                self._outbox,
                config.webhook_url,
                webhook_secrets(config),
                timeout=config.webhook_timeout,
                grace=config.webhook_timeout,
            )
        self.feed = LifecycleFeed(self._store)
        hub.observe(self.feed)
        self.published = self.feed.published
        self.transport = reporting_transport(self.feed)

    def _redis_store(self, config: ServerConfig, instance: str) -> LifecycleStore:
        import redis.asyncio

        from roomcast.brokers.redis_lifecycle import RedisLifecycle
        from roomcast.brokers.redis_outbox import RedisStreamOutbox

        assert config.redis_url is not None
        # Its own client: a claim blocks one connection for up to 5 s (XREADGROUP BLOCK).
        self._redis = redis.asyncio.Redis.from_url(
            config.redis_url, max_connections=8, socket_timeout=10.0
        )
        ttl = float(os.environ.get(INSTANCE_TTL_VARIABLE) or 15.0)
        if config.webhook_url is not None:
            self._outbox = RedisStreamOutbox(
                self._redis,
                prefix=config.channel_prefix,
                group=GROUP,
                consumer=instance,
                # A dead reader's batch goes to another once the dead instance is purged too,
                # and never while a live one may still be retrying it within its timeout.
                reclaim_after=max(ttl, 2 * config.webhook_timeout),
            )
        return RedisLifecycle(
            self._redis,
            instance,
            prefix=config.channel_prefix,
            debounce=config.events_debounce,
            instance_ttl=ttl,
            refresh_interval=min(0.5, ttl / 4),
            max_events=config.events_max,
        )

    # ------------------------------------------------------------------ what the server says

    def connected(self, connection: Connection) -> None:
        """``connection`` was attached (before it joins any room)."""
        if self.feed is not None:
            self.feed.connected(connection, connection.metadata.get(CONNECT_DATA))

    def closing(self, connection: Connection, code: int, reason: str) -> None:
        """``connection`` ends with ``code`` (the first cause said wins)."""
        if self.feed is not None:  # (a plain int: a CloseCode's repr is not a number)
            self.feed.closing(connection, int(code), reason)

    # ------------------------------------------------------------------ start, stop, figures

    async def start(self) -> None:
        if self._store is not None:
            await self._store.start()
        if self._dispatcher is not None:
            await self._dispatcher.start()
            refresh = getattr(self._outbox, "refresh", None)  # (the Redis stream's figures)
            if refresh is not None:
                self._tasks.spawn(_every(BACKLOG_REFRESH, refresh), name="roomcast-events-backlog")

    async def stop(self) -> None:
        """Stop recording, then delivering (see the module's docstring for the order)."""
        await self._tasks.cancel_all()
        if self._store is not None:
            await self._store.stop()  # (RedisLifecycle: retire=True, the clean stop's)
        if self._dispatcher is not None:
            if isinstance(self._outbox, MemoryOutbox):
                await self._outbox.drained(self._config.webhook_timeout)
            await self._dispatcher.stop()
        if self._redis is not None:
            await self._redis.aclose()

    def figures(self) -> list[Figure]:
        """The store's, the outbox's and the dispatcher's metrics, read now."""
        out: list[Figure] = []
        if self._store is not None:
            out += self._store.samples()
        if self._dispatcher is not None and self._outbox is not None:
            out += figures(self._dispatcher.stats, self._dispatcher.latency, self._outbox)
        return out


async def _every(interval: float, call: Callable[[], Awaitable[None]]) -> None:
    """Call ``call`` every ``interval`` seconds until cancelled; a failure waits for the next
    turn (Redis away: the claims say so in the logs already)."""
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(Exception):
            await call()


def reporting_transport(feed: LifecycleFeed) -> type[NativeTransport]:
    """A ``NativeTransport`` class that tells ``feed`` the close code of its connection:
    the one the server closes it with, or the client's in its close frame."""

    class ReportingTransport(NativeTransport):
        __slots__ = ()

        def close(self, code: int, reason: str = "") -> None:
            if not self._closing and self._ws is not None:
                feed.closing(self.connection, int(code), reason)
            super().close(code, reason)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is WSMsgType.CLOSE and not self._closing:
                feed.closing(self.connection, *client_close(frame.get_payload_as_bytes()))
            super().on_ws_frame(transport, frame)

    return ReportingTransport


def client_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a client's close frame (1005, "closed by the client": it gave
    none)."""
    if len(payload) < 2:
        return 1005, "closed by the client"
    reason = payload[2:125].decode(errors="replace")
    return int.from_bytes(payload[:2], "big"), reason or "closed by the client"
