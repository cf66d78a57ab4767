"""``roomcast serve`` vs peer servers, side by side: broadcast CPU, memory, handshakes, delivery.

    .venv/bin/python bench/serve.py

For each N (default 1,000, 5,000, 15,000) every server in ``SPECS`` runs as one process with N
clients of its own: ``roomcast serve`` as shipped and two cyclic-GC variants of it, a raw picows
encode-once loop, websockets' ``broadcast()``, socketify pub/sub, the FastAPI docs loop on
uvicorn and python-socketio on uvicorn (the peers live in ``peers/``).  Per server and N:
server CPU per delivered message for single broadcasts and for bursts of 10 back-to-back
messages, RSS per idle connection, handshake CPU per connection, time until 50/99/100 % of the
clients had a message, losses.  Prints Markdown tables, writes the raw figures to
``bench/results/serve-*.json`` and the delivery-time plot to ``bench/serve-latency.png``.
bench/README.md explains every figure.

This file is the order of the phases; one server with its clients, and the servers of one N
side by side, are ``harness/deployment.py``, the tables ``harness/tables/serve.py``, the plot
``harness/plot.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.cli import add_worker_flags, choose
from harness.deployment import BURST, side_by_side
from harness.limits import wide_port_range
from harness.meta import cpu_probe, run_meta
from harness.plot import plot
from harness.report import log, problem_lines, publish, report_head, results_path, write_json
from harness.runs import BENCH_DIR, close_meta, prepare
from harness.tables.serve import tables
from harness.targets import PACKAGES, SPECS, Spec

PLOT_PATH = BENCH_DIR / "serve-latency.png"


def targets_check(results: list[dict[str, Any]]) -> str:
    """roomcast serve's targets, met or missed, per N."""
    by_key = {(r["server"], r["connections"]): r for r in results}
    lines = ["| N | target | value | met |", "|---|---|---|---|"]
    for n in sorted({r["connections"] for r in results}):
        ours = by_key.get(("roomcast", n))
        if ours is None:
            continue
        raw, sio = by_key.get(("picows-raw", n)), by_key.get(("socketio", n))
        checks: list[tuple[str, float, bool]] = []
        if raw:
            value = ours["single_us"] / raw["single_us"]
            checks.append(("single CPU/msg <= 1.1x raw picows", value, value <= 1.1))
            value = ours["handshake_cpu_ms"] / raw["handshake_cpu_ms"]
            checks.append(("handshake CPU <= 1.1x raw picows", value, value <= 1.1))
        value = ours["burst_us"] / ours["single_us"]
        checks.append(("burst/single CPU <= 0.5x", value, value <= 0.5))
        checks.append(("KiB/conn <= 8", ours["kib_per_conn"], ours["kib_per_conn"] <= 8))
        if sio:
            value = sio["single_us"] / ours["single_us"]
            checks.append(("socketio ÷ roomcast single CPU >= 20x", value, value >= 20))
        checks.append(("lost == 0", ours["lost"], ours["lost"] == 0))
        for name, value, met in checks:
            lines.append(f"| {n} | {name} | {value:.2f} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="1000,5000,15000", help="comma-separated N")
    # roomcast-ref (an older checkout) only when BENCH_ROOMCAST_REF names one.
    servers = [
        name for name in SPECS if name != "roomcast-ref" or os.environ.get("BENCH_ROOMCAST_REF")
    ]
    parser.add_argument("--servers", default=",".join(servers), help="comma-separated names")
    parser.add_argument("--messages", type=int, default=20, help="single broadcasts per round")
    parser.add_argument("--min-messages", type=int, default=4, help="fewest singles per round")
    parser.add_argument("--bursts", type=int, default=5, help=f"bursts of {BURST} per round")
    parser.add_argument(
        "--budget",
        type=float,
        default=6.0,
        help="server CPU seconds a round's singles (and, separately, its bursts) may take, "
        "by the warm-up's estimate: slow servers get fewer messages (never fewer than "
        "--min-messages singles and one burst)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per server")
    parser.add_argument("--frame-size", type=int, default=180, help="frame payload bytes")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    add_worker_flags(parser, min_workers=2)
    parser.add_argument("--port", type=int, default=65101, help="first server port")
    parser.add_argument(
        "--connect-spread",
        type=float,
        default=20.0,
        help="servers with keepalive pings get their connects evenly over this many seconds",
    )
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=2500.0,
        help="connects per second for the servers without keepalive pings (one at a time)",
    )
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--phase-timeout", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument(
        "--stall",
        type=float,
        default=10.0,
        help="a message counts as lost once nothing arrived for this many seconds "
        "(python-socketio queues a whole broadcast before its first frame goes out)",
    )
    parser.add_argument(
        "--roomcast-args",
        default="",
        help="extra `roomcast serve` flags for this checkout's roomcast servers (not "
        "roomcast-ref), e.g. '--history-size 0'",
    )
    parser.add_argument("--plot", type=Path, default=PLOT_PATH)
    parser.add_argument("--no-sysctl", action="store_true", help="leave the port range alone")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = prepare()
    problems: list[str] = []
    specs: list[Spec] = []
    for spec in choose(args.servers, SPECS, "server"):
        module = {"socketify": "socketify", "socketio": "socketio"}.get(spec.name)
        if module and importlib.util.find_spec(module) is None:
            problems.append(f"{spec.name}: package not installed, skipped")
            continue
        if args.roomcast_args and spec.kind == "roomcast" and spec.name != "roomcast-ref":
            spec = dataclasses.replace(
                spec,
                what=f"{spec.what}, with `{args.roomcast_args}`",
                flags=tuple(shlex.split(args.roomcast_args)),
            )
        specs.append(spec)
    sizes = [int(n) for n in args.connections.split(",") if n]
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/serve.py", nofile, PACKAGES),
        "servers": {s.name: s.what for s in specs},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpu_probe_ms_before": cpu_probe(),
    }
    results: list[dict[str, Any]] = []
    with wide_port_range(not args.no_sysctl) as port_range:
        meta["port_range"] = port_range
        for size_index, n in enumerate(sizes):
            log(f"N={n}: {', '.join(s.name for s in specs)}")
            found, trouble = side_by_side(args, specs, n, size_index, keep_cdf=True)
            results += found
            problems += trouble
    close_meta(meta, started, problems)
    out = results_path("serve")
    write_json(out, {"meta": meta, "results": results})
    plotted = plot(results, args.plot)
    report = [
        *report_head("roomcast serve vs peers", meta),
        *(f"- {name}: {what}" for name, what in meta["servers"].items()),
        "",
        *problem_lines(problems),
    ]
    if results:
        report += [tables(results, args), "", "Targets:", "", targets_check(results), ""]
    if plotted:
        report.append(f"plot: {args.plot}")
    publish(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
