"""A FastAPI app on ``DistributedWebSocketManager``, served by uvicorn in a subprocess.

``test_scaleout`` runs three of these on one Redis and drives every cross-instance path of the
library API through ``POST /send``, as an application's own routes would.  With
``ROOMCAST_TEST_LIFECYCLE`` (an instance TTL in seconds) it counts lifecycle events too, for
``test_distributed_lifecycle`` to kill it and see a survivor make its users depart.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from roomcast import DistributedWebSocketManager, LifecycleSettings

_ttl = os.environ.get("ROOMCAST_TEST_LIFECYCLE")
manager = DistributedWebSocketManager(
    os.environ["ROOMCAST_TEST_REDIS_URL"],
    lifecycle=None
    if _ttl is None
    else LifecycleSettings(debounce=0.2, instance_ttl=float(_ttl), refresh_interval=0.1),
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await manager.start()
    yield
    await manager.stop()


app = FastAPI(lifespan=lifespan)


@app.websocket("/ws/{room}")
async def endpoint(websocket: WebSocket, room: str, user_id: str) -> None:
    connection = await manager.connect(websocket, room, user_id)
    await websocket.send_json({"connection_id": connection.connection_id})
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        manager.disconnect(websocket)


@app.post("/send")
async def send(body: dict[str, Any]) -> dict[str, int]:
    exclude = set(body.get("exclude", []))
    operation = body["op"]
    if operation == "room":
        local = await manager.broadcast_to_room(body["room"], body["data"], exclude=exclude)
    elif operation == "all":
        local = await manager.broadcast(body["data"], exclude=exclude)
    elif operation == "user":
        local = await manager.send_to_user(body["user"], body["data"])
    else:
        local = int(await manager.send_to_connection(body["id"], body["data"]))
    return {"local": local}


@app.get("/state")
async def state() -> dict[str, Any]:
    return {"settled": manager.broker.settled, "connections": manager.active_connections}
