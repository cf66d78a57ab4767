"""What an instance of a distributed hub listens to on its broker.

An instance subscribes to a room's channel while the room has a local member (or a join of
it is under way: ``hold``), to a user's channel while the user has a local connection, to each
local connection's own channel, and to the broadcast channel while it runs.  So it receives
exactly what it can deliver, and the broker's traffic to it follows its own membership.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from roomcast.brokers.base import Broker, EnvelopeHandler
from roomcast.connection import Connection
from roomcast.registry import Departure, Registry

__all__ = ["Interest"]


class Interest:
    """The broker subscriptions of one hub, kept in step with its registry.

    Args:
        broker: Where to listen.
        handler: Called with every envelope arriving on a channel listened to.
        registry: The hub's connections (who is where).
        dropped: Told when a room's channel is no longer listened to.
    """

    __slots__ = ("_broker", "_channels", "_dropped", "_handler", "_held", "_registry")

    def __init__(
        self,
        broker: Broker,
        handler: EnvelopeHandler,
        registry: Registry,
        dropped: Callable[[str], None],
    ) -> None:
        self._broker = broker
        self._channels = broker.channels
        self._handler = handler
        self._registry = registry
        self._dropped = dropped
        self._held: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        self._broker.listen(self._channels.broadcast, self._handler)

    def stop(self) -> None:
        self._broker.unlisten(self._channels.broadcast, self._handler)

    def attached(self, connection: Connection, first_of_user: bool) -> None:
        channels = self._channels
        self._broker.listen(channels.connection(connection.connection_id), self._handler)
        if first_of_user:
            assert connection.user_id is not None
            self._broker.listen(channels.user(connection.user_id), self._handler)

    def departed(self, departure: Departure) -> None:
        connection, channels = departure.connection, self._channels
        self._broker.unlisten(channels.connection(connection.connection_id), self._handler)
        for room in departure.emptied_rooms:
            self.emptied(room)
        if departure.user_gone:
            assert connection.user_id is not None
            self._broker.unlisten(channels.user(connection.user_id), self._handler)

    def opened(self, room: str) -> None:
        """``room`` got its first local member."""
        if room not in self._held:
            self._broker.listen(self._channels.room(room), self._handler)

    def emptied(self, room: str) -> None:
        """``room`` lost its last local member: stop listening unless a join holds it."""
        if room not in self._held:
            self._broker.unlisten(self._channels.room(room), self._handler)
            self._dropped(room)

    def hold(self, room: str) -> None:
        """Listen to ``room`` while a join of it is under way (it may have no member yet)."""
        if not self._held[room] and not self._registry.room_members(room):
            self._broker.listen(self._channels.room(room), self._handler)
        self._held[room] += 1

    def release(self, room: str) -> None:
        """Undo one ``hold``."""
        self._held[room] -= 1
        if self._held[room] <= 0:
            del self._held[room]
            if not self._registry.room_members(room):
                self.emptied(room)
