"""``roomcast serve``'s lifecycle events end to end: a real ``Server`` in the test's loop, real
websockets clients, and the real webhook receiver (``tests/webhook_receiver.py``), which
verifies every delivery's signature."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roomcast.events.schema import Kind, LifecycleEvent
from roomcast.server import Server, ServerConfig
from roomcast.testing import RedisServer, free_port
from tests.serve_process import RawClient
from tests.support import connect, eventually, recv
from tests.webhook_receiver import Receiver

SECRET = "s3cret"


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver(SECRET.encode())
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@contextlib.asynccontextmanager
async def running(receiver: Receiver, **options: Any) -> AsyncIterator[Server]:
    config = ServerConfig(
        port=0,
        webhook_url=receiver.url,
        webhook_secret=f"{SECRET},old",
        events_debounce=options.pop("events_debounce", 0.0),
        **options,
    )
    server = Server(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def url(server: Server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def kinds(receiver: Receiver, user: str | None = None) -> list[tuple[str, str | None]]:
    return [
        (event.kind.value, event.room)
        for event in receiver.events
        if user is None or event.user == user or (event.user is None and user == "")
    ]


def last(receiver: Receiver, kind: Kind) -> LifecycleEvent:
    return [event for event in receiver.events if event.kind is kind][-1]


async def test_connect_join_publish_leave_disconnect_arrive_signed() -> None:
    """A client's life arrives in order, each delivery signed with every key; the
    disconnect carries the client's own close code and reason."""
    async with receiving() as receiver, running(receiver) as server:
        client = await connect(url(server, "/ws/lobby?user_id=ann"))
        await client.send(json.dumps({"type": "publish", "room": "lobby", "data": {"t": 1}}))
        assert json.loads(await recv(client))["type"] == "ack"
        await client.send(json.dumps({"type": "leave", "room": "lobby", "event_id": "l"}))
        assert json.loads(await recv(client))["type"] == "ack"
        await client.close(code=4100, reason="bye now")
        await receiver.wait_until(lambda: any(e.kind is Kind.DISCONNECT for e in receiver.events))
        assert kinds(receiver) == [
            ("connect", None),
            ("occupied", "lobby"),
            ("join", "lobby"),
            ("publish", "lobby"),
            ("leave", "lobby"),
            ("vacated", "lobby"),
            ("disconnect", None),
        ]
        assert last(receiver, Kind.PUBLISH).data == {"t": 1}
        disconnect = last(receiver, Kind.DISCONNECT)
        assert (disconnect.code, disconnect.reason) == (4100, "bye now")
        assert receiver.rejected == []
        header = receiver.requests[0].headers["Roomcast-Signature"]
        assert header.count("v1=") == 2  # (the current key and the one being rotated out)


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (b"\x00binary", 1003, "binary frames are not supported"),
        ("x" * 2000, 1009, "message too big"),
    ],
)
async def test_a_close_by_the_server_says_its_code(
    frame: str | bytes, code: int, reason: str
) -> None:
    """A connection the server closes departs with the server's code and reason."""
    async with receiving() as receiver, running(receiver, max_message_size=1024) as server:
        client = await connect(url(server, "/ws?user_id=bob"))
        await client.send(frame)
        await receiver.wait_until(lambda: any(e.kind is Kind.DISCONNECT for e in receiver.events))
        disconnect = last(receiver, Kind.DISCONNECT)
        assert (disconnect.code, disconnect.reason) == (code, reason)


async def test_a_lost_socket_departs_as_1006() -> None:
    """A socket that goes without a close frame departs as 1006, "connection lost"."""
    async with receiving() as receiver, running(receiver) as server:
        client = await connect(url(server, "/ws?user_id=cy"))
        await eventually(lambda: server.hub.active_connections == 1)
        client.transport.abort()
        await receiver.wait_until(lambda: any(e.kind is Kind.DISCONNECT for e in receiver.events))
        disconnect = last(receiver, Kind.DISCONNECT)
        assert (disconnect.code, disconnect.reason) == (1006, "connection lost")


async def test_a_shutdown_delivers_the_departures_and_metrics_show_the_figures() -> None:
    """Stopping the server closes its clients with 1001 and delivers their disconnects
    (debounced or not) before it ends; /metrics has the dispatcher's figures, the latency as a
    real histogram and the failures labelled by kind."""
    async with receiving() as receiver:
        async with running(receiver, events_debounce=30.0) as server:
            client = await connect(url(server, "/ws/room?user_id=dee"))
            await receiver.wait_until(lambda: len(receiver.events) == 3)
            delivered = b"roomcast_events_delivered_total 3.0"
            await eventually(lambda: delivered in server.pages.get("/metrics")[1])
            families = {
                family.name: family
                for family in text_string_to_metric_families(
                    server.pages.get("/metrics")[1].decode()
                )
            }
            assert families["roomcast_webhook_latency_seconds"].type == "histogram"
            failures = families["roomcast_webhook_failures"]
            assert {s.labels["kind"] for s in failures.samples} == {
                "timeout",
                "connection",
                "status",
            }
            assert families["roomcast_events_backlog"].samples[0].value == 0
            assert "roomcast_lifecycle_waiting" in families
        with contextlib.suppress(Exception):
            await client.close()
        assert kinds(receiver)[-3:] == [
            ("leave", "room"),
            ("vacated", "room"),
            ("disconnect", None),
        ]
        assert last(receiver, Kind.DISCONNECT).code == 1001


async def test_events_off_change_nothing() -> None:
    """Without the options the server has no feed, its transports are the plain ones, and
    /metrics has no event figures."""
    server = Server(ServerConfig(port=0))
    await server.start()
    try:
        assert server.lifecycle.feed is None and server.session.on_publish is None
        assert server.lifecycle.transport.__name__ == "NativeTransport"
        assert b"roomcast_events" not in server.pages.get("/metrics")[1]
    finally:
        await server.stop()


async def test_with_redis_the_events_go_through_the_stream(
    shared_redis: RedisServer, prefix: str
) -> None:
    """With --redis-url the events are counted cluster-wide and delivered from the stream."""
    async with (
        receiving() as receiver,
        running(receiver, redis_url=shared_redis.url, channel_prefix=prefix) as server,
    ):
        client = await connect(url(server, "/ws/lobby?user_id=eve"))
        await receiver.wait_until(lambda: len(receiver.events) == 3)
        await client.send(b"binary")  # (closed by the server with CloseCode.UNSUPPORTED_DATA)
        await receiver.wait_until(lambda: len(receiver.events) == 6)
        disconnect = last(receiver, Kind.DISCONNECT)
        assert (disconnect.code, disconnect.reason) == (1003, "binary frames are not supported")
        assert kinds(receiver) == [
            ("connect", None),
            ("occupied", "lobby"),
            ("join", "lobby"),
            ("leave", "lobby"),
            ("vacated", "lobby"),
            ("disconnect", None),
        ]
        assert {event.instance for event in receiver.events} == {
            server.hub.broker.instance_id.hex()  # type: ignore[union-attr]
        }


async def test_the_redis_backlog_moves_while_the_receiver_is_away(
    shared_redis: RedisServer, prefix: str
) -> None:
    """With Redis, /metrics' backlog rises while the dispatcher retries one batch (it is read
    from the stream every 2 s, not only at claims) and returns to 0 once delivered."""
    async with receiving() as receiver:
        options = {"redis_url": shared_redis.url, "channel_prefix": prefix}
        async with running(receiver, **options) as server:

            def backlog() -> float:
                for line in server.pages.get("/metrics")[1].decode().splitlines():
                    if line.startswith("roomcast_events_backlog "):
                        return float(line.split()[1])
                raise AssertionError("no backlog")

            await receiver.stop()
            for n in range(5):
                client = await connect(url(server, f"/ws/r{n}?user_id=v{n}"))
                await client.close()
            await eventually(lambda: backlog() >= 20, timeout_units=10)
            await receiver.start()
            await eventually(lambda: backlog() == 0, timeout_units=20)
        assert len(receiver.unique_ids()) == 30


async def test_a_client_dropped_by_the_heartbeat_departs_with_4002() -> None:
    """A client that answers no ping is dropped without a close frame; its disconnect says
    why: 4002, "no pong"."""
    async with (
        receiving() as receiver,
        running(receiver, ping_interval=0.2, pong_timeout=0.2) as server,
    ):
        silent = await RawClient.connect(server.port, "/ws?user_id=mute")
        await receiver.wait_until(
            lambda: any(e.kind is Kind.DISCONNECT for e in receiver.events), within=10
        )
        disconnect = last(receiver, Kind.DISCONNECT)
        assert (disconnect.code, disconnect.reason) == (4002, "no pong")
        silent.abort()


async def test_a_server_starts_with_events_while_redis_is_away() -> None:
    """Redis unreachable at start: the server serves anyway (as its hub does), the store
    retrying in the background, and stops within its bounds."""
    config = ServerConfig(
        port=0, redis_url=f"redis://127.0.0.1:{free_port()}", lifecycle_events=True
    )
    server = Server(config)
    async with asyncio.timeout(30):
        await server.start()
        client = await connect(url(server, "/ws?user_id=solo"))
        await client.close()
        await server.stop()
