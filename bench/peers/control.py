"""The control port every asyncio peer server opens, so ``serve.py`` drives them alike.

It is served by ``roomcast.http_api.serve_api``, the same small HTTP/1.1 server that answers
``roomcast serve``'s ``POST /api/publish``: a publish request costs every server the same, and
only what the server does with the messages differs.  Routes:

- ``POST /bench/publish`` with ``{"batch": ["m1", "m2", ...]}``: broadcast the messages to every
  client, back to back, in order.  A synchronous broadcast runs before the answer
  (``{"delivered": clients x messages}``); an asynchronous one (a coroutine) runs in a task
  started before the answer (``{"scheduled": messages}``).
- ``GET /bench/count``: ``{"connections": N}``.
- ``GET /bench/stats``: connections, asyncio tasks, cyclic-GC passes and seconds per generation.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from harness.gcclock import GcClock
from harness.limits import raise_nofile
from roomcast.serve.http_api import ApiRequest, ApiResponse, serve_api
from roomcast.serve.listener import Acceptor

__all__ = ["asgi_with_control", "start_control"]

Publish = Callable[[list[str]], "int | Awaitable[Any]"]
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


_tasks: set[asyncio.Task[Any]] = set()


def _handler(
    publish: Publish, count: Callable[[], int], clock: GcClock
) -> Callable[[ApiRequest], ApiResponse]:
    def handle(request: ApiRequest) -> ApiResponse:
        if request.method == "POST" and request.path == "/bench/publish":
            batch = json.loads(request.body)["batch"]
            result = publish(batch)
            if isinstance(result, int):
                return ApiResponse.json(200, {"delivered": result})
            task = asyncio.ensure_future(result)
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)
            return ApiResponse.json(200, {"scheduled": len(batch)})
        if request.path == "/bench/count":
            return ApiResponse.json(200, {"connections": count()})
        if request.path == "/bench/stats":
            stats = {"connections": count(), "tasks": len(asyncio.all_tasks()), **clock.snapshot()}
            return ApiResponse.json(200, stats)
        return ApiResponse.json(404, {"error": "not found"})

    return handle


async def start_control(
    port: int, publish: Publish, count: Callable[[], int], clock: GcClock | None = None
) -> Acceptor:
    """Open the control port on 127.0.0.1 (call it from the server's event loop)."""
    return await serve_api(_handler(publish, count, clock or GcClock()), "127.0.0.1", port)


def asgi_with_control(app: ASGIApp, publish: Publish, count: Callable[[], int]) -> ASGIApp:
    """Wrap an ASGI app: its lifespan opens the control port (``BENCH_CONTROL_PORT``) on the
    server's loop; every other scope goes to ``app``."""
    port = int(os.environ.get("BENCH_CONTROL_PORT", "0"))
    clock = GcClock()
    raise_nofile()

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        server: Acceptor | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                server = await start_control(port, publish, count, clock)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if server is not None:
                    server.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped
