"""The FastAPI path: uvicorn (``--loop uvloop --http httptools``, default ``--ws``) serving
``apps.py``'s ``roomcast_app`` (``ConnectionManager()`` defaults); 20 clients with
``SO_RCVBUF`` 4 KiB that stop reading after the handshake, flooded with broadcasts; their
server sockets (``ss``) at the end of the flood and 15 s later."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time

from drills.base import CROWD, PROBE, Case, Run, terminate
from harness.raw_http import request
from harness.raw_ws import WsClient, abort_all, connect
from harness.report import fmt_mb
from harness.runs import BENCH_DIR

__all__ = ["drill_fastapi"]


def server_sockets(port: int, peers: set[int]) -> tuple[int, int]:
    """ESTABLISHED sockets on local port ``port`` whose peer port is in ``peers``, and their
    Send-Q bytes summed (``ss -tn``)."""
    done = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    count = queued = 0
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if int(fields[-1].rpartition(":")[2]) in peers:
            count += 1
            queued += int(fields[1])
    return count, queued


async def drill_fastapi(run: Run) -> list[Case]:
    port = run.ports.take()
    server = run.spawn(
        "fastapi-uvicorn",
        [
            *(sys.executable, "-m", "uvicorn", "apps:roomcast_app", "--app-dir", str(BENCH_DIR)),
            *("--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"),
            *("--http", "httptools", "--log-level", "warning"),
        ],
    )
    stalled: list[WsClient] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                if (await request(port, "GET", "/bench/count", source=PROBE))[0] == 200:
                    break
            if server.exited():
                raise RuntimeError(f"uvicorn exited: {server.output()[-600:]}")
            await asyncio.sleep(0.1)
        for n in range(20):
            stalled.append(
                await connect(
                    port, "/ws", source=CROWD[n % len(CROWD)], rcvbuf=4096, stall=True, parse=False
                )
            )
        peers = {
            int(client.transport.get_extra_info("sockname")[1])
            for client in stalled
            if client.transport is not None
        }
        started = time.monotonic()
        status, body = await request(
            port,
            "POST",
            "/bench/broadcast?count=800&size=8192&interval_ms=1&timeout_s=30",
            source=PROBE,
            limit=45,
        )
        broadcast = json.loads(body) if status == 200 else {}
        flood_end = time.monotonic()
        at_end = server_sockets(port, peers)
        _, stats_body = await request(port, "GET", "/bench/stats", source=PROBE, limit=5)
        stats = json.loads(stats_body)
        await asyncio.sleep(max(0.0, flood_end + 15 - time.monotonic()))
        later = server_sockets(port, peers)
        return [
            Case(
                "20 clients that never read (SO_RCVBUF 4 KiB), 800 x 8 KiB broadcasts",
                {
                    "broadcast": f"{broadcast.get('messages_sent', '?')} sent in "
                    f"{flood_end - started:.1f} s (completed: {broadcast.get('completed')})",
                    "slow-consumer closes (ManagerStats)": str(stats.get("slow_consumer_closes")),
                    "server sockets ESTABLISHED at the end of the flood": f"{at_end[0]} "
                    f"(Send-Q {fmt_mb(at_end[1])})",
                    "15 s later (close_timeout 5 s + 10 s)": f"{later[0]} "
                    f"(Send-Q {fmt_mb(later[1])})",
                },
            )
        ]
    finally:
        abort_all(stalled)
        await terminate(server)
