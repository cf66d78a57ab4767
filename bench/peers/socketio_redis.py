"""python-socketio scaled out with ``AsyncRedisManager``: one of several uvicorn processes.

    BENCH_REDIS_URL=redis://127.0.0.1:65290 BENCH_CONTROL_PORT=65222 \\
        uvicorn peers.socketio_redis:app --app-dir bench --loop uvloop ...

``socketio.AsyncServer(async_mode="asgi", client_manager=AsyncRedisManager(url))`` with its
defaults otherwise (Engine.IO pings every 25 s), in ``socketio.ASGIApp``.  Every client that
connects to the default namespace joins the room ``bench``.  A publish on the control port
(``peers.control``: ``POST /bench/publish {"batch": [...]}``) does ``await sio.emit("msg", m,
room="bench")`` per message: the manager publishes it to Redis, and every process (this one
included) emits it to its own members of the room when it comes back from Redis.
"""

from __future__ import annotations

import os
from typing import Any

import socketio

from peers.control import asgi_with_control

ROOM = "bench"
EVENT = "msg"

sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=socketio.AsyncRedisManager(os.environ["BENCH_REDIS_URL"]),
)
members: set[str] = set()


async def connect(sid: str, environ: dict[str, Any]) -> None:
    await sio.enter_room(sid, ROOM)
    members.add(sid)


async def disconnect(sid: str, *reason: Any) -> None:
    members.discard(sid)


sio.on("connect", connect)
sio.on("disconnect", disconnect)


async def publish(batch: list[str]) -> None:
    for message in batch:
        await sio.emit(EVENT, message, room=ROOM)


app: Any = asgi_with_control(socketio.ASGIApp(sio), publish, lambda: len(members))
