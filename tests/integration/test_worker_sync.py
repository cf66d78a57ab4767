"""``exchange_snapshots`` on a real Redis: workers see each other through it, and a Redis
that goes away is counted, logged once, and ages the view instead of stopping the worker."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, Gauge

from roomcast.serve.worker_sync import exchange_snapshots, snapshot_key
from roomcast.serve.workers import WorkerIdentity, WorkerView
from roomcast.tasks import TaskSet
from tests.redis_support import RedisServer
from tests.support import eventually

INTERVAL = 0.05
TTL = 0.5


def figures(value: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("roomcast_connections", "Open connections.", registry=registry).set(value)
    return registry


@contextlib.asynccontextmanager
async def group(url: str, prefix: str, count: int) -> AsyncIterator[list[WorkerView]]:
    """``count`` workers' views, each exchanging its snapshot (N connections for worker N)
    through the Redis at ``url``."""
    views = [WorkerView(WorkerIdentity(slot, count, "g"), stale_after=TTL) for slot in range(count)]
    tasks = TaskSet()
    for slot, view in enumerate(views):
        own = functools.partial(view.snapshot, figures(slot), None)
        tasks.spawn(exchange_snapshots(view, url, prefix, own, interval=INTERVAL, ttl=TTL))
    try:
        yield views
    finally:
        await tasks.cancel_all()


async def test_workers_see_each_other_and_leave_nothing_behind(
    shared_redis: RedisServer, prefix: str
) -> None:
    """Each view holds the others' fresh snapshots; the keys expire once nobody writes."""
    async with group(shared_redis.url, prefix, 3) as views:
        await eventually(lambda: all(view.unready() is None for view in views))
        assert b'roomcast_connections{worker="2"} 2.0' in views[0].render(figures(0))
        assert shared_redis.cli("EXISTS", snapshot_key(prefix, "g", 1)) == "1"
    await eventually(lambda: shared_redis.cli("KEYS", f"{prefix}:workers:*") == "")


async def test_a_lone_worker_only_writes(shared_redis: RedisServer, prefix: str) -> None:
    """With no other worker there is nothing to read (and MGET of nothing is an error)."""
    async with group(shared_redis.url, prefix, 1) as (view,):
        await eventually(lambda: shared_redis.cli("EXISTS", snapshot_key(prefix, "g", 0)) == "1")
        assert view.unready() is None and view.sync_failures == 0


async def test_redis_away_ages_the_view_and_is_logged_once(
    own_redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed Redis: every round fails (counted), one warning line, the others go stale and
    readiness fails; Redis back: the workers see each other again and the count is logged."""
    caplog.set_level("WARNING", logger="roomcast.workers")
    async with group(own_redis.url, prefix, 2) as views:
        await eventually(lambda: all(view.unready() is None for view in views))
        own_redis.kill()
        await eventually(lambda: views[0].unready() == "worker 1 not reporting")
        await eventually(lambda: views[0].sync_failures >= 3)
        assert len(failure_lines(caplog)) == 1  # (the others are summed up later)
        own_redis.start()
        await eventually(lambda: all(view.unready() is None for view in views), timeout_units=10)
    first, summed = failure_lines(caplog)
    assert first.startswith("1 exchange(s)") and not summed.startswith("1 exchange(s)")


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Worker 0's log lines about failed exchanges (worker 1 logs the same)."""
    return [
        record.getMessage()
        for record in caplog.records
        if "worker snapshots with Redis failed" in record.getMessage()
    ][::2]


async def test_a_frozen_redis_does_not_hold_the_worker(own_redis: RedisServer, prefix: str) -> None:
    """A Redis that accepts and never answers: each round ends at its timeout, counted."""
    async with group(own_redis.url, prefix, 2) as views:
        await eventually(lambda: all(view.unready() is None for view in views))
        own_redis.freeze()
        try:
            await eventually(lambda: views[0].sync_failures >= 2, timeout_units=10)
            assert views[0].unready() == "worker 1 not reporting"
        finally:
            own_redis.thaw()
