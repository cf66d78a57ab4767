"""The two FastAPI apps that ``fanout.py`` compares, served by the same uvicorn.

``plain_app``: the FastAPI documentation's loop (a list of accepted websockets; broadcast is
``for connection in connections: await connection.send_text(message)``).

``roomcast_app``: the same endpoint on ``roomcast.ConnectionManager``; broadcast is
``await manager.broadcast(message)``.  Under uvicorn's default WebSocket protocol it writes the
once-built frame bytes straight to each socket.

``roomcast_asgi_app``: the same with ``ConnectionManager(direct_writes=False)``: one ASGI
``websocket.send`` event per recipient, as under any other ASGI server.

Both expose the same control endpoints, so the driver treats them alike:

- ``POST /bench/broadcast?count=N&size=B&interval_ms=I&start_seq=S&timeout_s=T`` sends N
  messages of B bytes (``"seq|send_time|xxxx..."``) to every connection, sleeping I ms between
  them, and answers when done (or when T seconds have passed: a stalled loop is cancelled).
- ``GET /bench/count``: registered connections.
- ``GET /bench/stats``: implementation counters (roomcast's ``ManagerStats``), pending tasks.

Run one with ``uvicorn apps:plain_app --app-dir bench`` (the driver does this).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from harness.gcclock import GcClock
from harness.limits import raise_nofile
from harness.message import make_message
from roomcast import ConnectionManager

__all__ = ["plain_app", "roomcast_app", "roomcast_asgi_app"]

raise_nofile()
gc_clock = GcClock()


async def _run_broadcast(
    send_all: Callable[[str], Awaitable[int]],
    count: int,
    size: int,
    interval_ms: float,
    start_seq: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Send ``count`` messages through ``send_all``; cancel the loop after ``timeout_s``."""
    handed = 0
    sent = 0
    started = time.perf_counter()
    completed = True
    try:
        async with asyncio.timeout(timeout_s):
            for i in range(count):
                handed += await send_all(make_message(start_seq + i, size))
                sent += 1
                if i < count - 1:
                    await asyncio.sleep(interval_ms / 1000)
    except TimeoutError:
        completed = False
    return {
        "completed": completed,
        "messages_sent": sent,
        "handed": handed,
        "elapsed_s": time.perf_counter() - started,
    }


def _add_control_routes(
    app: FastAPI,
    send_all: Callable[[str], Awaitable[int]],
    count: Callable[[], int],
    stats: Callable[[], dict[str, Any]],
) -> None:
    @app.post("/bench/broadcast")
    async def broadcast(
        count: int = 1,
        size: int = 100,
        interval_ms: float = 0.0,
        start_seq: int = 0,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        return await _run_broadcast(send_all, count, size, interval_ms, start_seq, timeout_s)

    @app.get("/bench/count")
    async def connection_count() -> dict[str, int]:
        return {"connections": count()}

    @app.get("/bench/stats")
    async def implementation_stats() -> dict[str, Any]:
        return {
            "connections": count(),
            "tasks": len(asyncio.all_tasks()),
            **gc_clock.snapshot(),
            **stats(),
        }


# ------------------------------------------------------------------ plain: the FastAPI docs loop

plain_app = FastAPI()
connections: list[WebSocket] = []


@plain_app.websocket("/ws")
async def plain_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    connections.append(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        connections.remove(websocket)


async def plain_broadcast(message: str) -> int:
    for connection in connections:
        await connection.send_text(message)
    return len(connections)


_add_control_routes(plain_app, plain_broadcast, lambda: len(connections), dict)


# ------------------------------------------------------------------ roomcast

roomcast_app = FastAPI()
manager = ConnectionManager()


@roomcast_app.websocket("/ws")
async def roomcast_endpoint(websocket: WebSocket) -> None:
    await manager.connect(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        manager.disconnect(websocket)


async def roomcast_broadcast(message: str) -> int:
    return await manager.broadcast(message)


_add_control_routes(
    roomcast_app,
    roomcast_broadcast,
    lambda: manager.active_connections,
    lambda: dataclasses.asdict(manager.stats),
)


# ------------------------------------------------------------------ roomcast, ASGI events only

roomcast_asgi_app = FastAPI()
asgi_manager = ConnectionManager(direct_writes=False)


@roomcast_asgi_app.websocket("/ws")
async def roomcast_asgi_endpoint(websocket: WebSocket) -> None:
    await asgi_manager.connect(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        asgi_manager.disconnect(websocket)


async def roomcast_asgi_broadcast(message: str) -> int:
    return await asgi_manager.broadcast(message)


_add_control_routes(
    roomcast_asgi_app,
    roomcast_asgi_broadcast,
    lambda: asgi_manager.active_connections,
    lambda: dataclasses.asdict(asgi_manager.stats),
)
