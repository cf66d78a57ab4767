"""Lifecycle events: what recording and delivering them costs ``roomcast serve`` and Redis,
per connect and per disconnect.

    .venv/bin/python bench/events.py --connections 50000

Two deployments side by side, each three ``roomcast serve --redis-url`` processes on a
redis-server of its own (so that each side's Redis figures are its own):

- ``off``: no event options;
- ``on``: ``--webhook-url`` to a sink (``harness/webhook_sink.py``, a process of its own that
  answers 204 and counts) and ``--webhook-secret``, the defaults otherwise (debounce 5 s):
  the Redis store's scripts, the stream, the dispatchers reading it and their POSTs.

Rounds alternate the sides (off, on; then on, off).  In a round, N clients (each a user of
its own, in one of ``--rooms`` rooms joined at the upgrade: ``harness/churn.py``) connect,
spread evenly over the three processes from client worker processes on 127.x source
addresses; then all of them disconnect.  Each phase is measured over the same window
(``--window`` seconds from its start, longer only if its work is not done by then: every
connection counted by the servers, or gone, and on the ``on`` side every event received by
the sink), so that the idle cost of both sides (ticks, heartbeats) weighs the same: server CPU
(the three processes, schedstat), redis-server CPU and its commands (``INFO commandstats``,
which counts the commands that scripts run too), per connection and per second.

Prints Markdown tables, writes the raw figures to ``bench/results/events-*.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from harness.churn import ChurnConfig, run_worker
from harness.limits import wide_port_range
from harness.meta import cpu_probe, run_meta
from harness.processes import ServerProcess, cpu_ns_of
from harness.redis_stats import commands
from harness.report import (
    fmt_counts,
    fmt_ratio,
    log,
    problem_lines,
    publish,
    report_head,
    results_path,
    write_json,
)
from harness.runs import BENCH_DIR, RESULTS_DIR, close_meta, prepare
from harness.stats import ratio
from harness.targets import PACKAGES, SPECS, Target
from harness.workers import Workers, shares, split
from roomcast.testing import RedisServer, free_port, redis_server

INSTANCES = 3
SECRET = "bench-events-secret"


class Side:
    """Three servers on one Redis, with or without lifecycle events."""

    def __init__(self, name: str, redis: RedisServer, port: int, sink: int | None) -> None:
        self.name = name
        self.redis = redis
        self.sink = sink
        flags = ["--redis-url", redis.url, "--rate-limit", "0", "--history-size", "0"]
        env: dict[str, str] = {}
        if sink is not None:
            flags += ["--webhook-url", f"http://127.0.0.1:{sink}/hooks"]
            env["ROOMCAST_WEBHOOK_SECRET"] = SECRET
        self.targets = [
            Target(
                SPECS["roomcast"],
                port + 2 * i,
                RESULTS_DIR / f"events-{name}-{i}.log",
                RESULTS_DIR / f"events-{name}-{i}-gc.json",
                extra_args=flags,
                extra_env=env,
            )
            for i in range(INSTANCES)
        ]

    def cpu_ns(self) -> int:
        return sum(target.cpu_ns() for target in self.targets)

    def count(self) -> int:
        return sum(target.count() for target in self.targets)

    def received(self) -> int:
        if self.sink is None:
            return 0
        connection = http.client.HTTPConnection("127.0.0.1", self.sink, timeout=5)
        try:
            connection.request("GET", "/count")
            answer: dict[str, int] = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        return answer["events"]

    def sample(self) -> dict[str, Any]:
        return {
            "at": time.monotonic(),
            "server_ns": self.cpu_ns(),
            "redis_ns": cpu_ns_of(self.redis.pid),
            "commands": commands(self.redis),
        }

    def stop(self) -> None:
        for target in self.targets:
            target.stop()


def wait_until(done: Any, window_end: float, timeout: float) -> tuple[bool, float]:
    """Poll ``done()`` until it holds, then sleep to ``window_end``; (held, seconds late)."""
    give_up = time.monotonic() + timeout
    held = False
    while time.monotonic() < give_up:
        try:
            if done():
                held = True
                break
        except (OSError, RuntimeError):  # (a server too busy to answer /metrics in 5 s)
            pass
        time.sleep(0.2)
    late = max(0.0, time.monotonic() - window_end)
    time.sleep(max(0.0, window_end - time.monotonic()))
    return held, late


def figures(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    wall = after["at"] - before["at"]
    calls: Counter[str] = after["commands"] - before["commands"]
    calls.pop("info", None)  # (the sampling's own)
    total = sum(calls.values())
    return {
        "wall_s": wall,
        "server_cpu_ms_per_conn": (after["server_ns"] - before["server_ns"]) / 1e6 / n,
        "redis_cpu_us_per_conn": (after["redis_ns"] - before["redis_ns"]) / 1e3 / n,
        "redis_commands_per_conn": total / n,
        "redis_commands_per_s": total / wall,
        "redis_commands": dict(calls.most_common()),
    }


def one_round(args: argparse.Namespace, side: Side, round_no: int) -> dict[str, Any]:
    n = args.connections
    configs = []
    for i, (target, share) in enumerate(zip(side.targets, shares(n, INSTANCES), strict=True)):
        for w, count in enumerate(split(share, args.per_worker, 1)):
            configs.append(
                ChurnConfig(
                    port=target.port,
                    source_address=f"127.{60 + round_no % 100}.{i + 1}.{2 + w}",
                    connections=count,
                    user_prefix=f"{side.name}{round_no}-{i}-{w}-",
                    rooms=args.rooms,
                    concurrency=args.concurrency,
                )
            )
    workers = Workers(configs, run=run_worker)
    result: dict[str, Any] = {"side": side.name, "round": round_no, "connections": n}
    try:
        events_before = side.received()
        per_phase = 2 * n + args.rooms  # (connect + join per client, occupied per room)
        expect = events_before + per_phase if side.sink is not None else 0
        a = side.sample()
        replies = workers.call(("connect",), args.connect_timeout)
        connected = sum(r["connected"] for r in replies)
        held, late = wait_until(
            lambda: side.count() >= connected and side.received() >= expect,
            a["at"] + args.window,
            args.connect_timeout,
        )
        b = side.sample()
        result["connected"] = connected
        result["connect_failures"] = sum(r["failed"] for r in replies)
        result["connect"] = {**figures(a, b, connected), "complete": held, "late_s": late}
        log(f"{side.name} round {round_no}: {connected} connected, {late:.1f} s past the window")
        expect = (expect + per_phase) if side.sink is not None else 0
        workers.call(("drop", args.connect_timeout), args.connect_timeout + 10)
        held, late = wait_until(
            lambda: side.count() == 0 and side.received() >= expect,
            b["at"] + args.window,
            args.connect_timeout,
        )
        c = side.sample()
        result["disconnect"] = {**figures(b, c, connected), "complete": held, "late_s": late}
        result["events_received"] = side.received() - events_before
        log(f"{side.name} round {round_no}: all gone, {late:.1f} s past the window")
    finally:
        workers.stop()
    return result


ROWS = (
    ("server CPU ms / conn", "server_cpu_ms_per_conn", 3),
    ("redis-server CPU µs / conn", "redis_cpu_us_per_conn", 1),
    ("Redis commands / conn", "redis_commands_per_conn", 2),
    ("Redis commands / s", "redis_commands_per_s", 0),
)


def tables(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| phase | figure | off | on | on ÷ off |",
        "|---|---|---|---|---|",
    ]
    for phase in ("connect", "disconnect"):
        for label, key, digits in ROWS:
            values = {
                side: statistics.median(r[phase][key] for r in results if r["side"] == side)
                for side in ("off", "on")
            }
            lines.append(
                f"| {phase} | {label} | {values['off']:.{digits}f} | {values['on']:.{digits}f} "
                f"| {fmt_ratio(ratio(values['on'], values['off']))} |"
            )
    lines += ["", "Redis commands of the `on` side, first round (the scripts' own included):", ""]
    first = next(r for r in results if r["side"] == "on")
    for phase in ("connect", "disconnect"):
        calls = Counter(first[phase]["redis_commands"])
        lines.append(f"- {phase}: {fmt_counts(calls)}")
    lines.append("")
    lines.append("| side | round | connected | connect window s | disconnect window s | events |")
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        lines.append(
            f"| {r['side']} | {r['round']} | {r['connected']} | {r['connect']['wall_s']:.1f} "
            f"| {r['disconnect']['wall_s']:.1f} | {r.get('events_received', 0)} |"
        )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50_000, help="N per round")
    parser.add_argument("--rooms", type=int, default=500, help="rooms the clients spread over")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side (alternating)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per phase at least")
    parser.add_argument("--per-worker", type=int, default=6000, help="connections per process")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--port", type=int, default=65401, help="first server port")
    parser.add_argument("--no-sysctl", action="store_true", help="leave the port range alone")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = prepare()
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/events.py", nofile, PACKAGES),
        "args": dict(vars(args)),
        "cpu_probe_ms_before": cpu_probe(),
    }
    problems: list[str] = []
    results: list[dict[str, Any]] = []
    sink_port = free_port()
    sink = ServerProcess(
        [sys.executable, "-m", "harness.webhook_sink", str(sink_port)],
        RESULTS_DIR / "events-sink.log",
        cwd=BENCH_DIR,
    )
    with (
        wide_port_range(not args.no_sysctl) as port_range,
        redis_server() as redis_off,
        redis_server() as redis_on,
    ):
        meta["port_range"] = port_range
        sides = [
            Side("off", redis_off, args.port, None),
            Side("on", redis_on, args.port + 10, sink_port),
        ]
        try:
            for side in sides:
                for target in side.targets:
                    target.wait_ready()
            for round_no in range(args.rounds):
                for side in sides if round_no % 2 == 0 else sides[::-1]:
                    result = one_round(args, side, round_no)
                    results.append(result)
                    for phase in ("connect", "disconnect"):
                        if not result[phase]["complete"]:
                            problems.append(f"{side.name} round {round_no}: {phase} incomplete")
        finally:
            for side in sides:
                side.stop()
            sink.stop()
    close_meta(meta, started, problems)
    out = results_path("events")
    write_json(out, {"meta": meta, "results": results})
    report = [
        *report_head("lifecycle events on vs off, 3 processes + Redis", meta),
        f"- N = {args.connections} per round over 3 processes, {args.rooms} rooms, "
        f"{args.rounds} rounds per side, phases of at least {args.window:g} s; medians",
        "",
        *problem_lines(problems),
        *tables(results),
        "",
    ]
    publish(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
