"""Idle cost of the heartbeat, and the Redis load of the presence registry (issue 5).

    .venv/bin/python bench/idle.py

Part 1, heartbeat: one ``roomcast serve`` process per heartbeat setting (``--variants``; by
default off, ``--ping-interval 20 --pong-timeout 20`` and ``--ping-interval 5``), all up at
the same time, each with N (15,000) idle picows clients of its own (``harness/clients.py``; picows
answers protocol pings itself).  Over the same idle windows: server CPU (user + system, all
threads, ``/proc/PID/task/*/schedstat``) per second, write/read syscalls per second
(``/proc/PID/io``: one ping out, one pong in), RSS per connection, client CPU, and from
``GET /metrics`` that no client was dropped (``roomcast_heartbeat_timeouts_total`` stays 0,
``roomcast_connections`` stays N).

Part 2, registry: a throwaway redis-server, K (3) ``PresenceRegistry`` instances in this
process, each with its own ``redis.asyncio.Redis`` client, together registering M (50,000)
connections (``add`` + ``join`` of one room of ~50 members) with ``ConnectionConfig``'s default
TTLs; then their refresh loops run for a number of whole rounds while ``INFO commandstats``,
``INFO stats`` and the redis-server's CPU are read before and after.  Optionally the same again
at a shorter ``refresh_interval`` (labelled), and the clean stop of one instance.

Prints Markdown tables (also written to ``bench/results/idle-*.md``), progress on stderr, the
raw figures to ``bench/results/idle-*.json``.  bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import math
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from harness.clients import WorkerConfig
from harness.limits import wide_port_range
from harness.meta import cpu_probe, redis_version, run_meta
from harness.processes import cpu_ns_of, die_with_parent, io_of
from harness.report import (
    environment_line,
    log,
    problem_lines,
    publish,
    results_path,
    spread,
    steadiness_line,
    write_json,
)
from harness.runs import RESULTS_DIR, DeadlineExpired, close_meta, deadline, prepare, snapshot
from harness.stats import median
from harness.targets import PACKAGES, SPECS, Target, metrics_of
from harness.workers import Workers, connect_counts, split

if TYPE_CHECKING:
    from roomcast.testing import RedisServer

REFERENCE_IDLE = "uvicorn's default 20 s keepalive pings: ~4 % of a core at 15k idle connections"


def auto_pong_default() -> bool | None:
    """picows' ``ws_connect(enable_auto_pong=...)`` default (the client does not set it)."""
    from picows import ws_connect

    parameter = inspect.signature(ws_connect).parameters.get("enable_auto_pong")
    return None if parameter is None else bool(parameter.default)


# ------------------------------------------------------------------ part 1: heartbeat


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    interval: float
    timeout: float | None
    """None: ``--pong-timeout`` not given (the server's default applies)."""

    @property
    def flags(self) -> list[str]:
        flags = ["--ping-interval", f"{self.interval:g}"]
        if self.timeout is not None:
            flags += ["--pong-timeout", f"{self.timeout:g}"]
        return flags


def parse_variants(text: str) -> list[Variant]:
    """``name=interval[/timeout],...``, e.g. ``off=0,default=20/20,aggressive=5``."""
    variants = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        name, _, setting = item.partition("=")
        interval, _, timeout = setting.partition("/")
        variants.append(Variant(name, float(interval), float(timeout) if timeout else None))
    return variants


class IdleServer:
    """One ``roomcast serve`` with its heartbeat setting and its own idle clients."""

    def __init__(self, args: argparse.Namespace, variant: Variant, index: int) -> None:
        self.args = args
        self.variant = variant
        self.index = index
        stem = f"idle-{variant.name}"
        self.target = Target(
            SPECS["roomcast"],
            args.port + index * 2,
            RESULTS_DIR / f"{stem}.log",
            RESULTS_DIR / f"{stem}-gc.json",
            extra_args=variant.flags,
            extra_env={"PYTHONPATH": args.roomcast_src} if args.roomcast_src else None,
        )
        self.workers: Workers | None = None
        self.connected = 0
        self.windows: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {
            "variant": variant.name,
            "flags": " ".join(variant.flags),
            "ping_interval": variant.interval,
            "pong_timeout": variant.timeout,
            "connections": args.connections,
        }

    @property
    def pid(self) -> int:
        return self.target.pid

    def metrics(self) -> dict[str, float]:
        return metrics_of(self.target.port)

    def worker_configs(self) -> list[WorkerConfig]:
        args = self.args
        return [
            WorkerConfig(
                host="127.0.0.1",
                port=self.target.port,
                path=SPECS["roomcast"].path,
                source_address=f"127.{60 + self.index}.1.{2 + i}",
                connections=share,
                concurrency=args.concurrency,
            )
            for i, share in enumerate(split(args.connections, args.per_worker, 2))
        ]

    def connect(self) -> None:
        args = self.args
        self.target.wait_ready()
        time.sleep(0.5)
        rss0 = self.target.rss_kib()
        self.workers = Workers(self.worker_configs())
        started = time.monotonic()
        replies = self.workers.call(("connect", 0.0), args.connect_timeout)
        ok, failed = connect_counts(replies)
        registered = self.target.wait_count(ok, timeout=30)
        connect_s = time.monotonic() - started
        self.connected = ok
        if failed or not registered:
            log(f"{self.variant.name}: {failed} connects failed; server has {self.target.count()}")
        self.result.update(
            {
                "connected": ok,
                "connect_failures": failed,
                "connect_s": connect_s,
                "rss_before_kib": rss0,
                "client_workers": len(replies),
            }
        )
        log(f"{self.variant.name}: {ok} connected in {connect_s:.1f} s ({failed} failed)")

    def mark(self) -> dict[str, Any]:
        assert self.workers is not None
        return {
            "t": time.monotonic(),
            "cpu_ns": self.target.cpu_ns(),
            "client_cpu_ns": self.workers.cpu_ns(),
            # read(2) calls: the idle server reads each pong with one call (uvloop reads with
            # read(2); its writes, and the picows clients' aiofastnet I/O, are not counted in
            # /proc/PID/io on this kernel, so the pings are counted by their pongs).
            "server_syscr": io_of(self.pid).get("syscr", 0),
        }

    def close_window(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        elapsed = after["t"] - before["t"]
        metrics = self.metrics()
        window = {
            "elapsed_s": elapsed,
            "server_cpu_s": (after["cpu_ns"] - before["cpu_ns"]) / 1e9,
            "client_cpu_s": (after["client_cpu_ns"] - before["client_cpu_ns"]) / 1e9,
            "server_reads_per_s": (after["server_syscr"] - before["server_syscr"]) / elapsed,
            "connections": int(metrics.get("roomcast_connections", -1)),
            "heartbeat_timeouts": int(metrics.get("roomcast_heartbeat_timeouts_total", -1)),
            "rss_kib": self.target.rss_kib(),
        }
        window["server_cpu_pct"] = window["server_cpu_s"] / elapsed * 100
        self.windows.append(window)

    def summary(self) -> dict[str, Any]:
        assert self.workers is not None
        windows = self.windows
        n = max(1, self.connected)
        elapsed = sum(w["elapsed_s"] for w in windows)
        cpu_s = sum(w["server_cpu_s"] for w in windows)
        client_s = sum(w["client_cpu_s"] for w in windows)
        state = self.workers.call(("state",), 10)
        rss_end = windows[-1]["rss_kib"] if windows else math.nan
        r = self.result
        r.update(
            {
                "windows": windows,
                "window_s": elapsed,
                "server_cpu_s": cpu_s,
                "server_cpu_pct": cpu_s / elapsed * 100,
                "server_cpu_pct_per_window": [w["server_cpu_pct"] for w in windows],
                "us_per_conn_s": cpu_s * 1e6 / elapsed / n,
                "client_cpu_pct": client_s / elapsed * 100,
                "client_us_per_conn_s": client_s * 1e6 / elapsed / n,
                "server_reads_per_s": sum(w["server_reads_per_s"] * w["elapsed_s"] for w in windows)
                / elapsed,
                "pongs": round(sum(w["server_reads_per_s"] * w["elapsed_s"] for w in windows)),
                "pings_per_s_expected": n / self.variant.interval if self.variant.interval else 0,
                "connections_seen": sorted({w["connections"] for w in windows}),
                "heartbeat_timeouts": max((w["heartbeat_timeouts"] for w in windows), default=-1),
                "client_disconnects": sum(s["disconnected"] for s in state),
                "close_codes": sorted({c for s in state for c in s["close_codes"]}),
                "rss_after_kib": rss_end,
                "kib_per_conn": (rss_end - r["rss_before_kib"]) / n,
            }
        )
        return r

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        self.target.stop()


def run_heartbeat(args: argparse.Namespace) -> list[dict[str, Any]]:
    variants = parse_variants(args.variants)
    servers: list[IdleServer] = []
    try:
        for index, variant in enumerate(variants):
            servers.append(IdleServer(args, variant, index))
        for server in servers:  # one after the other: the handshakes do not compete
            server.connect()
        log(f"heartbeat: all connected; settling {args.settle:g} s")
        time.sleep(args.settle)
        for i in range(args.windows):
            before = [s.mark() for s in servers]
            time.sleep(args.window)
            after = [s.mark() for s in servers]
            for server, b, a in zip(servers, before, after, strict=True):
                server.close_window(b, a)  # the /metrics scrape falls between windows
            log(
                f"heartbeat window {i + 1}/{args.windows}: "
                + ", ".join(
                    f"{s.variant.name} {s.windows[-1]['server_cpu_pct']:.2f} % "
                    f"({s.windows[-1]['connections']} conns, "
                    f"{s.windows[-1]['heartbeat_timeouts']} timeouts)"
                    for s in servers
                )
            )
        results = [s.summary() for s in servers]
    finally:
        for server in servers:
            server.stop()
    off = next((r for r in results if not r["ping_interval"]), None)
    for r in results:
        if off is None:
            continue
        r["cpu_pct_minus_off"] = r["server_cpu_pct"] - off["server_cpu_pct"]
        r["us_per_conn_s_minus_off"] = r["us_per_conn_s"] - off["us_per_conn_s"]
        extra_cpu_s = r["server_cpu_s"] - off["server_cpu_s"] / off["window_s"] * r["window_s"]
        r["us_per_ping"] = extra_cpu_s * 1e6 / r["pongs"] if r["pongs"] else math.nan
    return results


# ------------------------------------------------------------------ part 2: registry


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


async def run_registry_async(args: argparse.Namespace, server: RedisServer) -> dict[str, Any]:
    import redis.asyncio

    from roomcast.fastapi.auth_manager import ConnectionConfig
    from roomcast.presence.connection_registry import PresenceRegistry

    defaults = ConnectionConfig()
    settings = {
        "connection_ttl": defaults.connection_ttl,
        "instance_ttl": defaults.instance_ttl,
        "refresh_interval": defaults.refresh_interval,
        "max_redis_connections": defaults.max_redis_connections,
    }
    k, m = args.registries, args.registry_connections
    admin = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
    clients = [
        redis.asyncio.Redis.from_url(server.url, max_connections=defaults.max_redis_connections)
        for _ in range(k)
    ]
    registries = [
        PresenceRegistry(
            client,
            secrets.token_hex(16),
            prefix=defaults.key_prefix,
            connection_ttl=defaults.connection_ttl,
            instance_ttl=defaults.instance_ttl,
            refresh_interval=defaults.refresh_interval,
        )
        for client in clients
    ]
    stats = RedisStats(admin, server)
    result: dict[str, Any] = {
        "registries": k,
        "connections": m,
        "connections_per_user": args.conns_per_user,
        "room_size": args.room_size,
        "defaults": settings,
    }
    try:
        # Connection g lives on instance g % k; users and rooms span the instances.
        items: list[list[tuple[str, str, str]]] = [[] for _ in range(k)]
        for g in range(m):
            items[g % k].append(
                (
                    secrets.token_hex(16),
                    f"user-{g // args.conns_per_user:06d}",
                    f"room-{g // args.room_size:05d}",
                )
            )
        result["users"] = math.ceil(m / args.conns_per_user)
        result["rooms"] = math.ceil(m / args.room_size)
        await admin.ping()
        for client in clients:  # open one pooled connection each before the baseline
            await client.ping()
        empty = before = await stats.snapshot()
        async with asyncio.timeout(args.register_timeout):
            refused = await asyncio.gather(
                *(
                    register_all(r, mine, args.register_concurrency)
                    for r, mine in zip(registries, items, strict=True)
                )
            )
        after = await stats.snapshot()
        register = redis_delta(before, after)
        register["refused"] = sum(refused)
        result["register"] = register
        log(
            f"registry: {m} connections registered in {register['elapsed_s']:.1f} s, "
            f"{register['commandstats_total']} commands, "
            f"{register['used_memory_delta'] / 2**20:.1f} MiB"
        )
        windows = [
            await refresh_window(args, registries, stats, defaults.refresh_interval, "defaults")
        ]
        for interval in args.extra_refresh_intervals:
            windows.append(
                await refresh_window(
                    args, registries, stats, interval, f"refresh_interval={interval:g} s"
                )
            )
        result["refresh"] = windows
        # Memory once the records are refreshed and the clients idle (no buffers in flight).
        steady = await stats.snapshot()
        result["memory"] = {
            "keys": steady["keys"],
            "used_mib": (steady["used_memory"] - empty["used_memory"]) / 2**20,
            "dataset_mib": (steady["used_memory_dataset"] - empty["used_memory_dataset"]) / 2**20,
            "bytes_per_conn": (steady["used_memory"] - empty["used_memory"]) / m,
            "dataset_bytes_per_conn": (steady["used_memory_dataset"] - empty["used_memory_dataset"])
            / m,
            "empty": {k: empty[k] for k in ("used_memory", "used_memory_dataset", "keys")},
            "with_records": {k: steady[k] for k in ("used_memory", "used_memory_dataset", "keys")},
        }
        if args.measure_stop:
            before = await stats.snapshot()
            async with asyncio.timeout(args.stop_timeout):
                await registries[0].stop()
            after = await stats.snapshot()
            stop = redis_delta(before, after)
            stop["connections"] = len(items[0])
            result["clean_stop"] = stop
            log(
                f"registry: clean stop of one instance ({len(items[0])} connections) took "
                f"{stop['elapsed_s']:.1f} s, {stop['commandstats_total']} commands"
            )
    finally:
        for registry in registries:
            with contextlib.suppress(Exception):
                await registry._tasks.cancel_all()
        for client in [*clients, admin]:
            with contextlib.suppress(Exception):
                await client.aclose()
    return result


def run_registry(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here, after --snapshot put its src/ first on sys.path.
    from roomcast.testing import RedisServer

    server = RedisServer(
        args.redis_port or None,
        log_path=RESULTS_DIR / "idle-redis.log",
        preexec_fn=die_with_parent,
    )
    try:
        server.start()
        return asyncio.run(run_registry_async(args, server))
    finally:
        server.close()


# ------------------------------------------------------------------ report


def heartbeat_tables(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    n = args.connections
    lines = [
        f"Heartbeat: {len(results)} `roomcast serve` processes up at the same time, each with "
        f"{n:,} idle picows clients (auto-pong on); {args.windows} idle windows of "
        f"{args.window:g} s, the same windows for every server.",
        "",
        "| heartbeat | server flags | clients (during windows) | heartbeat timeouts "
        "| server CPU % of a core | µs CPU / conn / s | on - off: % of a core "
        "| on - off: µs / conn / s | µs per ping + pong |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        conns = "/".join(f"{c:,}" for c in r["connections_seen"])
        cells = [
            r["variant"],
            f"`{r['flags']}`",
            conns,
            str(r["heartbeat_timeouts"]),
            f"{r['server_cpu_pct']:.2f} ({spread(r['server_cpu_pct_per_window'])})",
            f"{r['us_per_conn_s']:.3f}",
        ]
        if r["ping_interval"] and "cpu_pct_minus_off" in r:
            cells += [
                f"{r['cpu_pct_minus_off']:+.2f}",
                f"{r['us_per_conn_s_minus_off']:+.3f}",
                f"{r['us_per_ping']:.1f}",
            ]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| heartbeat | pings/s (N ÷ interval) | pongs/s measured (server reads) "
        "| effective interval s | per-window server CPU % "
        "| RSS MiB | KiB/conn | client CPU % of a core | client µs / conn / s "
        "| client disconnects | connect s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        reads = r["server_reads_per_s"]
        effective = f"{r['connected'] / reads:.2f}" if r["ping_interval"] and reads else "-"
        lines.append(
            f"| {r['variant']} | {r['pings_per_s_expected']:,.0f} "
            f"| {r['server_reads_per_s']:,.0f} | {effective} "
            f"| {', '.join(f'{x:.2f}' for x in r['server_cpu_pct_per_window'])} "
            f"| {r['rss_after_kib'] / 1024:.1f} "
            f"| {r['kib_per_conn']:.2f} | {r['client_cpu_pct']:.2f} "
            f"| {r['client_us_per_conn_s']:.3f} | {r['client_disconnects']} "
            f"| {r['connect_s']:.1f} |"
        )
    lines += ["", f"Reference: {REFERENCE_IDLE}."]
    return "\n".join(lines)


def _by_name(counts: dict[str, float], digits: int = 0, top: int = 6) -> str:
    items = list(counts.items())[:top]
    text = ", ".join(f"{k} {v:,.{digits}f}" for k, v in items)
    return text + (", …" if len(counts) > top else "")


def registry_tables(r: dict[str, Any]) -> str:
    d = r["defaults"]
    reg = r["register"]
    mem = r["memory"]
    lines = [
        f"Registry: {r['registries']} `PresenceRegistry` instances (one `redis.asyncio.Redis` "
        f"each, one Python process), {r['connections']:,} connections in all, "
        f"{r['connections_per_user']} per user ({r['users']:,} users), each in one room of "
        f"{r['room_size']} ({r['rooms']:,} rooms); connection_ttl={d['connection_ttl']}, "
        f"instance_ttl={d['instance_ttl']:g}, refresh_interval={d['refresh_interval']:g} "
        "(ConnectionConfig's defaults).",
        "",
        "| one-off: register | seconds | commands | of them inside the add script "
        "| by command | redis CPU s | keys | used_memory MiB (dataset) "
        "| bytes / connection (dataset) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['connections']:,} x add + join | {reg['elapsed_s']:.1f} "
        f"| {reg['commandstats_total']:,} | {reg['in_add_script']:,} "
        f"| {_by_name(reg['commands_by_name'])} | {reg['redis_cpu_s']:.2f} | {mem['keys']:,} "
        f"| {mem['used_mib']:.1f} ({mem['dataset_mib']:.1f}) "
        f"| {mem['bytes_per_conn']:.0f} ({mem['dataset_bytes_per_conn']:.0f}) |",
        "",
        "| refresh loop | rounds per instance | window s | commands/s | by command (/s) "
        "| commands per round (all instances) | redis CPU % of a core "
        "| refresh s per instance (median / max) | registry process CPU % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in r["refresh"]:
        lines.append(
            f"| {w['label']} | {'/'.join(str(x) for x in w['rounds_per_registry'])} "
            f"| {w['elapsed_s']:.1f} | {w['commands_per_s']:,.0f} "
            f"| {_by_name(w['by_name_per_s'])} | {w['commands_per_round']:,.0f} "
            f"| {w['redis_cpu_pct']:.2f} "
            f"| {w['refresh_wall_s']['median']:.2f} / {w['refresh_wall_s']['max']:.2f} "
            f"| {w['own_cpu_pct']:.1f} |"
        )
    stop = r.get("clean_stop")
    if stop:
        lines += [
            "",
            "| clean stop of one instance | seconds | commands | by command | redis CPU s |",
            "|---|---|---|---|---|",
            f"| {stop['connections']:,} connections | {stop['elapsed_s']:.1f} "
            f"| {stop['commandstats_total']:,} | {_by_name(stop['commands_by_name'])} "
            f"| {stop['redis_cpu_s']:.2f} |",
        ]
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", default="heartbeat,registry", help="comma-separated: heartbeat, registry"
    )
    group = parser.add_argument_group("heartbeat")
    group.add_argument("--connections", type=int, default=15_000, help="clients per server")
    group.add_argument(
        "--variants",
        default="off=0,default=20/20,aggressive=5",
        help="name=ping_interval[/pong_timeout],... (0: heartbeat off); one server each",
    )
    group.add_argument("--windows", type=int, default=3, help="idle windows")
    group.add_argument(
        "--window",
        type=float,
        default=20.0,
        help="seconds per window (a multiple of every "
        "ping interval, so each window holds a whole number of pings per connection)",
    )
    group.add_argument("--settle", type=float, default=5.0, help="pause after the connects")
    group.add_argument("--per-worker", type=int, default=7500, help="connections per process")
    group.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    group.add_argument("--connect-timeout", type=float, default=120.0)
    group.add_argument("--port", type=int, default=65301, help="first server port (2 each)")
    group = parser.add_argument_group("registry")
    group.add_argument("--registries", type=int, default=3, help="PresenceRegistry instances")
    group.add_argument("--registry-connections", type=int, default=50_000)
    group.add_argument("--conns-per-user", type=int, default=2)
    group.add_argument("--room-size", type=int, default=50, help="members per room")
    group.add_argument(
        "--register-concurrency", type=int, default=32, help="add+join in flight per instance"
    )
    group.add_argument("--register-timeout", type=float, default=300.0)
    group.add_argument("--refresh-rounds", type=int, default=6, help="refresh rounds measured")
    group.add_argument(
        "--refresh-slack",
        type=float,
        default=5.0,
        help="seconds a round may take beyond the interval before the window times out",
    )
    group.add_argument(
        "--extra-refresh-intervals",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[2.0],
        help="also measure these refresh_interval values (comma-separated; '' for none)",
    )
    group.add_argument("--measure-stop", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--stop-timeout", type=float, default=120.0)
    group.add_argument("--redis-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--deadline", type=float, default=900.0, help="whole-run abort")
    parser.add_argument(
        "--snapshot",
        metavar="COMMIT",
        help="run the servers and the registries on roomcast's src/ as of COMMIT (git archive "
        "into a temporary directory, first on the servers' PYTHONPATH and on this process' "
        "sys.path) instead of the editable checkout",
    )
    parser.add_argument("--no-sysctl", action="store_true", help="leave the port range alone")
    args = parser.parse_args(argv)
    args.roomcast_src = None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    nofile = prepare()
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/idle.py", nofile, PACKAGES),
        "args": vars(args),
        "picows_client_auto_pong_default": auto_pong_default(),
        "redis_version": redis_version(),
        "cpu_probe_ms_before": cpu_probe(),
    }
    heartbeat: list[dict[str, Any]] = []
    registry: dict[str, Any] | None = None
    problems: list[str] = []
    try:
        with (
            deadline(args.deadline),
            wide_port_range(not args.no_sysctl) as port_range,
            snapshot(args.snapshot) as snap,
        ):
            meta["port_range"] = port_range
            meta["snapshot"] = snap
            if snap is not None:
                if any(name.partition(".")[0] == "roomcast" for name in sys.modules):
                    raise RuntimeError("roomcast was imported before the snapshot was in place")
                args.roomcast_src = snap["src"]
                sys.path.insert(0, snap["src"])
                log(f"servers and registries run roomcast from a snapshot of {snap['commit']}")
            if "heartbeat" in parts:
                try:
                    heartbeat = run_heartbeat(args)
                except Exception as exc:  # report it, keep the other part, clean up
                    problems.append(f"heartbeat: {exc!r}")
                    log(problems[-1])
            if "registry" in parts:
                try:
                    registry = run_registry(args)
                except Exception as exc:  # report it, keep the other part, clean up
                    problems.append(f"registry: {exc!r}")
                    log(problems[-1])
    except DeadlineExpired as exc:
        problems.append(repr(exc))
        log(problems[-1])
    for r in heartbeat:
        if r["heartbeat_timeouts"] != 0 or r["connections_seen"] != [r["connected"]]:
            problems.append(
                f"{r['variant']}: heartbeat timeouts {r['heartbeat_timeouts']}, connections "
                f"{r['connections_seen']} (connected {r['connected']})"
            )
        if r["connected"] != args.connections:
            problems.append(f"{r['variant']}: {r['connected']} of {args.connections} connected")
    close_meta(meta, started, problems)
    out = results_path("idle")
    write_json(out, {"meta": meta, "heartbeat": heartbeat, "registry": registry})
    report = [
        f"# Idle cost and registry load, {meta['date']}, {meta['duration_s']:.0f} s\n",
        f"`{meta['command']}`\n",
        environment_line(meta, redis=meta["redis_version"]),
        steadiness_line(meta),
        *problem_lines(problems),
    ]
    if heartbeat:
        report += [heartbeat_tables(heartbeat, args), ""]
    if registry:
        report += [registry_tables(registry), ""]
    publish(report, out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
