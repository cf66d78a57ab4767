"""Heartbeats: find connections whose client stopped answering, with one timer for all.

``HeartbeatSchedule`` is the pure core: it knows, for every connection, when the last ping went
out and the last pong came back, and given the time it says which connections are due a ping
and which are dead.  It keeps connections in one-tick buckets by the time they next need
attention, so a tick touches only the connections due then: 50,000 idle connections cost one
dictionary lookup per tick plus their pings, not a scan of everyone.

``HeartbeatManager`` (the documented API) drives a schedule from one task: each tick it sends the
due pings and reports the dead through the callback given to ``start_heartbeat``.

Timeline of one silent connection (ping_interval=30, pong_timeout=60)::

    t=0   start_heartbeat
    t=30  ping 1                  (no pong)
    t=60  ping 2                  missed=1
    t=90  dead: nothing since t=0 for ping_interval + pong_timeout -> on_disconnect_callback

A pong at any time resets the clock: the connection is dead only when nothing came back for
``ping_interval + pong_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from roomcast.messages import PingMessage
from roomcast.tasks import TaskSet

__all__ = ["ConnectionHealth", "HeartbeatManager", "HeartbeatSchedule"]

logger = logging.getLogger("roomcast.heartbeat")

PingSender = Callable[[str, Any, PingMessage], Awaitable[None] | None]
"""Sends a ping to one connection: (connection_id, websocket, message); must not block."""
DisconnectCallback = Callable[[str], Awaitable[None] | None]


@dataclasses.dataclass(slots=True)
class _Entry:
    started: float
    next_ping: float
    """When the next ping is due: start + k * interval, so late ticks do not add up."""
    last_ping: float | None = None
    last_pong: float | None = None
    rtt: float | None = None
    pings_since_pong: int = 0
    bucket: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionHealth:
    """What the heartbeat knows about one connection (times are ``time.time()`` seconds)."""

    connection_id: str
    alive: bool
    last_ping: float | None
    last_pong: float | None
    rtt: float | None
    """Seconds between the last answered ping and its pong."""
    missed: int
    """Pings sent since the last pong, not counting one still within its pong_timeout."""


class HeartbeatSchedule:
    """Which connections need a ping, and which are dead, at a given time.  Pure: the caller
    passes the clock (monotonic seconds) in.

    Args:
        ping_interval: Seconds between pings to one connection.
        pong_timeout: Seconds a ping may go unanswered beyond the next ping interval.
        resolution: Seconds per bucket; events fire up to this late.
    """

    def __init__(self, ping_interval: float, pong_timeout: float, resolution: float) -> None:
        if ping_interval <= 0 or pong_timeout <= 0 or resolution <= 0:
            raise ValueError("ping_interval, pong_timeout and resolution must be positive")
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.resolution = resolution
        self._entries: dict[str, _Entry] = {}
        self._buckets: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._entries

    def add(self, connection_id: str, now: float) -> None:
        """Start watching ``connection_id`` (again, if it already was)."""
        self.remove(connection_id)
        entry = _Entry(started=now, next_ping=now + self.ping_interval)
        self._entries[connection_id] = entry
        self._file(connection_id, entry, entry.next_ping)

    def remove(self, connection_id: str) -> bool:
        """Stop watching; False if it was not watched."""
        entry = self._entries.pop(connection_id, None)
        if entry is None:
            return False
        bucket = self._buckets.get(entry.bucket)
        if bucket is not None:
            bucket.discard(connection_id)
            if not bucket:
                del self._buckets[entry.bucket]
        return True

    def pong(self, connection_id: str, now: float) -> float | None:
        """Record a pong; returns the round-trip time if a ping was outstanding."""
        entry = self._entries.get(connection_id)
        if entry is None:
            return None
        entry.last_pong = now
        rtt = None
        if entry.pings_since_pong and entry.last_ping is not None:
            rtt = entry.rtt = now - entry.last_ping
        entry.pings_since_pong = 0
        return rtt

    def alive(self, connection_id: str, now: float) -> bool:
        entry = self._entries.get(connection_id)
        return entry is not None and now < self._deadline(entry)

    def health(self, connection_id: str, now: float) -> tuple[_Entry, bool, int] | None:
        """The raw entry, whether it is alive, and its missed pings."""
        entry = self._entries.get(connection_id)
        if entry is None:
            return None
        missed = entry.pings_since_pong
        if missed and entry.last_ping is not None and now - entry.last_ping < self.pong_timeout:
            missed -= 1  # the newest ping may still be answered
        return entry, now < self._deadline(entry), missed

    def ids(self) -> list[str]:
        return list(self._entries)

    def due(self, now: float) -> tuple[list[str], list[str]]:
        """``(to_ping, dead)`` at ``now``; the dead are removed, the pinged rescheduled."""
        to_ping: list[str] = []
        dead: list[str] = []
        current = self._tick(now)
        for tick in [tick for tick in self._buckets if tick <= current]:
            for connection_id in self._buckets.pop(tick):
                entry = self._entries[connection_id]
                deadline = self._deadline(entry)
                if now >= deadline:
                    del self._entries[connection_id]
                    dead.append(connection_id)
                    continue
                if now >= entry.next_ping:
                    entry.last_ping = now
                    entry.pings_since_pong += 1
                    to_ping.append(connection_id)
                    entry.next_ping += self.ping_interval
                    if entry.next_ping <= now:  # the loop stalled for a whole interval
                        entry.next_ping = now + self.ping_interval
                self._file(connection_id, entry, min(entry.next_ping, deadline))
        return to_ping, dead

    def next_event(self) -> float | None:
        """When ``due`` next has work (monotonic seconds), or None if nothing is watched."""
        if not self._buckets:
            return None
        return min(self._buckets) * self.resolution

    def _deadline(self, entry: _Entry) -> float:
        last = entry.last_pong if entry.last_pong is not None else entry.started
        return last + self.ping_interval + self.pong_timeout

    def _tick(self, when: float) -> int:
        return math.ceil(when / self.resolution)

    def _file(self, connection_id: str, entry: _Entry, when: float) -> None:
        tick = self._tick(when)
        entry.bucket = tick
        self._buckets.setdefault(tick, set()).add(connection_id)


class HeartbeatManager:
    """Pings every registered connection on one timer and reports those that stop answering.

    Args:
        ping_interval: Seconds between pings to a connection.
        pong_timeout: Seconds allowed after a ping interval without any pong before the
            connection counts as dead (so dead = silent for ``ping_interval + pong_timeout``).
        send_ping: How to ping one connection.  The default sends an application-level
            ``PingMessage`` (JSON text) with ``websocket.send_text``, the only ping an ASGI app
            can send; clients answer with a ``PongMessage`` that the application passes to
            ``record_pong``.  ``roomcast serve`` uses protocol-level pings instead.
        resolution: Timer granularity in seconds (default: a tenth of ``ping_interval``,
            at most 1 s).

    The timer task starts with the first ``start_heartbeat`` (which needs a running event
    loop) and stops with ``close()``.
    """

    def __init__(
        self,
        ping_interval: float = 30.0,
        pong_timeout: float = 60.0,
        *,
        send_ping: PingSender | None = None,
        resolution: float | None = None,
    ) -> None:
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self._schedule = HeartbeatSchedule(
            ping_interval,
            pong_timeout,
            resolution if resolution is not None else min(1.0, ping_interval / 10),
        )
        self._send_ping = send_ping or _send_app_ping
        self._watched: dict[str, tuple[Any, DisconnectCallback | None]] = {}
        self._wakeup = asyncio.Event()
        self._planned: float | None = None
        """When the timer will wake up next (monotonic), None while it waits for work."""
        self._tasks = TaskSet()
        self._timer: asyncio.Task[None] | None = None
        # monotonic -> wall clock, for the metrics
        self._wall_offset = time.time() - time.monotonic()

    def start_heartbeat(
        self,
        connection_id: str,
        websocket: Any,
        on_disconnect_callback: DisconnectCallback | None = None,
    ) -> None:
        """Watch a connection: ping it every ``ping_interval``; if it stays silent for
        ``ping_interval + pong_timeout``, stop watching it and call
        ``on_disconnect_callback(connection_id)`` (sync or async)."""
        now = time.monotonic()
        self._schedule.add(connection_id, now)
        self._watched[connection_id] = (websocket, on_disconnect_callback)
        if self._timer is None or self._timer.done():
            self._timer = self._tasks.spawn(self._run(), name="roomcast-heartbeat")
        # Wake the timer only if this connection is due before its planned wake-up: new
        # connections are due last, so a busy server's handshakes cost no task switch.
        planned = self._planned
        if planned is None or now + self.ping_interval < planned:
            self._wakeup.set()

    def record_pong(self, connection_id: str) -> float | None:
        """A pong (or any sign of life) from the connection; returns the RTT if known."""
        return self._schedule.pong(connection_id, time.monotonic())

    def is_connection_alive(self, connection_id: str) -> bool:
        """True while watched and not silent for ``ping_interval + pong_timeout``."""
        return self._schedule.alive(connection_id, time.monotonic())

    def get_health_metrics(self, connection_id: str) -> ConnectionHealth | None:
        """One connection's health, or None if it is not watched."""
        found = self._schedule.health(connection_id, time.monotonic())
        if found is None:
            return None
        entry, alive, missed = found
        return ConnectionHealth(
            connection_id=connection_id,
            alive=alive,
            last_ping=self._wall(entry.last_ping),
            last_pong=self._wall(entry.last_pong),
            rtt=entry.rtt,
            missed=missed,
        )

    def get_all_health_metrics(self) -> dict[str, ConnectionHealth]:
        """Health of every watched connection, by connection id."""
        found = {cid: self.get_health_metrics(cid) for cid in self._schedule.ids()}
        return {cid: health for cid, health in found.items() if health is not None}

    def stop_heartbeat(self, connection_id: str) -> bool:
        """Stop watching; False if it was not watched."""
        self._watched.pop(connection_id, None)
        return self._schedule.remove(connection_id)

    @property
    def watched(self) -> int:
        """Connections being watched."""
        return len(self._schedule)

    async def close(self) -> None:
        """Stop the timer and any ping or callback still running; forget every connection."""
        await self._tasks.cancel_all()
        self._timer = None
        for connection_id in self._schedule.ids():
            self.stop_heartbeat(connection_id)

    def _wall(self, monotonic: float | None) -> float | None:
        return None if monotonic is None else monotonic + self._wall_offset

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due = self._schedule.next_event()
                self._wakeup.clear()
                self._planned = due
                if due is None:
                    await self._wakeup.wait()
                    continue
                if due > time.monotonic():
                    try:
                        async with asyncio.timeout_at(loop.time() + due - time.monotonic()):
                            await self._wakeup.wait()
                        continue  # a new connection may be due sooner
                    except TimeoutError:
                        pass
                self._tick(time.monotonic())
        finally:
            self._planned = None

    def _tick(self, now: float) -> None:
        to_ping, dead = self._schedule.due(now)
        for connection_id in to_ping:
            websocket = self._watched.get(connection_id, (None, None))[0]
            try:
                outcome = self._send_ping(connection_id, websocket, PingMessage())
                if inspect.isawaitable(outcome):
                    self._tasks.spawn(_bounded(outcome, self.pong_timeout))
            except Exception:
                logger.exception("sending a ping to %s failed", connection_id)
        for connection_id in dead:
            callback = self._watched.pop(connection_id, (None, None))[1]
            logger.info("connection %s missed its heartbeat; disconnecting", connection_id)
            if callback is None:
                continue
            try:
                outcome = callback(connection_id)
                if inspect.isawaitable(outcome):
                    self._tasks.spawn(_bounded(outcome, self.pong_timeout))
            except Exception:
                logger.exception("heartbeat disconnect callback for %s failed", connection_id)


async def _bounded(awaitable: Awaitable[None], seconds: float) -> None:
    """Await a ping send or a callback, but never longer than ``seconds`` (a client that does
    not read must not pile up sends)."""
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        logger.warning("heartbeat send or callback took over %.0f s; abandoned", seconds)
    except Exception:
        logger.exception("heartbeat send or callback failed")


async def _send_app_ping(connection_id: str, websocket: Any, message: PingMessage) -> None:
    await websocket.send_text(message.to_json())
