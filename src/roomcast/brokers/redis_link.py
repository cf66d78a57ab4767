"""The connections to one Redis node, and how channels map to nodes.

A ``Link`` is what ``RedisBroker`` keeps per Redis node during one connected period: a
subscribed connection (its reader and a PING watchdog) and a publishing connection (a writer
draining a bounded queue as pipelines).  A plain Redis is one node speaking
SUBSCRIBE/PUBLISH.  A Redis Cluster is one node per master speaking *sharded* pub/sub
(SSUBSCRIBE/SPUBLISH, Redis >= 7): each channel lives on the shard that owns its hash slot, so
pub/sub traffic spreads over the shards instead of being copied to every node as classic
PUBLISH is in a cluster.

Any surprise (an error reply such as MOVED, a slot migrating away, a silent node) raises out of
the link's tasks; ``RedisBroker`` then drops every link, rediscovers the topology, and
subscribes again.  The broker's own life (``Phase``) is a table here too, beside its links'.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError

from roomcast.brokers.redis_history import SCRIPTS
from roomcast.errors import BrokerUnavailable

__all__ = [
    "PLAIN",
    "SHARDED",
    "TRANSITIONS",
    "Dialect",
    "Link",
    "LinkOwner",
    "Pending",
    "Phase",
    "Topology",
    "discover",
]

Pending = tuple[bytes, bytes, "asyncio.Future[Any] | None", "tuple[Any, ...] | None"]
"""A publish waiting for Redis: channel, envelope, who waits for the reply (the receiver
count), and the command to send instead of a plain publish (a history script; for a read,
the envelope is empty)."""

_PING = b"PING"
_BATCH = 1000
"""Channels per SUBSCRIBE command, and publishes per pipeline (x0.5)."""


class Phase(enum.Enum):
    """Where a Redis broker is in its life; every change goes through ``RedisBroker._enter``.

    ::

        IDLE --initialize--> CONNECTING --links up--> SUBSCRIBING --all confirmed--> READY
                                 ^                         |                           |
                                 +----- lost, retry -------+---------------------------+
        any --close--> CLOSED
    """

    IDLE = "idle"
    """Made, not started."""
    CONNECTING = "connecting"
    """Starting a session, or waiting to retry: publishes fail fast."""
    SUBSCRIBING = "subscribing"
    """Connected; publishes go out; subscriptions not all confirmed yet."""
    READY = "ready"
    """Connected and subscribed to the whole interest set."""
    CLOSED = "closed"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.CONNECTING, Phase.CLOSED}),
    Phase.CONNECTING: frozenset({Phase.CONNECTING, Phase.SUBSCRIBING, Phase.CLOSED}),
    Phase.SUBSCRIBING: frozenset({Phase.CONNECTING, Phase.READY, Phase.CLOSED}),
    Phase.READY: frozenset({Phase.CONNECTING, Phase.CLOSED}),
    Phase.CLOSED: frozenset({Phase.CLOSED}),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Dialect:
    """The pub/sub commands and reply kinds of one mode."""

    subscribe: bytes
    unsubscribe: bytes
    publish: bytes
    message: bytes
    subscribed: bytes
    unsubscribed: bytes
    sharded: bool


PLAIN = Dialect(
    b"SUBSCRIBE", b"UNSUBSCRIBE", b"PUBLISH", b"message", b"subscribe", b"unsubscribe", False
)
SHARDED = Dialect(
    b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"SPUBLISH", b"smessage", b"ssubscribe", b"sunsubscribe", True
)


class LinkOwner(Protocol):
    """What a link reports to (``RedisPubSub``)."""

    def delivered(self, channel: str, data: bytes) -> None:
        """A message arrived on a subscribed channel."""

    def confirmed(self, channel: str) -> None:
        """Redis confirmed a subscription."""

    def link_ready(self) -> None:
        """This link's first subscriptions are all in place."""

    def published(self, count: int) -> None:
        """``count`` envelopes were accepted by Redis."""


@dataclasses.dataclass(frozen=True, slots=True)
class Topology:
    """The nodes to link to and which one serves each channel."""

    nodes: tuple[tuple[str, int], ...]
    dialect: Dialect
    slots: Sequence[int] | None = None
    """Node index per hash slot (cluster); None: every channel on node 0."""

    def node_of(self, channel: bytes) -> int:
        if self.slots is None:
            return 0
        return self.slots[key_slot(channel)]


async def discover(probe: AbstractConnection, host: str, port: int) -> Topology:
    """Ask the node at the URL whether it is part of a cluster, and if so, who owns what."""
    await probe.send_command(b"INFO", b"cluster", check_health=False)
    info = await probe.read_response(timeout=math.inf)
    text = info.decode() if isinstance(info, bytes) else str(info)
    if "cluster_enabled:1" not in text:
        return Topology(((host, port),), PLAIN)
    await probe.send_command(b"CLUSTER", b"SLOTS", check_health=False)
    ranges: list[Any] = await probe.read_response(timeout=math.inf)
    nodes: list[tuple[str, int]] = []
    slots = [-1] * REDIS_CLUSTER_HASH_SLOTS
    for start, end, master, *_ in ranges:
        node_host = master[0].decode() if master[0] else host
        node = (node_host, int(master[1]))
        if node not in nodes:
            nodes.append(node)
        index = nodes.index(node)
        for slot in range(int(start), int(end) + 1):
            slots[slot] = index
    if not nodes or -1 in slots:
        raise BrokerUnavailable("the cluster does not cover every hash slot")
    return Topology(tuple(nodes), SHARDED, slots)


class Link:
    """One node's two connections and the state of this connected period.

    Args:
        owner: Receives messages, confirmations and readiness.
        make_connection: Creates an unconnected redis-py connection to this node.
        dialect: Plain or sharded pub/sub.
        health_check_interval: Seconds between PINGs on the subscribed connection.
        socket_timeout: Seconds Redis may take to answer a pipeline of publishes.
    """

    def __init__(
        self,
        owner: LinkOwner,
        make_connection: Callable[[], AbstractConnection],
        dialect: Dialect,
        *,
        health_check_interval: float,
        socket_timeout: float,
    ) -> None:
        self._owner = owner
        self._dialect = dialect
        self._health_check_interval = health_check_interval
        self._socket_timeout = socket_timeout
        self.publisher = make_connection()
        self.subscriber = make_connection()
        self.queue: collections.deque[Pending] = collections.deque()
        self.in_flight: list[Pending] = []
        self._queued = asyncio.Event()
        self.requested: set[str] = set()
        """Channels this link asked the node to subscribe (and not to unsubscribe since)."""
        self.confirmed: set[str] = set()
        """Channels the node confirmed."""
        self._unsubscribing: collections.Counter[str] = collections.Counter()
        """Unsubscribes sent and not yet confirmed, per channel."""
        self.unanswered = 0
        """(Un)subscriptions sent and not yet answered: while any are, ``confirmed`` may be
        about to change (an unsubscribe answered after a newer subscribe was sent)."""
        self.ready = False
        self._last_reply = 0.0

    async def connect(self) -> None:
        await self.publisher.connect()  # type: ignore[no-untyped-call]
        for script in SCRIPTS:  # (history scripts run by EVALSHA from now on)
            await self.publisher.send_command(b"SCRIPT", b"LOAD", script, check_health=False)
            await self.publisher.read_response()
        await self.subscriber.connect()  # type: ignore[no-untyped-call]
        self._last_reply = asyncio.get_running_loop().time()

    async def disconnect(self) -> None:
        await self.publisher.disconnect(nowait=True)
        await self.subscriber.disconnect(nowait=True)

    def start(self, group: asyncio.TaskGroup) -> None:
        """Run the reader, the watchdog and the writer in ``group`` (they end by raising)."""
        group.create_task(self._read())
        group.create_task(self._watch())
        group.create_task(self._write())

    def take_pending(self) -> list[Pending]:
        """Everything not yet confirmed by Redis (for failing it when the link is lost)."""
        pending = self.in_flight + list(self.queue)
        self.in_flight = []
        self.queue.clear()
        return pending

    def enqueue(self, item: Pending) -> None:
        self.queue.append(item)
        self._queued.set()

    @property
    def queued(self) -> int:
        return len(self.queue) + len(self.in_flight)

    # ---------------------------------------------------------------- subscriptions

    async def change(self, added: Sequence[str], removed: Sequence[str]) -> None:
        """Subscribe ``added`` and unsubscribe ``removed``, as few commands as allowed, sent
        together (sharded commands take channels of one hash slot only)."""
        dialect = self._dialect
        self.requested.update(added)
        self.requested.difference_update(removed)
        self._unsubscribing.update(removed)
        self.unanswered += len(added) + len(removed)
        commands: list[tuple[bytes, ...]] = []
        for command, channels in ((dialect.subscribe, added), (dialect.unsubscribe, removed)):
            names = [encode_channel(channel) for channel in channels]
            if dialect.sharded:
                by_slot: dict[int, list[bytes]] = {}
                for name in names:
                    by_slot.setdefault(key_slot(name), []).append(name)
                commands += [(command, *group) for group in by_slot.values()]
            else:
                commands += [
                    (command, *names[start : start + _BATCH])
                    for start in range(0, len(names), _BATCH)
                ]
        if commands:
            connection = self.subscriber
            await connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )

    async def confirm_ready(self) -> None:
        """PING after the first subscriptions: its reply follows all their confirmations."""
        await self.subscriber.send_command(_PING, check_health=False)

    # ---------------------------------------------------------------- the loops

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        owner, dialect = self._owner, self._dialect
        connection = self.subscriber
        while True:
            reply = await connection.read_response(timeout=math.inf, push_request=True)
            self._last_reply = loop.time()
            # RESP2 (and RESP3 pushes): [kind, channel, data]; PING: [b"pong", b""] when
            # subscribed, b"PONG" when not (and always in RESP3).
            kind = reply[0] if isinstance(reply, list) else b"pong"
            if kind == dialect.message:
                owner.delivered(decode_channel(reply[1]), reply[2])
            elif kind == dialect.subscribed:
                self.unanswered -= 1
                channel = decode_channel(reply[1])
                self.confirmed.add(channel)
                owner.confirmed(channel)
            elif kind == dialect.unsubscribed:
                self.unanswered -= 1
                channel = decode_channel(reply[1])
                self.confirmed.discard(channel)
                if self._unsubscribing[channel] > 0:
                    self._unsubscribing[channel] -= 1
                    if not self._unsubscribing[channel]:
                        del self._unsubscribing[channel]
                elif dialect.sharded:
                    # Not asked for: the slot moved to another shard.
                    raise BrokerUnavailable(f"{channel} was moved off this node")
            elif kind == b"pong" and not self.ready:
                self.ready = True
                owner.link_ready()

    async def _watch(self) -> None:
        """PING the subscribed connection; a silent node is a dead one (half-open socket)."""
        loop = asyncio.get_running_loop()
        interval = self._health_check_interval
        while True:
            await asyncio.sleep(interval)
            silent = loop.time() - self._last_reply
            if silent > 2 * interval:
                raise BrokerUnavailable(f"no reply from Redis for {silent:.1f} s")
            await self.subscriber.send_command(_PING, check_health=False)

    async def _write(self) -> None:
        """Write queued publishes as pipelines, in the order they were queued."""
        queue, connection, command = self.queue, self.publisher, self._dialect.publish
        while True:
            if not queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), _BATCH // 2))]
            self.in_flight = batch
            commands = [
                (command, channel, data) if special is None else special
                for channel, data, _, special in batch
            ]
            await connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )
            published = 0
            async with asyncio.timeout(self._socket_timeout):
                for _, data, result, _ in batch:
                    try:
                        reply = await connection.read_response(timeout=math.inf)
                    except ResponseError as exc:
                        if isinstance(exc, AskError | ClusterDownError | TryAgainError):
                            raise  # the slots moved: rediscover the cluster
                        # This command failed (a script error, say); the link is fine.
                        if result is not None and not result.done():
                            result.set_exception(BrokerUnavailable(f"Redis: {exc}"))
                        continue
                    published += bool(data)
                    if result is not None and not result.done():
                        result.set_result(reply)
            self.in_flight = []
            self._owner.published(published)


def encode_channel(channel: str) -> bytes:
    # surrogatepass: ids are arbitrary str; a lone surrogate must not break the connection.
    return channel.encode("utf-8", "surrogatepass")


def decode_channel(channel: bytes) -> str:
    return channel.decode("utf-8", "surrogatepass")


def describe(exc: BaseException) -> str:
    """One line for what broke a connected period (every error of a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
