"""AuthConnectionManager: the authenticated, cluster-aware manager.

It puts together what the other modules do: authentication before the connection is
accepted (``roomcast.auth``), the distributed hub for delivery
(``roomcast.fastapi.distributed``), and the Redis connection registry for cluster-wide queries
and limits (``roomcast.presence.connection_registry``).

Its signatures are its documented API's and differ from ``ConnectionManager``'s on purpose:
``connect(websocket=, token=, authenticator=)`` returns ``(conn_id, user_id)``,
``send_to_user(message, user_id)`` takes the message first, and ``disconnect(conn_id)`` is a
coroutine taking a connection id.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Collection
from typing import Any

from roomcast.auth import (
    AuthenticationError,
    Authenticator,
    Identity,
    authenticate,
    expiry_with_leeway,
    token_from_request,
)
from roomcast.errors import CloseCode
from roomcast.events.schema import LifecycleEvent
from roomcast.expiry import ExpiryClock, Step, expiry_warning, run_expiry
from roomcast.fastapi.connection_config import ConnectionConfig
from roomcast.fastapi.distributed import DistributedWebSocketManager
from roomcast.fastapi.lifecycle_readers import EventCallback
from roomcast.fastapi.room_rules import RoomRefused, RoomRules
from roomcast.frame import encode
from roomcast.messages import MessageType
from roomcast.presence.connection_registry import PresenceRegistry
from roomcast.rules import Action, Refusal, Who
from roomcast.tasks import TaskSet

__all__ = ["AuthConnectionManager", "ConnectionConfig"]


class AuthConnectionManager:
    """Authenticated connections, delivered across instances, registered in Redis.

    Args:
        config: The settings.
        **hub_options: ``DistributedWebSocketManager`` options (``send_buffer_limit``...).
    """

    def __init__(self, config: ConnectionConfig, **hub_options: Any) -> None:
        import redis.asyncio

        self.config = config
        hub_options.setdefault("ping_interval", config.ping_interval)
        hub_options.setdefault("pong_timeout", config.pong_timeout)
        hub_options.setdefault("lifecycle", config.lifecycle)
        self.manager = DistributedWebSocketManager(
            config.redis_url, prefix=config.key_prefix, **hub_options
        )
        """The face that accepts websockets and sends (over Redis to every instance)."""
        self.hub = self.manager.hub
        """The registry and fan-out under it."""
        self._redis = redis.asyncio.Redis.from_url(
            config.redis_url, max_connections=config.max_redis_connections
        )
        self.presence = PresenceRegistry(
            self._redis,
            self.manager.broker.instance_id.hex(),
            prefix=config.key_prefix,
            connection_ttl=config.connection_ttl,
            instance_ttl=config.instance_ttl,
            refresh_interval=config.refresh_interval,
            on_stale=config.on_stale,
        )
        self._identities: dict[str, Identity] = {}
        self.room_rules = RoomRules(config.rules)
        """``config.rules`` and each connection's view of them."""
        self._expiry = ExpiryClock(config.token_grace)
        self._expiry_changed = asyncio.Event()
        self._tasks = TaskSet()

    async def initialize(self) -> None:
        """Connect to Redis (pub/sub and registry) and start the refresh and expiry loops."""
        await self.manager.start()
        await self.presence.start()
        self._tasks.spawn(
            run_expiry(self._expiry, self._expiry_changed, self._expiry_step),
            name="roomcast-token-expiry",
        )

    async def close(self) -> None:
        """Close local connections (1001), remove this instance's records, disconnect."""
        await self._tasks.cancel_all()
        await self.manager.close_all()
        await self.presence.stop()
        await self.manager.stop()
        await self._redis.aclose()

    def events(self) -> AsyncGenerator[LifecycleEvent, None]:
        """Lifecycle events, cluster-wide (``config.lifecycle``); see ``ConnectionManager``."""
        return self.manager.events()

    def on_event(self, callback: EventCallback) -> EventCallback:
        """Call ``callback`` for every lifecycle event; see ``ConnectionManager.on_event``."""
        return self.manager.on_event(callback)

    # ---------------------------------------------------------------- connections

    async def connect(
        self,
        websocket: Any,
        token: str | None = None,
        authenticator: Authenticator | None = None,
        room: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        event_data: Any = None,
    ) -> tuple[str, str]:
        """Authenticate, check the limits, accept and register; ``(conn_id, user_id)``
        (``event_data``: the ``data`` of its lifecycle ``connect``, with ``config.lifecycle``).

        With ``token=None`` the token is taken from the request: ``Authorization: Bearer``,
        the subprotocols ``bearer, TOKEN`` (then ``bearer`` is selected, as browsers
        require), or ``?token=`` unless ``config.token_in_query`` is off.

        Refusals happen before the connection is accepted: HTTP 401/403 where the ASGI
        server supports denial responses (uvicorn does), close 1008 otherwise; nothing is
        registered and the token is not logged.  (Two instances racing for a user's last
        slot: the loser is closed with 1008 just after accepting.)

        With ``config.rules``, the token's capability claim is read here, once (a malformed
        one is refused as a bad token), and ``room`` must pass them as ``join_room`` does.

        Raises:
            AuthenticationError: bad token, foreign Origin, user at the connection cap, or a
                room the user may not join (``status`` says which HTTP status was sent).
            RoomRefused: (an AuthenticationError, 403) the rules refuse ``room``; ``cause``
                says why.
        """
        protocol = None
        if token is None:
            token, protocol = token_from_request(
                websocket.headers.items(),
                websocket.url.query,
                allow_query=self.config.token_in_query,
            )
        try:
            if authenticator is None:
                raise TypeError("connect() needs an authenticator")
            self._check_origin(websocket)
            identity = await authenticate(authenticator, token)
            who = self.room_rules.who(identity)
            cap = self.config.max_connections_per_user
            if cap is not None and await self.presence.at_cap(identity.user_id, cap):
                raise AuthenticationError("too many connections for this user", 403)
            if room is not None:
                await self._admit(identity, who, room, ())
        except AuthenticationError as exc:
            await _refuse(websocket, exc)
            raise
        connection = await self.manager.connect(
            websocket, None, identity.user_id, metadata, subprotocol=protocol, event_data=event_data
        )
        connection_id = connection.connection_id
        if not await self.presence.add(
            connection_id, identity.user_id, self.config.max_connections_per_user
        ):
            self.manager.disconnect(websocket)
            await websocket.close(code=CloseCode.POLICY_VIOLATION, reason="too many connections")
            raise AuthenticationError("too many connections for this user", 403)
        # Known (and joinable) from here on, once the registry has its record.
        self._identities[connection_id] = identity
        self.room_rules.remember(connection_id, who)
        self._arm_expiry(connection_id, expiry_with_leeway(identity.expires_at, authenticator))
        endpoint = asyncio.current_task()
        if endpoint is not None:
            # However the endpoint ends (even without calling disconnect), the record goes.
            endpoint.add_done_callback(lambda _: self._forget_later(connection_id))
        if room is not None:
            await self._join(connection_id, room)
        return connection_id, identity.user_id

    async def disconnect(self, conn_id: str) -> bool:
        """Unregister ``conn_id`` here and in Redis, closing its socket if still open."""
        connection = self.hub.get_connection(conn_id)
        self._identities.pop(conn_id, None)
        self.room_rules.forget(conn_id)
        self._expiry.forget(conn_id)
        await self.presence.remove(conn_id)
        if connection is None:
            return False
        connection.transport.close(CloseCode.NORMAL, "")
        self.hub.forget(connection)
        return True

    async def refresh_token(
        self, conn_id: str, token: str, authenticator: Authenticator
    ) -> Identity:
        """Accept a fresh token for a connected client (same user): its expiry moves, and a
        close already announced is called off.

        With ``config.rules``, the new token's capability claim replaces the old one: the
        connection leaves the rooms it no longer grants and is told so in one message,
        ``{"type": "revoked", "rooms": [...], "cause": "not_granted", "reason": "..."}``, as
        ``roomcast serve`` does (the room authorizer is not asked again).

        Raises:
            AuthenticationError: the token is bad or its capability claim malformed (401), or
                it is for another user (403); the old expiry and grants stand.
        """
        current = self._identities.get(conn_id)
        if current is None:
            raise AuthenticationError("not connected here", 403)
        identity = await authenticate(authenticator, token)
        if identity.user_id != current.user_id:
            raise AuthenticationError("the token is for another user", 403)
        who = self.room_rules.who(identity)
        self._identities[conn_id] = identity
        self._arm_expiry(conn_id, expiry_with_leeway(identity.expires_at, authenticator))
        await self._revoke(conn_id, who)
        return identity

    async def _revoke(self, conn_id: str, who: Who | None) -> None:
        """Leave the rooms ``who`` no longer grants; the client hears of it before any other
        message could show it is out (leaving and telling happen without an await between)."""
        connection = self.hub.get_connection(conn_id)
        if connection is None:
            return
        revoked = self.room_rules.renew(conn_id, who, connection.rooms)
        if revoked is None:
            return
        rooms: list[str] = revoked["rooms"]
        for room in rooms:
            self.hub.leave(connection, room)
        self.hub.deliver_to(connection, encode(revoked))
        for room in rooms:
            await self.presence.leave(conn_id, room)

    def _arm_expiry(self, conn_id: str, expires_at: float | None) -> None:
        self._expiry.set(conn_id, expires_at)
        self._expiry_changed.set()

    def _expiry_step(self, conn_id: str, step: Step) -> None:
        connection = self.hub.get_connection(conn_id)
        if connection is None:
            return
        if step is Step.WARN:
            self.hub.deliver_to(connection, encode(expiry_warning(self.config.token_grace)))
        else:
            connection.transport.close(CloseCode.TOKEN_EXPIRED, "token expired")

    def _forget_later(self, conn_id: str) -> None:
        if conn_id in self._identities:
            self._identities.pop(conn_id, None)
            self.room_rules.forget(conn_id)
            self._expiry.forget(conn_id)
            self._tasks.spawn(self.presence.remove(conn_id), name="roomcast-presence-remove")

    def identity(self, conn_id: str) -> Identity | None:
        """Who a local connection authenticated as."""
        return self._identities.get(conn_id)

    # ---------------------------------------------------------------- rooms

    async def join_room(self, conn_id: str, room: str) -> bool:
        """Join ``room`` if ``config.rules`` and the room authorizer allow it.

        The rules check the grant, ``max_rooms_per_connection`` (this connection's rooms of
        the namespace) and ``max_members`` (members on every instance, counted in Redis: two
        joins racing for a room's last place may both get in).

        Raises:
            RoomRefused: the rules refuse (status 403); ``cause`` says why.
            AuthenticationError: the room authorizer refuses (status 403).
        """
        identity = self._identities.get(conn_id)
        connection = self.hub.get_connection(conn_id)
        if identity is None or connection is None:
            return False
        who = self.room_rules.of(conn_id)
        await self._admit(identity, who, room, connection.rooms)
        # Again, with no await before the join: another join may have run meanwhile.
        refusal = self.room_rules.join_refusal(who, room, connection.rooms)
        if refusal is not None:
            raise RoomRefused(room, refusal)
        return await self._join(conn_id, room)

    def check(self, conn_id: str, room: str, action: Action) -> Refusal | None:
        """Why connection ``conn_id`` may not do ``action`` in ``room`` by ``config.rules``;
        None if it may (always, without rules).

        For the app to ask before it publishes, shows presence or reads history on a
        client's behalf: the manager cannot see those, as they are the app's own messages.
        Joins are checked by ``connect`` and ``join_room`` (with the limits, which this
        does not count).
        """
        connection = self.hub.get_connection(conn_id)
        rooms = connection.rooms if connection is not None else frozenset[str]()
        return self.room_rules.check(conn_id, room, action, rooms)

    async def leave_room(self, conn_id: str, room: str) -> bool:
        connection = self.hub.get_connection(conn_id)
        if connection is None or not self.hub.leave(connection, room):
            return False
        await self.presence.leave(conn_id, room)
        return True

    async def _join(self, conn_id: str, room: str) -> bool:
        connection = self.hub.get_connection(conn_id)
        if connection is None or not self.hub.join(connection, room):
            return False
        await self.presence.join(conn_id, room)
        return True

    async def _admit(
        self, identity: Identity, who: Who | None, room: str, rooms: Collection[str]
    ) -> None:
        """Raise unless the rules (with the member cap) and the room authorizer let
        ``identity``, in ``rooms``, join ``room``."""
        refusal = self.room_rules.join_refusal(who, room, rooms)
        cap = self.room_rules.max_members(room)
        if refusal is None and cap and room not in rooms:
            refusal = RoomRules.full(cap, await self.presence.room_size(room))
        if refusal is not None:
            raise RoomRefused(room, refusal)
        await self._authorize(identity, room)

    async def _authorize(self, identity: Identity, room: str) -> None:
        authorizer = self.config.room_authorizer
        if authorizer is None:
            return
        allowed = authorizer(identity, room)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            raise AuthenticationError("not allowed in this room", 403)

    def _check_origin(self, websocket: Any) -> None:
        allowed = self.config.allowed_origins
        if allowed is None:
            return
        origin = websocket.headers.get("origin")
        if origin is not None and origin not in allowed:
            raise AuthenticationError("origin not allowed", 403)

    # ---------------------------------------------------------------- sending

    async def send_to_user(
        self, message: Any, user_id: str, type: MessageType | None = None
    ) -> int:
        """Send to every connection of ``user_id`` on every instance (message first, as in
        the documented API); returns the local deliveries."""
        return await self.manager.send_to_user(user_id, message, type)

    async def broadcast(self, message: Any, type: MessageType | None = None) -> int:
        """Send to every connection on every instance; returns the local deliveries."""
        return await self.manager.broadcast(message, type)

    async def broadcast_to_room(
        self, room: str, message: Any, type: MessageType | None = None
    ) -> int:
        return await self.manager.broadcast_to_room(room, message, type)

    # ---------------------------------------------------------------- cluster-wide queries

    async def get_room_members(self, room: str) -> set[str]:
        """Connection ids in ``room`` on every instance."""
        return await self.presence.room_members(room)

    async def get_user_connections(self, user_id: str) -> set[str]:
        return await self.presence.user_connections(user_id)

    async def is_user_online(self, user_id: str) -> bool:
        return await self.presence.is_user_online(user_id)

    async def get_connection_count(self) -> int:
        """Connections on every instance."""
        return await self.presence.connection_count()


async def _refuse(websocket: Any, error: AuthenticationError) -> None:
    """Refuse an upgrade: an HTTP response if the server can send one, else close 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        from starlette.responses import PlainTextResponse

        status = 403 if error.status == 403 else 401
        await websocket.send_denial_response(PlainTextResponse(f"{error}\n", status_code=status))
    else:
        await websocket.close(code=CloseCode.POLICY_VIOLATION, reason=str(error)[:120])
