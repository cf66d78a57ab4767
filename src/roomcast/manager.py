"""ConnectionManager: the seed's single-instance API over the registry and the fan-out engine.

Each send method encodes its payload once into a ``Frame`` and hands that same object to every
recipient's transport in one synchronous loop.  Transports never wait: a client whose bounded
buffer is full is dropped (or skipped, by policy) and counted, so one slow reader cannot delay
anyone else.  The methods are ``async`` because the seed's API is, and so that a distributed
subclass can publish to a broker after delivering locally.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
from collections.abc import Callable, Collection, Iterable
from typing import Any

from roomcast.asgi import AsgiTransport, AsgiWebSocket
from roomcast.connection import Connection, Delivery
from roomcast.errors import CapacityExceeded, CloseCode, ConnectionStateError
from roomcast.frame import Frame, encode
from roomcast.heartbeat import HeartbeatManager
from roomcast.identifiers import DEFAULT_MAX_ID_BYTES, check_identifier
from roomcast.logbudget import EventLog
from roomcast.messages import MessageType, PingMessage, preview
from roomcast.registry import Departure, Registry, RoomChange
from roomcast.tasks import TaskSet

__all__ = ["ConnectionManager", "ManagerStats", "OverflowPolicy"]

logger = logging.getLogger("roomcast")

DEFAULT_SEND_BUFFER_LIMIT = 1 << 20
"""1 MiB per connection: room for a burst, small enough that 50k slow clients stay bounded."""


class OverflowPolicy(enum.Enum):
    """What happens to a connection whose send buffer cannot take another frame."""

    CLOSE = "close"
    """Close it with ``CloseCode.SLOW_CONSUMER`` (4008); it reconnects and resyncs."""
    DROP = "drop"
    """Keep it, and drop the frames that do not fit (counted in ``dropped_frames``)."""


@dataclasses.dataclass(slots=True)
class ManagerStats:
    """Counters since the manager was created; cheap enough to update on every send."""

    frames_sent: int = 0
    """Frames accepted by a connection's transport (one broadcast to N clients counts N)."""
    bytes_sent: int = 0
    """Payload bytes of those frames."""
    slow_consumer_closes: int = 0
    """Connections closed because their send buffer overflowed."""
    unabortable_closes: int = 0
    """Closes (of any kind) not written within ``close_timeout`` to a socket that roomcast
    cannot abort: an ASGI server other than uvicorn, or a middleware wrapping ``send``.  Such
    a socket stays open, holding its buffers, until the server's own timeouts or the client
    end it."""
    dropped_frames: int = 0
    """Frames not delivered to a connection because its buffer was full (DROP policy)."""
    lost_connections: int = 0
    """Connections found gone while sending (client vanished before it was unregistered)."""
    heartbeat_timeouts: int = 0
    """Connections closed because they stopped answering pings (``ping_interval``)."""


class ConnectionManager:
    """Registry of WebSocket connections with rooms, users and non-blocking fan-out.

    Args:
        send_buffer_limit: Most bytes roomcast buffers per connection while its socket is
            applying back-pressure.  Set it above your largest message.
        overflow: What to do with a connection that exceeds ``send_buffer_limit``.
        close_timeout: Seconds a close may take (close frame written and answered); then the
            socket is aborted, where the ASGI server allows it (see ``roomcast.asgi``).
        max_id_length: Longest accepted room or user id, in UTF-8 bytes.
        direct_writes: Under uvicorn's default WebSocket implementation, write each frame's
            bytes (built once) straight to the socket instead of one ASGI event per
            recipient; see ``roomcast.uvicorn_direct``.  False forces the ASGI path.
        ping_interval: Send every connection an application-level ``PingMessage`` this
            often (seconds); a connection silent (no pong, no message) for ``ping_interval +
            pong_timeout`` is closed with 4002 and unregistered.  None: no heartbeat.
        pong_timeout: See ``ping_interval``.
        max_rooms: Most rooms with members in this process at once; a join that would open
            one more raises ``CapacityExceeded``.  None: no limit (each room costs a few
            hundred bytes plus its name; ``roomcast serve`` caps them by default).
    """

    def __init__(
        self,
        *,
        send_buffer_limit: int = DEFAULT_SEND_BUFFER_LIMIT,
        overflow: OverflowPolicy = OverflowPolicy.CLOSE,
        close_timeout: float = 5.0,
        max_id_length: int = DEFAULT_MAX_ID_BYTES,
        direct_writes: bool = True,
        ping_interval: float | None = None,
        pong_timeout: float = 20.0,
        max_rooms: int | None = None,
    ) -> None:
        if send_buffer_limit <= 0:
            raise ValueError("send_buffer_limit must be positive")
        self._send_buffer_limit = send_buffer_limit
        self._overflow = overflow
        self._close_timeout = close_timeout
        self._max_id_length = max_id_length
        self._max_rooms = max_rooms
        self._events = EventLog(logger)  # one line per slow consumer, within a budget
        self._direct_writes = direct_writes
        self._registry = Registry()
        # Starlette's WebSocket is a Mapping and so unhashable: index it by identity.  The
        # Connection holds the websocket, so its id() cannot be reused while registered.
        self._by_socket: dict[int, Connection] = {}
        # Endpoint task and the done-callback that unregisters the connection when it ends.
        self._bound_tasks: dict[str, tuple[asyncio.Task[Any], Callable[..., None]]] = {}
        self._tasks = TaskSet()
        self.stats = ManagerStats()
        self.on_departure: Callable[[Connection], None] | None = None
        """Called with every connection unregistered, whichever way it went (disconnect,
        its endpoint ending, a failed send, a slow-consumer close); its ``rooms`` still
        say where it was."""
        self.heartbeat: HeartbeatManager | None = None
        """Pings every connection (application-level PingMessage) when ``ping_interval`` is
        set; see ``connect``."""
        if ping_interval:
            self.heartbeat = HeartbeatManager(
                ping_interval, pong_timeout, send_ping=self._send_app_ping
            )

    # ---------------------------------------------------------------- properties

    @property
    def active_connections(self) -> int:
        """Number of registered connections."""
        return len(self._registry)

    @property
    def active_rooms(self) -> list[str]:
        """Rooms with at least one member."""
        return list(self._registry.rooms())

    # ---------------------------------------------------------------- lifecycle

    async def connect(
        self,
        websocket: AsgiWebSocket,
        room: str | None = None,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        subprotocol: str | None = None,
    ) -> Connection:
        """Accept ``websocket`` (unless already accepted; selecting ``subprotocol``, if
        given) and register it.

        The connection is tied to the task that calls ``connect`` (the ASGI endpoint's): when
        that task ends, however it ends, the connection is unregistered.  So an endpoint that
        dies of an exception the application did not catch leaks nothing.

        Raises:
            InvalidIdentifier: ``room`` or ``user_id`` is not a usable id (``check_id``).
            ConnectionStateError: this websocket is already registered.
            CapacityExceeded: ``room`` would be one room more than ``max_rooms`` (the
                connection stays registered, in no room).
        """
        if room is not None:
            self.check_id("room", room)
        if user_id is not None:
            self.check_id("user_id", user_id)
        if id(websocket) in self._by_socket:
            raise ConnectionStateError("this websocket is already connected")
        connection = Connection(websocket, user_id, metadata=dict(metadata or {}))
        transport = AsgiTransport(
            websocket,
            tasks=self._tasks,
            on_lost=functools.partial(self._lost, connection),
            limit=self._send_buffer_limit,
            close_timeout=self._close_timeout,
            direct_writes=self._direct_writes,
            on_unabortable=self._unabortable,
        )
        connection.transport = transport
        await transport.open(subprotocol)
        if id(websocket) in self._by_socket:  # connected concurrently while accepting
            raise ConnectionStateError("this websocket is already connected")
        self._register(connection)
        if room is not None:
            self._join(connection, room)
        if self.heartbeat is not None:
            self.heartbeat.start_heartbeat(connection.connection_id, websocket, self._silent)
            _watch_incoming(websocket, functools.partial(self._heard, connection.connection_id))
        task = asyncio.current_task()
        if task is not None:
            callback = functools.partial(self._endpoint_done, connection)
            self._bound_tasks[connection.connection_id] = (task, callback)
            task.add_done_callback(callback)
        return connection

    def _register(self, connection: Connection) -> None:
        first_of_user = self._registry.add(connection)
        self._by_socket[id(connection.websocket)] = connection
        self._on_added(connection, first_of_user)

    def attach(self, connection: Connection) -> None:
        """Register a connection whose transport is already set up (e.g. by the native server).

        Unlike ``connect`` it neither accepts a socket nor ties the connection to a task: the
        caller reports the end of the connection with ``forget``.

        Raises:
            ConnectionStateError: the connection or its websocket is already registered.
        """
        if id(connection.websocket) in self._by_socket:
            raise ConnectionStateError("this websocket is already connected")
        self._register(connection)

    def forget(self, connection: Connection) -> bool:
        """Unregister ``connection`` if it still is; True if it was.  Closes nothing."""
        return self._forget(connection)

    def disconnect(self, websocket: Any) -> Connection | None:
        """Unregister ``websocket``; returns its connection, or None if it was not registered.

        Does not close the socket (call it after the client has gone, as in the seed's
        example); anything still buffered for the client is dropped.
        """
        connection = self._by_socket.get(id(websocket))
        if connection is None:
            return None
        self._forget(connection)
        return connection

    def _forget(self, connection: Connection) -> bool:
        """Unregister ``connection`` if it still is; True if it was."""
        departure = self._registry.remove(connection.connection_id)
        if departure is None:
            return False
        del self._by_socket[id(connection.websocket)]
        bound = self._bound_tasks.pop(connection.connection_id, None)
        if bound is not None:
            task, callback = bound
            task.remove_done_callback(callback)
        connection.transport.detach()
        if self.heartbeat is not None:
            self.heartbeat.stop_heartbeat(connection.connection_id)
        self._on_removed(departure)
        if self.on_departure is not None:
            self.on_departure(connection)
        return True

    def _endpoint_done(self, connection: Connection, _: asyncio.Task[Any]) -> None:
        self._bound_tasks.pop(connection.connection_id, None)
        self._forget(connection)

    def _lost(self, connection: Connection) -> None:
        if self._forget(connection):
            self.stats.lost_connections += 1

    def _unabortable(self) -> None:
        self.stats.unabortable_closes += 1

    # ---------------------------------------------------------------- heartbeat

    def _send_app_ping(self, connection_id: str, websocket: Any, message: PingMessage) -> None:
        connection = self._registry.get(connection_id)
        if connection is not None:
            self._fan_out(encode(message), (connection,))

    def _heard(self, connection_id: str, is_pong: bool) -> None:
        assert self.heartbeat is not None
        self.heartbeat.record_pong(connection_id)

    def _silent(self, connection_id: str) -> None:
        connection = self._registry.get(connection_id)
        if connection is not None:
            self.stats.heartbeat_timeouts += 1
            self._close(connection, CloseCode.HEARTBEAT_TIMEOUT, "no pong")

    async def close_all(
        self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        """Close every connection with ``code`` and wait for the closes (bounded by
        ``close_timeout``); then cancel whatever background work is left."""
        if self.heartbeat is not None:
            await self.heartbeat.close()
        for connection in list(self._registry):
            self._close(connection, code, reason)
        await self._tasks.wait(within=self._close_timeout + 1)
        await self._tasks.cancel_all()

    def _close(self, connection: Connection, code: int, reason: str) -> None:
        # Close before forgetting: forgetting detaches the transport, which ends its sending.
        connection.transport.close(code, reason)
        self._forget(connection)

    # ---------------------------------------------------------------- rooms

    async def join_room(self, websocket: Any, room: str) -> bool:
        """Add the connection to ``room``; False if it was already a member or not connected."""
        self.check_id("room", room)
        connection = self._by_socket.get(id(websocket))
        return connection is not None and self.join(connection, room)

    async def leave_room(self, websocket: Any, room: str) -> bool:
        """Remove the connection from ``room``; False if it was not a member or not connected."""
        connection = self._by_socket.get(id(websocket))
        return connection is not None and self.leave(connection, room)

    def join(self, connection: Connection, room: str) -> bool:
        """Synchronous ``join_room`` for a registered connection (for transports and tests).

        Raises:
            InvalidIdentifier: ``room`` is not a usable room id.
            CapacityExceeded: ``room`` would be one room more than ``max_rooms``.
            ConnectionStateError: ``connection`` is not registered.
        """
        self.check_id("room", room)
        return self._join(connection, room)

    def can_open(self, room: str) -> bool:
        """Whether a join of ``room`` would be within ``max_rooms`` (it exists, or one more
        room fits)."""
        rooms = self._registry.rooms()
        return self._max_rooms is None or len(rooms) < self._max_rooms or room in rooms

    def _join(self, connection: Connection, room: str) -> bool:
        cap = self._max_rooms
        if cap is not None and room not in connection.rooms:
            rooms = self._registry.rooms()
            if len(rooms) >= cap and room not in rooms:
                raise CapacityExceeded(f"this server holds its maximum of {cap} rooms")
        change = self._registry.join(connection.connection_id, room)
        if change is RoomChange.OPENED:
            self._on_room_opened(room)
        return change is not RoomChange.UNCHANGED

    def leave(self, connection: Connection, room: str) -> bool:
        """Synchronous ``leave_room`` for a registered connection."""
        change = self._registry.leave(connection.connection_id, room)
        if change is RoomChange.EMPTIED:
            self._on_room_emptied(room)
        return change is not RoomChange.UNCHANGED

    # Interest hooks: the registry's edge transitions, for a subclass that must follow them
    # (the distributed manager subscribes to a room's channel while the room exists here).

    def _on_added(self, connection: Connection, first_of_user: bool) -> None:
        """``connection`` was registered (``first_of_user``: its user's first one here)."""

    def _on_removed(self, departure: Departure) -> None:
        """A connection was unregistered; ``departure`` says which rooms and user it ended."""

    def _on_room_opened(self, room: str) -> None:
        """``room`` got its first local member."""

    def _on_room_emptied(self, room: str) -> None:
        """``room`` lost its last local member by a leave (departures report their own)."""

    def get_room_members(self, room: str) -> list[Connection]:
        """Connections in ``room`` (empty if the room does not exist)."""
        return list(self._registry.room_members(room).values())

    def has_listeners(self, room: str) -> bool:
        """Whether a send to ``room`` could reach anyone: a local member, or (distributed
        managers) possibly one elsewhere.  Lets a caller skip encoding a frame nobody gets."""
        return bool(self._registry.room_members(room))

    def get_user_connections(self, user_id: str) -> list[Connection]:
        """All connections of ``user_id`` (multi-device)."""
        return list(self._registry.user_connections(user_id).values())

    def get_connection(self, connection_id: str) -> Connection | None:
        """The connection with this id, if registered here."""
        return self._registry.get(connection_id)

    # ---------------------------------------------------------------- sending

    async def send_personal(
        self, websocket: Any, message: Any, type: MessageType | None = None
    ) -> bool:
        """Send to one connection; False if the websocket is not registered or is closing."""
        connection = self._by_socket.get(id(websocket))
        if connection is None:
            return False
        return self._deliver(message, type, (connection,)) == 1

    async def send_to_user(
        self, user_id: str, message: Any, type: MessageType | None = None
    ) -> int:
        """Send to every connection of ``user_id``; returns how many took the message."""
        devices = self._registry.user_connections(user_id)
        if not devices:
            return 0
        return self._deliver(message, type, list(devices.values()))

    async def broadcast(
        self,
        message: Any,
        type: MessageType | None = None,
        exclude: Collection[str] | None = None,
    ) -> int:
        """Send to every connection except the ids in ``exclude``; returns how many took it."""
        return self._deliver(message, type, self._select(self._registry.connections(), exclude))

    async def broadcast_to_room(
        self,
        room: str,
        message: Any,
        type: MessageType | None = None,
        exclude: Collection[str] | None = None,
    ) -> int:
        """Send to the members of ``room`` except the ids in ``exclude``; returns how many."""
        members = self._registry.room_members(room)
        if not members:
            return 0
        if exclude:
            targets = [conn for cid, conn in members.items() if cid not in exclude]
        else:
            targets = list(members.values())
        return self._deliver(message, type, targets)

    @staticmethod
    def _select(
        connections: Iterable[Connection], exclude: Collection[str] | None
    ) -> list[Connection]:
        if exclude:
            return [conn for conn in connections if conn.connection_id not in exclude]
        return list(connections)

    def _deliver(
        self, message: Any, kind: MessageType | None, targets: Collection[Connection]
    ) -> int:
        """Encode once, then fan out (or close the targets, for ``MessageType.CLOSE``)."""
        if kind is MessageType.CLOSE:
            reason = message if isinstance(message, str) else ""
            for connection in targets:
                self._close(connection, CloseCode.NORMAL, reason)
            return len(targets)
        return self._fan_out(encode(message, kind), targets)

    def deliver_to(self, connection: Connection, frame: Frame) -> bool:
        """Hand an encoded frame to one registered connection; True if it took it."""
        return self._fan_out(frame, (connection,)) == 1

    def deliver_to_room(self, room: str, frame: Frame, exclude: Connection | None = None) -> int:
        """Fan an encoded frame out to ``room``'s members but ``exclude``; returns how many."""
        members = self._registry.room_members(room)
        if exclude is not None and exclude.connection_id in members:
            targets = [conn for conn in members.values() if conn is not exclude]
        else:
            targets = list(members.values())
        return self._fan_out(frame, targets) if targets else 0

    def deliver_to_user(self, user_id: str, frame: Frame) -> int:
        """Fan an encoded frame out to every connection of ``user_id``; returns how many."""
        devices = self._registry.user_connections(user_id)
        return self._fan_out(frame, list(devices.values())) if devices else 0

    def _fan_out(self, frame: Frame, targets: Collection[Connection]) -> int:
        """Hand ``frame`` to every target, then deal with those that could not take it.

        ``targets`` is a snapshot: failures are handled after the loop, so the registry never
        changes while it is being walked.
        """
        accepted = Delivery.ACCEPTED
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
                self._lost(connection)
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

    # ---------------------------------------------------------------- helpers

    def check_id(self, what: str, value: object) -> str:
        """``value`` if it is a usable room or user id; ``InvalidIdentifier`` otherwise
        (see ``roomcast.identifiers``)."""
        return check_identifier(what, value, self._max_id_length)


_PONG_PREFIXES = ('{"type":"pong"', '{"type": "pong"')


def _watch_incoming(websocket: Any, heard: Callable[[bool], None]) -> None:
    """Let the heartbeat see what the client sends, without the application's help.

    Starlette's WebSocket reads every event through its ``_receive`` callable; wrapping it
    means any message from the client counts as a sign of life, and application-level pongs
    (``{"type": "pong", ...}``) are consumed here instead of reaching the endpoint's
    ``receive_text()``.  Without that attribute (another framework) the application reports
    pongs itself with ``heartbeat.record_pong``.
    """
    receive = getattr(websocket, "_receive", None)
    if receive is None:
        return

    async def receive_and_listen() -> Any:
        while True:
            event = await receive()
            if event.get("type") != "websocket.receive":
                return event
            text = event.get("text")
            is_pong = isinstance(text, str) and text.startswith(_PONG_PREFIXES)
            heard(is_pong)
            if not is_pong:
                return event

    websocket._receive = receive_and_listen
