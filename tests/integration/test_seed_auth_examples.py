"""The seed's "Heartbeat Manager" and "Authentication-Enabled Manager" examples, run as written
through the seed's import path (the Redis URL points at the test's own redis-server; the
websocket is a real one, accepted by a real uvicorn)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
from fastapi import FastAPI, WebSocket

from tests.redis_support import RedisServer
from tests.support import connect, eventually, recv, running_server, seconds

SECRET = "seed-example-secret-seed-example-secret"


async def test_heartbeat_manager_example() -> None:
    """Start, record a pong, check health, read metrics, stop; a silent connection is
    reported to its callback."""
    from library.components.realtime.websocket_manager import HeartbeatManager

    sent: list[str] = []
    lost: list[str] = []

    class Socket:
        async def send_text(self, text: str) -> None:
            sent.append(text)

    ws = Socket()

    async def handle_disconnect(connection_id: str) -> None:
        lost.append(connection_id)

    # --- "Heartbeat Manager", verbatim but for the intervals (30/60 s in the seed) --------
    heartbeat = HeartbeatManager(ping_interval=seconds(0.1), pong_timeout=seconds(0.1))

    # Start heartbeat for a connection
    heartbeat.start_heartbeat(
        connection_id="conn-123", websocket=ws, on_disconnect_callback=handle_disconnect
    )

    # Record pong from client
    heartbeat.record_pong("conn-123")

    # Check health
    is_alive = heartbeat.is_connection_alive("conn-123")
    metrics = heartbeat.get_all_health_metrics()

    # Stop heartbeat
    heartbeat.stop_heartbeat("conn-123")
    # ---------------------------------------------------------------------------------------

    assert is_alive and metrics["conn-123"].alive and metrics["conn-123"].last_pong is not None
    assert not heartbeat.is_connection_alive("conn-123")
    heartbeat.start_heartbeat("conn-456", ws, handle_disconnect)
    await eventually(lambda: lost == ["conn-456"])
    assert sent and '"type":"ping"' in sent[0]
    await heartbeat.close()


async def test_authentication_enabled_manager_example(own_redis: RedisServer) -> None:
    """initialize, connect with a JWT, send_to_user(message, user_id), broadcast,
    disconnect(conn_id), close, in an endpoint with a real websocket."""
    from library.components.realtime.websocket_manager import (
        AuthConnectionManager,
        ConnectionConfig,
        JWTAuthenticator,
    )

    my_jwt_authenticator = JWTAuthenticator(SECRET)
    token = jwt.encode({"sub": "user123", "exp": int(time.time()) + 60}, SECRET)
    message = {"type": "notice", "text": "hello"}
    done = asyncio.Event()
    results: dict[str, Any] = {}
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(ws: WebSocket) -> None:
        # --- "Authentication-Enabled Manager", verbatim but for the URL and the token ------
        config = ConnectionConfig(
            redis_url=own_redis.url,
            connection_ttl=3600,
            max_redis_connections=100,
        )
        manager = AuthConnectionManager(config)
        await manager.initialize()

        # Connect with authentication
        conn_id, user_id = await manager.connect(
            websocket=ws, token=token, authenticator=my_jwt_authenticator
        )

        # Send messages
        await manager.send_to_user(message, user_id)
        await manager.broadcast(message)

        # Cleanup
        await manager.disconnect(conn_id)
        await manager.close()
        # -----------------------------------------------------------------------------------
        results["user_id"] = user_id
        done.set()

    async with running_server(app) as base:
        client = await connect(f"{base}/ws")
        assert await recv(client) == '{"type":"notice","text":"hello"}'
        assert await recv(client) == '{"type":"notice","text":"hello"}'
        async with asyncio.timeout(seconds(10)):
            await done.wait()
        assert results["user_id"] == "user123"
        await client.close()
