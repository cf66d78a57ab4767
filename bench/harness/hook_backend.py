"""The backend the hook benchmarks ask: every POST answered with ``ANSWER`` (a connect hook's
allow, with capabilities and data) after a fixed delay, in a process of its own; ``GET
/stats`` gives its figures (requests, calls in flight and their peak, TCP connections seen,
CPU seconds).  ``hooks.py`` (``HookClient`` alone) and ``connect_hook.py`` (through
``roomcast serve``) both run it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence

import uvloop
from aiohttp import web

__all__ = ["ANSWER", "percentile", "serve_backend"]

ANSWER = {
    "allow": True,
    "user": "bench-user",
    "rooms": {"bench": ["join", "publish"], "team:*": ["join"], "inbox#bench-user": ["*"]},
    "data": {"plan": "pro"},
}


def serve_backend(port: int, delay: float) -> None:
    """Serve on 127.0.0.1:``port`` until killed; prints ``ready`` once listening."""
    body = json.dumps(ANSWER).encode()
    figures = {"requests": 0, "in_flight": 0, "peak_in_flight": 0}
    peers: set[object] = set()

    async def hook(request: web.Request) -> web.Response:
        figures["requests"] += 1
        figures["in_flight"] += 1
        figures["peak_in_flight"] = max(figures["peak_in_flight"], figures["in_flight"])
        if request.transport is not None:
            peers.add(request.transport.get_extra_info("peername"))
        try:
            await request.read()
            await asyncio.sleep(delay)
            return web.Response(body=body, content_type="application/json")
        finally:
            figures["in_flight"] -= 1

    async def stats(request: web.Request) -> web.Response:
        times = os.times()
        answer = {**figures, "connections": len(peers), "cpu": times[0] + times[1]}
        return web.json_response(answer)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/connect", hook)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of the sorted ``ordered`` lie."""
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
