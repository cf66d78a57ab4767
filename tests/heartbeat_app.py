"""The seed's FastAPI endpoint on a ConnectionManager with a fast application-level heartbeat,
served by uvicorn in a subprocess: test_browser checks that the JavaScript client answers its
pings (a client that did not would be closed with 4002 within 0.6 s)."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from roomcast import ConnectionManager

app = FastAPI()
manager = ConnectionManager(ping_interval=0.3, pong_timeout=0.3)


@app.websocket("/ws/{room_id}")
async def websocket_endpoint(websocket: WebSocket, room_id: str, user_id: str) -> None:
    connection = await manager.connect(websocket, room_id, user_id)
    try:
        while True:
            data = await websocket.receive_text()
            await manager.broadcast_to_room(room_id, data, exclude={connection.connection_id})
    except WebSocketDisconnect:
        manager.disconnect(websocket)
