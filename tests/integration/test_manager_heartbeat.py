"""ConnectionManager(ping_interval=...): application-level heartbeats on the FastAPI path,
with no change to the seed's endpoint code."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from roomcast import CloseCode, ConnectionManager, PingMessage, PongMessage, WSMessage
from tests.support import connect, eventually, recv, running_server, seconds


def seed_app(manager: ConnectionManager) -> FastAPI:
    """The seed's endpoint, unchanged."""
    app = FastAPI()

    @app.websocket("/ws/{room_id}")
    async def websocket_endpoint(websocket: WebSocket, room_id: str, user_id: str) -> None:
        connection = await manager.connect(websocket, room_id, user_id)
        try:
            while True:
                data = await websocket.receive_text()
                await manager.broadcast_to_room(room_id, data, exclude={connection.connection_id})
        except WebSocketDisconnect:
            manager.disconnect(websocket)

    return app


async def answer_pings(client: ClientConnection, seen: list[str]) -> None:
    """A well-behaved client: answers every PingMessage, keeps everything else."""
    async for raw in client:
        try:
            message = WSMessage.from_json(raw)
        except ValueError:
            seen.append(str(raw))
            continue
        if isinstance(message, PingMessage):
            await client.send(PongMessage(ping_event_id=message.event_id).to_json())
        else:
            seen.append(str(raw))


async def test_silent_clients_are_closed_and_pongs_never_reach_the_endpoint() -> None:
    """Clients get PingMessages; one that never answers is closed with 4002 within
    ping_interval + pong_timeout and unregistered; those that answer stay, and their pongs
    are consumed by the manager (the endpoint would have relayed them to the room)."""
    interval = seconds(0.2)
    manager = ConnectionManager(ping_interval=interval, pong_timeout=interval)
    async with running_server(seed_app(manager)) as base:
        ann = await connect(f"{base}/ws/lobby?user_id=ann")
        bob = await connect(f"{base}/ws/lobby?user_id=bob")
        mute = await connect(f"{base}/ws/lobby?user_id=mute")
        await eventually(lambda: manager.active_connections == 3)
        seen_by_ann: list[str] = []
        seen_by_bob: list[str] = []
        tasks = [
            asyncio.ensure_future(answer_pings(ann, seen_by_ann)),
            asyncio.ensure_future(answer_pings(bob, seen_by_bob)),
        ]
        try:
            first = WSMessage.from_json(await recv(mute))
            assert isinstance(first, PingMessage)
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(mute, timeout_units=5)
            assert mute.close_code == CloseCode.HEARTBEAT_TIMEOUT
            await eventually(lambda: manager.active_connections == 2)
            assert manager.stats.heartbeat_timeouts == 1
            await asyncio.sleep(3 * interval)  # several more rounds of pings and pongs
            assert manager.active_connections == 2
            assert manager.heartbeat is not None
            health = manager.heartbeat.get_all_health_metrics()
            assert len(health) == 2 and all(h.alive and h.rtt is not None for h in health.values())
            await ann.send("hello bob")
            await eventually(lambda: seen_by_bob == ["hello bob"])
            assert seen_by_ann == []  # bob's pongs were never relayed
        finally:
            for task in tasks:
                task.cancel()
            await manager.close_all()
