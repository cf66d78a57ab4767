"""``roomcast serve``'s settings: one frozen dataclass, every field a CLI flag and a variable."""

from __future__ import annotations

import dataclasses

from roomcast.auth import Authenticator

__all__ = ["ServerConfig"]


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    """Settings of ``roomcast serve``; each has a CLI flag and a ``ROOMCAST_*`` variable."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_message_size: int = 64 * 1024
    """Largest incoming message in bytes; larger ones close the client with 1009."""
    send_buffer_limit: int = 1 << 20
    """Bytes that may wait for one client before it is closed as a slow consumer (4008)."""
    max_connections: int = 18_000
    """Connections this process accepts; beyond it, upgrades get HTTP 503."""
    close_timeout: float = 5.0
    """Seconds a closing client gets to finish the close handshake before it is aborted."""
    shutdown_timeout: float = 10.0
    """Seconds a graceful shutdown may take before the remaining sockets are aborted."""
    handshake_timeout: float = 5.0
    """Seconds a new socket gets to complete the WebSocket handshake."""
    backlog: int = 4096
    """Connections the kernel keeps waiting to be accepted (at most the descriptor budget)."""
    api_port: int | None = None
    """Port of the HTTP API (publish, health, metrics); None disables it."""
    api_max_connections: int = 256
    """Connections the HTTP API port holds at once; more are answered 503 and closed.  The
    WebSocket port's descriptor budget keeps this many free for it."""
    api_header_timeout: float = 10.0
    """Seconds from the accept within which an API request's head must have arrived (408)."""
    api_body_timeout: float = 10.0
    """Seconds from the end of the head within which an API request's body must have
    arrived (408)."""
    api_key: str | None = None
    """Key that ``POST /api/publish`` requires in ``X-API-Key``; without one, every publish
    is refused with 401."""
    redis_url: str | None = None
    """Redis shared by the instances of one hub; None serves an in-memory hub alone."""
    channel_prefix: str = "ws"
    """Prefix of the Redis channels (instances with different prefixes are separate hubs)."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT, so several processes share the ports (``--workers``)."""
    authenticator: Authenticator | None = None
    """Verifies a token on every upgrade (must be synchronous here, e.g. JWTAuthenticator);
    the identity's user id replaces ``?user_id=``.  None: no authentication."""
    rate_limit: float = 100.0
    """Messages per second a client may send on average (0: no limit); over it, messages
    are refused with an error (1008), and a client that keeps going is closed with 1008."""
    rate_burst: int = 200
    """Messages a client may send at once before the rate applies."""
    max_rooms_per_connection: int = 100
    """Rooms one connection may be in; a join beyond gets an error (1008)."""
    max_connections_per_user: int = 0
    """Connections one user id may hold in this process (0: no cap); more get HTTP 403."""
    echo: bool = False
    """Serve ``/echo``: every message is sent back as is (for protocol test suites)."""
    allowed_origins: frozenset[str] | None = None
    """Origins browsers may connect from (cross-site WebSocket hijacking); an upgrade with
    another Origin gets HTTP 403.  None accepts any; clients that send no Origin (not
    browsers) are always accepted."""
    token_grace: float = 30.0
    """Seconds a client whose token expired gets to send a new one (``{"type": "auth"}``)
    before it is closed with 4001."""
    token_in_query: bool = True
    """Accept ``?token=`` besides the Authorization header and the bearer subprotocol
    (browsers cannot set headers; query strings end up in access logs)."""
    ping_interval: float = 20.0
    """Seconds between protocol PINGs to each client; 0 turns the heartbeat off."""
    pong_timeout: float = 20.0
    """A client silent (no pong, no message) for ping_interval + pong_timeout is dropped."""
    presence: bool | None = None
    """Serve presence (``$presence:R`` rooms).  None: on for an in-memory hub (it costs
    nothing until someone watches), off with ``redis_url``, where it keeps a cluster-wide
    roster in Redis and publishes every join and leave (measured: 1.4-2.1x the
    handshake CPU), so it is asked for with True."""
    stats_interval: float = 1.0
    """Seconds between this instance's figures in the ``$stats`` room; 0 turns them off."""
    demo: bool = True
    """Serve the demo page at ``/`` (``/client.js`` is always served)."""
    max_rooms: int = 100_000
    """Rooms with members this process holds at once (a room costs a few hundred bytes plus
    its name); a join that would open one more gets an error (1013)."""
    max_id_bytes: int = 256
    """Longest room or user id, in UTF-8 bytes."""
