"""The hub: who is connected where, and the fan-out that reaches them, here and elsewhere.

One ``Hub`` owns the local registry (connections by id, room and user), hands each encoded
frame to every recipient's transport in one synchronous loop, and, given a broker, spreads the
same payload bytes to the other instances and fans out theirs.  The FastAPI managers turn
their calls into hub calls; ``roomcast serve`` uses it directly.

The data path is three hops with no await: ``deliver`` -> ``Transport.send`` -> the
transport's own flush.  Transports that cannot take a frame are handled after the loop (a
vanished client forgotten, a slow one closed with 4008), so no reader delays the others.

With a broker, the hub listens on a room's, a user's and a connection's channel while it has
a local member there (the registry's edges).  Whoever follows membership (presence, the faces'
bookkeeping) registers a ``HubObserver``: one way to hear of joins, leaves and departures.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import Protocol

from roomcast.brokers.base import Broker, BrokerStats
from roomcast.brokers.envelope import Envelope, Target
from roomcast.connection import Connection, Delivery, ManagerStats, OverflowPolicy
from roomcast.errors import CapacityExceeded, CloseCode
from roomcast.frame import Frame
from roomcast.identifiers import DEFAULT_MAX_ID_BYTES, check_identifier
from roomcast.logbudget import EventLog
from roomcast.messages import preview
from roomcast.registry import Departure, Registry, RoomChange

__all__ = ["Hub", "HubObserver", "ManagerStats", "OverflowPolicy"]

logger = logging.getLogger("roomcast")

_ACCEPTED = Delivery.ACCEPTED


class HubObserver(Protocol):
    """Hears membership changes as they happen (synchronously, after the change)."""

    def joined(self, connection: Connection, room: str) -> None:
        """``connection`` became a member of ``room``."""

    def left(self, connection: Connection, room: str) -> None:
        """``connection`` left ``room`` by a leave (departures are reported on their own)."""

    def departed(self, connection: Connection) -> None:
        """``connection`` was forgotten, however it went; its ``rooms`` say where it was."""


class Hub:
    """Connections, rooms and users of this process, and delivery to them (and, with a
    broker, to those of every other instance).

    Args:
        broker: Spreads deliveries to other instances and brings theirs; None: this process
            is the whole hub.
        overflow: What to do with a connection whose transport cannot take a frame.
        send_buffer_limit: The transports' limit, for the log line of a slow consumer.
        max_id_bytes: Longest room or user id, in UTF-8 bytes (``check_id``).
        max_rooms: Most rooms with local members at once; a join opening one more raises
            ``CapacityExceeded``.  None: no limit.
    """

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        overflow: OverflowPolicy = OverflowPolicy.CLOSE,
        send_buffer_limit: int = 1 << 20,
        max_id_bytes: int = DEFAULT_MAX_ID_BYTES,
        max_rooms: int | None = None,
    ) -> None:
        self.broker = broker
        self._overflow = overflow
        self._send_buffer_limit = send_buffer_limit
        self._max_id_bytes = max_id_bytes
        self._max_rooms = max_rooms
        self._registry = Registry()
        self._observers: list[HubObserver] = []
        self._events = EventLog(logger)  # one line per slow consumer, within a budget
        self._listening = False
        self._stopped = False
        self.stats = ManagerStats()
        if broker is not None:
            self._channels = broker.channels
            self._handler = self._arrived  # one object, so that unlisten finds it

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect the broker (if any) and subscribe to what local connections need.

        Returns once subscribed, or after the broker's connect timeout if it is unreachable;
        then the hub serves its own clients and catches up when the broker returns.
        """
        if self.broker is None or self._listening:
            return
        if self._stopped:
            raise RuntimeError(
                "this hub's broker was stopped and cannot start again: make a new one"
            )
        self._listening = True
        self.broker.listen(self._channels.broadcast, self._handler)
        await self.broker.initialize()

    async def stop(self) -> None:
        """Disconnect the broker.  Local connections stay (see ``close_all``)."""
        if self.broker is None:
            return
        self._stopped = True
        if self._listening:
            self._listening = False
            self.broker.unlisten(self._channels.broadcast, self._handler)
        await self.broker.close()

    @property
    def ready(self) -> bool:
        """True while deliveries reach every instance: always without a broker, else while
        the broker is connected and subscribed (readiness probes use it)."""
        return self.broker is None or self.broker.ready

    @property
    def broker_stats(self) -> BrokerStats | None:
        """The broker's counters, if there is a broker."""
        return None if self.broker is None else self.broker.stats

    def observe(self, observer: HubObserver) -> None:
        """Tell ``observer`` of every join, leave and departure from now on."""
        self._observers.append(observer)

    # ---------------------------------------------------------------- connections

    @property
    def active_connections(self) -> int:
        """Number of local connections."""
        return len(self._registry)

    @property
    def active_rooms(self) -> list[str]:
        """Rooms with at least one local member."""
        return list(self._registry.rooms())

    def get_connection(self, connection_id: str) -> Connection | None:
        """The local connection with this id, if any."""
        return self._registry.get(connection_id)

    def get_room_members(self, room: str) -> list[Connection]:
        """Local members of ``room`` (empty if the room does not exist here)."""
        return list(self._registry.room_members(room).values())

    def get_user_connections(self, user_id: str) -> list[Connection]:
        """Local connections of ``user_id``."""
        return list(self._registry.user_connections(user_id).values())

    def reaches(self, target: Target, target_id: str = "") -> bool:
        """Whether a delivery to ``target`` could reach anyone: a local member, or, with a
        broker, possibly one elsewhere.  Lets a caller skip encoding a frame nobody gets."""
        if self.broker is not None:
            return True
        if target is Target.ROOM:
            return bool(self._registry.room_members(target_id))
        if target is Target.USER:
            return bool(self._registry.user_connections(target_id))
        if target is Target.CONNECTION:
            return target_id in self._registry
        return bool(len(self._registry))

    def attach(self, connection: Connection) -> None:
        """Register a connection whose transport is set up; ``forget`` it when it ends.

        Raises:
            ConnectionStateError: a connection with this id is already registered.
        """
        first_of_user = self._registry.add(connection)
        if self.broker is not None:
            self.broker.listen(self._channels.connection(connection.connection_id), self._handler)
            if first_of_user:
                assert connection.user_id is not None
                self.broker.listen(self._channels.user(connection.user_id), self._handler)

    def forget(self, connection: Connection) -> bool:
        """Unregister ``connection`` if it still is (True if it was), and stop its transport's
        sending.  Closes nothing: the caller closed it, or the client is gone."""
        departure = self._registry.remove(connection.connection_id)
        if departure is None:
            return False
        connection.transport.detach()
        if self.broker is not None:
            self._unlisten_departure(departure)
        for observer in self._observers:
            observer.departed(connection)
        return True

    def _unlisten_departure(self, departure: Departure) -> None:
        assert self.broker is not None
        connection, channels = departure.connection, self._channels
        self.broker.unlisten(channels.connection(connection.connection_id), self._handler)
        for room in departure.emptied_rooms:
            self.broker.unlisten(channels.room(room), self._handler)
        if departure.user_gone:
            assert connection.user_id is not None
            self.broker.unlisten(channels.user(connection.user_id), self._handler)

    def close(self, connection: Connection, code: int, reason: str = "") -> None:
        """Start closing ``connection`` with ``code`` and forget it."""
        # Close before forgetting: forgetting detaches the transport, which ends its sending.
        connection.transport.close(code, reason)
        self.forget(connection)

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> int:
        """Close every local connection; returns how many."""
        connections = list(self._registry.connections())
        for connection in connections:
            self.close(connection, code, reason)
        return len(connections)

    # ---------------------------------------------------------------- rooms

    def check_id(self, what: str, value: object) -> str:
        """``value`` if it is a usable room or user id; ``InvalidIdentifier`` otherwise
        (see ``roomcast.identifiers``)."""
        return check_identifier(what, value, self._max_id_bytes)

    def can_open(self, room: str) -> bool:
        """Whether a join of ``room`` would be within ``max_rooms`` (it exists, or one more
        room fits)."""
        rooms = self._registry.rooms()
        return self._max_rooms is None or len(rooms) < self._max_rooms or room in rooms

    def join(self, connection: Connection, room: str) -> bool:
        """Add a registered connection to ``room``; False if it already was a member.

        Raises:
            InvalidIdentifier: ``room`` is not a usable room id.
            CapacityExceeded: ``room`` would be one room more than ``max_rooms``.
            ConnectionStateError: ``connection`` is not registered.
        """
        check_identifier("room", room, self._max_id_bytes)
        cap = self._max_rooms
        if cap is not None and room not in connection.rooms:
            rooms = self._registry.rooms()
            if len(rooms) >= cap and room not in rooms:
                raise CapacityExceeded(f"this server holds its maximum of {cap} rooms")
        change = self._registry.join(connection.connection_id, room)
        if change is RoomChange.UNCHANGED:
            return False
        if change is RoomChange.OPENED and self.broker is not None:
            self.broker.listen(self._channels.room(room), self._handler)
        for observer in self._observers:
            observer.joined(connection, room)
        return True

    def leave(self, connection: Connection, room: str) -> bool:
        """Remove a registered connection from ``room``; False if it was not a member."""
        change = self._registry.leave(connection.connection_id, room)
        if change is RoomChange.UNCHANGED:
            return False
        if change is RoomChange.EMPTIED and self.broker is not None:
            self.broker.unlisten(self._channels.room(room), self._handler)
        for observer in self._observers:
            observer.left(connection, room)
        return True

    # ---------------------------------------------------------------- delivery

    def deliver(
        self,
        target: Target,
        target_id: str,
        frame: Frame,
        exclude: Collection[str] = (),
        sender: Connection | None = None,
    ) -> int:
        """Hand ``frame`` to the local connections ``target`` names, but the connection ids in
        ``exclude`` (wherever they are) and ``sender`` (a local connection: nothing about it
        goes to the other instances); with a broker, publish it for every other instance too.

        Returns how many local connections took it (other instances deliver on their own).
        """
        delivered = self._fan_out(frame, self._local(target, target_id, exclude, sender))
        if self.broker is not None:
            self.broker.publish(
                target, target_id, frame.payload, binary=frame.binary, exclude=exclude
            )
        return delivered

    def deliver_to(self, connection: Connection, frame: Frame) -> bool:
        """Hand ``frame`` to one local connection; True if it took it."""
        return self._fan_out(frame, (connection,)) == 1

    def close_target(
        self,
        target: Target,
        target_id: str,
        reason: str = "",
        exclude: Collection[str] = (),
        code: int = CloseCode.NORMAL,
    ) -> int:
        """Close the connections ``target`` names, here and (with a broker) elsewhere; returns
        how many local ones."""
        local = self._local(target, target_id, exclude)
        for connection in local:
            self.close(connection, code, reason)
        if self.broker is not None:
            self.broker.publish(target, target_id, reason.encode(), close=True, exclude=exclude)
        return len(local)

    def _local(
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

    def _fan_out(self, frame: Frame, targets: Collection[Connection]) -> int:
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
            self._handle_refused(refused)
        self.stats.frames_sent += delivered
        self.stats.bytes_sent += delivered * frame.size
        return delivered

    def _handle_refused(self, refused: list[tuple[Connection, Delivery]]) -> None:
        for connection, result in refused:
            if result is Delivery.CLOSED:
                if self.forget(connection):
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
                self.close(connection, CloseCode.SLOW_CONSUMER, "slow consumer")

    # ---------------------------------------------------------------- from other instances

    def _arrived(self, envelope: Envelope) -> None:
        """Fan an envelope from another instance out to the local connections it targets."""
        assert self.broker is not None
        if envelope.origin == self.broker.instance_id:
            return  # delivered locally before it was published
        targets = self._local(envelope.target, envelope.target_id, envelope.exclude)
        if not targets:
            return
        if envelope.close:
            reason = envelope.payload.decode()
            for connection in targets:
                self.close(connection, CloseCode.NORMAL, reason)
            return
        self._fan_out(Frame.from_payload(envelope.payload, envelope.binary), targets)
