"""The Redis lifecycle store under real faults and on a Redis Cluster: an instance process
killed with SIGKILL (a survivor ends with the view that matches reality), the scripts on a
3-master cluster, and what each change costs Redis (INFO commandstats)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio

from roomcast.brokers.redis_lifecycle import RedisLifecycle
from roomcast.events.lifecycle import Change, Op
from roomcast.events.schema import Kind, LifecycleEvent
from tests.integration.test_redis_lifecycle import (
    DEBOUNCE,
    SCENARIOS,
    in_memory,
    in_redis,
    seen,
    settled,
    stream,
)
from tests.redis_support import RedisServer, redis_cluster
from tests.support import eventually

View = tuple[set[str], set[str], set[tuple[str, str]]]
"""Online users, occupied rooms, (room, user) memberships."""


def view(events: list[LifecycleEvent]) -> View:
    """What a consumer believes after applying ``events`` (stale ones dropped by seq), and a
    check that each room's occupied/vacated alternate."""
    users: set[str] = set()
    rooms: set[str] = set()
    members: set[tuple[str, str]] = set()
    last: dict[str, int] = {}
    for event in events:
        subject = f"room:{event.room}" if event.user is None else f"user:{event.user}"
        if event.seq <= last.get(subject, 0):
            continue
        last[subject] = event.seq
        if event.kind is Kind.OCCUPIED:
            assert event.room not in rooms, f"{event.room} occupied twice"
            rooms.add(str(event.room))
        elif event.kind is Kind.VACATED:
            assert event.room in rooms, f"{event.room} vacated while not occupied"
            rooms.discard(str(event.room))
        elif event.kind is Kind.CONNECT:
            users.add(str(event.user))
        elif event.kind is Kind.DISCONNECT:
            users.discard(str(event.user))
        elif event.kind is Kind.JOIN:
            members.add((str(event.room), str(event.user)))
        elif event.kind is Kind.LEAVE:
            members.discard((str(event.room), str(event.user)))
    return users, rooms, members


@contextlib.contextmanager
def worker(url: str, prefix: str, name: str, users: list[str], rooms: list[str]) -> Iterator[int]:
    """An instance in a process of its own (``tests/lifecycle_worker.py``); yields its pid
    once Redis has its changes, and kills it at the end if the test did not."""
    config = {"url": url, "prefix": prefix, "name": name, "debounce": DEBOUNCE, "ttl": 1.0}
    config |= {"users": users, "rooms": rooms}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.lifecycle_worker", json.dumps(config)],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        yield process.pid
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]


@pytest.fixture
async def client(shared_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(shared_redis.url)
    yield connection
    await connection.aclose()


async def test_a_killed_process_is_purged_and_the_view_is_right(
    client: Any, shared_redis: RedisServer, prefix: str
) -> None:
    """kill -9 of an instance: within its TTL and a window, the survivor's synthetic events
    leave the consumer with exactly the survivor's users and rooms."""
    survivor = RedisLifecycle(
        client, "survivor", prefix=prefix, debounce=DEBOUNCE, instance_ttl=1.0, refresh_interval=0.1
    )
    await survivor.start()
    try:
        with worker(shared_redis.url, prefix, "doomed", ["alice", "bob"], ["shared", "solo"]):
            await in_redis(survivor, client, [Change(Op.CONNECT, "s1", "bob")])
            await in_redis(survivor, client, [Change(Op.JOIN, "s1", "bob", "shared")])
            assert view(await stream(client, survivor)) == (
                {"alice", "bob"},
                {"shared", "solo"},
                {("shared", "alice"), ("shared", "bob"), ("solo", "alice"), ("solo", "bob")},
            )
        # The with block killed the worker (SIGKILL): no goodbye.
        await eventually(lambda: survivor.stats.purges == 1, timeout_units=4)
        events = await settled(client, survivor, 13)
    finally:
        await survivor.stop()
    assert view(events) == ({"bob"}, {"shared"}, {("shared", "bob")})
    synthetic = [e for e in events if e.synthetic]
    assert sorted(seen(synthetic)) == [
        ("disconnect", "alice", None),
        ("leave", "alice", "shared"),
        ("leave", "alice", "solo"),
        ("leave", "bob", "solo"),
        ("vacated", None, "solo"),
    ]
    assert {e.instance for e in synthetic} == {"doomed"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RedisServer]]:
    with redis_cluster(3) as nodes:
        yield nodes


async def test_the_scripts_run_on_a_redis_cluster(cluster: list[RedisServer]) -> None:
    """Every key shares one hash tag, so the cluster accepts the scripts: the same events
    as in memory, and a dead instance purged."""
    client = redis.asyncio.RedisCluster.from_url(cluster[0].url)
    steps = SCENARIOS["publish and several rooms"]
    try:
        lifecycle = RedisLifecycle(
            client, "one", prefix="c", debounce=DEBOUNCE, instance_ttl=1.0, refresh_interval=0.1
        )
        await lifecycle.start()
        dead = RedisLifecycle(
            client, "dead", prefix="c", debounce=0, instance_ttl=0.5, refresh_interval=0.1
        )
        await dead.start()
        try:
            await in_redis(lifecycle, client, steps)
            events = await settled(client, lifecycle, len(in_memory(steps)))
            assert seen(events) == seen(in_memory(steps))
            await in_redis(dead, client, [Change(Op.CONNECT, "d1", "carol")])
            await dead.stop(retire=False)
            await eventually(lambda: lifecycle.stats.purges == 1, timeout_units=4)
            events = await settled(client, lifecycle, len(events) + 2)
            assert seen(events)[-1] == ("disconnect", "carol", None) and events[-1].synthetic
        finally:
            await lifecycle.stop()
    finally:
        await client.aclose()


def commands(server: RedisServer) -> dict[str, int]:
    """Calls per command since the server started (INFO commandstats), scripts' included."""
    out = {}
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name[8:]] = int(rest.split(",")[0].split("=")[1])
    return out


async def test_what_each_change_costs(own_redis: RedisServer, prefix: str) -> None:
    """1,000 users connect, join a room each, leave and disconnect: one EVALSHA per 500
    changes, and the commands the scripts run per change (printed: run with -s)."""
    client = redis.asyncio.Redis.from_url(own_redis.url)
    lifecycle = RedisLifecycle(
        client, "one", prefix=prefix, debounce=0.2, instance_ttl=120, refresh_interval=60
    )
    await lifecycle.start()
    users = [f"u{n}" for n in range(1000)]
    phases = {
        "connect": [Change(Op.CONNECT, f"c{u}", u) for u in users],
        "join": [Change(Op.JOIN, f"c{u}", u, f"r{u}") for u in users],
        "leave": [Change(Op.LEAVE, f"c{u}", u, f"r{u}") for u in users],
        "disconnect": [Change(Op.DISCONNECT, f"c{u}", u, reason="bye", code=1000) for u in users],
    }
    try:
        for phase, changes in phases.items():
            before = commands(own_redis)
            for change in changes:
                lifecycle.record(change)
            assert await lifecycle.flush()
            if phase in ("leave", "disconnect"):  # their events come out of the sweep
                await asyncio.sleep(0.3)
                await lifecycle.tick()
            after = commands(own_redis)
            spent = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            spent.pop("info", None)
            calls = spent.get("evalsha", 0)
            inner = sum(spent.values()) - calls
            print(f"{phase}: {calls} EVALSHA, {inner / len(users):.1f} commands/change {spent}")
            assert spent.get("evalsha", 0) <= 3
    finally:
        await lifecycle.stop()
        await client.aclose()
