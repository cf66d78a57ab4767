"""Fan-out: one encoded frame handed to many transports, and what to do with those that
could not take it.

The loop is synchronous and allocates nothing per recipient that took the frame.  Failures
are dealt with after it (a vanished client forgotten, a slow one closed with 4008, or its
frame dropped), so that no reader delays the others and the registry never changes while it
is being walked.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from roomcast.brokers.envelope import Envelope, Target
from roomcast.connection import Connection, Delivery, ManagerStats, OverflowPolicy
from roomcast.errors import CloseCode
from roomcast.frame import Frame
from roomcast.logbudget import EventLog
from roomcast.messages import preview
from roomcast.registry import Registry

__all__ = ["Fanout"]

_ACCEPTED = Delivery.ACCEPTED


class Fanout:
    """Finds a delivery's local recipients and hands them the frame.

    Args:
        registry: The hub's connections.
        stats: Where frames, bytes and refusals are counted.
        overflow: What to do with a connection whose transport cannot take a frame.
        send_buffer_limit: The transports' limit, for the log line of a slow consumer.
        events: The log, within its budget.
        forget: Unregisters a connection that vanished (True if it was registered).
        close: Closes and unregisters a connection.
    """

    __slots__ = (
        "_close",
        "_events",
        "_forget",
        "_overflow",
        "_registry",
        "_send_buffer_limit",
        "stats",
    )

    def __init__(
        self,
        registry: Registry,
        stats: ManagerStats,
        overflow: OverflowPolicy,
        send_buffer_limit: int,
        events: EventLog,
        forget: Callable[[Connection], bool],
        close: Callable[[Connection, int, str], None],
    ) -> None:
        self._registry = registry
        self.stats = stats
        self._overflow = overflow
        self._send_buffer_limit = send_buffer_limit
        self._events = events
        self._forget = forget
        self._close = close

    def local(
        self,
        target: Target,
        target_id: str,
        exclude: Collection[str],
        sender: Connection | None = None,
    ) -> list[Connection]:
        """The local connections ``target`` names, as a snapshot (the registry may change
        while they are served)."""
        registry = self._registry
        found: Iterable[Connection]
        if target is Target.ROOM:
            members = registry.room_members(target_id)
            if exclude:
                return [c for cid, c in members.items() if cid not in exclude and c is not sender]
            if sender is not None and sender.connection_id in members:
                return [conn for conn in members.values() if conn is not sender]
            return list(members.values())
        if target is Target.USER:
            found = registry.user_connections(target_id).values()
        elif target is Target.BROADCAST:
            found = registry.connections()
        else:
            connection = registry.get(target_id)
            found = () if connection is None else (connection,)
        if exclude or sender is not None:
            return [c for c in found if c.connection_id not in exclude and c is not sender]
        return list(found)

    def send(self, frame: Frame, targets: Collection[Connection]) -> int:
        """Hand ``frame`` to every target, then deal with those that could not take it.

        ``targets`` is a snapshot: failures are handled after the loop, so the registry never
        changes while it is being walked.
        """
        if not targets:
            return 0
        accepted = _ACCEPTED
        refused: list[tuple[Connection, Delivery]] | None = None
        for connection in targets:
            result = connection.transport.send(frame)
            if result is not accepted:
                if refused is None:
                    refused = []
                refused.append((connection, result))
        delivered = len(targets)
        if refused is not None:
            delivered -= len(refused)
            self._refused(refused)
        self.stats.frames_sent += delivered
        self.stats.bytes_sent += delivered * frame.size
        return delivered

    def _refused(self, refused: list[tuple[Connection, Delivery]]) -> None:
        for connection, result in refused:
            if result is Delivery.CLOSED:
                if self._forget(connection):
                    self.stats.lost_connections += 1
            elif self._overflow is OverflowPolicy.DROP:
                self.stats.dropped_frames += 1
            else:
                self.stats.slow_consumer_closes += 1
                self._events.event(
                    "slow_consumer",
                    "closing connection %s (user %s): send buffer over %d bytes",
                    connection.connection_id,
                    preview(connection.user_id),
                    self._send_buffer_limit,
                )
                self._close(connection, CloseCode.SLOW_CONSUMER, "slow consumer")

    def arrived(self, envelope: Envelope) -> None:
        """Fan an envelope from another instance out to the local connections it targets."""
        targets = self.local(envelope.target, envelope.target_id, envelope.exclude)
        if not targets:
            return
        if envelope.close:
            reason = envelope.payload.decode()
            for connection in targets:
                self._close(connection, CloseCode.NORMAL, reason)
            return
        self.send(Frame.from_payload(envelope.payload, envelope.binary), targets)
