"""The in-memory broker: instances of one hub in one process (tests, single-process setups).

A publish is handed to every subscribed broker of the same ``MemoryBus`` on the next loop
iteration; delivery is at most once, as with Redis pub/sub.  Rooms with history are stored
on the bus (one ``MemoryHistory`` for all its brokers), as a Redis would hold them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from roomcast.brokers.base import (
    BrokerStats,
    Channels,
    EnvelopeHandler,
    Inbound,
    Outbound,
    PositionReply,
)
from roomcast.brokers.envelope import Target
from roomcast.errors import BrokerUnavailable
from roomcast.history.memory import MemoryHistory
from roomcast.history.positions import HistoryLimits, Page, Position

__all__ = ["MemoryBroker", "MemoryBus"]


class MemoryBus:
    """The shared medium of ``MemoryBroker``s in one process (one per logical hub)."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[MemoryBroker]] = {}
        self.history = MemoryHistory(lambda room: None)
        """The rooms' histories (publishers pass each room's limits)."""

    def channels(self) -> list[str]:
        """Every channel with a subscriber, like Redis' ``PUBSUB CHANNELS``."""
        return list(self._subscribers)

    def subscribe(self, broker: MemoryBroker, channel: str) -> None:
        self._subscribers.setdefault(channel, set()).add(broker)

    def unsubscribe(self, broker: MemoryBroker, channel: str) -> None:
        brokers = self._subscribers.get(channel)
        if brokers is not None:
            brokers.discard(broker)
            if not brokers:
                del self._subscribers[channel]

    def publish(self, channel: str, data: bytes) -> int:
        """Hand ``data`` to every subscriber on its next loop iteration, as a network would."""
        brokers = self._subscribers.get(channel, ())
        loop = asyncio.get_running_loop()
        for broker in brokers:
            loop.call_soon(broker.inbound.deliver, channel, data)
        return len(brokers)


class MemoryBroker:
    """A ``Broker`` for hubs in one process, over a shared ``MemoryBus``.

    Args:
        bus: The medium shared by the hubs that should reach each other.
        prefix: Channel prefix.
    """

    def __init__(self, bus: MemoryBus, prefix: str = "ws") -> None:
        self._bus = bus
        self._channels = Channels(prefix)
        self._outbound = Outbound(self._channels)
        self._stats = BrokerStats()
        self.inbound = Inbound(self._channels, self._stats, self._outbound.origin)
        self._open = False
        self._resubscribed: list[Callable[[], None]] = []

    @property
    def instance_id(self) -> bytes:
        return self._outbound.origin

    @property
    def channels(self) -> Channels:
        return self._channels

    @property
    def ready(self) -> bool:
        return self._open

    @property
    def settled(self) -> bool:
        return self._open

    @property
    def subscriptions(self) -> int:
        return len(self.inbound.subscribed()) if self._open else 0

    @property
    def stats(self) -> BrokerStats:
        return self._stats

    async def initialize(self) -> None:
        self._open = True
        for channel in self.inbound.subscribed():
            self._bus.subscribe(self, channel)

    async def close(self) -> None:
        self._open = False
        for channel in self.inbound.subscribed():
            self._bus.unsubscribe(self, channel)

    def listen(self, channel: str, handler: EnvelopeHandler) -> None:
        if self.inbound.add(channel, handler) and self._open:
            self._bus.subscribe(self, channel)

    def unlisten(self, channel: str, handler: EnvelopeHandler) -> None:
        if self.inbound.remove(channel, handler) and self._open:
            self._bus.unsubscribe(self, channel)

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
        channel, data = self._outbound.seal(
            target, target_id, payload, binary=binary, close=close, exclude=exclude
        )
        if not self._open:
            self._stats.publish_failures += 1
            return
        self._bus.publish(channel, data)
        self._stats.published += 1

    def publish_positioned(
        self,
        room: str,
        payload: bytes,
        limits: HistoryLimits,
        *,
        exclude: Collection[str],
        reply: PositionReply,
    ) -> tuple[int, int]:
        channel, data, key = self._outbound.seal_numbered(
            Target.ROOM, room, payload, exclude=exclude
        )
        loop = asyncio.get_running_loop()
        if not self._open:
            self._stats.publish_failures += 1
            loop.call_soon(reply, None)
            return key
        position = self._bus.history.append(room, data, limits)
        assert position is not None  # (limits given)
        self._bus.publish(channel, b"RP%d,%s,%s" % (position.offset, position.epoch.encode(), data))
        self._stats.published += 1
        loop.call_soon(reply, position)
        return key

    async def read_history(
        self, room: str, since: Position | None, limit: int, limits: HistoryLimits
    ) -> Page:
        await asyncio.sleep(0)  # an answer comes later, as from a server
        if not self._open:
            raise BrokerUnavailable("the memory broker is closed")
        page = self._bus.history.read(room, since, limit, limits)
        assert page is not None  # (limits given)
        return page

    def on_resubscribed(self, callback: Callable[[], None]) -> None:
        self._resubscribed.append(callback)  # (a bus never loses its brokers)
