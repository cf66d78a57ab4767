"""``roomcast serve``'s server: the parts wired together, and the life of each connection.

One ``Server`` owns a ``Hub`` (registry, fan-out, optional Redis broker), the WebSocket port
(picows over roomcast's own acceptor, within the descriptor budget) and the optional API port.
The jobs are in modules of their own: ``gate`` admits upgrades, ``pages`` answers GETs,
``session`` carries out client messages, ``publish_api`` serves ``POST /api/publish``,
``stats`` feeds the ``$stats`` room, ``lifecycle_events`` the webhooks.  What stays here is the
wiring, start and stop, and what each ``NativeTransport`` reports (opened, a message, gone).

Paths: ``/ws`` and ``/ws/{room}`` upgrade (``?user_id=`` names the user until authentication
arrives; ``/ws/{room}`` joins that room at once); ``/healthz``, ``/readyz``, ``/metrics``,
``/`` (the demo) and ``/client.js`` are GETs; anything else is 404; a POST, PUT, PATCH or
DELETE 405 (``listener.FirstRequest``).  ``$`` rooms are the server's (``$stats``, ``$presence:R``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from typing import Any

from picows import (
    WSMsgType,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from roomcast.auth import expiry_with_leeway
from roomcast.connection import Connection
from roomcast.errors import CloseCode
from roomcast.expiry import ExpiryClock, Step, expiry_warning, run_expiry
from roomcast.figures import Figure
from roomcast.frame import encode
from roomcast.heartbeat import HeartbeatManager
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.messages import preview
from roomcast.presence.feed import PresenceFeed
from roomcast.presence.rosters import Roster
from roomcast.serve.assembly import new_hub
from roomcast.serve.backend_hooks import BackendHooks
from roomcast.serve.config import ServerConfig
from roomcast.serve.gate import Admitted, Gate
from roomcast.serve.lifecycle_events import LifecycleEvents
from roomcast.serve.metrics import ServerCounters, metrics_registry
from roomcast.serve.native import EchoTransport, FlushScheduler, NativeTransport
from roomcast.serve.pages import Pages, respond
from roomcast.serve.permissions import CONNECT_DATA, WHO, Permissions
from roomcast.serve.ports import Ports
from roomcast.serve.publish_api import PublishApi
from roomcast.serve.session import Session
from roomcast.serve.startup import startup_lines
from roomcast.serve.stats import StatsFeed
from roomcast.serve.worker_sync import exchange_snapshots
from roomcast.serve.workers import WorkerView
from roomcast.tasks import TaskSet

__all__ = ["Server", "ServerConfig"]  # (ServerConfig from roomcast.serve.config)

logger = logging.getLogger("roomcast.server")


class Server:
    """A roomcast hub served natively over picows.

    Args:
        config: Listening address and limits.
        hub: The hub to serve; a new one from ``config`` if omitted (with a Redis broker
            when ``config.redis_url`` is set).
    """

    def __init__(self, config: ServerConfig, hub: Hub | None = None) -> None:
        self.config = config
        self.hub = hub or new_hub(config)
        self.send_buffer_limit = config.send_buffer_limit
        self.close_timeout = config.close_timeout
        self.max_message_size = config.max_message_size
        self.counters = ServerCounters()
        self.events = EventLog(logger)
        self.ports = Ports(config, self.counters, self.events)
        self.metrics = metrics_registry(
            self.hub, self.counters, self._buffered_bytes, self._metrics
        )
        self.workers: WorkerView | None = None  # (one of --workers: answers for them all)
        if config.worker is not None and config.redis_url is not None:
            self.workers = WorkerView(config.worker)
        self.pages = Pages(
            self.hub, self.metrics, config.demo, lambda: self._accepting, self.workers
        )
        self.permissions = Permissions(config, self.hub, self.counters, self.events)
        self._tasks = TaskSet()
        self.hooks = BackendHooks(config, self._tasks.spawn, lambda *why: self.gate.refused(*why))
        self.gate = Gate(
            config, self.hub, self.counters, self.events, self.permissions, self.hooks.handover
        )
        self.scheduler = FlushScheduler()
        self._expiry = ExpiryClock(config.token_grace)
        self._expiry_changed = asyncio.Event()
        self.heartbeat: HeartbeatManager | None = None
        if config.ping_interval > 0:
            self.heartbeat = HeartbeatManager(
                config.ping_interval, config.pong_timeout, send_ping=_protocol_ping
            )
        self._accepting = False
        self._open: set[NativeTransport] = set()
        self._all_gone = asyncio.Event()
        self.instance_id = uuid.uuid4().hex
        self._redis: Any = None
        self.presence: PresenceFeed | None = None
        if config.presence if config.presence is not None else config.redis_url is None:
            self.presence = PresenceFeed(self.hub, self.events, self._new_roster())
            self.hub.observe(self.presence)
        self.lifecycle = LifecycleEvents(config, self.hub, self.instance_id)
        self.session = Session(
            config,
            self.hub,
            self.counters,
            self.events,
            lambda: self.presence,
            self.gate.verify if config.authenticator is not None else None,
            self._arm_expiry,
            self._tasks.spawn,
            self.permissions,
            self.hooks.commands,
        )
        self.session.on_publish = self.lifecycle.published
        self.stats = StatsFeed(
            self.hub,
            self.counters,
            self.instance_id,
            config.host,
            lambda: self.port,
            config.stats_interval,
        )

    def _new_roster(self) -> Roster | None:
        """A cluster-wide roster when the hub spans processes, else None (the feed then
        reads the hub's own registry)."""
        if self.config.redis_url is None:
            return None
        import redis.asyncio

        from roomcast.presence.redis import RedisRoster
        from roomcast.presence.roster import RoomRoster

        self._redis = redis.asyncio.Redis.from_url(
            self.config.redis_url, max_connections=4, socket_timeout=5.0
        )
        roster = RoomRoster(
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
        return RedisRoster(roster, self.events)

    @property
    def port(self) -> int:
        """The WebSocket port actually listened on (useful with ``port=0``)."""
        return self.ports.port

    @property
    def api_port(self) -> int:
        """The port of the HTTP API."""
        return self.ports.api_port

    def _metrics(self) -> list[Figure]:
        """The ports', presence's, the worker exchange's, the hooks' and lifecycle events'
        figures for ``/metrics``."""
        samples: list[Figure] = []
        if self.presence is not None:
            samples.append(
                (
                    "counter",
                    "roomcast_presence_snapshots_coalesced",
                    "Presence snapshot requests folded into a later snapshot (one a second "
                    "per connection and room).",
                    self.presence.coalesced,
                )
            )
        if self.workers is not None:
            samples.append(
                (
                    "counter",
                    "roomcast_worker_sync_failures",
                    "Exchanges of worker figures with Redis that failed (--workers).",
                    self.workers.sync_failures,
                )
            )
        return [*samples, *self.ports.metrics(), *self.hooks.figures(), *self.lifecycle.figures()]

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen and accept clients, on ``sock`` if given (already bound and listening)."""
        await self.hub.start()
        if self.presence is not None:
            await self.presence.start()
        api = PublishApi(self.hub, self.config.api_key, self.send_buffer_limit, self.pages)
        await self.hooks.start()
        await self.lifecycle.start()
        await self.ports.open(self._route, api, sock, self.hooks.front)
        if self.config.authenticator is not None or self.hooks.expiring:
            self._tasks.spawn(
                run_expiry(self._expiry, self._expiry_changed, self._expiry_step),
                name="roomcast-token-expiry",
            )
        if self.config.stats_interval > 0:
            self._tasks.spawn(self.stats.run(), name="roomcast-stats")
        if self.workers is not None and self.config.redis_url is not None:
            own = self.workers.snapshot
            self._tasks.spawn(
                exchange_snapshots(
                    self.workers,
                    self.config.redis_url,
                    self.config.channel_prefix,
                    lambda: own(self.metrics, self.pages.unready()),
                ),
                name="roomcast-worker-sync",
            )
        self._accepting = True
        api_port = self.api_port if self.ports.has_api else None
        for line in startup_lines(self.config, self.port, api_port):
            logger.info("%s", line)

    async def stop(self) -> None:
        """Stop accepting, close every client with 1001, and wait (bounded) until they left."""
        self._accepting = False
        self.ports.stop_accepting()
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
        await self.hooks.stop()
        if self.presence is not None:
            await self.presence.stop()
        if self._redis is not None:
            await self._redis.aclose()
        self.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
        await self.lifecycle.stop()  # (after the clients: their departures are recorded)
        await self.hub.stop()
        self.ports.close_api()

    def _route(self, request: WSUpgradeRequest) -> Any:
        """picows' upgrade callback: a GET's answer, a refusal, or the client's transport."""
        path, _, query = request.path.decode("latin-1").partition("?")
        if path == "/echo" and self.config.echo and self._accepting:
            return EchoTransport(self, Connection(None, None))
        if path != "/ws" and not path.startswith("/ws/"):
            return respond(*self.pages.get(path))
        if not self._accepting:
            return self.gate.refuse(503, b"shutting down\n")
        admitted = self.gate.admit(
            request, path, query, open_now=len(self._open), cap=self.ports.max_connections
        )
        if not isinstance(admitted, Admitted):
            return admitted
        connection, room = Connection(None, admitted.user_id), admitted.room
        transport = self.lifecycle.transport(self, connection, room)
        if admitted.expires_at is not None:
            transport.connection.metadata["token_expires_at"] = admitted.expires_at
        if admitted.who is not None:  # (only a claim, or no token, says more than the user id)
            transport.connection.metadata[WHO] = admitted.who
        if admitted.data is not None:
            transport.connection.metadata[CONNECT_DATA] = admitted.data
        if admitted.protocol is not None:  # the token came as a subprotocol: select "bearer"
            headers = {"Sec-WebSocket-Protocol": admitted.protocol}
            accept = WSUpgradeResponse.create_101_response(headers)
            return WSUpgradeResponseWithListener(accept, transport)
        return transport

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
        self.lifecycle.connected(connection)  # (before its first join)
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
        self.session.forget(transport.connection)
        self.hub.forget(transport.connection)  # (presence, an observer, hears it)
        if self.heartbeat is not None:
            self.heartbeat.stop_heartbeat(transport.connection.connection_id)
        self._expiry.forget(transport.connection.connection_id)
        if not self._open:
            self._all_gone.set()

    def ponged(self, transport: NativeTransport) -> None:
        if self.heartbeat is not None:
            self.heartbeat.record_pong(transport.connection.connection_id)

    def received(self, transport: NativeTransport, message: str | bytes, size: int) -> None:
        # (EchoTransport answers by itself and never calls this.)
        if self.heartbeat is not None:  # any message is a sign of life
            self.heartbeat.record_pong(transport.connection.connection_id)
        self.session.received(transport, message, size)

    def admit_frame(self, transport: NativeTransport, opcode: WSMsgType) -> bool:
        # Pings, pongs and continuation frames cost a token each, like messages: empty
        # frames are cheap to send and not free to receive.  (Echo connections are for
        # protocol test suites and are not limited.)
        if not self.session.rate_limited or type(transport) is EchoTransport:
            return True
        return self.session.charge(transport)

    def _silent(self, connection_id: str) -> None:
        """The heartbeat gave up on a client: drop the socket (it would not read a close)."""
        connection = self.hub.get_connection(connection_id)
        if connection is not None and isinstance(connection.transport, NativeTransport):
            self.counters.heartbeat_timeouts += 1
            self.lifecycle.closing(connection, CloseCode.HEARTBEAT_TIMEOUT, "no pong")
            self.events.event(
                "heartbeat_timeout",
                "dropped connection %s (user %s): no pong",
                connection_id,
                preview(connection.user_id),
            )
            connection.transport.abort()

    # ------------------------------------------------------------------ token expiry

    def _arm_expiry(self, connection_id: str, expires_at: float | None) -> None:
        # The clock skew tolerated at connect and refresh is tolerated at expiry too.
        self._expiry.set(connection_id, expiry_with_leeway(expires_at, self.config.authenticator))
        self._expiry_changed.set()

    def _expiry_step(self, connection_id: str, step: Step) -> None:
        """Warn at expiry; close (4001) after the grace."""
        connection = self.hub.get_connection(connection_id)
        if connection is None:
            return
        if step is Step.WARN:
            self.hub.deliver_to(connection, encode(expiry_warning(self.config.token_grace)))
        else:
            self.counters.token_expiries += 1
            self.events.event(
                "token_expired",
                "closed connection %s (user %s) with 4001",
                connection_id,
                preview(connection.user_id),
            )
            connection.transport.close(CloseCode.TOKEN_EXPIRED, "token expired")


def _protocol_ping(connection_id: str, transport: NativeTransport, message: object) -> None:
    transport.ping()
