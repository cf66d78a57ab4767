"""``RedisPubSub``: the Redis broker with the channel-and-handler API on top.

Its calls name channels and take dict handlers: ``subscribe(channel, handler)`` calls
``handler`` with each message as a dict, ``publish_broadcast``/``publish_to_user``/
``publish_to_room``/``publish_to_connection`` encode a message and wait until Redis took it.
Underneath it is the same broker the hub uses (``roomcast.brokers.redis.RedisBroker``), with
its envelopes, sequence numbers, reconnects and Redis Cluster support.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from roomcast.brokers.base import EnvelopeHandler
from roomcast.brokers.envelope import Envelope, Target
from roomcast.brokers.redis import RedisBroker
from roomcast.brokers.redis_link import Phase
from roomcast.frame import encode

__all__ = ["MessageHandler", "RedisPubSub"]

logger = logging.getLogger("roomcast.redis")

MessageHandler = Callable[[dict[str, Any]], Awaitable[None] | None]
"""A dict handler: called with each message as a dict, sync or async."""


class RedisPubSub(RedisBroker):
    """Redis pub/sub for a multi-instance hub (channels and dict handlers).

    Args:
        redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL (credentials and db in it).
        handler_queue_limit: Most messages waiting for ``subscribe`` handlers.
        **options: ``RedisBroker``'s (``prefix``, timeouts, queue limits, reconnect delays).
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        *,
        handler_queue_limit: int = 10_000,
        **options: Any,
    ) -> None:
        super().__init__(redis_url, **options)
        self._handler_queue: asyncio.Queue[tuple[MessageHandler, Envelope]] = asyncio.Queue(
            handler_queue_limit
        )
        self._dict_handlers: dict[tuple[str, MessageHandler], EnvelopeHandler] = {}

    async def initialize(self) -> None:
        """Connect (see ``RedisBroker.initialize``) and start running ``subscribe``'s
        handlers."""
        if self.phase is Phase.IDLE:
            self._tasks.spawn(self._run_dict_handlers())
        await super().initialize()

    async def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Call ``handler`` with every message published on ``channel`` (dict-handler API).

        The handler gets the message as a dict: a JSON object as itself, anything else as
        ``{"data": value}`` (``bytes`` for a binary message); closes arrive as
        ``{"type": "close", "reason": ...}``.  It may be sync or async; handlers run one at a
        time in publish order, off the reader, through a bounded queue (a full queue drops
        the message, counted in ``stats.handler_drops``).  Messages this instance published
        itself are delivered too, as Redis does.

        Returns once Redis confirmed the subscription, or at once if Redis is unreachable
        (the subscription is made when it comes back).
        """
        key = (channel, handler)
        if key in self._dict_handlers:
            return
        queue = self._handler_queue
        stats = self._stats

        def enqueue(envelope: Envelope) -> None:
            try:
                queue.put_nowait((handler, envelope))
            except asyncio.QueueFull:
                stats.handler_drops += 1
                logger.warning("handler queue full; dropped a message on %s", channel)

        self._dict_handlers[key] = enqueue
        self.listen(channel, enqueue)
        if self.connected:
            await self._confirmed(channel)

    async def unsubscribe(self, channel: str, handler: MessageHandler | None = None) -> None:
        """Remove ``handler`` (or every dict handler) from ``channel``."""
        for key in [k for k in self._dict_handlers if k[0] == channel]:
            if handler is None or key[1] is handler:
                self.unlisten(channel, self._dict_handlers.pop(key))

    async def _confirmed(self, channel: str) -> None:
        if any(channel in link.confirmed for link in self._links):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._confirm_waiters.setdefault(channel, []).append(waiter)
        try:
            async with asyncio.timeout(self._socket_timeout):
                await waiter
        except TimeoutError:
            # Redis went away meanwhile; the subscription is made when it is back.
            waiters = self._confirm_waiters.get(channel)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._confirm_waiters[channel]

    async def publish_broadcast(self, message: Any, *, exclude: Collection[str] = ()) -> int:
        """Publish to every connection on every instance; returns how many instances (Redis
        subscriptions) received it.

        Raises:
            BrokerUnavailable: Redis is unreachable or the publish queue is full.
            InvalidMessage: ``message`` cannot be encoded.
        """
        return await self._publish_message(Target.BROADCAST, "", message, exclude)

    async def publish_to_user(self, user_id: str, message: Any) -> int:
        """Publish to every connection of ``user_id``, wherever it is (see publish_broadcast)."""
        return await self._publish_message(Target.USER, user_id, message, ())

    async def publish_to_room(
        self, room_id: str, message: Any, *, exclude: Collection[str] = ()
    ) -> int:
        """Publish to the members of ``room_id`` on every instance (see publish_broadcast)."""
        return await self._publish_message(Target.ROOM, room_id, message, exclude)

    async def publish_to_connection(self, connection_id: str, message: Any) -> int:
        """Publish to one connection on whichever instance holds it (see publish_broadcast)."""
        return await self._publish_message(Target.CONNECTION, connection_id, message, ())

    async def _publish_message(
        self, target: Target, target_id: str, message: Any, exclude: Collection[str]
    ) -> int:
        frame = encode(message)
        channel, data = self._outbound.seal(
            target, target_id, frame.payload, binary=frame.binary, exclude=exclude
        )
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(channel, data, result)
        return int(await result)

    async def _run_dict_handlers(self) -> None:
        queue = self._handler_queue
        while True:
            handler, envelope = await queue.get()
            try:
                outcome = handler(_as_dict(envelope))
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                self._stats.handler_errors += 1
                logger.exception("subscribe handler failed")


def _as_dict(envelope: Envelope) -> dict[str, Any]:
    if envelope.close:
        return {"type": "close", "reason": envelope.payload.decode()}
    if envelope.binary:
        return {"data": envelope.payload}
    text = envelope.payload.decode()
    try:
        value = json.loads(text)
    except ValueError:
        return {"data": text}
    return value if isinstance(value, dict) else {"data": value}
