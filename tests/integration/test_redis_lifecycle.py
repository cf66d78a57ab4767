"""The Redis lifecycle store against a real Redis: the same scenarios as ``LifecycleState``
(same events, same order), then what only a shared store does -- a user moving between
instances, a dead instance purged by a survivor, an instance purged while alive, a Redis
restart, a full queue.

Timeline unit: the debounce window is 0.3 s; a comeback comes 0.05 s after the departure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from roomcast.brokers.redis_lifecycle import RedisLifecycle
from roomcast.events.lifecycle import Change, LifecycleState, Op
from roomcast.events.schema import Kind, LifecycleEvent
from tests.redis_support import RedisServer
from tests.support import eventually

DEBOUNCE = 0.3
Step = Change | float
"""A change, or seconds passing."""
Seen = tuple[str, str | None, str | None]


def connect(c: str, user: str | None, data: Any = None) -> Change:
    return Change(Op.CONNECT, c, user, data=data)


def join(c: str, user: str | None, room: str) -> Change:
    return Change(Op.JOIN, c, user, room)


def leave(c: str, user: str | None, room: str) -> Change:
    return Change(Op.LEAVE, c, user, room)


def disconnect(c: str, user: str | None, code: int = 1000) -> Change:
    return Change(Op.DISCONNECT, c, user, reason="closed", code=code)


def publish(c: str, user: str | None, room: str, data: Any) -> Change:
    return Change(Op.PUBLISH, c, user, room, data=data)


SCENARIOS: dict[str, list[Step]] = {
    "first and last": [
        connect("c1", "alice", data={"plan": "pro"}),
        connect("c2", "alice"),
        join("c1", "alice", "r"),
        join("c2", "alice", "r"),
        leave("c1", "alice", "r"),
        leave("c2", "alice", "r"),
        disconnect("c1", "alice"),
        disconnect("c2", "alice", code=1001),
    ],
    "comeback within the window": [
        connect("c1", "alice"),
        join("c1", "alice", "r"),
        leave("c1", "alice", "r"),
        disconnect("c1", "alice"),
        0.05,
        connect("c2", "alice"),
        join("c2", "alice", "r"),
    ],
    "comeback without the room": [
        connect("c1", "alice"),
        join("c1", "alice", "r"),
        leave("c1", "alice", "r"),
        disconnect("c1", "alice"),
        0.05,
        connect("c2", "alice"),
    ],
    "anonymous clients": [
        connect("c1", None),
        join("c1", None, "r"),
        publish("c1", None, "r", {"x": 1}),
        leave("c1", None, "r"),
        disconnect("c1", None),
    ],
    "publish and several rooms": [
        connect("c1", "alice"),
        join("c1", "alice", "a"),
        join("c1", "alice", "b"),
        connect("c2", "bob"),
        join("c2", "bob", "a"),
        publish("c1", "alice", "a", "hi"),
        leave("c1", "alice", "a"),
        leave("c1", "alice", "b"),
        disconnect("c1", "alice"),
        leave("c2", "bob", "a"),
        disconnect("c2", "bob"),
    ],
}


def seen(events: list[LifecycleEvent]) -> list[Seen]:
    return [(e.kind.value, e.user, e.room) for e in events]


def details(events: list[LifecycleEvent]) -> list[tuple[Any, ...]]:
    """What else an event says (connection, reason, code, data)."""
    return [(e.kind.value, e.connection, e.reason, e.code, e.data) for e in events]


def in_memory(steps: list[Step]) -> list[LifecycleEvent]:
    state, now, out = LifecycleState("i", DEBOUNCE), 0.0, []
    for step in steps:
        if isinstance(step, Change):
            out += state.apply(step, now)
        else:
            now += step
            out += state.due(now)
    return out + state.due(now + 1000)


async def stream(client: Any, lifecycle: RedisLifecycle) -> list[LifecycleEvent]:
    entries = await client.xrange(lifecycle.keys["events"])
    return [LifecycleEvent.from_dict(json.loads(fields[b"e"])) for _, fields in entries]


async def in_redis(lifecycle: RedisLifecycle, client: Any, steps: list[Step]) -> None:
    for step in steps:
        if isinstance(step, Change):
            lifecycle.record(step)
        else:
            assert await lifecycle.flush()
            await asyncio.sleep(step)
    assert await lifecycle.flush()


def check_ids_and_seqs(events: list[LifecycleEvent]) -> None:
    """Ids are unique; seq grows per subject (the user; the room for occupied/vacated)."""
    assert len({e.id for e in events}) == len(events)
    last: dict[str, int] = {}
    for event in events:
        subject = (
            f"room:{event.room}"
            if event.kind in (Kind.OCCUPIED, Kind.VACATED) or event.user is None
            else f"user:{event.user}"
        )
        assert event.seq > last.get(subject, 0), (event, last)
        last[subject] = event.seq


@pytest.fixture
async def client(shared_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(shared_redis.url)
    yield connection
    await connection.aclose()


@contextlib.asynccontextmanager
async def running(client: Any, prefix: str, name: str, **options: Any) -> AsyncIterator[Any]:
    """A started store (ticking every 0.05 s unless told otherwise), retired afterwards."""
    settings: dict[str, Any] = {"debounce": DEBOUNCE, "instance_ttl": 2.0}
    settings["refresh_interval"] = 0.05
    lifecycle = RedisLifecycle(client, name, prefix=prefix, **(settings | options))
    await lifecycle.start()
    try:
        yield lifecycle
    finally:
        await lifecycle.stop()


async def settled(client: Any, lifecycle: RedisLifecycle, count: int) -> list[LifecycleEvent]:
    """The stream once it holds ``count`` events (and, a window later, no more)."""
    found: list[LifecycleEvent] = []

    async def enough() -> bool:
        found[:] = await stream(client, lifecycle)
        return len(found) >= count

    async with asyncio.timeout(5):
        while not await enough():  # noqa: ASYNC110 - polls a stream nobody signals
            await asyncio.sleep(0.02)
    await asyncio.sleep(DEBOUNCE + 0.2)
    found[:] = await stream(client, lifecycle)
    return found


@pytest.mark.parametrize("name", SCENARIOS)
async def test_the_same_events_as_in_memory(client: Any, prefix: str, name: str) -> None:
    """Each scenario gives the events ``LifecycleState`` gives, in the same order."""
    steps = SCENARIOS[name]
    expected = in_memory(steps)
    async with running(client, prefix, "one") as lifecycle:
        await in_redis(lifecycle, client, steps)
        events = await settled(client, lifecycle, len(expected))
    assert seen(events) == seen(expected)
    assert details(events) == details(expected)
    check_ids_and_seqs(events)
    assert all(e.instance == "one" and not e.synthetic for e in events)


async def test_debounce_zero_emits_departures_at_once(client: Any, prefix: str) -> None:
    """Without a window, departures are written with the change that causes them."""
    steps = SCENARIOS["first and last"]
    async with running(client, prefix, "one", debounce=0, refresh_interval=1.0) as lifecycle:
        await in_redis(lifecycle, client, steps)
        events = await stream(client, lifecycle)
    state = LifecycleState("i", 0)
    expected = [e for step in steps if isinstance(step, Change) for e in state.apply(step, 0)]
    assert seen(events) == seen(expected)
    check_ids_and_seqs(events)


async def test_a_user_moving_between_instances_stays_online(client: Any, prefix: str) -> None:
    """Leaving one instance and arriving at another within the window emits nothing; a
    user on two instances goes offline only when the second one is left too."""
    async with (
        running(client, prefix, "one") as one,
        running(client, prefix, "two") as two,
    ):
        await in_redis(one, client, [connect("c1", "alice"), join("c1", "alice", "r")])
        await in_redis(one, client, [leave("c1", "alice", "r"), disconnect("c1", "alice")])
        await in_redis(two, client, [0.05, connect("c2", "alice"), join("c2", "alice", "r")])
        await in_redis(one, client, [connect("c3", "alice")])
        await in_redis(two, client, [leave("c2", "alice", "r"), disconnect("c2", "alice")])
        events = await settled(client, one, 4)
        assert seen(events) == [
            ("connect", "alice", None),
            ("occupied", None, "r"),
            ("join", "alice", "r"),
            ("leave", "alice", "r"),
            ("vacated", None, "r"),
        ]
        assert events[-1].instance == "two"


async def test_a_dead_instance_is_purged_by_a_survivor(client: Any, prefix: str) -> None:
    """After the dead one's TTL, the survivor emits synthetic leave, vacated and disconnect
    for exactly what only the dead instance held."""
    async with running(client, prefix, "survivor", instance_ttl=1.0) as survivor:
        dead = RedisLifecycle(client, "dead", prefix=prefix, debounce=DEBOUNCE, instance_ttl=1.0)
        await dead.start()
        await in_redis(
            dead,
            client,
            [connect("d1", "alice"), join("d1", "alice", "solo"), join("d1", "alice", "shared")],
        )
        await in_redis(dead, client, [connect("d2", "bob"), join("d2", "bob", "shared")])
        await in_redis(survivor, client, [connect("s1", "bob"), join("s1", "bob", "shared")])
        await dead.stop(retire=False)  # no goodbye: what kill -9 leaves
        before = len(await stream(client, survivor))
        await eventually(lambda: survivor.stats.purges == 1, timeout_units=4)
        events = (await settled(client, survivor, before + 4))[before:]
    # Members first (in no particular order), then rooms, then users.
    assert sorted(seen(events)[:2]) == [("leave", "alice", "shared"), ("leave", "alice", "solo")]
    assert seen(events)[2:] == [("vacated", None, "solo"), ("disconnect", "alice", None)]
    assert all(e.synthetic and e.instance == "dead" for e in events)
    assert events[-1].reason == "instance lost" and events[-1].code == 1006
    assert survivor.stats.synthetic == 4
    assert not await client.exists(f"{survivor.keys['base']}:i:dead")


async def test_an_instance_purged_while_alive_announces_itself_again(
    client: Any, prefix: str
) -> None:
    """Taken for dead after a stall, an instance rewrites its part: a comeback within the
    window cancels the synthetic departures, a later one arrives again."""
    slow = {"refresh_interval": 30.0, "instance_ttl": 60.0}
    async with (
        running(client, prefix, "one", **slow) as one,
        running(client, prefix, "two", **slow) as two,
    ):
        await in_redis(one, client, [connect("c1", "alice"), join("c1", "alice", "r")])
        for pause in (0.0, DEBOUNCE + 0.1):
            await client.zadd(one.keys["alive"], {"one": 0})  # its liveness lapsed
            await two.tick()
            assert await two.purge("one") is False  # purged already by the tick
            await asyncio.sleep(pause)
            await two.tick()
            await one.tick()  # one finds its part gone ...
            assert await one.flush()  # ... and rewrites it
            await two.tick()
        events = await stream(client, one)
    assert one.stats.restores == 3 and two.stats.purges == 2
    assert seen(events) == [
        ("connect", "alice", None),
        ("occupied", None, "r"),
        ("join", "alice", "r"),
        ("leave", "alice", "r"),
        ("vacated", None, "r"),
        ("disconnect", "alice", None),
        ("connect", "alice", None),
        ("occupied", None, "r"),
        ("join", "alice", "r"),
    ]
    assert [e.synthetic for e in events[3:]] == [True] * 3 + [False] * 3
    check_ids_and_seqs(events)


async def test_changes_survive_a_redis_restart(own_redis: RedisServer, prefix: str) -> None:
    """Changes recorded while Redis is away are written once it is back; Redis came back
    empty, so the instance first rewrites what it held."""
    client = redis.asyncio.Redis.from_url(own_redis.url, socket_timeout=1.0)
    try:
        async with running(client, prefix, "one", call_timeout=1.0) as lifecycle:
            await in_redis(lifecycle, client, [connect("c1", "alice")])
            own_redis.kill()
            lifecycle.record(join("c1", "alice", "r"))
            await eventually(lambda: lifecycle.stats.errors > 0, timeout_units=4)
            own_redis.start()
            assert await lifecycle.flush(8)
            events = await settled(client, lifecycle, 3)
            assert lifecycle.stats.restores >= 2 and lifecycle.stats.written == 2
    finally:
        await client.aclose()
    assert seen(events) == [
        ("connect", "alice", None),
        ("occupied", None, "r"),
        ("join", "alice", "r"),
    ]
    assert events[0].connection is None  # re-announced from memory, not from the change


async def test_a_full_queue_drops_and_repairs(client: Any, prefix: str) -> None:
    """Changes beyond the queue limit are counted, and the counts are repaired from memory."""
    lifecycle = RedisLifecycle(client, "one", prefix=prefix, debounce=0, queue_limit=2)
    for change in (connect("c1", "alice"), join("c1", "alice", "r"), connect("c2", "bob")):
        lifecycle.record(change)
    lifecycle.record(publish("c2", "bob", "r", 1))
    assert lifecycle.stats.dropped == 2 and lifecycle.queued == 2
    await lifecycle.start()
    try:
        assert await lifecycle.flush()
        events = await stream(client, lifecycle)
        counts = await client.hgetall(lifecycle.keys["counts"])
    finally:
        await lifecycle.stop()
    assert sorted(seen(events)) == [
        ("connect", "alice", None),
        ("connect", "bob", None),
        ("join", "alice", "r"),
        ("occupied", None, "r"),
    ]
    assert counts == {
        b"user:alice": b"1",
        b"user:bob": b"1",
        b"room:r": b"1",
        b"member:r\0alice": b"1",
    }
    assert dict(sample[1:4:2] for sample in lifecycle.samples())["roomcast_lifecycle_dropped"] == 2


def commands(server: RedisServer) -> dict[str, int]:
    """Calls per command since the server started (INFO commandstats)."""
    out = {}
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name[8:]] = int(rest.split(",")[0].split("=")[1])
    return out


async def test_misuse_and_odd_input(client: Any, prefix: str) -> None:
    """A refresh slower than the TTL is refused; data that is not JSON is left out of its
    event; a flush of a store that is not running gives up in time."""
    with pytest.raises(ValueError, match="shorter"):
        RedisLifecycle(client, "one", prefix=prefix, instance_ttl=1.0, refresh_interval=1.0)
    lifecycle = RedisLifecycle(client, "one", prefix=prefix, debounce=0)
    lifecycle.record(connect("c1", "alice", data={1, 2}))
    assert await lifecycle.flush(0.05) is False
    await lifecycle.start()
    try:
        assert await lifecycle.flush()
        (event,) = await stream(client, lifecycle)
    finally:
        await lifecycle.stop()
    assert event.kind is Kind.CONNECT and event.data is None
