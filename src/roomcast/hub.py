"""The hub: who is connected where, and the fan-out that reaches them, here and elsewhere.

One ``Hub`` owns the local registry (connections by id, room and user), hands each encoded
frame to every recipient's transport in one synchronous loop, and, given a broker, spreads the
same payload bytes to the other instances and fans out theirs.  The FastAPI managers turn
their calls into hub calls; ``roomcast serve`` uses it directly.

The data path is three hops with no await: ``deliver`` -> ``Transport.send`` -> the
transport's own flush (``roomcast.fanout``).  With a broker, the hub listens where it has
local members (``roomcast.interest``); rooms with history go through ``roomcast.history``.
Whoever follows membership (presence, the faces) registers a ``HubObserver``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from roomcast.brokers.base import Broker, BrokerStats
from roomcast.brokers.envelope import Envelope, Target
from roomcast.connection import Connection, ManagerStats, OverflowPolicy
from roomcast.errors import CapacityExceeded, CloseCode
from roomcast.fanout import Fanout
from roomcast.frame import Frame
from roomcast.history.contract import Joined, JoinReply, PublishReply
from roomcast.history.positions import HistoryLimits, HistoryRule, Page, Position
from roomcast.history.rooms import HubMembers, RoomHistory
from roomcast.identifiers import DEFAULT_MAX_ID_BYTES, check_identifier
from roomcast.interest import Interest
from roomcast.logbudget import EventLog
from roomcast.registry import HubObserver, Registry, RoomChange

__all__ = ["Hub", "HubObserver", "ManagerStats", "OverflowPolicy"]

logger = logging.getLogger("roomcast")


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
        history: Which rooms keep a history of their messages, and how much (see
            ``roomcast.history``); None: no room does.  Without a broker the history is
            kept in this process (within ``history_max_bytes``); with one, by the broker.
    """

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        overflow: OverflowPolicy = OverflowPolicy.CLOSE,
        send_buffer_limit: int = 1 << 20,
        max_id_bytes: int = DEFAULT_MAX_ID_BYTES,
        max_rooms: int | None = None,
        history: HistoryRule | None = None,
        history_max_bytes: int = 64 << 20,
    ) -> None:
        self.broker = broker
        self._max_id_bytes = max_id_bytes
        self._max_rooms = max_rooms
        self._registry = Registry()
        self._observers: list[HubObserver] = []
        self._events = EventLog(logger)  # one line per slow consumer, within a budget
        self._listening = False
        self._stopped = False
        self.stats = ManagerStats()
        self._fanout = Fanout(  # (the fan-out loop and what to do with refusals)
            self._registry,
            self.stats,
            overflow,
            send_buffer_limit,
            self._events,
            self.forget,
            self.close,
        )
        self._interest: Interest | None = None
        if broker is not None:
            self._interest = Interest(broker, self._arrived, self._registry, self._dropped)
        self.history: RoomHistory | None = None
        """The rooms' histories (None: no room keeps one)."""
        if history is not None:
            members = HubMembers(self._fanout, self._registry, self._enroll, self._interest)
            self.history = RoomHistory(history, members, broker, self._events, history_max_bytes)
        self._shared = None if self.history is None else self.history.shared

    def _dropped(self, room: str) -> None:
        if self._shared is not None:
            self._shared.dropped(room)

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
        assert self._interest is not None
        self._interest.start()
        await self.broker.initialize()

    async def stop(self) -> None:
        """Stop the history's work and disconnect the broker (local connections stay)."""
        if self.history is not None:
            await self.history.close()  # (joins replaying in parts, reads, timers)
        if self.broker is None:
            return
        self._stopped = True
        if self._listening:
            self._listening = False
            assert self._interest is not None
            self._interest.stop()
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

    def room_size(self, room: str) -> int:
        """How many local members ``room`` has (counted, not listed: a cap check per join)."""
        return len(self._registry.room_members(room))

    def get_user_connections(self, user_id: str) -> list[Connection]:
        """Local connections of ``user_id``."""
        return list(self._registry.user_connections(user_id).values())

    def reaches(self, target: Target, target_id: str = "") -> bool:
        """Whether a delivery to ``target`` could reach anyone: a local member, or, with a
        broker, possibly one elsewhere.  Lets a caller skip encoding a frame nobody gets."""
        if self.broker is not None:
            return True
        if target is Target.ROOM:  # (a room with history keeps it even for nobody)
            return self.room_size(target_id) > 0 or self.history_limits(target_id) is not None
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
        if self._interest is not None:
            self._interest.attached(connection, first_of_user)

    def forget(self, connection: Connection) -> bool:
        """Unregister ``connection`` if it still is (True if it was), and stop its transport's
        sending.  Closes nothing: the caller closed it, or the client is gone."""
        if self.history is not None:
            self.history.cancel(connection)
        departure = self._registry.remove(connection.connection_id)
        if departure is None:
            return False
        connection.transport.detach()
        if self._interest is not None:
            self._interest.departed(departure)
        for observer in self._observers:
            observer.departed(connection)
        return True

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
        """``value`` if usable as a room or user id; raises ``InvalidIdentifier`` otherwise."""
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
        return self._enroll(connection, room)

    def _enroll(self, connection: Connection, room: str) -> bool:
        change = self._registry.join(connection.connection_id, room)
        if change is RoomChange.UNCHANGED:
            return False
        if change is RoomChange.OPENED and self._interest is not None:
            self._interest.opened(room)
        for observer in self._observers:
            observer.joined(connection, room)
        return True

    def leave(self, connection: Connection, room: str) -> bool:
        """Remove a registered connection from ``room``; False if it was not a member."""
        if self.history is not None and self.history.cancel(connection, room):
            return True  # (a join under way: it never became a member)
        change = self._registry.leave(connection.connection_id, room)
        if change is RoomChange.UNCHANGED:
            return False
        if change is RoomChange.EMPTIED and self._interest is not None:
            self._interest.emptied(room)
        for observer in self._observers:
            observer.left(connection, room)
        return True

    # ---------------------------------------------------------------- history

    def history_limits(self, room: str) -> HistoryLimits | None:
        """How much history ``room`` keeps (None: none)."""
        return None if self.history is None else self.history.rule(room)

    def publish(
        self,
        room: str,
        frame: Frame,
        *,
        exclude: Collection[str] = (),
        sender: Connection | None = None,
        done: PublishReply | None = None,
    ) -> int:
        """Deliver ``frame`` to ``room``'s members but ``sender`` and ``exclude``, here and
        elsewhere; in a room with history, stored and positioned first (``done`` hears the
        position, or why it failed).  Returns how many local connections took it now (with a
        broker, a room with history is served when the message comes back: 0)."""
        limits = self.history_limits(room)
        if limits is None or frame.binary or not _json_object(frame.payload):
            delivered = self.deliver(Target.ROOM, room, frame, exclude, sender, plain=True)
            if done is not None:
                done(None, None)
            return delivered
        assert self.history is not None
        if sender is not None:
            exclude = (*exclude, sender.connection_id)
        return self.history.publish(room, limits, frame, exclude, done)

    def join_at(
        self, connection: Connection, room: str, since: Position | None, reply: JoinReply
    ) -> None:
        """Join ``room``, replaying what was missed after ``since`` first if the room keeps
        history; ``reply`` hears how it went (at once, or once the history was read).

        Raises:
            InvalidIdentifier, CapacityExceeded, ConnectionStateError: as ``join``.
        """
        limits = self.history_limits(room)
        if limits is None or room in connection.rooms:
            self.join(connection, room)
            if limits is None or self.history is None:
                reply(Joined(None, recovered=False))
            else:
                self.history.already_in(room, limits, reply)
            return
        check_identifier("room", room, self._max_id_bytes)
        if not self.can_open(room):
            raise CapacityExceeded(f"this server holds its maximum of {self._max_rooms} rooms")
        assert self.history is not None
        self.history.join(connection, room, limits, since, reply)

    async def read_history(self, room: str, since: Position | None, limit: int) -> Page:
        """See ``RoomHistory.read`` (LookupError if no room keeps history)."""
        if self.history is None:
            raise LookupError("no room keeps history here")
        return await self.history.read(room, since, limit)

    def joining(self, connection: Connection) -> int:
        """Joins of ``connection`` waiting for a room's history."""
        return 0 if self.history is None else self.history.joining(connection)

    # ---------------------------------------------------------------- delivery

    def deliver(
        self,
        target: Target,
        target_id: str,
        frame: Frame,
        exclude: Collection[str] = (),
        sender: Connection | None = None,
        *,
        plain: bool = False,
    ) -> int:
        """Hand ``frame`` to the local connections ``target`` names, but the connection ids in
        ``exclude`` (wherever they are) and ``sender`` (a local connection: nothing about it
        goes to the other instances); with a broker, publish it for every other instance too.
        A room with history gets it as ``publish`` would deliver it (unless ``plain``).
        Returns how many local connections took it (other instances deliver on their own).
        """
        if target is Target.ROOM and self.history is not None and not plain:
            return self.publish(target_id, frame, exclude=exclude, sender=sender)
        delivered = self._fanout.send(frame, self._fanout.local(target, target_id, exclude, sender))
        if self.broker is not None:
            self.broker.publish(
                target, target_id, frame.payload, binary=frame.binary, exclude=exclude
            )
        return delivered

    def deliver_to(self, connection: Connection, frame: Frame) -> bool:
        """Hand ``frame`` to one local connection; True if it took it."""
        return self._fanout.send(frame, (connection,)) == 1

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
        local = self._fanout.local(target, target_id, exclude)
        for connection in local:
            self.close(connection, code, reason)
        if self.broker is not None:
            self.broker.publish(target, target_id, reason.encode(), close=True, exclude=exclude)
        return len(local)

    # ---------------------------------------------------------------- from other instances

    def _arrived(self, envelope: Envelope) -> None:
        """Fan an envelope from another instance out to the local connections it targets."""
        assert self.broker is not None
        if envelope.position is not None:
            if self.history is not None:
                self.history.arrived(envelope)  # (its own messages too: in the room's order)
            return
        if envelope.origin != self.broker.instance_id:  # (its own: delivered before)
            self._fanout.arrived(envelope)


def _json_object(payload: bytes) -> bool:
    return payload[:1] == b"{" and payload[-1:] == b"}"
