"""The ``$stats`` room: each instance's figures, once per interval, to whoever watches.

With a broker every instance publishes to the same room, so a watcher (the demo page's
dashboard) sees one line per process.  Nothing is encoded while nobody watches anywhere it
can know of (with a broker: always, since watchers elsewhere are not known here).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from roomcast.brokers.envelope import Target
from roomcast.frame import encode
from roomcast.hub import Hub
from roomcast.presence.feed import RESERVED_PREFIX, STATS_ROOM
from roomcast.protocol import StatsMessage
from roomcast.serve.metrics import ServerCounters

__all__ = ["StatsFeed"]


class StatsFeed:
    """This instance's figures for the ``$stats`` room.

    Args:
        hub: Counts connections, rooms and frames; carries the figures.
        counters: The server's own counters.
        instance_id: Names this instance in the messages.
        host: The address it listens on (for the label).
        port: Its WebSocket port, once listening.
        interval: Seconds between two messages.
    """

    def __init__(
        self,
        hub: Hub,
        counters: ServerCounters,
        instance_id: str,
        host: str,
        port: Callable[[], int],
        interval: float,
    ) -> None:
        self._hub = hub
        self._counters = counters
        self._instance_id = instance_id
        self._host = host
        self._port = port
        self._interval = interval
        self._started_at = time.monotonic()

    def figures(self) -> dict[str, Any]:
        """This instance's figures; counters are totals since start."""
        stats = self._hub.stats
        return {
            "label": f"{self._host}:{self._port()} pid {os.getpid()}",
            "uptime": round(time.monotonic() - self._started_at, 3),
            "connections": self._hub.active_connections,
            "rooms": sum(1 for r in self._hub.active_rooms if not r.startswith(RESERVED_PREFIX)),
            "messages_in": self._counters.messages_in,
            "messages_out": stats.frames_sent,
            "slow_consumer_closes": stats.slow_consumer_closes,
            "heartbeat_timeouts": self._counters.heartbeat_timeouts,
            "rate_limited": self._counters.rate_limited,
        }

    async def run(self) -> None:
        """Send this instance's figures to ``$stats`` (every instance's watchers, with Redis)."""
        interval = self._interval
        while True:
            await asyncio.sleep(interval)
            if not self._hub.reaches(Target.ROOM, STATS_ROOM):
                continue
            message = StatsMessage(instance=self._instance_id, data=self.figures())
            self._hub.deliver(Target.ROOM, STATS_ROOM, encode(message))
