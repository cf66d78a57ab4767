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

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from roomcast.broker import Broker, BrokerStats
from roomcast.connection import Connection
from roomcast.envelope import Envelope, Target
from roomcast.errors import CloseCode
from roomcast.frame import Frame, encode
from roomcast.manager import ConnectionManager
from roomcast.messages import MessageType
from roomcast.registry import Departure

if TYPE_CHECKING:
    from roomcast.redis_pubsub import RedisPubSub

__all__ = ["DistributedWebSocketManager"]


class DistributedWebSocketManager(ConnectionManager):
    """A ``ConnectionManager`` whose sends reach the connections of every instance.

    Args:
        redis_url: Redis to meet the other instances at (ignored when ``broker`` is given).
        broker: Another broker (e.g. ``MemoryBroker`` for instances in one process).
        prefix: Channel prefix; instances with different prefixes are separate hubs.
        **options: ``ConnectionManager`` options (``send_buffer_limit``, ``overflow``...).

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
        super().__init__(**options)
        if broker is None:
            from roomcast.redis_pubsub import RedisPubSub

            broker = RedisPubSub(redis_url, prefix=prefix)
        self.broker: Broker = broker
        self._channels = broker.channels
        self._handler = self._arrived
        self._started = False

    @property
    def pubsub(self) -> RedisPubSub:
        """The ``RedisPubSub`` under this manager (TypeError if another broker is used)."""
        from roomcast.redis_pubsub import RedisPubSub

        if not isinstance(self.broker, RedisPubSub):
            raise TypeError(f"this manager uses {type(self.broker).__name__}, not Redis")
        return self.broker

    @property
    def ready(self) -> bool:
        """True while the broker is connected and subscribed (readiness probes use it)."""
        return self.broker.ready

    @property
    def broker_stats(self) -> BrokerStats:
        """Published, failed, received, missed... (see ``BrokerStats``)."""
        return self.broker.stats

    async def start(self) -> None:
        """Connect to the broker and subscribe to what local connections need.

        Returns once subscribed, or after the broker's connect timeout if it is unreachable;
        then the instance serves its own clients and catches up when the broker returns.
        """
        if self._started:
            return
        self._started = True
        self.broker.listen(self._channels.broadcast, self._handler)
        await self.broker.initialize()

    async def stop(self) -> None:
        """Disconnect from the broker.  Local connections stay; close them with
        ``close_all`` if the process is going away."""
        if self._started:
            self.broker.unlisten(self._channels.broadcast, self._handler)
        await self.broker.close()

    # ---------------------------------------------------------------- interest

    def _on_added(self, connection: Connection, first_of_user: bool) -> None:
        self.broker.listen(self._channels.connection(connection.connection_id), self._handler)
        if first_of_user:
            assert connection.user_id is not None
            self.broker.listen(self._channels.user(connection.user_id), self._handler)

    def _on_removed(self, departure: Departure) -> None:
        connection = departure.connection
        self.broker.unlisten(self._channels.connection(connection.connection_id), self._handler)
        for room in departure.emptied_rooms:
            self.broker.unlisten(self._channels.room(room), self._handler)
        if departure.user_gone:
            assert connection.user_id is not None
            self.broker.unlisten(self._channels.user(connection.user_id), self._handler)

    def _on_room_opened(self, room: str) -> None:
        self.broker.listen(self._channels.room(room), self._handler)

    def _on_room_emptied(self, room: str) -> None:
        self.broker.unlisten(self._channels.room(room), self._handler)

    # ---------------------------------------------------------------- sending

    async def broadcast(
        self,
        message: Any,
        type: MessageType | None = None,
        exclude: Collection[str] | None = None,
    ) -> int:
        """Send to every connection on every instance but the ids in ``exclude``.

        Returns how many local connections took it.
        """
        local = self._select(self._registry.connections(), exclude)
        return self._spread(Target.BROADCAST, "", message, type, local, exclude)

    async def broadcast_to_room(
        self,
        room: str,
        message: Any,
        type: MessageType | None = None,
        exclude: Collection[str] | None = None,
    ) -> int:
        """Send to the members of ``room`` on every instance but ``exclude`` (connection ids,
        local or remote).  Returns how many local members took it."""
        local = self._select(self._registry.room_members(room).values(), exclude)
        return self._spread(Target.ROOM, room, message, type, local, exclude)

    async def send_to_user(
        self, user_id: str, message: Any, type: MessageType | None = None
    ) -> int:
        """Send to every device of ``user_id`` on every instance; returns the local count."""
        local = list(self._registry.user_connections(user_id).values())
        return self._spread(Target.USER, user_id, message, type, local, None)

    async def send_to_connection(
        self, connection_id: str, message: Any, type: MessageType | None = None
    ) -> bool:
        """Send to one connection, on whichever instance holds it.

        Returns True if it was delivered here or published for the other instances (whether
        one of them holds it is not known here); False if it is local but could not take it.
        """
        connection = self._registry.get(connection_id)
        if connection is not None:
            return self._deliver(message, type, (connection,)) == 1
        self._spread(Target.CONNECTION, connection_id, message, type, (), None)
        return True

    def has_listeners(self, room: str) -> bool:
        return True  # members elsewhere are not known here

    def deliver_to_room(self, room: str, frame: Frame, exclude: Connection | None = None) -> int:
        """``ConnectionManager.deliver_to_room``, then published for the other instances."""
        delivered = super().deliver_to_room(room, frame, exclude)
        self.broker.publish(Target.ROOM, room, frame.payload, binary=frame.binary)
        return delivered

    def deliver_to_user(self, user_id: str, frame: Frame) -> int:
        """``ConnectionManager.deliver_to_user``, then published for the other instances."""
        delivered = super().deliver_to_user(user_id, frame)
        self.broker.publish(Target.USER, user_id, frame.payload, binary=frame.binary)
        return delivered

    def _spread(
        self,
        target: Target,
        target_id: str,
        message: Any,
        kind: MessageType | None,
        local: Collection[Connection],
        exclude: Collection[str] | None,
    ) -> int:
        """Deliver to ``local`` first, then publish once for every other instance."""
        excluded = exclude or ()
        if kind is MessageType.CLOSE:
            reason = message if isinstance(message, str) else ""
            for connection in local:
                self._close(connection, CloseCode.NORMAL, reason)
            self.broker.publish(target, target_id, reason.encode(), close=True, exclude=excluded)
            return len(local)
        frame = encode(message, kind)
        delivered = self._fan_out(frame, local) if local else 0
        self.broker.publish(target, target_id, frame.payload, binary=frame.binary, exclude=excluded)
        return delivered

    # ---------------------------------------------------------------- receiving

    def _arrived(self, envelope: Envelope) -> None:
        """Fan an envelope from another instance out to the local connections it targets."""
        if envelope.origin == self.broker.instance_id:
            return  # delivered locally before it was published
        targets = self._local_targets(envelope)
        if envelope.exclude:
            excluded = envelope.exclude
            targets = [conn for conn in targets if conn.connection_id not in excluded]
        if not targets:
            return
        if envelope.close:
            reason = envelope.payload.decode()
            for connection in list(targets):
                self._close(connection, CloseCode.NORMAL, reason)
            return
        self._fan_out(Frame.from_payload(envelope.payload, envelope.binary), list(targets))

    def _local_targets(self, envelope: Envelope) -> Collection[Connection]:
        target = envelope.target
        found: Iterable[Connection]
        if target is Target.BROADCAST:
            found = self._registry.connections()
        elif target is Target.ROOM:
            found = self._registry.room_members(envelope.target_id).values()
        elif target is Target.USER:
            found = self._registry.user_connections(envelope.target_id).values()
        else:
            connection = self._registry.get(envelope.target_id)
            found = () if connection is None else (connection,)
        return list(found)
