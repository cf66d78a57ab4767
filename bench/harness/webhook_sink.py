"""``events.py``'s webhook receiver: answers every POST with 204 and counts the events in it;
``GET /count`` says how many so far.  It checks no signature (a receiver's CPU is not what the
benchmark measures) and runs in a process of its own, whose CPU is left out of the figures.

    python -m harness.webhook_sink PORT
"""

from __future__ import annotations

import json
import sys

from aiohttp import web

__all__ = ["main"]


def main(port: int) -> None:
    received = [0, 0]  # events, requests

    async def hooks(request: web.Request) -> web.Response:
        received[0] += len(json.loads(await request.read())["events"])
        received[1] += 1
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"events": received[0], "requests": received[1]})

    app = web.Application()
    app.router.add_post("/hooks", hooks)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
