"""ConnectionManager(lifecycle=...): lifecycle events in the application, one process.

A FastAPI app under a real uvicorn, real websockets clients; the test reads the events as an
application would, with ``manager.events()`` and ``manager.on_event``.  Debounce windows are
a fraction of the time unit; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from roomcast import (
    CloseCode,
    ConnectionManager,
    LifecycleEvent,
    LifecycleSettings,
    MessageType,
)
from roomcast.events.schema import Kind
from tests.support import connect, eventually, recv, running_server, seconds

FASTAPI_DOC = (Path(__file__).resolve().parents[2] / "docs" / "fastapi.md").read_text()


def make_app(manager: ConnectionManager) -> FastAPI:
    """The seed's endpoint, plus commands to join, leave and close (the app's own close)."""
    app = FastAPI()

    @app.websocket("/ws/{room}")
    async def endpoint(websocket: WebSocket, room: str, user_id: str) -> None:
        await manager.connect(websocket, room, user_id, event_data={"via": "test"})
        try:
            while True:
                command, _, argument = (await websocket.receive_text()).partition(" ")
                if command == "join":
                    await manager.join_room(websocket, argument)
                elif command == "leave":
                    await manager.leave_room(websocket, argument)
                elif command == "quit":
                    await websocket.close(code=4003, reason=argument)
                    manager.disconnect(websocket)
                    return
                await websocket.send_text("ok")
        except WebSocketDisconnect:
            manager.disconnect(websocket)

    return app


@contextlib.asynccontextmanager
async def serving(manager: ConnectionManager) -> AsyncIterator[str]:
    try:
        async with running_server(make_app(manager)) as base:
            yield base
    finally:
        await manager.close_all()


async def take(events: AsyncGenerator[LifecycleEvent, None], count: int) -> list[str]:
    """The next ``count`` events, as ``kind:user:room`` strings."""
    out = []
    async with asyncio.timeout(seconds(5)):
        for _ in range(count):
            event = await anext(events)
            out.append(f"{event.kind}:{event.user or ''}:{event.room or ''}")
    return out


async def test_connect_join_leave_disconnect_arrive_in_order() -> None:
    """A client's connect, joins, leaves and close come out of events() in their order, the
    departures once the debounce window passed, the disconnect with the client's code."""
    manager = ConnectionManager(lifecycle=LifecycleSettings(debounce=seconds(0.1)))
    async with serving(manager) as base, contextlib.aclosing(manager.events()) as events:
        ann = await connect(f"{base}/ws/lobby?user_id=ann")
        assert await take(events, 3) == ["connect:ann:", "occupied::lobby", "join:ann:lobby"]
        await ann.send("join games")
        assert await recv(ann) == "ok"
        assert await take(events, 2) == ["occupied::games", "join:ann:games"]
        await ann.send("leave games")
        assert await recv(ann) == "ok"
        assert await take(events, 2) == ["leave:ann:games", "vacated::games"]
        await ann.close(4100, "done for today")
        assert await take(events, 3) == ["leave:ann:lobby", "vacated::lobby", "disconnect:ann:"]
        assert manager.lifecycle is not None
        assert manager.lifecycle.store.samples()[0][3] == 10  # events emitted


async def test_a_reconnect_within_the_window_emits_nothing() -> None:
    """A user who drops and comes back within the debounce window never looked offline: no
    disconnect, no second connect; the next event is someone else's."""
    manager = ConnectionManager(lifecycle=LifecycleSettings(debounce=seconds(2)))
    async with serving(manager) as base, contextlib.aclosing(manager.events()) as events:
        ann = await connect(f"{base}/ws/lobby?user_id=ann")
        assert await take(events, 3) == ["connect:ann:", "occupied::lobby", "join:ann:lobby"]
        await ann.close()
        await eventually(lambda: manager.active_connections == 0)
        again = await connect(f"{base}/ws/lobby?user_id=ann")
        await connect(f"{base}/ws/lobby?user_id=bob")
        assert await take(events, 2) == ["connect:bob:", "join:bob:lobby"]
        await again.close()


@pytest.mark.parametrize(
    ("how", "code", "reason"),
    [
        ("client", 4100, "done"),
        ("client-no-reason", 1000, "client closed"),
        ("app", 4003, "bye"),
        ("manager", CloseCode.NORMAL, "kicked"),
        ("heartbeat", CloseCode.HEARTBEAT_TIMEOUT, "no pong"),
    ],
)
async def test_the_disconnect_says_who_closed_and_why(how: str, code: int, reason: str) -> None:
    """The disconnect carries the first close said: the client's close frame, the app's own
    websocket.close, the manager's close, or the heartbeat's 4002."""
    interval = seconds(0.2) if how == "heartbeat" else None
    settings = LifecycleSettings(debounce=0)
    manager = ConnectionManager(lifecycle=settings, ping_interval=interval, pong_timeout=0.2)
    async with serving(manager) as base, contextlib.aclosing(manager.events()) as events:
        ann = await connect(f"{base}/ws/lobby?user_id=ann")
        await take(events, 3)
        if how == "client":
            await ann.close(4100, "done")
        elif how == "client-no-reason":
            await ann.close()
        elif how == "app":
            await ann.send("quit bye")
        elif how == "manager":
            (connection,) = manager.get_user_connections("ann")
            await manager.send_personal(connection.websocket, "kicked", MessageType.CLOSE)
        async with asyncio.timeout(seconds(5)):
            await anext(events)  # leave
            await anext(events)  # vacated
            disconnect = await anext(events)
        assert (disconnect.kind, disconnect.code, disconnect.reason) == (
            Kind.DISCONNECT,
            code,
            reason,
        )


async def test_callbacks_get_every_event_and_a_failing_one_is_retried_then_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """on_event callbacks see the events in order; a callback that fails once is retried
    and takes the event; one that always fails is called 1 + callback_retries times, then
    the event is skipped for it (logged) and the next events still come."""
    settings = LifecycleSettings(debounce=0, callback_retries=1)
    manager = ConnectionManager(lifecycle=settings)
    seen: list[str] = []
    calls: dict[str, int] = {}

    @manager.on_event
    async def record(event: LifecycleEvent) -> None:
        seen.append(f"{event.kind}:{event.user or event.room}")

    @manager.on_event
    async def flaky(event: LifecycleEvent) -> None:
        calls[event.id] = calls.get(event.id, 0) + 1
        if event.kind is Kind.CONNECT and calls[event.id] == 1:
            raise RuntimeError("backend busy")
        if event.kind is Kind.OCCUPIED:
            raise RuntimeError("poison")

    async with serving(manager) as base:
        ann = await connect(f"{base}/ws/lobby?user_id=ann")
        await eventually(lambda: len(seen) == 3)
        await ann.close()
        await eventually(lambda: len(seen) == 6, what="the departures after the poison event")
    assert seen == [
        "connect:ann",
        "occupied:lobby",
        "join:ann",
        "leave:ann",
        "vacated:lobby",
        "disconnect:ann",
    ]
    assert sorted(calls.values()) == [1, 1, 1, 1, 2, 2]  # connect: twice; occupied: 1 + 1
    assert manager.lifecycle is not None
    stats = manager.lifecycle.readers.stats
    assert (stats.handled, stats.skipped, stats.retries, stats.callback_failures) == (5, 1, 2, 3)
    assert "given up on by 1 callback(s) after 2 attempt(s)" in caplog.text
    names = {name for _, name, _, _ in manager.lifecycle.samples()}
    assert {"roomcast_events_skipped", "roomcast_lifecycle_waiting"} <= names


async def test_a_loop_that_breaks_gets_its_unfinished_event_again() -> None:
    """An event the loop broke on is not acknowledged: the next events() hands it out again
    (at once, in memory), after the ones the first loop finished."""
    manager = ConnectionManager(lifecycle=LifecycleSettings(debounce=0))
    async with serving(manager) as base:
        async with contextlib.aclosing(manager.events()) as first:
            await connect(f"{base}/ws/lobby?user_id=ann")
            assert await take(first, 1) == ["connect:ann:"]
            assert await take(first, 1) == ["occupied::lobby"]  # the loop breaks on it
        async with contextlib.aclosing(manager.events()) as second:
            assert await take(second, 2) == ["occupied::lobby", "join:ann:lobby"]


async def test_close_all_emits_what_waits_and_ends_an_events_loop() -> None:
    """close_all() is the shutdown: departures waiting for a long window are emitted at once,
    and an events() loop gets them, then ends."""
    manager = ConnectionManager(lifecycle=LifecycleSettings(debounce=60))
    async with running_server(make_app(manager)) as base:
        async with contextlib.aclosing(manager.events()) as events:
            await connect(f"{base}/ws/lobby?user_id=ann")
            assert await take(events, 3) == ["connect:ann:", "occupied::lobby", "join:ann:lobby"]
            async with asyncio.timeout(seconds(10)):
                await manager.close_all()
                rest = [(event.kind.value, event.code) async for event in events]
        assert rest == [("leave", None), ("vacated", None), ("disconnect", 1001)]


async def test_close_all_lets_the_callbacks_finish_and_a_connect_starts_again() -> None:
    """At close_all() the callbacks get what the stop emitted before their task ends; no
    task is left; the next connection starts the lifecycle again."""
    manager = ConnectionManager(lifecycle=LifecycleSettings(debounce=60))
    seen: list[str] = []

    async def record(event: LifecycleEvent) -> None:
        seen.append(f"{event.kind}:{event.code or ''}")

    assert manager.on_event(record) is record
    async with running_server(make_app(manager)) as base:
        await connect(f"{base}/ws/lobby?user_id=ann")
        await eventually(lambda: len(seen) == 3)
        async with asyncio.timeout(seconds(10)):
            await manager.close_all()
        assert seen[3:] == ["leave:", "vacated:", "disconnect:1001"]
        assert manager.lifecycle is not None
        assert len(manager.lifecycle._tasks) == 0
        await connect(f"{base}/ws/lobby?user_id=bob")
        await eventually(lambda: seen[-1] == "join:")
        await manager.close_all()


async def test_publishes_reported_by_the_app_are_events_when_asked_for() -> None:
    """With publishes=True, what the app reports with lifecycle.published is a publish event
    (the server's own $ rooms excepted); without, it is nothing."""
    for publishes in (True, False):
        manager = ConnectionManager(lifecycle=LifecycleSettings(publishes=publishes))
        assert manager.lifecycle is not None
        async with serving(manager) as base, contextlib.aclosing(manager.events()) as events:
            await connect(f"{base}/ws/lobby?user_id=ann")
            await take(events, 3)
            (connection,) = manager.get_user_connections("ann")
            manager.lifecycle.published(connection, "$stats", {"n": 0})
            manager.lifecycle.published(connection, "lobby", {"text": "hi"})
            await connect(f"{base}/ws/lobby?user_id=bob")
            expected = ["publish:ann:lobby"] if publishes else []
            assert await take(events, len(expected) + 2) == [
                *expected,
                "connect:bob:",
                "join:bob:lobby",
            ]


async def test_without_lifecycle_nothing_changes() -> None:
    """No settings: no lifecycle, and asking for events says how to turn them on."""
    manager = ConnectionManager()
    assert manager.lifecycle is None
    with pytest.raises(RuntimeError, match="lifecycle=LifecycleSettings"):
        manager.events()
    with pytest.raises(RuntimeError):
        manager.on_event(print)  # type: ignore[arg-type]


async def test_webhooks_get_the_same_events_as_the_application() -> None:
    """With webhook_url, every event is also delivered, signed, to the receiver, while the
    application reads its own copy: each group of readers sees every event."""
    from tests.webhook_receiver import Receiver

    receiver = Receiver(b"hook-secret")
    await receiver.start()
    settings = LifecycleSettings(
        debounce=0, webhook_url=receiver.url, webhook_secrets=("hook-secret",)
    )
    manager = ConnectionManager(lifecycle=settings)
    try:
        async with serving(manager) as base, contextlib.aclosing(manager.events()) as events:
            ann = await connect(f"{base}/ws/lobby?user_id=ann")
            assert await take(events, 3) == ["connect:ann:", "occupied::lobby", "join:ann:lobby"]
            await ann.close()
            assert await take(events, 3) == ["leave:ann:lobby", "vacated::lobby", "disconnect:ann:"]
            await receiver.wait_until(lambda: len(receiver.unique_ids()) == 6, seconds(5))
            assert [e.kind.value for e in receiver.events][-1] == "disconnect"
            assert manager.lifecycle is not None
            names = {name for _, name, _, _ in manager.lifecycle.samples()}
            assert "roomcast_webhook_deliveries" in names
    finally:
        await receiver.stop()


async def test_the_documented_example_works_as_written() -> None:
    """docs/fastapi.md's lifecycle example, run as written with a ``users`` of the test's:
    its callback hears the user come online and, at the app's shutdown, go offline."""
    section = FASTAPI_DOC[FASTAPI_DOC.index("## Lifecycle events in a FastAPI app") :]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]
    marks: list[tuple[str, object]] = []

    class Users:
        async def mark_online(self, user: str) -> None:
            marks.append(("online", user))

        async def mark_offline(self, user: str, code: int, reason: str) -> None:
            marks.append(("offline", user))

    namespace: dict[str, object] = {"users": Users()}
    exec(block, namespace)
    manager = namespace["manager"]
    assert isinstance(manager, ConnectionManager)
    app = namespace["app"]
    endpoint_app = make_app(manager)
    async with running_server(endpoint_app) as base:
        async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
            await connect(f"{base}/ws/lobby?user_id=ann")
            await eventually(lambda: marks == [("online", "ann")])
        assert marks == [("online", "ann"), ("offline", "ann")]


async def test_a_slow_consumer_departs_with_4008() -> None:
    """A client that stops reading is cut off by the fan-out; its disconnect says 4008."""
    from tests.integration.test_slow_consumer import stalled_client

    settings = LifecycleSettings(debounce=0)
    manager = ConnectionManager(send_buffer_limit=16 * 1024, close_timeout=1, lifecycle=settings)
    async with (
        running_server(make_app(manager), sndbuf=8192) as base,
        contextlib.aclosing(manager.events()) as events,
    ):
        stalled = await stalled_client(f"{base}/ws/lobby?user_id=slow")
        assert await take(events, 3) == ["connect:slow:", "occupied::lobby", "join:slow:lobby"]
        async with asyncio.timeout(seconds(10)):
            while manager.active_connections:  # until the fan-out cuts it off
                await manager.broadcast_to_room("lobby", b"x" * 4096, MessageType.BYTES)
                await asyncio.sleep(0.001)
            gone = [await anext(events) for _ in range(3)]
        assert (gone[2].kind, gone[2].code, gone[2].reason) == (
            Kind.DISCONNECT,
            CloseCode.SLOW_CONSUMER,
            "slow consumer",
        )
        stalled.transport.abort()  # it reads nothing, not even the server's reset
        async with asyncio.timeout(seconds(5)):
            await stalled.wait_closed()
        await manager.close_all()
