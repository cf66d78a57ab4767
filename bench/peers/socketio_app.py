"""python-socketio ASGI app on uvicorn: a broadcast is ``await sio.emit("m", data)``.

    BENCH_CONTROL_PORT=65102 uvicorn peers.socketio_app:app --app-dir bench ...

``socketio.AsyncServer(async_mode="asgi")`` with its defaults (Engine.IO pings every 25 s),
wrapped in ``socketio.ASGIApp``; clients connect to ``/socket.io/?EIO=4&transport=websocket``
and join the default namespace.  A publish emits each message to everyone, in one task per
request.  The control port: ``peers.control``.
"""

from __future__ import annotations

from typing import Any

import socketio

from peers.control import asgi_with_control

sio = socketio.AsyncServer(async_mode="asgi")
connected: set[str] = set()


async def connect(sid: str, environ: dict[str, Any]) -> None:
    connected.add(sid)


async def disconnect(sid: str, *reason: Any) -> None:
    connected.discard(sid)


sio.on("connect", connect)
sio.on("disconnect", disconnect)


async def publish(batch: list[str]) -> None:
    for message in batch:
        await sio.emit("m", message)


app: Any = asgi_with_control(socketio.ASGIApp(sio), publish, lambda: len(connected))
