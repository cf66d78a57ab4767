"""The deployments ``scaleout.py`` compares, and one of them at work: three server processes
(``targets.Target``) on three ports, with or without a shared Redis, N clients spread evenly
over them, the broadcasts, their delivery and the CPU of the servers and of redis-server.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import time
from typing import TYPE_CHECKING, Any

from harness.clients import WorkerConfig
from harness.message import make_message
from harness.processes import cpu_ns_of
from harness.report import fmt, log
from harness.runs import RESULTS_DIR
from harness.stats import gc_delta, handshake_ms, latency_summary
from harness.targets import SPECS, Spec, Target, envelope_bytes
from harness.workers import (
    Workers,
    connect_counts,
    handshake_times,
    shares,
    split,
    wait_delivery,
)

if TYPE_CHECKING:
    from roomcast.testing import RedisServer

__all__ = ["INSTANCES", "KINDS", "TARGET_CONNECT_N", "Cluster", "Kind"]

INSTANCES = 3
SOCKETIO_EVENT = "msg"  # peers/socketio_redis.py's event name
TARGET_CONNECT_N = 50_000
"""The connect target's N: each deployment's connect time is also given scaled to it."""


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


class Cluster:
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
        self.message_size = max(1, args.frame_size - envelope_bytes(kind.spec, SOCKETIO_EVENT))
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
        return cpu_ns_of(self.redis.pid) if self.redis is not None else 0

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
        for i, (target, share) in enumerate(
            zip(self.targets, shares(args.connections, INSTANCES), strict=True)
        ):
            for w, connections in enumerate(split(share, args.per_worker, 1)):
                configs.append(
                    WorkerConfig(
                        host="127.0.0.1",
                        port=target.port,
                        path=self.kind.spec.path,
                        source_address=f"127.{40 + self.index}.{i + 1}.{2 + w}",
                        connections=connections,
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
        ok, failed = connect_counts(replies)
        registered = self.wait_count(ok, timeout=30)
        connect_s = time.monotonic() - started
        cpu1, redis1 = sum(self.server_cpu_ns()), self.redis_cpu_ns()
        counted = self.count()
        if failed or not registered:
            log(f"{self.kind.name}: {failed} connects failed; the servers count {counted}")
        self.connected = ok
        time.sleep(1.0)
        rss1 = [t.rss_kib() for t in self.targets]
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
                "handshake_ms": handshake_ms(handshake_times(replies)),
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
