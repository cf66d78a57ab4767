"""An app on AuthConnectionManager, served by uvicorn in a subprocess (test_auth_manager
kills it with SIGKILL to see the survivors purge its registry entries)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from roomcast import AuthConnectionManager, AuthenticationError, ConnectionConfig, JWTAuthenticator

manager = AuthConnectionManager(
    ConnectionConfig(
        redis_url=os.environ["ROOMCAST_TEST_REDIS_URL"],
        instance_ttl=float(os.environ.get("ROOMCAST_TEST_INSTANCE_TTL", "1.0")),
        refresh_interval=float(os.environ.get("ROOMCAST_TEST_REFRESH", "0.3")),
    )
)
authenticator = JWTAuthenticator(os.environ["ROOMCAST_TEST_JWT_SECRET"], leeway=0)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await manager.initialize()
    yield
    await manager.close()


app = FastAPI(lifespan=lifespan)


@app.websocket("/ws/{room}")
async def endpoint(websocket: WebSocket, room: str) -> None:
    try:
        conn_id, _ = await manager.connect(
            websocket=websocket,
            token=websocket.query_params.get("token"),
            authenticator=authenticator,
            room=room,
        )
    except AuthenticationError:
        return
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        await manager.disconnect(conn_id)
