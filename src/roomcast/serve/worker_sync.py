"""The Redis side of ``roomcast.serve.workers``: each worker of ``--workers`` writes its
snapshot and reads the others', about once a second.

Each worker's snapshot is one key, ``{prefix}:workers:{group}:{slot}`` (the group in braces, a
hash tag, so a group's keys share a node), written with a short expiry: a worker that stops
writing (frozen, killed, cut off from Redis) is missing from the others' answers within
``ttl`` seconds, and a stopped server leaves nothing behind.  One round is a SET and an MGET
(not pipelined: redis-py's cluster client refuses MGET in a pipeline), bounded by a timeout; a
round that fails is counted and logged within the log budget, and the worker serves on: its
cached view of the others simply ages until ``/readyz`` says they are not reporting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from roomcast.logbudget import FailureTally
from roomcast.serve.workers import SNAPSHOT_LIFETIME, WorkerView

__all__ = ["exchange_snapshots", "snapshot_key"]

logger = logging.getLogger("roomcast.workers")


def snapshot_key(prefix: str, group: str, slot: int) -> str:
    """The Redis key of one worker's snapshot."""
    return f"{prefix}:workers:{{{group}}}:{slot}"


async def exchange_snapshots(
    view: WorkerView,
    redis_url: str,
    prefix: str,
    snapshot: Callable[[], bytes],
    *,
    interval: float = 1.0,
    ttl: float = SNAPSHOT_LIFETIME,
) -> None:
    """Write ``snapshot()`` for this worker and read the others' into ``view``, every
    ``interval`` seconds, until cancelled."""
    identity = view.identity
    mine = snapshot_key(prefix, identity.group, identity.slot)
    others = view.others
    keys = [snapshot_key(prefix, identity.group, slot) for slot in others]
    failures = FailureTally(logger, "exchange(s) of worker snapshots with Redis failed")
    client: Any = None
    try:
        while True:
            try:
                async with asyncio.timeout(ttl):
                    client = client or await _connect(redis_url, ttl)
                    await client.set(mine, snapshot(), px=int(ttl * 1000))
                    values = await client.mget(keys) if keys else []
            except Exception as exc:  # Redis away or slow: the others' snapshots age
                view.sync_failures += 1
                failures.add(f"{type(exc).__name__}: {exc}")
            else:
                for slot, value in zip(others, values, strict=True):
                    view.received(slot, value)
                failures.flush()
            await asyncio.sleep(interval)
    finally:
        if client is not None:
            await client.aclose()


async def _connect(redis_url: str, socket_timeout: float) -> Any:
    """A client for ``redis_url``: a cluster client if it names a Redis Cluster node (a
    plain one would be sent elsewhere, MOVED, for the slot of the group's keys).

    Raises:
        redis.exceptions.RedisError, OSError: Redis cannot be reached.
    """
    import redis.asyncio

    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
    }
    plain = redis.asyncio.Redis.from_url(redis_url, max_connections=1, **options)
    try:
        cluster = (await plain.info("cluster")).get("cluster_enabled") == 1
    except BaseException:
        await plain.aclose()
        raise
    if not cluster:
        return plain
    await plain.aclose()
    return redis.asyncio.RedisCluster.from_url(redis_url, **options)
