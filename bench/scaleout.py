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
The server processes, publish triggers, client workers, delivery wait and latency summary are
the harness' (``harness/``).  bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

from harness.clients import WorkerConfig
from harness.limits import wide_port_range
from harness.message import make_message
from harness.meta import cpu_probe, redis_version, run_meta
from harness.processes import cpu_ns_of, die_with_parent
from harness.report import (
    environment_line,
    fmt,
    log,
    problem_lines,
    publish,
    results_path,
    steadiness_line,
    write_json,
)
from harness.runs import RESULTS_DIR, DeadlineExpired, close_meta, deadline, prepare, snapshot
from harness.stats import gc_delta, handshake_ms, latency_summary, ratio
from harness.targets import PACKAGES, SPECS, Spec, Target, envelope_bytes
from harness.workers import (
    Workers,
    connect_counts,
    handshake_times,
    shares,
    split,
    wait_delivery,
)
from roomcast.testing import RedisServer

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
        value = ratio(redis["p100_ms"], local["p100_ms"])
        row(
            f"roomcast-redis 100 % delivery <= {TARGET_REDIS_VS_LOCAL}x roomcast-local",
            value,
            value <= TARGET_REDIS_VS_LOCAL,
            f"{fmt(redis['p100_ms'])} ms ÷ {fmt(local['p100_ms'])} ms",
        )
    if redis and sio and "us_per_msg" in redis and "us_per_msg" in sio:
        value = ratio(sio["us_per_msg"], redis["us_per_msg"])
        row(
            f"socketio-redis ÷ roomcast-redis server CPU/msg >= {TARGET_VS_SOCKETIO:g}x",
            value,
            value >= TARGET_VS_SOCKETIO,
            f"{sio['us_per_msg']:.2f} µs ÷ {redis['us_per_msg']:.2f} µs",
        )
        value = ratio(sio["p100_ms"], redis["p100_ms"])
        row(
            f"socketio-redis ÷ roomcast-redis 100 % delivery time >= {TARGET_VS_SOCKETIO:g}x",
            value,
            value >= TARGET_VS_SOCKETIO,
            f"{fmt(sio['p100_ms'])} ms ÷ {fmt(redis['p100_ms'])} ms",
        )
    if redis and with_presence and "connect_s" in redis and "connect_s" in with_presence:
        row(
            "--presence: connect time with ÷ without (no target)",
            ratio(with_presence["connect_s"], redis["connect_s"]),
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = []
    for name in (s for s in args.deployments.split(",") if s):
        if name not in KINDS:
            raise SystemExit(f"unknown deployment {name!r}; known: {', '.join(KINDS)}")
        kinds.append(KINDS[name])
    nofile = prepare()
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/scaleout.py", nofile, PACKAGES),
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
                # Its own port (refused if taken): it never touches another Redis.
                redis = RedisServer(
                    args.redis_port,
                    ("--maxclients", "1000"),
                    log_path=RESULTS_DIR / "scaleout-redis.log",
                    preexec_fn=die_with_parent,
                )
                redis.start()
                meta["redis_version"] = redis_version()
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
            redis.close()
    close_meta(meta, started, problems)
    rows = target_rows(results)
    out = results_path("scaleout")
    write_json(out, {"meta": meta, "results": results, "targets": rows})
    report = [
        f"# Scale-out: {args.connections:,} clients over {INSTANCES} processes, "
        f"{meta['date']}, {meta['duration_s']:.0f} s\n",
        f"`{meta['command']}`\n",
        environment_line(
            meta,
            redis=meta.get("redis_version", "no redis"),
            snapshot_label="servers on a `git archive` snapshot",
        ),
        steadiness_line(meta),
        *(f"- {k.name}: {k.what}" for k in kinds),
        "",
        *problem_lines(problems),
    ]
    if results:
        report += [tables(results, args), "", "Targets:", "", targets_table(rows), ""]
    publish(report, out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
