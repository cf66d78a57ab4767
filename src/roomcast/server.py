"""``roomcast serve``'s server: the native transport, the client protocol and small HTTP routes.

One ``Server`` owns one ``ConnectionManager`` (registry and fan-out engine), one picows
listening socket and the tasks it starts.  Routing happens in picows' upgrade callback:

* ``/ws`` and ``/ws/{room}`` upgrade to WebSocket (``?user_id=`` names the user until
  authentication arrives; ``/ws/{room}`` joins that room at once);
* ``GET /healthz`` answers 200 while the process runs, ``GET /readyz`` 200 while it accepts
  clients and 503 while it drains, ``GET /metrics`` the Prometheus exposition;
* ``GET /`` the demo page and ``GET /client.js`` the JavaScript client (``static/``);
* anything else is 404.

Room ids starting with ``$`` are the server's: ``$stats`` carries each instance's figures once a
second, and ``$presence:R`` the presence of room R (``presence_feed``).

With ``api_port`` set, a second listener serves ``POST /api/publish`` (see ``http_api``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import resource
import socket
import time
import uuid
from importlib import resources
from typing import Any
from urllib.parse import unquote

from picows import (
    WSMsgType,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from roomcast.auth import (
    AuthenticationError,
    Authenticator,
    Identity,
    query_value,
    token_from_request,
)
from roomcast.connection import Connection
from roomcast.envelope import Target
from roomcast.errors import CapacityExceeded, CloseCode, InvalidIdentifier, InvalidMessage
from roomcast.expiry import ExpiryClock, Step, expiry_warning, run_expiry
from roomcast.frame import encode
from roomcast.heartbeat import HeartbeatManager
from roomcast.http_api import (
    API_REFUSAL_HEADROOM,
    ApiRequest,
    ApiResponse,
    ApiStats,
    key_matches,
    serve_api,
)
from roomcast.hub import Hub, OverflowPolicy
from roomcast.limits import DescriptorBudget, RateLimit
from roomcast.limits import Verdict as RateVerdict
from roomcast.listener import Acceptor, listening_sockets
from roomcast.logbudget import EventLog
from roomcast.messages import (
    AckMessage,
    ErrorMessage,
    PingMessage,
    PongMessage,
    WSMessage,
    preview,
)
from roomcast.metrics import Sample, ServerCounters, metrics_registry, render
from roomcast.native import EchoTransport, FlushScheduler, NativeTransport, server_protocols
from roomcast.presence_feed import (
    RESERVED_PREFIX,
    STATS_ROOM,
    PresenceFeed,
    presence_room,
    watched_room,
)
from roomcast.protocol import (
    AuthMessage,
    JoinMessage,
    LeaveMessage,
    PublishMessage,
    RoomMessage,
    StatsMessage,
    interpret,
)
from roomcast.tasks import TaskSet

__all__ = ["Server", "ServerConfig"]

logger = logging.getLogger("roomcast.server")


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


_NOT_FOUND = b"not found\n"


class Server:
    """A roomcast hub served natively over picows.

    Args:
        config: Listening address and limits.
        hub: The hub to serve; a new one from ``config`` if omitted (with a Redis broker
            when ``config.redis_url`` is set).
    """

    def __init__(self, config: ServerConfig, hub: Hub | None = None) -> None:
        self.config = config
        self.hub = hub or _new_hub(config)
        self.send_buffer_limit = config.send_buffer_limit
        self.close_timeout = config.close_timeout
        self.max_message_size = config.max_message_size
        self.counters = ServerCounters()
        self.events = EventLog(logger)
        self._metrics = metrics_registry(
            self.hub, self.counters, self._buffered_bytes, self._port_metrics
        )
        self.budget = self._plan_descriptors()
        self.max_connections = self.budget.connections
        """Connections admitted: ``config.max_connections``, or fewer if the open-file limit
        cannot hold them."""
        self._acceptor: Acceptor | None = None
        self._api: Acceptor | None = None
        self.api_stats = ApiStats()
        self.scheduler = FlushScheduler()
        self._rate = (
            RateLimit(config.rate_limit, config.rate_burst) if config.rate_limit > 0 else None
        )
        self._expiry = ExpiryClock(config.token_grace)
        self._expiry_changed = asyncio.Event()
        self._tasks = TaskSet()
        self.heartbeat: HeartbeatManager | None = None
        if config.ping_interval > 0:
            self.heartbeat = HeartbeatManager(
                config.ping_interval, config.pong_timeout, send_ping=_protocol_ping
            )
        self._accepting = False
        self._started_at = time.monotonic()
        self._open: set[NativeTransport] = set()
        self._all_gone = asyncio.Event()
        self.instance_id = uuid.uuid4().hex
        self._redis: Any = None
        self.presence: PresenceFeed | None = None
        if config.presence if config.presence is not None else config.redis_url is None:
            self.presence = PresenceFeed(self.hub, self.events, self._new_roster())
            self.hub.observe(self.presence)
        self._static = _load_static(config.demo)

    def _new_roster(self) -> Any:
        """The cluster-wide room roster when the hub spans processes, else None."""
        if self.config.redis_url is None:
            return None
        import redis.asyncio

        from roomcast.roster import RoomRoster

        self._redis = redis.asyncio.Redis.from_url(
            self.config.redis_url, max_connections=4, socket_timeout=5.0
        )
        return RoomRoster(
            self._redis,
            self.instance_id,
            prefix=self.config.channel_prefix,
            on_departed=lambda room, members: (
                self.presence.purged(room, members) if self.presence else None
            ),
            on_restored=lambda room, members: (
                self.presence.restored(room, members) if self.presence else None
            ),
        )

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``port=0``)."""
        assert self._acceptor is not None, "server not started"
        return int(self._acceptor.sockets[0].getsockname()[1])

    def _plan_descriptors(self) -> DescriptorBudget:
        """The WebSocket port's share of the open-file limit, with a warning when the limit
        cannot hold ``max_connections`` (upgrades beyond the lowered cap get 503)."""
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        api = (
            self.config.api_max_connections + API_REFUSAL_HEADROOM
            if self.config.api_port is not None
            else 0
        )
        budget = DescriptorBudget.plan(open_files, self.config.max_connections, api)
        if budget.lowered:
            logger.warning(
                "the open-file limit (%d) holds at most %d WebSocket connections, not "
                "--max-connections %d: serving at most %d; raise the limit (ulimit -n, "
                "LimitNOFILE=) or run more workers",
                open_files,
                budget.connections,
                self.config.max_connections,
                budget.connections,
            )
        return budget

    def _backlog(self) -> int:
        """The listen backlog: at most the sockets the port may hold (the kernel keeps the
        rest of a connect storm waiting for us, not for a descriptor we do not have)."""
        return max(16, min(self.config.backlog, self.budget.sockets))

    def _port_metrics(self) -> list[Sample]:
        acceptor, api = self._acceptor, self.api_stats
        presence: list[Sample] = []
        if self.presence is not None:
            presence.append(
                (
                    "counter",
                    "roomcast_presence_snapshots_coalesced",
                    "Presence snapshot requests folded into a later snapshot (one a second "
                    "per connection and room).",
                    self.presence.coalesced,
                )
            )
        return [
            *presence,
            (
                "gauge",
                "roomcast_max_connections",
                "Connections admitted (the configured cap, or less under the open-file limit).",
                self.max_connections,
            ),
            (
                "gauge",
                "roomcast_port_sockets",
                "Sockets the WebSocket port holds (clients, handshakes, refusals).",
                acceptor.held if acceptor is not None else 0,
            ),
            (
                "gauge",
                "roomcast_port_socket_limit",
                "Sockets the WebSocket port may hold before it stops accepting.",
                self.budget.sockets,
            ),
            (
                "gauge",
                "roomcast_accepting",
                "1 while the WebSocket port accepts sockets, 0 while at its socket limit.",
                int(acceptor is not None and not acceptor.paused),
            ),
            (
                "gauge",
                "roomcast_api_open_connections",
                "Connections open on the HTTP API port.",
                api.open_connections,
            ),
            (
                "counter",
                "roomcast_api_timeouts",
                "API requests cut off (408) for a head or body that came too slowly.",
                api.timeouts,
            ),
            (
                "counter",
                "roomcast_api_refused_connections",
                "API connections refused (503) over --api-max-connections.",
                api.refused_connections,
            ),
        ]

    def _released(self, protocol: Any) -> None:
        assert self._acceptor is not None
        self._acceptor.released(protocol)

    def _accept_failed(self, exc: OSError) -> None:
        self.counters.accept_errors += 1
        self.events.event(
            "accept_failed",
            "%s: out of descriptors; the port waits %.1f s (open-file limit %d)",
            exc.strerror or exc,
            0.1,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen and accept clients, on ``sock`` if given (already bound and listening)."""
        await self.hub.start()
        if self.presence is not None:
            await self.presence.start()
        sockets = (
            [sock]
            if sock is not None
            else listening_sockets(
                self.config.host, self.config.port, self._backlog(), self.config.reuse_port
            )
        )
        self._acceptor = Acceptor(
            sockets,
            server_protocols(
                self._route,
                self._released,
                handshake_timeout=self.config.handshake_timeout,
                max_frame_size=self.config.max_message_size,
                logger=logging.LoggerAdapter(logging.getLogger("roomcast.picows")),
            ),
            self.budget.sockets,
            self._accept_failed,
        )
        if self.config.api_port is not None:
            self._api = await serve_api(
                self._api_request,
                self.config.host,
                self.config.api_port,
                self.config.reuse_port,
                header_timeout=self.config.api_header_timeout,
                body_timeout=self.config.api_body_timeout,
                max_connections=self.config.api_max_connections,
                stats=self.api_stats,
                on_accept_error=self._accept_failed,
            )
        if self.config.authenticator is not None:
            self._tasks.spawn(
                run_expiry(self._expiry, self._expiry_changed, self._expiry_step),
                name="roomcast-token-expiry",
            )
        if self.config.stats_interval > 0:
            self._tasks.spawn(self._publish_stats(), name="roomcast-stats")
        self._accepting = True
        logger.info("listening on port %d", self.port)
        if self._api is not None:
            logger.info("HTTP API on port %d", self.api_port)

    @property
    def api_port(self) -> int:
        """The port of the HTTP API."""
        assert self._api is not None, "API not started"
        return int(self._api.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, close every client with 1001, and wait (bounded) until they left."""
        self._accepting = False
        if self._acceptor is not None:
            self._acceptor.close()
        transports = list(self._open)
        # Close in batches, yielding between them, so a large hub keeps serving the close
        # handshakes already under way instead of stalling the loop for one long pass.
        for start in range(0, len(transports), 1000):
            for transport in transports[start : start + 1000]:
                transport.close(CloseCode.GOING_AWAY, "server shutting down; reconnect")
            await asyncio.sleep(0)
        if self._open:
            self._all_gone.clear()
            try:
                async with asyncio.timeout(self.config.shutdown_timeout):
                    await self._all_gone.wait()
            except TimeoutError:
                logger.warning("%d clients did not close in time; aborting", len(self._open))
                for transport in list(self._open):
                    transport.abort()
        if self.heartbeat is not None:
            await self.heartbeat.close()
        await self._tasks.cancel_all()
        if self.presence is not None:
            await self.presence.stop()
        if self._redis is not None:
            await self._redis.aclose()
        self.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
        await self.hub.stop()
        if self._api is not None:
            self._api.close()

    # ------------------------------------------------------------------ routing

    def _route(self, request: WSUpgradeRequest) -> Any:
        path, _, query = request.path.decode("latin-1").partition("?")
        if path == "/echo" and self.config.echo and self._accepting:
            return EchoTransport(self, Connection(None, None))
        if path != "/ws" and not path.startswith("/ws/"):
            status, body, content_type = self._plain_get(path)
            return _respond(status, body, content_type)
        if not self._accepting:
            return self._refuse_upgrade(503, b"shutting down\n")
        if len(self._open) >= self.max_connections:
            return self._refuse_upgrade(503, b"server at capacity\n")
        allowed = self.config.allowed_origins
        if allowed is not None:
            origin = request.headers.get("origin")
            if origin is not None and origin not in allowed:
                return self._refuse_upgrade(403, b"origin not allowed\n")
        room = unquote(path[4:]) if path.startswith("/ws/") else None
        if room is not None and room.startswith(RESERVED_PREFIX):
            return self._refuse_upgrade(400, b"rooms starting with '$' cannot be joined here\n")
        protocol = None
        expires_at = None
        user_id: str | None
        if self.config.authenticator is not None:
            try:
                identity, protocol = self._authenticate(request, query)
            except AuthenticationError as exc:
                self.counters.auth_failures += 1
                return self._refuse_upgrade(exc.status, f"{exc}\n".encode())
            user_id, expires_at = identity.user_id, identity.expires_at
        else:
            user_id = query_value(query, "user_id")
        try:
            for what, value in (("room", room), ("user_id", user_id)):
                if value is not None:
                    self.hub.check_id(what, value)
        except InvalidIdentifier as exc:
            return self._refuse_upgrade(400, f"{exc}\n".encode())
        if room is not None and not self.hub.can_open(room):
            return self._refuse_upgrade(503, b"this server holds its maximum of rooms\n")
        cap = self.config.max_connections_per_user
        if cap and user_id is not None and len(self.hub.get_user_connections(user_id)) >= cap:
            return self._refuse_upgrade(403, b"too many connections for this user\n")
        transport = NativeTransport(self, Connection(None, user_id), room)
        if expires_at is not None:
            transport.connection.metadata["token_expires_at"] = expires_at
        if protocol is not None:  # the token came as a subprotocol: select "bearer"
            accept = WSUpgradeResponse.create_101_response({"Sec-WebSocket-Protocol": protocol})
            return WSUpgradeResponseWithListener(accept, transport)
        return transport

    def _authenticate(self, request: WSUpgradeRequest, query: str) -> tuple[Identity, str | None]:
        """The identity a valid token proves, and the subprotocol to accept."""
        assert self.config.authenticator is not None
        headers = [(str(name), str(value)) for name, value in request.headers.items()]
        token, protocol = token_from_request(headers, query, allow_query=self.config.token_in_query)
        if not token:
            raise AuthenticationError("a token is required")
        return self._verify(token), protocol

    def _verify(self, token: str) -> Identity:
        assert self.config.authenticator is not None
        try:
            identity = self.config.authenticator(token)
        except AuthenticationError:
            raise
        except Exception as exc:  # a bug in a custom authenticator: the client is not to blame
            logger.error("the authenticator failed: %r", exc)
            why = "server misconfigured: the authenticator failed"
            raise AuthenticationError(why, 500) from exc
        if not isinstance(identity, Identity):
            raise AuthenticationError("server misconfigured: the authenticator must be sync", 500)
        return identity

    def _refuse_upgrade(self, status: int, body: bytes) -> WSUpgradeResponseWithListener:
        self.counters.refused_upgrades += 1
        self.events.event("upgrade_refused", "HTTP %d: %s", status, body.decode().strip())
        return _respond(status, body)

    def _plain_get(self, path: str) -> tuple[int, bytes, str]:
        """The GET routes both ports serve."""
        if path == "/healthz":
            return 200, b"ok\n", _TEXT
        if path == "/readyz":
            if not self._accepting:
                return 503, b"draining\n", _TEXT
            if not self.hub.ready:
                return 503, b"broker unavailable\n", _TEXT
            return 200, b"ready\n", _TEXT
        if path == "/metrics":
            return 200, render(self._metrics), _PROMETHEUS
        static = self._static.get(path)
        if static is not None:
            return 200, static[0], static[1]
        return 404, _NOT_FOUND, _TEXT

    def _buffered_bytes(self) -> int:
        return sum(transport.buffered_bytes for transport in self._open)

    # ------------------------------------------------------------------ connection events

    # TransportOwner: the events transports report (their limits are attributes, set in
    # __init__, because send() reads one per recipient).

    def opened(self, transport: NativeTransport) -> None:
        connection = transport.connection
        connection.transport = transport
        self._open.add(transport)
        self.hub.attach(connection)
        room, transport.initial_room = transport.initial_room, None
        if room is not None:
            # (_route checked can_open: picows calls this in the same callback.)
            self.hub.join(connection, room)
        if self.heartbeat is not None:
            self.heartbeat.start_heartbeat(connection.connection_id, transport, self._silent)
        expires_at = connection.metadata.get("token_expires_at")
        if expires_at is not None:
            self._arm_expiry(connection.connection_id, expires_at)

    def gone(self, transport: NativeTransport) -> None:
        self._open.discard(transport)
        self.hub.forget(transport.connection)  # (presence, an observer, hears it)
        if self.heartbeat is not None:
            self.heartbeat.stop_heartbeat(transport.connection.connection_id)
        self._expiry.forget(transport.connection.connection_id)
        if not self._open:
            self._all_gone.set()

    def ponged(self, transport: NativeTransport) -> None:
        if self.heartbeat is not None:
            self.heartbeat.record_pong(transport.connection.connection_id)

    def admit_frame(self, transport: NativeTransport, opcode: WSMsgType) -> bool:
        # Pings, pongs and continuation frames cost a token each, like messages: empty
        # frames are cheap to send and not free to receive.  (Echo connections are for
        # protocol test suites and are not limited.)
        if self._rate is None or type(transport) is EchoTransport:
            return True
        return self._within_rate(transport)

    def _silent(self, connection_id: str) -> None:
        """The heartbeat gave up on a client: drop the socket (it would not read a close)."""
        connection = self.hub.get_connection(connection_id)
        if connection is not None and isinstance(connection.transport, NativeTransport):
            self.counters.heartbeat_timeouts += 1
            self.events.event(
                "heartbeat_timeout",
                "dropped connection %s (user %s): no pong",
                connection_id,
                preview(connection.user_id),
            )
            connection.transport.abort()

    def received(self, transport: NativeTransport, message: str | bytes, size: int) -> None:
        # (EchoTransport answers by itself and never calls this.)
        connection = transport.connection
        if self.heartbeat is not None:
            self.heartbeat.record_pong(connection.connection_id)  # any message is life
        self.counters.messages_in += 1
        self.counters.bytes_in += size
        if self._rate is not None and not self._within_rate(transport):
            return
        if isinstance(message, bytes):
            transport.close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
            return
        command = interpret(message)
        if isinstance(command, ErrorMessage):
            self.counters.protocol_errors += 1
            self.events.event(
                "bad_message",
                "connection %s (user %s): %s",
                connection.connection_id,
                preview(connection.user_id),
                command.error,
            )
            self._reply(connection, command)
        elif isinstance(command, PublishMessage):
            self._publish(connection, command)
        elif isinstance(command, JoinMessage | LeaveMessage):
            self._membership(connection, command)
        elif isinstance(command, PingMessage):
            self._reply(connection, PongMessage(ping_event_id=command.event_id))
        elif isinstance(command, AuthMessage):
            self._reauthenticate(connection, command)
        # PongMessage: answers to application pings; the heartbeat issue will record them.

    def _within_rate(self, transport: NativeTransport) -> bool:
        """Charge one message to the client's bucket; refuse or cut off when it is empty."""
        assert self._rate is not None
        now = time.monotonic()
        state = transport.rate_state or (self._rate.burst, now, 0)
        verdict, tokens, stamp, strikes = self._rate.check(*state, now)
        transport.rate_state = (tokens, stamp, strikes)
        if verdict is RateVerdict.ALLOW:
            return True
        self.counters.rate_limited += 1
        if verdict is RateVerdict.CUT_OFF:
            self.events.event(
                "rate_limit_close",
                "closed connection %s (user %s) with 1008",
                transport.connection.connection_id,
                preview(transport.connection.user_id),
            )
            transport.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
        elif strikes == 1:  # say it once per episode, not per dropped message
            self.events.event(
                "rate_limited",
                "connection %s (user %s) over %g messages/s",
                transport.connection.connection_id,
                preview(transport.connection.user_id),
                self._rate.rate,
            )
            self._reply(
                transport.connection,
                ErrorMessage(
                    error=f"rate limit exceeded ({self._rate.rate:g}/s); messages dropped",
                    code=CloseCode.POLICY_VIOLATION,
                ),
            )
        return False

    # ------------------------------------------------------------------ token expiry

    def _reauthenticate(self, connection: Connection, command: AuthMessage) -> None:
        """A fresh token for the same user moves the connection's expiry; anything else is
        refused (and the old expiry stands)."""
        if self.config.authenticator is None:
            self._refuse(connection, command.event_id, "this server does not take tokens")
            return
        try:
            identity = self._verify(command.token)
        except AuthenticationError as exc:
            self.counters.auth_failures += 1
            self._refuse(connection, command.event_id, str(exc))
            return
        if identity.user_id != connection.user_id:
            self._refuse(connection, command.event_id, "the token is for another user")
            return
        connection.metadata["token_expires_at"] = identity.expires_at
        self._arm_expiry(connection.connection_id, identity.expires_at)
        self._reply(connection, AckMessage(ack_event_id=command.event_id))

    def _arm_expiry(self, connection_id: str, expires_at: float | None) -> None:
        self._expiry.set(connection_id, expires_at)
        self._expiry_changed.set()

    def _expiry_step(self, connection_id: str, step: Step) -> None:
        """Warn at expiry; close (4001) after the grace."""
        connection = self.hub.get_connection(connection_id)
        if connection is None:
            return
        if step is Step.WARN:
            self._reply(connection, expiry_warning(self.config.token_grace))
        else:
            self.counters.token_expiries += 1
            self.events.event(
                "token_expired",
                "closed connection %s (user %s) with 4001",
                connection_id,
                preview(connection.user_id),
            )
            connection.transport.close(CloseCode.TOKEN_EXPIRED, "token expired")

    def _membership(self, connection: Connection, command: JoinMessage | LeaveMessage) -> None:
        room = command.room
        try:
            if isinstance(command, JoinMessage):
                limit = self.config.max_rooms_per_connection
                if room not in connection.rooms and len(connection.rooms) >= limit:
                    self._refuse(connection, command.event_id, f"at most {limit} rooms")
                    return
                refusal = self._reserved_refusal(connection, room)
                if refusal is not None:
                    self._refuse(connection, command.event_id, refusal)
                    return
                self.hub.join(connection, room)  # (presence, an observer, hears it)
            elif not self.hub.leave(connection, room):
                self._refuse(connection, command.event_id, f"not in room {preview(room)}")
                return
        except InvalidIdentifier as exc:
            self._refuse(connection, command.event_id, str(exc))
            return
        except CapacityExceeded as exc:
            self._refuse(connection, command.event_id, str(exc), CloseCode.TRY_AGAIN_LATER)
            return
        self._reply(connection, AckMessage(ack_event_id=command.event_id))
        presence = self.presence
        if presence is None or room == STATS_ROOM:
            return
        watched = watched_room(room)
        if isinstance(command, JoinMessage):
            if watched is not None:
                presence.request_snapshot(connection, watched)  # a repeated join: a resync
        elif watched is None:
            self.hub.leave(connection, presence_room(room))  # no longer allowed to watch

    def _reserved_refusal(self, connection: Connection, room: str) -> str | None:
        """Why ``connection`` may not join the server's room ``room`` (None: it may)."""
        if not room.startswith(RESERVED_PREFIX):
            return None
        if room == STATS_ROOM and self.config.stats_interval > 0:
            return None
        watched = watched_room(room)
        if watched is not None and self.presence is not None:
            if watched.startswith(RESERVED_PREFIX):
                return f"the presence of {preview(watched)} is not served"
            return None if watched in connection.rooms else f"join {preview(watched)} first"
        return f"room {preview(room)} is reserved"

    def _publish(self, connection: Connection, command: PublishMessage) -> None:
        if command.room.startswith(RESERVED_PREFIX):
            self._refuse(connection, command.event_id, f"room {preview(command.room)} is reserved")
            return
        if command.room not in connection.rooms:
            self._refuse(connection, command.event_id, f"not in room {preview(command.room)}")
            return
        outgoing = RoomMessage(
            room=command.room,
            sender=connection.user_id,
            data=command.data,
            event_id=command.event_id,
        )
        self.hub.deliver(Target.ROOM, command.room, encode(outgoing), (connection.connection_id,))
        self._reply(connection, AckMessage(ack_event_id=command.event_id))

    # ------------------------------------------------------------------ the $stats room

    def stats(self) -> dict[str, Any]:
        """This instance's figures; counters are totals since start."""
        stats = self.hub.stats
        return {
            "label": f"{self.config.host}:{self.port} pid {os.getpid()}",
            "uptime": round(time.monotonic() - self._started_at, 3),
            "connections": len(self._open),
            "rooms": sum(1 for r in self.hub.active_rooms if not r.startswith(RESERVED_PREFIX)),
            "messages_in": self.counters.messages_in,
            "messages_out": stats.frames_sent,
            "slow_consumer_closes": stats.slow_consumer_closes,
            "heartbeat_timeouts": self.counters.heartbeat_timeouts,
            "rate_limited": self.counters.rate_limited,
        }

    async def _publish_stats(self) -> None:
        """Send this instance's figures to ``$stats`` (every instance's watchers, with Redis)."""
        interval = self.config.stats_interval
        while True:
            await asyncio.sleep(interval)
            if not self.hub.reaches(Target.ROOM, STATS_ROOM):
                continue
            message = StatsMessage(instance=self.instance_id, data=self.stats())
            self.hub.deliver(Target.ROOM, STATS_ROOM, encode(message))

    def _refuse(
        self,
        connection: Connection,
        event_id: str,
        why: str,
        code: CloseCode = CloseCode.POLICY_VIOLATION,
    ) -> None:
        self.counters.protocol_errors += 1
        self.events.event(
            "command_refused",
            "connection %s (user %s): %s",
            connection.connection_id,
            preview(connection.user_id),
            why,
        )
        self._reply(
            connection,
            ErrorMessage(error=why, code=code, ref_event_id=event_id),
        )

    def _reply(self, connection: Connection, message: Any) -> None:
        self.hub.deliver_to(connection, encode(message))

    # ------------------------------------------------------------------ HTTP API

    def _api_request(self, request: ApiRequest) -> ApiResponse:
        if request.path != "/api/publish":
            if request.method != "GET":
                return ApiResponse.json(
                    405 if request.path in _GET_PATHS else 404, {"error": "not found"}
                )
            status, body, content_type = self._plain_get(request.path)
            return ApiResponse(status, body, content_type)
        if request.method != "POST":
            return ApiResponse.json(405, {"error": "use POST"})
        if not key_matches(self.config.api_key, request.headers.get("x-api-key")):
            return ApiResponse.json(401, {"error": "missing or wrong X-API-Key"})
        return self._publish_from_api(request.body)

    def _publish_from_api(self, body: bytes) -> ApiResponse:
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            return ApiResponse.json(400, {"error": "body is not valid JSON"})
        if not isinstance(request, dict) or ("data" in request) == ("batch" in request):
            return ApiResponse.json(
                400, {"error": "body must be an object with 'data' or a 'batch' list"}
            )
        payloads = [request["data"]] if "data" in request else request["batch"]
        if not isinstance(payloads, list) or not payloads or len(payloads) > MAX_BATCH:
            return ApiResponse.json(400, {"error": f"'batch' must list 1 to {MAX_BATCH} items"})
        room, user_id = request.get("room"), request.get("user_id")
        if (room is None) == (user_id is None):
            return ApiResponse.json(400, {"error": "give exactly one of 'room' and 'user_id'"})
        try:
            # Encode everything before sending anything: a bad item fails the whole batch.
            if room is not None:
                self.hub.check_id("room", room)
                if room.startswith(RESERVED_PREFIX):
                    raise InvalidIdentifier(f"room {preview(room)} is reserved")
                frames = [encode(RoomMessage(room=room, data=data)) for data in payloads]
            else:
                user = self.hub.check_id("user_id", user_id)
                frames = [encode(WSMessage(data=data)) for data in payloads]
        except (InvalidIdentifier, InvalidMessage) as exc:
            return ApiResponse.json(400, {"error": str(exc)})
        # Everything lands in each recipient's send buffer in one go: a batch that does not
        # fit would close every one of them as a slow consumer (4008).
        size, fits = sum(frame.size for frame in frames), self.send_buffer_limit // 2
        if size > fits:
            return ApiResponse.json(
                413,
                {
                    "error": f"the messages encode to {size} bytes; at most {fits} (half of "
                    "--send-buffer-limit) go out at once: split them"
                },
            )
        if room is not None:
            delivered = sum(self.hub.deliver(Target.ROOM, room, f) for f in frames)
        else:
            delivered = sum(self.hub.deliver(Target.USER, user, f) for f in frames)
        return ApiResponse.json(200, {"delivered": delivered})


def _protocol_ping(connection_id: str, transport: NativeTransport, message: object) -> None:
    transport.ping()


def _new_hub(config: ServerConfig) -> Hub:
    broker = None
    if config.redis_url is not None:
        from roomcast.redis_pubsub import RedisPubSub

        broker = RedisPubSub(config.redis_url, prefix=config.channel_prefix)
    return Hub(
        broker,
        overflow=OverflowPolicy.CLOSE,
        send_buffer_limit=config.send_buffer_limit,
        max_id_bytes=config.max_id_bytes,
        max_rooms=config.max_rooms,
    )


MAX_BATCH = 1000
"""Most messages one ``POST /api/publish`` may carry in ``batch``."""
_TEXT = "text/plain; charset=utf-8"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_GET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


_STATIC_FILES = {
    "/client.js": ("client.js", "text/javascript; charset=utf-8"),
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo.css": ("demo.css", "text/css; charset=utf-8"),
}


def _load_static(demo: bool) -> dict[str, tuple[bytes, str]]:
    """The files served over GET, read once at start-up (package data in ``static/``)."""
    folder = resources.files("roomcast") / "static"
    return {
        path: ((folder / name).read_bytes(), content_type)
        for path, (name, content_type) in _STATIC_FILES.items()
        if demo or path == "/client.js"
    }


_PAGE_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""The demo page loads nothing from elsewhere (no CDN) and talks only to this server."""


def _respond(status: int, body: bytes, content_type: str = _TEXT) -> WSUpgradeResponseWithListener:
    headers = {"Content-Type": content_type, "X-Content-Type-Options": "nosniff"}
    if content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = _PAGE_POLICY
    if status == 200:
        response = WSUpgradeResponse.create_ok_response(body, headers)
    else:
        response = WSUpgradeResponse.create_error_response(status, body, headers)
    return WSUpgradeResponseWithListener(response, None)
