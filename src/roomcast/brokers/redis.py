"""The Redis broker behind a distributed hub (``RedisPubSub`` puts the dict-handler API on it).

Per Redis node, one connection subscribes (it reads only messages and the replies to its own
SUBSCRIBE/UNSUBSCRIBE/PING) and one publishes, pipelined from one bounded queue, so an
instance's messages reach Redis in order.  redis-py's own retries are off (redis-py 8.1
silently resubscribes after a Redis restart, hiding that messages were lost); one supervisor
task owns the connections: connect, subscribe to the interest set, confirm with a PING, report
ready; on any error, drop everything, report not ready, fail what waits to be published
(counted), back off with jitter, start over.  So the subscriber cannot die silently
(python-socketio #1581) or hang on a half-open socket (broadcaster #144).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable, Collection
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from roomcast.brokers.base import (
    BrokerStats,
    Channels,
    EnvelopeHandler,
    Inbound,
    Outbound,
)
from roomcast.brokers.envelope import Target
from roomcast.brokers.redis_history import HistoryCommands
from roomcast.brokers.redis_link import (
    TRANSITIONS,
    Link,
    Phase,
    Topology,
    describe,
    discover,
    encode_channel,
)
from roomcast.errors import BrokerUnavailable
from roomcast.logbudget import FailureTally
from roomcast.tasks import TaskSet

__all__ = ["RedisBroker"]

logger = logging.getLogger("roomcast.redis")


class RedisBroker(HistoryCommands):
    """The Redis broker of a multi-instance hub (``RedisPubSub`` adds the dict-handler API).

    Channels (``prefix`` "ws" by default): ``ws:broadcast``, ``ws:room:{room_id}``,
    ``ws:user:{user_id}``, ``ws:connection:{conn_id}``.  Messages travel as roomcast
    envelopes (``roomcast.brokers.envelope``), numbered so that receivers count what they missed.

    Args:
        redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL (credentials and db in it).
        prefix: Channel prefix, so several hubs can share one Redis.
        publish_queue_limit: Most envelopes waiting to be written to Redis; beyond it a
            publish fails (counted) instead of growing memory.
        connect_timeout: Seconds allowed for connecting, and for ``initialize`` to wait.
        socket_timeout: Seconds allowed for Redis to answer a pipeline of publishes.
        health_check_interval: Seconds between PINGs on the subscribed connection; no answer
            by the next one means the connection is dead.
        reconnect_delay: First wait after losing Redis; doubles per failed attempt...
        reconnect_max_delay: ...up to this (each wait is jittered down to half of it).
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        *,
        prefix: str = "ws",
        publish_queue_limit: int = 10_000,
        connect_timeout: float = 5.0,
        socket_timeout: float = 5.0,
        health_check_interval: float = 2.0,
        reconnect_delay: float = 0.05,
        reconnect_max_delay: float = 1.0,
    ) -> None:
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": None,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            "client_name": "roomcast",
            "protocol": 2,  # pub/sub replies as plain arrays (a URL may still ask for RESP3)
        }
        if not redis_url.startswith("unix:"):
            options["socket_keepalive"] = True  # TCP only
        self._pool = ConnectionPool.from_url(redis_url, **options)
        self._channels = Channels(prefix)
        self._outbound = Outbound(self._channels)
        self._stats = BrokerStats()
        self.inbound = Inbound(self._channels, self._stats, self._outbound.origin)
        self._publish_queue_limit = publish_queue_limit
        self._connect_timeout = connect_timeout
        self._socket_timeout = socket_timeout
        self._health_check_interval = health_check_interval
        self._reconnect_delay = reconnect_delay
        self._reconnect_max_delay = reconnect_max_delay
        # One Link per Redis node while connected; the topology says which node has a channel.
        self._topology: Topology | None = None
        self._links: list[Link] = []
        # Interest changes not yet sent to Redis: channel -> subscribe (True) or not.
        self._changes: dict[str, bool] = {}
        self._interest_changed = asyncio.Event()
        self._confirm_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.phase = Phase.IDLE
        self._ready_event = asyncio.Event()
        self._lost_at: float | None = None
        self._publish_failures = FailureTally(logger, "message(s) could not be published")
        self._tasks = TaskSet()
        self._resubscribed: list[Callable[[], None]] = []

    @property
    def instance_id(self) -> bytes:  # (16 random bytes naming this instance in envelopes)
        return self._outbound.origin

    @property
    def channels(self) -> Channels:  # (the names, with this instance's prefix)
        return self._channels

    @property
    def ready(self) -> bool:
        """Connected, and subscribed to every channel of interest (confirmed by Redis)."""
        return self.phase is Phase.READY

    @property
    def settled(self) -> bool:
        """Ready, and Redis confirmed a subscription to exactly the interest set (no change
        on its way): what a test waits for before publishing from another instance."""
        return (
            self.phase is Phase.READY
            and not self._changes
            and all(
                not link.unanswered and link.confirmed == link.requested for link in self._links
            )
        )

    @property
    def subscriptions(self) -> int:  # (channels Redis confirmed)
        return sum(len(link.confirmed) for link in self._links)

    @property
    def shards(self) -> int:  # (Redis nodes in use: the masters of a cluster; 0 if down)
        return len(self._links)

    @property
    def connected(self) -> bool:  # (both connections up; subscriptions may be on their way)
        return self.phase is Phase.SUBSCRIBING or self.phase is Phase.READY

    @property
    def stats(self) -> BrokerStats:  # (published, failed, received, missed, reconnects...)
        return self._stats

    @property
    def queued(self) -> int:  # (envelopes waiting to be written to Redis)
        return sum(link.queued for link in self._links)

    # ---------------------------------------------------------------- lifecycle

    async def initialize(self) -> None:
        """Start the connection supervisor and wait (up to ``connect_timeout``) until ready.

        If Redis cannot be reached in that time this logs a warning and returns anyway: the
        supervisor keeps trying, ``ready`` says when it succeeded, and until then publishes
        fail fast (counted) while local delivery goes on.
        """
        if self.phase is Phase.CLOSED:
            raise RuntimeError("this Redis broker is closed")
        if self.phase is Phase.IDLE:
            self._enter(Phase.CONNECTING)
            self._tasks.spawn(self._supervise())
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._ready_event.wait()
        except TimeoutError:
            logger.warning("Redis not reachable yet; serving locally and retrying")

    async def close(self) -> None:
        """Disconnect, stop every task, and fail whatever was still waiting to be published."""
        self._enter(Phase.CLOSED)
        await self._tasks.cancel_all()
        self._fail_pending("the Redis broker is closed")
        self._links = []
        await self._pool.disconnect()

    def listen(self, channel: str, handler: EnvelopeHandler) -> None:
        """Call ``handler`` (synchronously, in the reader) for every envelope on ``channel``."""
        if self.inbound.add(channel, handler):
            self._changes[channel] = True
            self._interest_changed.set()

    def unlisten(self, channel: str, handler: EnvelopeHandler) -> None:
        """Stop calling ``handler``; Redis is unsubscribed after the last handler goes."""
        if self.inbound.remove(channel, handler):
            self._changes[channel] = False
            self._interest_changed.set()

    # ---------------------------------------------------------------- publishing

    def publish(
        self,
        target: Target,
        target_id: str,
        payload: bytes,
        *,
        binary: bool = False,
        close: bool = False,
        exclude: Collection[str] = (),
    ) -> None:
        """Queue an envelope for Redis without waiting (the distributed manager's path).

        Failures (Redis down, queue full) are counted in ``stats.publish_failures``, and the
        receivers count the sequence number that never reaches them.
        """
        channel, data = self._outbound.seal(
            target, target_id, payload, binary=binary, close=close, exclude=exclude
        )
        self._enqueue(channel, data, None)

    def _enqueue(
        self,
        channel: str,
        data: bytes,
        result: asyncio.Future[Any] | None,
        command: Callable[[bytes, bool], tuple[Any, ...]] | None = None,
    ) -> None:
        """Queue a publish (or what ``command`` makes of the channel) on its node's link."""
        topology = self._topology
        if not self.connected or topology is None:
            self._failed(result, "Redis is not connected")
            return
        name = encode_channel(channel)
        link = self._links[topology.node_of(name)]
        if link.queued >= self._publish_queue_limit:
            self._failed(result, "publish queue is full")
        else:
            special = None if command is None else command(name, topology.dialect.sharded)
            link.enqueue((name, data, result, special))

    def _failed(self, result: asyncio.Future[Any] | None, why: str) -> None:
        self._stats.publish_failures += 1
        self._publish_failures.add(why)
        if result is None:
            return
        if not result.done():
            result.set_exception(BrokerUnavailable(why))

    def _fail_pending(self, why: str) -> None:
        pending = [item for link in self._links for item in link.take_pending()]
        for _, _, result, _ in pending:
            self._failed(result, why)

    # ---------------------------------------------------------------- the supervisor

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            error = "session ended"
            try:
                await self._session()
            except Exception as exc:  # whatever broke the session, start a new one
                error = describe(exc)
            if self.phase is Phase.CLOSED:
                return
            was_ready = self.phase is Phase.READY
            self._enter(Phase.CONNECTING)
            self._fail_pending("Redis connection lost")
            self._links = []
            if was_ready:
                self._lost_at = loop.time()
                attempt = 0
                logger.warning("Redis connection lost (%s); reconnecting", error)
            elif attempt == 0:
                logger.warning("cannot reach Redis (%s); retrying", error)
            else:
                logger.debug("Redis still unreachable (%s)", error)
            delay = min(self._reconnect_max_delay, self._reconnect_delay * 2**attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _session(self) -> None:
        """One connected period: returns only by raising."""
        probe = self._new_connection()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await probe.connect()  # type: ignore[no-untyped-call]
                # (A unix:// connection has no host or port; it is never a cluster node.)
                topology = await discover(
                    probe, getattr(probe, "host", ""), getattr(probe, "port", 0)
                )
        finally:
            await probe.disconnect(nowait=True)
        links = [
            Link(
                self,
                # A plain Redis is reached exactly as the URL says; cluster nodes by address.
                functools.partial(self._new_connection, *node)
                if topology.slots is not None
                else self._new_connection,
                topology.dialect,
                health_check_interval=self._health_check_interval,
                socket_timeout=self._socket_timeout,
            )
            for node in topology.nodes
        ]
        self._topology, self._links = topology, links
        try:
            async with asyncio.timeout(self._connect_timeout):
                for link in links:
                    await link.connect()
            self._enter(Phase.SUBSCRIBING)
            async with asyncio.TaskGroup() as group:
                for link in links:
                    link.start(group)
                group.create_task(self._reconcile(topology, links))
        finally:
            for link in links:
                await link.disconnect()

    def _new_connection(
        self, host: str | None = None, port: int | None = None
    ) -> AbstractConnection:
        # A connection of our own, outside the pool's accounting: the pool only parses the
        # URL (and its credentials, TLS and db apply to every node).
        options = dict(self._pool.connection_kwargs)
        if host is not None:
            options.update(host=host, port=port)
        connection: AbstractConnection = self._pool.connection_class(**options)
        return connection

    def _enter(self, phase: Phase) -> None:
        """The one place where the phase changes (``TRANSITIONS`` says from where to where)."""
        if phase not in TRANSITIONS[self.phase]:
            raise RuntimeError(f"Redis broker: no way from {self.phase.value} to {phase.value}")
        self.phase = phase
        if phase is Phase.READY:
            self._ready_event.set()
        else:
            self._ready_event.clear()

    async def _reconcile(self, topology: Topology, links: list[Link]) -> None:
        """Subscribe every link to its share of the interest set, then follow the changes."""
        self._changes.clear()
        everything: list[list[str]] = [[] for _ in links]
        for channel in self.inbound.subscribed():
            everything[topology.node_of(encode_channel(channel))].append(channel)
        for link, channels in zip(links, everything, strict=True):
            await link.change(channels, ())
            await link.confirm_ready()
        while True:
            await self._interest_changed.wait()
            self._interest_changed.clear()
            changes, self._changes = self._changes, {}
            added: list[list[str]] = [[] for _ in links]
            removed: list[list[str]] = [[] for _ in links]
            for channel, wanted in changes.items():
                index = topology.node_of(encode_channel(channel))
                if wanted != (channel in links[index].requested):
                    (added if wanted else removed)[index].append(channel)
            for link, more, fewer in zip(links, added, removed, strict=True):
                if more or fewer:
                    await link.change(more, fewer)

    # LinkOwner

    def delivered(self, channel: str, data: bytes) -> None:
        self.inbound.deliver(channel, data)

    def confirmed(self, channel: str) -> None:
        for waiter in self._confirm_waiters.pop(channel, ()):
            if not waiter.done():
                waiter.set_result(None)

    def link_ready(self) -> None:
        if self.phase is not Phase.SUBSCRIBING or not all(link.ready for link in self._links):
            return
        self._enter(Phase.READY)
        self._publish_failures.flush()
        if self._lost_at is not None:
            self._stats.reconnects += 1
            logger.warning(
                "Redis back after %.1f s; subscribed to %d channel(s) on %d node(s)",
                asyncio.get_running_loop().time() - self._lost_at,
                sum(len(link.requested) for link in self._links),
                len(self._links),
            )
            self._lost_at = None
            for callback in self._resubscribed:
                callback()

    def published(self, count: int) -> None:
        self._stats.published += count
