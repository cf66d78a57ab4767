"""Room history through the FastAPI face: ConnectionManager (kept in the process) and
DistributedWebSocketManager (kept in Redis), over real uvicorn servers and real clients."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from roomcast import ConnectionManager, DistributedWebSocketManager
from roomcast.history import HistoryLimits, Position
from roomcast.testing import RedisServer
from tests.support import connect, eventually, recv, running_server


def recovering_app(manager: ConnectionManager) -> FastAPI:
    """Clients join ``room`` from the query, recovering after ``epoch``/``offset`` if given;
    then the join's outcome is sent to the client (after the replay)."""
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(
        websocket: WebSocket,
        room: str,
        user: str,
        epoch: str | None = None,
        offset: int | None = None,
    ) -> None:
        await manager.connect(websocket, None, user)
        since = None if offset is None else {"epoch": epoch or "", "offset": offset}
        joined = await manager.join_room_since(websocket, room, since)
        position = None if joined.position is None else joined.position.as_dict()
        await manager.send_personal(
            websocket,
            {
                "joined": room,
                "recovered": joined.recovered,
                "replayed": joined.replayed,
                "position": position,
            },
        )
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            manager.disconnect(websocket)

    return app


async def messages(client: Any, count: int) -> list[dict[str, Any]]:
    return [json.loads(await recv(client)) for _ in range(count)]


@contextlib.asynccontextmanager
async def managers(
    kind: str, redis: RedisServer | None, prefix: str
) -> AsyncIterator[list[tuple[ConnectionManager, str]]]:
    limits = HistoryLimits(size=10, ttl=60)
    made: list[ConnectionManager]
    if kind == "memory":
        made = [ConnectionManager(history=limits)]
    else:
        assert redis is not None
        made = [DistributedWebSocketManager(redis.url, prefix=prefix, history=limits) for _ in "ab"]
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(running_server(recovering_app(m))) for m in made]
        for manager in made:
            if isinstance(manager, DistributedWebSocketManager):
                await manager.start()
                stack.push_async_callback(manager.stop)
        yield list(zip(made, urls, strict=True))


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_managers_position_messages_and_replay_what_a_client_missed(
    kind: str, request: pytest.FixtureRequest, prefix: str
) -> None:
    redis = request.getfixturevalue("shared_redis") if kind == "redis" else None
    async with managers(kind, redis, prefix) as made:
        (first, first_url), (last, last_url) = made[0], made[-1]
        ann = await connect(f"{first_url}/ws?room=r&user=ann")
        (hello,) = await messages(ann, 1)
        assert hello == {
            "joined": "r",
            "recovered": False,
            "replayed": 0,
            "position": {"epoch": "", "offset": 0},
        }
        for n in range(1, 4):
            await first.broadcast_to_room("r", {"n": n})
        got = await messages(ann, 3)
        assert [m["offset"] for m in got] == [1, 2, 3] and [m["n"] for m in got] == [1, 2, 3]
        epoch = got[0]["epoch"]
        await ann.close()
        await eventually(lambda: first.active_connections == 0)
        for n in range(4, 7):  # missed by ann
            await first.broadcast_to_room("r", {"n": n})
        back = await connect(f"{last_url}/ws?room=r&user=ann&epoch={epoch}&offset=3")
        replayed = await messages(back, 4)
        assert [m.get("offset") for m in replayed[:3]] == [4, 5, 6]
        assert replayed[3] == {
            "joined": "r",
            "recovered": True,
            "replayed": 3,
            "position": {"epoch": epoch, "offset": 6},
        }
        await first.broadcast_to_room("r", {"n": 7})
        (live,) = await messages(back, 1)
        assert live["offset"] == 7
        page = await last.room_history("r", Position(epoch, 5))
        assert page.recovered and [json.loads(p)["n"] for p in page.payloads] == [6, 7]
        await back.close()


async def test_without_history_the_managers_send_messages_as_given() -> None:
    manager = ConnectionManager()
    async with running_server(recovering_app(manager)) as url:
        client = await connect(f"{url}/ws?room=r&user=u")
        (hello,) = await messages(client, 1)
        assert hello["position"] is None and hello["recovered"] is False
        await manager.broadcast_to_room("r", {"n": 1})
        assert json.loads(await recv(client)) == {"n": 1}
        with pytest.raises(LookupError):
            await manager.room_history("r")
        await client.close()
