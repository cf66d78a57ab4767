"""Hook calls: what a connect storm asks of ``HookClient`` and a backend answering in ~1 ms.

    .venv/bin/python bench/hooks.py

A backend process (this script with ``--backend PORT``: aiohttp.web on uvloop, every answer
after ``--delay-ms``, a connect hook's ``allow`` with a 3-pattern capability claim) and this
driver, one process each.  For each ``--max-in-flight``, a fresh ``HookClient`` (uvloop) warms
up with 500 calls, then ``--calls`` connect-hook calls are started at once, as a storm of
upgrade requests would start them, and every one is awaited.  Figures: wall time, calls/s,
latency per call from its start to its decision (waiting for a slot included) p50/p99/max,
the most calls at the backend at once (``HookStats.peak_in_flight``), the TCP connections the
client opened (warm-up included: more than ``max_in_flight`` when calls that timed out closed
theirs), failures by kind, and CPU per call in the driver and in the backend.

This measures the client alone; the storm through ``roomcast serve`` comes once the hooks are
wired into the server.  Prints a Markdown table, writes the raw figures to
``bench/results/hooks-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import uvloop

from harness.hook_backend import percentile, serve_backend
from harness.meta import cpu_probe, run_meta
from harness.report import log, problem_lines, publish, report_head, results_path, write_json
from harness.runs import close_meta, prepare
from roomcast.hooks import HookClient
from roomcast.hooks.decisions import ConnectAllowed, Hook

PACKAGES = ("aiohttp", "uvloop")
HEADERS = [
    ("Cookie", "session=0123456789abcdef0123456789abcdef"),
    ("User-Agent", "bench/1.0"),
    ("Origin", "http://127.0.0.1"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
]


# -- the driver --------------------------------------------------------------------------------


async def backend_stats(base: str) -> dict[str, Any]:
    """The backend's figures (connections seen, requests, CPU seconds)."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/stats") as response:
        figures: dict[str, Any] = await response.json()
        return figures


async def storm(base: str, calls: int, max_in_flight: int, hook_timeout: float) -> dict[str, Any]:
    """``calls`` connect-hook calls at once through a fresh client; the figures."""
    client = HookClient(
        connect_url=f"{base}/connect",
        timeout=hook_timeout,
        max_in_flight=max_in_flight,
        max_waiting=calls,
    )
    await client.start()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    allowed = 0

    async def one(i: int) -> None:
        nonlocal allowed
        begun = loop.time()
        decision = await client.connect(HEADERS, f"room=bench&n={i}", "/ws/bench", "127.0.0.1")
        latencies.append(loop.time() - begun)
        allowed += isinstance(decision, ConnectAllowed) and decision.failure is None

    try:
        opened = (await backend_stats(base))["connections"]
        await asyncio.gather(*(one(i) for i in range(500)))  # warm-up: connections, caches
        latencies.clear()
        allowed = 0
        before = await backend_stats(base)
        stats = client.stats(Hook.CONNECT)
        stats.peak_in_flight = 0
        cpu = time.process_time()
        begun = loop.time()
        await asyncio.gather(*(one(i) for i in range(calls)))
        wall = loop.time() - begun
        cpu = time.process_time() - cpu
        after = await backend_stats(base)
    finally:
        await client.stop()
    ordered = sorted(latencies)
    return {
        "calls": calls,
        "max_in_flight": max_in_flight,
        "wall_s": wall,
        "calls_per_s": calls / wall,
        "p50_ms": percentile(ordered, 0.5) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "peak_in_flight": stats.peak_in_flight,
        "connections": after["connections"] - opened,
        "allowed": allowed,
        "failures": {k.value: v for k, v in stats.failures.items() if v},
        "driver_cpu_us_per_call": cpu / calls * 1e6,
        "backend_cpu_us_per_call": (after["cpu"] - before["cpu"]) / calls * 1e6,
    }


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| calls | max_in_flight | wall s | calls/s | p50 ms | p99 ms | max ms | peak in flight "
        "| TCP conns | allowed | failures | driver CPU µs/call | backend CPU µs/call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        failures = ", ".join(f"{k}: {v}" for k, v in r["failures"].items()) or "0"
        lines.append(
            f"| {r['calls']:,} | {r['max_in_flight']} | {r['wall_s']:.2f} | "
            f"{r['calls_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['max_ms']:.1f} | {r['peak_in_flight']} | {r['connections']} | "
            f"{r['allowed']:,} | {failures} | {r['driver_cpu_us_per_call']:.0f} | "
            f"{r['backend_cpu_us_per_call']:.0f} |"
        )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=15_000, help="calls per storm")
    parser.add_argument("--max-in-flight", default="64,128,256", help="comma-separated")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="the backend's answer time")
    parser.add_argument("--timeout", type=float, default=10.0, help="HookClient timeout (s)")
    parser.add_argument("--port", type=int, default=65401, help="the backend's port")
    parser.add_argument("--backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backend is not None:
        serve_backend(args.backend, args.delay_ms / 1000)
        return 0
    nofile = prepare()
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/hooks.py", nofile, PACKAGES),
        "args": dict(vars(args)),
        "cpu_probe_ms_before": cpu_probe(),
    }
    problems: list[str] = []
    results: list[dict[str, Any]] = []
    command = [sys.executable, __file__, "--backend", str(args.port), "--delay-ms"]
    with subprocess.Popen([*command, str(args.delay_ms)], stdout=subprocess.PIPE) as backend:
        try:
            assert backend.stdout is not None
            if backend.stdout.readline().strip() != b"ready":
                raise SystemExit("the backend did not start")
            base = f"http://127.0.0.1:{args.port}"
            for cap in (int(c) for c in args.max_in_flight.split(",") if c):
                log(f"{args.calls} calls, max_in_flight {cap}")
                found = uvloop.run(storm(base, args.calls, cap, args.timeout))
                results.append(found)
                if found["allowed"] != args.calls:
                    problems.append(f"max_in_flight {cap}: {found['failures']} failed")
        finally:
            backend.terminate()
    close_meta(meta, started, problems)
    out = results_path("hooks")
    write_json(out, {"meta": meta, "results": results})
    report = [
        *report_head("connect-hook calls: HookClient against a ~1 ms backend", meta),
        f"Backend: aiohttp.web on uvloop, one process, answering after {args.delay_ms:g} ms; "
        "driver: one process, uvloop, all calls of a storm started at once.\n",
        *problem_lines(problems),
        *table(results),
        "",
    ]
    publish(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
