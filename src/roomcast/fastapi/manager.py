"""ConnectionManager: the manager API for FastAPI/Starlette applications, over a ``Hub``.

The manager is a face: it accepts ASGI websockets, ties each connection to its endpoint's task,
keeps the index by websocket that the manager API's calls need (they name connections by their
websocket), runs the optional application-level heartbeat, and turns each send into one hub
delivery.  Registry, fan-out and the broker are the hub's (``roomcast.hub``).  The methods are
``async`` because the documented API is.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from typing import Any

from roomcast.brokers.envelope import Target
from roomcast.connection import Connection
from roomcast.errors import CloseCode, ConnectionStateError
from roomcast.events.schema import LifecycleEvent
from roomcast.fastapi.asgi import AsgiTransport, AsgiWebSocket
from roomcast.fastapi.incoming import watch_incoming
from roomcast.fastapi.lifecycle import EventCallback, LifecycleSettings, ManagerLifecycle, require
from roomcast.frame import encode
from roomcast.heartbeat import HeartbeatManager
from roomcast.history.contract import Joined
from roomcast.history.positions import HistoryLimits, HistoryRule, Page, Position, history_rule
from roomcast.hub import Hub, ManagerStats, OverflowPolicy
from roomcast.identifiers import DEFAULT_MAX_ID_BYTES
from roomcast.messages import MessageType, PingMessage
from roomcast.tasks import TaskSet

__all__ = ["ConnectionManager", "ManagerStats", "OverflowPolicy"]

logger = logging.getLogger("roomcast")

DEFAULT_SEND_BUFFER_LIMIT = 1 << 20
"""1 MiB per connection: room for a burst, small enough that 50k slow clients stay bounded."""


class ConnectionManager:
    """WebSocket connections with rooms, users and non-blocking fan-out (one process).

    Args:
        send_buffer_limit: Most bytes roomcast buffers per connection while its socket is
            applying back-pressure.  Set it above your largest message.
        overflow: What to do with a connection that exceeds ``send_buffer_limit``.
        close_timeout: Seconds a close may take (close frame written and answered); then the
            socket is aborted, where the ASGI server allows it (see ``roomcast.fastapi.asgi``).
        max_id_length: Longest accepted room or user id, in UTF-8 bytes.
        direct_writes: Under uvicorn's default WebSocket implementation, write each frame's
            bytes (built once) straight to the socket instead of one ASGI event per
            recipient; see ``roomcast.fastapi.uvicorn_direct``.  False forces the ASGI path.
        ping_interval: Send every connection an application-level ``PingMessage`` this
            often (seconds); a connection silent (no pong, no message) for ``ping_interval +
            pong_timeout`` is closed with 4002 and unregistered.  None: no heartbeat.
        pong_timeout: See ``ping_interval``.
        max_rooms: Most rooms with members in this process at once; a join that would open
            one more raises ``CapacityExceeded``.  None: no limit (each room costs a few
            hundred bytes plus its name; ``roomcast serve`` caps them by default).
        history: Which rooms keep a history (``HistoryLimits`` for every room, or a rule
            ``room -> HistoryLimits | None``); their messages then carry ``offset`` and
            ``epoch`` when they are JSON objects, and ``join_room_since`` can replay what a
            client missed.  None (the default): no history, messages exactly as given.
        hub: The hub to serve (``DistributedWebSocketManager`` passes one with a broker); a
            new one from the options above if omitted.
        lifecycle: Turns lifecycle events on (``events()``, ``on_event``; kept in this
            process here, in Redis by the distributed managers).  None: off, nothing runs.
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
        history: HistoryLimits | HistoryRule | None = None,
        hub: Hub | None = None,
        lifecycle: LifecycleSettings | None = None,
    ) -> None:
        if send_buffer_limit <= 0:
            raise ValueError("send_buffer_limit must be positive")
        self.hub = hub or Hub(
            overflow=overflow,
            send_buffer_limit=send_buffer_limit,
            max_id_bytes=max_id_length,
            max_rooms=max_rooms,
            history=history_rule(history),
        )
        """Registry, fan-out and broker under this manager."""
        self.hub.observe(self)
        self.lifecycle = (
            None if lifecycle is None else ManagerLifecycle.in_memory(lifecycle, self.hub)
        )
        """The lifecycle events' machinery (``roomcast.fastapi.lifecycle``); None when off."""
        self._send_buffer_limit = send_buffer_limit
        self._close_timeout = close_timeout
        self._direct_writes = direct_writes
        # Starlette's WebSocket is a Mapping and so unhashable: index it by identity.  The
        # Connection holds the websocket, so its id() cannot be reused while registered.
        self._by_socket: dict[int, Connection] = {}
        # Endpoint task and the done-callback that unregisters the connection when it ends.
        self._bound_tasks: dict[str, tuple[asyncio.Task[Any], Callable[..., None]]] = {}
        self._tasks = TaskSet()
        self.heartbeat: HeartbeatManager | None = None
        """Pings every connection (application-level PingMessage) when ``ping_interval`` is
        set; see ``connect``."""
        if ping_interval:
            self.heartbeat = HeartbeatManager(
                ping_interval, pong_timeout, send_ping=self._send_app_ping
            )

    # ---------------------------------------------------------------- properties

    @property
    def stats(self) -> ManagerStats:
        """Frames sent, slow consumers closed... (the hub's counters)."""
        return self.hub.stats

    @property
    def active_connections(self) -> int:
        """Number of registered connections."""
        return self.hub.active_connections

    @property
    def active_rooms(self) -> list[str]:
        """Rooms with at least one member."""
        return self.hub.active_rooms

    # ---------------------------------------------------------------- lifecycle

    async def connect(
        self,
        websocket: AsgiWebSocket,
        room: str | None = None,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        subprotocol: str | None = None,
        event_data: Any = None,
    ) -> Connection:
        """Accept ``websocket`` (unless already accepted; selecting ``subprotocol``, if
        given) and register it (``event_data``: the ``data`` of its lifecycle ``connect``).

        The connection is tied to the task that calls ``connect`` (the ASGI endpoint's): when
        that task ends, however it ends, the connection is unregistered.  So an endpoint that
        dies of an exception the application did not catch leaks nothing.

        Raises:
            InvalidIdentifier: ``room`` or ``user_id`` is not a usable id (``Hub.check_id``).
            ConnectionStateError: this websocket is already registered.
            CapacityExceeded: ``room`` would be one room more than ``max_rooms`` (the
                connection is accepted but not registered: close it, e.g. with 1013).
        """
        if room is not None:
            self.hub.check_id("room", room)
        if user_id is not None:
            self.hub.check_id("user_id", user_id)
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
            on_close=None if self.lifecycle is None else self.lifecycle.closing_of(connection),
        )
        connection.transport = transport
        await transport.open(subprotocol)
        if id(websocket) in self._by_socket:  # connected concurrently while accepting
            raise ConnectionStateError("this websocket is already connected")
        self.hub.attach(connection)
        self._by_socket[id(websocket)] = connection
        if self.lifecycle is not None:
            self.lifecycle.connected(connection, websocket, event_data)
        if room is not None:
            try:
                self.hub.join(connection, room)
            except BaseException:  # (CapacityExceeded): not left registered, in no room
                self.hub.forget(connection)
                raise
        if self.heartbeat is not None:
            self.heartbeat.start_heartbeat(connection.connection_id, websocket, self._silent)
            watch_incoming(websocket, functools.partial(self._heard, connection.connection_id))
        task = asyncio.current_task()
        if task is not None:
            callback = functools.partial(self._endpoint_done, connection)
            self._bound_tasks[connection.connection_id] = (task, callback)
            task.add_done_callback(callback)
        return connection

    def disconnect(self, websocket: Any) -> Connection | None:
        """Unregister ``websocket``; returns its connection, or None if it was not registered.

        Does not close the socket (call it after the client has gone, as in the documented
        example); anything still buffered for the client is dropped.
        """
        connection = self._by_socket.get(id(websocket))
        if connection is None:
            return None
        self.hub.forget(connection)
        return connection

    def connection_of(self, websocket: Any) -> Connection | None:
        """The registered connection of ``websocket``, if any."""
        return self._by_socket.get(id(websocket))

    # HubObserver: the face's own bookkeeping follows every departure, whichever way.

    def joined(self, connection: Connection, room: str) -> None:
        pass

    def left(self, connection: Connection, room: str) -> None:
        pass

    def departed(self, connection: Connection) -> None:
        if self._by_socket.get(id(connection.websocket)) is connection:
            del self._by_socket[id(connection.websocket)]
        bound = self._bound_tasks.pop(connection.connection_id, None)
        if bound is not None:
            task, callback = bound
            task.remove_done_callback(callback)
        if self.heartbeat is not None:
            self.heartbeat.stop_heartbeat(connection.connection_id)

    def _endpoint_done(self, connection: Connection, _: asyncio.Task[Any]) -> None:
        self._bound_tasks.pop(connection.connection_id, None)
        self.hub.forget(connection)

    def _lost(self, connection: Connection) -> None:
        if self.hub.forget(connection):
            self.hub.stats.lost_connections += 1

    def _unabortable(self) -> None:
        self.hub.stats.unabortable_closes += 1

    # ---------------------------------------------------------------- heartbeat

    def _send_app_ping(self, connection_id: str, websocket: Any, message: PingMessage) -> None:
        connection = self.hub.get_connection(connection_id)
        if connection is not None:
            self.hub.deliver_to(connection, encode(message))

    def _heard(self, connection_id: str, is_pong: bool) -> None:
        assert self.heartbeat is not None
        self.heartbeat.record_pong(connection_id)

    def _silent(self, connection_id: str) -> None:
        connection = self.hub.get_connection(connection_id)
        if connection is not None:
            self.hub.stats.heartbeat_timeouts += 1
            self.hub.close(connection, CloseCode.HEARTBEAT_TIMEOUT, "no pong")

    async def close_all(
        self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        """Close every connection with ``code`` and wait for the closes (bounded by
        ``close_timeout``); then cancel whatever background work is left."""
        if self.heartbeat is not None:
            await self.heartbeat.close()
        self.hub.close_all(code, reason)
        await self._tasks.wait(within=self._close_timeout + 1)
        await self._tasks.cancel_all()
        if self.lifecycle is not None:
            await self.lifecycle.stop()

    def events(self) -> AsyncGenerator[LifecycleEvent, None]:
        """Lifecycle events, oldest first, for ``async for`` (close it: ``aclosing``); each
        is acknowledged when the next is asked for, so one a broken loop did not finish is
        handed out again.  Ends after the manager stopped (with the events of the stop).
        RuntimeError without ``lifecycle``."""
        return require(self.lifecycle).events()

    def on_event(self, callback: EventCallback) -> EventCallback:
        """Run ``await callback(event)`` for every lifecycle event, in order, retried when it
        raises (``roomcast.fastapi.lifecycle``); a decorator too.  RuntimeError without
        ``lifecycle``."""
        return require(self.lifecycle).on_event(callback)

    # ---------------------------------------------------------------- rooms

    async def join_room(self, websocket: Any, room: str) -> bool:
        """Add the connection to ``room``; False if it was already a member or not connected."""
        self.hub.check_id("room", room)
        connection = self._by_socket.get(id(websocket))
        return connection is not None and self.hub.join(connection, room)

    async def join_room_since(
        self, websocket: Any, room: str, since: Position | Mapping[str, Any] | None = None
    ) -> Joined:
        """Join ``room``; if it keeps history, first send the connection every message after
        ``since`` (a ``Position`` or ``{"epoch", "offset"}``), in order.  The result says where
        it now is and whether all was replayed (False: reload the state).  ValueError for a
        malformed ``since``; ConnectionStateError if the websocket is not connected."""
        self.hub.check_id("room", room)
        connection = self._by_socket.get(id(websocket))
        if connection is None:
            raise ConnectionStateError("this websocket is not connected to the manager")
        if since is not None and not isinstance(since, Position):
            since = Position.parse(dict(since))
        result: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
        self.hub.join_at(connection, room, since, result.set_result)
        return await result

    async def room_history(
        self, room: str, since: Position | None = None, limit: int = 100
    ) -> Page:
        """``room``'s stored messages (as JSON bytes with their positions): the latest
        ``limit``, or those after ``since``.  LookupError if the room keeps no history."""
        return await self.hub.read_history(room, since, limit)

    async def leave_room(self, websocket: Any, room: str) -> bool:
        """Remove the connection from ``room``; False if it was not a member or not connected."""
        connection = self._by_socket.get(id(websocket))
        return connection is not None and self.hub.leave(connection, room)

    def get_room_members(self, room: str) -> list[Connection]:
        """Connections in ``room`` (empty if the room does not exist)."""
        return self.hub.get_room_members(room)

    def get_user_connections(self, user_id: str) -> list[Connection]:
        """All connections of ``user_id`` (multi-device)."""
        return self.hub.get_user_connections(user_id)

    def get_connection(self, connection_id: str) -> Connection | None:
        """The connection with this id, if registered here."""
        return self.hub.get_connection(connection_id)

    # ---------------------------------------------------------------- sending

    async def send_personal(
        self, websocket: Any, message: Any, type: MessageType | None = None
    ) -> bool:
        """Send to one connection; False if the websocket is not registered or is closing."""
        connection = self._by_socket.get(id(websocket))
        return connection is not None and self._send_one(connection, message, type)

    def _send_one(self, connection: Connection, message: Any, kind: MessageType | None) -> bool:
        """Deliver to (or close, for ``MessageType.CLOSE``) one local connection."""
        if kind is MessageType.CLOSE:
            self.hub.close(
                connection, CloseCode.NORMAL, message if isinstance(message, str) else ""
            )
            return True
        return self.hub.deliver_to(connection, encode(message, kind))

    async def send_to_user(
        self, user_id: str, message: Any, type: MessageType | None = None
    ) -> int:
        """Send to every connection of ``user_id`` (with a broker: on every instance); returns
        how many local connections took the message."""
        return self._send(Target.USER, user_id, message, type, ())

    async def broadcast(
        self,
        message: Any,
        type: MessageType | None = None,
        exclude: Collection[str] | None = None,
    ) -> int:
        """Send to every connection except the ids in ``exclude``; returns how many local
        connections took it."""
        return self._send(Target.BROADCAST, "", message, type, exclude or ())

    async def broadcast_to_room(
        self,
        room: str,
        message: Any,
        type: MessageType | None = None,
        exclude: Collection[str] | None = None,
    ) -> int:
        """Send to the members of ``room`` except the ids in ``exclude``; returns how many
        local members took it."""
        return self._send(Target.ROOM, room, message, type, exclude or ())

    def _send(
        self,
        target: Target,
        target_id: str,
        message: Any,
        kind: MessageType | None,
        exclude: Collection[str],
    ) -> int:
        """Encode once and deliver (or close the targets, for ``MessageType.CLOSE``)."""
        if not self.hub.reaches(target, target_id):
            return 0  # nobody to encode it for
        if kind is MessageType.CLOSE:
            reason = message if isinstance(message, str) else ""
            return self.hub.close_target(target, target_id, reason, exclude)
        return self.hub.deliver(target, target_id, encode(message, kind), exclude)
