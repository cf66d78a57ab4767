"""Room history end to end: real ``roomcast serve`` processes, one throwaway Redis, real clients.

Every room_message of a room with history carries its position; a client that comes back with
``since`` gets exactly what it missed, in order, before the ack, or is told it cannot
(``recovered: false``), never a silent gap.  Faults are real: sockets aborted, Redis's pub/sub
connections killed, Redis restarted without persistence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from roomcast.testing import RedisServer, redis_server
from tests.serve_process import metric, start_serve, stop_serve
from tests.support import connect, recv, seconds

Message = dict[str, Any]

_ids = itertools.count()


class Server:
    """One ``roomcast serve`` process: its WebSocket port and its API client."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, http: httpx.AsyncClient):
        self.process = process
        self.port = port
        self.http = http

    async def client(self, user: str) -> ClientConnection:
        return await connect(f"ws://127.0.0.1:{self.port}/ws?user_id={user}")

    async def ready(self) -> bool:
        return await metric(self.http, "roomcast_broker_ready") == 1

    async def reconnected(self, times: int) -> bool:
        return await self.ready() and await self.counter("reconnects") >= times

    async def counter(self, name: str) -> float:
        return await metric(self.http, f"roomcast_broker_{name}_total")


@contextlib.asynccontextmanager
async def servers(count: int, *flags: str) -> AsyncIterator[list[Server]]:
    """``count`` serve processes with ``flags`` (no rate limit: tests publish in bursts)."""
    started: list[Server] = []
    try:
        for _ in range(count):
            started.append(Server(*await start_serve("--rate-limit", "0", *flags)))
        yield started
    finally:
        for server in started:
            await stop_serve(server.process, server.http)


def on_redis(redis: RedisServer, prefix: str) -> tuple[str, ...]:
    return ("--redis-url", redis.url, "--channel-prefix", prefix)


async def receive(client: ClientConnection, timeout_units: float = 10) -> Message:
    message = json.loads(await recv(client, timeout_units))
    assert isinstance(message, dict)
    return message


async def send(client: ClientConnection, **message: Any) -> str:
    """Send a command with a fresh event id; returns the id."""
    event_id = f"e{next(_ids)}"
    await client.send(json.dumps({**message, "event_id": event_id}))
    return event_id


async def until_ack(client: ClientConnection, event_id: str) -> tuple[list[Message], Message]:
    """What ``client`` receives up to the ack of ``event_id``, and that ack."""
    before: list[Message] = []
    while True:
        message = await receive(client)
        if message.get("type") == "ack" and message.get("ack_event_id") == event_id:
            return before, message
        assert message.get("type") == "room_message", json.dumps(message)
        before.append(message)


async def join(
    client: ClientConnection, room: str, since: Message | None = None
) -> tuple[list[Message], Message]:
    """Join ``room`` (recovering from ``since``): the replay, and the ack."""
    extra = {} if since is None else {"since": since}
    return await until_ack(client, await send(client, type="join", room=room, **extra))


async def publish(client: ClientConnection, room: str, n: int) -> Message:
    """Publish ``{"n": n}`` and return the ack (the publisher's own room's messages, if any,
    must not come back: ``until_ack`` would return them)."""
    received, ack = await until_ack(
        client, await send(client, type="publish", room=room, data={"n": n})
    )
    assert received == [], "the publisher got room messages"
    return ack


async def nothing_but_pong(client: ClientConnection) -> None:
    """The next thing ``client`` receives is the answer to a ping: nothing else was queued."""
    event_id = await send(client, type="ping")
    answer = await receive(client)
    assert answer == {**answer, "type": "pong", "ping_event_id": event_id}, answer


async def offsets_until(client: ClientConnection, last: int) -> list[Message]:
    """Room messages up to (and including) offset ``last``; fails on a later one."""
    messages: list[Message] = []
    while not messages or messages[-1]["offset"] < last:
        message = await receive(client)
        assert message["type"] == "room_message", message
        messages.append(message)
    return messages


def offsets(messages: list[Message]) -> list[int]:
    return [message["offset"] for message in messages]


def position(message: Message) -> Message:
    return {"epoch": message["epoch"], "offset": message["offset"]}


async def eventually_async(condition: Any, timeout_units: float = 20, what: str = "") -> None:
    """Poll the awaitable ``condition()`` until it is true; fail after ``timeout_units``."""
    try:
        async with asyncio.timeout(seconds(timeout_units)):
            while not await condition():  # noqa: ASYNC110 - another process's state
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"condition not met in time: {what}") from None


async def test_positions_reach_members_on_every_process_in_order(
    shared_redis: RedisServer, prefix: str
) -> None:
    """A publish gets offsets 1, 2, 3 and one epoch at members on both processes; the
    publisher's ack carries the position and it does not get its own message."""
    async with servers(2, *on_redis(shared_redis, prefix)) as (a, b):
        ann, cid, bob = await a.client("ann"), await a.client("cid"), await b.client("bob")
        for client in (ann, cid, bob):
            replay, ack = await join(client, "lobby")
            assert replay == [] and ack["position"]["offset"] == 0
        acks = [await publish(ann, "lobby", n) for n in range(3)]
        assert [ack["position"]["offset"] for ack in acks] == [1, 2, 3]
        epoch = acks[0]["position"]["epoch"]
        assert isinstance(epoch, str) and epoch
        assert {ack["position"]["epoch"] for ack in acks} == {epoch}
        for member in (cid, bob):
            messages = [await receive(member) for _ in range(3)]
            assert offsets(messages) == [1, 2, 3]
            assert {message["epoch"] for message in messages} == {epoch}
            assert [message["data"] for message in messages] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert {message["sender"] for message in messages} == {"ann"}
            await nothing_but_pong(member)
        await nothing_but_pong(ann)


async def test_a_client_cut_on_one_process_recovers_on_another(
    shared_redis: RedisServer, prefix: str
) -> None:
    """A client whose socket dies on A rejoins on B with ``since``: exactly the missed
    messages, in order, before an ack saying so; then live messages from the next offset."""
    async with servers(2, *on_redis(shared_redis, prefix)) as (a, b):
        ann, bob = await a.client("ann"), await b.client("bob")
        await join(ann, "lobby")
        await join(bob, "lobby")
        await publish(bob, "lobby", 0)
        last = position(await receive(ann))
        assert last["offset"] == 1
        ann.transport.abort()  # no close frame
        missed = 5
        for n in range(1, missed + 1):
            await publish(bob, "lobby", n)
        ann = await b.client("ann")
        replay, ack = await join(ann, "lobby", since=last)
        assert offsets(replay) == [2, 3, 4, 5, 6]
        assert [message["data"] for message in replay] == [{"n": n} for n in range(1, 6)]
        assert {message["epoch"] for message in replay} == {last["epoch"]}
        assert ack["recovered"] is True and ack["replayed"] == missed
        assert ack["position"] == {"epoch": last["epoch"], "offset": 6}
        assert (await publish(bob, "lobby", 6))["position"]["offset"] == 7
        live = await receive(ann)
        assert position(live) == {"epoch": last["epoch"], "offset": 7}
        await nothing_but_pong(ann)


async def test_publishes_racing_a_rejoin_arrive_exactly_once_in_order(
    shared_redis: RedisServer, prefix: str
) -> None:
    """Clients rejoining with ``since`` while another publishes without pause end with
    every offset exactly once, in order: the replay before the ack, live after it."""
    async with servers(2, *on_redis(shared_redis, prefix)) as (a, b):
        publisher = await b.client("pub")
        await join(publisher, "lobby")
        cut = [await a.client("ann"), await b.client("bob")]
        for client in cut:
            await join(client, "lobby")
        first = await publish(publisher, "lobby", 0)
        since = first["position"]
        for client in cut:
            assert position(await receive(client)) == since
            client.transport.abort()

        total = 400
        top: list[int] = []
        under_way = asyncio.Event()

        async def publish_continuously() -> None:
            # A window of unacknowledged publishes keeps the stream going during the joins.
            pending: list[str] = []
            for n in range(1, total + 1):
                pending.append(await send(publisher, type="publish", room="lobby", data={"n": n}))
                if len(pending) == 20:
                    for event_id in pending:
                        _, ack = await until_ack(publisher, event_id)
                        top.append(ack["position"]["offset"])
                    under_way.set()
                    pending.clear()
            for event_id in pending:
                _, ack = await until_ack(publisher, event_id)
                top.append(ack["position"]["offset"])

        async def rejoin(server: Server, user: str) -> list[Message]:
            await under_way.wait()  # (some of the stream has gone by)
            client = await server.client(user)
            replay, ack = await join(client, "lobby", since=since)
            assert ack["recovered"] is True and ack["replayed"] == len(replay)
            assert offsets(replay) == list(range(2, ack["position"]["offset"] + 1))
            live = await offsets_until(client, total + 1)
            assert all(m["offset"] > ack["position"]["offset"] for m in live)
            assert replay and live, "the rejoin did not happen while the stream went on"
            return replay + live

        async with asyncio.timeout(seconds(60)):
            _, ann_got, bob_got = await asyncio.gather(
                publish_continuously(), rejoin(a, "ann"), rejoin(b, "bob")
            )
        assert top == list(range(2, total + 2))
        for got in (ann_got, bob_got):
            assert offsets(got) == list(range(2, total + 2))
            assert [m["data"]["n"] for m in got] == list(range(1, total + 1))
            assert {m["epoch"] for m in got} == {since["epoch"]}


async def test_killed_pubsub_connections_are_repaired_from_the_history(
    own_redis: RedisServer, prefix: str
) -> None:
    """``CLIENT KILL TYPE pubsub`` while another process publishes: every member still gets
    every offset once, in order; the lost messages are counted as repaired, none as missed.
    A publish refused with 1013 reached nobody."""
    async with servers(3, *on_redis(own_redis, prefix)) as (a, b, c):
        members = [await a.client("ann"), await b.client("bob"), await c.client("cid")]
        for member in members:
            await join(member, "lobby")
        publisher = await c.client("pub")
        await join(publisher, "lobby")

        sent = 0
        stored: dict[int, int] = {}  # n -> offset
        refused: set[int] = set()
        stop = asyncio.Event()

        async def publish_continuously() -> None:
            nonlocal sent
            events: dict[str, int] = {}
            while not stop.is_set() or events:
                while len(events) < 10 and not stop.is_set():
                    sent += 1
                    data = {"n": sent}
                    events[await send(publisher, type="publish", room="lobby", data=data)] = sent
                answer = await receive(publisher)
                assert answer["type"] in ("ack", "error"), json.dumps(answer)
                if answer["type"] == "ack":
                    stored[events.pop(answer["ack_event_id"])] = answer["position"]["offset"]
                else:
                    assert answer["code"] == 1013, json.dumps(answer)
                    refused.add(events.pop(answer["ref_event_id"]))

        async def kill_until_repaired() -> None:
            try:
                for kills in range(1, 21):  # until a publish fell into a subscriber's hole
                    await eventually_async(lambda: _all(servers_, "ready"), what="ready")
                    killed = await asyncio.to_thread(
                        own_redis.cli, "CLIENT", "KILL", "TYPE", "pubsub"
                    )
                    assert int(killed) >= 3
                    await eventually_async(
                        lambda kills=kills: _all(servers_, "reconnected", kills), what="back"
                    )
                    repaired = [await server.counter("repaired") for server in servers_]
                    if sum(repaired) > 0:
                        return
                pytest.fail("no publish fell between a kill and a resubscription")
            finally:
                stop.set()

        servers_ = (a, b, c)
        async with asyncio.timeout(seconds(90)):
            await asyncio.gather(publish_continuously(), kill_until_repaired())
        # One more, after everything settled: its offset is the room's last.
        top = (await publish(publisher, "lobby", sent + 1))["position"]["offset"]
        stored[sent + 1] = top

        for member in members:
            got = await offsets_until(member, top)
            assert offsets(got) == list(range(1, top + 1))
            by_n = {m["data"]["n"]: m["offset"] for m in got}
            delivered_refused = refused & set(by_n)
            assert not delivered_refused, f"refused with 1013, delivered: {delivered_refused}"
            assert by_n == stored
            await nothing_but_pong(member)
        for server in (a, b, c):
            assert await server.counter("reconnects") >= 1
            assert await server.counter("missed") == 0


async def test_a_redis_restart_without_persistence_is_never_a_silent_gap(
    own_redis: RedisServer, prefix: str
) -> None:
    """After Redis lost everything, a rejoin with the old ``since`` gets recovered false, and
    the room goes on in a new epoch, for members who stayed too."""
    async with servers(2, *on_redis(own_redis, prefix)) as (a, b):
        ann, stayer, bob = await a.client("ann"), await a.client("cid"), await b.client("bob")
        for client in (ann, stayer, bob):
            await join(client, "lobby")
        for n in range(3):
            await publish(bob, "lobby", n)
        last = position((await offsets_until(ann, 3))[-1])
        await offsets_until(stayer, 3)
        ann.transport.abort()

        own_redis.kill()
        own_redis.start()  # same port, empty
        for server in (a, b):
            await eventually_async(
                lambda server=server: _ready_after_reconnect(server), what="broker back"
            )

        ann = await a.client("ann")
        replay, ack = await join(ann, "lobby", since=last)
        assert replay == []
        assert ack["recovered"] is False and ack["replayed"] == 0
        assert ack["position"] != last  # where the room is now, not where it was

        published = await publish(bob, "lobby", 3)
        epoch = published["position"]["epoch"]
        assert epoch != last["epoch"]
        assert published["position"]["offset"] == 1
        for member in (ann, stayer):
            message = await receive(member)
            assert position(message) == {"epoch": epoch, "offset": 1}
            assert message["data"] == {"n": 3}
            await nothing_but_pong(member)


async def test_with_an_append_only_file_a_redis_restart_loses_nothing(prefix: str) -> None:
    """Redis killed (SIGKILL) and restarted with its AOF (fsync always): the histories come
    back, a client that missed messages meanwhile recovers them, the epoch is unchanged."""
    with redis_server(extra=("--appendonly", "yes", "--appendfsync", "always")) as redis:
        async with servers(2, *on_redis(redis, prefix)) as (a, b):
            ann, bob = await a.client("ann"), await b.client("bob")
            for client in (ann, bob):
                await join(client, "lobby")
            for n in range(3):
                await publish(bob, "lobby", n)
            last = position((await offsets_until(ann, 3))[-1])
            ann.transport.abort()
            await publish(bob, "lobby", 3)  # missed by ann

            redis.kill()
            redis.start()  # same port, same directory: the AOF is replayed
            for server in (a, b):
                await eventually_async(
                    lambda server=server: _ready_after_reconnect(server), what="broker back"
                )
            await publish(bob, "lobby", 4)  # also missed
            ann = await b.client("ann")
            replay, ack = await join(ann, "lobby", since=last)
            assert ack["recovered"] is True and ack["replayed"] == 2
            assert [(m["offset"], m["data"]["n"]) for m in replay] == [(4, 3), (5, 4)]
            assert {m["epoch"] for m in replay} == {last["epoch"]}


async def _all(servers: tuple[Server, ...], check: str, *args: int) -> bool:
    return all([await getattr(server, check)(*args) for server in servers])


async def _ready_after_reconnect(server: Server) -> bool:
    ready = await metric(server.http, "roomcast_broker_ready")
    return ready == 1 and await server.counter("reconnects") >= 1


async def test_memory_history_recovers_within_its_size_and_says_so_beyond() -> None:
    """One process, no Redis: a rejoin within ``--history-size`` replays what was missed;
    one from before the oldest message kept gets recovered false and nothing."""
    async with servers(1, "--history-size", "5") as (server,):
        ann, bob = await server.client("ann"), await server.client("bob")
        await join(ann, "lobby")
        await join(bob, "lobby")
        for n in range(3):
            await publish(bob, "lobby", n)
        last = position((await offsets_until(ann, 3))[-1])
        await send(ann, type="leave", room="lobby")
        assert (await receive(ann))["type"] == "ack"
        for n in range(3, 5):
            await publish(bob, "lobby", n)

        replay, ack = await join(ann, "lobby", since=last)
        assert offsets(replay) == [4, 5] and [m["data"] for m in replay] == [{"n": 3}, {"n": 4}]
        assert ack["recovered"] is True and ack["replayed"] == 2
        assert ack["position"] == {"epoch": last["epoch"], "offset": 5}
        assert (await publish(bob, "lobby", 5))["position"]["offset"] == 6
        assert (await receive(ann))["offset"] == 6

        for n in range(6, 12):
            await publish(bob, "lobby", n)  # offsets 7..12: the history keeps 8..12
        edge = await server.client("dan")
        replay, ack = await join(edge, "lobby", since={"epoch": last["epoch"], "offset": 7})
        assert offsets(replay) == [8, 9, 10, 11, 12] and ack["recovered"] is True
        late = await server.client("eve")
        replay, ack = await join(late, "lobby", since={"epoch": last["epoch"], "offset": 6})
        assert replay == []
        assert ack["recovered"] is False and ack["replayed"] == 0
        assert ack["position"] == {"epoch": last["epoch"], "offset": 12}
        await publish(bob, "lobby", 12)
        for client in (edge, late):
            assert (await receive(client))["offset"] == 13


@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_a_replay_larger_than_the_send_buffer_goes_out_in_parts(
    where: str, request: pytest.FixtureRequest, prefix: str
) -> None:
    """What a client missed may be more than its send buffer holds (a 4008 left it behind
    by at least that much): the replay goes out in parts as the client reads, the client is
    not closed as a slow consumer, and gets every message once, in order."""
    flags = ["--send-buffer-limit", "65536", "--history-size", "400"]
    if where == "redis":
        flags += on_redis(request.getfixturevalue("shared_redis"), prefix)
    async with servers(1, *flags) as (server,):
        writer, reader = await server.client("writer"), await server.client("reader")
        await join(writer, "big")
        _, ack = await join(reader, "big")
        start = ack["position"]
        await reader.close()
        text = "x" * 1000
        acked = 0
        for n in range(300):  # ~300 KB missed: more than four send buffers
            await send(writer, type="publish", room="big", data={"n": n, "t": text})
            if n % 20 == 19:  # (a few acks at a time: the writer reads its own)
                while acked <= n:
                    assert (await receive(writer))["type"] == "ack"
                    acked += 1
        back = await server.client("reader")
        replay, ack = await join(back, "big", since=start)
        assert ack["recovered"] is True and ack["replayed"] == 300
        assert [m["data"]["n"] for m in replay] == list(range(300))
        assert [m["offset"] for m in replay] == list(
            range(start["offset"] + 1, start["offset"] + 301)
        )
        await nothing_but_pong(back)
        assert await metric(server.http, "roomcast_slow_consumer_closes_total") == 0


async def test_the_api_port_reads_a_rooms_history() -> None:
    """GET /api/history with the key: the latest messages, or those after a position (with
    ``recovered``); a room's page ends where its last message is; a bad query is a 400."""
    async with servers(1) as (server,):
        writer = await server.client("writer")
        await join(writer, "news")
        for n in range(3):
            await publish(writer, "news", n)
        headers = {"X-API-Key": "k"}
        latest = (await server.http.get("/api/history?room=news&limit=2", headers=headers)).json()
        assert [m["data"]["n"] for m in latest["messages"]] == [1, 2]
        epoch = latest["position"]["epoch"]
        assert latest["position"] == {"epoch": epoch, "offset": 3} and "recovered" not in latest
        since = await server.http.get(
            f"/api/history?room=news&epoch={epoch}&offset=1", headers=headers
        )
        page = since.json()
        assert page["recovered"] is True
        assert [(m["offset"], m["data"]["n"]) for m in page["messages"]] == [(2, 1), (3, 2)]
        gone = await server.http.get("/api/history?room=news&epoch=other&offset=1", headers=headers)
        assert gone.json()["recovered"] is False and gone.json()["messages"] == []
        bad = await server.http.get("/api/history?room=news&limit=x", headers=headers)
        assert bad.status_code == 400
