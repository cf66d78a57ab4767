"""A connect storm through ``roomcast serve``, with and without a connect hook.

    .venv/bin/python bench/connect_hook.py

Three processes: a backend (this script with ``--backend PORT``: aiohttp.web on uvloop, every
answer after ``--delay-ms``: ``allow`` with a user, a 3-pattern capability claim and data),
``roomcast serve`` (one process, started afresh per mode), and this driver (uvloop; raw
WebSocket clients of ``harness/raw_ws.py`` from four loopback addresses, ``--concurrency``
handshakes in flight).  Modes: ``no hook`` (clients name themselves with ``?user_id=``) and
``connect hook`` (``--connect-hook-url``: roomcast reads each request head, asks the backend,
then lets picows upgrade).  ``--clients`` clients connect as fast as the concurrency allows
and stay connected.  Per mode, one run: connections per second (wall, first connect to last
101), connect latency per client from its TCP connect to its 101 (p50/p99/max), server CPU
per connection, the hook calls at the backend at once (the most: the server's
``roomcast_hook_peak_in_flight`` and the backend's own count), failures.  Prints a Markdown
table, writes the raw figures to ``bench/results/connect_hook-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import uvloop

from harness.hook_backend import percentile, serve_backend
from harness.limits import wide_port_range
from harness.meta import cpu_probe, run_meta
from harness.processes import ServerProcess, cpu_ns_of
from harness.raw_ws import WsClient, abort_all, connect
from harness.report import log, problem_lines, publish, report_head, results_path, write_json
from harness.runs import BENCH_DIR, close_meta, prepare

PACKAGES = ("aiohttp", "uvloop", "picows", "httptools")
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


# -- the driver --------------------------------------------------------------------------------


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        found: dict[str, Any] = await response.json()
        return found


async def metric(port: int, line_start: str) -> float:
    """One series of the server's /metrics (0 if absent)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        for line in (await response.text()).splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[1])
    return 0.0


async def ready(port: int, server: ServerProcess) -> None:
    async with asyncio.timeout(30):
        while True:
            if server.exited():
                raise SystemExit(f"roomcast serve exited:\n{server.output()[-2000:]}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/readyz") as response,
                ):
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def storm(args: argparse.Namespace, mode: str, port: int) -> dict[str, Any]:
    """One mode: a fresh server, ``args.clients`` clients at ``args.concurrency``."""
    command = [
        sys.executable,
        "-m",
        "roomcast.serve.cli",
        "serve",
        f"--port={port}",
        "--max-connections=30000",
        "--ping-interval=0",
        "--stats-interval=0",
        "--log-level=warning",
        f"--handshake-timeout={args.hook_timeout + 5}",
    ]
    if mode == "connect hook":
        command += [
            f"--connect-hook-url=http://127.0.0.1:{args.backend_port}/connect",
            f"--hook-timeout={args.hook_timeout}",
            f"--hook-max-in-flight={args.max_in_flight}",
        ]
    name = mode.replace(" ", "-")
    server = ServerProcess(command, BENCH_DIR / "results" / f"connect_hook-{name}.log")
    clients: list[WsClient] = []
    try:
        await ready(port, server)
        backend_before = await get_json(f"http://127.0.0.1:{args.backend_port}/stats")
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(args.concurrency)
        latencies: list[float] = []
        failures: dict[str, int] = {}

        async def one(n: int) -> None:
            async with gate:
                begun = loop.time()
                try:
                    client = await connect(
                        port, f"/ws?user_id=u{n}", source=SOURCES[n % len(SOURCES)], limit=60
                    )
                except Exception as exc:
                    kind = type(exc).__name__
                    failures[kind] = failures.get(kind, 0) + 1
                    return
                latencies.append(loop.time() - begun)
                clients.append(client)

        cpu = cpu_ns_of(server.pid)
        begun = loop.time()
        await asyncio.gather(*(one(n) for n in range(args.clients)))
        wall = loop.time() - begun
        cpu = cpu_ns_of(server.pid) - cpu
        peak = await metric(port, 'roomcast_hook_peak_in_flight{hook="connect"}')
        backend_after = await get_json(f"http://127.0.0.1:{args.backend_port}/stats")
        open_now = await metric(port, "roomcast_connections")
    finally:
        abort_all(clients)
        await asyncio.to_thread(server.terminate, 10)
    ordered = sorted(latencies) or [0.0]
    return {
        "mode": mode,
        "clients": args.clients,
        "connected": len(latencies),
        "open_at_server": open_now,
        "wall_s": wall,
        "connections_per_s": len(latencies) / wall,
        "p50_ms": percentile(ordered, 0.5) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "server_cpu_us_per_conn": cpu / 1000 / max(1, len(latencies)),
        "hook_peak_in_flight_server": peak,
        "hook_peak_in_flight_backend": backend_after["peak_in_flight"],
        "hook_requests": backend_after["requests"] - backend_before["requests"],
        "backend_cpu_us_per_conn": (backend_after["cpu"] - backend_before["cpu"])
        / max(1, len(latencies))
        * 1e6,
        "failures": failures,
    }


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| mode | clients | connected | wall s | connections/s | p50 ms | p99 ms | max ms "
        "| server CPU µs/conn | hook calls | in flight (max) | backend CPU µs/conn | failures |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        hooked = r["mode"] == "connect hook"
        failures = ", ".join(f"{k}: {v}" for k, v in r["failures"].items()) or "0"
        in_flight = f"{r['hook_peak_in_flight_server']:.0f}" if hooked else "-"
        calls = f"{r['hook_requests']:,}" if hooked else "-"
        backend = f"{r['backend_cpu_us_per_conn']:.0f}" if hooked else "-"
        lines.append(
            f"| {r['mode']} | {r['clients']:,} | {r['connected']:,} | {r['wall_s']:.2f} | "
            f"{r['connections_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['max_ms']:.1f} | {r['server_cpu_us_per_conn']:.0f} | {calls} | {in_flight} | "
            f"{backend} | {failures} |"
        )
    if len(results) == 2 and results[0]["connections_per_s"]:
        ratio = results[1]["connections_per_s"] / results[0]["connections_per_s"]
        cpu = results[1]["server_cpu_us_per_conn"] / max(1.0, results[0]["server_cpu_us_per_conn"])
        lines += ["", f"With the hook: {ratio:.2f}x the connections/s, {cpu:.2f}x the server CPU."]
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=15_000, help="clients per storm")
    parser.add_argument("--concurrency", type=int, default=1000, help="handshakes in flight")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="the backend's answer time")
    parser.add_argument("--max-in-flight", type=int, default=64, help="--hook-max-in-flight")
    parser.add_argument("--hook-timeout", type=float, default=5.0, help="--hook-timeout (s)")
    parser.add_argument("--port", type=int, default=65201, help="roomcast serve's port")
    parser.add_argument("--backend-port", type=int, default=65202)
    parser.add_argument("--no-sysctl", action="store_true", help="leave the port range alone")
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
        **run_meta("bench/connect_hook.py", nofile, PACKAGES),
        "args": dict(vars(args)),
        "cpu_probe_ms_before": cpu_probe(),
    }
    problems: list[str] = []
    results: list[dict[str, Any]] = []
    command = [sys.executable, __file__, f"--backend={args.backend_port}"]
    backend = ServerProcess(
        [*command, f"--delay-ms={args.delay_ms}"],
        BENCH_DIR / "results" / "connect_hook-backend.log",
    )
    try:
        with wide_port_range(not args.no_sysctl):
            time.sleep(1.0)  # (the backend prints "ready" to its log)
            for mode in ("no hook", "connect hook"):
                log(f"{mode}: {args.clients} clients, {args.concurrency} handshakes in flight")
                found = uvloop.run(storm(args, mode, args.port))
                results.append(found)
                log(f"{mode}: {found['connections_per_s']:,.0f} connections/s")
                if found["connected"] != args.clients:
                    problems.append(f"{mode}: {found['failures']} failed")
    finally:
        backend.terminate(5)
    close_meta(meta, started, problems)
    out = results_path("connect_hook")
    write_json(out, {"meta": meta, "results": results})
    report = [
        *report_head("a connect storm through roomcast serve, with and without a hook", meta),
        f"Backend: aiohttp.web on uvloop, one process, answering after {args.delay_ms:g} ms; "
        f"roomcast serve: one process, --hook-max-in-flight {args.max_in_flight}; driver: one "
        f"process, uvloop, raw clients, {args.concurrency} handshakes in flight.\n",
        *problem_lines(problems),
        *table(results),
        "",
    ]
    publish(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
