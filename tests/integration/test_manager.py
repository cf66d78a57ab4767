"""ConnectionManager over real uvicorn and real clients: lifecycle, sends, failures, limits."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed

from roomcast import (
    CloseCode,
    ConnectionManager,
    ConnectionStateError,
    InvalidIdentifier,
    InvalidMessage,
    MessageType,
)
from tests.support import connect, eventually, recv, running_server


def make_app(manager: ConnectionManager, *, read: bool = True) -> FastAPI:
    """An app whose endpoint registers the client (room/user from the query) and reads text."""
    app = FastAPI()
    app.state.release = asyncio.Event()

    @app.websocket("/ws")
    async def endpoint(
        websocket: WebSocket, room: str | None = None, user: str | None = None
    ) -> None:
        await manager.connect(websocket, room, user)
        if not read:  # an endpoint that never reads: it cannot notice the client leaving
            await app.state.release.wait()
            return
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            manager.disconnect(websocket)

    return app


PATHS = [
    pytest.param({}, {}, id="uvicorn-direct-writes"),
    pytest.param({"direct_writes": False}, {}, id="uvicorn-asgi-events"),
    pytest.param({}, {"ws": "wsproto"}, id="uvicorn-wsproto"),
    pytest.param({}, {"ws_per_message_deflate": True}, id="deflate-offered"),
]


@pytest.mark.parametrize(("manager_options", "server_options"), PATHS)
async def test_payload_kinds_reach_the_client_as_the_right_frames(
    manager_options: dict[str, Any], server_options: dict[str, Any]
) -> None:
    """str, bytes, dict and typed messages arrive as the frames MessageType selects, whether
    frames go straight to uvicorn's socket or through ASGI events."""
    manager = ConnectionManager(**manager_options)
    compression = "deflate" if server_options.get("ws_per_message_deflate") else None
    async with running_server(make_app(manager), **server_options) as base:
        client = await connect(f"{base}/ws?user=u", compression=compression)
        await eventually(lambda: manager.active_connections == 1)
        ws = manager.get_user_connections("u")[0].websocket
        assert await manager.send_personal(ws, "text") is True
        assert await manager.send_personal(ws, b"\x00\x01") is True
        assert await manager.send_personal(ws, {"n": 1}) is True
        assert await manager.send_personal(ws, "as bytes", MessageType.BYTES) is True
        assert await manager.send_personal(ws, {"beat": 1}, MessageType.PING) is True
        assert [await recv(client) for _ in range(5)] == [
            "text",
            b"\x00\x01",
            '{"n":1}',
            b"as bytes",
            '{"beat":1}',
        ]
        assert manager.stats.frames_sent == 5
        assert manager.stats.bytes_sent == 4 + 2 + 7 + 8 + 10
        await client.close()


async def test_sends_to_nobody_are_no_ops() -> None:
    """Unknown websockets, users and rooms receive nothing and report zero."""
    manager = ConnectionManager()
    assert await manager.send_personal(object(), "x") is False
    assert await manager.send_to_user("ghost", "x") == 0
    assert await manager.broadcast_to_room("void", "x") == 0
    assert await manager.broadcast("x") == 0
    assert manager.disconnect(object()) is None
    assert manager.get_room_members("void") == [] == manager.get_user_connections("ghost")


async def test_exclude_applies_to_broadcast_and_rooms() -> None:
    """Connections named in exclude are skipped by broadcast and broadcast_to_room."""
    manager = ConnectionManager()
    async with running_server(make_app(manager)) as base:
        a = await connect(f"{base}/ws?room=r&user=a")
        b = await connect(f"{base}/ws?room=r&user=b")
        await eventually(lambda: manager.active_connections == 2)
        a_id = manager.get_user_connections("a")[0].connection_id
        assert manager.get_connection(a_id) is manager.get_user_connections("a")[0]
        assert await manager.broadcast("all-but-a", exclude={a_id}) == 1
        assert await manager.broadcast_to_room("r", "room-but-a", exclude=[a_id]) == 1
        assert await manager.broadcast_to_room("r", "room") == 2
        assert [await recv(b) for _ in range(3)] == ["all-but-a", "room-but-a", "room"]
        assert await recv(a) == "room"
        await a.close()
        await b.close()


async def test_invalid_identifiers_and_double_connect_are_refused() -> None:
    """Empty, non-string and over-long ids raise InvalidIdentifier; connecting twice fails."""
    manager = ConnectionManager(max_id_length=8)
    for room, user in [("", None), (None, ""), ("r" * 9, None), (None, 5)]:
        with pytest.raises(InvalidIdentifier):
            await manager.connect(object(), room, user)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifier, match="limit is 8"):
        await manager.join_room(object(), "x" * 9)
    async with running_server(make_app(manager)) as base:
        client = await connect(f"{base}/ws?user=u")
        await eventually(lambda: manager.active_connections == 1)
        ws = manager.get_user_connections("u")[0].websocket
        with pytest.raises(ConnectionStateError, match="already connected"):
            await manager.connect(ws)
        await client.close()
    with pytest.raises(ValueError, match="positive"):
        ConnectionManager(send_buffer_limit=0)


async def test_unencodable_payload_raises_and_sends_nothing() -> None:
    """A payload that cannot be encoded raises InvalidMessage before anyone gets anything."""
    manager = ConnectionManager()
    async with running_server(make_app(manager)) as base:
        client = await connect(f"{base}/ws")
        await eventually(lambda: manager.active_connections == 1)
        with pytest.raises(InvalidMessage):
            await manager.broadcast({"bad": object()})
        with pytest.raises(InvalidMessage):
            await manager.broadcast(b"\xff", MessageType.TEXT)
        await manager.broadcast("next")
        assert await recv(client) == "next"
        await client.close()


async def test_close_type_closes_targets_with_reason() -> None:
    """MessageType.CLOSE closes the targeted connections with code 1000 and the reason."""
    manager = ConnectionManager()
    async with running_server(make_app(manager)) as base:
        a = await connect(f"{base}/ws?room=r")
        b = await connect(f"{base}/ws?room=r")
        c = await connect(f"{base}/ws")
        await eventually(lambda: manager.active_connections == 3)
        assert await manager.broadcast_to_room("r", "room closed", MessageType.CLOSE) == 2
        assert manager.active_connections == 1
        for client in (a, b):
            with pytest.raises(ConnectionClosed):
                await recv(client)
            assert client.close_code == 1000 and client.close_reason == "room closed"
        await manager.broadcast("still here")
        assert await recv(c) == "still here"
        await c.close()


async def test_close_all_sends_going_away() -> None:
    """close_all closes every client with 1001 and leaves no background task."""
    manager = ConnectionManager()
    async with running_server(make_app(manager)) as base:
        clients = [await connect(f"{base}/ws?room=r") for _ in range(5)]
        await eventually(lambda: manager.active_connections == 5)
        await manager.close_all()
        assert manager.active_connections == 0 and manager.active_rooms == []
        for client in clients:
            with pytest.raises(ConnectionClosed):
                await recv(client)
            assert client.close_code == CloseCode.GOING_AWAY


async def test_connection_is_unregistered_when_its_endpoint_crashes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A binary frame makes receive_text() raise in the app; the connection still leaves the
    registry, and the neighbour keeps receiving."""
    manager = ConnectionManager()
    async with running_server(make_app(manager)) as base:
        victim = await connect(f"{base}/ws?room=r&user=v")
        neighbour = await connect(f"{base}/ws?room=r&user=n")
        await eventually(lambda: manager.active_connections == 2)
        with caplog.at_level(logging.CRITICAL, logger="uvicorn.error"):
            await victim.send(b"binary where text is expected")
            await eventually(lambda: manager.active_connections == 1)
        assert manager.get_user_connections("v") == []
        with pytest.raises(ConnectionClosed):
            await recv(victim)
        await manager.broadcast_to_room("r", "fine")
        assert await recv(neighbour) == "fine"
        await neighbour.close()


async def test_oversize_incoming_message_is_closed_with_1009() -> None:
    """A message over the server's size limit closes that client with 1009, nobody else."""
    manager = ConnectionManager()
    async with running_server(make_app(manager), ws_max_size=1024) as base:
        big = await connect(f"{base}/ws?room=r")
        neighbour = await connect(f"{base}/ws?room=r")
        await eventually(lambda: manager.active_connections == 2)
        await big.send("x" * 2048)
        with pytest.raises(ConnectionClosed):
            await recv(big)
        assert big.close_code == CloseCode.MESSAGE_TOO_BIG
        await eventually(lambda: manager.active_connections == 1)
        await manager.broadcast_to_room("r", "fine")
        assert await recv(neighbour) == "fine"
        await neighbour.close()


async def test_gone_client_found_while_sending_is_unregistered() -> None:
    """A client that left while its endpoint was not reading is removed at the next send."""
    manager = ConnectionManager()
    app = make_app(manager, read=False)
    async with running_server(app) as base:
        client = await connect(f"{base}/ws?room=r")
        await eventually(lambda: manager.active_connections == 1)
        await client.close()
        # Nothing tells the app that the client left; sends succeed until the server has
        # seen the close, then the first failing send unregisters the connection.
        async with asyncio.timeout(5):
            while await manager.broadcast_to_room("r", "anyone?"):  # noqa: ASYNC110 - nothing signals it
                await asyncio.sleep(0.01)
        assert manager.active_connections == 0 and manager.active_rooms == []
        assert manager.stats.lost_connections == 1
        app.state.release.set()


async def test_abrupt_drops_during_broadcasts_leave_a_clean_registry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Clients killed (TCP abort) while broadcasts are under way vanish from every index;
    the survivors get every message in order, and nothing is logged as an error."""
    manager = ConnectionManager()
    rng = random.Random(7)
    async with running_server(make_app(manager)) as base:
        clients = [await connect(f"{base}/ws?room=r&user=u{i % 10}") for i in range(60)]
        await eventually(lambda: manager.active_connections == 60)
        doomed, survivors = clients[:30], clients[30:]
        stop = asyncio.Event()

        async def broadcaster() -> int:
            seq = 0
            while not stop.is_set():
                await manager.broadcast_to_room("r", str(seq))
                seq += 1
                await asyncio.sleep(0.001)
            return seq

        with caplog.at_level(logging.WARNING):
            task = asyncio.create_task(broadcaster())
            for client in doomed:
                await asyncio.sleep(rng.random() * 0.01)
                client.transport.abort()
            await eventually(lambda: manager.active_connections == 30)
            stop.set()
            sent = await task
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(manager.get_room_members("r")) == 30
        assert sum(len(manager.get_user_connections(f"u{i}")) for i in range(10)) == 30
        for client in survivors:
            got = [await recv(client) for _ in range(sent)]
            assert got == [str(i) for i in range(sent)]
            await client.close()
        await eventually(lambda: manager.active_connections == 0)
        assert manager.active_rooms == []


async def test_direct_writes_are_used_only_under_uvicorns_default_protocol() -> None:
    """The uvicorn protocol is found behind Starlette's sender, and nothing else is."""
    from roomcast.fastapi.uvicorn_direct import find_uvicorn_protocol

    manager = ConnectionManager()
    async with running_server(make_app(manager)) as base:
        client = await connect(f"{base}/ws?user=u")
        await eventually(lambda: manager.active_connections == 1)
        websocket = manager.get_user_connections("u")[0].websocket
        protocol = find_uvicorn_protocol(websocket._send)
        assert type(protocol).__name__ == "WebSocketsSansIOProtocol"
        await client.close()

    async def unknown_middleware_send(message: Any) -> None:
        await protocol.send(message)  # type: ignore[union-attr]

    assert find_uvicorn_protocol(unknown_middleware_send) is None
    assert find_uvicorn_protocol(print) is None
    assert find_uvicorn_protocol(object()) is None


async def test_a_connect_refused_for_the_room_cap_leaves_nothing_registered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """connect() into a room past max_rooms raises CapacityExceeded and registers nothing:
    the refused client is not counted, not findable by user, and not left behind."""
    manager = ConnectionManager(max_rooms=1)
    async with running_server(make_app(manager)) as base:
        first = await connect(f"{base}/ws?room=a&user=ann")
        await eventually(lambda: manager.active_connections == 1)
        with caplog.at_level(logging.CRITICAL, logger="uvicorn.error"):
            refused = await connect(f"{base}/ws?room=b&user=bob")
            with pytest.raises(ConnectionClosed):
                await recv(refused)
        assert manager.active_connections == 1
        assert manager.get_user_connections("bob") == []
        assert manager.active_rooms == ["a"]
        await first.close()
        await eventually(lambda: manager.active_connections == 0)
