"""The "Basic Connection Manager" example of the FastAPI guide as a runnable FastAPI app.

Run it with ``.venv/bin/uvicorn --app-dir examples chat:app`` (see the README), then connect to
``ws://127.0.0.1:8000/ws/lobby?user_id=alice``: every text message is relayed to the other
members of the room.  ``POST /broadcast/{room_id}`` with a text body sends to a whole room.
"""

from __future__ import annotations

from fastapi import Body, FastAPI, WebSocket, WebSocketDisconnect

from library.components.realtime.websocket_manager import ConnectionManager

app = FastAPI(title="roomcast chat example")
manager = ConnectionManager()


@app.websocket("/ws/{room_id}")
async def websocket_endpoint(websocket: WebSocket, room_id: str, user_id: str) -> None:
    # Accept and register connection
    connection = await manager.connect(websocket, room_id, user_id)

    try:
        while True:
            data = await websocket.receive_text()
            # Broadcast to room (excluding sender)
            await manager.broadcast_to_room(room_id, data, exclude={connection.connection_id})
    except WebSocketDisconnect:
        manager.disconnect(websocket)


@app.post("/broadcast/{room_id}")
async def broadcast(room_id: str, text: str = Body(..., media_type="text/plain")) -> dict[str, int]:
    """Send ``text`` to every member of ``room_id``; answers how many connections took it."""
    return {"delivered": await manager.broadcast_to_room(room_id, text)}


@app.get("/stats")
async def stats() -> dict[str, object]:
    return {
        "connections": manager.active_connections,
        "rooms": manager.active_rooms,
        "slow_consumer_closes": manager.stats.slow_consumer_closes,
    }
