"""Presence snapshots: 2,000 members of ``big`` (presence on, one process); a watcher, also a
member, joins ``$presence:big`` 100 times a second for 11.5 s; twice, with a fresh watcher."""

from __future__ import annotations

import asyncio
import time

from drills.base import CROWD, NEIGHBOUR, Case, Run, Serve, wait_for_metric
from harness.raw_ws import WsClient, abort_all, connect, connect_many, text_frame
from harness.report import fmt_mb, log

__all__ = ["drill_presence"]


class Snapshots:
    """Counts the presence snapshots (member lists) a watcher gets."""

    def __init__(self) -> None:
        self.count = 0

    def on_text(self, payload: bytes) -> None:
        if b'"members"' in payload:
            self.count += 1


async def drill_presence(run: Run) -> list[Case]:
    serve = Serve(run, "presence")
    members: list[WsClient] = []
    cases: list[Case] = []
    try:
        await serve.ready()
        members = await connect_many(serve.port, ["/ws/big"] * 2000, CROWD)
        await wait_for_metric(serve, "roomcast_connections", lambda v: v >= 2000, 20)
        join = text_frame({"type": "join", "room": "$presence:big"})
        for attempt in (1, 2):
            log(f"presence: window {attempt}")
            snapshots = Snapshots()
            watcher = await connect(
                serve.port,
                f"/ws/big?user_id=watcher{attempt}",
                source=NEIGHBOUR,
                on_text=snapshots.on_text,
            )
            try:
                first = await serve.metrics()
                cpu, started = serve.cpu(), time.monotonic()
                for k in range(1150):  # 100 a second for 11.5 s
                    await asyncio.sleep(max(0.0, started + k * 0.01 - time.monotonic()))
                    watcher.send(join)
                await asyncio.sleep(max(0.0, started + 11.5 - time.monotonic()))
                window = time.monotonic() - started
                cpu_used = serve.cpu() - cpu
                received = watcher.received
                watcher_end = watcher.how_it_ended(started)
                last = await serve.metrics()
            finally:
                watcher.abort()
            coalesced = last.get("roomcast_presence_snapshots_coalesced_total")
            limited = last.get("roomcast_rate_limited_total", 0) - first.get(
                "roomcast_rate_limited_total", 0
            )
            figures = {
                "joins sent": "1,150 in 11.5 s",
                "bytes received": fmt_mb(received),
                "snapshots received": f"{snapshots.count:,}",
                "the watcher at the end": watcher_end,
                "server CPU": f"{100 * cpu_used / window:.1f} % of a core",
                "rate-limited messages (roomcast_rate_limited_total)": f"{limited:,.0f}",
            }
            if coalesced is not None:
                before = first.get("roomcast_presence_snapshots_coalesced_total", 0)
                figures["requests coalesced"] = f"{coalesced - before:,.0f}"
            cases.append(Case(f"2,000 members, run {attempt}", figures))
            await asyncio.sleep(2)
        return cases
    finally:
        abort_all(members)
        await serve.stop()
