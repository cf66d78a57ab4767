"""Fan-out benchmark on the FastAPI path: the FastAPI docs loop vs roomcast, side by side.

    .venv/bin/python bench/fanout.py --connections 1000,15000 --messages 20

For each server (``plain``, ``roomcast``, ``roomcast_asgi``; see ``apps.py``) and each N, it
starts uvicorn as a subprocess, connects N clients from worker processes
(``harness/clients.py``), measures the server's RSS and CPU around the connect and broadcast
phases, and prints Markdown tables.  Then the slow-client scenario: N healthy clients plus one
that never reads, and a burst of large messages.  bench/README.md explains every figure.  Raw
results go to bench/results/*.json.

This file is the order of the phases; an app on uvicorn with its clients is
``harness/uvicorn_apps.py``, the tables ``harness/tables/fanout.py``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from harness.cli import add_worker_flags
from harness.limits import wide_port_range
from harness.meta import FASTAPI_PACKAGES, cpu_probe, run_meta
from harness.report import log, results_path, write_json
from harness.runs import RESULTS_DIR, prepare
from harness.stats import latency_summary
from harness.tables.fanout import print_report
from harness.uvicorn_apps import (
    AppDeployment,
    AppServer,
    client_cpus,
    server_cpus,
    slow_worker_config,
    worker_configs,
)
from harness.workers import Workers, connect_counts, wait_delivery

SERVERS = ("plain", "roomcast", "roomcast_asgi")


def run_round(
    deployments: Sequence[AppDeployment], first_seq: int, args: argparse.Namespace
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
    deployments: list[AppDeployment] = []
    try:
        for i, name in enumerate(servers):
            deployments.append(AppDeployment(args, name, n, first_index + i))
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


def run_slow(args: argparse.Namespace, name: str, run_index: int) -> dict[str, Any]:
    """One server with ``--slow-connections`` healthy clients and one that never reads: a
    burst of large messages, what the healthy ones got, what the slow one saw afterwards."""
    port = args.port + run_index
    healthy_n = args.slow_connections
    result: dict[str, Any] = {"server": name, "connections": healthy_n, "port": port}
    log_path = RESULTS_DIR / f"server-{run_index}-{name}-slow.log"
    server = AppServer(name, port, log_path, server_cpus(args))
    healthy: Workers | None = None
    slow: Workers | None = None
    try:
        server.wait_ready()
        healthy = Workers(worker_configs(args, port, run_index, healthy_n))
        ok, _ = connect_counts(healthy.call(("connect", 0.0), args.connect_timeout))
        slow = Workers([slow_worker_config(args, port, run_index)])
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
    add_worker_flags(parser, min_workers=2)
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
    print_report(meta, fanout, slow, args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
