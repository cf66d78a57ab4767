"""DistributedWebSocketManager: one logical hub over many processes and hosts.

Every send has cluster-wide effect.  The instance delivers to its own clients first (the same
synchronous, encode-once fan-out as ``ConnectionManager``), then publishes one envelope with the
frame's payload bytes; other instances fan those bytes out to their members without encoding
them again, and drop their own echo.

Subscriptions follow interest: an instance listens on a room's channel only while the room has
local members, on a user's channel while the user has a local connection, and on a
connection's channel while that connection is here; the registry's first-join and last-leave
transitions drive it.  So a message for a room reaches only the instances that have members
in it (python-socketio, by contrast, sends every message to every node on one channel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from roomcast.brokers.base import Broker, BrokerStats
from roomcast.brokers.envelope import Target
from roomcast.fastapi.lifecycle import LifecycleSettings, ManagerLifecycle
from roomcast.fastapi.manager import DEFAULT_SEND_BUFFER_LIMIT, ConnectionManager
from roomcast.history.positions import history_rule
from roomcast.hub import Hub, OverflowPolicy
from roomcast.identifiers import DEFAULT_MAX_ID_BYTES
from roomcast.messages import MessageType

if TYPE_CHECKING:
    from roomcast.brokers.redis_pubsub import RedisPubSub

__all__ = ["DistributedWebSocketManager"]


class DistributedWebSocketManager(ConnectionManager):
    """A ``ConnectionManager`` whose sends reach the connections of every instance.

    Args:
        redis_url: Redis to meet the other instances at (ignored when ``broker`` is given).
        broker: Another broker (e.g. ``MemoryBroker`` for instances in one process).
        prefix: Channel prefix; instances with different prefixes are separate hubs.
        **options: ``ConnectionManager`` options (``send_buffer_limit``, ``overflow``...).
            With ``lifecycle``, the events are counted cluster-wide in the Redis at
            ``redis_url`` (whichever the broker), under the broker's instance id.

    Call ``await start()`` before serving (FastAPI ``on_event("startup")`` or a lifespan) and
    ``await stop()`` at shutdown.  Return values of the send methods count local deliveries
    only: other instances deliver asynchronously.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        *,
        broker: Broker | None = None,
        prefix: str = "ws",
        **options: Any,
    ) -> None:
        if broker is None:
            from roomcast.brokers.redis_pubsub import RedisPubSub

            broker = RedisPubSub(redis_url, prefix=prefix)
        hub = Hub(
            broker,
            overflow=options.get("overflow", OverflowPolicy.CLOSE),
            send_buffer_limit=options.get("send_buffer_limit", DEFAULT_SEND_BUFFER_LIMIT),
            max_id_bytes=options.get("max_id_length", DEFAULT_MAX_ID_BYTES),
            max_rooms=options.get("max_rooms"),
            history=history_rule(options.get("history")),
        )
        lifecycle: LifecycleSettings | None = options.pop("lifecycle", None)
        super().__init__(hub=hub, **options)
        self.broker: Broker = broker
        if lifecycle is not None:
            instance = broker.instance_id.hex()
            self.lifecycle = ManagerLifecycle.over_redis(
                lifecycle, hub, redis_url, instance, prefix
            )

    @property
    def pubsub(self) -> RedisPubSub:
        """The ``RedisPubSub`` under this manager (TypeError if another broker is used)."""
        from roomcast.brokers.redis_pubsub import RedisPubSub

        if not isinstance(self.broker, RedisPubSub):
            raise TypeError(f"this manager uses {type(self.broker).__name__}, not Redis")
        return self.broker

    @property
    def ready(self) -> bool:
        """True while the broker is connected and subscribed (readiness probes use it)."""
        return self.hub.ready

    @property
    def broker_stats(self) -> BrokerStats:
        """Published, failed, received, missed... (see ``BrokerStats``)."""
        return self.broker.stats

    async def start(self) -> None:
        """Connect to the broker and subscribe to what local connections need.

        Returns once subscribed, or after the broker's connect timeout if it is unreachable;
        then the instance serves its own clients and catches up when the broker returns.
        With ``lifecycle``, its events start too (see ``ManagerLifecycle.start``).
        """
        await self.hub.start()
        if self.lifecycle is not None:
            await self.lifecycle.start()

    async def stop(self) -> None:
        """Disconnect from the broker.  Local connections stay; close them with
        ``close_all`` if the process is going away.  With ``lifecycle``, what this instance
        holds departs now (reason "instance stopped") and the events stop."""
        if self.lifecycle is not None:
            await self.lifecycle.stop()
        await self.hub.stop()

    async def send_to_connection(
        self, connection_id: str, message: Any, type: MessageType | None = None
    ) -> bool:
        """Send to one connection, on whichever instance holds it.

        Returns True if it was delivered here or published for the other instances (whether
        one of them holds it is not known here); False if it is local but could not take it.
        """
        connection = self.hub.get_connection(connection_id)
        if connection is None:
            self._send(Target.CONNECTION, connection_id, message, type, ())
            return True
        return self._send_one(connection, message, type)
