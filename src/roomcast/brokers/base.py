"""Brokers: what carries a distributed hub's messages between instances.

The contract (``Broker``) is small: publish an envelope for a target without waiting, and call
a handler for every envelope arriving on a channel the hub listens to.  Delivery is *at most
once*, as with Redis pub/sub: a message published while a receiver is cut off from the broker
is lost to it.  Losses are not silent, though: envelopes are numbered per (origin, channel)
and every receiver counts the holes (see ``roomcast.brokers.envelope``).

Two implementations: ``MemoryBroker`` (``roomcast.brokers.memory``: instances in one process;
for tests and single-process setups) and ``RedisBroker`` (``roomcast.brokers.redis``).  Both
share ``Channels`` (names), ``Outbound`` (numbering and packing) and ``Inbound`` (unpacking,
gap counting, dispatch).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Collection, KeysView
from typing import Protocol

from roomcast.brokers.envelope import (
    Envelope,
    GapTracker,
    InvalidEnvelope,
    StreamCounter,
    Target,
    Verdict,
    pack,
    split_position,
    unpack,
)
from roomcast.history.positions import HistoryLimits, Page, Position
from roomcast.messages import preview

__all__ = [
    "Broker",
    "BrokerStats",
    "Channels",
    "EnvelopeHandler",
    "Inbound",
    "Outbound",
    "PositionReply",
]

logger = logging.getLogger("roomcast.broker")

EnvelopeHandler = Callable[[Envelope], None]
"""Called with each envelope that arrives on a channel; must not block."""

PositionReply = Callable[[Position | None], None]
"""Told where a message of a room with history was stored (None: it was not)."""


@dataclasses.dataclass(slots=True)
class BrokerStats:
    """Counters of one broker connection since it was created."""

    published: int = 0
    """Envelopes the broker accepted."""
    publish_failures: int = 0
    """Envelopes that could not be published (broker unreachable, queue full, error)."""
    received: int = 0
    """Envelopes delivered to handlers."""
    missed: int = 0
    """Envelopes that other instances published on subscribed channels but never arrived
    (holes in their sequence numbers)."""
    duplicates: int = 0
    """Envelopes that arrived twice or out of order, and were dropped."""
    malformed: int = 0
    """Messages on a subscribed channel that were not valid envelopes for it; dropped."""
    handler_errors: int = 0
    """Exceptions raised by handlers (logged; the subscriber goes on)."""
    handler_drops: int = 0
    """Messages dropped because a slow dict handler's bounded queue was full."""
    reconnects: int = 0
    """Times the broker connection was lost and re-established."""
    repaired: int = 0
    """Messages of rooms with history that did not arrive and were read from the history
    instead (not counted in ``missed``)."""


class Channels:
    """Channel names: ``{prefix}:broadcast``, ``{prefix}:room:{id}``, ``{prefix}:user:{id}``,
    ``{prefix}:connection:{id}``.

    Args:
        prefix: Lets several independent hubs share one broker.
    """

    __slots__ = ("_families", "broadcast", "prefix")

    def __init__(self, prefix: str = "ws") -> None:
        self.prefix = prefix
        self.broadcast = f"{prefix}:broadcast"
        self._families = {
            Target.ROOM: f"{prefix}:room:",
            Target.USER: f"{prefix}:user:",
            Target.CONNECTION: f"{prefix}:connection:",
        }

    def room(self, room: str) -> str:
        return self._families[Target.ROOM] + room

    def user(self, user_id: str) -> str:
        return self._families[Target.USER] + user_id

    def connection(self, connection_id: str) -> str:
        return self._families[Target.CONNECTION] + connection_id

    def of(self, target: Target, target_id: str) -> str:
        """The channel an envelope for ``target`` travels on."""
        if target is Target.BROADCAST:
            return self.broadcast
        return self._families[target] + target_id


class Broker(Protocol):
    """What a distributed hub needs from a broker."""

    @property
    def instance_id(self) -> bytes:
        """16 random bytes naming this instance in every envelope it publishes."""
        ...

    @property
    def channels(self) -> Channels: ...

    @property
    def ready(self) -> bool:
        """True while connected and subscribed to every channel listened to."""
        ...

    @property
    def settled(self) -> bool:
        """Ready, with every subscription change confirmed by the broker."""
        ...

    @property
    def subscriptions(self) -> int:
        """Channels subscribed at the broker."""
        ...

    @property
    def stats(self) -> BrokerStats: ...

    async def initialize(self) -> None:
        """Connect and start delivering; returns once connected (or, for a broker that
        reconnects by itself, once the first attempt is over)."""

    async def close(self) -> None:
        """Stop, unsubscribe, release every connection and task."""

    def listen(self, channel: str, handler: EnvelopeHandler) -> None:
        """Call ``handler`` for envelopes on ``channel``; subscribes on the first handler."""

    def unlisten(self, channel: str, handler: EnvelopeHandler) -> None:
        """Stop calling ``handler``; unsubscribes after the last one."""

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
        """Publish without waiting; a failure is counted in ``stats.publish_failures``."""

    def publish_positioned(
        self,
        room: str,
        payload: bytes,
        limits: HistoryLimits,
        *,
        exclude: Collection[str],
        reply: PositionReply,
    ) -> tuple[int, int]:
        """Store a message in ``room``'s history and publish it with its position, in one
        step (so that positions follow the order of the room's channel).

        Returns the envelope's ``(stream, seq)``, by which the origin recognises its own
        message when it comes back; ``reply`` is called (later) with the position, or None
        if the message was neither stored nor published.
        """
        ...

    async def read_history(
        self, room: str, since: Position | None, limit: int, limits: HistoryLimits
    ) -> Page:
        """Read ``room``'s history (see ``MemoryHistory.read``); the page's payloads are
        envelopes.

        Raises:
            BrokerUnavailable: the history could not be read.
        """
        ...

    def on_resubscribed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the broker is subscribed again after losing its
        connection (messages may have been lost meanwhile)."""


class Outbound:
    """Numbers and packs the envelopes one instance publishes."""

    __slots__ = ("_streams", "channels", "origin")

    def __init__(self, channels: Channels, origin: bytes | None = None) -> None:
        self.channels = channels
        self.origin = origin if origin is not None else os.urandom(16)
        self._streams = StreamCounter()

    def seal(
        self,
        target: Target,
        target_id: str,
        payload: bytes,
        *,
        binary: bool = False,
        close: bool = False,
        exclude: Collection[str] = (),
    ) -> tuple[str, bytes]:
        """``(channel, envelope bytes)`` for one message."""
        channel, data, _ = self.seal_numbered(
            target, target_id, payload, binary=binary, close=close, exclude=exclude
        )
        return channel, data

    def seal_numbered(
        self,
        target: Target,
        target_id: str,
        payload: bytes,
        *,
        binary: bool = False,
        close: bool = False,
        exclude: Collection[str] = (),
    ) -> tuple[str, bytes, tuple[int, int]]:
        """``(channel, envelope bytes, (stream, seq))`` for one message."""
        channel = self.channels.of(target, target_id)
        stream, seq = self._streams.next(channel)
        data = pack(
            target,
            target_id,
            payload,
            origin=self.origin,
            stream=stream,
            seq=seq,
            binary=binary,
            close=close,
            exclude=exclude,
        )
        return channel, data, (stream, seq)


class Inbound:
    """Turns raw channel messages into envelopes for the handlers listening there.

    Drops (and counts) what is malformed, foreign to the channel, or a duplicate; counts what
    was missed; a handler that raises is logged and the others still run.
    """

    __slots__ = ("_gaps", "_handlers", "_logged", "_origin", "channels", "stats")

    def __init__(self, channels: Channels, stats: BrokerStats, origin: bytes) -> None:
        self.channels = channels
        self.stats = stats
        self._origin = origin
        self._handlers: dict[str, list[EnvelopeHandler]] = {}
        self._gaps = GapTracker()
        self._logged = 0

    def subscribed(self) -> KeysView[str]:
        """Channels with at least one handler: the interest set."""
        return self._handlers.keys()

    def add(self, channel: str, handler: EnvelopeHandler) -> bool:
        """Add a handler; True if ``channel`` had none (the broker must subscribe)."""
        handlers = self._handlers.get(channel)
        if handlers is None:
            self._handlers[channel] = [handler]
            return True
        handlers.append(handler)
        return False

    def remove(self, channel: str, handler: EnvelopeHandler) -> bool:
        """Remove a handler; True if it was the last (the broker must unsubscribe)."""
        handlers = self._handlers.get(channel)
        if handlers is None or handler not in handlers:
            return False
        handlers.remove(handler)
        if handlers:
            return False
        del self._handlers[channel]
        self._gaps.forget(channel)
        return True

    def deliver(self, channel: str, data: bytes) -> None:
        """Handle one message that arrived on ``channel``."""
        handlers = self._handlers.get(channel)
        if handlers is None:
            return  # in flight while we unsubscribed
        try:
            position, data = split_position(data)
            envelope = unpack(data, position)
            if self.channels.of(envelope.target, envelope.target_id) != channel:
                raise InvalidEnvelope(f"envelope for {envelope.target.name} on another channel")
        except InvalidEnvelope as exc:
            self.stats.malformed += 1
            self._warn("dropped a message on %s: %s (%s)", channel, exc, preview(data[:64]))
            return
        if envelope.origin == self._origin or position is not None:
            # Our own echo: what we failed to publish is counted as such, not as missed.
            # A message with a position: its room's offsets find (and repair) the holes.
            verdict, missed = Verdict.DELIVER, 0
        else:
            verdict, missed = self._gaps.check(
                channel, envelope.origin, envelope.stream, envelope.seq
            )
        if missed:
            self.stats.missed += missed
            self._warn(
                "missed %d message(s) from instance %s on %s",
                missed,
                envelope.origin.hex(),
                channel,
            )
        if verdict is Verdict.DUPLICATE:
            self.stats.duplicates += 1
            return
        self.stats.received += 1
        for handler in tuple(handlers):
            try:
                handler(envelope)
            except Exception:
                self.stats.handler_errors += 1
                logger.exception("handler for %s failed", channel)

    def _warn(self, message: str, *args: object) -> None:
        # The first few, then one in a thousand: a flood of garbage must not flood the log.
        self._logged += 1
        if self._logged <= 10 or self._logged % 1000 == 0:
            logger.warning(message, *args)
