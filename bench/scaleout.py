"""Scale-out: ~48k clients over three server processes, one broadcast reaching all of them.

    .venv/bin/python bench/scaleout.py

Three deployments, one after the other in the same run, each with the same N clients spread
evenly over three server processes on three ports:

- ``roomcast-redis``: three ``roomcast serve --redis-url`` sharing a throwaway redis-server; a
  broadcast is one ``POST /api/publish`` to instance 0, the other two get it through Redis.
- ``roomcast-redis-presence``: the same with ``--presence`` (cluster-wide presence, off by
  default with Redis), to show what it costs.
- ``roomcast-local``: the same three processes without Redis; a broadcast is one publish to
  each instance, the three sent at the same moment (the Redis-less floor).
- ``socketio-redis``: python-socketio with ``AsyncRedisManager`` in three uvicorn processes
  (``peers/socketio_redis.py``); a broadcast is ``sio.emit("msg", m, room="bench")`` on
  instance 0.

Per deployment: time until all N are connected, server CPU (three processes summed) per
delivered message, redis-server CPU per broadcast, server RSS per connection, time until
50/99/100 % of the N clients had each broadcast, losses; then the ratios issue 4 asks for.
Reuses ``serve.py`` (server processes, publish triggers) and ``fanout.py`` / ``clients.py``
(picows client workers, delivery wait, latency summary).  bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import math
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from clients import WorkerConfig, die_with_parent
from fanout import (
    Workers,
    cpu_probe,
    fmt,
    gc_delta,
    git_state,
    latency_summary,
    log,
    percentile_at,
    raise_nofile_limit,
    run_meta,
    wait_delivery,
    wide_port_range,
)
from serve import (
    SPECS,
    Spec,
    Target,
    cpu_ns_of,
    envelope_bytes,
    make_message,
    package_versions,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REDIS_SERVER = "/usr/bin/redis-server"
INSTANCES = 3
SOCKETIO_EVENT = "msg"  # peers/socketio_redis.py's event name
REFERENCE_SOCKETIO = {"us_per_msg": 128.0, "p100_ms": 4800.0, "connections": 45_000}
"""python-socketio + AsyncRedisManager over 3 uvicorn processes, as issue 4 quotes it."""
TARGET_REDIS_VS_LOCAL = 1.3
TARGET_VS_SOCKETIO = 15.0
TARGET_CONNECT_S = 15.0
TARGET_CONNECT_N = 50_000


@dataclasses.dataclass(frozen=True)
class Kind:
    """One deployment: a server spec run three times, with or without Redis."""

    name: str
    what: str
    spec: Spec
    redis: bool
    trigger_all: bool
    """True: each broadcast is published on every instance at once (no shared bus)."""
    socketio: bool = False
    flags: tuple[str, ...] = ()
    """Extra ``roomcast serve`` flags."""


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "roomcast-redis",
            "3 x `roomcast serve --redis-url`, one publish to instance 0",
            SPECS["roomcast"],
            redis=True,
            trigger_all=False,
        ),
        Kind(
            "roomcast-redis-presence",
            "the same with `--presence` (cluster-wide presence: a roster in Redis, every "
            "join and leave published)",
            SPECS["roomcast"],
            redis=True,
            trigger_all=False,
            flags=("--presence",),
        ),
        Kind(
            "roomcast-local",
            "3 x `roomcast serve` without Redis, one publish to each instance at once",
            SPECS["roomcast"],
            redis=False,
            trigger_all=True,
        ),
        Kind(
            "socketio-redis",
            "python-socketio + AsyncRedisManager, 3 uvicorn processes, emit on instance 0",
            Spec(
                "socketio-redis",
                "python-socketio AsyncServer(client_manager=AsyncRedisManager) on uvicorn",
                "control",
                path=SPECS["socketio"].path,
                protocol="socketio",
                module="peers.socketio_redis:app",
                uvicorn=True,
                paced=True,
            ),
            redis=True,
            trigger_all=False,
            socketio=True,
        ),
    )
}


# ------------------------------------------------------------------ redis-server


class RedisServer:
    """A throwaway redis-server on its own port: no persistence, killed at the end."""

    def __init__(self, port: int, log_path: Path) -> None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise RuntimeError(f"port {port} is taken; pick another with --redis-port")
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"
        self._log = log_path.open("wb")
        command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--maxclients", "1000"]
        self.proc = psutil.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self._log.name}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server not ready after {timeout}s")

    def cpu_ns(self) -> int:
        return cpu_ns_of(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()


# ------------------------------------------------------------------ one deployment


class Run:
    """One deployment: three server processes, N client connections, M broadcasts."""

    def __init__(
        self, args: argparse.Namespace, kind: Kind, index: int, redis: RedisServer | None
    ) -> None:
        self.args = args
        self.kind = kind
        self.index = index
        self.redis = redis if kind.redis else None
        self.targets: list[Target] = []
        self.workers: Workers | None = None
        self.connected = 0
        self.seq = 1
        envelope = len(f'42["{SOCKETIO_EVENT}",""]') if kind.socketio else envelope_bytes(kind.spec)
        self.message_size = max(1, args.frame_size - envelope)
        self.result: dict[str, Any] = {"deployment": kind.name, "what": kind.what}
        extra_args: list[str] = []
        extra_env: dict[str, str] = {}
        if args.roomcast_src:
            # The peers import roomcast too (peers.control serves their control port with it).
            extra_env["PYTHONPATH"] = str(args.roomcast_src)
        if self.redis is not None:
            if kind.spec.kind == "roomcast":
                extra_args = ["--redis-url", self.redis.url, *kind.flags]
            else:
                extra_env["BENCH_REDIS_URL"] = self.redis.url
        for i in range(INSTANCES):
            port = args.port + index * 10 + i * 2
            stem = f"scaleout-{kind.name}-{i}"
            self.targets.append(
                Target(
                    kind.spec,
                    port,
                    RESULTS_DIR / f"{stem}.log",
                    RESULTS_DIR / f"{stem}-gc.json",
                    extra_args=extra_args,
                    extra_env=extra_env,
                )
            )

    # -------------------------------------------------------------- figures over all servers

    def server_cpu_ns(self) -> list[int]:
        return [t.cpu_ns() for t in self.targets]

    def redis_cpu_ns(self) -> int:
        return self.redis.cpu_ns() if self.redis is not None else 0

    def count(self) -> int:
        return sum(t.count() for t in self.targets)

    def wait_count(self, wanted: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= wanted:
                return True
            time.sleep(0.1)
        return False

    # -------------------------------------------------------------- connecting

    def worker_configs(self) -> list[WorkerConfig]:
        """Each instance's share of N, in worker processes of at most ``--per-worker``
        connections, each from its own source address (127.<40+run>.<instance>.<worker>)."""
        args = self.args
        configs = []
        for i, target in enumerate(self.targets):
            share = args.connections // INSTANCES + (1 if i < args.connections % INSTANCES else 0)
            count = max(1, math.ceil(share / args.per_worker))
            for w in range(count):
                configs.append(
                    WorkerConfig(
                        host="127.0.0.1",
                        port=target.port,
                        path=self.kind.spec.path,
                        source_address=f"127.{40 + self.index}.{i + 1}.{2 + w}",
                        connections=share // count + (1 if w < share % count else 0),
                        protocol=self.kind.spec.protocol,
                        concurrency=args.concurrency,
                    )
                )
        return configs

    def connect(self) -> None:
        args = self.args
        for target in self.targets:
            target.wait_ready()
        time.sleep(0.5)
        rss0 = sum(t.rss_kib() for t in self.targets)
        self.workers = Workers(self.worker_configs())
        spread = args.socketio_connect_spread if self.kind.socketio else args.connect_spread
        cpu0, redis0 = sum(self.server_cpu_ns()), self.redis_cpu_ns()
        started = time.monotonic()
        replies = self.workers.call(("connect", spread), spread + args.connect_timeout)
        ok = sum(r["connected"] for r in replies)
        failed = sum(r["failed"] for r in replies)
        registered = self.wait_count(ok, timeout=30)
        connect_s = time.monotonic() - started
        cpu1, redis1 = sum(self.server_cpu_ns()), self.redis_cpu_ns()
        counted = self.count()
        if failed or not registered:
            log(f"{self.kind.name}: {failed} connects failed; the servers count {counted}")
        self.connected = ok
        time.sleep(1.0)
        rss1 = [t.rss_kib() for t in self.targets]
        handshakes = sorted(t for r in replies for t in array("d", r["handshake_s"]))
        n = max(1, ok)
        self.result.update(
            {
                "connections": args.connections,
                "connected": ok,
                "counted_by_servers": counted,
                "connect_failures": failed,
                "connect_spread_s": spread,
                "connect_s": connect_s,
                "connect_s_at_50k": connect_s * TARGET_CONNECT_N / n,
                "handshake_ms": {
                    key: percentile_at(handshakes, q, len(handshakes)) * 1000
                    for key, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
                },
                "handshake_cpu_ms": (cpu1 - cpu0) / 1e6 / n,
                "redis_connect_cpu_s": (redis1 - redis0) / 1e9,
                "rss_before_kib": rss0,
                "rss_after_kib": sum(rss1),
                "rss_per_instance_kib": rss1,
                "kib_per_conn": sum(rss1) / n,
                "kib_per_conn_added": (sum(rss1) - rss0) / n,
                "client_workers": len(replies),
            }
        )
        log(
            f"{self.kind.name}: {ok} connected in {connect_s:.1f} s ({failed} failed), "
            f"{self.result['kib_per_conn']:.1f} KiB/conn"
        )

    # -------------------------------------------------------------- broadcasting

    def trigger(self, pool: concurrent.futures.Executor, message: str) -> None:
        timeout = self.args.phase_timeout
        if self.kind.trigger_all:
            futures = [pool.submit(t.publish, [message], timeout) for t in self.targets]
            for future in futures:
                future.result()
        else:
            self.targets[0].publish([message], timeout)

    def broadcasts(self, count: int) -> dict[str, Any]:
        """``count`` single broadcasts; the next one goes out ``--gap-ms`` after the previous
        one reached every client (or nothing arrived for ``--stall`` seconds)."""
        args, workers = self.args, self.workers
        assert workers is not None
        first = self.seq
        frames0 = workers.frames()
        gc0 = self.gc_stats()
        cpu0, redis0, clients0 = self.server_cpu_ns(), self.redis_cpu_ns(), workers.cpu_s()
        started = time.monotonic()
        waits = []
        with concurrent.futures.ThreadPoolExecutor(INSTANCES) as pool:
            for sent in range(1, count + 1):
                message = make_message(self.seq, self.message_size)
                self.seq += 1
                self.trigger(pool, message)
                _, waited = wait_delivery(
                    workers,
                    frames0 + sent * self.connected,
                    timeout=args.phase_timeout,
                    stall=args.stall,
                )
                waits.append(waited)
                time.sleep(args.gap_ms / 1000)
        frames1 = workers.frames()
        cpu1, redis1, clients1 = self.server_cpu_ns(), self.redis_cpu_ns(), workers.cpu_s()
        wall = time.monotonic() - started
        gc1 = self.gc_stats()
        reports = workers.call(("report", first, self.seq - 1), 60)
        delivered = frames1 - frames0
        per_instance_s = [(b - a) / 1e9 for a, b in zip(cpu0, cpu1, strict=True)]
        cpu_s = sum(per_instance_s)
        phase: dict[str, Any] = {
            "messages": count,
            "delivered": delivered,
            "expected": count * self.connected,
            "lost": count * self.connected - delivered,
            "wall_s": wall,
            "server_cpu_s": cpu_s,
            "server_cpu_s_per_instance": per_instance_s,
            "redis_cpu_s": (redis1 - redis0) / 1e9,
            "client_cpu_s": clients1 - clients0,
            "us_per_msg": cpu_s * 1e6 / max(1, delivered),
            "client_us_per_msg": (clients1 - clients0) * 1e6 / max(1, delivered),
            "server_ms_per_broadcast": cpu_s * 1e3 / count,
            "redis_ms_per_broadcast": (redis1 - redis0) / 1e6 / count,
            "driver_wait_s": waits,
            "latency": latency_summary(reports, first, count, self.connected),
        }
        if gc0 is not None and gc1 is not None:
            deltas = [gc_delta(a, b) for a, b in zip(gc0, gc1, strict=True)]
            phase["gc_collections"] = [sum(d[0][g] for d in deltas) for g in range(3)]
            phase["gc_s"] = sum(d[1] for d in deltas)
        return phase

    def gc_stats(self) -> list[dict[str, Any]] | None:
        """Cyclic-GC passes and seconds of every server, where they report them (the
        python-socketio peers; ``roomcast serve`` does not)."""
        stats = []
        for target in self.targets:
            one = target.gc_stats()
            if one is None:
                return None
            stats.append(one)
        return stats

    def idle(self, seconds: float) -> dict[str, float]:
        cpu0, redis0, started = sum(self.server_cpu_ns()), self.redis_cpu_ns(), time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        return {
            "server_cpu_pct": (sum(self.server_cpu_ns()) - cpu0) / 1e9 / elapsed * 100,
            "redis_cpu_pct": (self.redis_cpu_ns() - redis0) / 1e9 / elapsed * 100,
        }

    def measure(self) -> dict[str, Any]:
        args, workers = self.args, self.workers
        assert workers is not None
        if args.warmup:
            warm = self.broadcasts(args.warmup)
            self.result["warm_up"] = warm
            log(f"{self.kind.name}: warm-up p100 {fmt(warm['latency']['median_ms']['p100'])} ms")
        idle = self.idle(args.idle_seconds)
        phase = self.broadcasts(args.messages)
        state = workers.call(("state",), 10)
        idle_cpu_s = idle["server_cpu_pct"] / 100 * phase["wall_s"]
        latency = phase["latency"]
        self.result.update(
            {
                "idle": idle,
                "broadcasts": phase,
                "lost": phase["lost"],
                "us_per_msg": phase["us_per_msg"],
                "net_us_per_msg": (phase["server_cpu_s"] - idle_cpu_s)
                * 1e6
                / max(1, phase["delivered"]),
                "p50_ms": latency["median_ms"]["p50"],
                "p99_ms": latency["median_ms"]["p99"],
                "p100_ms": latency["median_ms"]["p100"],
                "p100_worst_ms": latency["worst_ms"]["p100"],
                "client_disconnects": sum(s["disconnected"] for s in state),
                "close_codes": sorted({c for s in state for c in s["close_codes"]}),
            }
        )
        log(
            f"{self.kind.name}: {args.messages} broadcasts, {phase['us_per_msg']:.2f} µs/msg, "
            f"p50/p99/p100 {fmt(self.result['p50_ms'])}/{fmt(self.result['p99_ms'])}/"
            f"{fmt(self.result['p100_ms'])} ms, lost {phase['lost']}"
        )
        return self.result

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        for target in self.targets:
            target.stop()


def run_kind(
    args: argparse.Namespace, kind: Kind, index: int, redis: RedisServer | None
) -> dict[str, Any]:
    log(f"{kind.name}: starting {INSTANCES} servers, {args.connections} clients")
    run = Run(args, kind, index, redis)
    try:
        run.connect()
        return run.measure()
    finally:
        run.stop()


# ------------------------------------------------------------------ report


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def tables(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"N = {args.connections:,} clients over {INSTANCES} server processes (a third each), "
        f"{args.messages} single broadcasts per deployment after {args.warmup} not counted, "
        f"each sent {args.gap_ms:g} ms after the previous one reached every client; frames of "
        f"~{args.frame_size} B.",
        "",
        "| deployment | connected | connect s | failed | handshake p99 ms | handshake CPU "
        "ms/conn | redis CPU s during connects | server RSS MiB (3 summed) | KiB/conn "
        "| KiB/conn added |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        paced = f" (paced over {r['connect_spread_s']:g} s)" if r["connect_spread_s"] else ""
        has_redis = KINDS[r["deployment"]].redis
        redis_connect = f"{r['redis_connect_cpu_s']:.2f}" if has_redis else "-"
        lines.append(
            f"| {r['deployment']} | {r['connected']:,} | {r['connect_s']:.1f}{paced} "
            f"| {r['connect_failures']} | {fmt(r['handshake_ms']['p99'])} "
            f"| {r['handshake_cpu_ms']:.3f} | {redis_connect} | {r['rss_after_kib'] / 1024:.0f} "
            f"| {r['kib_per_conn']:.1f} | {r['kib_per_conn_added']:.1f} |"
        )
    lines += [
        "",
        "| deployment | delivery p50 / p99 / p100 ms | worst p100 ms | lost | server CPU µs/msg "
        "| net of idle µs/msg | server CPU ms/broadcast | redis CPU ms/broadcast "
        "| idle server CPU % | client CPU µs/msg | GC passes 0/1/2 (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        b = r.get("broadcasts")
        if b is None:
            continue
        redis = f"{b['redis_ms_per_broadcast']:.2f}" if KINDS[r["deployment"]].redis else "-"
        gc = (
            "/".join(str(x) for x in b["gc_collections"]) + f" ({b['gc_s']:.2f} s)"
            if "gc_collections" in b
            else "-"
        )
        lines.append(
            f"| {r['deployment']} | {fmt(r['p50_ms'])} / {fmt(r['p99_ms'])} / "
            f"{fmt(r['p100_ms'])} | {fmt(r['p100_worst_ms'])} | {r['lost']} "
            f"| {r['us_per_msg']:.2f} | {r['net_us_per_msg']:.2f} "
            f"| {b['server_ms_per_broadcast']:.1f} | {redis} "
            f"| {r['idle']['server_cpu_pct']:.1f} | {b['client_us_per_msg']:.2f} | {gc} |"
        )
    lines += [
        "",
        f"Reference (issue 4, python-socketio + Redis, 3 uvicorn processes, "
        f"{REFERENCE_SOCKETIO['connections']:,} clients): "
        f"{REFERENCE_SOCKETIO['us_per_msg']:g} µs server CPU per delivered message, "
        f"{REFERENCE_SOCKETIO['p100_ms'] / 1000:g} s until all had a broadcast.",
    ]
    return "\n".join(lines)


def target_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    redis, local, sio = (
        results.get(k) for k in ("roomcast-redis", "roomcast-local", "socketio-redis")
    )
    with_presence = results.get("roomcast-redis-presence")

    def row(name: str, value: float, met: bool, detail: str) -> None:
        rows.append({"target": name, "value": value, "met": met, "detail": detail})

    if redis and local and "p100_ms" in redis and "p100_ms" in local:
        value = _ratio(redis["p100_ms"], local["p100_ms"])
        row(
            f"roomcast-redis 100 % delivery <= {TARGET_REDIS_VS_LOCAL}x roomcast-local",
            value,
            value <= TARGET_REDIS_VS_LOCAL,
            f"{fmt(redis['p100_ms'])} ms ÷ {fmt(local['p100_ms'])} ms",
        )
    if redis and sio and "us_per_msg" in redis and "us_per_msg" in sio:
        value = _ratio(sio["us_per_msg"], redis["us_per_msg"])
        row(
            f"socketio-redis ÷ roomcast-redis server CPU/msg >= {TARGET_VS_SOCKETIO:g}x",
            value,
            value >= TARGET_VS_SOCKETIO,
            f"{sio['us_per_msg']:.2f} µs ÷ {redis['us_per_msg']:.2f} µs",
        )
        value = _ratio(sio["p100_ms"], redis["p100_ms"])
        row(
            f"socketio-redis ÷ roomcast-redis 100 % delivery time >= {TARGET_VS_SOCKETIO:g}x",
            value,
            value >= TARGET_VS_SOCKETIO,
            f"{fmt(sio['p100_ms'])} ms ÷ {fmt(redis['p100_ms'])} ms",
        )
    if redis and with_presence and "connect_s" in redis and "connect_s" in with_presence:
        row(
            "--presence: connect time with ÷ without (no target)",
            _ratio(with_presence["connect_s"], redis["connect_s"]),
            True,
            f"{with_presence['connect_s']:.1f} s ÷ {redis['connect_s']:.1f} s; handshake CPU "
            f"{with_presence['handshake_cpu_ms']:.3f} ÷ {redis['handshake_cpu_ms']:.3f} ms",
        )
    for r in (redis, with_presence, local):
        if r and "lost" in r:
            row(f"{r['deployment']} lost == 0", r["lost"], r["lost"] == 0, f"{r['lost']}")
    for r in (redis, with_presence, local):
        if r and "connect_s" in r:
            value = r["connect_s_at_50k"]
            row(
                f"{r['deployment']}: {TARGET_CONNECT_N:,} connected <= {TARGET_CONNECT_S:g} s",
                value,
                value <= TARGET_CONNECT_S and r["connect_failures"] == 0,
                f"{r['connected']:,} in {r['connect_s']:.1f} s, scaled to "
                f"{TARGET_CONNECT_N:,}: {value:.1f} s",
            )
    return rows


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | value | measured | met |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['value']:.2f} | {r['detail']} "
            f"| {'yes' if r['met'] else '**no**'} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=48_000, help="N, over all servers")
    parser.add_argument(
        "--deployments", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS)
    )
    parser.add_argument("--messages", type=int, default=10, help="measured broadcasts")
    parser.add_argument("--warmup", type=int, default=1, help="broadcasts not counted")
    parser.add_argument("--frame-size", type=int, default=180, help="frame payload bytes")
    parser.add_argument(
        "--gap-ms", type=float, default=300.0, help="pause after a broadcast reached everyone"
    )
    parser.add_argument("--per-worker", type=int, default=7500, help="connections per process")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    parser.add_argument(
        "--connect-spread",
        type=float,
        default=0.0,
        help="roomcast: connects started evenly over this many seconds (0: all at once, "
        "--concurrency in flight per worker)",
    )
    parser.add_argument(
        "--socketio-connect-spread",
        type=float,
        default=60.0,
        help="python-socketio: connects paced over this many seconds (it falls over unpaced)",
    )
    parser.add_argument("--port", type=int, default=65201, help="first server port")
    parser.add_argument("--redis-port", type=int, default=65290)
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--phase-timeout", type=float, default=60.0)
    parser.add_argument("--stall", type=float, default=10.0, help="no progress: message lost")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument(
        "--deadline", type=float, default=1800.0, help="the whole run is aborted after this"
    )
    parser.add_argument(
        "--snapshot",
        metavar="COMMIT",
        help="run every server on roomcast's src/ as of COMMIT (git archive into a temporary "
        "directory, put first on their PYTHONPATH) instead of the editable checkout, so that "
        "edits made during the run do not change the code under test",
    )
    parser.add_argument("--no-sysctl", action="store_true", help="leave the port range alone")
    args = parser.parse_args(argv)
    args.roomcast_src = None
    return args


@contextlib.contextmanager
def snapshot(commit: str | None) -> Iterator[dict[str, str] | None]:
    """``git archive COMMIT src`` into a temporary directory for the servers' PYTHONPATH."""
    if not commit:
        yield None
        return
    repo = BENCH_DIR.parent
    resolved = subprocess.run(
        ["git", "rev-parse", "--short", f"{commit}^{{commit}}"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="scaleout-src-") as tmp:
        archive = subprocess.run(
            ["git", "archive", resolved, "src"],
            cwd=repo,
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        yield {"commit": resolved, "src": str(Path(tmp) / "src")}


class DeadlineExpired(Exception):
    """``--deadline`` passed: the run stops, with the usual cleanup."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Abort the run (with the usual cleanup) after ``seconds``."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise DeadlineExpired(f"run deadline of {seconds:g} s expired")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = []
    for name in (s for s in args.deployments.split(",") if s):
        if name not in KINDS:
            raise SystemExit(f"unknown deployment {name!r}; known: {', '.join(KINDS)}")
        kinds.append(KINDS[name])
    nofile = raise_nofile_limit()
    RESULTS_DIR.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/scaleout.py", nofile),
        "versions": package_versions(),
        "deployments": {k.name: k.what for k in kinds},
        "args": vars(args),
        "cpu_probe_ms_before": cpu_probe(),
    }
    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    redis: RedisServer | None = None
    try:
        with (
            deadline(args.deadline),
            wide_port_range(not args.no_sysctl) as port_range,
            snapshot(args.snapshot) as snap,
        ):
            meta["port_range"] = port_range
            meta["snapshot"] = snap
            if snap is not None:
                args.roomcast_src = snap["src"]
                log(f"servers run roomcast from a snapshot of {snap['commit']}")
            if any(k.redis for k in kinds):
                redis = RedisServer(args.redis_port, RESULTS_DIR / "scaleout-redis.log")
                meta["redis_version"] = subprocess.run(
                    [REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10
                ).stdout.strip()
            for index, kind in enumerate(kinds):
                try:
                    results[kind.name] = run_kind(args, kind, index, redis)
                except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                    problems.append(f"{kind.name}: {exc!r}")
                    log(problems[-1])
    except DeadlineExpired as exc:
        problems.append(repr(exc))
        log(problems[-1])
    finally:
        if redis is not None:
            redis.stop()
    meta["duration_s"] = time.monotonic() - started
    meta["git_at_end"] = git_state()
    meta["cpu_probe_ms_after"] = cpu_probe()
    if meta["git_at_end"] != meta["git"] and not meta.get("snapshot"):
        problems.append(
            f"the checkout changed during the run: {meta['git']} at start, "
            f"{meta['git_at_end']} at the end (roomcast is installed editable)"
        )
    meta["problems"] = problems
    rows = target_rows(results)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS_DIR / f"scaleout-{stamp}.json"
    out.write_text(
        json.dumps({"meta": meta, "results": results, "targets": rows}, indent=2, default=str)
    )
    probes = [meta["cpu_probe_ms_before"], meta["cpu_probe_ms_after"]]
    git = meta["git"]
    if meta.get("snapshot"):
        code = (
            f"roomcast at {meta['snapshot']['commit']} (servers on a `git archive` snapshot; "
            f"the checkout was at {git['commit']}, src changes: {git['src_changes']}); "
        )
    else:
        code = f"roomcast at {git['commit']} (src changes: {git['src_changes']}); "
    report = [
        f"# Scale-out: {args.connections:,} clients over {INSTANCES} processes, "
        f"{meta['date']}, {meta['duration_s']:.0f} s\n",
        f"`{meta['command']}`\n",
        code + f"{meta['cpus']} CPUs, Linux {meta['kernel']}, Python {meta['python']}, "
        f"{meta.get('redis_version', 'no redis')}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + "\n",
        "Host steadiness (fanout.cpu_probe: a fixed Python loop, 30 runs): "
        + " before, ".join(
            f"{p['min']:.0f}-{p['max']:.0f} ms (median {p['median']:.0f})" for p in probes
        )
        + " after the run.\n",
        *(f"- {k.name}: {k.what}" for k in kinds),
        "",
    ]
    if problems:
        report += ["Problems:", *(f"- {p}" for p in problems), ""]
    if results:
        report += [tables(results, args), "", "Targets:", "", targets_table(rows), ""]
    report.append(f"raw results: {out.relative_to(BENCH_DIR.parent)}")
    text = "\n".join(report)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
