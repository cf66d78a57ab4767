"""The two listening ports of ``roomcast serve`` and the descriptors they may take.

The WebSocket port and the optional API port accept through ``roomcast.serve.listener`` within
a budget planned from the process's open-file limit at start-up (``DescriptorBudget``): when
the limit cannot hold ``--max-connections`` clients, a WARNING says so and the lower figure is
served.  Accept failures for want of descriptors are counted and logged within the log budget.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import resource
import socket
from collections.abc import Callable, Iterator
from typing import Any

from roomcast.limits import DescriptorBudget
from roomcast.logbudget import EventLog
from roomcast.serve.config import ServerConfig
from roomcast.serve.http_api import (
    API_REFUSAL_HEADROOM,
    Answer,
    ApiRequest,
    ApiStats,
    serve_api,
)
from roomcast.serve.listener import Acceptor, Front, listening_sockets, server_protocols
from roomcast.serve.metrics import Sample, ServerCounters
from roomcast.serve.options import OptionError
from roomcast.serve.pages import misdirected

__all__ = ["Ports"]

logger = logging.getLogger("roomcast.server")


class Ports:
    """The WebSocket port (picows) and the API port, within the descriptor budget.

    Args:
        config: Addresses, caps and timeouts.
        counters: ``accept_errors`` is counted here.
        events: Where accept failures are logged, within the budget.
    """

    def __init__(self, config: ServerConfig, counters: ServerCounters, events: EventLog) -> None:
        self._config = config
        self._counters = counters
        self._events = events
        self.budget = self._plan()
        self.api_stats = ApiStats()
        self._acceptor: Acceptor | None = None
        self._api: Acceptor | None = None
        self._port: int | None = None  # kept: the socket is closed while the server drains

    @property
    def max_connections(self) -> int:
        """Connections admitted: ``config.max_connections``, or fewer if the open-file limit
        cannot hold them."""
        return self.budget.connections

    @property
    def port(self) -> int:
        """The WebSocket port actually listened on (useful with ``port=0``)."""
        assert self._port is not None, "server not started"
        return self._port

    @property
    def api_port(self) -> int:
        """The port of the HTTP API."""
        assert self._api is not None, "API not started"
        return int(self._api.sockets[0].getsockname()[1])

    @property
    def has_api(self) -> bool:
        return self._api is not None

    async def open(
        self,
        route: Callable[[Any], Any],
        api: Callable[[ApiRequest], Answer],
        sock: socket.socket | None = None,
        front: Front | None = None,
    ) -> None:
        """Listen: upgrades and GETs go to ``route``, API requests to ``api``; on ``sock`` if
        given (already bound and listening); ``front`` reads each request before picows does
        (``listener.server_protocols``)."""
        config = self._config
        if sock is not None:
            sockets = [sock]
        else:
            with _taken("--port", config.host, config.port):
                sockets = listening_sockets(
                    config.host, config.port, self._backlog(), config.reuse_port
                )
        self._port = int(sockets[0].getsockname()[1])
        self._acceptor = Acceptor(
            sockets,
            server_protocols(
                route,
                self._released,
                handshake_timeout=config.handshake_timeout,
                max_frame_size=config.max_message_size,
                logger=logging.LoggerAdapter(logging.getLogger("roomcast.picows")),
                with_body=lambda method: misdirected(
                    method, self.api_port if self.has_api else None
                ),
                front=front,
            ),
            self.budget.sockets,
            self._accept_failed,
        )
        if config.api_port is not None:
            try:
                with _taken("--api-port", config.host, config.api_port):
                    self._api = await serve_api(
                        api,
                        config.host,
                        config.api_port,
                        config.reuse_port,
                        header_timeout=config.api_header_timeout,
                        body_timeout=config.api_body_timeout,
                        max_connections=config.api_max_connections,
                        stats=self.api_stats,
                        on_accept_error=self._accept_failed,
                    )
            except OptionError:
                self._acceptor.close()
                raise

    def stop_accepting(self) -> None:
        """Close the WebSocket port's listening sockets (accepted ones live on)."""
        if self._acceptor is not None:
            self._acceptor.close()

    def close_api(self) -> None:
        if self._api is not None:
            self._api.close()

    def _plan(self) -> DescriptorBudget:
        """The WebSocket port's share of the open-file limit, with a warning when the limit
        cannot hold ``max_connections`` (upgrades beyond the lowered cap get 503)."""
        config = self._config
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        api = (
            config.api_max_connections + API_REFUSAL_HEADROOM if config.api_port is not None else 0
        )
        budget = DescriptorBudget.plan(open_files, config.max_connections, api)
        if budget.lowered:
            logger.warning(
                "the open-file limit (%d) holds at most %d WebSocket connections, not "
                "--max-connections %d: serving at most %d; raise the limit (ulimit -n, "
                "LimitNOFILE=) or run more workers",
                open_files,
                budget.connections,
                config.max_connections,
                budget.connections,
            )
        return budget

    def _backlog(self) -> int:
        """The listen backlog: at most the sockets the port may hold (the kernel keeps the
        rest of a connect storm waiting for us, not for a descriptor we do not have)."""
        return max(16, min(self._config.backlog, self.budget.sockets))

    def _released(self, protocol: Any) -> None:
        assert self._acceptor is not None
        self._acceptor.released(protocol)

    def metrics(self) -> list[Sample]:
        """The ports' gauges and counters, read at each scrape."""
        acceptor, api = self._acceptor, self.api_stats
        return [
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
            (
                "counter",
                "roomcast_api_evicted_connections",
                "API connections dropped at the cap to make room (idle or lingering ones).",
                api.evicted_connections,
            ),
        ]

    def _accept_failed(self, exc: OSError) -> None:
        self._counters.accept_errors += 1
        self._events.event(
            "accept_failed",
            "%s: out of descriptors; the port waits %.1f s (open-file limit %d)",
            exc.strerror or exc,
            0.1,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )


@contextlib.contextmanager
def _taken(flag: str, host: str, port: int) -> Iterator[None]:
    """Turn "address already in use" into an ``OptionError`` that names ``flag`` and the way
    out."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise OptionError(
            f"{flag} {port}: {host}:{port} is already in use by another process; stop it or "
            f"choose another {flag}"
        ) from None
