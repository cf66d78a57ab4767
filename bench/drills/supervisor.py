"""kill -9 of the supervisor: ``--workers 2 --redis-url`` (a throwaway redis-server), 4
clients, ``SIGKILL`` to the supervisor; are the workers left serving?"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import psutil

from drills.base import CROWD, PROBE, Case, Run, Serve
from harness.raw_http import health_check
from harness.raw_ws import WsClient, abort_all, connect_many
from harness.report import fmt_counts

__all__ = ["drill_supervisor"]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def drill_supervisor(run: Run) -> list[Case]:
    redis = run.redis_server("supervisor-redis")
    serve = Serve(run, "supervisor", ("--workers", "2"), ("--redis-url", redis.url))
    clients: list[WsClient] = []
    try:
        await asyncio.to_thread(redis.start)
        await serve.ready()
        deadline = time.monotonic() + 20
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [p.pid for p in psutil.Process(serve.pid).children()]
            await asyncio.sleep(0.1)
        clients = await connect_many(serve.port, ["/ws/r"] * 4, CROWD)
        killed = time.monotonic()
        serve.process.signal(signal.SIGKILL)  # the supervisor only, not its group
        gone_after: dict[int, float] = {}
        while time.monotonic() < killed + 10:
            for pid in workers:
                if pid not in gone_after and not alive(pid):
                    gone_after[pid] = time.monotonic() - killed
            await asyncio.sleep(0.1)
        left = [pid for pid in workers if alive(pid)]
        gone = ", ".join(f"{seconds:.1f} s" for seconds in sorted(gone_after.values()))
        return [
            Case(
                "--workers 2 --redis-url, 4 clients, SIGKILL to the supervisor",
                {
                    "workers alive 10 s later": f"{len(left)} of {len(workers)}"
                    + (f" ({len(gone_after)} gone after {gone})" if gone else ""),
                    "WS port /healthz 10 s later": await health_check(serve.port, source=PROBE),
                    "clients": fmt_counts(
                        Counter(c.how_it_ended(killed).split(" after")[0] for c in clients)
                    ),
                },
            )
        ]
    finally:
        abort_all(clients)
        await serve.stop()  # the group: the orphaned workers too
        redis.close()
