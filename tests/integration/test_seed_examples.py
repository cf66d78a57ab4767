"""Every example of the seed's "Basic Connection Manager", "Room Management", "Broadcasting" and
"Message Types" sections, run as written through the seed's import path, against real uvicorn
and real clients."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from library.components.realtime.websocket_manager import ConnectionManager, MessageType
from tests.support import connect, eventually, recv, running_server

app = FastAPI()
manager = ConnectionManager()


# --- "Basic Connection Manager", verbatim -------------------------------------------------
@app.websocket("/ws/{room_id}")
async def websocket_endpoint(websocket: WebSocket, room_id: str, user_id: str):  # type: ignore[no-untyped-def]
    # Accept and register connection
    connection = await manager.connect(websocket, room_id, user_id)

    try:
        while True:
            data = await websocket.receive_text()
            # Broadcast to room (excluding sender)
            await manager.broadcast_to_room(room_id, data, exclude={connection.connection_id})
    except WebSocketDisconnect:
        manager.disconnect(websocket)


# -------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_manager() -> None:
    global manager
    manager = ConnectionManager()


async def test_basic_connection_manager_relays_to_room_except_sender() -> None:
    """A message from one member reaches the other members of its room, not the sender."""
    async with running_server(app) as base:
        alice = await connect(f"{base}/ws/chat?user_id=alice")
        bob = await connect(f"{base}/ws/chat?user_id=bob")
        other = await connect(f"{base}/ws/elsewhere?user_id=carol")
        await eventually(lambda: manager.active_connections == 3)
        await alice.send("hi bob")
        assert await recv(bob) == "hi bob"
        await bob.send("hi alice")
        assert await recv(alice) == "hi alice"
        with pytest.raises(TimeoutError):
            await recv(other, timeout_units=0.2)
        for client in (alice, bob, other):
            await client.close()
        await eventually(lambda: manager.active_connections == 0)
        assert manager.active_rooms == []


async def test_room_management_example() -> None:
    """The Room Management snippet works on a live connection."""
    async with running_server(app) as base:
        client = await connect(f"{base}/ws/chat?user_id=user123")
        await eventually(lambda: manager.active_connections == 1)
        websocket = manager.get_user_connections("user123")[0].websocket
        printed: list[str] = []
        print = printed.append  # capture the snippet's print()

        # --- "Room Management", verbatim ---
        # Join additional rooms
        await manager.join_room(websocket, "announcements")

        # Leave room
        await manager.leave_room(websocket, "chat")

        # Get room members
        members = manager.get_room_members("chat")
        print(f"{len(members)} users in chat")

        # Get user's connections (multi-device)
        connections = manager.get_user_connections("user123")
        # -----------------------------------

        assert printed == ["0 users in chat"]
        assert [c.user_id for c in connections] == ["user123"]
        assert connections[0].rooms == {"announcements"}
        assert manager.active_rooms == ["announcements"]
        await client.close()
        await eventually(lambda: manager.active_connections == 0)


async def test_room_join_and_leave_report_changes() -> None:
    """join_room/leave_room return True only when membership changed."""
    async with running_server(app) as base:
        client = await connect(f"{base}/ws/chat?user_id=u")
        await eventually(lambda: manager.active_connections == 1)
        websocket = manager.get_user_connections("u")[0].websocket
        assert await manager.join_room(websocket, "news") is True
        assert await manager.join_room(websocket, "news") is False
        assert await manager.leave_room(websocket, "news") is True
        assert await manager.leave_room(websocket, "news") is False
        await client.close()
        await eventually(lambda: manager.active_connections == 0)
        assert await manager.join_room(websocket, "news") is False
        assert await manager.leave_room(websocket, "chat") is False


async def test_broadcasting_example() -> None:
    """The Broadcasting snippet reaches exactly the intended clients, with the right frames."""
    async with running_server(app) as base:
        a1 = await connect(f"{base}/ws/announcements?user_id=user123")
        a2 = await connect(f"{base}/ws/chat?user_id=user123")
        b = await connect(f"{base}/ws/announcements?user_id=bob")
        c = await connect(f"{base}/ws/chat?user_id=carol")
        await eventually(lambda: manager.active_connections == 4)
        websocket = manager.get_user_connections("carol")[0].websocket

        # --- "Broadcasting", verbatim ---
        # Broadcast to everyone
        await manager.broadcast("Server maintenance in 5 minutes")

        # Broadcast to room
        await manager.broadcast_to_room("announcements", "New feature released!")

        # Send to specific user (all their devices)
        await manager.send_to_user("user123", "You have a new message")

        # Send JSON
        await manager.send_personal(
            websocket, '{"type": "notification", "count": 5}', MessageType.JSON
        )
        # --------------------------------

        everyone = "Server maintenance in 5 minutes"
        assert [await recv(a1) for _ in range(3)] == [
            everyone,
            "New feature released!",
            "You have a new message",
        ]
        assert [await recv(a2) for _ in range(2)] == [everyone, "You have a new message"]
        assert [await recv(b) for _ in range(2)] == [everyone, "New feature released!"]
        assert await recv(c) == everyone
        assert json.loads(await recv(c)) == {"type": "notification", "count": 5}
        for client in (a1, a2, b, c):
            with pytest.raises(TimeoutError):
                await recv(client, timeout_units=0.1)
            await client.close()
        await eventually(lambda: manager.active_connections == 0)


def test_message_types_example() -> None:
    """The Message Types snippet runs and round-trips each message."""
    # --- "Message Types", verbatim ---
    from library.components.realtime.websocket_manager import (
        AckMessage,
        ErrorMessage,
        PingMessage,
        PongMessage,
        WSMessage,
    )

    # Create messages
    ping = PingMessage(event_id="uuid-123")
    error = ErrorMessage(event_id="uuid-456", error="Invalid request")
    ack = AckMessage(event_id="uuid-789", ack_event_id="uuid-123")

    # Serialize
    json_str = ping.to_json()
    data_dict = error.to_dict()

    # Parse
    msg = WSMessage.from_json(json_str)
    # ---------------------------------

    assert msg == ping and type(msg) is PingMessage
    assert data_dict["type"] == "error" and data_dict["error"] == "Invalid request"
    assert WSMessage.from_json(ack.to_json()) == ack
    assert isinstance(WSMessage.from_json(PongMessage().to_json()), PongMessage)
