"""Log lines: 25 clients that never read, in one room, and publishes of 8 x 60 KB until 25
slow-consumer closes (how many WARNING lines?); then a server with ``--redis-url
--stats-interval 0``, Redis killed, 1,060 ``POST /api/publish``, Redis restarted on the same
port (do the log lines add up to ``roomcast_broker_publish_failures_total``?)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from typing import Any

from drills.base import API_KEY, CROWD, NEIGHBOUR, PROBE, Case, Run, Serve
from harness.raw_http import request
from harness.raw_ws import WsClient, abort_all, connect
from harness.report import fmt_counts, log

__all__ = ["drill_logs"]


async def publish(port: int, message: dict[str, Any]) -> int:
    """``POST /api/publish`` of ``message``; the status."""
    status, _ = await request(
        port,
        "POST",
        "/api/publish",
        source=PROBE,
        body=json.dumps(message).encode(),
        headers=[f"X-API-Key: {API_KEY}", "Content-Type: application/json"],
        limit=10,
    )
    return status


async def logs_slow_consumers(run: Run) -> Case:
    serve = Serve(run, "logs-slow")
    stalled: list[WsClient] = []
    try:
        await serve.ready()
        assert serve.api_port is not None
        for n in range(25):
            stalled.append(
                await connect(
                    serve.port,
                    f"/ws/slow?user_id=slow{n}",
                    source=CROWD[n % len(CROWD)],
                    rcvbuf=4096,
                    stall=True,
                    parse=False,
                )
            )
        batch = {"room": "slow", "batch": ["x" * 60_000] * 8}
        statuses: Counter[str] = Counter()
        closes = 0.0
        for n in range(60):  # 480 KB a request: at most 29 MB for each client
            statuses[str(await publish(serve.api_port, batch))] += 1
            if n % 4 == 3:
                closes = (await serve.metrics()).get("roomcast_slow_consumer_closes_total", 0)
                if closes >= 25:
                    break
        await asyncio.sleep(1.0)
        lines = [
            line
            for line in serve.log().splitlines()
            if "WARNING" in line and re.search(r"slow", line, re.IGNORECASE)
        ]
        return Case(
            "25 clients that never read (SO_RCVBUF 4 KiB), publishes of 8 x 60 KB",
            {
                "publish answers": fmt_counts(statuses),
                "slow-consumer closes (metric)": f"{closes:.0f}",
                "WARNING lines about them": str(len(lines)),
            },
        )
    finally:
        abort_all(stalled)
        await serve.stop()


async def logs_redis_outage(run: Run) -> Case:
    redis = run.redis_server("logs-redis")
    serve = Serve(run, "logs-outage", ("--redis-url", redis.url), ("--stats-interval", "0"))
    member: WsClient | None = None
    try:
        await asyncio.to_thread(redis.start)
        await serve.ready()
        assert serve.api_port is not None
        member = await connect(serve.port, "/ws/r?user_id=member", source=NEIGHBOUR)
        first = await serve.metrics()
        redis.kill()
        await asyncio.sleep(1.0)
        statuses: Counter[str] = Counter()
        started = time.monotonic()
        for n in range(1060):
            try:
                statuses[str(await publish(serve.api_port, {"room": "r", "data": f"m{n}"}))] += 1
            except (OSError, TimeoutError, ValueError) as exc:
                statuses[type(exc).__name__] += 1
        published_in = time.monotonic() - started
        await asyncio.to_thread(redis.start)  # the same port: Redis is back
        await serve.ready()
        await asyncio.sleep(1.5)
        last = await serve.metrics()
        name = "roomcast_broker_publish_failures_total"
        failures = last.get(name, float("nan")) - first.get(name, 0)
        sums = [
            int(n) for n in re.findall(r"(\d+) message\(s\) could not be published", serve.log())
        ]
        return Case(
            "Redis killed; 1,060 POST /api/publish to a room with a member; Redis back",
            {
                "publish answers": f"{fmt_counts(statuses)} (in {published_in:.1f} s)",
                f"{name} (increase)": f"{failures:,.0f}",
                "'N message(s) could not be published' lines": f"{len(sums)}, summing to "
                f"{sum(sums):,}"
                + (f" ({' + '.join(map(str, sums))})" if 1 < len(sums) < 6 else ""),
            },
        )
    finally:
        if member is not None:
            member.abort()
        await serve.stop()
        redis.close()


async def drill_logs(run: Run) -> list[Case]:
    log("logs: slow consumers")
    cases = [await logs_slow_consumers(run)]
    log("logs: Redis outage")
    cases.append(await logs_redis_outage(run))
    return cases
