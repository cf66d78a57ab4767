"""Presence, the ``$stats`` feed and the static files of ``roomcast serve``, with real servers
and real clients, on the in-memory hub and across two instances sharing a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from roomcast.frame import encode
from roomcast.presence.feed import PresenceFeed
from roomcast.presence.redis import RedisRoster
from roomcast.presence.roster import RoomRoster
from roomcast.protocol import RoomMessage
from roomcast.server import Server, ServerConfig
from tests.integration.test_server import http_get
from tests.redis_support import RedisServer
from tests.support import connect, recv, seconds


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[Server]:
    server = Server(ServerConfig(port=0, **options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def ws_url(server: Server, query: str) -> str:
    return f"ws://127.0.0.1:{server.port}/ws?{query}"


class Peer:
    """A client that keeps what it received, by type, so tests can wait for one kind."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self._next = 0

    @classmethod
    async def open(cls, server: Server, user: str) -> Peer:
        return cls(await connect(ws_url(server, f"user_id={user}")))

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def next(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next message of ``kind`` (matching ``fields``) not taken yet."""
        while True:
            while self._next < len(self.seen):
                message = self.seen[self._next]
                self._next += 1
                if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
                    return message
            raw = await recv(self.ws, timeout_units=10)
            self.seen.append(json.loads(raw))

    async def call(self, **message: Any) -> dict[str, Any]:
        """Send a command; its ack or error."""
        event_id = f"e{len(self.seen)}-{id(message)}"
        await self.send(**message, event_id=event_id)
        while True:
            raw = await recv(self.ws, timeout_units=10)
            answer = json.loads(raw)
            self.seen.append(answer)
            if event_id in (
                answer.get(k) for k in ("ack_event_id", "ref_event_id", "ping_event_id")
            ):
                return answer  # type: ignore[no-any-return]


def users(members: list[dict[str, Any]]) -> list[str]:
    return sorted(member["user_id"] for member in members)


async def test_presence_snapshot_and_changes_reach_watchers() -> None:
    async with running() as server:
        ann, bob = await Peer.open(server, "ann"), await Peer.open(server, "bob")
        assert (await ann.call(type="join", room="lobby"))["type"] == "ack"
        assert (await ann.call(type="join", room="$presence:lobby"))["type"] == "ack"
        snapshot = await ann.next("presence", room="lobby")
        assert users(snapshot["members"]) == ["ann"]

        await bob.call(type="join", room="lobby")
        joined = (await ann.next("presence", room="lobby"))["joined"]
        assert joined["user_id"] == "bob"
        await bob.call(type="join", room="$presence:lobby")
        assert users((await bob.next("presence", room="lobby"))["members"]) == ["ann", "bob"]

        await bob.call(type="leave", room="lobby")
        assert (await ann.next("presence", room="lobby"))["left"] == joined
        # Leaving the room ends the watch: bob hears nothing more of lobby.
        await bob.call(type="join", room="lobby")
        assert (await ann.next("presence", room="lobby"))["joined"] == joined
        await bob.call(type="ping")  # anything sent to bob before the pong has arrived
        assert not [m for m in bob.seen if m["type"] == "presence" and m["joined"]]
        await bob.ws.close()
        assert (await ann.next("presence", room="lobby"))["left"] == joined
        await ann.ws.close()


async def test_reserved_rooms_are_the_servers() -> None:
    async with running() as server:
        eve = await Peer.open(server, "eve")
        refused = await eve.call(type="join", room="$presence:lobby")
        assert refused["type"] == "error" and "join 'lobby' first" in refused["error"]
        for room in ("$anything", "$presence"):
            assert (await eve.call(type="join", room=room))["code"] == 1008
        assert (await eve.call(type="join", room="$stats"))["type"] == "ack"
        refused = await eve.call(type="publish", room="$stats", data=1)
        assert refused["type"] == "error" and "reserved" in refused["error"]
        with pytest.raises(InvalidStatus) as caught:
            await connect(f"ws://127.0.0.1:{server.port}/ws/$stats?user_id=x")
        assert caught.value.response.status_code == 400
        await eve.ws.close()
    async with running(presence=False, stats_interval=0) as server:
        eve = await Peer.open(server, "eve")
        await eve.call(type="join", room="lobby")
        for room in ("$presence:lobby", "$stats"):
            assert "reserved" in (await eve.call(type="join", room=room))["error"]
        await eve.ws.close()


async def test_stats_feed_counts_totals_every_interval() -> None:
    async with running(stats_interval=0.2) as server:
        watcher = await Peer.open(server, "w")
        await watcher.call(type="join", room="$stats")
        first = await watcher.next("stats")
        assert first["instance"] == server.instance_id
        assert first["data"]["connections"] == 1
        for _ in range(5):
            await watcher.call(type="ping")
        await watcher.call(type="join", room="lobby")
        later = await watcher.next("stats")
        while later["data"]["messages_in"] < first["data"]["messages_in"] + 6:
            later = await watcher.next("stats")
        assert later["data"]["rooms"] == 1  # $stats is not counted
        assert later["data"]["uptime"] > first["data"]["uptime"]
        assert later["data"]["messages_out"] > first["data"]["messages_out"]
        await watcher.ws.close()


async def test_static_files() -> None:
    async with running() as server:
        status, body = await http_get(server.port, "/")
        assert status == 200 and b'<script type="module" src="/demo.js">' in body
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
        writer.close()
        assert "content-security-policy: default-src 'self'" in head
        assert "x-content-type-options: nosniff" in head
        status, body = await http_get(server.port, "/client.js")
        assert status == 200 and b"export class RoomcastClient" in body
        for path in ("/demo.js", "/demo.css"):
            assert (await http_get(server.port, path))[0] == 200
    async with running(demo=False) as server:
        assert (await http_get(server.port, "/"))[0] == 404
        assert (await http_get(server.port, "/client.js"))[0] == 200


@contextlib.asynccontextmanager
async def two_instances(redis: RedisServer, prefix: str) -> AsyncIterator[tuple[Server, Server]]:
    options: dict[str, Any] = {
        "redis_url": redis.url,
        "channel_prefix": prefix,
        "stats_interval": 0.2,
        "presence": True,  # off by default with Redis
    }
    async with running(**options) as one, running(**options) as two:
        yield one, two


async def test_presence_and_stats_span_instances(shared_redis: RedisServer, prefix: str) -> None:
    async with two_instances(shared_redis, prefix) as (one, two):
        ann, bob = await Peer.open(one, "ann"), await Peer.open(two, "bob")
        await bob.call(type="join", room="lobby")
        await ann.call(type="join", room="lobby")

        # Each instance writes to the registry in its own order: ask again until bob is in.
        async with asyncio.timeout(seconds(10)):
            while True:
                await ann.call(type="join", room="$presence:lobby")
                snapshot = await ann.next("presence", room="lobby", joined=None, left=None)
                if users(snapshot["members"]) == ["ann", "bob"]:
                    break
                await asyncio.sleep(0.05)
        await bob.ws.close()
        left = await ann.next("presence", room="lobby", joined=None, members=None)
        assert left["left"]["user_id"] == "bob"

        await ann.call(type="join", room="$stats")
        heard: set[str] = set()
        while len(heard) < 2:
            heard.add((await ann.next("stats"))["instance"])
        assert heard == {one.instance_id, two.instance_id}

        # A dead instance's members, purged by a survivor, are announced as gone.
        assert one.presence is not None
        one.presence.purged("lobby", [("c0ffee", "zed")])
        gone = await ann.next("presence", room="lobby", joined=None, members=None)
        assert gone["left"] == {"connection_id": "c0ffee", "user_id": "zed"}
        await ann.ws.close()


async def test_presence_says_so_when_redis_is_gone(own_redis: RedisServer, prefix: str) -> None:
    async with running(redis_url=own_redis.url, channel_prefix=prefix, presence=True) as server:
        ann = await Peer.open(server, "ann")
        await ann.call(type="join", room="lobby")
        own_redis.kill()
        assert (await ann.call(type="join", room="$presence:lobby"))["type"] == "ack"
        error = await ann.next("error")
        assert error["code"] == 1013 and "unavailable" in error["error"]
        # The hub itself goes on: the client is still served.
        assert (await ann.call(type="ping"))["type"] == "pong"
        assert server.presence is not None
        assert (
            isinstance(server.presence.roster, RedisRoster) and server.presence.roster.failed >= 1
        )
        await ann.ws.close()


async def test_a_full_queue_drops_and_redis_is_rewritten_from_memory(
    own_redis: RedisServer, prefix: str
) -> None:
    """Redis frozen: the writer waits, the (tiny) queue fills and drops; once Redis is back,
    the next refresh rewrites the instance's roster from memory, so nothing is missing."""
    server = Server(ServerConfig(port=0, redis_url=own_redis.url, channel_prefix=prefix))
    client = redis.asyncio.Redis.from_url(own_redis.url, socket_timeout=1.0)
    roster = RoomRoster(
        client,
        server.instance_id,
        prefix=prefix,
        instance_ttl=3.0,
        refresh_interval=0.3,
    )
    queued = RedisRoster(roster, server.events, queue_limit=2)
    server.presence = PresenceFeed(server.hub, server.events, queued)
    server.hub.observe(server.presence)
    await server.start()
    try:
        ann = await Peer.open(server, "ann")
        own_redis.freeze()
        for n in range(20):
            await ann.call(type="join", room=f"r{n}")
        assert queued.dropped > 0
        watcher = await Peer.open(server, "w")
        await watcher.call(type="join", room="r0")
        await watcher.call(type="join", room="$presence:r0")  # queue full: told, not left waiting
        assert "unavailable (busy)" in (await watcher.next("error"))["error"]
        own_redis.thaw()

        async def everywhere() -> bool:
            rooms = [await roster.members(f"r{n}") for n in range(20)]
            return all("ann" in [user for _, user in members] for members in rooms)

        async with asyncio.timeout(seconds(10)):
            while not await everywhere():  # noqa: ASYNC110 - polls Redis, nobody signals
                await asyncio.sleep(0.1)
        assert [user for _, user in await roster.members("r0")] == ["ann", "w"]
        await ann.ws.close()
        await watcher.ws.close()
    finally:
        await server.stop()
        await client.aclose()


async def test_a_slow_consumer_closed_by_the_manager_is_announced_as_gone() -> None:
    """The manager drops a slow consumer itself (4008) before its socket reports the close:
    its rooms' watchers still hear it left."""
    async with running(send_buffer_limit=64 * 1024) as server:
        ann, bob = await Peer.open(server, "ann"), await Peer.open(server, "bob")
        await ann.call(type="join", room="lobby")
        await bob.call(type="join", room="lobby")
        await ann.call(type="join", room="$presence:lobby")
        await ann.next("presence", room="lobby")  # the snapshot
        (connection,) = server.hub.get_user_connections("bob")
        frame = encode(RoomMessage(room="lobby", data="x" * 60_000))
        for _ in range(2000):  # bob reads nothing: his buffers fill, then he is cut off
            if server.hub.stats.slow_consumer_closes:
                break
            server.hub.deliver_to(connection, frame)
            await asyncio.sleep(0)
        assert server.hub.stats.slow_consumer_closes == 1
        left = await ann.next("presence", room="lobby", joined=None, members=None)
        assert left["left"]["user_id"] == "bob"
        await ann.ws.close()
        bob.ws.transport.abort()  # its reader is stalled on a full queue: no close handshake


async def test_reserved_rooms_have_no_presence() -> None:
    async with running() as server:
        eve = await Peer.open(server, "eve")
        await eve.call(type="join", room="$stats")
        refused = await eve.call(type="join", room="$presence:$stats")
        assert refused["code"] == 1008 and "not served" in refused["error"]
        await eve.ws.close()


async def test_a_connection_storm_is_written_in_batches(
    shared_redis: RedisServer, prefix: str
) -> None:
    """300 clients connect and join at once: every one is in the cluster-wide snapshot, and
    the registry took far fewer round trips than changes."""
    async with running(redis_url=shared_redis.url, channel_prefix=prefix, presence=True) as server:
        assert server.presence is not None
        feed = server.presence.roster
        assert isinstance(feed, RedisRoster)
        crowd = await asyncio.gather(*(Peer.open(server, f"u{n}") for n in range(300)))
        for peer in crowd:
            await peer.send(type="join", room="big")
        watcher = await Peer.open(server, "watcher")
        await watcher.call(type="join", room="big")
        await watcher.call(type="join", room="$presence:big")
        snapshot = await watcher.next("presence", room="big", joined=None, left=None)
        assert len(snapshot["members"]) == 301
        assert feed.written >= 301 and feed.round_trips < feed.written  # some were batched
        await watcher.ws.close()  # first: it reads nothing more, and 300 "left" would queue up
        for peer in crowd:
            await peer.ws.close()


async def test_presence_is_off_by_default_with_redis(
    shared_redis: RedisServer, prefix: str
) -> None:
    async with running(redis_url=shared_redis.url, channel_prefix=prefix) as server:
        assert server.presence is None
        ann = await Peer.open(server, "ann")
        await ann.call(type="join", room="lobby")
        refused = await ann.call(type="join", room="$presence:lobby")
        assert refused["code"] == 1008 and "reserved" in refused["error"]
        assert (await ann.call(type="join", room="$stats"))["type"] == "ack"
        await ann.ws.close()


async def test_repeated_snapshot_requests_are_coalesced() -> None:
    """A client that re-joins ``$presence:R`` 100 times in a burst gets one snapshot at once
    and one more at the end of the interval (the latest members), not 100; every join is
    still acknowledged."""
    from roomcast.presence.feed import SNAPSHOT_INTERVAL

    async with running() as server:
        watcher = await Peer.open(server, "watcher")
        others = [await Peer.open(server, f"m{n}") for n in range(20)]
        for peer in (watcher, *others):
            await peer.call(type="join", room="big")
        for _ in range(100):
            await watcher.send(type="join", room="$presence:big")
        first = await watcher.next("presence", room="big")
        assert len(first["members"]) == 21
        late = await Peer.open(server, "late")
        await late.call(type="join", room="big")
        assert (await watcher.next("presence", room="big"))["joined"]["user_id"] == "late"
        second = await watcher.next("presence", room="big")
        assert len(second["members"]) == 22  # sent after the interval: includes "late"
        await watcher.call(type="ping")
        await asyncio.sleep(SNAPSHOT_INTERVAL * 1.5)
        await watcher.call(type="ping")
        snapshots = [m for m in watcher.seen if m["type"] == "presence" and m.get("members")]
        acks = [m for m in watcher.seen if m["type"] == "ack"]
        assert len(snapshots) == 2 and len(acks) >= 100
        assert server.presence is not None and server.presence.coalesced == 99
        for peer in (watcher, late, *others):
            await peer.ws.close()
