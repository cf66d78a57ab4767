"""Fan-out benchmark on the FastAPI path: the FastAPI docs loop vs roomcast, side by side.

    .venv/bin/python bench/fanout.py --connections 1000,15000 --messages 20

For each server (``plain``, ``roomcast``; see ``apps.py``) and each N, it starts uvicorn as a
subprocess, connects N clients from worker processes (``harness/clients.py``), measures the server's
RSS and CPU around the connect and broadcast phases, and prints Markdown tables.  Then the
slow-client scenario: N healthy clients plus one that never reads, and a burst of large
messages.  bench/README.md explains every figure.  Raw results go to bench/results/*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.clients import WorkerConfig
from harness.limits import wide_port_range
from harness.meta import FASTAPI_PACKAGES, cpu_probe, run_meta
from harness.processes import ServerProcess
from harness.report import environment_line, fmt, log, probe_text, results_path, write_json
from harness.runs import BENCH_DIR, REPO_DIR, RESULTS_DIR, prepare
from harness.stats import gc_delta, handshake_ms, latency_summary, median
from harness.workers import Workers, connect_counts, handshake_times, split, wait_delivery

SERVERS = ("plain", "roomcast", "roomcast_asgi")


def server_cpus(args: argparse.Namespace) -> set[int] | None:
    """CPU the servers run on with ``--pin``: the first one; clients get the others."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[0]} if args.pin and len(cpus) > 1 else None


def client_cpus(args: argparse.Namespace) -> tuple[int, ...]:
    cpus = sorted(os.sched_getaffinity(0))
    return tuple(cpus[1:]) if args.pin and len(cpus) > 1 else ()


# ------------------------------------------------------------------ the server under test


class Server:
    """One uvicorn subprocess serving ``apps:<name>_app``, and its control endpoints."""

    def __init__(self, name: str, port: int, log_path: Path, cpus: set[int] | None) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{port}"
        command = [
            *(sys.executable, "-m", "uvicorn", f"apps:{name}_app", "--app-dir", str(BENCH_DIR)),
            *("--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"),
            *("--http", "httptools", "--log-level", "warning"),
        ]
        self.process = ServerProcess(command, log_path, cpus=cpus)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.exited():
                raise RuntimeError(f"{self.name} server exited; see {self.log_path}")
            with contextlib.suppress(OSError):
                self.get("/bench/count", timeout=1.0)
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} server not ready after {timeout}s")

    def get(self, path: str, timeout: float = 10.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def post(self, path: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def count(self) -> int:
        return int(self.get("/bench/count")["connections"])

    def wait_count(self, wanted: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() == wanted:
                return True
            time.sleep(0.2)
        return False

    def idle_cpu_rate(self, seconds: float) -> float:
        """CPU seconds per second the server burns while nobody sends anything."""
        cpu0, started = self.process.cpu_s(), time.monotonic()
        time.sleep(seconds)
        return (self.process.cpu_s() - cpu0) / (time.monotonic() - started)

    def stop(self) -> None:
        self.process.stop()  # killed: a graceful shutdown of 15k websockets measures nothing


# ------------------------------------------------------------------ the client workers


def worker_configs(
    args: argparse.Namespace, port: int, run_index: int, connections: int
) -> list[WorkerConfig]:
    return [
        WorkerConfig(
            host="127.0.0.1",
            port=port,
            path="/ws",
            source_address=f"127.0.{run_index % 250 + 1}.{2 + i}",
            connections=share,
            client=args.client,
            concurrency=args.concurrency,
            cpus=client_cpus(args),
        )
        for i, share in enumerate(split(connections, args.per_worker, args.min_workers))
    ]


# ------------------------------------------------------------------ scenario 1: fan-out


class Deployment:
    """One server under test with its own client workers, for the fan-out scenario."""

    def __init__(self, args: argparse.Namespace, name: str, connections: int, index: int):
        self.args = args
        self.name = name
        self.connections = connections
        self.port = args.port + index
        self.index = index
        log_path = RESULTS_DIR / f"server-{index}-{name}-{connections}.log"
        self.server = Server(name, self.port, log_path, server_cpus(args))
        self.workers: Workers | None = None
        self.connected = 0
        self.rounds: list[dict[str, Any]] = []
        self._round: dict[str, Any] = {}
        self.idle_rates: list[float] = []
        self.result: dict[str, Any] = {"server": name, "connections": connections}

    def connect(self) -> None:
        """Connect the N clients (paced), and measure RSS and CPU around it."""
        args, server = self.args, self.server
        server.wait_ready()
        server.get("/bench/stats")
        time.sleep(0.5)
        rss0, cpu0 = server.process.rss_kib(), server.process.cpu_s()
        self.workers = Workers(worker_configs(args, self.port, self.index, self.connections))
        started = time.monotonic()
        replies = self.workers.call(
            ("connect", args.connect_spread), timeout=args.connect_spread + args.connect_timeout
        )
        ok, failed = connect_counts(replies)
        registered = server.wait_count(ok, timeout=30)
        connect_s = time.monotonic() - started
        if failed or not registered:
            log(
                f"{self.name} N={self.connections}: {failed} connects failed; "
                f"server has {server.count()}"
            )
        time.sleep(1.0)
        rss1, cpu1 = server.process.rss_kib(), server.process.cpu_s()
        self.connected = ok
        self.result.update(
            {
                "connected": ok,
                "connect_failures": failed,
                "connect_s": connect_s,
                "handshake_ms": handshake_ms(handshake_times(replies)),
                "rss_before_kib": rss0,
                "rss_after_kib": rss1,
                "kib_per_conn": (rss1 - rss0) / max(1, ok),
                "handshake_cpu_ms": (cpu1 - cpu0) * 1000 / max(1, ok),
            }
        )
        log(
            f"{self.name} N={ok}: connected in {connect_s:.1f}s, "
            f"{self.result['kib_per_conn']:.1f} KiB/conn"
        )

    def begin_round(self) -> None:
        self._round = {
            "stats": self.server.get("/bench/stats"),
            "messages": 0,
            "loop_s": 0.0,
            "completed": True,
            "delivered": 0,
            "expected": 0,
            "server_cpu_s": 0.0,
            "server_user_s": 0.0,
            "server_sys_s": 0.0,
            "client_cpu_s": 0.0,
            "wall_s": 0.0,
        }

    def step(self, first_seq: int, count: int) -> None:
        """Broadcast ``count`` messages (one POST) and wait for them; adds to the round."""
        args, server, workers, acc = self.args, self.server, self.workers, self._round
        assert workers is not None
        timeout = args.phase_timeout
        expected = count * self.connected
        frames0 = workers.frames()
        cpu0, wcpu0 = server.process.cpu_s(), workers.cpu_s()
        user0, sys0 = server.process.user_sys_s()
        wall0 = time.monotonic()
        answer = server.post(
            "/bench/broadcast",
            {
                "count": count,
                "size": args.size,
                "interval_ms": args.interval_ms,
                "start_seq": first_seq,
                "timeout_s": timeout,
            },
            timeout=timeout + 30,
        )
        frames1, _ = wait_delivery(workers, frames0 + expected, timeout=timeout)
        cpu1, wcpu1 = server.process.cpu_s(), workers.cpu_s()
        user1, sys1 = server.process.user_sys_s()
        acc["wall_s"] += time.monotonic() - wall0
        acc["messages"] += count
        acc["loop_s"] += answer["elapsed_s"]
        acc["completed"] = acc["completed"] and answer["completed"]
        acc["delivered"] += frames1 - frames0
        acc["expected"] += expected
        acc["server_cpu_s"] += cpu1 - cpu0
        acc["server_user_s"] += user1 - user0
        acc["server_sys_s"] += sys1 - sys0
        acc["client_cpu_s"] += wcpu1 - wcpu0

    def end_round(self, first_seq: int) -> dict[str, Any]:
        assert self.workers is not None
        acc = self._round
        stats0 = acc.pop("stats")
        gc_passes, gc_s = gc_delta(stats0, self.server.get("/bench/stats"))
        count = acc["messages"]
        reports = self.workers.call(("report", first_seq, first_seq + count - 1), 60)
        delivered = max(1, acc["delivered"])
        return {
            **acc,
            "lost": acc["expected"] - acc["delivered"],
            "us_per_msg": acc["server_cpu_s"] * 1e6 / delivered,
            "client_us_per_msg": acc["client_cpu_s"] * 1e6 / delivered,
            "gc_collections": gc_passes,
            "gc_s": gc_s,
            "latency": latency_summary(reports, first_seq, count, self.connected),
        }

    def record_round(self, round_index: int, r: dict[str, Any]) -> None:
        self.rounds.append(r)
        log(
            f"{self.name} N={self.connected} round {round_index + 1}: "
            f"{r['us_per_msg']:.2f} µs/msg (sys {r['server_sys_s']:.2f}s of "
            f"{r['server_cpu_s']:.2f}s, gc {r['gc_collections']} {r['gc_s']:.2f}s), "
            f"lost {r['lost']}, loop {r['loop_s']:.2f}s"
        )

    def measure_idle(self, windows: int) -> None:
        self.idle_rates += [self.server.idle_cpu_rate(1.0) for _ in range(windows)]

    def summary(self) -> dict[str, Any]:
        result, rounds = self.result, self.rounds
        # Median of 1 s windows: a full (gen-2) GC pass that lands in one window is ignored.
        idle_rate = median(self.idle_rates)
        for r in rounds:
            net_cpu = r["server_cpu_s"] - idle_rate * r["wall_s"]
            r["net_us_per_msg"] = net_cpu * 1e6 / max(1, r["delivered"])
        result.update(
            {
                "rounds": rounds,
                "idle_cpu_pct": idle_rate * 100,
                "idle_windows_pct": [x * 100 for x in self.idle_rates],
                "us_per_msg": median([r["us_per_msg"] for r in rounds]),
                "net_us_per_msg": median([r["net_us_per_msg"] for r in rounds]),
                "sys_pct": median(
                    [r["server_sys_s"] * 100 / max(1e-9, r["server_cpu_s"]) for r in rounds]
                ),
                "client_us_per_msg": median([r["client_us_per_msg"] for r in rounds]),
                "lost": sum(r["lost"] for r in rounds),
                "loop_s": median([r["loop_s"] for r in rounds]),
                "gen2_gcs": sum(r["gc_collections"][2] for r in rounds),
                "server_stats": self.server.get("/bench/stats"),
            }
        )
        for key in ("p50", "p99", "p100"):
            result[f"{key}_ms"] = median([r["latency"]["median_ms"][key] for r in rounds])
        return result

    def stop(self) -> None:
        self.server.stop()  # first: a server shutting down 15k websockets measures nothing
        if self.workers is not None:
            self.workers.stop()


def run_round(
    deployments: Sequence[Deployment], first_seq: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One round: ``--messages`` broadcasts per server, in steps of ``batch`` messages that
    alternate between the servers (A B B A A B ...), so that whatever the machine does meanwhile
    hits all of them alike."""
    n = deployments[0].connections
    batch = args.batch or max(1, math.ceil(args.batch_deliveries / n))
    batch = min(batch, args.messages)
    for d in deployments:
        d.begin_round()
    for step, offset in enumerate(range(0, args.messages, batch)):
        count = min(batch, args.messages - offset)
        order = deployments if step % 2 == 0 else deployments[::-1]
        for d in order:
            d.step(first_seq + offset, count)
            time.sleep(args.interval_ms / 1000)
    return [d.end_round(first_seq) for d in deployments]


def run_fanout(
    args: argparse.Namespace, servers: Sequence[str], n: int, first_index: int
) -> list[dict[str, Any]]:
    """All servers up at once with N clients each; their broadcasts interleave."""
    deployments: list[Deployment] = []
    try:
        for i, name in enumerate(servers):
            deployments.append(Deployment(args, name, n, first_index + i))
        for d in deployments:
            d.connect()
        run_round(deployments, 0, args)  # warm-up, not counted
        for d in deployments:
            d.measure_idle(args.idle_windows)
        stride = max(1000, args.messages)
        for round_index in range(args.rounds):
            results = run_round(deployments, stride * (round_index + 1), args)
            for d, r in zip(deployments, results, strict=True):
                d.record_round(round_index, r)
        for d in deployments:
            d.measure_idle(args.idle_windows)
        return [d.summary() for d in deployments]
    finally:
        for d in deployments:
            d.stop()


# ------------------------------------------------------------------ scenario 2: a slow client


def run_slow(args: argparse.Namespace, name: str, run_index: int) -> dict[str, Any]:
    port = args.port + run_index
    healthy_n = args.slow_connections
    result: dict[str, Any] = {"server": name, "connections": healthy_n, "port": port}
    log_path = RESULTS_DIR / f"server-{run_index}-{name}-slow.log"
    server = Server(name, port, log_path, server_cpus(args))
    healthy: Workers | None = None
    slow: Workers | None = None
    try:
        server.wait_ready()
        healthy = Workers(worker_configs(args, port, run_index, healthy_n))
        ok, _ = connect_counts(healthy.call(("connect", 0.0), args.connect_timeout))
        slow_config = WorkerConfig(
            host="127.0.0.1",
            port=port,
            path="/ws",
            source_address=f"127.0.{run_index % 250 + 1}.250",
            connections=1,
            client=args.client,
            slow=True,
            cpus=client_cpus(args),
        )
        slow = Workers([slow_config])
        slow_ok, _ = connect_counts(slow.call(("connect", 0.0), timeout=60))
        server.wait_count(ok + slow_ok, timeout=30)
        result["connected"] = ok
        result["slow_connected"] = slow_ok
        time.sleep(0.5)

        count, timeout = args.slow_messages, args.slow_timeout
        first_seq = 1000
        frames0 = healthy.frames()
        cpu0 = server.process.cpu_s()
        started = time.monotonic()
        answer = server.post(
            "/bench/broadcast",
            {
                "count": count,
                "size": args.slow_size,
                "interval_ms": args.slow_interval_ms,
                "start_seq": first_seq,
                "timeout_s": timeout,
            },
            timeout=timeout + 30,
        )
        post_s = time.monotonic() - started
        expected = count * ok
        frames1, _ = wait_delivery(healthy, frames0 + expected, timeout=20)
        cpu1 = server.process.cpu_s()
        stats = server.get("/bench/stats")
        reports = healthy.call(("report", first_seq, first_seq + count - 1), 60)
        latency = latency_summary(reports, first_seq, count, ok)
        slow_view = slow.call(("resume", args.slow_resume_seconds), args.slow_resume_seconds + 10)
        delivered = frames1 - frames0
        result.update(
            {
                "loop_s": answer["elapsed_s"],
                "post_s": post_s,
                "completed": answer["completed"],
                "messages_sent": answer["messages_sent"],
                "healthy_expected": expected,
                "healthy_delivered": delivered,
                "healthy_pct": delivered * 100 / max(1, expected),
                "healthy_p99_ms_median": latency["median_ms"]["p99"],
                "healthy_p99_ms_worst": latency["worst_ms"]["p99"],
                "server_cpu_s": cpu1 - cpu0,
                "server_stats": stats,
                "slow_client": slow_view[0],
            }
        )
        closes = stats.get("slow_consumer_closes", 0)
        result["slow_closed_by_server"] = bool(closes) and stats["connections"] == ok
        log(
            f"slow/{name}: loop {answer['elapsed_s']:.2f}s completed={answer['completed']}, "
            f"healthy {result['healthy_pct']:.1f}%, server stats {stats}, slow {slow_view[0]}"
        )
        return result
    finally:
        server.stop()
        for workers in (healthy, slow):
            if workers is not None:
                workers.stop()


# ------------------------------------------------------------------ report


def batch_text(args: argparse.Namespace) -> str:
    if args.batch:
        return f"{args.batch} message(s)"
    return f"ceil({args.batch_deliveries} / N) message(s)"


def fanout_tables(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Each server holds N connections (opened evenly over {args.connect_spread:g} s); "
        f"{args.rounds} measured rounds of {args.messages} broadcasts of {args.size} B per "
        f"server, {args.interval_ms:g} ms apart, in steps of {batch_text(args)} that alternate "
        "between the servers; one warm-up round first. CPU figures: median over rounds "
        "(min-max); latencies: median over messages, then over rounds.",
        "",
        "| server | N | server CPU µs/msg | net of keepalive µs/msg | lost | KiB/conn "
        "| handshake CPU ms/conn | connect s | handshake p99 ms | delivery p50 / p99 / p100 ms "
        "| client CPU µs/msg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        raw = [x["us_per_msg"] for x in r["rounds"]]
        net = [x["net_us_per_msg"] for x in r["rounds"]]
        lines.append(
            f"| {r['server']} | {r['connected']} "
            f"| **{r['us_per_msg']:.2f}** ({min(raw):.2f}-{max(raw):.2f}) "
            f"| {r['net_us_per_msg']:.2f} ({min(net):.2f}-{max(net):.2f}) | {r['lost']} "
            f"| {r['kib_per_conn']:.1f} | {r['handshake_cpu_ms']:.2f} | {r['connect_s']:.1f} "
            f"| {fmt(r['handshake_ms']['p99'])} "
            f"| {fmt(r['p50_ms'])} / {fmt(r['p99_ms'])} / {fmt(r['p100_ms'])} "
            f"| {r['client_us_per_msg']:.2f} |"
        )
    lines += [
        "",
        "| server | N | sys share of server CPU | idle server CPU % (keepalive) "
        "| gen-2 GC passes in rounds | broadcast loop s | per-round µs/msg |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per_round = ", ".join(f"{x['us_per_msg']:.2f}" for x in r["rounds"])
        lines.append(
            f"| {r['server']} | {r['connected']} | {r['sys_pct']:.0f} % "
            f"| {r['idle_cpu_pct']:.1f} | {r['gen2_gcs']} | {r['loop_s']:.2f} | {per_round} |"
        )
    lines += [
        "",
        "| server / plain | N | CPU µs/msg | net of keepalive | paired rounds: median (min-max) "
        "| KiB/conn | handshake CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["server"], r["connections"]): r for r in results}
    others = sorted({r["server"] for r in results} - {"plain"})
    for name, n in (
        (name, n) for name in others for n in sorted({r["connections"] for r in results})
    ):
        plain, ours = by_key.get(("plain", n)), by_key.get((name, n))
        if plain is None or ours is None:
            continue
        cells = [
            f"{ours[key] / plain[key]:.2f}x"
            for key in ("us_per_msg", "net_us_per_msg", "kib_per_conn", "handshake_cpu_ms")
        ]
        # Round i of each server ran back to back: their ratio shares the machine's mood.
        paired = [
            b["us_per_msg"] / a["us_per_msg"]
            for a, b in zip(plain["rounds"], ours["rounds"], strict=False)
        ]
        cells.insert(2, f"{median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})")
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slow_table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.slow_connections} healthy clients + 1 that never reads (SO_RCVBUF 4096); "
        f"{args.slow_messages} messages of {args.slow_size} B, {args.slow_interval_ms:g} ms "
        f"apart; broadcast loop cancelled after {args.slow_timeout:g} s.",
        "",
        "| server | broadcast loop s | completed | messages sent | healthy received % "
        "| healthy p99 ms (median / worst msg) | slow client closed by server "
        "| slow client after resuming reads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        view = r["slow_client"]
        codes = ",".join(str(c) for c in view["close_codes"]) or "none"
        seen = (
            f"{view['frames_before_resume'] + view['frames_after_resume']} msgs, close code {codes}"
        )
        closed = "yes" if r["slow_closed_by_server"] else "no"
        stats = r["server_stats"]
        if "slow_consumer_closes" in stats:
            closed += f" (slow_consumer_closes={stats['slow_consumer_closes']})"
        lines.append(
            f"| {r['server']} | {r['loop_s']:.2f} | {r['completed']} "
            f"| {r['messages_sent']}/{args.slow_messages} | {r['healthy_pct']:.1f} "
            f"| {fmt(r['healthy_p99_ms_median'])} / {fmt(r['healthy_p99_ms_worst'])} "
            f"| {closed} | {seen} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="1000,15000", help="comma-separated N values")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--messages", type=int, default=20, help="messages per round")
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds per N")
    parser.add_argument("--size", type=int, default=100, help="message size in bytes")
    parser.add_argument("--interval-ms", type=float, default=100.0, help="pause between messages")
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="messages per POST before the other server takes its turn "
        "(default: enough for --batch-deliveries)",
    )
    parser.add_argument("--batch-deliveries", type=int, default=5000)
    parser.add_argument("--client", choices=("picows", "sansio"), default="picows")
    parser.add_argument("--per-worker", type=int, default=7500, help="connections per process")
    parser.add_argument("--min-workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--port", type=int, default=65101, help="first server port")
    parser.add_argument(
        "--connect-spread",
        type=float,
        default=20.0,
        help="start the N connects evenly over this many seconds (uvicorn's ping interval: "
        "keeps the keepalive pings evenly spread, so their cost is a steady background)",
    )
    parser.add_argument(
        "--idle-windows", type=int, default=3, help="1 s idle windows before and after rounds"
    )
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--phase-timeout", type=float, default=60.0)
    parser.add_argument("--slow-connections", type=int, default=1000)
    parser.add_argument("--slow-messages", type=int, default=600)
    parser.add_argument("--slow-size", type=int, default=8192)
    parser.add_argument("--slow-interval-ms", type=float, default=1.0)
    parser.add_argument("--slow-timeout", type=float, default=30.0)
    parser.add_argument("--slow-resume-seconds", type=float, default=3.0)
    parser.add_argument("--skip-slow", action="store_true")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers on the first CPU, client workers and this driver on the others "
        "(default: the scheduler places them; pinning measured slower and no steadier here)",
    )
    parser.add_argument("--no-sysctl", action="store_true", help="leave the port range alone")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = prepare()
    if client_cpus(args):
        os.sched_setaffinity(0, client_cpus(args))
    servers = [s for s in args.servers.split(",") if s]
    sizes = [int(n) for n in args.connections.split(",") if n]
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/fanout.py", nofile, FASTAPI_PACKAGES),
        "cpu_probe_ms_before": cpu_probe(),
        "args": vars(args),
    }
    fanout: list[dict[str, Any]] = []
    slow: list[dict[str, Any]] = []
    with wide_port_range(not args.no_sysctl) as port_range:
        meta["port_range"] = port_range
        run_index = 0
        if not args.skip_fanout:
            for n in sizes:
                log(f"fan-out: {', '.join(servers)} at N={n}")
                fanout += run_fanout(args, servers, n, run_index)
                run_index += len(servers)
        if not args.skip_slow:
            for name in servers:
                log(f"slow client: {name}")
                slow.append(run_slow(args, name, run_index))
                run_index += 1
    meta["cpu_probe_ms_after"] = cpu_probe()
    meta["duration_s"] = time.monotonic() - started
    out = results_path("fanout")
    write_json(out, {"meta": meta, "fanout": fanout, "slow": slow})
    print(f"# fan-out benchmark, {meta['date']}, {meta['duration_s']:.0f} s\n")
    print(f"`{meta['command']}`\n")
    print(environment_line(meta))
    probes = [meta["cpu_probe_ms_before"], meta["cpu_probe_ms_after"]]
    print(
        "Host steadiness: a fixed Python loop took "
        + " and ".join(probe_text(p) for p in probes)
        + " of CPU over 30 back-to-back runs, before and after the benchmark.\n"
    )
    if fanout:
        print("## Fan-out\n")
        print(fanout_tables(fanout, args) + "\n")
    if slow:
        print("## Slow client\n")
        print(slow_table(slow, args) + "\n")
    print(f"raw results: {out.relative_to(REPO_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
