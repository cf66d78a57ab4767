"""ConnectionConfig: the settings of an ``AuthConnectionManager``, apart from its behaviour.

A frozen dataclass of plain values and callables, so that one config can be shared by several
managers (one per instance in tests) and read without importing Redis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from roomcast.auth import Identity
from roomcast.fastapi.lifecycle_settings import LifecycleSettings
from roomcast.presence.connection_registry import StaleCallback
from roomcast.rules import Rules

__all__ = ["ConnectionConfig", "RoomAuthorizer"]

RoomAuthorizer = Callable[[Identity, str], "bool | Awaitable[bool]"]
"""(identity, room) -> may this user join this room?"""


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Settings of an ``AuthConnectionManager``.

    Attributes:
        redis_url: Redis for the registry and the pub/sub between instances.
        connection_ttl: Seconds a connection's registry record lives without a refresh.
        max_redis_connections: Size of the registry's Redis connection pool (pub/sub uses
            two more connections per Redis node).
        key_prefix: Prefix of Redis keys and channels.
        instance_ttl: Seconds after which an instance that stopped refreshing is dead and
            its connections are purged by a survivor.
        refresh_interval: Seconds between refreshes of this instance's records.
        max_connections_per_user: Cluster-wide cap; None for no cap.
        allowed_origins: Origins that may connect (cross-site WebSocket hijacking); None
            accepts any (including none: non-browser clients send no Origin).
        room_authorizer: Decides whether a user may join a room; None allows all.
        on_stale: Called for each connection purged from a dead instance.
        token_grace: Seconds a client whose token expired gets to present a new one
            (``refresh_token``) before it is closed with 4001; it is told at expiry.
        ping_interval: Application-level heartbeat (see ``ConnectionManager``); a client
            silent for ``ping_interval + pong_timeout`` is closed with 4002.  None: off.
        pong_timeout: See ``ping_interval``.
        token_in_query: With ``connect(token=None)``, also accept ``?token=`` (query
            strings end up in access logs).
        rules: Who may do what in which room, from the token's capability claim and the
            namespaces, as ``roomcast serve`` decides it (docs/permissions.md).  With a
            ``room_authorizer`` too, a join needs both to allow it.
        lifecycle: Lifecycle events, cluster-wide (``manager.events()``, ``on_event``;
            docs/fastapi.md).  None: off.
    """

    redis_url: str = "redis://localhost:6379"
    connection_ttl: int = 3600
    max_redis_connections: int = 100
    key_prefix: str = "ws"
    instance_ttl: float = 30.0
    refresh_interval: float = 10.0
    max_connections_per_user: int | None = None
    allowed_origins: frozenset[str] | None = None
    room_authorizer: RoomAuthorizer | None = None
    on_stale: StaleCallback | None = None
    token_grace: float = 30.0
    ping_interval: float | None = 30.0
    pong_timeout: float = 60.0
    token_in_query: bool = True
    rules: Rules | None = None
    lifecycle: LifecycleSettings | None = None
