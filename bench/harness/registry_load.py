"""``idle.py``'s registry part: ``PresenceRegistry`` instances in this process sharing one
redis-server, and the load they put on it (``INFO commandstats``, ``INFO stats``, memory,
redis-server's CPU) while they register, refresh and stop.

roomcast and redis-py are imported when a ``RegistryFleet`` is made, not before: ``idle.py
--snapshot`` puts a frozen ``src/`` first on ``sys.path`` in between.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from harness.processes import cpu_ns_of
from harness.report import log
from harness.stats import median

if TYPE_CHECKING:
    from roomcast.testing import RedisServer

__all__ = [
    "RedisStats",
    "RegistryFleet",
    "counting",
    "redis_delta",
    "refresh_window",
    "register_all",
]


class RedisStats:
    """Snapshots of one redis-server's command counters, memory and CPU."""

    def __init__(self, admin: Any, server: RedisServer) -> None:
        self.admin = admin
        self.server = server

    async def snapshot(self) -> dict[str, Any]:
        commandstats = await self.admin.info("commandstats")
        stats = await self.admin.info("stats")
        memory = await self.admin.info("memory")
        return {
            "t": time.monotonic(),
            "calls": {
                name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in commandstats.items()
            },
            "total_commands_processed": int(stats["total_commands_processed"]),
            "used_memory": int(memory["used_memory"]),
            "used_memory_dataset": int(memory["used_memory_dataset"]),
            "keys": int(await self.admin.dbsize()),
            "redis_cpu_ns": cpu_ns_of(self.server.pid),
            "own_cpu_ns": cpu_ns_of(os.getpid()),
        }


def redis_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two snapshots, without the snapshots' own INFO/DBSIZE calls."""
    ours = {"info", "dbsize"}
    by_command = {
        name: calls - before["calls"].get(name, 0)
        for name, calls in after["calls"].items()
        if name not in ours and calls - before["calls"].get(name, 0)
    }
    snapshot_calls = sum(
        after["calls"].get(name, 0) - before["calls"].get(name, 0) for name in ours
    )
    elapsed = after["t"] - before["t"]
    return {
        "elapsed_s": elapsed,
        "commands_by_name": dict(sorted(by_command.items(), key=lambda kv: -kv[1])),
        "commandstats_total": sum(by_command.values()),
        # Redis 7 counts the commands a Lua script runs in both; PresenceRegistry.add's script
        # runs SCARD, SADD, EXPIRE (SCARD appears nowhere else here: at_cap is not called).
        "in_add_script": 3 * by_command.get("scard", 0),
        "total_commands_processed": after["total_commands_processed"]
        - before["total_commands_processed"]
        - snapshot_calls,
        "redis_cpu_s": (after["redis_cpu_ns"] - before["redis_cpu_ns"]) / 1e9,
        "redis_cpu_pct": (after["redis_cpu_ns"] - before["redis_cpu_ns"]) / 1e9 / elapsed * 100,
        "own_cpu_pct": (after["own_cpu_ns"] - before["own_cpu_ns"]) / 1e9 / elapsed * 100,
        "used_memory_delta": after["used_memory"] - before["used_memory"],
        "used_memory": after["used_memory"],
        "used_memory_dataset": after["used_memory_dataset"],
        "keys": after["keys"],
    }


def counting(
    method: Callable[[], Awaitable[Any]],
    calls: list[float],
    after: Callable[[], None] | None = None,
) -> Callable[[], Any]:
    """Wrap a registry's bound coroutine method: note the wall time each call took, then
    call ``after``."""

    async def wrapper() -> Any:
        started = time.monotonic()
        try:
            return await method()
        finally:
            calls.append(time.monotonic() - started)
            if after is not None:
                after()

    return wrapper


async def register_all(
    registry: Any, items: Sequence[tuple[str, str, str]], concurrency: int
) -> int:
    """``add`` then ``join`` every (connection, user, room), ``concurrency`` at a time."""
    refused = 0
    queue = iter(items)

    async def worker() -> None:
        nonlocal refused
        for connection_id, user_id, room in queue:
            if not await registry.add(connection_id, user_id):
                refused += 1
                continue
            await registry.join(connection_id, room)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return refused


async def refresh_window(
    args: argparse.Namespace,
    registries: Sequence[Any],
    stats: RedisStats,
    interval: float,
    label: str,
) -> dict[str, Any]:
    """Start the refresh loops and wait until each finished ``--refresh-rounds`` rounds."""
    rounds: list[list[float]] = [[] for _ in registries]
    refresh_s: list[list[float]] = [[] for _ in registries]
    enough = asyncio.Event()

    def check() -> None:
        if min(len(r) for r in rounds) >= args.refresh_rounds:
            enough.set()

    for registry, done, took in zip(registries, rounds, refresh_s, strict=True):
        registry._refresh_interval = interval  # bench only: the same records, another pace
        # A round of PresenceRegistry._run is announce, refresh, purge_dead: count the last.
        registry.purge_dead = counting(type(registry).purge_dead.__get__(registry), done, check)
        registry._refresh = counting(type(registry)._refresh.__get__(registry), took)
    before = await stats.snapshot()
    for registry in registries:
        await registry.start()
    limit = args.refresh_rounds * (interval + args.refresh_slack) + 30
    async with asyncio.timeout(limit):
        await enough.wait()
    after = await stats.snapshot()
    for registry in registries:  # stop the loops, keep the records (no purge)
        await registry._tasks.cancel_all()
    delta = redis_delta(before, after)
    complete = sum(len(r) for r in rounds)
    all_refresh = [t for took in refresh_s for t in took]
    delta.update(
        {
            "label": label,
            "refresh_interval": interval,
            "rounds_per_registry": [len(r) for r in rounds],
            "commands_per_s": delta["commandstats_total"] / delta["elapsed_s"],
            "by_name_per_s": {
                k: v / delta["elapsed_s"] for k, v in delta["commands_by_name"].items()
            },
            "commands_per_round": delta["commandstats_total"] * len(registries) / complete,
            "refresh_wall_s": {
                "median": median(all_refresh),
                "max": max(all_refresh, default=math.nan),
            },
        }
    )
    log(
        f"registry {label}: {delta['commands_per_s']:.0f} commands/s over "
        f"{delta['elapsed_s']:.1f} s, redis CPU {delta['redis_cpu_pct']:.2f} %"
    )
    return delta


class RegistryFleet:
    """``--registries`` ``PresenceRegistry`` instances, each with its own
    ``redis.asyncio.Redis`` client and ``ConnectionConfig``'s defaults, sharing ``server``;
    ``--registry-connections`` connections spread over them; the redis-server's counters."""

    def __init__(self, args: argparse.Namespace, server: RedisServer) -> None:
        import redis.asyncio

        from roomcast.fastapi.auth_manager import ConnectionConfig
        from roomcast.presence.connection_registry import PresenceRegistry

        self.args = args
        self.defaults = defaults = ConnectionConfig()
        k = args.registries
        self.admin = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
        self.clients = [
            redis.asyncio.Redis.from_url(server.url, max_connections=defaults.max_redis_connections)
            for _ in range(k)
        ]
        self.registries = [
            PresenceRegistry(
                client,
                secrets.token_hex(16),
                prefix=defaults.key_prefix,
                connection_ttl=defaults.connection_ttl,
                instance_ttl=defaults.instance_ttl,
                refresh_interval=defaults.refresh_interval,
            )
            for client in self.clients
        ]
        self.stats = RedisStats(self.admin, server)
        self.items: list[list[tuple[str, str, str]]] = [[] for _ in range(k)]
        self.empty: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        """The fleet, the connections' users and rooms, the settings; assigns the connections:
        connection g lives on instance g % k, users and rooms span the instances."""
        args, defaults = self.args, self.defaults
        k, m = args.registries, args.registry_connections
        settings = {
            "connection_ttl": defaults.connection_ttl,
            "instance_ttl": defaults.instance_ttl,
            "refresh_interval": defaults.refresh_interval,
            "max_redis_connections": defaults.max_redis_connections,
        }
        for g in range(m):
            self.items[g % k].append(
                (
                    secrets.token_hex(16),
                    f"user-{g // args.conns_per_user:06d}",
                    f"room-{g // args.room_size:05d}",
                )
            )
        return {
            "registries": k,
            "connections": m,
            "connections_per_user": args.conns_per_user,
            "room_size": args.room_size,
            "defaults": settings,
            "users": math.ceil(m / args.conns_per_user),
            "rooms": math.ceil(m / args.room_size),
        }

    async def register(self) -> dict[str, Any]:
        """Every connection's ``add`` + ``join`` (the baseline taken once each client holds a
        pooled connection); what Redis did meanwhile."""
        args = self.args
        await self.admin.ping()
        for client in self.clients:  # open one pooled connection each before the baseline
            await client.ping()
        self.empty = before = await self.stats.snapshot()
        async with asyncio.timeout(args.register_timeout):
            refused = await asyncio.gather(
                *(
                    register_all(r, mine, args.register_concurrency)
                    for r, mine in zip(self.registries, self.items, strict=True)
                )
            )
        after = await self.stats.snapshot()
        register = redis_delta(before, after)
        register["refused"] = sum(refused)
        log(
            f"registry: {args.registry_connections} connections registered in "
            f"{register['elapsed_s']:.1f} s, {register['commandstats_total']} commands, "
            f"{register['used_memory_delta'] / 2**20:.1f} MiB"
        )
        return register

    async def refresh(self, interval: float, label: str) -> dict[str, Any]:
        """``refresh_window`` of every instance at ``interval``."""
        return await refresh_window(self.args, self.registries, self.stats, interval, label)

    async def memory(self) -> dict[str, Any]:
        """Redis' memory and keys now against before the registration."""
        m, empty = self.args.registry_connections, self.empty
        steady = await self.stats.snapshot()
        return {
            "keys": steady["keys"],
            "used_mib": (steady["used_memory"] - empty["used_memory"]) / 2**20,
            "dataset_mib": (steady["used_memory_dataset"] - empty["used_memory_dataset"]) / 2**20,
            "bytes_per_conn": (steady["used_memory"] - empty["used_memory"]) / m,
            "dataset_bytes_per_conn": (steady["used_memory_dataset"] - empty["used_memory_dataset"])
            / m,
            "empty": {k: empty[k] for k in ("used_memory", "used_memory_dataset", "keys")},
            "with_records": {k: steady[k] for k in ("used_memory", "used_memory_dataset", "keys")},
        }

    async def clean_stop(self) -> dict[str, Any]:
        """``stop()`` of the first instance (it removes its records); what Redis did."""
        mine = self.items[0]
        before = await self.stats.snapshot()
        async with asyncio.timeout(self.args.stop_timeout):
            await self.registries[0].stop()
        after = await self.stats.snapshot()
        stop = redis_delta(before, after)
        stop["connections"] = len(mine)
        log(
            f"registry: clean stop of one instance ({len(mine)} connections) took "
            f"{stop['elapsed_s']:.1f} s, {stop['commandstats_total']} commands"
        )
        return stop

    async def close(self) -> None:
        """Cancel every instance's loops and close every client."""
        for registry in self.registries:
            with contextlib.suppress(Exception):
                await registry._tasks.cancel_all()
        for client in [*self.clients, self.admin]:
            with contextlib.suppress(Exception):
                await client.aclose()
