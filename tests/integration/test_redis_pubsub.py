"""RedisPubSub against real redis-server processes: the seed API, bad data, and outages.

Timeline of the outage tests (one unit = ROOMCAST_TEST_TIME_UNIT seconds, default 1 s):
Redis is killed or frozen, the instances notice (at once for a kill; within three health
intervals for a freeze), Redis comes back, and within 2 s they are subscribed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from roomcast import BrokerUnavailable
from roomcast.brokers.envelope import Target, pack
from roomcast.brokers.redis_pubsub import RedisPubSub
from tests.redis_support import RedisServer, free_port
from tests.support import eventually, seconds


@contextlib.asynccontextmanager
async def pubsub(url: str, **options: Any) -> AsyncIterator[RedisPubSub]:
    instance = RedisPubSub(url, **options)
    await instance.initialize()
    try:
        yield instance
    finally:
        await instance.close()


class Inbox:
    """A seed-style handler that keeps what it gets."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, data: dict[str, Any]) -> None:
        self.items.append(data)
        self.arrived.set()

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        await eventually(lambda: len(self.items) >= count, what=f"{count} messages")
        return self.items


async def test_seed_api_publishes_and_delivers_dicts(
    shared_redis: RedisServer, prefix: str
) -> None:
    """publish_* reach the handlers subscribed to the seed's channels, as dicts, and return
    how many subscribers Redis counted."""
    async with (
        pubsub(shared_redis.url, prefix=prefix) as a,
        pubsub(shared_redis.url, prefix=prefix) as b,
    ):
        room, user, direct, everyone = Inbox(), Inbox(), Inbox(), Inbox()
        await b.subscribe(f"{prefix}:room:r1", room)
        await b.subscribe(f"{prefix}:user:u1", user)
        await b.subscribe(f"{prefix}:connection:c1", direct)
        await b.subscribe(f"{prefix}:broadcast", everyone)
        await a.subscribe(f"{prefix}:broadcast", everyone)
        assert await a.publish_to_room("r1", {"type": "chat", "text": "hi"}) == 1
        assert await a.publish_to_user("u1", "plain text") == 1
        assert await a.publish_to_connection("c1", b"\x00\x01") == 1
        assert await a.publish_broadcast([1, 2], exclude={"c9"}) == 2
        assert await a.publish_to_room("nobody-here", "x") == 0
        assert await room.wait_for(1) == [{"type": "chat", "text": "hi"}]
        assert await user.wait_for(1) == [{"data": "plain text"}]
        assert await direct.wait_for(1) == [{"data": b"\x00\x01"}]
        # Redis semantics: the publisher's own subscription gets its message too.
        assert await everyone.wait_for(2) == [{"data": [1, 2]}, {"data": [1, 2]}]
        assert b.stats.received == 4 and b.stats.missed == 0
        assert a.stats.published == 5


async def test_subscribe_takes_sync_handlers_and_unsubscribe_stops_them(
    shared_redis: RedisServer, prefix: str
) -> None:
    """A plain function works as a handler; after unsubscribe Redis drops the channel."""
    got: list[dict[str, Any]] = []
    async with pubsub(shared_redis.url, prefix=prefix) as a:
        channel = f"{prefix}:room:r"
        await a.subscribe(channel, got.append)
        await a.subscribe(channel, got.append)  # the same handler twice: delivered once
        await a.publish_to_room("r", {"x": 1})
        await eventually(lambda: got == [{"x": 1}])
        await a.unsubscribe(channel)
        await eventually(lambda: channel not in shared_redis.channels(f"{prefix}:*"))
        await a.publish_to_room("r", {"x": 2})
        await asyncio.sleep(seconds(0.2))
        assert got == [{"x": 1}]


async def test_bad_messages_on_a_channel_are_counted_and_dropped(
    shared_redis: RedisServer, prefix: str
) -> None:
    """Garbage, a pickle, a future version or an envelope for another channel is logged and
    dropped; a handler that raises is logged; the reader survives all of it."""
    async with pubsub(shared_redis.url, prefix=prefix) as a:
        inbox = Inbox()

        async def failing(data: dict[str, Any]) -> None:
            raise RuntimeError("handler bug")

        channel = f"{prefix}:broadcast"
        await a.subscribe(channel, failing)
        await a.subscribe(channel, inbox)
        wrong_room = pack(Target.ROOM, "elsewhere", b"x", origin=bytes(16), stream=1, seq=1)
        await a.subscribe(f"{prefix}:room:here", inbox)
        foreign = redis.asyncio.Redis.from_url(shared_redis.url)
        try:
            for bad in (b"not an envelope", b"\x80\x04\x95pickle", b"RC\x09" + bytes(60)):
                await foreign.publish(channel, bad)
            await foreign.publish(f"{prefix}:room:here", wrong_room)
        finally:
            await foreign.aclose()
        await a.publish_broadcast("still alive")
        assert await inbox.wait_for(1) == [{"data": "still alive"}]
        await eventually(lambda: a.stats.handler_errors == 1)
        assert a.stats.malformed == 4
        assert a.ready


async def test_redis_restart_resubscribes_and_counts_the_gap(own_redis: RedisServer) -> None:
    """Redis killed mid-stream: not ready, publishes fail; restarted: both instances are
    subscribed to exactly their interest set again within 2 s, and the receiver counts the
    messages it missed."""
    async with pubsub(own_redis.url) as sender, pubsub(own_redis.url) as receiver:
        inbox = Inbox()
        await receiver.subscribe("ws:room:r", inbox)
        await receiver.subscribe("ws:user:u", inbox)
        await sender.subscribe("ws:room:r", Inbox())  # its own echo: never counted as missed
        await sender.publish_to_room("r", "before")
        await inbox.wait_for(1)

        own_redis.kill()
        await eventually(lambda: not sender.ready and not receiver.ready)
        with pytest.raises(BrokerUnavailable):
            await sender.publish_to_room("r", "lost")
        sender.publish(Target.ROOM, "r", b"lost too")  # the manager's path: counted, no raise
        assert sender.stats.publish_failures == 2

        own_redis.start()
        began = asyncio.get_running_loop().time()
        await eventually(lambda: sender.ready and receiver.settled, timeout_units=10)
        assert asyncio.get_running_loop().time() - began < 2 * seconds(1)
        assert own_redis.channels() == {"ws:room:r", "ws:user:u"}
        await eventually(lambda: sender.settled)
        await sender.publish_to_room("r", "after")
        assert [item["data"] for item in await inbox.wait_for(2)] == ["before", "after"]
        assert receiver.stats.missed == 2
        assert sender.stats.missed == 0
        assert receiver.stats.reconnects == 1


async def test_a_frozen_redis_is_detected_and_recovered(own_redis: RedisServer) -> None:
    """A Redis that keeps the socket open but answers nothing (SIGSTOP) is declared dead
    after at most three health intervals; waiting publishes fail; it recovers after."""
    interval = seconds(0.2)
    async with pubsub(own_redis.url, health_check_interval=interval, socket_timeout=30) as a:
        await a.subscribe("ws:broadcast", Inbox())
        own_redis.freeze()
        waiting = asyncio.ensure_future(a.publish_broadcast("stuck"))
        began = asyncio.get_running_loop().time()
        await eventually(lambda: not a.ready, timeout_units=10)
        assert asyncio.get_running_loop().time() - began < 3 * interval + seconds(0.5)
        with pytest.raises(BrokerUnavailable):
            await waiting
        own_redis.thaw()
        await eventually(lambda: a.settled, timeout_units=10)
        assert await a.publish_broadcast("again") == 1


async def test_full_publish_queue_fails_fast(own_redis: RedisServer) -> None:
    """Publishes beyond the queue limit fail at once instead of growing memory."""
    async with pubsub(own_redis.url, publish_queue_limit=2, socket_timeout=30) as a:
        own_redis.freeze()
        try:
            for _ in range(600):  # the first batch leaves for Redis, the next two wait
                a.publish(Target.BROADCAST, "", b"x")
            assert a.queued <= 512 + 2
            assert a.stats.publish_failures >= 600 - 512 - 2
            with pytest.raises(BrokerUnavailable, match="queue is full"):
                await a.publish_broadcast("one more")
        finally:
            own_redis.thaw()


async def test_initialize_without_redis_returns_and_connects_later() -> None:
    """With Redis unreachable, initialize gives up waiting after connect_timeout (no error)
    and the supervisor connects as soon as Redis appears."""
    port = free_port()
    async with pubsub(f"redis://127.0.0.1:{port}", connect_timeout=seconds(0.3)) as a:
        assert not a.ready and not a.connected
        with pytest.raises(BrokerUnavailable):
            await a.publish_broadcast("nobody")
        server = RedisServer(port)
        try:
            server.start()
            await eventually(lambda: a.ready, timeout_units=10)
            assert await a.publish_broadcast("now") == 0
        finally:
            server.close()


async def test_close_fails_what_waits_and_stops_every_task(own_redis: RedisServer) -> None:
    """close() fails pending publishes with BrokerUnavailable and leaves no task behind."""
    a = RedisPubSub(own_redis.url, socket_timeout=30)
    await a.initialize()
    own_redis.freeze()
    try:
        waiting = asyncio.ensure_future(a.publish_broadcast("never"))
        await eventually(lambda: a.queued == 1, what="the publish queued")
        await a.close()
        with pytest.raises(BrokerUnavailable):
            await waiting
        with pytest.raises(RuntimeError, match="closed"):
            await a.initialize()
        assert len(a._tasks) == 0
    finally:
        own_redis.thaw()


async def test_slow_seed_handler_queue_is_bounded(shared_redis: RedisServer, prefix: str) -> None:
    """A handler slower than the messages loses the overflow (counted), not memory."""
    release = asyncio.Event()

    async def slow(data: dict[str, Any]) -> None:
        await release.wait()

    async with pubsub(shared_redis.url, prefix=prefix, handler_queue_limit=3) as a:
        await a.subscribe(f"{prefix}:broadcast", slow)
        for n in range(10):
            await a.publish_broadcast(n)
        await eventually(lambda: a.stats.received == 10)
        assert a.stats.handler_drops == 10 - 3 - 1  # one is being handled, three wait
        release.set()


async def test_unix_socket_url() -> None:
    """A unix:// URL works (such a connection has no host or port to discover)."""
    server = RedisServer()
    socket_path = server.directory / "redis.sock"
    server.extra = ("--unixsocket", str(socket_path))
    try:
        server.start()
        async with pubsub(f"unix://{socket_path}") as a:
            inbox = Inbox()
            await a.subscribe("ws:broadcast", inbox)
            assert await a.publish_broadcast("over a unix socket") == 1
            assert await inbox.wait_for(1) == [{"data": "over a unix socket"}]
    finally:
        server.close()


async def test_oversized_garbage_and_killed_subscriber_connections() -> None:
    """A 5 MB foreign message is dropped as malformed; CLIENT KILL TYPE pubsub (Redis drops
    the subscriber) and DEBUG SLEEP (Redis hangs) are both survived: the instance
    reconnects, resubscribes, and delivers again."""
    interval = seconds(0.2)
    own_redis = RedisServer(extra=("--enable-debug-command", "yes"))
    own_redis.start()
    try:
        await drill(own_redis, interval)
    finally:
        own_redis.close()


async def drill(own_redis: RedisServer, interval: float) -> None:
    async with pubsub(own_redis.url, health_check_interval=interval) as a:
        inbox = Inbox()
        await a.subscribe("ws:broadcast", inbox)
        foreign = redis.asyncio.Redis.from_url(own_redis.url)
        try:
            await foreign.publish("ws:broadcast", b"\x00" * 5_000_000)
        finally:
            await foreign.aclose()
        await eventually(lambda: a.stats.malformed == 1)

        own_redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: a.stats.reconnects == 1 and a.settled, timeout_units=10)
        await a.publish_broadcast("after kill")
        await inbox.wait_for(1)

        sleeper = asyncio.ensure_future(asyncio.to_thread(own_redis.cli, "DEBUG", "SLEEP", "2"))
        await eventually(lambda: not a.ready, timeout_units=10)
        await sleeper
        await eventually(lambda: a.settled, timeout_units=10)
        await a.publish_broadcast("after sleep")
        assert [item["data"] for item in await inbox.wait_for(2)] == ["after kill", "after sleep"]


async def test_publish_failures_during_an_outage_are_logged_as_their_count(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """1,060 publishes refused while Redis is away: the log's counts add up to 1,060 (the
    first at once, the rest summed when Redis is back), not one line per publish."""
    async with pubsub(own_redis.url) as sender:
        own_redis.kill()
        await eventually(lambda: not sender.ready)
        with caplog.at_level(logging.WARNING, "roomcast.redis"):
            for n in range(1060):
                sender.publish(Target.ROOM, "r", b"%d" % n)
            own_redis.start()
            await eventually(lambda: sender.ready, timeout_units=10)
        counts = [
            int(record.getMessage().split()[0])
            for record in caplog.records
            if "could not be published" in record.getMessage()
        ]
        assert sum(counts) == sender.stats.publish_failures >= 1060
        assert len(counts) <= 3
